// Package apiserver serves Flotilla's resources over HTTP in the Kubernetes style: create,
// read, update (with resourceVersion preconditions), delete, list with label selectors and
// continue tokens, watch streams, and the status subresource. It authenticates every call,
// validates through package resource, and keeps everything it stores in the store.
package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// Hooks let other parts of the server take part in writes of particular kinds, e.g. moving
// a Bundle's inline resources into the content store, or minting a RegistrationToken.
type Hooks interface {
	// BeforeCreate may change obj, or refuse it with an error (an *api.Status keeps its code).
	BeforeCreate(ctx context.Context, obj *api.Object, dryRun bool) error
	// AfterCreate may change the response (e.g. to show a secret once).
	AfterCreate(ctx context.Context, obj *api.Object) error
	BeforeUpdate(ctx context.Context, old, obj *api.Object, dryRun bool) error
}

// DeleteHook is told of an object the API deleted, once the store has removed it.
type DeleteHook interface {
	AfterDelete(ctx context.Context, obj *api.Object)
}

// ResponseFilter may be implemented by a kind's Hooks when objects of that kind hold values
// the API must never return (a Secret's data): every object of the kind the server writes
// out, whether from get, list, watch or a write, passes through FilterResponse first.
type ResponseFilter interface {
	// FilterResponse changes obj, a copy, in place; it cannot fail.
	FilterResponse(obj *api.Object)
}

// LiveStatus adds to a kind's objects what only the serving process knows, when they are
// read (a cluster's tunnel). It is never stored, and costs nothing while nothing is live.
type LiveStatus interface {
	// Live reports whether any object could be changed now.
	Live() bool
	// Has reports whether something is live for the object namespace/name.
	Has(namespace, name string) bool
	// Add adds it to obj, a copy.
	Add(obj *api.Object)
}

// Server handles /apis/….
type Server struct {
	store store.Store
	auth  *auth.Authenticator
	// access makes authorisation decisions; see SetAccess.
	access Access
	log    *slog.Logger
	hooks  map[string]Hooks
	live   map[string]LiveStatus
	// BookmarkInterval is how often an idle watch stream gets a bookmark carrying the
	// current revision, so a client can resume close to where it was.
	BookmarkInterval time.Duration
}

// New returns a Server over st.
func New(st store.Store, a *auth.Authenticator, log *slog.Logger) *Server {
	return &Server{store: st, auth: a, log: log, hooks: map[string]Hooks{}, live: map[string]LiveStatus{}, BookmarkInterval: 30 * time.Second}
}

// SetHooks installs hooks for one kind.
func (s *Server) SetHooks(kind string, h Hooks) { s.hooks[kind] = h }

// SetLiveStatus installs what adds live status to one kind's objects when they are read.
func (s *Server) SetLiveStatus(kind string, l LiveStatus) { s.live[kind] = l }

// respond writes obj through its kind's ResponseFilter, if any, with its live status.
func (s *Server) respond(w http.ResponseWriter, code int, obj *api.Object) error {
	return writeJSON(w, code, s.shown(obj))
}

// shown is obj as clients see it: filtered, with its live status. obj is not changed.
func (s *Server) shown(obj *api.Object) *api.Object {
	obj = s.view(obj)
	if l := s.live[obj.Kind]; l != nil && l.Live() && l.Has(obj.Metadata.Namespace, obj.Metadata.Name) {
		if _, filtered := s.hooks[obj.Kind].(ResponseFilter); !filtered {
			obj = obj.DeepCopy()
		}
		l.Add(obj)
	}
	return obj
}

// filterRaw is respond for stored JSON (list items, watch events): bytes of a filtered kind,
// or of an object with live status, are decoded and changed, never written as stored.
func (s *Server) filterRaw(kind string, raw json.RawMessage) json.RawMessage {
	_, filtered := s.hooks[kind].(ResponseFilter)
	if !filtered && !s.hasLive(kind, raw) {
		return raw
	}
	obj, err := store.Decode(raw)
	if err != nil {
		return json.RawMessage("{}")
	}
	out, err := json.Marshal(s.shown(obj))
	if err != nil {
		return json.RawMessage("{}")
	}
	return out
}

