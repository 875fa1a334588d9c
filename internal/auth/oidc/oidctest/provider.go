// Package oidctest runs a real OpenID Provider (zitadel's certified pkg/op) on 127.0.0.1 for
// tests: one confidential client, users with passwords and groups, a plain HTML login form, and
// switches that make it issue bad ID tokens (wrong issuer or audience, expired, signed with a
// key it does not publish) so that a relying party's checks can be seen to refuse them.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// User is a person who can log in at the provider.
type User struct {
	Password string
	// Subject is the stable `sub`; PreferredUsername may be empty to leave the claim out.
	Subject           string
	PreferredUsername string
	Email             string
	Groups            []string
}

// Tamper makes the provider issue ID tokens a relying party must refuse.
type Tamper struct {
	// Issuer, when set, is written as `iss` into ID tokens (discovery still tells the truth).
	Issuer string
	// Audience, when set, replaces `aud` (and `azp`), and Nonce `nonce`, in ID tokens signed
	// again with the published key.
	Audience []string
	Nonce    string
	// Lifetime, when non-zero, is the ID token's validity (negative: expired at issue).
	Lifetime time.Duration
	// OtherKey signs ID tokens with a key that is not published, under the published key's ID.
	OtherKey bool
}

// Provider is a running OpenID Provider.
type Provider struct {
	// Issuer is the provider's URL (http://127.0.0.1:PORT).
	Issuer                 string
	ClientID, ClientSecret string

	srv *httptest.Server
	st  *storage
}

// Start runs a provider with users (by login name) until the test ends. The client's redirect
// URIs are added with AllowRedirect.
func Start(t testing.TB, users map[string]User) *Provider {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &Provider{ClientID: "flotilla", ClientSecret: hex.EncodeToString(random(16))}
	p.st = &storage{
		users:   users,
		key:     key,
		other:   other,
		keyID:   hex.EncodeToString(random(8)),
		client:  &client{id: p.ClientID, secret: p.ClientSecret},
		reqs:    map[string]*authRequest{},
		codes:   map[string]string{},
		issuers: func() string { return p.Issuer },
	}
	p.st.client.st = p.st
	mux := http.NewServeMux()
	p.srv = httptest.NewUnstartedServer(mux)
	p.srv.Start()
	p.Issuer = p.srv.URL
	cryptoKey := sha256.Sum256(random(32))
	provider, err := op.NewProvider(&op.Config{CryptoKey: cryptoKey, CodeMethodS256: true, AuthMethodPost: true},
		p.st, p.st.issuer, op.WithAllowInsecure())
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("GET /login", http.HandlerFunc(p.st.loginForm))
	mux.Handle("POST /login", http.HandlerFunc(p.st.login))
	mux.Handle("/", p.st.readdress(provider))
	t.Cleanup(p.srv.Close)
	return p
}

// AllowRedirect registers a redirect URI for the client.
func (p *Provider) AllowRedirect(uri string) {
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	p.st.client.redirects = append(p.st.client.redirects, uri)
}

