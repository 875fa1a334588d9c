// Package agentapi serves the agent protocol (api/agent.go): registration with a
// registration token, per-cluster credentials, desired state with cheap "nothing changed"
// answers, content by digest, and idempotent status reports. It also owns the server side of
// registration tokens and of bundle content (inline resources moved into the content store).
package agentapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/doorbell"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
)

// Store is what the agent API needs of the store.
type Store interface {
	store.Store
	store.Agents
	store.Summaries
}

// Observer counts agent requests by call and answer.
type Observer interface {
	AgentRequest(call, answer string)
}

type nopObserver struct{}

func (nopObserver) AgentRequest(string, string) {}

// Tunnels is the registry of agent tunnels (internal/tunnel.Server).
type Tunnels interface {
	// Wanted returns the one-time token of the tunnel wanted for cluster, or a channel
	// closed when one becomes wanted, for a held poll, which calls release when it ends.
	Wanted(cluster string) (token string, wake <-chan struct{}, release func())
	// Serve takes the tunnel the authenticated cluster dials.
	Serve(w http.ResponseWriter, r *http.Request, cluster string)
	// Keep asks for the tunnel of a cluster labelled to keep one, and keeps it open.
	Keep(cluster string)
}

// Doorbell is the server's datagram doorbell (internal/doorbell.Server).
type Doorbell interface {
	Port() int
	// Polled is told before a poll reads the cluster's desired state (the answer makes a
	// change's ring for it needless); it says whether the cluster pings the doorbell.
	Polled(uid string) bool
	Interval() time.Duration
	// KeepAliveInterval is how often agents send keepalives between pings.
	KeepAliveInterval() time.Duration
	Key(uid doorbell.UID) []byte
}

// Server handles /v1/agent/….
type Server struct {
	// Metrics is told about every request; set it before serving.
	Metrics Observer
	// Tunnels, when set, serves PathTunnel and tells polls when a tunnel is wanted.
	Tunnels Tunnels
	// Doorbell, when set, is advertised on polls and serves PathDoorbell; set it before
	// serving.
	Doorbell Doorbell
	// InlineContent is how many bytes of content archives a changed desired-state answer
	// may carry, for the deployments its cluster has not applied yet (0: none; at most
	// api.MaxInlineContent is used). Set it before serving.
	InlineContent int
	st            Store
	fleet         *fleet.Fleet
	keys          *keyRing
	log           *slog.Logger
	now           func() time.Time
	cache         *contentCache
	flight        singleflight.Group
	tokens        tokenCache
	// inlineWait bounds how long an answer waits for the store to inline content
	// (defaultInlineWait; tests shorten it).
	inlineWait time.Duration
	// tooLargeLog spaces the warnings about desired states too large to send.
	tooLargeLog *rate.Limiter
}

const (
	// maxInlineReads bounds the archives one desired-state answer reads from the store to
	// inline them.
	maxInlineReads = 4
	// maxInlineDigests bounds the unapplied deployments one answer considers: a cluster
	// of thousands of bundles costs no more per answer than one of a few.
	maxInlineDigests  = 16
	defaultInlineWait = 2 * time.Second
	// loadTimeout bounds one read of content from the store: as long as an agent waits for
	// a fetch, so that a large archive on a busy database is not failed for every waiter.
	loadTimeout = 10 * time.Minute
)

// DefaultInlineContent is the default of Server.InlineContent: a few small bundles' archives
// (a bundle of plain manifests compresses to a few KiB), not a chart's.
const DefaultInlineContent = 64 << 10

// New prepares the agent API; creds says how cluster credentials are signed.
func New(ctx context.Context, st Store, f *fleet.Fleet, log *slog.Logger, creds CredentialConfig) (*Server, error) {
	k := newKeyRing(creds)
	return &Server{Metrics: nopObserver{}, InlineContent: DefaultInlineContent, inlineWait: defaultInlineWait, tooLargeLog: rate.NewLimiter(rate.Every(time.Minute), 1), st: st, fleet: f, keys: k, log: log, now: time.Now, cache: newContentCache(64 << 20),
		tokens: tokenCache{entries: map[string]cachedToken{}, locks: map[string]*sync.Mutex{}, uses: map[store.Key]int{}}}, nil
}

