// Package oidc owns logins through an OpenID Connect provider: the browser's authorization
// code flow with PKCE, state and nonce (GET PathLogin → provider → GET PathCallback), the ID
// token's checks and the mapping of its claims to a Flotilla identity, and the hand-over of
// the resulting session to whoever started the login (the CLI on a loopback address, later the
// dashboard) through a one-time code only the holder of its verifier can redeem (POST
// PathToken). The server mounts Handler; the CLI uses the wire types and paths.
package oidc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/spf13/pflag"
	"golang.org/x/oauth2"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/users"
)

// Paths served by Handler.
const (
	// PathLogin: GET ?redirect_uri=R&code_challenge=C starts a login and redirects the browser
	// to the provider. R is where the browser is finally sent with ?code= (or ?error=): a
	// loopback http URL with a port (the CLI) or a path on this server (the dashboard). C is
	// base64url(sha256(verifier)) of a verifier only the starter knows.
	PathLogin = "/v1/auth/oidc/login"
	// PathCallback is the redirect URI registered at the provider.
	PathCallback = "/v1/auth/oidc/callback"
	// PathToken: POST a TokenRequest, answered by a TokenResponse, redeems a one-time code.
	PathToken = "/v1/auth/oidc/token"
)

// TokenRequest redeems the one-time code a login ended with.
type TokenRequest struct {
	Code         string `json:"code"`
	CodeVerifier string `json:"codeVerifier"`
}

// TokenResponse carries the session token, shown this once.
type TokenResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
	User    string    `json:"user"`
	Groups  []string  `json:"groups,omitempty"`
}

// Config says which provider to trust and how its claims become a Flotilla identity.
type Config struct {
	// Issuer is the provider's issuer URL; empty disables OIDC logins. It must be https, except
	// for a loopback host.
	Issuer string
	// ClientID and ClientSecret are Flotilla's client at the provider; the secret may come
	// from ClientSecretFile, else from the environment variable SecretEnv.
	ClientID, ClientSecret, ClientSecretFile string
	// RedirectURL is this server's PathCallback as the browser reaches it, registered at the
	// provider, e.g. https://fleet.example.com/v1/auth/oidc/callback.
	RedirectURL string
	// CAFile, if set, holds the CA certificates the provider's TLS certificate is checked
	// against instead of the system's.
	CAFile string
	// Scopes are asked for besides openid.
	Scopes []string
	// UsernameClaim names the claim that gives the user name; without it, `sub` is used.
	// UsernamePrefix is put before it, so that no provider user can take the name of a local
	// user (local names cannot contain ':').
	UsernameClaim, UsernamePrefix string
	// GroupsClaim names the claim listing the user's groups; GroupsPrefix is put before each.
	GroupsClaim, GroupsPrefix string
	// AllowedGroups, if any, are the groups (as the provider names them, without the prefix)
	// of which a user must be in one to log in.
	AllowedGroups []string
	// SessionTTL is how long a login's session lasts.
	SessionTTL time.Duration
	// LoginTTL is how long a user has at the provider, CodeTTL how long a code lives.
	LoginTTL, CodeTTL time.Duration
	// StartBurst logins may be started at once from one source address, then one per
	// StartEvery, so that one source cannot start logins (each a call to the provider) in
	// bulk.
	StartBurst int
	StartEvery time.Duration
	// Keys seals login states and codes. Every replica of one database must use the same ring
	// (the server passes its "oidc-login" ring), so that a login started on one replica ends
	// on any; nil keeps a ring in memory, for a single process.
	Keys   keyRing
	Logger *slog.Logger
}

// SecretEnv is the environment variable the client secret is read from when neither
// ClientSecret nor ClientSecretFile is given.
const SecretEnv = "FLOTILLA_OIDC_CLIENT_SECRET"

// Limits of what is accepted from a provider and from login starters.
const (
	maxNameBytes  = 200 // as rbac accepts for subject names
	maxGroups     = 1000
	maxReturnURI  = 1024
	maxTokenBody  = 4 << 10
	maxErrorShown = 200
)

// DefaultConfig returns the defaults for everything but the provider and the client.
func DefaultConfig() Config {
	return Config{
		Scopes:        []string{"profile", "email"},
		UsernameClaim: "preferred_username", UsernamePrefix: "oidc:",
		GroupsClaim: "groups", GroupsPrefix: "oidc:",
		SessionTTL: auth.DefaultSessionTTL,
		LoginTTL:   10 * time.Minute, CodeTTL: time.Minute,
		StartBurst: 30, StartEvery: 2 * time.Second,
	}
}

