package web_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/server"
	"flotilla.dev/internal/sim"
)

const (
	adminToken = "web-test-admin-token-0123456789"
	// password passes the server's password policy.
	password = "a long test passphrase 42"
)

// rig is a real server on 127.0.0.1 with a simulated fleet registered to it.
type rig struct {
	url   string
	dir   string
	admin *client.Client
	sim   *sim.Sim
}

// startServer starts a server on dir (made with t.TempDir when empty), its configuration
// changed by mutate.
func startServer(t testing.TB, dir string, mutate ...func(*server.Config)) (*rig, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if dir == "" {
		dir = t.TempDir()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := server.Config{Listen: addr, DataDir: dir, BootstrapToken: adminToken,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Fleet:  fleet.Config{PollInterval: 2 * time.Second, StatusInterval: 100 * time.Millisecond}}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := server.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r := &rig{url: "https://" + addr, dir: dir}
	r.admin, err = client.New(client.Config{Server: r.url, Token: adminToken, CAChecksum: s.CAChecksum()})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := r.admin.Do(ctx, "GET", "/readyz", nil, nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("server not ready: %v", err)
		}
	}
	return r, s.CAChecksum()
}

// startFleet starts a server and registers n simulated clusters (labels env=prod or dev,
// region=eu or us); a tenth of the production ones fail their deployment of bundle "web".
func startFleet(t testing.TB, n int) *rig {
	t.Helper()
	r, checksum := startServer(t, "")
	var err error
	ls, err := sim.ParseLabelSpec("env=prod:60,dev:40;region=eu,us")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = r.url, checksum, adminToken
	cfg.Clusters, cfg.Labels = n, ls
	cfg.Connections, cfg.Workers = 2, 32
	cfg.FailFraction = 0.1
	cfg.ReportDelay, cfg.ReadyDelay = 20*time.Millisecond, 0
	cfg.MinBackoff, cfg.MaxBackoff = 100*time.Millisecond, time.Second
	cfg.Timeout = 5 * time.Minute
	if r.sim, err = sim.New(cfg); err != nil {
		t.Fatal(err)
	}
	simCtx, stopSim := context.WithCancel(context.Background())
	t.Cleanup(func() { stopSim(); r.sim.Wait() })
	tok, err := r.sim.CreateRegistrationToken(simCtx)
	if err != nil {
		t.Fatal(err)
	}
	r.sim.SetRegistrationToken(tok)
	r.sim.Start(simCtx)
	if _, err := r.sim.WaitRegistered(simCtx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.sim.WaitPolled(simCtx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.sim.Change(simCtx, "web", "env=prod"); err != nil {
		t.Fatal(err)
	}
	// Every cluster with a state in the stored status (the model's status pass ran after
	// it registered), then past the dashboard's one-second cache of the overview, which may
	// hold counts taken while the fleet registered.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		l, err := r.admin.ListAll(simCtx, api.KindCluster, "", "")
		stated := 0
		if err == nil {
			for _, raw := range l.Items {
				var o struct {
					Status struct {
						State string `json:"state"`
					} `json:"status"`
				}
				if json.Unmarshal(raw, &o) == nil && o.Status.State != "" {
					stated++
				}
			}
		}
		if stated == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clusters have a state (%v)", stated, n, err)
		}
	}
	time.Sleep(1100 * time.Millisecond)
	return r
}

// addUser makes a local user with password, bound globally to role (none when empty).
func (r *rig) addUser(t testing.TB, name, role string) {
	t.Helper()
	ctx := context.Background()
	spec, _ := json.Marshal(api.UserSpec{Provider: api.ProviderLocal})
	if _, err := r.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser},
		Metadata: api.ObjectMeta{Name: name}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := r.admin.SetPassword(ctx, name, api.SetPasswordRequest{Password: password}); err != nil {
		t.Fatal(err)
	}
	if role == "" {
		return
	}
	spec, _ = json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: name}, RoleRef: role,
		Scope: api.BindingScope{Global: true}})
	if _, err := r.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: name + "-" + role}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
}

// caPool trusts the server's CA.
func (r *rig) caPool(t testing.TB) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(r.dir, "tls", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate in ca.crt")
	}
	return p
}

// browser is an HTTP client with a cookie jar that does not follow redirects.
func (r *rig) browser(t testing.TB) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: time.Minute,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.caPool(t)}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// get fetches path and answers the status, the Location and the body.
func get(t testing.TB, c *http.Client, u string) (int, string, string) {
	t.Helper()
	res, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header.Get("Location"), string(b)
}

func post(t testing.TB, c *http.Client, u string, form url.Values, header http.Header) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header.Get("Location"), string(b)
}

// formValue finds the value of the first input named name in a page.
func formValue(page, name string) string {
	i := strings.Index(page, `name="`+name+`" value="`)
	if i < 0 {
		return ""
	}
	rest := page[i+len(`name="`+name+`" value="`):]
	return rest[:strings.Index(rest, `"`)]
}

// login logs c in as user through the login form.
func (r *rig) login(t testing.TB, c *http.Client, user string) {
	t.Helper()
	_, _, page := get(t, c, r.url+"/login")
	code, loc, body := post(t, c, r.url+"/login", url.Values{"csrf": {formValue(page, "csrf")}, "username": {user},
		"password": {password}, "next": {"/"}}, nil)
	if code != http.StatusSeeOther || loc != "/" {
		t.Fatalf("login as %s: %d %q\n%s", user, code, loc, body)
	}
}