// Register adds the agent routes to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathRegister, s.register)
	mux.HandleFunc("GET "+api.PathDesired, s.desired)
	mux.HandleFunc("GET "+api.PathContent+"{digest}", s.content)
	mux.HandleFunc("POST "+api.PathStatus, s.status)
	mux.HandleFunc("POST "+api.PathRenew, s.renew)
	mux.HandleFunc("GET "+api.PathTunnel, s.tunnel)
	mux.HandleFunc("GET "+api.PathDoorbell, s.doorbell)
}

// doorbell hands an authenticated cluster its doorbell key. The key is derived from the
// server's secret and the cluster's UID, so nothing is stored for it.
func (s *Server) doorbell(w http.ResponseWriter, r *http.Request) {
	id, ok := s.cluster(w, r)
	if !ok {
		return
	}
	if s.Doorbell == nil {
		fail(w, http.StatusNotFound, api.ReasonNotFound, "this server has no doorbell")
		return
	}
	info := s.doorbellInfo(id.UID)
	if info == nil {
		fail(w, http.StatusNotFound, api.ReasonNotFound, "this cluster's UID cannot name it on the doorbell")
		return
	}
	s.Metrics.AgentRequest("doorbell", "key")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(info)
}

// doorbellInfo is what the cluster with uid needs to use the doorbell; nil without one.
func (s *Server) doorbellInfo(uid string) *api.DoorbellInfo {
	if s.Doorbell == nil {
		return nil
	}
	u, err := doorbell.ParseUID(uid)
	if err != nil {
		return nil
	}
	return &api.DoorbellInfo{Port: s.Doorbell.Port(), UID: uid, Key: s.Doorbell.Key(u), IntervalSeconds: max(1, int(s.Doorbell.Interval()/time.Second)),
		KeepAliveSeconds: max(1, int(s.Doorbell.KeepAliveInterval()/time.Second))}
}

// tunnel hands a cluster's tunnel dial, authenticated by its credential, to the registry,
// which checks the one-time token against that same cluster.
func (s *Server) tunnel(w http.ResponseWriter, r *http.Request) {
	id, ok := s.cluster(w, r)
	if !ok {
		return
	}
	if s.Tunnels == nil {
		fail(w, http.StatusNotFound, api.ReasonNotFound, "this server opens no tunnels")
		return
	}
	s.Metrics.AgentRequest("tunnel", "dial")
	s.Tunnels.Serve(w, r, id.Namespace+"/"+id.Name)
}

// tunnelWanted sets the tunnel token on a poll's answer when the server wants the
// cluster's tunnel; otherwise it returns a channel closed when it comes to (nil without
// tunnels) and its release.
func (s *Server) tunnelWanted(w http.ResponseWriter, key string) (<-chan struct{}, func()) {
	if s.Tunnels == nil {
		return nil, func() {}
	}
	ns, name, _ := strings.Cut(key, "/")
	if s.fleet.Label(ns, name, api.LabelTunnel) == api.TunnelAlways {
		s.Tunnels.Keep(key)
	}
	tok, wake, release := s.Tunnels.Wanted(key)
	if tok != "" {
		w.Header().Set(api.HeaderTunnelToken, tok)
	}
	return wake, release
}

func fail(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(&api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg})
}

// cluster authenticates a cluster credential. It writes the error answer itself.
func (s *Server) cluster(w http.ResponseWriter, r *http.Request) (identity, bool) {
	id, ok := s.authenticate(w, r)
	if !ok {
		return id, false
	}
	if !s.fleet.Ready() {
		w.Header().Set("Retry-After", "2")
		fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "the server is starting; try again shortly")
		return id, false
	}
	if s.fleet.Known(id.Namespace, id.Name, id.UID) {
		return id, true
	}
	// The model may not have seen a cluster registered a moment ago: ask the store.
	s.Metrics.AgentRequest("auth", "store_lookup")
	obj, err := s.st.Get(r.Context(), store.Key{Kind: api.KindCluster, Namespace: id.Namespace, Name: id.Name})
	switch {
	case err == nil && obj.Metadata.UID == id.UID:
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cluster registered a moment ago; try again shortly")
	case err == nil:
		fail(w, http.StatusUnauthorized, api.ReasonClusterDeleted, fmt.Sprintf("cluster %s/%s was deleted from the server, or replaced by a rebuilt cluster registering with a token bound to it; this credential is revoked", id.Namespace, id.Name))
	case errors.Is(err, store.ErrNotFound):
		fail(w, http.StatusUnauthorized, api.ReasonClusterDeleted, fmt.Sprintf("cluster %s/%s was deleted from the server; its credential is revoked", id.Namespace, id.Name))
	default:
		fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "store unavailable")
	}
	return id, false
}

