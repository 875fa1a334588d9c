package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/oidc/oidctest"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var people = map[string]oidctest.User{
	"alice":    {Password: "alice-password", Subject: "u-1001", PreferredUsername: "alice", Groups: []string{"platform", "devs"}},
	"bob":      {Password: "bob-password", Subject: "u-1002", PreferredUsername: "bob", Groups: []string{"sales"}},
	"nameless": {Password: "nameless-password", Subject: "u-1003"},
}

// rig is a Flotilla login endpoint (TLS, over a SQLite store) in front of a real provider.
type rig struct {
	t        *testing.T
	op       *oidctest.Provider
	authn    *auth.Authenticator
	h        *Handler
	srv      *httptest.Server
	mu       sync.Mutex
	callback []string // callback URLs the server was sent to
}

// loopback is where the fake CLI listens; nothing is requested there, the browser stops.
const loopback = "http://127.0.0.1:9/callback"

// newRig starts one; wrap, if set, stands between the handler and the authenticator.
func newRig(t *testing.T, edit func(*Config), wrap func(*auth.Authenticator) Sessions) *rig {
	t.Helper()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = quiet
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &rig{t: t, op: oidctest.Start(t, people), authn: auth.NewAuthenticator(st)}
	mux := http.NewServeMux()
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == PathCallback {
			r.mu.Lock()
			r.callback = append(r.callback, r.srv.URL+req.URL.String())
			r.mu.Unlock()
		}
		mux.ServeHTTP(w, req)
	}))
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	c := DefaultConfig()
	c.Issuer, c.ClientID, c.ClientSecret = r.op.Issuer, r.op.ClientID, r.op.ClientSecret
	c.RedirectURL = r.srv.URL + PathCallback
	c.Logger = quiet
	if edit != nil {
		edit(&c)
	}
	r.op.AllowRedirect(c.RedirectURL)
	var sessions Sessions = r.authn
	if wrap != nil {
		sessions = wrap(r.authn)
	}
	if r.h, err = New(c, sessions); err != nil {
		t.Fatal(err)
	}
	r.h.Register(mux)
	return r
}

// browser is a new browser: its own cookies (srv.Client answers one shared client).
func (r *rig) browser() *http.Client {
	c := *r.srv.Client()
	c.Jar, _ = cookiejar.New(nil)
	return &c
}

// login runs the browser part as alice (or user) and returns the verifier and where the
// browser was finally sent.
func (r *rig) login(user string) (verifier string, back url.Values) {
	r.t.Helper()
	verifier = oauth2.GenerateVerifier()
	start := r.srv.URL + PathLogin + "?" + url.Values{
		"redirect_uri":   {loopback},
		"code_challenge": {oauth2.S256ChallengeFromVerifier(verifier)},
	}.Encode()
	u, err := oidctest.Browse(r.browser(), start, user, people[user].Password, func(u *url.URL) bool {
		return u.Host == "127.0.0.1:9"
	})
	if err != nil {
		r.t.Fatalf("browsing: %v", err)
	}
	if got := u.Scheme + "://" + u.Host + u.Path; got != loopback {
		r.t.Fatalf("browser ended at %s, want %s", u, loopback)
	}
	return verifier, u.Query()
}

