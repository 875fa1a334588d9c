// Package proxy owns the Kubernetes API endpoint of every cluster on the server,
// https://SERVER/k8s/clusters/NAME/…: it authenticates the caller, lets through only a
// caller Flotilla's RBAC lets reach the cluster, and forwards the call through the cluster's
// tunnel impersonating the caller's Flotilla identity, so that the cluster's own RBAC (as
// compiled from Flotilla's bindings) decides the rest.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/tunnel"
)

// Authenticator names the caller of a request.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*auth.Identity, error)
}

// Authorizer decides with Flotilla's RBAC.
type Authorizer interface {
	Decide(s rbac.Subject, r rbac.Request) rbac.Decision
	Impersonation(s rbac.Subject, c rbac.Cluster) (user string, groups []string, ok bool)
}

// Tunnels reaches clusters' agents.
type Tunnels interface {
	Await(ctx context.Context, cluster string, timeout time.Duration) error
	Dial(ctx context.Context, cluster string) (net.Conn, error)
}

// Getter reads Cluster objects.
type Getter interface {
	Get(ctx context.Context, key store.Key) (*api.Object, error)
}

// Tokens makes the API tokens kubeconfigs carry.
type Tokens interface {
	CreateAPIToken(ctx context.Context, id *auth.Identity, req api.CreateTokenRequest) (*api.CreatedToken, error)
}

// Config is what the proxy works with.
type Config struct {
	Auth    Authenticator
	Authz   Authorizer
	Tunnels Tunnels
	Store   Getter
	// Labels are a cluster's labels from the in-memory fleet model, if it knows the cluster;
	// nil, or a cluster it does not know, reads the Cluster from the store.
	Labels func(ns, name string) (map[string]string, bool)
	// ClusterGroups names the ClusterGroups holding a cluster of a workspace with labels.
	ClusterGroups func(ns string, labels map[string]string) []string
	// Wait is how long a call waits for a cluster without a tunnel to open one (0: 30s).
	Wait time.Duration
	// LastSeen is when a cluster's agent last called (zero: unknown); nil, or zero, uses the
	// Cluster's stored status.lastSeen.
	LastSeen func(ns, name string) time.Time
	// PollInterval is the agents' poll interval, for the message when a cluster does not
	// come; nil leaves it out.
	PollInterval func() time.Duration
	Logger       *slog.Logger
	// BodyTimeout is how long a proxied call may take to send its request body (0: 2m): a
	// client sending it slowly must not hold a tunnel stream for ever. Calls without a body
	// (watches, logs) and upgraded ones (exec, attach, port-forward) last as long as their
	// client and the tunnel do.
	BodyTimeout time.Duration
	// WriteTimeout is how long one write of a proxied call's answer may wait for its client
	// to take it (0: 2m): a client that stops reading must not hold a tunnel stream for ever.
	// Time between writes does not count, so a quiet watch lasts as long as it lasts.
	WriteTimeout time.Duration
	// Tokens and CAPEM serve PathKubeconfig; without Tokens it is not served.
	Tokens Tokens
	CAPEM  []byte
	// ExternalURL is the server's address written into kubeconfigs (https://HOST[:PORT]);
	// empty means https:// and the address the request was made to.
	ExternalURL string
	// Replicated says several server replicas share the store: a cluster's tunnel opens to
	// the replica its agent polls, and calls are not forwarded between replicas, so a call
	// that waited in vain says so.
	Replicated bool
}

// maxBody bounds a proxied request's body; the API server refuses larger ones anyway.
const maxBody = 16 << 20

// Proxy serves PathK8sClusters.
type Proxy struct {
	cfg Config
	rp  *httputil.ReverseProxy
}

type ctxKey struct{}

// target is where a request goes, carried from the handler to the transport's dial.
type target struct {
	cluster      string // namespace/name
	path         string // the path forwarded, escaped, as decided on
	body         *body
	user         string
	groups       []string
	flotillaUser string
	auditID      string
}

