package proxy

import (
	"bufio"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/testenv/kube"
	"flotilla.dev/internal/tunnel"
)

// live counts what a proxied call holds while it runs: streams open through the tunnels,
// and goroutines in the proxy's code, its reverse proxies' copying and the tunnel's
// connections. Both must come back to nothing once a call ends, however it ended.
func live(reg *tunnel.Server) (streams, goroutines int) {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "flotilla.dev/internal/proxy.(*Proxy)") || strings.Contains(g, "net/http/httputil.") ||
			strings.Contains(g, "flotilla.dev/internal/tunnel.(*trackedConn)") {
			goroutines++
		}
	}
	return reg.Streams(), goroutines
}

// released waits until nothing a call held is left, and says what is if it stays.
func released(t *testing.T, reg *tunnel.Server, what string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		s, g := live(reg)
		if s == 0 && g == 0 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 8<<20)
			t.Fatalf("after %s: %d streams and %d goroutines still held:\n%s", what, s, g, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kubeEnv is a real cluster (kube-apiserver) with a test kubelet and an egress proxy, its
// agent's end of a real tunnel serving it, and the proxy in front on TLS.
type kubeEnv struct {
	reg        *tunnel.Server
	url        string // https://127.0.0.1:PORT
	client     *http.Client
	kubectl    string
	kubeconfig string
	cs         kubernetes.Interface
	c          *kube.EchoContainer
	egress     *kube.Egress
}

func startKubeEnv(t *testing.T) *kubeEnv {
	etcd := kube.StartEtcd(t)
	egress := kube.StartEgress(t)
	c := kube.NewEchoContainer(t)
	kubelet := kube.StartKubelet(t, c)
	args := append(egress.APIServerArgs(), kube.KubeletAPIServerArgs...)
	kc := kube.StartCluster(t, etcd, kube.Options{Name: "streams", APIServerArgs: args})
	cs := kubernetes.NewForConfigOrDie(kc.RESTConfig())
	ctx := t.Context()

	// The cluster's RBAC as Flotilla would compile it: bob's group may do anything.
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ops"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects: []rbacv1.Subject{{Kind: "Group", Name: rbac.GroupPrefix + "ops"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubelet.RegisterNode(ctx, cs, "node-1"); err != nil {
		t.Fatal(err)
	}
	if err := kubelet.RunPod(ctx, cs, "default", "p", "10.1.0.50", map[string]string{"app": "web"}); err != nil {
		t.Fatal(err)
	}
	kube.ServeEcho(t, cs, egress, "default", "web", "p", "10.1.0.50")

	log := slog.New(slog.DiscardHandler)
	// Idle tunnels are never closed here: the counts compared are of streams and calls.
	reg := tunnel.NewServer(tunnel.Config{Logger: log, Idle: time.Hour})
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg.Serve(w, r, api.DefaultNamespace+"/edge")
	}))
	t.Cleanup(agentSrv.Close)
	target, err := tunnel.TargetFor(kc.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ag := tunnel.NewAgent(tunnel.AgentConfig{Server: agentSrv.URL, HTTPClient: agentSrv.Client(), Credential: func() string { return "cred" },
		Target: target, Logger: log, Idle: -1})
	actx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { ag.Run(actx) })
	wg.Go(func() { relayTokens(actx, reg, api.DefaultNamespace+"/edge", ag) })
	p := New(Config{Auth: fakeAuth{}, Authz: fakeAuthz{}, Tunnels: reg, Logger: log, Wait: 30 * time.Second,
		Store: clusters{api.DefaultNamespace + "/edge": cluster("edge")}})
	mux := http.NewServeMux()
	p.Register(mux)
	ps := httptest.NewUnstartedServer(mux)
	ps.EnableHTTP2 = true // as the server: kubectl's plain calls use HTTP/2, its upgrades HTTP/1.1
	ps.StartTLS()
	t.Cleanup(ps.Close)

	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["edge"] = &clientcmdapi.Cluster{Server: ps.URL + api.PathK8sClusters + "edge",
		CertificateAuthorityData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ps.Certificate().Raw})}
	cfg.AuthInfos["bob"] = &clientcmdapi.AuthInfo{Token: "bob"}
	cfg.Contexts["edge"] = &clientcmdapi.Context{Cluster: "edge", AuthInfo: "bob", Namespace: "default"}
	cfg.CurrentContext = "edge"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	client := ps.Client()
	client.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"http/1.1"}
	return &kubeEnv{reg: reg, url: ps.URL, client: client, kubectl: filepath.Join(kube.Binaries(t), "kubectl"), kubeconfig: kubeconfig, cs: cs, c: c, egress: egress}
}

