package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"flotilla.dev/internal/auth/ldap"
	"flotilla.dev/internal/auth/ldap/ldaptest"
	"flotilla.dev/internal/server"
)

// TestLoginLDAP: with a directory configured (a real slapd), the login form offers the
// provider, and a directory user logs in to the dashboard through the API's LDAP login.
func TestLoginLDAP(t *testing.T) {
	dir := ldaptest.Start(t)
	dir.AddUser(t, "dora", password)
	r, _ := startServer(t, "", func(c *server.Config) {
		c.LDAP = ldap.Config{URL: dir.URL, StartTLS: true, CAFile: dir.CAFile, UserDNTemplate: "uid={user},ou=people," + ldaptest.Suffix}
	})
	c := r.browser(t)
	_, _, page := get(t, c, r.url+"/login")
	if !strings.Contains(page, `<select id="provider" name="provider">`) || !strings.Contains(page, `<option value="ldap"`) {
		t.Fatalf("no provider choice on the login form:\n%s", page)
	}
	csrf := formValue(page, "csrf")
	// As a local user, dora does not exist.
	code, _, body := post(t, c, r.url+"/login", url.Values{"csrf": {csrf}, "provider": {"local"}, "username": {"dora"}, "password": {password}}, nil)
	if code != http.StatusUnauthorized {
		t.Errorf("dora as a local user: %d", code)
	}
	csrf = formValue(body, "csrf")
	code, _, body = post(t, c, r.url+"/login", url.Values{"csrf": {csrf}, "provider": {"kerberos"}, "username": {"dora"}, "password": {password}}, nil)
	if code != http.StatusBadRequest {
		t.Errorf("an unknown provider: %d", code)
	}
	csrf = formValue(body, "csrf")
	code, loc, body := post(t, c, r.url+"/login", url.Values{"csrf": {csrf}, "provider": {"ldap"}, "username": {"dora"}, "password": {password}, "next": {"/clusters"}}, nil)
	if code != http.StatusSeeOther || loc != "/clusters" {
		t.Fatalf("dora through LDAP: %d %q\n%s", code, loc, body)
	}
	code, _, body = get(t, c, r.url+"/clusters")
	if !strings.Contains(body, `data-testid="user">dora<`) {
		t.Errorf("after the LDAP login: %d\n%s", code, body)
	}
}

// TestLoginWithoutLDAP: without a directory the form has no choice and ldap is refused.
func TestLoginWithoutLDAP(t *testing.T) {
	r, _ := startServer(t, "")
	c := r.browser(t)
	_, _, page := get(t, c, r.url+"/login")
	if strings.Contains(page, `name="provider"`) {
		t.Errorf("a provider choice without a directory")
	}
	code, _, _ := post(t, c, r.url+"/login", url.Values{"csrf": {formValue(page, "csrf")}, "provider": {"ldap"}, "username": {"dora"}, "password": {password}}, nil)
	if code != http.StatusBadRequest {
		t.Errorf("ldap without a directory: %d", code)
	}
}