// redeem posts a code and verifier; it returns the status and the decoded answer.
func (r *rig) redeem(code, verifier string) (int, TokenResponse, string) {
	r.t.Helper()
	body, _ := json.Marshal(TokenRequest{Code: code, CodeVerifier: verifier})
	resp, err := r.srv.Client().Post(r.srv.URL+PathToken, "application/json", bytes.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var tr TokenResponse
	json.Unmarshal(raw, &tr)
	return resp.StatusCode, tr, string(raw)
}

func (r *rig) sessions() int {
	r.t.Helper()
	ts, err := r.authn.ListTokens(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return len(ts)
}

func TestLogin(t *testing.T) {
	r := newRig(t, nil, nil)
	verifier, back := r.login("alice")
	code := back.Get("code")
	if code == "" {
		t.Fatalf("no code: %v", back)
	}
	status, tr, raw := r.redeem(code, verifier)
	if status != http.StatusOK || tr.Token == "" {
		t.Fatalf("redeeming: %d %s", status, raw)
	}
	id, err := r.authn.Authenticate(context.Background(), tr.Token)
	if err != nil {
		t.Fatalf("the session is not accepted: %v", err)
	}
	if want := []string{"oidc:devs", "oidc:platform"}; id.User != "oidc:alice" || !slices.Equal(sorted(id.Groups), want) || id.Admin {
		t.Errorf("identity %+v, want oidc:alice in %v, not admin", id, want)
	}
	if tr.User != "oidc:alice" || !tr.Expires.After(time.Now().Add(15*time.Hour)) {
		t.Errorf("answer: %+v", tr)
	}

	// The code hands over one session: redeemed again it gives the same, not a second.
	if status, again, raw := r.redeem(code, verifier); status != http.StatusOK || again.Token != tr.Token {
		t.Errorf("second redemption: %d %s, want the same session", status, raw)
	}
	// The callback (state and provider code) cannot be replayed: not from another browser
	// (it lacks the login's cookie; see TestLoginIsBoundToItsBrowser), and the provider's
	// code is single use, so no second session comes of it.
	c := r.browser()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(r.callback[0])
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
		t.Errorf("replayed callback: %d to %q, want 400", resp.StatusCode, resp.Header.Get("Location"))
	}
	if n := r.sessions(); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
	// A code is not a state, nor the reverse, and neither outlives its TTL.
	state := mustQuery(t, r.callback[0]).Get("state")
	if status, _, _ := r.redeem(state, verifier); status != http.StatusUnauthorized {
		t.Errorf("a state redeemed as a code: %d", status)
	}
	if resp, err := c.Get(r.srv.URL + PathCallback + "?" + url.Values{"state": {code}, "code": {"x"}}.Encode()); err != nil {
		t.Error(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a code given as a state: %d", resp.StatusCode)
	}
	r.h.now = func() time.Time { return time.Now().Add(DefaultConfig().CodeTTL + time.Second) }
	if status, _, raw := r.redeem(code, verifier); status != http.StatusUnauthorized || !strings.Contains(raw, "expired") {
		t.Errorf("an expired code: %d %s", status, raw)
	}
}

// A login link (the provider's URL with its state) started in one browser finishes nothing
// when opened in another: a link sent to many people logs none of them in for its starter.
// Each login's cookie is its own, so two logins side by side in one browser both finish.
func TestLoginIsBoundToItsBrowser(t *testing.T) {
	r := newRig(t, nil, nil)
	start := func(c *http.Client) (verifier, provider string) {
		verifier = oauth2.GenerateVerifier()
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := c.Get(r.srv.URL + PathLogin + "?" + url.Values{
			"redirect_uri":   {loopback},
			"code_challenge": {oauth2.S256ChallengeFromVerifier(verifier)},
		}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.CheckRedirect = nil
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("start: %d", resp.StatusCode)
		}
		return verifier, resp.Header.Get("Location")
	}
	atLoopback := func(u *url.URL) bool { return u.Host == "127.0.0.1:9" }
	starter := r.browser()
	v1, link1 := start(starter)
	v2, link2 := start(starter)

	// Bob opens the starter's link in his own browser and logs in at the provider.
	u, err := oidctest.Browse(r.browser(), link1, "bob", people["bob"].Password, atLoopback)
	if err == nil || (u != nil && u.Host == "127.0.0.1:9") || !strings.Contains(err.Error(), "another browser") {
		t.Fatalf("a link opened in another browser: ended at %v, %v", u, err)
	}
	if n := r.sessions(); n != 0 {
		t.Fatalf("%d sessions after a login from another browser, want 0", n)
	}

	// The starter finishes both of its logins, the second first.
	for _, l := range []struct{ verifier, link string }{{v2, link2}, {v1, link1}} {
		u, err := oidctest.Browse(starter, l.link, "alice", people["alice"].Password, atLoopback)
		if err != nil || u.Host != "127.0.0.1:9" {
			t.Fatalf("the starter's own login: %v, %v", u, err)
		}
		if status, tr, raw := r.redeem(u.Query().Get("code"), l.verifier); status != http.StatusOK || tr.User != "oidc:alice" {
			t.Errorf("redeeming: %d %s", status, raw)
		}
	}
}

func mustQuery(t *testing.T, raw string) url.Values {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query()
}

// Replicas of one database share the login key ring: a login started and called back on one
// is redeemed on another; a server with another ring refuses it. A session that ended between
// the callback and the redemption is not handed over.
func TestLoginAcrossReplicas(t *testing.T) {
	ring := auth.EphemeralRing("oidc-login", time.Hour)
	r := newRig(t, func(c *Config) { c.Keys = ring }, nil)
	other := func(keys keyRing) string {
		cfg := r.h.cfg
		cfg.Keys = keys
		h, err := New(cfg, r.authn)
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		h.Register(mux)
		srv := httptest.NewTLSServer(mux)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	replica, stranger := other(ring), other(nil)
	redeemAt := func(base, code, verifier string) (int, TokenResponse) {
		body, _ := json.Marshal(TokenRequest{Code: code, CodeVerifier: verifier})
		resp, err := r.srv.Client().Post(base+PathToken, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tr TokenResponse
		json.NewDecoder(resp.Body).Decode(&tr)
		return resp.StatusCode, tr
	}
	verifier, back := r.login("alice")
	if status, _ := redeemAt(stranger, back.Get("code"), verifier); status != http.StatusUnauthorized {
		t.Errorf("a server with another key ring: %d, want 401", status)
	}
	status, tr := redeemAt(replica, back.Get("code"), verifier)
	if status != http.StatusOK || tr.User != "oidc:alice" || len(tr.Groups) != 2 {
		t.Fatalf("redeemed on the other replica: %d %+v", status, tr)
	}
	if _, err := r.authn.Authenticate(context.Background(), tr.Token); err != nil {
		t.Errorf("the session from the other replica: %v", err)
	}

	verifier, back = r.login("alice")
	if _, err := r.authn.EndSessions(context.Background(), "oidc:alice", ""); err != nil {
		t.Fatal(err)
	}
	if status, _, raw := r.redeem(back.Get("code"), verifier); status != http.StatusUnauthorized || !strings.Contains(raw, "session has ended") {
		t.Errorf("a code whose session ended: %d %s", status, raw)
	}
}

func TestUsernameFallsBackToSubject(t *testing.T) {
	r := newRig(t, nil, nil)
	verifier, back := r.login("nameless")
	status, tr, raw := r.redeem(back.Get("code"), verifier)
	if status != http.StatusOK || tr.User != "oidc:u-1003" || len(tr.Groups) != 0 {
		t.Fatalf("got %d %s, want user oidc:u-1003 without groups", status, raw)
	}
}

func TestRefusedLogins(t *testing.T) {
	for _, tt := range []struct {
		name   string
		edit   func(*Config)
		tamper oidctest.Tamper
		user   string
		want   string
	}{
		{name: "wrong issuer", tamper: oidctest.Tamper{Issuer: "http://127.0.0.1:1"}, want: "issued by a different provider"},
		{name: "wrong audience", tamper: oidctest.Tamper{Audience: []string{"someone-else"}}, want: `expected audience "flotilla"`},
		{name: "another login's nonce", tamper: oidctest.Tamper{Nonce: "0123456789abcdef"}, want: "nonce does not match"},
		{name: "expired", tamper: oidctest.Tamper{Lifetime: -time.Hour}, want: "token is expired"},
		{name: "signed with another key", tamper: oidctest.Tamper{OtherKey: true}, want: "failed to verify signature"},
		{name: "not in an allowed group", edit: func(c *Config) { c.AllowedGroups = []string{"platform"} }, user: "bob", want: "oidc:bob is in none of the groups allowed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.edit, nil)
			r.op.SetTamper(tt.tamper)
			user := tt.user
			if user == "" {
				user = "alice"
			}
			_, back := r.login(user)
			if back.Get("code") != "" || back.Get("error") != "access_denied" || !strings.Contains(back.Get("error_description"), tt.want) {
				t.Errorf("browser sent back with %v, want access_denied and %q", back, tt.want)
			}
			if n := r.sessions(); n != 0 {
				t.Errorf("%d sessions issued", n)
			}
		})
	}
	t.Run("allowed group", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.AllowedGroups = []string{"platform"} }, nil)
		verifier, back := r.login("alice")
		if status, _, raw := r.redeem(back.Get("code"), verifier); status != http.StatusOK {
			t.Errorf("alice, in platform: %d %s", status, raw)
		}
	})
}