// hasLive reports whether the stored object raw has live status. Only its name is decoded:
// list pages stay stored bytes for every object without.
func (s *Server) hasLive(kind string, raw json.RawMessage) bool {
	l := s.live[kind]
	if l == nil || !l.Live() {
		return false
	}
	var m struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	return json.Unmarshal(raw, &m) == nil && l.Has(m.Metadata.Namespace, m.Metadata.Name)
}

// Register adds the resource routes to mux.
func (s *Server) Register(mux *http.ServeMux) {
	for _, g := range []string{api.Group, api.FleetGroup} {
		base := "/apis/" + g + "/{version}"
		mux.HandleFunc("GET "+base+"/{plural}", s.handle(s.kubeList))
		mux.HandleFunc("GET "+base+"/namespaces/{ns}/{plural}", s.handle(s.kubeList))
		mux.HandleFunc("POST "+base+"/namespaces/{ns}/{plural}", s.handle(s.create))
		mux.HandleFunc("GET "+base+"/namespaces/{ns}/{plural}/{name}", s.handle(s.kubeGet))
		mux.HandleFunc("PUT "+base+"/namespaces/{ns}/{plural}/{name}", s.handle(s.update))
		mux.HandleFunc("DELETE "+base+"/namespaces/{ns}/{plural}/{name}", s.handle(s.delete))
		mux.HandleFunc("GET "+base+"/namespaces/{ns}/{plural}/{name}/status", s.handle(s.get))
		mux.HandleFunc("PUT "+base+"/namespaces/{ns}/{plural}/{name}/status", s.handle(s.updateStatus))
		// Global kinds (users, roles, role bindings, projects) have no namespace.
		mux.HandleFunc("POST "+base+"/{plural}", s.handle(s.create))
		mux.HandleFunc("GET "+base+"/{plural}/{name}", s.handle(s.kubeGet))
		mux.HandleFunc("PUT "+base+"/{plural}/{name}", s.handle(s.update))
		mux.HandleFunc("DELETE "+base+"/{plural}/{name}", s.handle(s.delete))
	}
	s.registerKube(mux)
	mux.HandleFunc("POST "+api.PathCanI, s.canI)
}

// request is one authenticated call on one kind.
type request struct {
	r    *http.Request
	w    http.ResponseWriter
	id   *auth.Identity
	kind api.KindInfo
	ns   string
	name string
}