func (s *Server) pollAfter(w http.ResponseWriter, uid string) int {
	secs := int(s.fleet.PollAfter(uid, s.now()).Seconds())
	if secs < 1 {
		secs = 1
	}
	w.Header().Set(api.HeaderPollAfter, strconv.Itoa(secs))
	return secs
}

// desired answers "has my desired state changed since R?". The unchanged answer reads
// nothing but the in-memory model.
func (s *Server) desired(w http.ResponseWriter, r *http.Request) {
	id, ok := s.cluster(w, r)
	if !ok {
		return
	}
	var since int64
	if v := queryValue(r.URL.RawQuery, "since"); v != "" {
		since, _ = strconv.ParseInt(v, 10, 64)
	}
	s.fleet.Seen(id.Namespace, id.Name, s.now())
	// Before the state is read: a change made after it still rings.
	pinging := s.Doorbell != nil && s.Doorbell.Polled(id.UID)
	ds, rev, err := s.fleet.Desired(id.Namespace, id.Name, id.UID, since)
	key := id.Namespace + "/" + id.Name
	wake, release := s.tunnelWanted(w, key)
	defer release()
	// A long poll: an agent that holds the request open is told the moment its state
	// changes, or a tunnel is wanted, instead of at its next poll. (Desired first: it
	// versions the state, which a load or a change left unversioned, so that Wait compares
	// with a version.)
	if v := queryValue(r.URL.RawQuery, "wait"); err == nil && ds == nil && v != "" && w.Header().Get(api.HeaderTunnelToken) == "" {
		if wait, _ := strconv.Atoi(v); wait > 0 {
			wctx := r.Context()
			if wake != nil {
				var cancel context.CancelFunc
				wctx, cancel = context.WithCancel(wctx)
				defer cancel()
				go func() {
					select {
					case <-wake:
						cancel()
					case <-wctx.Done():
					}
				}()
			}
			s.fleet.Wait(wctx, id.Namespace, id.Name, since, time.Duration(min(wait, 60))*time.Second)
			ds, rev, err = s.fleet.Desired(id.Namespace, id.Name, id.UID, since)
			if wake != nil {
				s.tunnelWanted(w, key)
			}
		}
	}
	if err != nil {
		fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cluster not loaded yet; try again shortly")
		return
	}
	secs := s.pollAfter(w, id.UID)
	if s.Doorbell != nil {
		w.Header().Set(api.HeaderDoorbell, strconv.Itoa(s.Doorbell.Port()))
		if pinging {
			w.Header().Set(api.HeaderBellPollAfter, strconv.Itoa(max(1, int(s.fleet.BellPollAfter(id.UID, s.now()).Seconds()))))
		}
	}
	if ds == nil {
		s.Metrics.AgentRequest("desired", "not_modified")
		w.Header().Set(api.HeaderRevision, strconv.FormatInt(rev, 10))
		w.WriteHeader(http.StatusNotModified)
		return
	}
	ds.PollAfterSeconds = secs
	if s.InlineContent > 0 && queryValue(r.URL.RawQuery, "inline") == "1" {
		s.inline(r.Context(), id, ds)
	}
	w.Header().Set("Content-Type", "application/json")
	// An answer its agent would refuse to read is refused here, saying why, rather than
	// sent in vain again and again. encoding/json encodes a value whole before it writes
	// it, so the check comes before any byte of the answer is sent.
	cw := &cappedWriter{w: w, limit: api.MaxDesiredBytes}
	err = json.NewEncoder(cw).Encode(ds)
	if errors.Is(err, errTooLarge) && ds.Contents != nil && cw.refused-inlinedBytes(ds) <= api.MaxDesiredBytes {
		// The archives are a saving, not a need: the agent fetches what it is not sent.
		ds.Contents = nil
		err = json.NewEncoder(cw).Encode(ds)
	}
	if errors.Is(err, errTooLarge) {
		s.Metrics.AgentRequest("desired", "too_large")
		// Bundles too large for every cluster would make one line per poll of each: one
		// a minute says it, the metric counts them all.
		if s.tooLargeLog.Allow() {
			s.log.Warn("a cluster's desired state is larger than its agent reads; it cannot be sent (logged at most once a minute)",
				"cluster", key, "deployments", len(ds.Deployments), "limit", api.MaxDesiredBytes)
		}
		fail(w, http.StatusInternalServerError, api.ReasonDesiredTooLarge, fmt.Sprintf(
			"the desired state of cluster %s (%d deployments) is larger than the %d bytes an agent reads; target fewer or smaller bundles at it",
			key, len(ds.Deployments), api.MaxDesiredBytes))
		return
	}
	s.Metrics.AgentRequest("desired", "changed")
	for range ds.Contents {
		s.Metrics.AgentRequest("content", "inline")
	}
}

