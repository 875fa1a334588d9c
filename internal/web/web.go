// Package web owns the dashboard that `flotilla server` serves at /: server-rendered pages
// (html/template, embedded in the binary), htmx for in-page updates, Server-Sent Events for
// the overview's live counts and server-side SVG charts. Every view is an aggregate or a
// bounded page of the fleet model, narrowed to what the logged-in user may list; every read
// of one object and every change goes through the server's own API handler as that user, so
// authentication, validation, Flotilla RBAC and the audit log apply exactly as to the CLI.
// Only internal/server imports it.
package web

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/fleet"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Fleet is the model the views are computed from.
type Fleet interface {
	Overview(fleet.ClusterQuery) fleet.Overview
	ListClusters(q fleet.ClusterQuery, after, before string, limit int) fleet.ClusterPage
	ClusterDeployments(ns, name string) ([]fleet.DeploymentRow, bool)
}

// Authenticator turns a session token into an identity.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*auth.Identity, error)
}

// Config is what the dashboard is made from.
type Config struct {
	// API is the server's whole handler (audit and metrics included): the dashboard's logins,
	// reads of single objects and writes are made through it, as the logged-in user.
	API http.Handler
	// Auth authenticates the session cookie.
	Auth Authenticator
	// Fleet answers the aggregates and pages.
	Fleet Fleet
	// ClusterView says which clusters a user may list (apiserver.Server.ClusterView).
	ClusterView func(*auth.Identity) (all bool, f rbac.ClusterFilter, err error)
	// TunnelOpen reports whether the cluster NAMESPACE/NAME has its agent tunnel open; nil
	// when tunnels are not served.
	TunnelOpen func(key string) bool
	// CAChecksum is the sha256 of the server's CA as agents pin it (--ca-checksum), shown in
	// the agent's command on the registration page.
	CAChecksum string
	// ServerURL is the server's address for agents (--server); empty means https:// and the
	// address the browser reached the dashboard at.
	ServerURL string
	// LDAP offers the choice of provider (local or ldap) on the login form.
	LDAP bool
	// OIDC shows the single sign-on button (the server's OIDC login is configured).
	OIDC bool
	// LiveInterval is how often the overview's live stream may send (default 1 s, the most).
	LiveInterval time.Duration
	// MaxLive bounds the live streams open at once (default 512).
	MaxLive int
	// MaxPasses bounds the passes over the fleet model made at once for pages (default 2):
	// however many users load pages, the dashboard takes at most that many cores.
	MaxPasses int
	// ShellsPerUser bounds the kubectl shells a user has open at once (default 3), MaxShells
	// those of everyone (default 256).
	ShellsPerUser, MaxShells int
	// ShellIdle closes a shell after that long without input (default 15 minutes).
	ShellIdle time.Duration
	// Now is the clock of the overview's cache and the connected-clusters chart (default
	// time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Handler is the dashboard.
type Handler struct {
	cfg   Config
	log   *slog.Logger
	pages map[string]*template.Template
	// overviews caches each view's overview for a second: a page view and every open live
	// stream of the same view share one pass over the model.
	mu        sync.Mutex
	overviews map[string]cachedOverview
	live      chan struct{}
	passes    chan struct{}
	history   history
	// shells counts each user's open shells (under mu), shellsOpen everyone's.
	shells     map[string]int
	shellsOpen int
}

type cachedOverview struct {
	at time.Time
	o  fleet.Overview
}

// New makes the dashboard.
func New(cfg Config) (*Handler, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LiveInterval < time.Second {
		cfg.LiveInterval = time.Second
	}
	if cfg.MaxLive <= 0 {
		cfg.MaxLive = 512
	}
	if cfg.MaxPasses <= 0 {
		cfg.MaxPasses = 2
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ShellsPerUser <= 0 {
		cfg.ShellsPerUser = 3
	}
	if cfg.MaxShells <= 0 {
		cfg.MaxShells = 256
	}
	if cfg.ShellIdle <= 0 {
		cfg.ShellIdle = 15 * time.Minute
	}
	h := &Handler{shells: map[string]int{}, cfg: cfg, log: cfg.Logger, pages: map[string]*template.Template{}, overviews: map[string]cachedOverview{},
		live: make(chan struct{}, cfg.MaxLive), passes: make(chan struct{}, cfg.MaxPasses)}
	for _, p := range []string{"login", "overview", "clusters", "cluster", "rollouts", "bundle", "error",
		"users", "roles", "role", "rolebindings", "projects", "audit", "registration", "shell", "events"} {
		t, err := template.New(p).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/charts.html", "templates/"+p+".html")
		if err != nil {
			return nil, err
		}
		h.pages[p] = t
	}
	return h, nil
}

// Register adds the dashboard's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", secure(http.StripPrefix("/static/", cacheStatic(http.FileServerFS(static)))))
	mux.Handle("GET /login", secure(http.HandlerFunc(h.loginPage)))
	mux.Handle("POST /login", secure(http.HandlerFunc(h.login)))
	mux.Handle("GET /login/oidc", secure(http.HandlerFunc(h.oidcStart)))
	mux.Handle("GET /login/oidc/done", secure(http.HandlerFunc(h.oidcDone)))
	mux.Handle("POST /logout", secure(h.session(h.logout)))
	mux.Handle("GET /{$}", secure(h.session(h.overview)))
	mux.Handle("GET /events/overview", secure(h.session(h.overviewEvents)))
	mux.Handle("GET /clusters", secure(h.session(h.clusters)))
	mux.Handle("GET /clusters/{ns}/{name}", secure(h.session(h.cluster)))
	mux.Handle("POST /clusters/{ns}/{name}/{action}", secure(h.session(h.clusterAction)))
	mux.Handle("GET /clusters/{ns}/{name}/shell", secure(h.session(h.shellPage)))
	mux.Handle("GET /clusters/{ns}/{name}/events", secure(h.session(h.clusterEvents)))
	mux.Handle("GET /clusters/{ns}/{name}/shell/ws", secure(h.session(h.shellSocket)))
	for plural := range rolloutPlurals {
		mux.Handle("GET /"+plural, secure(h.session(func(w http.ResponseWriter, r *http.Request, u *user) {
			r.SetPathValue("plural", plural)
			h.rollouts(w, r, u)
		})))
	}
	mux.Handle("GET /bundles/{ns}/{name}", secure(h.session(h.bundle)))
	mux.Handle("POST /gitrepos/{ns}/{name}/sync", secure(h.session(h.syncGitRepo)))
	mux.Handle("GET /users", secure(h.session(h.users)))
	mux.Handle("POST /users", secure(h.session(h.createUser)))
	mux.Handle("POST /users/{name}/{action}", secure(h.session(h.userAction)))
	mux.Handle("GET /roles", secure(h.session(h.roles)))
	mux.Handle("GET /roles/{name}", secure(h.session(h.role)))
	mux.Handle("GET /rolebindings", secure(h.session(h.bindings)))
	mux.Handle("POST /rolebindings", secure(h.session(h.createBinding)))
	mux.Handle("POST /rolebindings/{name}/delete", secure(h.session(h.deleteBinding)))
	mux.Handle("GET /projects", secure(h.session(h.projects)))
	mux.Handle("GET /audit", secure(h.session(h.auditLog)))
	mux.Handle("GET /registration", secure(h.session(h.registration)))
	mux.Handle("POST /registration", secure(h.session(h.createToken)))
}

// contentSecurityPolicy allows scripts and styles from the server's own files only: no
// inline script, no eval (htmx is told not to use it), no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

func cacheStatic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		next.ServeHTTP(w, r)
	})
}

