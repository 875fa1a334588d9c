package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/oidc"
	"flotilla.dev/internal/auth/oidc/oidctest"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// TestLoginOIDC runs `flotilla login --oidc` against the real API and login endpoints over
// TLS, with a real OpenID Provider, a scripted browser following its login form, and the
// CLI's own loopback listener.
func TestLoginOIDC(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = quiet
	st, err := sqlite.Open(context.Background(), t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	authn := auth.NewAuthenticator(st)
	provider := oidctest.Start(t, map[string]oidctest.User{
		"alice": {Password: "alice-password", Subject: "u-1", PreferredUsername: "alice", Groups: []string{"platform"}},
		"bob":   {Password: "bob-password", Subject: "u-2", PreferredUsername: "bob", Groups: []string{"sales"}},
	})
	mux := http.NewServeMux()
	apiserver.New(st, authn, quiet).Register(mux)
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	oc := oidc.DefaultConfig()
	oc.Issuer, oc.ClientID, oc.ClientSecret = provider.Issuer, provider.ClientID, provider.ClientSecret
	oc.RedirectURL, oc.Logger = srv.URL+oidc.PathCallback, quiet
	oc.AllowedGroups = []string{"platform"}
	provider.AllowRedirect(oc.RedirectURL)
	h, err := oidc.New(oc, authn)
	if err != nil {
		t.Fatal(err)
	}
	h.Register(mux)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)

	// browse makes the next login's browser log in as user; its outcome comes on the channel.
	browse := func(user, password string) <-chan error {
		saved := openBrowser
		t.Cleanup(func() { openBrowser = saved })
		browsed := make(chan error, 1)
		openBrowser = func(u string) error {
			c := srv.Client()
			c.Jar, _ = cookiejar.New(nil)
			go func() {
				_, err := oidctest.Browse(c, u, user, password, nil)
				browsed <- err
			}()
			return nil
		}
		return browsed
	}
	run := func(config string, args ...string) (string, error) {
		var out, errOut bytes.Buffer
		root := NewRoot(strings.NewReader(""), &out, &errOut)
		root.SetArgs(append([]string{"--config", config}, args...))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := root.ExecuteContext(ctx)
		return out.String() + errOut.String(), err
	}

	config := filepath.Join(t.TempDir(), "config.json")
	browsed := browse("alice", "alice-password")
	out, err := run(config, "login", "--server", srv.URL, "--ca-file", caFile, "--oidc")
	if err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	if err := <-browsed; err != nil {
		t.Errorf("browser: %v", err)
	}
	if !strings.Contains(out, "as oidc:alice until") {
		t.Errorf("login said: %s", out)
	}
	var saved struct {
		Server, Token, CA string
		Expires           time.Time
	}
	raw, _ := os.ReadFile(config)
	if err := json.Unmarshal(raw, &saved); err != nil || saved.Server != srv.URL || saved.CA == "" || saved.Expires.IsZero() {
		t.Fatalf("saved config %s: %v", raw, err)
	}
	id, err := authn.Authenticate(context.Background(), saved.Token)
	if err != nil || id.User != "oidc:alice" || len(id.Groups) != 1 || id.Groups[0] != "oidc:platform" {
		t.Fatalf("the session: %+v, %v", id, err)
	}
	// The session is known to the API: a user with no role is forbidden, not unauthenticated.
	if out, err := run(config, "get", "clusters"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("get clusters with the session: %v\n%s", err, out)
	}

	// A refused login says why and stores nothing.
	config2 := filepath.Join(t.TempDir(), "config.json")
	browsed = browse("bob", "bob-password")
	out, err = run(config2, "login", "--server", srv.URL, "--ca-file", caFile, "--oidc")
	if err == nil || !strings.Contains(err.Error(), "oidc:bob is in none of the groups allowed to log in") {
		t.Errorf("bob's login: %v\n%s", err, out)
	}
	if err := <-browsed; err != nil {
		t.Errorf("browser: %v", err)
	}
	if _, err := os.Stat(config2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused login wrote its config: %v", err)
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("a\x1b[2Jb\u009bc\nd"); got != "a [2Jb c d" {
		t.Errorf("got %q", got)
	}
}