// Sessions is what a login needs of the authenticator.
type Sessions interface {
	RecordLogin(ctx context.Context, provider string, id auth.Identity) error
	IssueSession(ctx context.Context, id auth.Identity, ttl time.Duration) (string, error)
	Authenticate(ctx context.Context, token string) (*auth.Identity, error)
}

var _ Sessions = (*auth.Authenticator)(nil)

// Handler serves OIDC logins.
type Handler struct {
	cfg      Config
	sessions Sessions
	log      *slog.Logger
	client   *http.Client
	now      func() time.Time
	allowed  map[string]bool
	limit    *users.Limiter

	mu       sync.Mutex
	oauth    *oauth2.Config
	verifier *gooidc.IDTokenVerifier
	// failed and failedAt keep the last failed discovery, answered again for a while so that
	// logins do not queue behind a provider that is down.
	failed   error
	failedAt time.Time

	keys keyRing
}

// login is a login in progress, sealed into its state.
type login struct {
	Nonce    string `json:"n"` // the nonce and PKCE verifier sent to the provider
	Verifier string `json:"v"`
	ReturnTo string `json:"r"`
	// Challenge is the starter's own S256 challenge.
	Challenge string `json:"c"`
	// ID names, and Browser is the value of, the cookie set in the browser that started the
	// login: the callback is taken only from that browser, so a state (a login link) sent
	// to others finishes nobody's login but its starter's.
	ID      string `json:"i"`
	Browser string `json:"b"`
}

// cookieName is the name of a login's browser cookie: one per login, so that logins started
// side by side in one browser each find their own. __Host-: secure, this host only, path /.
func cookieName(id string) string { return "__Host-flotilla-login-" + id }

// grant is a finished login's session, sealed into the code its starter redeems: the token
// itself, so that whichever replica is asked hands over that one session (a code redeemed
// twice gives the same session, not a second), and its expiry.
type grant struct {
	Token     string `json:"t"`
	Expires   int64  `json:"e"`
	Challenge string `json:"c"`
}

// Purposes of sealed values: a state is never accepted as a code nor the reverse.
const (
	purposeState = "state"
	purposeCode  = "code"
)

// New checks cfg and returns its handler, or nil when OIDC is not configured. The provider is
// discovered at the first login, so that a provider that is down does not stop the server.
func New(cfg Config, sessions Sessions) (*Handler, error) {
	if cfg.Issuer == "" {
		return nil, nil
	}
	def := DefaultConfig()
	if cfg.UsernameClaim == "" {
		cfg.UsernameClaim = "sub"
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = def.SessionTTL
	}
	if cfg.LoginTTL <= 0 {
		cfg.LoginTTL = def.LoginTTL
	}
	if cfg.CodeTTL <= 0 {
		cfg.CodeTTL = def.CodeTTL
	}
	if cfg.StartBurst <= 0 {
		cfg.StartBurst = def.StartBurst
	}
	if cfg.StartEvery <= 0 {
		cfg.StartEvery = def.StartEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := checkIssuer(cfg.Issuer); err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		return nil, errors.New("oidc: a client ID is required")
	}
	if u, err := url.Parse(cfg.RedirectURL); err != nil || u.Scheme == "" || u.Host == "" || !strings.HasSuffix(u.Path, PathCallback) {
		return nil, fmt.Errorf("oidc: the redirect URL must be this server's absolute URL ending in %s, not %q", PathCallback, cfg.RedirectURL)
	}
	if cfg.ClientSecret == "" && cfg.ClientSecretFile != "" {
		b, err := os.ReadFile(cfg.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("oidc: reading the client secret: %w", err)
		}
		if cfg.ClientSecret = strings.TrimSpace(string(b)); cfg.ClientSecret == "" {
			return nil, fmt.Errorf("oidc: the client secret file %s is empty", cfg.ClientSecretFile)
		}
	}
	if cfg.ClientSecret == "" {
		cfg.ClientSecret = os.Getenv(SecretEnv)
	}
	h := &Handler{cfg: cfg, sessions: sessions, log: cfg.Logger.With("provider", api.ProviderOIDC), now: time.Now}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("oidc: reading the provider CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("oidc: no certificate in %s", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	h.client = &http.Client{Transport: limitedBodies{tr}, Timeout: 15 * time.Second}
	if len(cfg.AllowedGroups) > 0 {
		h.allowed = map[string]bool{}
		for _, g := range cfg.AllowedGroups {
			h.allowed[g] = true
		}
	}
	// Only the per-source buckets count: a login start names no user.
	h.limit = users.NewLimiter(users.LimiterConfig{UserBurst: math.MaxInt32, UserEvery: time.Nanosecond,
		SourceBurst: cfg.StartBurst, SourceEvery: cfg.StartEvery, MaxKeys: 100_000, Now: func() time.Time { return h.now() }})
	h.keys = cfg.Keys
	if h.keys == nil {
		h.keys = auth.EphemeralRing("oidc-login", cfg.LoginTTL)
	}
	return h, nil
}

// maxProviderBody bounds every answer read from the provider (discovery, keys, tokens).
const maxProviderBody = 1 << 20

// limitedBodies fails the reading of a provider's answer past maxProviderBody.
type limitedBodies struct{ next http.RoundTripper }

func (l limitedBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err == nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxProviderBody}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("the identity provider's answer is over %d bytes", maxProviderBody)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

func checkIssuer(issuer string) error {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("oidc: the issuer must be an absolute URL without query, not %q", issuer)
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())) {
		return fmt.Errorf("oidc: the issuer must be https (http only on a loopback address), not %q", issuer)
	}
	return nil
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// SealedLifetime is the longest a sealed login state or code lives (with defaults applied):
// a key ring sealing them needs no longer grace than that.
func (c Config) SealedLifetime() time.Duration {
	def := DefaultConfig()
	l, code := c.LoginTTL, c.CodeTTL
	if l <= 0 {
		l = def.LoginTTL
	}
	if code <= 0 {
		code = def.CodeTTL
	}
	return max(l, code) + time.Minute // clocks of replicas a little apart
}

