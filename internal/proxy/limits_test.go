package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"flotilla.dev/api"
	"flotilla.dev/internal/tunnel"
)

// rawCall sends a request line as written, which no client library would clean or escape.
func rawCall(t *testing.T, ps *httptest.Server, method, target string, header string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", ps.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob\r\nConnection: close\r\n%s\r\n", method, target, header)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The path forwarded is exactly the one decided on: escapes kept as sent, and none that
// would make Kubernetes read other segments than the proxy saw.
func TestProxyForwardsThePathDecidedOn(t *testing.T) {
	ps, reg, got := setup(t)
	for _, c := range []struct {
		path, forwarded string
		code            int
	}{
		{"/k8s/clusters/edge/api/v1/namespaces/a/configmaps/b%20c", "/api/v1/namespaces/a/configmaps/b%20c", http.StatusOK},
		{"/k8s/clusters/edge/api/v1/namespaces/a/services/web:80/proxy/x%3Fy?q=1", "/api/v1/namespaces/a/services/web:80/proxy/x%3Fy?q=1", http.StatusOK},
		{"/k8s/clusters/edge", "/", http.StatusOK},
		{"/k8s/clusters/edge/api/v1/namespaces/a%2Fb/pods", "", http.StatusBadRequest},
		{"/k8s/clusters/edge/api/v1/namespaces/a%2fb/pods", "", http.StatusBadRequest},
		{"/k8s/clusters/edge/api/v1/%2e%2e/%2e%2e/secrets", "", http.StatusBadRequest},
		{"/k8s/clusters/edge/api/v1/%2E/secrets", "", http.StatusBadRequest},
		{"/k8s/clusters/edge/api//v1/secrets", "", http.StatusBadRequest},
		{"/k8s/clusters/edge/api/v1/../../secrets", "", http.StatusBadRequest},
		{"/k8s/clusters/edge/api/v1/%zz", "", http.StatusBadRequest},
		{"/k8s/clusters/ed%2Fge/api", "", http.StatusBadRequest},
		{"/k8s/clusters/%2e%2e/api", "", http.StatusBadRequest},
	} {
		got.mu.Lock()
		got.req = nil
		got.mu.Unlock()
		code, body := rawCall(t, ps, http.MethodGet, c.path, "")
		got.mu.Lock()
		r := got.req
		got.mu.Unlock()
		switch {
		case c.code == http.StatusOK && (code != http.StatusOK || r == nil || r.URL.RequestURI() != c.forwarded):
			t.Errorf("%s: %d %s, forwarded %v, want %s", c.path, code, body, r, c.forwarded)
		case c.code != http.StatusOK && (code == http.StatusOK || r != nil):
			t.Errorf("%s: %d %s, forwarded %v: want it refused", c.path, code, body, r)
		case c.code != http.StatusOK && code != c.code:
			// Go's ServeMux redirects paths with . or .. or // before the proxy sees
			// them; either way nothing is forwarded.
			if code != http.StatusMovedPermanently && code != http.StatusTemporaryRedirect {
				t.Errorf("%s: %d %s, want %d", c.path, code, body, c.code)
			}
		}
		released(t, reg, c.path)
	}
}

// Hop-by-hop headers, and those Connection names, stop at the proxy.
func TestProxyDropsHopByHopHeaders(t *testing.T) {
	ps, reg, got := setup(t)
	h := "Connection: X-Named, Keep-Alive\r\nX-Named: 1\r\nKeep-Alive: timeout=5\r\nTe: trailers, deflate\r\nTrailer: X-Late\r\n" +
		"Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nProxy-Foo: 1\r\nUpgrade: h2c\r\nX-Kept: yes\r\n"
	code, body := rawCall(t, ps, http.MethodGet, "/k8s/clusters/edge/api", h)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	got.mu.Lock()
	r := got.req
	got.mu.Unlock()
	for _, k := range []string{"X-Named", "Keep-Alive", "Te", "Trailer", "Proxy-Authorization", "Proxy-Connection", "Proxy-Foo", "Upgrade"} {
		if v, ok := r.Header[k]; ok {
			t.Errorf("header %s reached the cluster: %q", k, v)
		}
	}
	if r.Header.Get("X-Kept") != "yes" {
		t.Errorf("an end-to-end header was dropped: %v", r.Header)
	}
	released(t, reg, "hop-by-hop headers")
}

