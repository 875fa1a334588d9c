package kube

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Egress is an HTTP CONNECT proxy on a unix socket that kube-apiserver sends its "cluster"
// traffic through (to kubelets, pods and services), as its egress selector does with
// Konnectivity in real clusters. It maps made-up cluster addresses to servers the test runs
// on loopback: kube-apiserver refuses to proxy services and pods to loopback addresses, so a
// test Service gets an endpoint such as 10.1.0.50 that only this proxy knows.
type Egress struct {
	dir string
	ln  net.Listener

	mu     sync.Mutex
	routes map[string]string
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// StartEgress starts the proxy; it is stopped when t ends. Give kube-apiserver its
// APIServerArgs.
func StartEgress(t testing.TB) *Egress {
	t.Helper()
	// A unix socket's path is limited to about 100 bytes; t.TempDir's can be longer.
	dir, err := os.MkdirTemp("", "egress")
	if err != nil {
		t.Fatal(err)
	}
	e := &Egress{dir: dir, routes: map[string]string{}, conns: map[net.Conn]struct{}{}}
	e.ln, err = net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("egress proxy: %v", err)
	}
	cfg := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, e.ln.Addr().String())
	if err := os.WriteFile(filepath.Join(dir, "egress.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.wg.Go(e.serve)
	t.Cleanup(func() {
		e.ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
		os.RemoveAll(dir)
	})
	return e
}

// APIServerArgs are the kube-apiserver flags that send its cluster traffic through e.
func (e *Egress) APIServerArgs() []string {
	return []string{"--egress-selector-config-file=" + filepath.Join(e.dir, "egress.yaml")}
}

// Route sends connections to from (host:port, as the cluster names it) to to (a loopback
// host:port). Loopback addresses pass through unrouted; any other address is refused.
func (e *Egress) Route(from, to string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.routes[from] = to
}

func (e *Egress) track(c net.Conn, on bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if on {
		e.conns[c] = struct{}{}
	} else {
		delete(e.conns, c)
	}
}

func (e *Egress) serve() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.track(c, true)
		e.wg.Go(func() {
			defer e.track(c, false)
			defer c.Close()
			e.handle(c)
		})
	}
}

func (e *Egress) handle(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	e.mu.Lock()
	to, ok := e.routes[req.Host]
	e.mu.Unlock()
	if !ok {
		host, _, _ := net.SplitHostPort(req.Host)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\n\r\nno route to %s in the test's egress proxy", req.Host)
			return
		}
		to = req.Host
	}
	up, err := net.Dial("tcp", to)
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	e.track(up, true)
	defer e.track(up, false)
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, br)
		if tc, ok := up.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, up)
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	<-done
}