// inlinedBytes is about what ds.Contents take in ds's encoding (base64 and the digests).
func inlinedBytes(ds *api.DesiredState) int {
	n := 0
	for digest, data := range ds.Contents {
		n += len(digest) + base64.StdEncoding.EncodedLen(len(data))
	}
	return n
}

// errTooLarge is cappedWriter's refusal.
var errTooLarge = errors.New("answer too large")

// cappedWriter writes to w at most limit bytes; a write that would pass them is refused
// whole, its length kept in refused.
type cappedWriter struct {
	w              io.Writer
	limit, written int
	refused        int
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	if c.written+len(p) > c.limit {
		c.refused = c.written + len(p)
		return 0, errTooLarge
	}
	c.written += len(p)
	return c.w.Write(p)
}

// inline puts into ds the archives its cluster is about to fetch, as many as fit in
// s.InlineContent: in a rollout that is one request per cluster fewer (a third of them),
// and for an agent far away, a round trip. Content it reads from the store is cached, so
// an archive too large to carry is served from memory when the agent fetches it. The
// answer does not wait long for the store: what it cannot read soon, the agent fetches.
func (s *Server) inline(ctx context.Context, id identity, ds *api.DesiredState) {
	ctx, cancel := context.WithTimeout(ctx, s.inlineWait)
	defer cancel()
	var buf [maxInlineDigests]string
	left, reads := min(s.InlineContent, api.MaxInlineContent), 0
	for _, digest := range s.fleet.Unapplied(id.Namespace, id.Name, id.UID, ds, maxInlineDigests, buf[:0]) {
		if left == 0 {
			break
		}
		if n, ok := s.cache.sizeOf(digest); ok && n > left {
			continue
		}
		data, ok := s.cache.get(digest)
		if !ok {
			// A cluster of many bundles polling again and again must not make each poll
			// read them all.
			if reads++; reads > maxInlineReads {
				continue
			}
			var err error
			if data, err = s.load(ctx, digest); err != nil {
				// The agent fetches it, and hears of the error then.
				continue
			}
		}
		if len(data) > left {
			continue
		}
		left -= len(data)
		if ds.Contents == nil {
			ds.Contents = make(map[string][]byte, 1)
		}
		ds.Contents[digest] = data
	}
}

