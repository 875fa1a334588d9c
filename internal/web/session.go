package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/oidc"
)

// Cookies. The __Host- prefix makes the browser refuse them unless Secure, for this host
// only and for every path: no subdomain or plain-HTTP page can plant or read them.
const (
	// sessionCookie holds the session token the API's login issued.
	sessionCookie = "__Host-flotilla-session"
	// loginCookie holds the login form's CSRF token, before any session exists.
	loginCookie = "__Host-flotilla-login"
	// oidcCookie holds the PKCE verifier of a single sign-on under way.
	oidcCookie = "__Host-flotilla-oidc"
)

func setCookie(w http.ResponseWriter, name, value string, expires time.Time) {
	c := &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode}
	if !expires.IsZero() {
		c.Expires = expires
	}
	http.SetCookie(w, c)
}

func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// csrfToken is derived from the session token, so that every replica computes the same one
// without storing it, and only a page that could read the HttpOnly session (none but the
// server) can know it.
func csrfToken(session string) string {
	m := hmac.New(sha256.New, []byte(session))
	m.Write([]byte("flotilla dashboard form"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkCSRF: the form field (or htmx's header) carries the token, and a browser that says
// where the request came from says this origin.
func (h *Handler) checkCSRF(r *http.Request, want string) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		r.Body = http.MaxBytesReader(nil, r.Body, 64<<10)
		got = r.PostFormValue("csrf")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

// safeNext keeps a return path on this server's dashboard.
func safeNext(s string) string {
	if s == "" || !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.Contains(s, `\`) || len(s) > 2048 {
		return "/"
	}
	return s
}

type loginData struct {
	Username string
	Next     string
	CSRF     string
	OIDC     bool
	// LDAP offers the provider choice; Provider is the one chosen.
	LDAP     bool
	Provider string
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	h.showLogin(w, r, http.StatusOK, "", "")
}

func (h *Handler) showLogin(w http.ResponseWriter, r *http.Request, code int, username, msg string) {
	provider := r.PostFormValue("provider")
	if provider != api.ProviderLDAP {
		provider = api.ProviderLocal
	}
	tok := randomToken()
	setCookie(w, loginCookie, tok, time.Time{})
	if msg == "" && r.URL.Query().Get("error") != "" {
		msg = "Single sign-on failed: " + truncate(r.URL.Query().Get("error_description"), 200)
	}
	h.render(w, r, code, "login", page{Title: "Log in", Error: msg,
		Data: loginData{Username: username, Next: safeNext(r.FormValue("next")), CSRF: tok, OIDC: h.cfg.OIDC,
			LDAP: h.cfg.LDAP, Provider: provider}})
}

// login logs in with a local user's name and password through the API's login, which
// checks, rate-limits and records it, and keeps the session it issues in a cookie.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	c, err := r.Cookie(loginCookie)
	if err != nil || r.PostFormValue("csrf") == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		h.showLogin(w, r, http.StatusForbidden, "", "The login form has expired: try again.")
		return
	}
	username := strings.TrimSpace(r.PostFormValue("username"))
	// The provider is local or, when the server has a directory, ldap; the API checks it too.
	provider := r.PostFormValue("provider")
	switch {
	case provider == "" || provider == api.ProviderLocal:
		provider = ""
	case provider == api.ProviderLDAP && h.cfg.LDAP:
	default:
		h.showLogin(w, r, http.StatusBadRequest, username, "Choose a local account or the directory (LDAP).")
		return
	}
	body, _ := json.Marshal(api.LoginRequest{Provider: provider, Username: username, Password: r.PostFormValue("password")})
	res := h.call(r, "", http.MethodPost, api.PathLogin, "application/json", body)
	switch res.code {
	case http.StatusOK:
	case http.StatusUnauthorized:
		h.showLogin(w, r, http.StatusUnauthorized, username, "Wrong user name or password.")
		return
	default:
		h.showLogin(w, r, res.code, username, res.message())
		return
	}
	var lr api.LoginResponse
	if err := json.Unmarshal(res.body, &lr); err != nil || lr.Token == "" {
		h.showLogin(w, r, http.StatusInternalServerError, username, "The login failed on the server; try again.")
		return
	}
	audit.Annotate(r.Context(), lr.User, lr.Groups, "", "", "")
	clearCookie(w, loginCookie)
	setCookie(w, sessionCookie, lr.Token, lr.Expires)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

// logout revokes the session through the API (a user may revoke their own tokens) and drops
// the cookie.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request, u *user) {
	res := h.call(r, u.token, http.MethodDelete, api.PathTokens+"/"+auth.Hash(u.token)[:12], "", nil)
	if res.code != http.StatusOK && res.code != http.StatusNoContent {
		h.log.Warn("revoking a dashboard session", "user", u.User, "code", res.code, "err", res.message())
	}
	clearCookie(w, sessionCookie)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// oidcStart begins the server's OIDC login with a PKCE challenge whose verifier only this
// browser holds (in an HttpOnly cookie); the login ends at oidcDone.
func (h *Handler) oidcStart(w http.ResponseWriter, r *http.Request) {
	if !h.cfg.OIDC {
		http.NotFound(w, r)
		return
	}
	verifier := randomToken() + randomToken()
	sum := sha256.Sum256([]byte(verifier))
	setCookie(w, oidcCookie, verifier, time.Now().Add(10*time.Minute))
	q := url.Values{"redirect_uri": {"/login/oidc/done"}, "code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"}}
	http.Redirect(w, r, oidc.PathLogin+"?"+q.Encode(), http.StatusSeeOther)
}

// oidcDone redeems the login's one-time code with the verifier for a session.
func (h *Handler) oidcDone(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(oidcCookie)
	clearCookie(w, oidcCookie)
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		h.showLogin(w, r, http.StatusUnauthorized, "", "Single sign-on failed: "+truncate(q.Get("error_description"), 200))
		return
	}
	if err != nil || q.Get("code") == "" {
		h.showLogin(w, r, http.StatusBadRequest, "", "The single sign-on has expired: start it again.")
		return
	}
	body, _ := json.Marshal(oidc.TokenRequest{Code: q.Get("code"), CodeVerifier: c.Value})
	res := h.call(r, "", http.MethodPost, oidc.PathToken, "application/json", body)
	var tr oidc.TokenResponse
	if res.code != http.StatusOK || json.Unmarshal(res.body, &tr) != nil || tr.Token == "" {
		h.showLogin(w, r, http.StatusUnauthorized, "", "Single sign-on failed: "+res.message())
		return
	}
	setCookie(w, sessionCookie, tr.Token, tr.Expires)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
