package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/tunnel"
)

// Fakes for the decisions (unit logic); the tunnel is the real one, with a real agent end.
type fakeAuth struct{}

func (fakeAuth) Authenticate(_ context.Context, token string) (*auth.Identity, error) {
	switch token {
	case "bob", "carol", "dave":
		return &auth.Identity{User: token, Groups: []string{"ops", "other"}}, nil
	}
	return nil, fmt.Errorf("%w: unknown token", auth.ErrUnauthenticated)
}

type fakeAuthz struct{}

func (fakeAuthz) Decide(s rbac.Subject, r rbac.Request) rbac.Decision {
	return rbac.Decision{Allowed: s.User != "dave" && r.Verb == api.VerbGet && r.Kind == api.KindCluster}
}

func (fakeAuthz) Impersonation(s rbac.Subject, c rbac.Cluster) (string, []string, bool) {
	if s.User != "bob" {
		return "", nil, false
	}
	return rbac.UserPrefix + s.User, []string{rbac.GroupPrefix + "ops"}, true
}

type clusters map[string]*api.Object

func (c clusters) Get(_ context.Context, k store.Key) (*api.Object, error) {
	if o := c[k.Namespace+"/"+k.Name]; o != nil && k.Kind == api.KindCluster {
		return o, nil
	}
	return nil, store.ErrNotFound
}

var lastSeen = time.Date(2026, 11, 30, 22, 0, 0, 0, time.UTC)

func cluster(name string) *api.Object {
	st, _ := json.Marshal(api.ClusterStatus{LastSeen: &lastSeen})
	return &api.Object{Metadata: api.ObjectMeta{Namespace: api.DefaultNamespace, Name: name}, Status: st}
}

type seen struct {
	mu  sync.Mutex
	req *http.Request
}

// setup runs the proxy with cluster "edge", whose agent dials when asked and answers
// every request itself, and cluster "gone", whose agent never comes.
func setup(t *testing.T) (*httptest.Server, *tunnel.Server, *seen) {
	return setupWith(t, nil)
}

// setupWith is setup with the agent forwarding to target, when not nil.
func setupWith(t *testing.T, target http.Handler) (*httptest.Server, *tunnel.Server, *seen) {
	return setupOpt(t, setupOpts{target: target})
}

type setupOpts struct {
	target http.Handler
	// cluster is the agent's cluster (namespace/name); default fleet-default/edge.
	cluster string
	// idle is both ends' idle period (0: the default); bodyTimeout and writeTimeout the
	// proxy's.
	idle, bodyTimeout, writeTimeout time.Duration
	// h2 serves the proxy on TLS with HTTP/2, as the server does.
	h2 bool
	// breaker, if set, is given a func that breaks the connections of the tunnels.
	breaker func(breakTunnels func())
	// replicated: the proxy is one of several server replicas.
	replicated bool
}

func setupOpt(t *testing.T, o setupOpts) (*httptest.Server, *tunnel.Server, *seen) {
	if o.cluster == "" {
		o.cluster = api.DefaultNamespace + "/edge"
	}
	tokens = &fakeTokens{}
	log := slog.New(slog.DiscardHandler)
	reg := tunnel.NewServer(tunnel.Config{Logger: log, Idle: o.idle})
	agentSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg.Serve(w, r, o.cluster)
	}))
	conns := &connsListener{Listener: agentSrv.Listener}
	agentSrv.Listener = conns
	agentSrv.Start()
	t.Cleanup(agentSrv.Close)
	if o.breaker != nil {
		o.breaker(conns.closeAll)
	}
	got := &seen{}
	record := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.mu.Lock()
		got.req = r.Clone(context.Background())
		got.mu.Unlock()
		io.WriteString(w, "from the cluster")
	})
	target := o.target
	if target == nil {
		target = record
	}
	ag := tunnel.NewAgent(tunnel.AgentConfig{Server: agentSrv.URL, HTTPClient: agentSrv.Client(), Credential: func() string { return "cred" },
		Target: target, Logger: log, Idle: o.idle})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { ag.Run(ctx) })
	wg.Go(func() { relayTokens(ctx, reg, o.cluster, ag) })
	ops := cluster("edge")
	ops.Metadata.Namespace = "ops"
	p := New(Config{Auth: fakeAuth{}, Authz: fakeAuthz{}, Tunnels: reg, Logger: log, Wait: 200 * time.Millisecond, Tokens: tokens, CAPEM: []byte("CA PEM"),
		BodyTimeout: o.bodyTimeout, WriteTimeout: o.writeTimeout, Replicated: o.replicated,
		Store: clusters{api.DefaultNamespace + "/edge": cluster("edge"), api.DefaultNamespace + "/gone": cluster("gone"), "ops/edge": ops}})
	mux := http.NewServeMux()
	p.Register(mux)
	ps := httptest.NewUnstartedServer(mux)
	if o.h2 {
		ps.EnableHTTP2 = true
		ps.StartTLS()
	} else {
		ps.Start()
	}
	t.Cleanup(ps.Close)
	return ps, reg, got
}