// cmd is kubectl through the proxy; spdy sets kubectl to its SPDY upgrades.
func (e *kubeEnv) cmd(ctx context.Context, spdy bool, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, e.kubectl, append([]string{"--kubeconfig", e.kubeconfig, "--request-timeout", "0"}, args...)...)
	c.Env = append(os.Environ(), "KUBECTL_REMOTE_COMMAND_WEBSOCKETS="+strconv.FormatBool(!spdy), "KUBECTL_PORT_FORWARD_WEBSOCKETS="+strconv.FormatBool(!spdy))
	return c
}

// lines runs c and returns its stdout's lines as they come.
func lines(t *testing.T, c *exec.Cmd) (<-chan string, *strings.Builder) {
	t.Helper()
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &strings.Builder{}
	c.Stderr = stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch, stderr
}

func next(t *testing.T, ch <-chan string, stderr *strings.Builder) string {
	t.Helper()
	select {
	case l, ok := <-ch:
		if !ok {
			t.Fatalf("the output ended; stderr:\n%s", stderr)
		}
		return l
	case <-time.After(time.Minute):
		t.Fatalf("no output; stderr:\n%s", stderr)
	}
	return ""
}

// TestKubectlStreamsThroughTheTunnel runs the real kubectl's exec, attach, port-forward and
// logs, over both its WebSocket and its SPDY upgrades, through the proxy, a real tunnel and
// the agent's forwarding to a real kube-apiserver. The kubelet behind that API server is a
// test endpoint (kube.Kubelet: the kubelet's streaming server code with Go functions for a
// container), since no kubelet or container runtime can run here. After every call nothing
// is left held: no stream through the tunnel, no goroutine of the proxy.
func TestKubectlStreamsThroughTheTunnel(t *testing.T) {
	e := startKubeEnv(t)
	ctx := t.Context()
	for _, spdy := range []bool{false, true} {
		name := "websocket"
		if spdy {
			name = "spdy"
		}
		t.Run(name, func(t *testing.T) {
			run := func(stdin string, args ...string) (string, string, error) {
				t.Helper()
				c := e.cmd(ctx, spdy, args...)
				c.Stdin = strings.NewReader(stdin)
				var out, errOut strings.Builder
				c.Stdout, c.Stderr = &out, &errOut
				err := c.Run()
				released(t, e.reg, strings.Join(args, " "))
				return out.String(), errOut.String(), err
			}

			out, errOut, err := run("hello\nworld\n", "exec", "-i", "p", "-c", "main", "--", "cat")
			if err != nil || out != "hello\nworld\n" {
				t.Errorf("exec cat: %v %q %q", err, out, errOut)
			}
			out, errOut, err = run("", "exec", "p", "--", "echo", "a", "b")
			if err != nil || out != "a b\n" || !strings.Contains(errOut, "to stderr") {
				t.Errorf("exec echo: %v %q %q", err, out, errOut)
			}
			_, errOut, err = run("", "exec", "p", "--", "exit", "3")
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
				t.Errorf("exec exit 3: %v %q", err, errOut)
			}

			out, errOut, err = run("from stdin\n", "attach", "-i", "p", "-c", "main")
			if err != nil || !strings.Contains(out, "attached\nfrom stdin\n") {
				t.Errorf("attach: %v %q %q", err, out, errOut)
			}

			out, errOut, err = run("", "logs", "p")
			if err != nil || out != "line 1\n" {
				t.Errorf("logs: %v %q %q", err, out, errOut)
			}
			fctx, stop := context.WithCancel(ctx)
			follow := e.cmd(fctx, spdy, "logs", "-f", "p")
			ch, stderr := lines(t, follow)
			if l := next(t, ch, stderr); l != "line 1" {
				t.Errorf("logs -f: %q", l)
			}
			for _, l := range []string{"line 2", "line 3"} {
				e.c.Log <- l
				if got := next(t, ch, stderr); got != l {
					t.Errorf("logs -f: %q, want %q", got, l)
				}
			}
			stop()
			follow.Wait()
			released(t, e.reg, "logs -f")

			pctx, stop := context.WithCancel(ctx)
			pf := e.cmd(pctx, spdy, "port-forward", "--address", "127.0.0.1", "pod/p", ":8080")
			ch, stderr = lines(t, pf)
			var local string
			for local == "" {
				l := next(t, ch, stderr)
				if rest, ok := strings.CutPrefix(l, "Forwarding from 127.0.0.1:"); ok {
					local = "127.0.0.1:" + strings.Fields(rest)[0]
				}
			}
			for i := range 2 {
				conn, err := net.Dial("tcp", local)
				if err != nil {
					t.Fatal(err)
				}
				r := bufio.NewReader(conn)
				for _, m := range []string{"ping", strings.Repeat("x", 100000)} {
					fmt.Fprintln(conn, m)
					got, err := r.ReadString('\n')
					if err != nil || got != strings.ToUpper(m)+"\n" {
						t.Errorf("port-forward connection %d: %.40q, %v; stderr:\n%s", i, got, err, stderr)
					}
				}
				conn.Close()
			}
			stop()
			pf.Wait()
			released(t, e.reg, "port-forward")
		})
	}
}

