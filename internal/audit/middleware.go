package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"flotilla.dev/api"
)

// entry is a request's record while the request runs; handlers fill it in through Annotate.
type entry struct {
	mu     sync.Mutex
	user   string
	groups []string
	kind   string
	ns     string
	name   string
	known  bool // user was set by the handler
	// begun is set once Begin recorded the call: the middleware records nothing more.
	begun bool
	// begin writes the record of a call that has started (Begin).
	begin func(verb string)
}

type ctxKey struct{}

// Annotate records who made the request in ctx and what it is about. The API calls it once it
// has authenticated the caller and knows the object; a call outside an audited request does
// nothing. Empty strings leave what is already known.
func Annotate(ctx context.Context, user string, groups []string, kind, namespace, name string) {
	e, _ := ctx.Value(ctxKey{}).(*entry)
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if user != "" {
		e.user, e.groups, e.known = user, append([]string(nil), groups...), true
	}
	if kind != "" {
		e.kind = kind
	}
	if namespace != "" {
		e.ns = namespace
	}
	if name != "" {
		e.name = name
	}
}

// Begin records the call in ctx now, as started (code 101, Switching Protocols) under verb,
// for a long-lived call whose answer comes only when it ends (the dashboard's shell): who
// started it, and when, is known at once. The call is then not recorded again when it ends.
// Outside an audited request it does nothing.
func Begin(ctx context.Context, verb string) {
	e, _ := ctx.Value(ctxKey{}).(*entry)
	if e == nil {
		return
	}
	e.mu.Lock()
	if e.begun || e.begin == nil {
		e.mu.Unlock()
		return
	}
	e.begun = true
	begin := e.begin
	e.mu.Unlock()
	begin(verb)
}

// AnnotateName records the object's name once it is known only from the body (a create).
func AnnotateName(ctx context.Context, name string) { Annotate(ctx, "", nil, "", "", name) }

// RequestID returns the ID of the audited request in ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(idKey{}).(string)
	return id
}

type idKey struct{}

// Middleware records every mutating call and every denied call that passes through next.
// It gives each request an ID (X-Request-ID when the client sent a sane one), echoes it in
// the response, and writes the record after the answer, without ever reading the body.
func (l *Log) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := requestID(r.Header.Get(api.HeaderRequestID))
		w.Header().Set(api.HeaderRequestID, id)
		e := &entry{}
		ctx := context.WithValue(context.WithValue(r.Context(), ctxKey{}, e), idKey{}, id)
		r2 := r.WithContext(ctx)
		e.begin = func(verb string) {
			rec := l.record(r, r2, e, http.StatusSwitchingProtocols, id)
			rec.Verb = verb
			l.enqueue(rec)
		}
		rw := &responseWriter{ResponseWriter: w}
		next.ServeHTTP(rw, r2)
		code := rw.code
		if code == 0 {
			code = http.StatusOK
		}
		e.mu.Lock()
		begun := e.begun
		e.mu.Unlock()
		if begun || !audited(r.Method, r.URL.Path, code) {
			return
		}
		rec := l.record(r, r2, e, code, id)
		rec.Reason, rec.Message = rw.reason(code)
		l.enqueue(rec)
	})
}

// record is the record of request r (r2 as the handlers saw it) answered with code.
func (l *Log) record(r, r2 *http.Request, e *entry, code int, id string) *api.AuditRecord {
	rec := api.AuditRecord{Time: l.now().UTC(), RequestID: id, Method: r.Method, Path: redactedPath(r.URL),
		Code: code, Source: sourceOf(r.RemoteAddr), DryRun: r.URL.Query().Has("dryRun")}
	e.mu.Lock()
	rec.User, rec.Groups, rec.Kind, rec.Namespace, rec.Name = e.user, e.groups, e.kind, e.ns, e.name
	known := e.known
	e.mu.Unlock()
	// What the mux learned from the path fills what no handler said.
	if rec.Namespace == "" {
		rec.Namespace = r2.PathValue("ns")
	}
	if rec.Name == "" {
		rec.Name = r2.PathValue("name")
	}
	if rec.Kind == "" {
		if k, ok := api.LookupKind(r2.PathValue("plural")); ok {
			rec.Kind = k.Kind
		}
	}
	if !known && code != http.StatusUnauthorized && l.identify != nil {
		rec.User, rec.Groups = l.identify(r)
	}
	rec.Verb, rec.Kind = verbOf(r, rec.Kind, rec.Name)
	return &rec
}

// audited says whether a call is kept: every mutating call, every denial, and every call to a
// cluster through the Kubernetes proxy (its reads too: they read a cluster). An agent's status
// report is a POST but no person's act, and comes from every cluster every few seconds: it
// is kept only when denied, like polls.
func audited(method, path string, code int) bool {
	if code == http.StatusUnauthorized || code == http.StatusForbidden || strings.HasPrefix(path, api.PathK8sClusters) {
		return true
	}
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		// A status report is a read's worth of news; a can-i question changes nothing (the
		// dashboard asks one per page to choose which controls to show). Refusals of either
		// are kept above.
		return path != api.PathStatus && path != api.PathCanI
	}
	return false
}