func (s *Server) handle(fn func(*request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w, done := groupWriter(w, r)
		defer done()
		req := &request{r: r, w: w, ns: r.PathValue("ns"), name: r.PathValue("name")}
		err := s.prepare(req)
		if req.id != nil {
			audit.Annotate(r.Context(), req.id.User, req.id.Groups, req.kind.Kind, req.ns, req.name)
		}
		if err == nil {
			err = fn(req)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
	}
}

func (s *Server) prepare(req *request) error {
	id, err := s.auth.Authenticate(req.r.Context(), auth.BearerToken(req.r))
	if err != nil {
		return err
	}
	req.id = id
	req.r = req.r.WithContext(context.WithValue(req.r.Context(), identityKey{}, id))
	if v := req.r.PathValue("version"); v != "" && v != api.Version {
		return statusErr(http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("API version %q is not served (use %s)", v, api.Version))
	}
	if p := req.r.PathValue("plural"); p != "" {
		k, ok := api.LookupKind(p)
		if !ok || k.Plural != p || (strings.HasPrefix(req.r.URL.Path, "/apis/"+api.FleetGroup+"/") && !api.KnownAPIVersion(api.FleetAPIVersion, k.Kind)) {
			return statusErr(http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("the server doesn't have a resource type %q", p))
		}
		req.kind = k
		if err := checkScope(req); err != nil {
			return err
		}
	}
	if req.ns == auth.SystemNamespace {
		return statusErr(http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("namespace %s is reserved for Flotilla itself", auth.SystemNamespace))
	}
	return nil
}

// checkScope refuses a namespaced kind on a global path with a name (a global path without one
// lists every namespace) and a global kind on a namespaced path.
func checkScope(req *request) error {
	k := req.kind
	switch {
	case k.Global && req.ns != "":
		return statusErr(http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("%s are global: they have no namespace (use /apis/%s/%s)", k.Plural, api.APIVersion, k.Plural))
	case !k.Global && req.ns == "" && (req.name != "" || req.r.Method == http.MethodPost):
		return statusErr(http.StatusNotFound, api.ReasonNotFound, fmt.Sprintf("%s live in a namespace: use /apis/%s/namespaces/NAMESPACE/%s", k.Plural, api.APIVersion, k.Plural))
	}
	return nil
}

func (req *request) key() store.Key {
	return store.Key{Kind: req.kind.Kind, Namespace: req.ns, Name: req.name}
}

func (s *Server) get(req *request) error {
	obj, err := s.authorizeObject(req, api.VerbGet)
	if err != nil {
		return err
	}
	if obj == nil {
		if obj, err = s.store.Get(req.r.Context(), req.key()); err != nil {
			return err
		}
	}
	return s.respond(req.w, http.StatusOK, obj)
}

func (s *Server) list(req *request) error {
	q := req.r.URL.Query()
	watch := q.Get("watch") == "true" || q.Get("watch") == "1"
	sc, err := s.listScopeOf(req, watch)
	if err != nil {
		return err
	}
	if watch {
		return s.watch(req, sc)
	}
	limit := 0
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 0 {
			return statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid limit %q", l))
		}
	}
	// The store reads on its own goroutine and hands objects over as it goes, so that they
	// are written while the rest are read: the store's part of a list of 10,000 at 1M is
	// ~40 ms, and writing its 7 MB (encrypting, the client reading) no longer follows it.
	// The store never waits for the writer: its read transaction ends with the last row
	// however slowly the client reads, and the objects wait in memory as they did before.
	out := newBatches()
	type listed struct {
		res *store.ListResult
		err error
	}
	done := make(chan listed, 1)
	go func() {
		var l listed
		defer func() {
			// On its own goroutine a panic would end the server, where net/http recovers
			// the handler's: it fails this list instead.
			if p := recover(); p != nil {
				s.log.Error("list panicked", "kind", req.kind.Kind, "panic", p, "stack", string(debug.Stack()))
				l = listed{err: fmt.Errorf("listing %s: panic: %v", req.kind.Kind, p)}
			}
			out.close()
			done <- l
		}()
		l.res, l.err = s.store.List(req.r.Context(), store.ListOptions{Kind: req.kind.Kind, Namespace: sc.ns, Selector: sc.sel, Limit: limit,
			Continue: q.Get("continue"), Items: out.put})
	}()
	first, end := out.next()
	var l listed
	finished := false
	if end {
		// Nothing was read, or it failed before the first object: a plain answer.
		if l, finished = <-done, true; l.err != nil {
			return listError(l.err)
		}
	}
	// Items are stored JSON: write them without decoding, which is what keeps a list of
	// ten thousand objects cheap. The metadata goes last, once the continue token is known.
	req.w.Header().Set("Content-Type", "application/json")
	req.w.WriteHeader(http.StatusOK)
	// net/http buffers 4 KB of the answer: ten thousand objects would be a thousand writes
	// to the connection (HTTP/1.1 chunks, or HTTP/2 frames), each a system call.
	w := bufio.NewWriterSize(req.w, listWriteBuffer)
	fmt.Fprintf(w, `{"apiVersion":%q,"kind":%q,"items":[`, api.APIVersion, req.kind.Kind+"List")
	n, received := 0, 0
	write := func(items []json.RawMessage) {
		for _, it := range items {
			// A page may hold fewer than limit items when the caller sees only some: the
			// continue token goes on from where the store stopped, as Kubernetes allows.
			if !sc.filter.keepRaw(it) {
				continue
			}
			if n > 0 {
				w.WriteByte(',')
			}
			n++
			w.Write(s.filterRaw(req.kind.Kind, it))
		}
	}
	for items := first; !end; items, end = out.next() {
		received += len(items)
		write(items)
	}
	if !finished {
		l = <-done
	}
	if l.err != nil {
		// The answer has begun and cannot become an error: it is cut off, which the client
		// sees. The objects written may still be in net/http's hands, so their memory is
		// not handed back. A client that went away is no news.
		if req.r.Context().Err() == nil {
			s.log.Warn("list failed after its first objects were sent", "kind", req.kind.Kind, "err", l.err)
		}
		panic(http.ErrAbortHandler)
	}
	if l.res == nil {
		l.res = &store.ListResult{}
	}
	// A store that hands over fewer objects than it answers (none, if it ignores Items)
	// still has them all written.
	if received < len(l.res.Items) {
		write(l.res.Items[received:])
	}
	meta, _ := json.Marshal(api.ListMeta{ResourceVersion: strconv.FormatInt(l.res.Revision, 10), Continue: l.res.Continue})
	fmt.Fprintf(w, `],"metadata":%s}`+"\n", meta)
	// Every item was copied into w's buffer or written through it by now. After a failed
	// write the blocks are left to the collector instead: a connection being torn down
	// (an HTTP/2 stream reset mid-frame) may still hold what it was given.
	if err := w.Flush(); err == nil && l.res.Release != nil {
		l.res.Release()
	}
	return nil
}