// load reads digest's archive from the store and caches it, once however many requests
// want it at the same time: a rollout wakes thousands of held polls that all miss the
// cache for the same archive.
func (s *Server) load(ctx context.Context, digest string) ([]byte, error) {
	// A caller that stopped waiting (an answer's inline budget spent) starts no read.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := s.flight.DoChan(digest, func() (data any, err error) {
		// The read runs in singleflight's goroutine, which re-raises a panic outside
		// net/http's recovery: it would take the process down, not fail one request.
		defer func() {
			if p := recover(); p != nil {
				data, err = nil, fmt.Errorf("reading content %s: %v", digest, p)
			}
		}()
		// A request that missed the cache just as another read filled it.
		if data, ok := s.cache.get(digest); ok {
			return data, nil
		}
		// Not bound to the first caller's request: its end must not fail the others.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		b, err := s.st.GetContent(rctx, digest)
		if err != nil {
			return nil, err
		}
		s.cache.put(digest, b)
		return b, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// content serves a bundle's content archive to a cluster that deploys it. Content is
// immutable: its name is its digest.
func (s *Server) content(w http.ResponseWriter, r *http.Request) {
	id, ok := s.cluster(w, r)
	if !ok {
		return
	}
	digest := r.PathValue("digest")
	if !s.fleet.References(id.Namespace, id.Name, id.UID, digest) {
		fail(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("content %s is not part of cluster %s/%s's desired state", digest, id.Namespace, id.Name))
		return
	}
	data, ok := s.cache.get(digest)
	if ok {
		s.Metrics.AgentRequest("content", "cache")
	} else {
		s.Metrics.AgentRequest("content", "store")
		var err error
		if data, err = s.load(r.Context(), digest); err != nil {
			apiserver.WriteError(w, err)
			return
		}
	}
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
	w.Header().Set("ETag", `"`+digest+`"`)
	w.Write(data)
}

// Limits of one status report. A cluster credential is all an attacker on an edge cluster
// holds: what it may make the server store is bounded by the bundles that target its
// cluster (checked by the fleet model) and by these.
const (
	// maxReport bounds a report's body.
	maxReport = 1 << 20
	// maxReportEntries bounds deployments plus removals in one report.
	maxReportEntries = 1000
	// maxReportMessage bounds one deployment's message as sent; the agent cuts its
	// messages to 1 KiB, and the server stores at most that.
	maxReportMessage = 4 << 10
	// maxReportID bounds a deployment ID (the server makes 32-character ones).
	maxReportID = 128
	// maxBundleKey is a namespace (63) and a name (253) with the slash between.
	maxBundleKey = 63 + 1 + 253
	// maxInventory bounds the inventory, as JSON; agents send about 250 bytes.
	maxInventory = 2 << 10
	// maxAccessError bounds the access apply error an agent reports.
	maxAccessError = 4 << 10
	// maxUsageEntries bounds the quota usage of one report: resources over every project
	// namespace (a namespace's quota names a handful).
	maxUsageEntries = api.MaxAccessUsageEntries
)

func reportStatus(code int, reason, msg string, causes []api.StatusCause) *api.Status {
	st := &api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg}
	if len(causes) > 0 {
		st.Details = &api.StatusDetails{Kind: "StatusReport", Causes: causes}
	}
	return st
}