// refusing is an authenticator whose user store refuses every login, as for a disabled user.
type refusing struct {
	*auth.Authenticator
	got []string
}

func (r *refusing) RecordLogin(_ context.Context, provider string, id auth.Identity) error {
	r.got = append(r.got, provider+" "+id.User+" "+strings.Join(id.Groups, ","))
	return fmt.Errorf("%w: user disabled", auth.ErrUnauthenticated)
}

func TestRecordLoginCanRefuse(t *testing.T) {
	var rec *refusing
	r := newRig(t, nil, func(a *auth.Authenticator) Sessions { rec = &refusing{Authenticator: a}; return rec })
	_, back := r.login("alice")
	if back.Get("code") != "" || back.Get("error_description") != "user oidc:alice may not log in" {
		t.Errorf("browser sent back with %v", back)
	}
	if want := []string{"oidc oidc:alice oidc:platform,oidc:devs"}; !slices.Equal(rec.got, want) {
		t.Errorf("RecordLogin was told %q, want %q", rec.got, want)
	}
	if n := r.sessions(); n != 0 {
		t.Errorf("%d sessions issued", n)
	}
}

func TestRedeemNeedsTheVerifier(t *testing.T) {
	r := newRig(t, nil, nil)
	for _, tt := range []struct{ name, verifier, want string }{
		{"missing", "", "a code verifier is required"},
		{"another", oauth2.GenerateVerifier(), "does not match"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			good, back := r.login("alice")
			code := back.Get("code")
			if status, _, raw := r.redeem(code, tt.verifier); status != http.StatusUnauthorized || !strings.Contains(raw, tt.want) {
				t.Errorf("got %d %s, want 401 %q", status, raw, tt.want)
			}
			// Nothing was handed over; the verifier that belongs to the code still works.
			if status, _, raw := r.redeem(code, good); status != http.StatusOK {
				t.Errorf("with the right verifier after a failed attempt: %d %s", status, raw)
			}
		})
	}
}