// Register mounts the login routes on mux; a nil Handler mounts nothing.
func (h *Handler) Register(mux *http.ServeMux) {
	if h == nil {
		return
	}
	mux.HandleFunc("GET "+PathLogin, h.start)
	mux.HandleFunc("GET "+PathCallback, h.callback)
	mux.HandleFunc("POST "+PathToken, h.token)
}

// rediscoverAfter is how long a failed discovery is answered from memory.
const rediscoverAfter = 10 * time.Second

// discover returns the OAuth2 configuration and ID token verifier, discovering the provider
// on first use (and again, at most every rediscoverAfter, after a failure).
func (h *Handler) discover(ctx context.Context) (*oauth2.Config, *gooidc.IDTokenVerifier, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oauth != nil {
		return h.oauth, h.verifier, nil
	}
	if h.failed != nil && h.now().Sub(h.failedAt) < rediscoverAfter {
		return nil, nil, h.failed
	}
	dctx, cancel := context.WithTimeout(gooidc.ClientContext(ctx, h.client), 15*time.Second)
	defer cancel()
	p, err := gooidc.NewProvider(dctx, h.cfg.Issuer)
	if err != nil {
		h.failed, h.failedAt = fmt.Errorf("discovering the OIDC provider %s: %w", h.cfg.Issuer, err), h.now()
		return nil, nil, h.failed
	}
	h.oauth = &oauth2.Config{
		ClientID: h.cfg.ClientID, ClientSecret: h.cfg.ClientSecret, RedirectURL: h.cfg.RedirectURL,
		Endpoint: p.Endpoint(), Scopes: append([]string{gooidc.ScopeOpenID}, h.cfg.Scopes...),
	}
	// The key set outlives this request: its fetches use the handler's client, never ctx.
	h.verifier = p.VerifierContext(gooidc.ClientContext(context.Background(), h.client), &gooidc.Config{ClientID: h.cfg.ClientID, Now: h.now})
	return h.oauth, h.verifier, nil
}