// drain is a cluster that reads whole request bodies, as an API server does.
var drain = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "read %d bytes", n)
})

func TestProxyRefusesOversizeBodies(t *testing.T) {
	ps, reg, _ := setupWith(t, drain)
	send := func(body io.Reader, length int64) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, ps.URL+"/k8s/clusters/edge/api/v1/namespaces/a/configmaps", body)
		req.ContentLength = length
		req.Header.Set("Authorization", "Bearer bob")
		resp, err := ps.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := send(strings.NewReader("{}"), 2); code != http.StatusOK || body != "read 2 bytes" {
		t.Fatalf("a small body: %d %s", code, body)
	}
	opened := reg.Open()
	// A declared length over the limit is refused before anything is forwarded.
	if code, body := send(io.LimitReader(zeros{}, maxBody+1), maxBody+1); code != http.StatusRequestEntityTooLarge ||
		!strings.Contains(body, "larger than 16777216 bytes") {
		t.Errorf("a declared oversize body: %d %s", code, body)
	}
	// A chunked one is cut at the limit.
	if code, body := send(io.LimitReader(zeros{}, maxBody+1), -1); code != http.StatusRequestEntityTooLarge ||
		!strings.Contains(body, "larger than 16777216 bytes") {
		t.Errorf("a chunked oversize body: %d %s", code, body)
	}
	released(t, reg, "oversize bodies")
	if reg.Open() != opened {
		t.Errorf("tunnels open: %d, then %d", opened, reg.Open())
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// A client sending its body slowly does not hold a stream past the body's budget; a call
// whose body came in time waits for its answer as long as it takes, and so do calls without
// a body (watches) and upgraded ones.
func TestProxyGivesRequestBodiesABudget(t *testing.T) {
	const budget = 100 * time.Millisecond
	release := make(chan struct{})
	target := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprintf(w, "read %d bytes", n)
	})
	ps, reg, _ := setupOpt(t, setupOpts{target: target, bodyTimeout: budget})

	// The body's first byte, then nothing: the client keeps its end open. Over HTTP/1.1
	// and over HTTP/2, where the deadline is the stream's.
	h2, h2reg, _ := setupOpt(t, setupOpts{target: target, bodyTimeout: budget, h2: true})
	// A bare "Upgrade: x" (no "Connection: upgrade") is no upgrade and keeps the budget.
	for _, s := range []struct {
		ps      *httptest.Server
		reg     *tunnel.Server
		upgrade string
	}{{ps, reg, ""}, {h2, h2reg, ""}, {ps, reg, "x"}} {
		pr, pw := io.Pipe()
		go pw.Write([]byte("{"))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.ps.URL+"/k8s/clusters/edge/api/v1/namespaces/a/configmaps", pr)
		req.Header.Set("Authorization", "Bearer bob")
		if s.upgrade != "" {
			req.Header.Set("Upgrade", s.upgrade)
		}
		resp, err := s.ps.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "did not arrive within 100ms") || resp.ProtoMajor != map[bool]int{false: 1, true: 2}[s.ps == h2] {
			t.Errorf("a stalled body over %s: %d %s", resp.Proto, resp.StatusCode, b)
		}
		released(t, s.reg, "a stalled body over "+resp.Proto)
		cancel()
		pw.Close()
	}

	// Answers after many budgets, over HTTP/1.1 and HTTP/2: a call with a body, and one
	// without.
	type answer struct {
		code int
		body string
	}
	answers := make(chan answer, 4)
	for _, srv := range []*httptest.Server{ps, h2} {
		// The body is chunked, so that the proxy reads it to its end: then the server
		// watches the connection for the client going away, which must not time out.
		for _, body := range []io.Reader{io.MultiReader(strings.NewReader("{}")), nil} {
			go func() {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/k8s/clusters/edge/slow", body)
				req.Header.Set("Authorization", "Bearer bob")
				resp, err := srv.Client().Do(req)
				if err != nil {
					answers <- answer{0, err.Error()}
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				answers <- answer{resp.StatusCode, resp.Proto + " " + string(b)}
			}()
		}
	}
	for reg.Streams() < 2 || h2reg.Streams() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(5 * budget)
	close(release)
	for range 4 {
		if a := <-answers; a.code != http.StatusOK || !strings.Contains(a.body, " read ") {
			t.Errorf("a slow answer: %d %s", a.code, a.body)
		}
	}
	released(t, reg, "slow answers")
	released(t, h2reg, "slow answers over HTTP/2")
}

