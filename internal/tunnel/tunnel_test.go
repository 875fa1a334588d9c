package tunnel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"flotilla.dev/api"
)

// env is a real HTTP server holding the registry, with bearer credentials naming clusters.
type env struct {
	reg *Server
	srv *httptest.Server
}

func newEnv(t testing.TB, cfg Config) *env {
	e := &env{reg: NewServer(cfg)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathTunnel, func(w http.ResponseWriter, r *http.Request) {
		cluster, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer cred-")
		if !ok {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		e.reg.Serve(w, r, "ns/"+cluster)
	})
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) agent(t *testing.T, cluster string, idle time.Duration, target http.Handler) *Agent {
	a := NewAgent(AgentConfig{Server: e.srv.URL, HTTPClient: e.srv.Client(), Credential: func() string { return "cred-" + cluster },
		Target: target, Idle: idle, MinBackoff: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// client sends HTTP requests through the registry's tunnels: the host names the cluster.
func (e *env) client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			return e.reg.Dial(ctx, "ns/"+host)
		}}}
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if f() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// tokenFor waits for the held poll of cluster to be woken and returns the token it carries.
func (e *env) tokenFor(t *testing.T, cluster string) string {
	t.Helper()
	tok, wake, release := e.reg.Wanted(cluster)
	defer release()
	if tok == "" {
		select {
		case <-wake:
		case <-time.After(20 * time.Second):
			t.Fatal("a wanted tunnel did not wake the held poll")
		}
		tok, _, _ = e.reg.Wanted(cluster)
	}
	if tok == "" {
		t.Fatal("no token after the wake-up")
	}
	return tok
}

func TestOnDemandTunnelServesAndClosesWhenIdle(t *testing.T) {
	e := newEnv(t, Config{Idle: time.Hour})
	release := make(chan struct{})
	target := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		fmt.Fprintf(w, "cluster a: %s", r.URL.Path)
	})
	a := e.agent(t, "a", 50*time.Millisecond, target)
	baseline := runtime.NumGoroutine()

	if tok, _, rel := e.reg.Wanted("ns/a"); tok != "" {
		t.Fatalf("a tunnel is wanted before anyone asked: %q", tok)
	} else {
		rel()
	}
	awaited := make(chan error, 1)
	go func() { awaited <- e.reg.Await(context.Background(), "ns/a", time.Minute) }()
	a.Want(e.tokenFor(t, "ns/a"))
	if err := <-awaited; err != nil {
		t.Fatal(err)
	}
	if n := e.reg.Open(); n != 1 {
		t.Fatalf("%d tunnels open, want 1", n)
	}
	if n := runtime.NumGoroutine(); n <= baseline {
		t.Fatalf("%d goroutines with a tunnel open, %d before", n, baseline)
	}
	cl := e.client()
	resp, err := cl.Get("http://a/api/v1/pods")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "cluster a: /api/v1/pods" {
		t.Fatalf("answer %q", body)
	}

	// A request in flight keeps the tunnel open past the idle period.
	held := make(chan error, 1)
	go func() {
		resp, err := cl.Get("http://a/hold")
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	eventually(t, "the held request reached the agent", func() bool { return e.reg.activeStreams("ns/a") == 1 })
	time.Sleep(200 * time.Millisecond) // four idle periods of the agent
	if !e.reg.IsOpen("ns/a") {
		t.Fatal("the tunnel closed under a request in flight")
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	eventually(t, "the idle tunnel closed", func() bool { return e.reg.Open() == 0 })
	// Nothing of the tunnel is left running on either end.
	eventually(t, "the tunnel's goroutines ended", func() bool { return runtime.NumGoroutine() <= baseline })
	if _, err := e.reg.Dial(context.Background(), "ns/a"); err == nil {
		t.Fatal("dialled a closed tunnel")
	}
}

func dial(t *testing.T, e *env, cred, token string) int {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + cred}, api.HeaderTunnelToken: {token}}
	c, resp, err := websocket.Dial(context.Background(), strings.Replace(e.srv.URL, "http", "ws", 1)+api.PathTunnel, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		t.Cleanup(func() { c.CloseNow() })
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

func TestTunnelTokensAreOneTimeAndBoundToTheirCluster(t *testing.T) {
	e := newEnv(t, Config{})
	go e.reg.Await(context.Background(), "ns/a", time.Minute)
	tok := e.tokenFor(t, "ns/a")
	if code := dial(t, e, "cred-b", tok); code != http.StatusForbidden {
		t.Fatalf("cluster b opened a tunnel with cluster a's token: %d", code)
	}
	// One character changed (a token that begins with "0" must not be "changed" into itself).
	wrong := "0" + tok[1:]
	if tok[0] == '0' {
		wrong = "1" + tok[1:]
	}
	if code := dial(t, e, "cred-a", wrong); code != http.StatusForbidden {
		t.Fatalf("a wrong token: %d", code)
	}
	if code := dial(t, e, "cred-a", tok); code != http.StatusSwitchingProtocols {
		t.Fatalf("the right token: %d", code)
	}
	eventually(t, "the tunnel registered", func() bool { return e.reg.IsOpen("ns/a") })
	if code := dial(t, e, "cred-a", tok); code != http.StatusForbidden {
		t.Fatalf("a reused token: %d", code)
	}
	if code := dial(t, e, "cred-b", ""); code != http.StatusForbidden {
		t.Fatalf("no token: %d", code)
	}
}

func TestMaxTunnelsAndAwaitTimeout(t *testing.T) {
	e := newEnv(t, Config{Max: 1})
	go e.reg.Await(context.Background(), "ns/a", time.Minute)
	go e.reg.Await(context.Background(), "ns/b", time.Minute)
	ta, tb := e.tokenFor(t, "ns/a"), e.tokenFor(t, "ns/b")
	if code := dial(t, e, "cred-a", ta); code != http.StatusSwitchingProtocols {
		t.Fatalf("first tunnel: %d", code)
	}
	eventually(t, "the tunnel registered", func() bool { return e.reg.IsOpen("ns/a") })
	if code := dial(t, e, "cred-b", tb); code != http.StatusServiceUnavailable {
		t.Fatalf("a tunnel beyond --max-tunnels: %d", code)
	}
	// Nobody dials for c: Await gives up.
	if err := e.reg.Await(context.Background(), "ns/c", 20*time.Millisecond); err != ErrNoTunnel {
		t.Fatalf("Await without an agent: %v", err)
	}
}

// A cluster that keeps its tunnel: Keep asks for it without a caller, and neither end closes
// it when idle until the cluster no longer keeps it.
func TestKeptTunnelStaysOpenWhenIdle(t *testing.T) {
	e := newEnv(t, Config{Idle: 40 * time.Millisecond})
	a := e.agent(t, "a", 40*time.Millisecond, http.NotFoundHandler())
	a.SetAlways(true)
	e.reg.Keep("ns/a")
	a.Want(e.tokenFor(t, "ns/a"))
	eventually(t, "the kept tunnel opened", func() bool { return e.reg.IsOpen("ns/a") })
	e.reg.Keep("ns/a")
	time.Sleep(400 * time.Millisecond) // ten idle periods of either end
	if !e.reg.IsOpen("ns/a") {
		t.Fatal("a kept tunnel closed when idle")
	}
	a.SetAlways(false)
	eventually(t, "the tunnel no longer kept closed", func() bool { return e.reg.Open() == 0 })
}

// activeStreams is the number of streams open on cluster's tunnel; -1 without one.
func (s *Server) activeStreams(cluster string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.open[cluster]; t != nil {
		return t.act.active.Load()
	}
	return -1
}

// An expired token is refused like a wrong one, and refused dials leave nothing open.
func TestExpiredTunnelTokenIsRefused(t *testing.T) {
	e := newEnv(t, Config{TokenTTL: 50 * time.Millisecond})
	go e.reg.Await(context.Background(), "ns/a", 50*time.Millisecond)
	tok := e.tokenFor(t, "ns/a")
	time.Sleep(100 * time.Millisecond) // two token lifetimes
	if code := dial(t, e, "cred-a", tok); code != http.StatusForbidden {
		t.Fatalf("an expired token: %d", code)
	}
	if code := dial(t, e, "cred-b", tok); code != http.StatusForbidden {
		t.Fatalf("an expired token of another cluster: %d", code)
	}
	e.reg.mu.Lock()
	open, reserved := len(e.reg.open), e.reg.reserved
	e.reg.mu.Unlock()
	if open != 0 || reserved != 0 || e.reg.refused.Load() != 2 {
		t.Errorf("after refused dials: %d open, %d reserved, %d refused", open, reserved, e.reg.refused.Load())
	}
}