func (h *Handler) start(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	returnTo, challenge := q.Get("redirect_uri"), q.Get("code_challenge")
	if err := checkReturnTo(returnTo); err != nil {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	if m := q.Get("code_challenge_method"); m != "" && m != "S256" {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, "code_challenge_method must be S256")
		return
	}
	if !validChallenge(challenge) {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, "code_challenge must be base64url(sha256(verifier)), 43 characters")
		return
	}
	if err := h.limit.Allow("", sourceOf(r)); err != nil {
		var rl *users.RateLimitError
		if errors.As(err, &rl) {
			w.Header().Set("Retry-After", strconv.Itoa(int(rl.RetryAfter.Seconds()+1)))
		}
		writeStatus(w, http.StatusTooManyRequests, reasonTooManyRequests, "too many logins started from this address; try again later")
		return
	}
	oc, _, err := h.discover(r.Context())
	if err != nil {
		h.log.Warn("OIDC provider unavailable", "err", err)
		writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "the identity provider cannot be reached; try again later")
		return
	}
	l := login{Nonce: randomString(32), Verifier: oauth2.GenerateVerifier(), ReturnTo: returnTo, Challenge: challenge,
		ID: randomString(8), Browser: randomString(32)}
	state, err := seal(h.keys, purposeState, h.now().Add(h.cfg.LoginTTL), l)
	if err != nil {
		h.log.Error("sealing an OIDC login state", "err", err)
		writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "starting the login failed")
		return
	}
	// SameSite=Lax: the provider sends the browser back with a top-level GET, which carries it.
	http.SetCookie(w, &http.Cookie{Name: cookieName(l.ID), Value: l.Browser, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, MaxAge: int(h.cfg.LoginTTL.Seconds())})
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, oc.AuthCodeURL(state, gooidc.Nonce(l.Nonce), oauth2.S256ChallengeOption(l.Verifier)), http.StatusFound)
}

// reasonTooManyRequests answers a 429.
const reasonTooManyRequests = "TooManyRequests"

func sourceOf(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// checkReturnTo accepts a loopback http URL with a port (RFC 8252 §7.3: the CLI listening on
// 127.0.0.1 or [::1]) or a path on this server; anything else would send a code elsewhere.
func checkReturnTo(s string) error {
	if s == "" || len(s) > maxReturnURI {
		return fmt.Errorf("redirect_uri is required (at most %d bytes)", maxReturnURI)
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("redirect_uri is not a URL")
	}
	if u.Fragment != "" || u.User != nil {
		return errors.New("redirect_uri may have no fragment or user information")
	}
	if u.Scheme == "" && u.Host == "" && strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//") && !strings.Contains(s, `\`) {
		return nil
	}
	if u.Scheme == "http" && isLoopback(u.Hostname()) && u.Port() != "" {
		return nil
	}
	return errors.New("redirect_uri must be http://127.0.0.1:PORT/… or http://[::1]:PORT/… (a local login client), or a path on this server")
}

func validChallenge(c string) bool {
	b, err := base64.RawURLEncoding.Strict().DecodeString(c)
	return err == nil && len(b) == sha256.Size
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// loginError is a refused login: its message is shown to the user and carries no secret.
type loginError struct{ msg string }

func (e *loginError) Error() string { return e.msg }

func refuse(format string, args ...any) error { return &loginError{fmt.Sprintf(format, args...)} }

func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	w.Header().Set("Cache-Control", "no-store")
	// A state is good on every replica until it expires; the provider's code in the same
	// callback is single use at the provider, so a replayed callback is refused there.
	l, err := unseal[login](r.Context(), h.keys, purposeState, q.Get("state"), h.now())
	if err != nil {
		http.Error(w, "This login has expired or is unknown; start it again.", http.StatusBadRequest)
		return
	}
	c, err := r.Cookie(cookieName(l.ID))
	if l.ID == "" || err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(l.Browser)) != 1 {
		http.Error(w, "This login was started in another browser (or its cookie is gone); start it again here.", http.StatusBadRequest)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName(l.ID), Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode, MaxAge: -1})
	// Checked at start; again here, so that a state sealed by anyone but start (a leaked key)
	// still cannot send a code elsewhere.
	if err := checkReturnTo(l.ReturnTo); err != nil {
		http.Error(w, "This login's return address is not allowed; start it again.", http.StatusBadRequest)
		return
	}
	id, err := h.finish(r.Context(), l, q)
	if err != nil {
		var le *loginError
		if !errors.As(err, &le) {
			h.log.Error("OIDC login failed", "err", err)
			err = refuse("the login failed on the server; try again later")
		}
		h.log.Info("OIDC login refused", "reason", err.Error())
		redirectBack(w, r, l.ReturnTo, url.Values{"error": {"access_denied"}, "error_description": {err.Error()}})
		return
	}
	// The session is issued now, and only its holder of the verifier gets it: the code is the
	// sealed token, and the token endpoint checks the verifier against the login's challenge.
	token, err := h.sessions.IssueSession(r.Context(), id, h.cfg.SessionTTL)
	if err != nil {
		h.log.Error("issuing an OIDC session failed", "user", id.User, "err", err)
		redirectBack(w, r, l.ReturnTo, url.Values{"error": {"temporarily_unavailable"}, "error_description": {"issuing the session failed; log in again"}})
		return
	}
	code, err := seal(h.keys, purposeCode, h.now().Add(h.cfg.CodeTTL), grant{Token: token, Expires: h.now().Add(h.cfg.SessionTTL).Unix(), Challenge: l.Challenge})
	if err != nil {
		h.log.Error("sealing an OIDC code", "err", err)
		redirectBack(w, r, l.ReturnTo, url.Values{"error": {"temporarily_unavailable"}, "error_description": {"the login failed on the server; try again later"}})
		return
	}
	h.log.Info("OIDC login", "user", id.User, "groups", len(id.Groups))
	redirectBack(w, r, l.ReturnTo, url.Values{"code": {code}})
}