// TestServiceProxyThroughTheTunnel reaches an in-cluster service with Kubernetes' own
// service proxy: the cluster's kube-apiserver proxies, the agent only ever reaches its API
// server.
func TestServiceProxyThroughTheTunnel(t *testing.T) {
	e := startKubeEnv(t)
	ctx := t.Context()
	const svc = "/api/v1/namespaces/default/services/"
	for path, want := range map[string]string{
		svc + "web:http/proxy/hello/world?x=1&y=two%20words": "GET /hello/world?x=1&y=two+words body=", // the API server re-encodes the query
		svc + "web:80/proxy/":                                "GET / body=",
		svc + "https:web:https/proxy/secure?z=1":             "GET /secure?z=1 tls body=",
	} {
		out, err := e.cmd(ctx, false, "get", "--raw", path).CombinedOutput()
		if err != nil || string(out) != want {
			t.Errorf("kubectl get --raw %s: %v\n%s\nwant %q", path, err, out, want)
		}
		released(t, e.reg, "get --raw "+path)
	}

	post := func(path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+api.PathK8sClusters+"edge"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer bob")
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		released(t, e.reg, "POST "+path)
		return resp.StatusCode, string(b)
	}
	if code, body := post(svc+"web:http/proxy/submit?a=b&a=c", "form=1"); code != http.StatusOK || body != "POST /submit?a=b&a=c body=form=1" {
		t.Errorf("POST through the service proxy: %d %s", code, body)
	}
	// Kubernetes' own answers pass through: a service that does not exist, a port it lacks.
	if code, body := post(svc+"nope:http/proxy/", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, `no endpoints available for service \"nope\"`) {
		t.Errorf("a missing service: %d %s", code, body)
	}
	if code, body := post(svc+"web:81/proxy/", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "no service port 81") {
		t.Errorf("a missing port: %d %s", code, body)
	}
}