// New makes the proxy.
func New(cfg Config) *Proxy {
	if cfg.Wait <= 0 {
		cfg.Wait = 30 * time.Second
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 2 * time.Minute
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Proxy{cfg: cfg}
	tr := &http.Transport{
		// One stream per request: a tunnel with no request in flight has no stream open, so
		// the agent can tell it is idle.
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			t, _ := ctx.Value(ctxKey{}).(*target)
			if t == nil {
				return nil, errors.New("no cluster for this request")
			}
			return cfg.Tunnels.Dial(ctx, t.cluster)
		},
		ResponseHeaderTimeout: 2 * time.Minute,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:       p.rewrite,
		Transport:     tr,
		FlushInterval: -1, // watches stream
		ErrorLog:      slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(ctxKey{}).(*target)
			// The transport reports a failed read of the request body in its own words: the
			// body says what it met.
			var tooLarge *http.MaxBytesError
			switch berr := t.body.failed(); {
			case errors.As(berr, &tooLarge):
				writeStatus(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge,
					fmt.Sprintf("the request body is larger than %d bytes", tooLarge.Limit))
				return
			case errors.Is(berr, os.ErrDeadlineExceeded):
				writeStatus(w, http.StatusRequestTimeout, string(metav1.StatusReasonTimeout),
					fmt.Sprintf("the request body did not arrive within %s", cfg.BodyTimeout))
				return
			}
			cfg.Logger.Info("proxied call failed", "cluster", t.cluster, "err", err)
			writeStatus(w, http.StatusBadGateway, api.ReasonUnavailable, fmt.Sprintf("cluster %s could not be reached through its tunnel", t.cluster))
		},
	}
	return p
}

// Register adds the endpoint to mux.
func (p *Proxy) Register(mux *http.ServeMux) {
	mux.Handle(api.PathK8sClusters, p)
	if p.cfg.Tokens != nil {
		mux.HandleFunc("POST "+api.PathKubeconfig+"{cluster}", p.kubeconfig)
	}
}

// kubeconfig writes a kubeconfig for a cluster the caller may reach, with a new API token.
func (p *Proxy) kubeconfig(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("cluster")
	ns, name, err := ParseCluster(ref)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	rc, ok := p.reach(w, r, ns, name)
	if !ok {
		return
	}
	t, err := p.cfg.Tokens.CreateAPIToken(r.Context(), rc.id, api.CreateTokenRequest{Description: "kubeconfig for cluster " + ns + "/" + name, TTL: r.URL.Query().Get("ttl")})
	if err != nil {
		if errors.Is(err, auth.ErrBadTokenRequest) {
			writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
			return
		}
		apiserver.WriteError(w, err)
		return
	}
	ctxName := "flotilla-" + ref
	cfg := clientcmdapi.NewConfig()
	server := p.cfg.ExternalURL
	if server == "" {
		server = "https://" + r.Host
	}
	cfg.Clusters[ctxName] = &clientcmdapi.Cluster{Server: server + api.PathK8sClusters + ref, CertificateAuthorityData: p.cfg.CAPEM}
	cfg.AuthInfos[ctxName] = &clientcmdapi.AuthInfo{Token: t.Token}
	cfg.Contexts[ctxName] = &clientcmdapi.Context{Cluster: ctxName, AuthInfo: ctxName}
	cfg.CurrentContext = ctxName
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		apiserver.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(data)
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	apiserver.WriteError(w, &api.Status{Code: code, Reason: reason, Message: msg})
}

// stripped are request headers no client may send through: the proxy sets who the caller
// is, and the cluster must not see the caller's Flotilla credentials.
func stripped(name string) bool {
	switch {
	case strings.HasPrefix(name, "Impersonate-"), strings.HasPrefix(name, "X-Remote-"), strings.HasPrefix(name, "Proxy-"):
		return true
	}
	// httputil.ReverseProxy drops the other hop-by-hop headers, and those Connection names,
	// but keeps "Te: trailers", which no Kubernetes call needs.
	switch name {
	case "Authorization", "Cookie", "Audit-Id", "Te":
		return true
	}
	return false
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(ctxKey{}).(*target)
	out, _ := url.Parse("http://cluster")
	out.Path, _ = url.PathUnescape(t.path)
	out.RawPath = t.path
	out.RawQuery = pr.In.URL.RawQuery
	pr.Out.URL = out
	pr.Out.Host = "cluster"
	for name := range pr.Out.Header {
		if stripped(http.CanonicalHeaderKey(name)) {
			delete(pr.Out.Header, name)
		}
	}
	pr.Out.Header.Set("Impersonate-User", t.user)
	for _, g := range t.groups {
		pr.Out.Header.Add("Impersonate-Group", g)
	}
	pr.Out.Header.Set("Impersonate-Extra-"+rbac.ExtraUserKey, t.flotillaUser)
	pr.Out.Header.Set("Audit-Id", t.auditID)
}