// SetTamper changes how the next ID tokens are made; the zero Tamper makes good ones.
func (p *Provider) SetTamper(t Tamper) {
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	p.st.tamper = t
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type storage struct {
	mu      sync.Mutex
	users   map[string]User
	key     *rsa.PrivateKey
	other   *rsa.PrivateKey
	keyID   string
	client  *client
	reqs    map[string]*authRequest
	codes   map[string]string
	tamper  Tamper
	issuers func() string
}

var _ op.Storage = (*storage)(nil)
var _ op.CanSetUserinfoFromRequest = (*storage)(nil)

// issuer is the provider's own URL, except in ID tokens when tampered with: those are made
// while serving the token endpoint.
func (s *storage) issuer(bool) (op.IssuerFromRequest, error) {
	return func(r *http.Request) string {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.tamper.Issuer != "" && r.URL.Path == "/oauth/token" {
			return s.tamper.Issuer
		}
		return s.issuers()
	}, nil
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html><body><form method="post" action="/login">
<input type="hidden" name="id" value="{{.ID}}">
<input name="username"> <input name="password" type="password">
{{if .Error}}<p class="error">{{.Error}}</p>{{end}}
<button type="submit">Log in</button>
</form></body></html>`))

func (s *storage) loginForm(w http.ResponseWriter, r *http.Request) {
	loginPage.Execute(w, map[string]string{"ID": r.URL.Query().Get("authRequestID")})
}

func (s *storage) login(w http.ResponseWriter, r *http.Request) {
	id, name, pw := r.PostFormValue("id"), r.PostFormValue("username"), r.PostFormValue("password")
	s.mu.Lock()
	u, ok := s.users[name]
	req := s.reqs[id]
	if ok && req != nil && u.Password == pw {
		req.subject, req.done, req.authTime = u.Subject, true, time.Now()
	}
	s.mu.Unlock()
	if req == nil {
		http.Error(w, "unknown login request", http.StatusBadRequest)
		return
	}
	if !ok || u.Password != pw {
		w.WriteHeader(http.StatusUnauthorized)
		loginPage.Execute(w, map[string]string{"ID": id, "Error": "invalid user name or password"})
		return
	}
	http.Redirect(w, r, "/authorize/callback?id="+id, http.StatusFound)
}

func (s *storage) user(subject string) (User, bool) {
	for _, u := range s.users {
		if u.Subject == subject {
			return u, true
		}
	}
	return User{}, false
}

type authRequest struct {
	id, clientID, redirect, state, nonce, subject string
	scopes                                        []string
	challenge                                     *oidc.CodeChallenge
	done                                          bool
	authTime                                      time.Time
}

func (a *authRequest) GetID() string                         { return a.id }
func (a *authRequest) GetACR() string                        { return "" }
func (a *authRequest) GetAMR() []string                      { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string                 { return []string{a.clientID} }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.clientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.challenge }
func (a *authRequest) GetNonce() string                      { return a.nonce }
func (a *authRequest) GetRedirectURI() string                { return a.redirect }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return oidc.ResponseTypeCode }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return oidc.ResponseModeQuery }
func (a *authRequest) GetScopes() []string                   { return a.scopes }
func (a *authRequest) GetState() string                      { return a.state }
func (a *authRequest) GetSubject() string                    { return a.subject }
func (a *authRequest) Done() bool                            { return a.done }

func (s *storage) CreateAuthRequest(_ context.Context, r *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req := &authRequest{id: hex.EncodeToString(random(16)), clientID: r.ClientID, redirect: r.RedirectURI,
		state: r.State, nonce: r.Nonce, scopes: r.Scopes}
	if r.CodeChallenge != "" {
		req.challenge = &oidc.CodeChallenge{Challenge: r.CodeChallenge, Method: r.CodeChallengeMethod}
	}
	s.reqs[req.id] = req
	return req, nil
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.reqs[id]; ok {
		return r, nil
	}
	return nil, errors.New("auth request not found")
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.reqs[s.codes[code]]; r != nil {
		return r, nil
	}
	return nil, errors.New("code invalid or expired")
}

// readdress gives the ID token of a token response another audience or nonce, signed again
// with the published key: the provider itself always names the requesting client and the
// login's nonce.
func (s *storage) readdress(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		aud, nonce := s.tamper.Audience, s.tamper.Nonce
		s.mu.Unlock()
		if aud == nil && nonce == "" || r.URL.Path != "/oauth/token" {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK {
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		raw, _ := body["id_token"].(string)
		jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var claims map[string]any
		json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &claims)
		if aud != nil {
			claims["aud"], claims["azp"] = aud, aud[0]
		}
		if nonce != "" {
			claims["nonce"] = nonce
		}
		signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: s.key},
			(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.keyID))
		payload, _ := json.Marshal(claims)
		signed, err := signer.Sign(payload)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		body["id_token"], _ = signed.CompactSerialize()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(body)
	})
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.reqs, id)
	for c, rid := range s.codes {
		if rid == id {
			delete(s.codes, c)
		}
	}
	return nil
}

func (s *storage) CreateAccessToken(context.Context, op.TokenRequest) (string, time.Time, error) {
	return hex.EncodeToString(random(16)), time.Now().Add(5 * time.Minute), nil
}

func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errors.New("refresh tokens are not supported")
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(context.Context, string, string, string) *oidc.Error { return nil }

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct{ signingKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tamper.OtherKey {
		return signingKey{s.keyID, s.other}, nil
	}
	return signingKey{s.keyID, s.key}, nil
}

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{signingKey{s.keyID, s.key}}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	if id != s.client.id {
		return nil, errors.New("client not found")
	}
	return s.client, nil
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	if id != s.client.id || secret != s.client.secret {
		return errors.New("invalid client credentials")
	}
	return nil
}

func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, r op.IDTokenRequest, _ []string) error {
	return s.setUserinfo(info, r.GetSubject())
}

func (s *storage) setUserinfo(info *oidc.UserInfo, subject string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.user(subject)
	if !ok {
		return fmt.Errorf("no user %q", subject)
	}
	info.Subject = u.Subject
	info.PreferredUsername = u.PreferredUsername
	if u.Email != "" {
		info.Email = u.Email
		info.EmailVerified = true
	}
	if u.Groups != nil {
		info.AppendClaims("groups", u.Groups)
	}
	return nil
}

func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, _, subject, _ string) error {
	return s.setUserinfo(info, subject)
}

func (s *storage) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return nil
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("not supported")
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errors.New("not supported")
}

func (s *storage) Health(context.Context) error { return nil }

// client is the provider's one confidential web client.
type client struct {
	st        *storage
	id        string
	secret    string
	redirects []string
}

func (c *client) GetID() string { return c.id }
func (c *client) RedirectURIs() []string {
	c.st.mu.Lock()
	defer c.st.mu.Unlock()
	return slices.Clone(c.redirects)
}
func (c *client) PostLogoutRedirectURIs() []string    { return nil }
func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *client) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodBasic }
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType         { return []oidc.GrantType{oidc.GrantTypeCode} }
func (c *client) LoginURL(id string) string            { return "/login?authRequestID=" + id }
func (c *client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeBearer }
func (c *client) DevMode() bool                        { return false }
func (c *client) IsScopeAllowed(string) bool           { return true }
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c *client) ClockSkew() time.Duration             { return 0 }
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

func (c *client) IDTokenLifetime() time.Duration {
	c.st.mu.Lock()
	defer c.st.mu.Unlock()
	if c.st.tamper.Lifetime != 0 {
		return c.st.tamper.Lifetime
	}
	return 5 * time.Minute
}