func redirectBack(w http.ResponseWriter, r *http.Request, returnTo string, v url.Values) {
	u, _ := url.Parse(returnTo) // checked at start
	q := u.Query()
	for k, vs := range v {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// finish checks the provider's answer and records the login.
func (h *Handler) finish(ctx context.Context, l login, q url.Values) (auth.Identity, error) {
	if e := q.Get("error"); e != "" {
		return auth.Identity{}, refuse("the identity provider refused the login: %s", shorten(e+": "+q.Get("error_description")))
	}
	code := q.Get("code")
	if code == "" {
		return auth.Identity{}, refuse("the identity provider sent no code")
	}
	oc, verifier, err := h.discover(ctx)
	if err != nil {
		return auth.Identity{}, err
	}
	xctx, cancel := context.WithTimeout(gooidc.ClientContext(ctx, h.client), 15*time.Second)
	defer cancel()
	tok, err := oc.Exchange(xctx, code, oauth2.VerifierOption(l.Verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return auth.Identity{}, refuse("the identity provider did not accept the code: %s", shorten(re.ErrorCode+" "+re.ErrorDescription))
		}
		return auth.Identity{}, fmt.Errorf("exchanging the code at the provider: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return auth.Identity{}, refuse("the identity provider sent no ID token")
	}
	idt, err := verifier.Verify(xctx, raw)
	if err != nil {
		// go-oidc's messages name the failed check (issuer, audience, expiry, signature).
		return auth.Identity{}, refuse("the ID token was refused: %s", shorten(err.Error()))
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(l.Nonce)) != 1 {
		return auth.Identity{}, refuse("the ID token was refused: its nonce does not match this login")
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return auth.Identity{}, refuse("the ID token's claims cannot be read")
	}
	id, err := h.identity(claims)
	if err != nil {
		return auth.Identity{}, err
	}
	if err := h.sessions.RecordLogin(ctx, api.ProviderOIDC, id); err != nil {
		if errors.Is(err, auth.ErrUnauthenticated) {
			return auth.Identity{}, refuse("user %s may not log in", id.User)
		}
		return auth.Identity{}, fmt.Errorf("recording the login of %s: %w", id.User, err)
	}
	return id, nil
}

func shorten(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxErrorShown {
		s = s[:maxErrorShown] + "…"
	}
	return strings.TrimSpace(s)
}

// identity maps verified claims to a Flotilla identity.
func (h *Handler) identity(claims map[string]any) (auth.Identity, error) {
	c := h.cfg
	name, _ := claims[c.UsernameClaim].(string)
	if v, present := claims[c.UsernameClaim]; present && v != nil {
		if _, isString := v.(string); !isString {
			return auth.Identity{}, refuse("the claim %q is not a string", c.UsernameClaim)
		}
	}
	if c.UsernameClaim == "email" {
		// An address the provider has not verified could be anyone's.
		if v, ok := claims["email_verified"].(bool); ok && !v {
			return auth.Identity{}, refuse("the e-mail address %q is not verified by the identity provider", shorten(name))
		}
	}
	if name == "" {
		name, _ = claims["sub"].(string)
	}
	if name == "" {
		return auth.Identity{}, refuse("the ID token names no user (claim %q, nor sub)", c.UsernameClaim)
	}
	user := c.UsernamePrefix + name
	if !validName(user) {
		return auth.Identity{}, refuse("the user name %q is empty, longer than %d bytes or holds control characters", shorten(user), maxNameBytes)
	}
	var raw []string
	switch v := claims[c.GroupsClaim].(type) {
	case nil:
	case string:
		raw = []string{v}
	case []any:
		if len(v) > maxGroups {
			return auth.Identity{}, refuse("the claim %q lists more than %d groups", c.GroupsClaim, maxGroups)
		}
		for _, g := range v {
			s, ok := g.(string)
			if !ok {
				return auth.Identity{}, refuse("the claim %q holds something other than group names", c.GroupsClaim)
			}
			raw = append(raw, s)
		}
	default:
		return auth.Identity{}, refuse("the claim %q is not a list of group names", c.GroupsClaim)
	}
	id := auth.Identity{User: user}
	allowed := h.allowed == nil
	seen := map[string]bool{}
	for _, g := range raw {
		if h.allowed[g] {
			allowed = true
		}
		name := c.GroupsPrefix + g
		if g == "" || seen[name] || !validName(name) {
			continue // an unusable group name grants nothing; it does not stop the login
		}
		seen[name] = true
		id.Groups = append(id.Groups, name)
	}
	if !allowed {
		return auth.Identity{}, refuse("user %s is in none of the groups allowed to log in", user)
	}
	return id, nil
}

func validName(s string) bool {
	return s != "" && len(s) <= maxNameBytes && !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

func (h *Handler) token(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	var req TokenRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxTokenBody))
	if err := dec.Decode(&req); err != nil {
		writeStatus(w, http.StatusBadRequest, api.ReasonBadRequest, "the body must be a JSON object with code and codeVerifier")
		return
	}
	g, err := unseal[grant](r.Context(), h.keys, purposeCode, req.Code, h.now())
	if err != nil {
		writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, "the login code is unknown or expired; log in again")
		return
	}
	if req.CodeVerifier == "" {
		writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, "a code verifier is required; log in again")
		return
	}
	if subtle.ConstantTimeCompare([]byte(s256(req.CodeVerifier)), []byte(g.Challenge)) != 1 {
		writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, "the code verifier does not match the login's challenge; log in again")
		return
	}
	// The session may have ended since the callback (the user disabled, a password reset):
	// what is handed over is what works now.
	id, err := h.sessions.Authenticate(r.Context(), g.Token)
	if err != nil {
		if errors.Is(err, auth.ErrUnauthenticated) {
			writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, "the login's session has ended; log in again")
		} else {
			writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cannot check the session now; try again")
		}
		return
	}
	writeJSON(w, http.StatusOK, TokenResponse{Token: g.Token, Expires: time.Unix(g.Expires, 0).UTC(), User: id.User, Groups: id.Groups})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	writeJSON(w, code, &api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg})
}