// verbOf names what the call did, and the kind it did it to when the path says.
func verbOf(r *http.Request, kind, name string) (string, string) {
	p := r.URL.Path
	switch {
	case p == api.PathRegister:
		return "register", api.KindCluster
	case p == api.PathRenew:
		return "renew", api.KindCluster
	case p == api.PathStatus:
		return "report", api.KindCluster
	case p == api.PathDesired:
		return "poll", api.KindCluster
	case strings.HasPrefix(p, api.PathContent):
		return "content", api.KindCluster
	case p == api.PathRotateKeys:
		return "rotate-keys", kind
	case strings.HasPrefix(p, "/v1/webhooks/"):
		return "webhook", kind
	case p == api.PathAudit:
		return "list", "AuditRecord"
	case p == api.PathTokens || strings.HasPrefix(p, api.PathTokens+"/"):
		if r.Method == http.MethodDelete {
			return "revoke", "APIToken"
		}
		return strings.ToLower(r.Method), "APIToken"
	case strings.HasPrefix(p, "/v1/") && !strings.HasPrefix(p, "/v1/agent/"):
		// Non-resource calls are named by their last path element: /v1/login is "login".
		last := p[strings.LastIndexByte(p, '/')+1:]
		if last != "" && len(last) <= 32 && r.Method == http.MethodPost {
			return strings.ToLower(last), kind
		}
	}
	switch r.Method {
	case http.MethodPost:
		return "create", kind
	case http.MethodPut:
		return "update", kind
	case http.MethodPatch:
		return "patch", kind
	case http.MethodDelete:
		return "delete", kind
	case http.MethodGet, http.MethodHead:
		switch {
		case r.URL.Query().Get("watch") != "" && r.URL.Query().Get("watch") != "false":
			return "watch", kind
		case name == "" && kind != "":
			return "list", kind
		}
		return "get", kind
	}
	return strings.ToLower(r.Method), kind
}

// requestID returns the client's ID if it is sane (1–128 characters of letters, digits and
// -_.:), else a new random one: it is logged and echoed, so it must not carry anything else.
func requestID(given string) string {
	if n := len(given); n > 0 && n <= 128 {
		ok := true
		for i := 0; i < n && ok; i++ {
			c := given[i]
			ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':'
		}
		if ok {
			return given
		}
	}
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sensitive lists substrings of query parameter names whose values are never recorded.
var sensitive = []string{"token", "password", "passwd", "secret", "key", "credential", "auth", "code", "signature", "session"}

// maxPath bounds the recorded path and query.
const maxPath = 1024

// redactedPath returns the path and query with the values of sensitive parameters replaced;
// a query that does not parse is dropped whole, since its parts cannot be told apart.
func redactedPath(u *url.URL) string {
	p := u.EscapedPath()
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			p += "?REDACTED"
		} else {
			for k, vs := range q {
				lk := strings.ToLower(k)
				for _, s := range sensitive {
					if strings.Contains(lk, s) {
						for i := range vs {
							vs[i] = "REDACTED"
						}
						break
					}
				}
			}
			// Encode sorts by key: the recorded form is stable.
			p += "?" + q.Encode()
		}
	}
	if len(p) > maxPath {
		p = p[:maxPath] + "…"
	}
	return p
}

func sourceOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// maxSniff bounds how much of an error answer is kept to read its reason.
const maxSniff = 4096

// responseWriter captures the status and the start of an error answer. It keeps http.Flusher
// working (watch streams) and unwraps for http.ResponseController.
type responseWriter struct {
	http.ResponseWriter
	code  int
	sniff []byte
}

func (w *responseWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if w.code >= 400 && len(w.sniff) < maxSniff {
		n := min(len(b), maxSniff-len(w.sniff))
		w.sniff = append(w.sniff, b[:n]...)
	}
	return w.ResponseWriter.Write(b)
}

func (w *responseWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// maxMessage bounds a denial's recorded message.
const maxMessage = 512

// reason reads an error answer's Status reason, and for a denial its message, which says who
// was refused what. Other messages are not kept: a validation error may quote the body.
func (w *responseWriter) reason(code int) (string, string) {
	if code < 400 {
		return "", ""
	}
	var st struct {
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	if json.Unmarshal(w.sniff, &st) != nil || st.Reason == "" || len(st.Reason) > 64 {
		return http.StatusText(code), ""
	}
	if code != http.StatusUnauthorized && code != http.StatusForbidden {
		st.Message = ""
	}
	if len(st.Message) > maxMessage {
		st.Message = st.Message[:maxMessage] + "…"
	}
	return st.Reason, st.Message
}

// now is the Log's clock, for tests of retention.
func (l *Log) now() time.Time {
	if l.cfg.Now != nil {
		return l.cfg.Now()
	}
	return time.Now()
}