func call(t *testing.T, ps *httptest.Server, token, path string, h http.Header) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, ps.URL+path, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := ps.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

func TestProxyImpersonatesTheCallerOnly(t *testing.T) {
	ps, reg, got := setup(t)
	h := http.Header{
		"Impersonate-User":      {"system:admin"},
		"Impersonate-Group":     {"system:masters"},
		"Impersonate-Uid":       {"0"},
		"Impersonate-Extra-Foo": {"bar"},
		"Audit-Id":              {"forged"},
		"Cookie":                {"session=secret"},
		"Connection":            {"X-Hop"},
		"X-Hop":                 {"1"},
		"Accept":                {"application/json"},
	}
	code, body, rh := call(t, ps, "bob", "/k8s/clusters/edge/api/v1/namespaces/a/pods?labelSelector=app%3Dweb", h)
	if code != http.StatusOK || body != "from the cluster" {
		t.Fatalf("bob: %d %s", code, body)
	}
	got.mu.Lock()
	r := got.req
	got.mu.Unlock()
	if r.URL.Path != "/api/v1/namespaces/a/pods" || r.URL.Query().Get("labelSelector") != "app=web" {
		t.Errorf("forwarded %s", r.URL)
	}
	want := http.Header{
		"Impersonate-User":                {rbac.UserPrefix + "bob"},
		"Impersonate-Group":               {rbac.GroupPrefix + "ops"},
		"Impersonate-Extra-Flotilla-User": {"bob"},
		"Accept":                          {"application/json"},
	}
	for k, v := range want {
		if fmt.Sprint(r.Header[k]) != fmt.Sprint(v) {
			t.Errorf("header %s: %q, want %q", k, r.Header[k], v)
		}
	}
	for _, k := range []string{"Authorization", "Impersonate-Uid", "Impersonate-Extra-Foo", "Cookie", "X-Hop"} {
		if v, ok := r.Header[k]; ok {
			t.Errorf("header %s reached the cluster: %q", k, v)
		}
	}
	if id := r.Header.Get("Audit-Id"); id == "forged" || id == "" || id != rh.Get("Audit-Id") {
		t.Errorf("Audit-Id: %q to the cluster, %q to the caller", id, rh.Get("Audit-Id"))
	}
	if reg.Open() != 1 {
		t.Errorf("%d tunnels open", reg.Open())
	}
}

func TestProxyRefusesBeforeForwarding(t *testing.T) {
	ps, reg, got := setup(t)
	for _, c := range []struct {
		token, path string
		code        int
		msg         string
	}{
		{"", "/k8s/clusters/edge/api", http.StatusUnauthorized, "Unauthorized"},
		{"nobody", "/k8s/clusters/edge/api", http.StatusUnauthorized, "Unauthorized"},
		{"dave", "/k8s/clusters/edge/api", http.StatusForbidden, "dave may not reach cluster fleet-default/edge"},
		// The same answer for a cluster that does not exist: no probing for names.
		{"dave", "/k8s/clusters/nope/api", http.StatusForbidden, "dave may not reach cluster fleet-default/nope"},
		{"carol", "/k8s/clusters/edge/api", http.StatusForbidden, "carol has no role binding granting anything on cluster"},
		{"bob", "/k8s/clusters/nope/api", http.StatusNotFound, "cluster fleet-default/nope not found"},
		{"bob", "/k8s/clusters/edge/api/v1/%2e%2e/%2e%2e/secrets", http.StatusBadRequest, "must not contain"},
		{"bob", "/k8s/clusters/Not_A_Name/api", http.StatusBadRequest, "cluster name"},
	} {
		code, body, _ := call(t, ps, c.token, c.path, nil)
		if code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("%s %s: %d %s, want %d %q", c.token, c.path, code, body, c.code, c.msg)
		}
	}
	released(t, reg, "refused calls")
	got.mu.Lock()
	defer got.mu.Unlock()
	if got.req != nil || reg.Open() != 0 {
		t.Errorf("a refused call reached the cluster (%v) or opened a tunnel (%d)", got.req, reg.Open())
	}
	if tok, _, release := reg.Wanted(api.DefaultNamespace + "/edge"); tok != "" {
		t.Error("a refused call asked for a tunnel")
	} else {
		release()
	}
}

func TestProxySaysWhenAnAbsentClusterWasLastSeen(t *testing.T) {
	ps, reg, _ := setup(t)
	code, body, h := call(t, ps, "bob", "/k8s/clusters/gone/api", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "did not open its tunnel within 200ms") ||
		!strings.Contains(body, "last seen at 2026-11-30T22:00:00Z") || h.Get("Retry-After") == "" {
		t.Fatalf("%d %s", code, body)
	}
	released(t, reg, "a call to an absent cluster")
}