// user is the logged-in caller of a page.
type user struct {
	*auth.Identity
	token string
	CSRF  string
}

type sessionHandler func(w http.ResponseWriter, r *http.Request, u *user)

// session authenticates the session cookie; without a valid one a page is redirected to the
// login (an htmx request is told to load it), and every POST must carry the session's CSRF
// token.
func (h *Handler) session(next sessionHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(sessionCookie)
		var id *auth.Identity
		if err == nil && c.Value != "" && len(c.Value) < 512 {
			id, err = h.cfg.Auth.Authenticate(r.Context(), c.Value)
		} else if err == nil {
			err = http.ErrNoCookie
		}
		if err != nil {
			if c != nil {
				clearCookie(w, sessionCookie)
			}
			target := "/login"
			if r.Method == http.MethodGet && r.URL.Path != "/" {
				target += "?next=" + urlQueryEscape(r.URL.RequestURI())
			}
			if r.Header.Get("HX-Request") != "" {
				w.Header().Set("HX-Redirect", target)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, target, http.StatusSeeOther)
			return
		}
		u := &user{Identity: id, token: c.Value, CSRF: csrfToken(c.Value)}
		audit.Annotate(r.Context(), id.User, id.Groups, "", "", "")
		if r.Method == http.MethodPost && !h.checkCSRF(r, u.CSRF) {
			h.errorPage(w, r, u, http.StatusForbidden, "The form has expired or did not come from this dashboard: reload the page and try again.")
			return
		}
		next(w, r, u)
	})
}

// apiResult is an in-process API call's answer.
type apiResult struct {
	code int
	body []byte
	ct   string
}

// message is the API's refusal or error message, for the user.
func (a apiResult) message() string {
	var st api.Status
	if json.Unmarshal(a.body, &st) == nil && st.Message != "" {
		return st.Message
	}
	s := strings.TrimSpace(string(a.body))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	if s == "" {
		s = http.StatusText(a.code)
	}
	return s
}