// listError is the answer to a list the store refused.
func listError(err error) error {
	if errors.Is(err, store.ErrCompacted) {
		return statusErr(http.StatusGone, api.ReasonGone, "the continue token has expired: the list must be restarted without it")
	}
	if errors.Is(err, store.ErrInvalidContinue) {
		return statusErr(http.StatusBadRequest, api.ReasonBadRequest, "invalid continue token")
	}
	return err
}

// batches passes a list's objects from the store's goroutine to the writer's. It never
// blocks the store, whose read transaction lasts until the last object is read.
type batches struct {
	mu     sync.Mutex
	items  [][]json.RawMessage
	closed bool
	wake   chan struct{}
}

func newBatches() *batches { return &batches{wake: make(chan struct{}, 1)} }

func (b *batches) put(items []json.RawMessage) {
	b.mu.Lock()
	b.items = append(b.items, items)
	b.mu.Unlock()
	b.signal()
}

func (b *batches) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.signal()
}

func (b *batches) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// next waits for the next objects; end is true, with no objects, once all were taken.
func (b *batches) next() (items []json.RawMessage, end bool) {
	for {
		b.mu.Lock()
		if len(b.items) > 0 {
			items = b.items[0]
			b.items[0] = nil
			b.items = b.items[1:]
			b.mu.Unlock()
			return items, false
		}
		closed := b.closed
		b.mu.Unlock()
		if closed {
			return nil, true
		}
		<-b.wake
	}
}

// listWriteBuffer is how much of a list answer is handed to net/http at once.
const listWriteBuffer = 64 << 10

func (s *Server) watch(req *request, sc listScope) error {
	var from int64
	if rv := req.r.URL.Query().Get("resourceVersion"); rv != "" {
		var err error
		if from, err = strconv.ParseInt(rv, 10, 64); err != nil || from < 0 {
			return statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("invalid resourceVersion %q", rv))
		}
	}
	ctx := req.r.Context()
	if err := s.checkWatchFrom(ctx, from); err != nil {
		return err
	}
	ch, err := s.store.Watch(ctx, store.WatchOptions{Kind: req.kind.Kind, Namespace: sc.ns, Selector: sc.sel, Revision: from})
	if err != nil {
		return err
	}
	w := req.w
	w.Header().Set("Content-Type", "application/json;stream=watch")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	event := func(ev store.Event) (*api.WatchEvent, error) {
		if !sc.filter.keepRaw(ev.Object) {
			return nil, nil
		}
		if ev.Type == api.Deleted && sc.filter.outOfView(ev.Object) {
			o, err := store.Decode(ev.Object)
			if err != nil {
				return nil, nil
			}
			raw, err := json.Marshal(tombstone(o))
			return &api.WatchEvent{Type: ev.Type, Object: raw}, err
		}
		return &api.WatchEvent{Type: ev.Type, Object: s.filterRaw(req.kind.Kind, ev.Object)}, nil
	}
	bookmark := func(last int64) *api.WatchEvent {
		if rev, err := s.store.Revision(ctx); err != nil || rev <= last {
			return nil
		}
		bm, _ := json.Marshal(api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: req.kind.Kind},
			Metadata: api.ObjectMeta{ResourceVersion: strconv.FormatInt(last, 10)}})
		return &api.WatchEvent{Type: api.Bookmark, Object: bm}
	}
	s.streamWatch(ctx, w, json.NewEncoder(w), ch, from, event, bookmark)
	return nil
}