// ParseCluster reads a cluster's reference in a path: NAME in the default workspace, or
// WORKSPACE.NAME (both are DNS labels, so the dot is unambiguous).
func ParseCluster(ref string) (ns, name string, err error) {
	ns, name = api.DefaultNamespace, ref
	if w, n, ok := strings.Cut(ref, "."); ok {
		ns, name = w, n
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return "", "", fmt.Errorf("workspace %.80q: %s", ns, errs[0])
		}
	}
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		return "", "", fmt.Errorf("cluster name %.80q: %s; want NAME or WORKSPACE.NAME", name, errs[0])
	}
	return ns, name, nil
}

// forwardedPath is the escaped path a call is forwarded to, from the escaped path after the
// cluster's reference. Kubernetes reads its paths segment by segment, so the path must be
// the one decided on here: no . or .. segment, no empty one, no slash in a segment.
func forwardedPath(sub string) (string, error) {
	if sub == "" {
		return "/", nil
	}
	dec, err := url.PathUnescape(sub)
	if err != nil {
		return "", fmt.Errorf("the path is not properly escaped: %v", err)
	}
	if strings.Count(dec, "/") != strings.Count(sub, "/") {
		return "", errors.New("the path must not contain an escaped slash (%2F)")
	}
	if path.Clean("/"+dec) != "/"+strings.TrimSuffix(dec, "/") {
		return "", errors.New("the path must not contain ., .. or empty segments")
	}
	return "/" + sub, nil
}

// ServeHTTP decides and forwards one call.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ref, sub, _ := strings.Cut(strings.TrimPrefix(r.URL.EscapedPath(), api.PathK8sClusters), "/")
	if ref == "" {
		writeStatus(w, http.StatusNotFound, api.ReasonNotFound, "no cluster named in the path: want "+api.PathK8sClusters+"[WORKSPACE.]NAME/…")
		return
	}
	ns, name, err := ParseCluster(ref)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	fwd, err := forwardedPath(sub)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	// An upgrade as httputil.ReverseProxy sees one: an Upgrade header without "Connection:
	// upgrade" is dropped as hop-by-hop and the call forwarded as a plain one, which must keep
	// its budgets (a bare "Upgrade: x" must not turn them off).
	upgrade := r.Header.Get("Upgrade") != "" && httpguts.HeaderValuesContainsToken(r.Header["Connection"], "Upgrade")
	if !upgrade && r.ContentLength > maxBody {
		writeStatus(w, http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("the request body is larger than %d bytes", maxBody))
		return
	}
	rc, ok := p.reach(w, r, ns, name)
	if !ok {
		return
	}
	id, user, groups := rc.id, rc.user, rc.groups
	key := ns + "/" + name
	if err := p.cfg.Tunnels.Await(r.Context(), key, p.cfg.Wait); err != nil {
		if errors.Is(err, tunnel.ErrNoTunnel) {
			w.Header().Set("Retry-After", "10")
			writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, p.absent(r.Context(), ns, name))
			return
		}
		apiserver.WriteError(w, err)
		return
	}
	auditID := audit.RequestID(r.Context())
	if auditID == "" {
		auditID = apiserver.NewUID()
	}
	w.Header().Set("Audit-Id", auditID)
	t := &target{cluster: key, path: fwd, user: user, groups: groups, flotillaUser: id.User, auditID: auditID}
	if r.Body != nil && r.ContentLength != 0 && !upgrade { // -1: chunked, or HTTP/2 without a length
		// The body has a budget; the call's answer has none, as a watch streams.
		if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(p.cfg.BodyTimeout)); err != nil {
			p.cfg.Logger.Debug("no read deadline for a proxied call's body", "err", err)
		}
		t.body = &body{ReadCloser: http.MaxBytesReader(w, r.Body, maxBody)}
		r.Body = t.body
	}
	// Upgrades too: one the cluster refuses is answered as a plain call, through Write; one it
	// accepts hijacks the connection through Unwrap and never writes here.
	w = &budgeted{ResponseWriter: w, rc: http.NewResponseController(w), budget: p.cfg.WriteTimeout}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, t)))
}

// budgeted gives each write and flush of an answer its own deadline, lifted after it: a
// client that stops reading fails the write, which ends the call and frees its stream, while
// the time a watch waits between events costs nothing. (http.Server's WriteTimeout would bound
// the whole answer, which a watch must not have.) An upgraded call hijacks the connection
// through Unwrap and has no deadline once upgraded.
type budgeted struct {
	http.ResponseWriter
	rc     *http.ResponseController
	budget time.Duration
}

func (b *budgeted) Write(p []byte) (int, error) {
	b.rc.SetWriteDeadline(time.Now().Add(b.budget))
	defer b.rc.SetWriteDeadline(time.Time{})
	return b.ResponseWriter.Write(p)
}

