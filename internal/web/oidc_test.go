package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/oidc"
	"flotilla.dev/internal/auth/oidc/oidctest"
	"flotilla.dev/internal/server"
)

// With OIDC configured, the login page offers single sign-on; its button goes through the
// server's OIDC login at a real provider and ends with a dashboard session.
func TestSingleSignOn(t *testing.T) {
	provider := oidctest.Start(t, map[string]oidctest.User{
		"alice": {Password: "alice-password", Subject: "u-1", PreferredUsername: "alice"},
	})
	r, _ := startServer(t, "", func(c *server.Config) {
		c.OIDC = oidc.DefaultConfig()
		c.OIDC.Issuer, c.OIDC.ClientID, c.OIDC.ClientSecret = provider.Issuer, provider.ClientID, provider.ClientSecret
		c.OIDC.RedirectURL = "https://" + c.Listen + oidc.PathCallback
		provider.AllowRedirect(c.OIDC.RedirectURL)
	})
	spec, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "oidc:alice"}, RoleRef: "read-only",
		Scope: api.BindingScope{Global: true}})
	if _, err := r.admin.Create(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: "alice-read-only"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	c := r.browser(t)
	if _, _, page := get(t, c, r.url+"/login"); !strings.Contains(page, `href="/login/oidc"`) {
		t.Fatalf("the login page offers no single sign-on\n%s", page)
	}
	home, _ := url.Parse(r.url + "/")
	back, err := oidctest.Browse(c, r.url+"/login/oidc", "alice", "alice-password", func(u *url.URL) bool { return u.Host == home.Host && u.Path == "/" })
	if err != nil || back.Path != "/" {
		t.Fatalf("single sign-on ended at %v: %v", back, err)
	}
	code, _, body := get(t, c, r.url+"/")
	if code != http.StatusOK || !strings.Contains(body, `data-testid="user">oidc:alice<`) {
		t.Errorf("after single sign-on the overview answers %d\n%s", code, body)
	}
	// A code that comes without the browser's verifier cookie is refused.
	code, _, _ = get(t, r.browser(t), r.url+"/login/oidc/done?code=made-up")
	if code != http.StatusBadRequest {
		t.Errorf("a code without the verifier cookie: %d, want 400", code)
	}
}