// streamWatch writes a watch's events to w until the watch ends, the client leaves or a write
// fails; both watch routes share it. event turns a store event into the one to send (nil skips
// it; an error ends the stream, and the client watches again); bookmark, asked every BookmarkInterval, makes a bookmark at last (nil sends none). A
// bookmark may only promise what this stream has delivered: revisions after last may still be
// on their way, so it carries last.
func (s *Server) streamWatch(ctx context.Context, w http.ResponseWriter, enc *json.Encoder, ch <-chan store.Event, from int64,
	event func(store.Event) (*api.WatchEvent, error), bookmark func(last int64) *api.WatchEvent) {
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	flush()
	tick := time.NewTicker(s.BookmarkInterval)
	defer tick.Stop()
	last := from
	for {
		var out *api.WatchEvent
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if ev.Err != nil {
				raw, _ := json.Marshal(toStatus(ev.Err))
				enc.Encode(api.WatchEvent{Type: api.Error, Object: raw})
				flush()
				return
			}
			last = ev.Revision
			var err error
			if out, err = event(ev); err != nil {
				return
			}
		case <-tick.C:
			out = bookmark(last)
		case <-ctx.Done():
			return
		}
		if out == nil {
			continue
		}
		if err := enc.Encode(out); err != nil {
			return
		}
		flush()
	}
}

// readObject decodes a request body (JSON or YAML) into one object. A body holding more than
// one object (a second JSON value, a second YAML document) is refused: keeping only the first
// would answer 201 for objects that were never stored.
func readObject(req *request) (*api.Object, error) {
	yamlBody, err := bodyIsYAML(req.r.Header.Get("Content-Type"))
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(http.MaxBytesReader(req.w, req.r.Body, resource.MaxObjectBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, statusErr(http.StatusRequestEntityTooLarge, api.ReasonTooLarge, fmt.Sprintf("request body exceeds %d bytes", resource.MaxObjectBytes))
		}
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, "reading request body: "+err.Error())
	}
	obj, err := decodeObject(body, yamlBody)
	if err != nil {
		return nil, err
	}
	if obj.Kind == "" {
		obj.Kind = req.kind.Kind
	}
	if obj.APIVersion == "" {
		obj.APIVersion = api.APIVersion
	}
	if obj.Kind != req.kind.Kind {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("kind %q sent to the %s endpoint", obj.Kind, req.kind.Plural))
	}
	if obj.Metadata.Namespace == "" {
		obj.Metadata.Namespace = req.ns
	}
	if obj.Metadata.Namespace != req.ns {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("metadata.namespace %q does not match the namespace %q in the URL", obj.Metadata.Namespace, req.ns))
	}
	if req.name != "" && obj.Metadata.Name != "" && obj.Metadata.Name != req.name {
		return nil, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("metadata.name %q does not match the name %q in the URL", obj.Metadata.Name, req.name))
	}
	if req.name != "" {
		obj.Metadata.Name = req.name
	}
	return obj, nil
}

func dryRun(r *http.Request) bool { return r.URL.Query().Get("dryRun") != "" }

func (s *Server) create(req *request) error {
	if err := s.mayTry(req, api.VerbCreate); err != nil {
		return err
	}
	obj, err := readObject(req)
	if err != nil {
		return err
	}
	if err := s.decideWrite(req, api.VerbCreate, nil, obj); err != nil {
		return err
	}
	return s.createObject(req, obj)
}