// FlushError is what http.ResponseController (which ReverseProxy flushes through) calls
// before unwrapping.
func (b *budgeted) FlushError() error {
	b.rc.SetWriteDeadline(time.Now().Add(b.budget))
	defer b.rc.SetWriteDeadline(time.Time{})
	return b.rc.Flush()
}

func (b *budgeted) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// body is a proxied call's request body. It keeps the error that ended it, which the
// transport reports in its own words. (The read deadline needs no lifting once the body is
// read: net/http lifts it when it starts watching the connection for the client leaving.)
type body struct {
	io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

// failed is the error that ended the body early, if any; nil for no body.
func (b *body) failed() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// reached is a caller allowed to reach a cluster, and as whom.
type reached struct {
	id     *auth.Identity
	ns     string
	user   string
	groups []string
}

// reach authenticates the caller and decides whether they may reach cluster ns/name at all;
// otherwise it writes the answer.
func (p *Proxy) reach(w http.ResponseWriter, r *http.Request, ns, name string) (*reached, bool) {
	id, err := p.cfg.Auth.Authenticate(r.Context(), auth.BearerToken(r))
	if err != nil {
		apiserver.WriteError(w, err)
		return nil, false
	}
	audit.Annotate(r.Context(), id.User, id.Groups, api.KindCluster, ns, name)
	subj := rbac.Subject{User: id.User, Groups: id.Groups}
	c := rbac.Cluster{Name: name, Workspace: ns}
	var found bool
	if p.cfg.Labels != nil {
		c.Labels, found = p.cfg.Labels(ns, name)
	}
	if !found {
		// Not in the model (or no model): the store decides, which also finds a cluster
		// registered a moment ago that the model has not seen yet.
		obj, err := p.cfg.Store.Get(r.Context(), store.Key{Kind: api.KindCluster, Namespace: ns, Name: name})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			apiserver.WriteError(w, err)
			return nil, false
		}
		if obj != nil {
			c.Labels, found = obj.Metadata.Labels, true
		}
	}
	if found && p.cfg.ClusterGroups != nil {
		c.Groups = p.cfg.ClusterGroups(ns, c.Labels)
	}
	d := p.cfg.Authz.Decide(subj, rbac.Request{Verb: api.VerbGet, Kind: api.KindCluster, Namespace: ns, Name: name, Cluster: &c})
	if !d.Allowed {
		// The same answer whether the cluster exists or not: no probing for names.
		writeStatus(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("%s may not reach cluster %s/%s: %s", id.User, ns, name, d.Reason()))
		return nil, false
	}
	if !found {
		writeStatus(w, http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("cluster %s/%s not found", ns, name))
		return nil, false
	}
	user, groups, ok := p.cfg.Authz.Impersonation(subj, c)
	if !ok {
		writeStatus(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("%s has no role binding granting anything on cluster %s/%s", id.User, ns, name))
		return nil, false
	}
	return &reached{id: id, ns: ns, user: user, groups: groups}, true
}

// absent says why a cluster's tunnel did not come, and when its agent was last heard of.
func (p *Proxy) absent(ctx context.Context, ns, name string) string {
	msg := fmt.Sprintf("cluster %s/%s did not open its tunnel within %s", ns, name, p.cfg.Wait)
	var seen time.Time
	if p.cfg.LastSeen != nil {
		seen = p.cfg.LastSeen(ns, name)
	}
	if seen.IsZero() {
		// Not seen by this server since it started: the stored record says.
		var st api.ClusterStatus
		if obj, err := p.cfg.Store.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: ns, Name: name}); err == nil &&
			json.Unmarshal(obj.Status, &st) == nil && st.LastSeen != nil {
			seen = *st.LastSeen
		}
	}
	if !seen.IsZero() {
		msg += fmt.Sprintf("; its agent was last seen at %s", seen.UTC().Format(time.RFC3339))
		if p.cfg.PollInterval != nil {
			msg += fmt.Sprintf(" and is expected by %s, when it next polls", seen.Add(p.cfg.PollInterval()).UTC().Format(time.RFC3339))
		}
	} else {
		msg += "; its agent has never been seen"
	}
	msg += "; the request for a tunnel stays open for a while: try again"
	if p.cfg.Replicated {
		msg += "; with several server replicas, the tunnel opens to the replica the cluster's agent polls and calls are not forwarded between replicas: send calls for this cluster to that replica (session affinity)"
	}
	return msg
}
