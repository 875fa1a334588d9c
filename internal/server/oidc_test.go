package server_test

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"testing"

	"golang.org/x/oauth2"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/oidc"
	"flotilla.dev/internal/auth/oidc/oidctest"
	"flotilla.dev/internal/server"
)

// The server mounts the OIDC login when configured: a browser login through a real provider
// gives a session the API knows (a user without roles is forbidden, not unauthenticated).
func TestOIDCLogin(t *testing.T) {
	provider := oidctest.Start(t, map[string]oidctest.User{
		"alice": {Password: "alice-password", Subject: "u-1", PreferredUsername: "alice", Groups: []string{"platform"}},
	})
	ts, _ := startWith(t, t.TempDir(), func(c *server.Config) {
		c.OIDC = oidc.DefaultConfig()
		c.OIDC.Issuer, c.OIDC.ClientID, c.OIDC.ClientSecret = provider.Issuer, provider.ClientID, provider.ClientSecret
		c.OIDC.RedirectURL = "https://" + c.Listen + oidc.PathCallback
		provider.AllowRedirect(c.OIDC.RedirectURL)
	})
	tc, err := client.TLSConfig(nil, ts.checksum, false)
	if err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Jar: jar}
	verifier := oauth2.GenerateVerifier()
	start := ts.url + oidc.PathLogin + "?" + url.Values{
		"redirect_uri":   {"http://127.0.0.1:9/callback"},
		"code_challenge": {oauth2.S256ChallengeFromVerifier(verifier)},
	}.Encode()
	back, err := oidctest.Browse(browser, start, "alice", "alice-password", func(u *url.URL) bool { return u.Host == "127.0.0.1:9" })
	if err != nil || back.Query().Get("code") == "" {
		t.Fatalf("browser ended at %v: %v", back, err)
	}
	anon, err := client.New(client.Config{Server: ts.url, CAChecksum: ts.checksum})
	if err != nil {
		t.Fatal(err)
	}
	var tok oidc.TokenResponse
	if _, err := anon.Do(context.Background(), http.MethodPost, oidc.PathToken, oidc.TokenRequest{Code: back.Query().Get("code"), CodeVerifier: verifier}, &tok); err != nil {
		t.Fatalf("redeeming the code: %v", err)
	}
	if tok.User != "oidc:alice" || len(tok.Groups) != 1 || tok.Groups[0] != "oidc:platform" {
		t.Errorf("session for %q in %q, want oidc:alice in oidc:platform", tok.User, tok.Groups)
	}
	_, err = anon.WithToken(tok.Token).List(context.Background(), api.KindCluster, "", client.ListOptions{Limit: 1})
	if client.Code(err) != http.StatusForbidden {
		t.Errorf("listing clusters with the session: %v, want 403", err)
	}
}