// A client that stops reading an answer does not hold its stream past the write budget, over
// HTTP/1.1 and HTTP/2; a watch whose events come many budgets apart, read as they come, lasts.
func TestProxyGivesSlowReadersABudget(t *testing.T) {
	const budget = 100 * time.Millisecond
	target := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		rc := http.NewResponseController(w)
		if r.URL.Path == "/watch" {
			for i := range 3 {
				fmt.Fprintf(w, "event %d\n", i)
				rc.Flush()
				time.Sleep(4 * budget)
			}
			return
		}
		for r.Context().Err() == nil { // an endless answer
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	for _, h2 := range []bool{false, true} {
		ps, reg, _ := setupOpt(t, setupOpts{target: target, writeTimeout: budget, h2: h2})
		// A bare "Upgrade: x" (no "Connection: upgrade"; HTTP/1.1 only, HTTP/2 forbids the
		// header) is a plain call and keeps the budget.
		for _, upgrade := range []string{"", "x"}[:map[bool]int{false: 2, true: 1}[h2]] {
			// The client's own patience outlasts released's wait: only the budget frees the stream.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ps.URL+"/k8s/clusters/edge/api/v1/pods", nil)
			req.Header.Set("Authorization", "Bearer bob")
			if upgrade != "" {
				req.Header.Set("Upgrade", upgrade)
			}
			resp, err := ps.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			// The client reads nothing more and keeps its end open.
			released(t, reg, fmt.Sprintf("a client that stopped reading (HTTP/2: %v, Upgrade: %q)", h2, upgrade))
			resp.Body.Close()
			cancel()
		}

		req, _ := http.NewRequest(http.MethodGet, ps.URL+"/k8s/clusters/edge/watch", nil)
		req.Header.Set("Authorization", "Bearer bob")
		resp, err := ps.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "event 0\nevent 1\nevent 2\n" {
			t.Errorf("a watch with events %v apart (HTTP/2: %v): %q, %v", 4*budget, h2, b, err)
		}
		released(t, reg, "a quiet watch")
	}
}

// An upgraded connection lives past the body budget and many idle periods of both ends of
// the tunnel: a tunnel with a stream open is not idle. Once it ends, the tunnel closes.
func TestLongCallsKeepTheTunnelOpen(t *testing.T) {
	const idle = 50 * time.Millisecond
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
			c.Write(r.Context(), typ, msg)
		}
	}))
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	ps, reg, _ := setupOpt(t, setupOpts{target: tunnel.NewTarget(u, http.DefaultTransport), idle: idle, bodyTimeout: idle})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(ps.URL, "http", "ws", 1)+"/k8s/clusters/edge/api/v1/namespaces/a/pods/p/exec",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer bob"}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		time.Sleep(4 * idle)
		if err := c.Write(ctx, websocket.MessageText, []byte("still there")); err != nil {
			t.Fatalf("after %d idle periods: %v", 4*(i+1), err)
		}
		if _, msg, err := c.Read(ctx); err != nil || string(msg) != "still there" {
			t.Fatalf("after %d idle periods: %q %v", 4*(i+1), msg, err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	released(t, reg, "an upgraded call")
	for reg.Open() != 0 {
		time.Sleep(5 * time.Millisecond)
	}
}

// Clusters of other workspaces are WORKSPACE.NAME; NAME alone is the default workspace's.
func TestProxyReachesClustersOfOtherWorkspaces(t *testing.T) {
	ps, reg, got := setupOpt(t, setupOpts{cluster: "ops/edge"})
	if code, body, _ := call(t, ps, "bob", "/k8s/clusters/ops.edge/api/v1/pods", nil); code != http.StatusOK || body != "from the cluster" {
		t.Fatalf("ops.edge: %d %s", code, body)
	}
	got.mu.Lock()
	if got.req == nil || got.req.URL.Path != "/api/v1/pods" {
		t.Errorf("forwarded %v", got.req)
	}
	got.mu.Unlock()
	if !reg.IsOpen("ops/edge") {
		t.Error("no tunnel for ops/edge")
	}
	for _, c := range []struct {
		path string
		code int
		msg  string
	}{
		// fleet-default/edge is another cluster, whose agent never comes here.
		{"/k8s/clusters/edge/api", http.StatusServiceUnavailable, "cluster fleet-default/edge did not open its tunnel"},
		{"/k8s/clusters/fleet-default.edge/api", http.StatusServiceUnavailable, "cluster fleet-default/edge did not open its tunnel"},
		{"/k8s/clusters/dev.edge/api", http.StatusNotFound, "cluster dev/edge not found"},
		{"/k8s/clusters/Ops.edge/api", http.StatusBadRequest, `workspace \"Ops\"`},
		{"/k8s/clusters/ops.edge.x/api", http.StatusBadRequest, `cluster name \"edge.x\"`},
		{"/k8s/clusters/.edge/api", http.StatusBadRequest, `workspace \"\"`},
		{"/k8s/clusters/ops./api", http.StatusBadRequest, `cluster name \"\"`},
	} {
		if code, body, _ := call(t, ps, "bob", c.path, nil); code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("%s: %d %s, want %d %q", c.path, code, body, c.code, c.msg)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, ps.URL+api.PathKubeconfig+"ops.edge", nil)
	req.Header.Set("Authorization", "Bearer bob")
	resp, err := ps.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), api.PathK8sClusters+"ops.edge\n") || !strings.Contains(string(b), "current-context: flotilla-ops.edge") {
		t.Errorf("kubeconfig for ops.edge: %d\n%s", resp.StatusCode, b)
	}
	released(t, reg, "calls to ops.edge")
}

// A long call ends when its tunnel goes away: the client's connection is closed for
// writing (as httputil.ReverseProxy ends an upgraded connection), and once the client closes
// it nothing is left.
func TestLongCallsEndWithTheirTunnel(t *testing.T) {
	// An upgrade to a protocol that echoes bytes.
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw)
	}))
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	var breakTunnels func()
	ps, reg, _ := setupOpt(t, setupOpts{target: tunnel.NewTarget(u, http.DefaultTransport), breaker: func(f func()) { breakTunnels = f }})
	c, err := net.Dial("tcp", ps.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(c, "GET /k8s/clusters/edge/api/v1/namespaces/a/pods/p/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "hi\n")
	if l, err := br.ReadString('\n'); err != nil || l != "hi\n" {
		t.Fatalf("echo: %q %v", l, err)
	}
	if n := reg.Streams(); n != 1 {
		t.Fatalf("%d streams open for an upgraded call", n)
	}
	breakTunnels()
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the call outlived its tunnel: read %d, %v", n, err)
	}
	c.Close()
	released(t, reg, "a call whose tunnel went away")
	for reg.Open() != 0 {
		time.Sleep(5 * time.Millisecond)
	}
}