func (s *Server) createObject(req *request, obj *api.Object) error {
	ctx := req.r.Context()
	// Status belongs to the server and agents; a client creating an object cannot set it.
	obj.Status = nil
	if err := resource.Prepare(obj); err != nil {
		return err
	}
	audit.AnnotateName(ctx, obj.Metadata.Name)
	now := time.Now().UTC().Truncate(time.Second)
	obj.Metadata.UID = NewUID()
	obj.Metadata.CreationTimestamp = &now
	obj.Metadata.Generation = 1
	obj.Metadata.ResourceVersion = ""
	s.trackFields(req, nil, obj)
	dry := dryRun(req.r)
	h := s.hooks[obj.Kind]
	if h != nil {
		if err := h.BeforeCreate(ctx, obj, dry); err != nil {
			return err
		}
	}
	if dry {
		return s.respond(req.w, http.StatusCreated, obj)
	}
	out, err := s.store.Create(ctx, obj)
	if err != nil {
		return err
	}
	if h != nil {
		if err := h.AfterCreate(ctx, out); err != nil {
			return err
		}
	}
	req.w.Header().Set(ResultHeader, "created")
	return s.respond(req.w, http.StatusCreated, out)
}

// ResultHeader tells an applying client whether its object was created, configured or
// left unchanged.
const ResultHeader = "X-Flotilla-Result"

// update replaces spec, labels and annotations; status and server-owned metadata are kept.
// A PUT to a name that does not exist creates it, which makes `apply` one call per object.
func (s *Server) update(req *request) error {
	if err := s.mayTry(req, api.VerbUpdate); err != nil {
		return err
	}
	obj, err := readObject(req)
	if err != nil {
		return err
	}
	ctx := req.r.Context()
	wantRV := obj.Metadata.ResourceVersion
	for attempt := 0; ; attempt++ {
		cur, err := s.store.Get(ctx, req.key())
		if errors.Is(err, store.ErrNotFound) {
			if wantRV != "" {
				// Not found only to whoever may update the name: else the same 403 as an
				// existing object's, so that names cannot be probed.
				if _, aerr := s.authorizeObject(req, api.VerbUpdate); aerr != nil {
					return aerr
				}
				return err
			}
			if err := s.decideWrite(req, api.VerbCreate, nil, obj); err != nil {
				return err
			}
			return s.createObject(req, obj)
		}
		if err != nil {
			return err
		}
		// Decided on the object as stored before anything else is said about it (a
		// conflict, an invalid change), which would tell that it exists.
		if err := s.decideWrite(req, api.VerbUpdate, cur, nil); err != nil {
			return err
		}
		next := obj.DeepCopy()
		next.Status = nil
		if err := resource.Prepare(next); err != nil {
			return err
		}
		if wantRV != "" && wantRV != cur.Metadata.ResourceVersion {
			return fmt.Errorf("%s: %w", req.key(), store.ErrConflict)
		}
		base := patchBase(ctx)
		if base != nil && !store.SameContent(cur, base) {
			return fmt.Errorf("%s: changed since the patch was applied: %w", req.key(), store.ErrConflict)
		}
		if err := s.decideWrite(req, api.VerbUpdate, cur, next); err != nil {
			return err
		}
		next.Metadata.UID = cur.Metadata.UID
		next.Metadata.CreationTimestamp = cur.Metadata.CreationTimestamp
		next.Metadata.Generation = cur.Metadata.Generation
		next.Status = cur.Status
		next.Metadata.ResourceVersion = cur.Metadata.ResourceVersion
		s.trackFields(req, cur, next)
		dry := dryRun(req.r)
		if h := s.hooks[next.Kind]; h != nil {
			if err := h.BeforeUpdate(ctx, cur, next, dry); err != nil {
				return err
			}
		}
		if !store.SameJSON(cur.Spec, next.Spec) {
			next.Metadata.Generation++
		}
		if store.SameContent(cur, next) {
			req.w.Header().Set(ResultHeader, "unchanged")
			return s.respond(req.w, http.StatusOK, cur)
		}
		if dry {
			return s.respond(req.w, http.StatusOK, next)
		}
		var out *api.Object
		if su, ok := s.store.(interface {
			UpdateSpec(ctx context.Context, obj *api.Object) (*api.Object, error)
			UpdateSpecFrom(ctx context.Context, obj, base *api.Object) (*api.Object, error)
		}); ok && wantRV == "" {
			// Unconditional: the store merges with the object as stored when it writes
			// (status, UID, generation), so no write made since the read, the server's
			// own status writes above all, can make this update fail. A patch's update
			// still fails if a user changed the object since the patch was applied.
			if base != nil {
				out, err = su.UpdateSpecFrom(ctx, next, base)
			} else {
				out, err = su.UpdateSpec(ctx, next)
			}
		} else {
			out, err = s.store.Update(ctx, next)
		}
		if errors.Is(err, store.ErrConflict) && wantRV == "" && base == nil && attempt < 5 {
			// The client asked for an unconditional update; someone wrote in between our
			// read and write, so read again.
			continue
		}
		if err != nil {
			return err
		}
		if h, ok := s.hooks[req.kind.Kind].(UpdateHook); ok {
			h.AfterUpdate(ctx, out)
		}
		req.w.Header().Set(ResultHeader, "configured")
		return s.respond(req.w, http.StatusOK, out)
	}
}