func TestStartRefusesBadRequests(t *testing.T) {
	r := newRig(t, nil, nil)
	good := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	for _, tt := range []struct{ name, redirect, challenge, method, want string }{
		{"no redirect", "", good, "", "redirect_uri is required"},
		{"remote redirect", "https://evil.example/cb", good, "", "redirect_uri must be"},
		{"loopback without port", "http://127.0.0.1/cb", good, "", "redirect_uri must be"},
		{"localhost name", "http://localhost:8000/cb", good, "", "redirect_uri must be"},
		{"scheme-relative", "//evil.example/cb", good, "", "redirect_uri must be"},
		{"control character", "/\t/evil.example/cb", good, "", "not a URL"},
		{"backslash", "/\\evil.example/cb", good, "", "redirect_uri must be"},
		{"user info", "http://x@127.0.0.1:80/cb", good, "", "no fragment or user"},
		{"no challenge", loopback, "", "", "code_challenge must be"},
		{"short challenge", loopback, "abc", "", "code_challenge must be"},
		{"plain method", loopback, good, "plain", "must be S256"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{"redirect_uri": {tt.redirect}, "code_challenge": {tt.challenge}}
			if tt.method != "" {
				q.Set("code_challenge_method", tt.method)
			}
			c := r.browser()
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			resp, err := c.Get(r.srv.URL + PathLogin + "?" + q.Encode())
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tt.want) {
				t.Errorf("got %d %s, want 400 %q", resp.StatusCode, body, tt.want)
			}
		})
	}
	// A path on the server itself (the dashboard) is accepted.
	if err := checkReturnTo("/ui/login?next=%2F"); err != nil {
		t.Errorf("dashboard path: %v", err)
	}
	if err := checkReturnTo("http://[::1]:4000/callback"); err != nil {
		t.Errorf("IPv6 loopback: %v", err)
	}
}