// maxAPIAnswer bounds what an in-process call may answer (a Cluster, a kubeconfig).
const maxAPIAnswer = 4 << 20

// call makes an API call through the server's handler as token's holder, from the same
// address as r, so that the API decides, validates and audits it as any other.
func (h *Handler) call(r *http.Request, token, method, path, contentType string, body []byte) apiResult {
	return h.callWith(r, token, method, path, contentType, "application/json", body)
}

// callAccept is call without a body, asking for an answer of type accept.
func (h *Handler) callAccept(r *http.Request, token, method, path, accept string) apiResult {
	return h.callWith(r, token, method, path, "", accept, nil)
}

func (h *Handler) callWith(r *http.Request, token, method, path, contentType, accept string, body []byte) apiResult {
	req, err := http.NewRequestWithContext(r.Context(), method, path, bytes.NewReader(body))
	if err != nil {
		return apiResult{code: http.StatusBadRequest, body: []byte(err.Error())}
	}
	req.RemoteAddr = r.RemoteAddr
	req.TLS = r.TLS
	req.Host = r.Host
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", "flotilla-dashboard")
	rec := httptest.NewRecorder()
	h.cfg.API.ServeHTTP(rec, req)
	res := rec.Result()
	b, _ := io.ReadAll(io.LimitReader(res.Body, maxAPIAnswer))
	return apiResult{code: res.StatusCode, body: b, ct: res.Header.Get("Content-Type")}
}

// page is what every template gets.
type page struct {
	Title string
	User  *user
	// Nav names the current section.
	Nav   string
	Error string
	Flash string
	Data  any
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, code int, name string, p page) {
	var buf bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		h.log.Error("rendering a dashboard page", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func (h *Handler) errorPage(w http.ResponseWriter, r *http.Request, u *user, code int, msg string) {
	h.render(w, r, code, "error", page{Title: http.StatusText(code), User: u, Error: msg})
}

// view narrows a query to the user's view of the fleet: every cluster, or those the
// filter matches. It answers the view's key for the overview cache: "*" for every cluster.
func (h *Handler) view(u *user, q *fleet.ClusterQuery) (string, error) {
	all, f, err := h.cfg.ClusterView(u.Identity)
	if err != nil {
		return "", err
	}
	if all {
		return "*", nil
	}
	q.View, q.ViewByLabels = f.Matches, true
	for _, e := range f.Entries() {
		if e.Names != nil || e.Set.Cluster != "" {
			q.ViewByLabels = false
		}
	}
	// Users whose bindings give the same cluster sets see the same clusters: keyed by the
	// sets, their pages and live streams share one overview a second.
	if b, err := json.Marshal(f.Entries()); err == nil {
		return "f\x00" + string(b), nil
	}
	return "u\x00" + u.User + "\x00" + strings.Join(u.Groups, "\x00"), nil
}

// overviewOf answers the overview of the user's view (counted by label key too, when
// set), computed at most once a second per view and key.
func (h *Handler) overviewOf(ctx context.Context, u *user, label string) (fleet.Overview, error) {
	o, _, err := h.overviewAndView(ctx, u, label)
	return o, err
}

// overviewAndView is overviewOf, and whether the user's view is the whole fleet.
func (h *Handler) overviewAndView(ctx context.Context, u *user, label string) (fleet.Overview, bool, error) {
	q := fleet.ClusterQuery{CountLabel: label}
	key, err := h.view(u, &q)
	if err != nil {
		return fleet.Overview{}, false, err
	}
	o, err := h.cachedOverview(ctx, key+"\x01"+label, q)
	return o, key == "*", err
}

// cachedOverview answers the overview of q, whose view and label key is key, from the
// cache when it is under a second old.
func (h *Handler) cachedOverview(ctx context.Context, key string, q fleet.ClusterQuery) (fleet.Overview, error) {
	now := h.cfg.Now()
	h.mu.Lock()
	c, ok := h.overviews[key]
	h.mu.Unlock()
	if ok && now.Sub(c.at) < time.Second {
		return c.o, nil
	}
	if err := h.pass(ctx); err != nil {
		return fleet.Overview{}, err
	}
	o := h.cfg.Fleet.Overview(q)
	<-h.passes
	h.mu.Lock()
	if len(h.overviews) >= 1024 {
		for k, v := range h.overviews {
			if now.Sub(v.at) >= time.Second {
				delete(h.overviews, k)
			}
		}
	}
	if len(h.overviews) < 1024 {
		h.overviews[key] = cachedOverview{at: now, o: o}
	}
	h.mu.Unlock()
	return o, nil
}

// pass waits for a turn to pass over the model; the caller gives it back to h.passes.
func (h *Handler) pass(ctx context.Context) error {
	select {
	case h.passes <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
