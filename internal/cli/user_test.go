package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/auth/users"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// identityServer serves the API with logins, passwords and tokens over TLS and a SQLite store.
type identityServer struct {
	t      *testing.T
	url    string
	caFile string
	st     store.Store
	a      *auth.Authenticator
	dir    string
}

func newIdentityServer(t *testing.T) *identityServer {
	t.Helper()
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = quiet
	st, err := sqlite.Open(ctx, t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := auth.NewAuthenticator(st)
	a.ConfigureLogin(auth.LoginConfig{Logger: quiet, MaxTokenTTL: 48 * time.Hour,
		Hasher: users.NewHasher(users.Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)})
	if _, err := a.Bootstrap(ctx, testToken); err != nil {
		t.Fatal(err)
	}
	srv := apiserver.New(st, a, quiet)
	if err := srv.EnableAccess(ctx, apiserver.Access{Authorizer: rbac.New()}, a.UserHooks()); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	a.RegisterHandlers(mux)
	ts := httptest.NewTLSServer(mux)
	t.Cleanup(ts.Close)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &identityServer{t: t, url: ts.URL, caFile: caFile, st: st, a: a, dir: dir}
}

// run runs flotilla with args; token "" means the stored login's.
func (s *identityServer) run(token, config, stdin string, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	root := NewRoot(strings.NewReader(stdin), &out, &errOut)
	pre := []string{"--server", s.url, "--ca-file", s.caFile, "--config", config}
	if token != "" {
		pre = append(pre, "--token", token)
	}
	root.SetArgs(append(pre, args...))
	err := root.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

func (s *identityServer) must(token, config, stdin string, args ...string) string {
	s.t.Helper()
	out, err := s.run(token, config, stdin, args...)
	if err != nil {
		s.t.Fatalf("flotilla %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *identityServer) fails(token, config, stdin, want string, args ...string) {
	s.t.Helper()
	out, err := s.run(token, config, stdin, args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		s.t.Errorf("flotilla %s: %v (output %q), want an error containing %q", strings.Join(args, " "), err, out, want)
	}
}

// createUser makes a local user with the CLI.
func (s *identityServer) createUser(name, password string) {
	s.t.Helper()
	admin := filepath.Join(s.dir, "admin.json")
	s.fails(testToken, admin, "short\n", "at least 12 characters", "user", "create", name, "--password-stdin")
	s.must(testToken, admin, password+"\n", "user", "create", name, "--display-name", "Test "+name, "--password-stdin")
}

// disableUser disables a user with the CLI.
func (s *identityServer) disableUser(name string) {
	s.t.Helper()
	s.must(testToken, filepath.Join(s.dir, "admin.json"), "", "user", "disable", name)
}

const alicePassword = "correct horse battery staple"

func TestLoginTokensAndUsers(t *testing.T) {
	s := newIdentityServer(t)
	s.createUser("alice", alicePassword)
	s.createUser("bob", alicePassword)
	aliceCfg, bobCfg := filepath.Join(s.dir, "alice.json"), filepath.Join(s.dir, "bob.json")

	s.fails("", aliceCfg, "wrong password here\n", "invalid user name or password", "login", "--username", "alice", "--password-stdin")
	s.fails("", aliceCfg, alicePassword+"\n", "invalid user name or password", "login", "--username", "nobody", "--password-stdin")
	s.fails("", aliceCfg, "", "--password-stdin", "login", "--username", "alice") // no terminal to prompt on
	out := s.must("", aliceCfg, alicePassword+"\n", "login", "--username", "alice", "--password-stdin")
	if !strings.Contains(out, "as alice") || !strings.Contains(out, "The session lasts until") {
		t.Errorf("login said %q", out)
	}
	var cfg clientConfig
	data, _ := os.ReadFile(aliceCfg)
	if err := json.Unmarshal(data, &cfg); err != nil || cfg.User != "alice" || cfg.Expires == nil || !strings.HasPrefix(cfg.Token, "fls_") {
		t.Fatalf("stored login: %+v, %v", cfg, err)
	}
	s.must("", bobCfg, alicePassword+"\n", "login", "--username", "bob", "--password-stdin")

	// API tokens: capped TTL, listed with their description, only one's own.
	s.fails("", aliceCfg, "", "exceeds the server's maximum of 48h0m0s", "token", "create", "--api", "--ttl", "72h")
	s.fails("", aliceCfg, "", "only admins", "token", "create", "--api", "--admin")
	s.fails("", aliceCfg, "", "add --api", "token", "create", "--description", "x")
	tok := strings.Fields(s.must("", aliceCfg, "", "token", "create", "--api", "--description", "deploy pipeline", "--ttl", "24h"))[0]
	if !strings.HasPrefix(tok, "flt_") {
		t.Fatalf("token create --api printed %q", tok)
	}
	list := s.must("", aliceCfg, "", "token", "list")
	if !strings.Contains(list, "deploy pipeline") || !strings.Contains(list, "session") || strings.Contains(list, "bob") || strings.Contains(list, "admin ") {
		t.Errorf("alice's token list:\n%s", list)
	}
	if out := s.must(tok, aliceCfg, "", "token", "list"); !strings.Contains(out, "deploy pipeline") {
		t.Errorf("the API token does not work: %s", out)
	}
	aliceID := ""
	for _, l := range strings.Split(list, "\n") {
		if strings.Contains(l, "deploy pipeline") {
			aliceID = strings.Fields(l)[0]
		}
	}
	bobList := s.must("", bobCfg, "", "token", "list")
	if strings.Contains(bobList, "alice") {
		t.Errorf("bob sees alice's tokens:\n%s", bobList)
	}
	s.fails("", bobCfg, "", "no such API token", "token", "revoke", aliceID)
	if all := s.must(testToken, aliceCfg, "", "token", "list"); !strings.Contains(all, "alice") || !strings.Contains(all, "bob") {
		t.Errorf("the admin's token list:\n%s", all)
	}
	s.must("", aliceCfg, "", "token", "revoke", aliceID)
	s.fails(tok, aliceCfg, "", "invalid token", "token", "list")

	// Alice changes her own password, giving the current one.
	const newPW = "a much longer passphrase 42"
	s.fails("", aliceCfg, "wrong password here\n"+newPW+"\n", "current password is wrong", "user", "passwd", "--password-stdin")
	s.fails("", aliceCfg, alicePassword+"\npassword1234\n", "too common", "user", "passwd", "--password-stdin")
	s.must("", aliceCfg, alicePassword+"\n"+newPW+"\n", "user", "passwd", "--password-stdin")
	s.fails("", aliceCfg, newPW+"\n", "only their own", "user", "passwd", "bob", "--password-stdin")
	s.must("", aliceCfg, newPW+"\n", "login", "--username", "alice", "--password-stdin")

	// Disabled: bob's session stops at once and he cannot log in.
	s.must("", bobCfg, "", "token", "list")
	s.disableUser("bob")
	s.fails("", bobCfg, "", "was refused: log in again with `flotilla login --username bob`", "token", "list")
	s.fails("", bobCfg, alicePassword+"\n", "invalid user name or password", "login", "--username", "bob", "--password-stdin")
	s.must("", aliceCfg, "", "token", "list")

	// An expired session says to log in again.
	cfg.Expires = new(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	data, _ = json.Marshal(cfg)
	os.WriteFile(aliceCfg, data, 0o600)
	s.fails("", aliceCfg, "", "your session on "+s.url+" expired at 2026-01-01T00:00:00Z: log in again with `flotilla login --username alice`", "token", "list")

	// A token login works as before.
	s.must(testToken, filepath.Join(s.dir, "token.json"), "", "login")
}