// decodeReport decodes and checks a status report body. Whatever it refuses is refused
// whole, with a 4xx Status naming what is wrong; nothing of it is stored.
func decodeReport(body []byte) (*api.StatusReport, error) {
	if len(body) > maxReport {
		return nil, reportStatus(http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("status report exceeds %d bytes", maxReport), nil)
	}
	var rep api.StatusReport
	if err := json.Unmarshal(body, &rep); err != nil {
		return nil, reportStatus(http.StatusBadRequest, api.ReasonBadRequest, "malformed status report: "+strings.TrimPrefix(err.Error(), "json: "), nil)
	}
	if n := len(rep.Deployments) + len(rep.Removed); n > maxReportEntries {
		return nil, reportStatus(http.StatusRequestEntityTooLarge, api.ReasonTooLarge,
			fmt.Sprintf("status report has %d entries (deployments and removals); at most %d are accepted in one report", n, maxReportEntries), nil)
	}
	var causes []api.StatusCause
	// field is a format taking the entry's index: names are made only for what is refused.
	bad := func(field string, i int, format string, args ...any) {
		if len(causes) < 10 {
			if strings.Contains(field, "%d") {
				field = fmt.Sprintf(field, i)
			}
			causes = append(causes, api.StatusCause{Field: field, Message: fmt.Sprintf(format, args...)})
		}
	}
	if rep.Seq < 1 {
		bad("seq", 0, "must be at least 1")
	}
	if rep.Inventory != nil {
		if raw, _ := json.Marshal(rep.Inventory); len(raw) > maxInventory {
			bad("inventory", 0, "is %d bytes as JSON; at most %d", len(raw), maxInventory)
		}
	}
	if rep.Access != nil {
		checkAccess(rep.Access, bad)
	}
	// Most reports carry one entry: no set for those.
	var seen map[string]bool
	if len(rep.Deployments) > 1 || len(rep.Removed) > 1 {
		seen = make(map[string]bool, max(len(rep.Deployments), len(rep.Removed)))
	}
	for i, d := range rep.Deployments {
		if msg := checkBundleKey(d.Bundle); msg != "" {
			bad("deployments[%d].bundle", i, "%s", msg)
		} else if seen[d.Bundle] {
			bad("deployments[%d].bundle", i, "%q is reported twice", d.Bundle)
		}
		if seen != nil {
			seen[d.Bundle] = true
		}
		if !api.KnownState(d.State) {
			bad("deployments[%d].state", i, "unknown state %.40q", d.State)
		}
		if len(d.ID) > maxReportID {
			bad("deployments[%d].id", i, "is %d bytes; at most %d", len(d.ID), maxReportID)
		}
		if len(d.Message) > maxReportMessage {
			bad("deployments[%d].message", i, "is %d bytes; at most %d", len(d.Message), maxReportMessage)
		}
	}
	clear(seen)
	for i, key := range rep.Removed {
		if msg := checkBundleKey(key); msg != "" {
			bad("removed[%d]", i, "%s", msg)
		} else if seen[key] {
			bad("removed[%d]", i, "%q is listed twice", key)
		}
		if seen != nil {
			seen[key] = true
		}
	}
	if len(causes) > 0 {
		msgs := make([]string, len(causes))
		for i, c := range causes {
			msgs[i] = c.Field + ": " + c.Message
		}
		return nil, reportStatus(http.StatusUnprocessableEntity, api.ReasonInvalid, "status report refused: "+strings.Join(msgs, "; "), causes)
	}
	return &rep, nil
}

// checkAccess checks an access report: bounded, with DNS-label names and quantities that
// parse, so that the project rollup takes only well-formed usage.
func checkAccess(a *api.AccessReport, bad func(field string, i int, format string, args ...any)) {
	if len(a.Digest) > maxReportID {
		bad("access.digest", 0, "is %d bytes; at most %d", len(a.Digest), maxReportID)
	}
	if len(a.Error) > maxAccessError {
		bad("access.error", 0, "is %d bytes; at most %d", len(a.Error), maxAccessError)
	}
	n := 0
	for p, nss := range a.Usage {
		if errs := validation.IsDNS1123Subdomain(p); len(errs) > 0 {
			bad("access.usage", 0, "project %.80q: %s", p, errs[0])
		}
		for ns, res := range nss {
			if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
				bad("access.usage", 0, "namespace %.80q of project %.80q: %s", ns, p, errs[0])
			}
			for k, v := range res {
				if n++; n == maxUsageEntries+1 {
					bad("access.usage", 0, "has more than %d entries", maxUsageEntries)
				}
				if errs := validation.IsQualifiedName(k); len(errs) > 0 {
					bad("access.usage", 0, "resource %.80q: %s", k, errs[0])
				}
				if _, err := resource.ParseQuantity(v); err != nil || len(v) > 64 {
					bad("access.usage", 0, "%s of namespace %s: %.64q is not a quantity", k, ns, v)
				}
			}
		}
	}
}