// AddFlags registers cfg's settings as `flotilla server` flags, with DefaultConfig's values as
// defaults.
func AddFlags(f *pflag.FlagSet, cfg *Config) {
	d := DefaultConfig()
	f.StringVar(&cfg.Issuer, "oidc-issuer", "", "OpenID Connect provider (issuer URL) for browser and 'flotilla login --oidc' logins; empty disables them")
	f.StringVar(&cfg.ClientID, "oidc-client-id", "", "Flotilla's client ID at the OpenID Connect provider")
	f.StringVar(&cfg.ClientSecretFile, "oidc-client-secret-file", "", "file holding the OIDC client secret (default: env "+SecretEnv+")")
	f.StringVar(&cfg.RedirectURL, "oidc-redirect-url", "", "this server's callback as browsers reach it, registered at the provider: https://HOST[:PORT]"+PathCallback)
	f.StringVar(&cfg.CAFile, "oidc-ca-file", "", "CA certificates to check the OIDC provider's TLS certificate with (default: the system's)")
	f.StringSliceVar(&cfg.Scopes, "oidc-scopes", d.Scopes, "scopes asked for besides openid (add groups for providers that need it)")
	f.StringVar(&cfg.UsernameClaim, "oidc-username-claim", d.UsernameClaim, "ID token claim giving the user name; sub when absent")
	f.StringVar(&cfg.UsernamePrefix, "oidc-username-prefix", d.UsernamePrefix, "put before OIDC user names, so that none can be a local user's")
	f.StringVar(&cfg.GroupsClaim, "oidc-groups-claim", d.GroupsClaim, "ID token claim listing the user's groups")
	f.StringVar(&cfg.GroupsPrefix, "oidc-groups-prefix", d.GroupsPrefix, "put before OIDC group names")
	f.StringSliceVar(&cfg.AllowedGroups, "oidc-allowed-groups", nil, "if set, only members of one of these provider groups (without prefix) may log in")
	f.DurationVar(&cfg.SessionTTL, "oidc-session-ttl", d.SessionTTL, "how long an OIDC login's session lasts")
}