// With several replicas, a call whose cluster's tunnel did not come says why it may never
// come to this replica.
func TestProxyNamesReplicasWhenATunnelDoesNotCome(t *testing.T) {
	for _, replicated := range []bool{false, true} {
		ps, reg, _ := setupOpt(t, setupOpts{replicated: replicated})
		code, body, _ := call(t, ps, "bob", "/k8s/clusters/gone/api", nil)
		if code != http.StatusServiceUnavailable || strings.Contains(body, "the replica the cluster's agent polls") != replicated {
			t.Errorf("replicated %v: %d %s", replicated, code, body)
		}
		released(t, reg, "a call to an absent cluster")
	}
}

// An upgraded connection (as exec and port-forward make) passes through the proxy, the
// tunnel and the agent's forwarding to its API server, here a WebSocket echo server.
func TestUpgradesPassThrough(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Impersonate-User") != rbac.UserPrefix+"bob" {
			http.Error(w, "not impersonated", http.StatusForbidden)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			c.Write(r.Context(), typ, append([]byte("echo: "), msg...))
		}
	}))
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	ps, _, _ := setupWith(t, tunnel.NewTarget(u, http.DefaultTransport))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, strings.Replace(ps.URL, "http", "ws", 1)+"/k8s/clusters/edge/api/v1/namespaces/a/pods/p/exec",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer bob"}}})
	if err != nil {
		t.Fatalf("upgrade through the proxy: %v (%v)", err, resp)
	}
	defer c.CloseNow()
	for _, m := range []string{"one", "two"} {
		if err := c.Write(ctx, websocket.MessageBinary, []byte(m)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != "echo: "+m {
			t.Fatalf("read %q, %v", got, err)
		}
	}
}

// The agent forwards only calls impersonating a Flotilla subject: its service account never
// acts as itself for a caller.
func TestTargetRefusesCallsNotImpersonating(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "reached") }))
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	h := tunnel.NewTarget(u, http.DefaultTransport)
	for imp, want := range map[string]int{"": http.StatusForbidden, "system:admin": http.StatusForbidden, rbac.UserPrefix + "bob": http.StatusOK} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/api/v1/secrets", nil)
		if imp != "" {
			req.Header.Set("Impersonate-User", imp)
		}
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Impersonate-User %q: %d, want %d", imp, rec.Code, want)
		}
	}
}

type fakeTokens struct {
	mu   sync.Mutex
	made []api.CreateTokenRequest
}

var tokens *fakeTokens

func (f *fakeTokens) CreateAPIToken(_ context.Context, id *auth.Identity, req api.CreateTokenRequest) (*api.CreatedToken, error) {
	if req.TTL != "" {
		if _, err := time.ParseDuration(req.TTL); err != nil {
			return nil, fmt.Errorf("%w: ttl %q", auth.ErrBadTokenRequest, req.TTL)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.made = append(f.made, req)
	return &api.CreatedToken{APIToken: api.APIToken{User: id.User}, Token: "token-of-" + id.User}, nil
}

func TestKubeconfigEndpoint(t *testing.T) {
	ps, _, _ := setupWith(t, nil)
	post := func(token, path string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, ps.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := ps.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := post("bob", api.PathKubeconfig+"edge?ttl=8h")
	host := strings.TrimPrefix(ps.URL, "http://")
	for _, want := range []string{"server: https://" + host + "/k8s/clusters/edge", "token: token-of-bob", "certificate-authority-data: " + "Q0EgUEVN"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("kubeconfig: %d, lacks %q:\n%s", code, want, body)
		}
	}
	for _, c := range []struct {
		token, path string
		code        int
	}{
		{"dave", api.PathKubeconfig + "edge", http.StatusForbidden},
		{"carol", api.PathKubeconfig + "edge", http.StatusForbidden},
		{"bob", api.PathKubeconfig + "nope", http.StatusNotFound},
		{"bob", api.PathKubeconfig + "Not_A_Name", http.StatusBadRequest},
		{"bob", api.PathKubeconfig + "edge?ttl=forever", http.StatusBadRequest},
		{"", api.PathKubeconfig + "edge", http.StatusUnauthorized},
	} {
		if code, body := post(c.token, c.path); code != c.code {
			t.Errorf("%s %s: %d %s, want %d", c.token, c.path, code, body, c.code)
		}
	}
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	if len(tokens.made) != 1 || tokens.made[0].TTL != "8h0m0s" && tokens.made[0].TTL != "8h" {
		t.Errorf("tokens made: %+v", tokens.made)
	}
}

// connsListener keeps the connections it accepts, to break them: httptest's
// CloseClientConnections leaves alone the hijacked ones a tunnel runs on.
type connsListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *connsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *connsListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

// relayTokens stands in for the agent's polls until ctx ends: every tunnel token wanted for
// cluster reaches ag.
func relayTokens(ctx context.Context, reg *tunnel.Server, cluster string, ag *tunnel.Agent) {
	for ctx.Err() == nil {
		tok, wake, release := reg.Wanted(cluster)
		if tok != "" {
			ag.Want(tok)
			wake = nil
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-time.After(10 * time.Millisecond):
		}
		release()
	}
}