// checkBundleKey says what is wrong with a bundle's "namespace/name", or "".
func checkBundleKey(k string) string {
	ns, name, ok := strings.Cut(k, "/")
	switch {
	case len(k) > maxBundleKey:
		return fmt.Sprintf("bundle key is %d bytes; at most %d", len(k), maxBundleKey)
	case !ok || ns == "" || name == "" || strings.Contains(name, "/"):
		return fmt.Sprintf("%.80q is not a bundle's namespace/name", k)
	}
	return ""
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	id, ok := s.cluster(w, r)
	if !ok {
		return
	}
	buf := reportBufs.Get().(*bytes.Buffer)
	defer putReportBuf(buf)
	buf.Reset()
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxReport))
	body := buf.Bytes()
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			fail(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("status report exceeds %d bytes", maxReport))
			return
		}
		fail(w, http.StatusBadRequest, api.ReasonBadRequest, "reading status report: "+err.Error())
		return
	}
	rep, err := decodeReport(body)
	if err != nil {
		s.Metrics.AgentRequest("status", "refused")
		apiserver.WriteError(w, err)
		return
	}
	res, err := s.fleet.Report(r.Context(), id.Namespace, id.Name, id.UID, rep, s.now())
	if err != nil {
		if errors.Is(err, fleet.ErrUnknownCluster) {
			fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cluster not loaded yet; try again shortly")
			return
		}
		if r.Context().Err() == nil {
			s.log.Error("storing status report", "cluster", id.Namespace+"/"+id.Name, "err", err)
		}
		fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "could not store the report; send it again")
		return
	}
	if len(res.Refused) > 0 {
		// The rest of the report is stored: an agent that drops a refused report (as it
		// does on a 4xx) loses nothing the server would have kept.
		s.Metrics.AgentRequest("status", "refused")
		msgs := make([]string, 0, len(res.Refused))
		for _, c := range res.Refused[:min(len(res.Refused), 10)] {
			msgs = append(msgs, c.Field+": "+c.Message)
		}
		apiserver.WriteError(w, reportStatus(http.StatusUnprocessableEntity, api.ReasonInvalid,
			fmt.Sprintf("%d of %d entries of status report %d were refused and not stored (the others were): %s",
				len(res.Refused), len(rep.Deployments)+len(rep.Removed), rep.Seq, strings.Join(msgs, "; ")), res.Refused))
		return
	}
	if res.Fresh {
		s.Metrics.AgentRequest("status", "accepted")
	} else {
		s.Metrics.AgentRequest("status", "duplicate")
	}
	// As json.Encoder writes api.StatusAck, without its allocations: an idle fleet's
	// heartbeats are most of what the server allocates, and so of its collections.
	w.Header().Set("Content-Type", "application/json")
	ack := append(buf.AvailableBuffer(), `{"seq":`...)
	ack = strconv.AppendInt(ack, rep.Seq, 10)
	w.Write(append(ack, "}\n"...))
}

// reportBufs are the buffers status reports are read into. Nothing decoded from a report
// keeps its bytes (encoding/json copies what it keeps), so a buffer is used again once the
// report is taken; one grown past maxPooledReport by a large report is left to the collector.
var reportBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledReport = 64 << 10

func putReportBuf(b *bytes.Buffer) {
	if b.Cap() <= maxPooledReport {
		reportBufs.Put(b)
	}
}

// contentCache keeps recently served content: one bundle change sends the same archive to
// every targeted cluster.
type contentCache struct {
	mu    sync.Mutex
	max   int
	size  int
	items map[string][]byte
	// large are the sizes of archives too large to keep, so that inlining does not read
	// them from the store for every answer only to find them too large to carry.
	large map[string]int
}

// maxLarge bounds contentCache.large; it is emptied when full.
const maxLarge = 1024

func newContentCache(max int) *contentCache {
	return &contentCache{max: max, items: map[string][]byte{}, large: map[string]int{}}
}

// sizeOf returns the size of k's archive if the cache knows it.
func (c *contentCache) sizeOf(k string) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.items[k]; ok {
		return len(v), true
	}
	n, ok := c.large[k]
	return n, ok
}

func (c *contentCache) get(k string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.items[k]
	return v, ok
}

func (c *contentCache) put(k string, v []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(v) > c.max/4 {
		if len(c.large) >= maxLarge {
			clear(c.large)
		}
		c.large[k] = len(v)
		return
	}
	for key, old := range c.items {
		if c.size+len(v) <= c.max {
			break
		}
		delete(c.items, key)
		c.size -= len(old)
	}
	if _, ok := c.items[k]; !ok {
		c.items[k] = v
		c.size += len(v)
	}
}

// queryValue returns the first value of key in a raw query string. The poll is the request
// a fleet makes most, and url.Values builds a map for every parse: this reads the two
// numbers it needs without allocating, unescaping only values that need it.
func queryValue(raw, key string) string {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k != key {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			v, _ = url.QueryUnescape(v)
		}
		return v
	}
	return ""
}