func TestStartsAreLimitedPerSource(t *testing.T) {
	r := newRig(t, func(c *Config) { c.StartBurst, c.StartEvery = 2, time.Hour }, nil)
	q := url.Values{"redirect_uri": {loopback}, "code_challenge": {oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())}}
	c := r.browser()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for i, want := range []int{http.StatusFound, http.StatusFound, http.StatusTooManyRequests} {
		resp, err := c.Get(r.srv.URL + PathLogin + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("start %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	base := DefaultConfig()
	base.Issuer, base.ClientID, base.RedirectURL = "https://idp.example.com", "flotilla", "https://fleet.example.com"+PathCallback
	if _, err := New(base, nil); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tt := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"http issuer", func(c *Config) { c.Issuer = "http://idp.example.com" }, "must be https"},
		{"no client", func(c *Config) { c.ClientID = "" }, "client ID is required"},
		{"redirect elsewhere", func(c *Config) { c.RedirectURL = "https://fleet.example.com/other" }, "ending in " + PathCallback},
		{"missing secret file", func(c *Config) { c.ClientSecretFile = "/nonexistent/secret" }, "reading the client secret"},
	} {
		c := base
		tt.edit(&c)
		if _, err := New(c, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
	if h, err := New(Config{}, nil); h != nil || err != nil {
		t.Errorf("unconfigured: %v, %v; want nil, nil", h, err)
	}
}

func TestIdentityFromClaims(t *testing.T) {
	h, err := New(Config{Issuer: "https://idp.example.com", ClientID: "c", RedirectURL: "https://f.example.com" + PathCallback,
		UsernameClaim: "email", UsernamePrefix: "oidc:", GroupsClaim: "groups", GroupsPrefix: "idp/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 300)
	for _, tt := range []struct {
		name   string
		claims map[string]any
		user   string
		groups []string
		want   string
	}{
		{"email", map[string]any{"sub": "1", "email": "a@example.com", "email_verified": true, "groups": []any{"b", "a", "b"}}, "oidc:a@example.com", []string{"idp/b", "idp/a"}, ""},
		{"single group", map[string]any{"sub": "1", "email": "a@example.com", "groups": "ops"}, "oidc:a@example.com", []string{"idp/ops"}, ""},
		{"unusable groups skipped", map[string]any{"sub": "1", "groups": []any{"", long, "x\ny", "ok"}}, "oidc:1", []string{"idp/ok"}, ""},
		{"unverified email", map[string]any{"sub": "1", "email": "a@example.com", "email_verified": false}, "", nil, "not verified"},
		{"name not a string", map[string]any{"sub": "1", "email": 7}, "", nil, `claim "email" is not a string`},
		{"no name at all", map[string]any{}, "", nil, "names no user"},
		{"name too long", map[string]any{"sub": long}, "", nil, "longer than 200 bytes"},
		{"control character", map[string]any{"sub": "a\x00b"}, "", nil, "control characters"},
		{"groups not a list", map[string]any{"sub": "1", "groups": map[string]any{"a": 1}}, "", nil, "not a list"},
		{"groups with numbers", map[string]any{"sub": "1", "groups": []any{"a", 2.0}}, "", nil, "other than group names"},
		{"too many groups", map[string]any{"sub": "1", "groups": make([]any, 1001)}, "", nil, "more than 1000"},
	} {
		id, err := h.identity(tt.claims)
		switch {
		case tt.want != "":
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: got %+v, %v; want error %q", tt.name, id, err, tt.want)
			}
		case err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case id.User != tt.user || !slices.Equal(id.Groups, tt.groups):
			t.Errorf("%s: got %q %q, want %q %q", tt.name, id.User, id.Groups, tt.user, tt.groups)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestProviderAnswersAreBounded(t *testing.T) {
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte(" "), 2<<20))
	}))
	t.Cleanup(big.Close)
	h, err := New(Config{Issuer: big.URL, ClientID: "c", RedirectURL: "https://f.example.com" + PathCallback, Logger: quiet}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.discover(context.Background()); err == nil || !strings.Contains(err.Error(), "answer is over 1048576 bytes") {
		t.Errorf("discovery of a 2 MiB document: %v", err)
	}
}

func TestFailedDiscoveryIsRetriedLater(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		http.Error(w, "down", http.StatusBadGateway)
	}))
	t.Cleanup(down.Close)
	h, err := New(Config{Issuer: down.URL, ClientID: "c", RedirectURL: "https://f.example.com" + PathCallback, Logger: quiet}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1e9, 0)
	h.now = func() time.Time { return now }
	count := func() int { mu.Lock(); defer mu.Unlock(); return hits }
	for i, want := range []int{1, 1} {
		if _, _, err := h.discover(context.Background()); err == nil || !strings.Contains(err.Error(), "502") {
			t.Errorf("discovery %d: %v", i, err)
		}
		if got := count(); got != want {
			t.Errorf("after discovery %d: %d requests to the provider, want %d", i, got, want)
		}
	}
	now = now.Add(rediscoverAfter)
	h.discover(context.Background())
	if got := count(); got != 2 {
		t.Errorf("after the pause: %d requests, want 2", got)
	}
}

// A state sealed with a return address start would refuse (as a leaked key could make) sends
// no code there: the callback checks the address again.
func TestCallbackChecksTheReturnAddress(t *testing.T) {
	r := newRig(t, nil, nil)
	l := login{Nonce: "n", Verifier: oauth2.GenerateVerifier(), ReturnTo: "https://elsewhere.example/take", Challenge: "c", ID: "id", Browser: "b"}
	state, err := seal(r.h.keys, purposeState, time.Now().Add(time.Minute), l)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, r.srv.URL+PathCallback+"?"+url.Values{"state": {state}, "code": {"x"}}.Encode(), nil)
	req.AddCookie(&http.Cookie{Name: cookieName(l.ID), Value: l.Browser})
	c := r.browser()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
		t.Errorf("a state returning elsewhere: %d to %q, want 400", resp.StatusCode, resp.Header.Get("Location"))
	}
}