func (s *Server) updateStatus(req *request) error {
	// Status is written by the server and agents: only admins may write it by hand.
	if err := s.decide(req.id, "update-status", req.kind, req.ns, req.name, nil); err != nil {
		return err
	}
	obj, err := readObject(req)
	if err != nil {
		return err
	}
	status, err := resource.PrepareStatus(req.kind.Kind, obj.Status)
	if err != nil {
		return err
	}
	ctx := req.r.Context()
	for attempt := 0; ; attempt++ {
		cur, err := s.store.Get(ctx, req.key())
		if err != nil {
			return err
		}
		if rv := obj.Metadata.ResourceVersion; rv != "" && rv != cur.Metadata.ResourceVersion {
			return fmt.Errorf("%s: %w", req.key(), store.ErrConflict)
		}
		cur.Status = status
		out, err := s.store.Update(ctx, cur)
		if errors.Is(err, store.ErrConflict) && obj.Metadata.ResourceVersion == "" && attempt < 5 {
			continue
		}
		if err != nil {
			return err
		}
		return s.respond(req.w, http.StatusOK, out)
	}
}

func (s *Server) delete(req *request) error {
	if _, err := s.authorizeObject(req, api.VerbDelete); err != nil {
		return err
	}
	rv := req.r.URL.Query().Get("resourceVersion")
	if g, ok := s.hooks[req.kind.Kind].(DeleteGuard); ok {
		cur, err := s.store.Get(req.r.Context(), req.key())
		if err != nil {
			return err
		}
		if err := g.BeforeDelete(req.r.Context(), cur); err != nil {
			return err
		}
		if rv == "" {
			// What was checked is what is deleted.
			rv = cur.Metadata.ResourceVersion
		}
	}
	if dryRun(req.r) {
		obj, err := s.store.Get(req.r.Context(), req.key())
		if err != nil {
			return err
		}
		return s.respond(req.w, http.StatusOK, obj)
	}
	obj, err := s.store.Delete(req.r.Context(), req.key(), rv)
	if err != nil {
		return err
	}
	if h, ok := s.hooks[req.kind.Kind].(DeleteHook); ok {
		h.AfterDelete(req.r.Context(), obj)
	}
	return s.respond(req.w, http.StatusOK, obj)
}

// checkWatchFrom refuses a watch from a revision the store has not reached yet: it was never
// handed out by this server (the client saw another database, or one since restored from a
// backup), and waiting would hang until the store caught up, if ever. It is answered as a
// too old one is, so that a client lists again.
func (s *Server) checkWatchFrom(ctx context.Context, from int64) error {
	if from <= 0 {
		return nil
	}
	cur, err := s.store.Revision(ctx)
	if err != nil {
		return err
	}
	if from > cur {
		return statusErr(http.StatusGone, api.ReasonGone, fmt.Sprintf(msgTooLargeRV, from, cur))
	}
	return nil
}
