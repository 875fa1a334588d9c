package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// TestKubectlStreamsThroughTheServer runs the whole chain: the real kubectl, the real server,
// the real flotilla-agent of a cluster in workspace ops (addressed as ops.NAME), and a real
// kube-apiserver. Behind that API server the kubelet is a test endpoint (kube.Kubelet: the
// kubelet's streaming server code with Go functions for a container), since no kubelet or
// container runtime can run here, and an egress proxy maps a Service's endpoint to a test
// server. exec, attach, logs -f and port-forward work with kubectl's WebSocket and SPDY
// upgrades, the service proxy reaches the service, and once each call ends no stream stays
// open through the tunnel.
func TestKubectlStreamsThroughTheServer(t *testing.T) {
	etcd := kube.StartEtcd(t)
	egress := kube.StartEgress(t)
	echo := kube.NewEchoContainer(t)
	kubelet := kube.StartKubelet(t, echo)
	kc := kube.StartCluster(t, etcd, kube.Options{Name: "streams-e2e", APIServerArgs: append(egress.APIServerArgs(), kube.KubeletAPIServerArgs...)})
	kubectlBin := filepath.Join(kube.Binaries(t), "kubectl")
	k := kubernetes.NewForConfigOrDie(kc.RESTConfig())
	uid := clusterUID(t, k)
	ctx := testCtx(t, 10*time.Minute)
	if err := kubelet.RegisterNode(ctx, k, "node-1"); err != nil {
		t.Fatal(err)
	}
	if err := kubelet.RunPod(ctx, k, "default", "p", "10.1.0.50", nil); err != nil {
		t.Fatal(err)
	}
	kube.ServeEcho(t, k, egress, "default", "web", "p", "10.1.0.50")

	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s", "--tunnel-wait", "60s"}})
	admin := adminClient(t, srv)
	adminCLI := srv.CLI(t)
	startAgent(t, t.TempDir(), "--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", newToken(t, adminCLI, "-n", "ops", "--ttl", "1h"),
		"--kubeconfig", kc.KubeconfigPath(), "--log-level", "debug")
	var cluster string
	eventually(t, time.Minute, "the cluster registered", func() error {
		o, _, err := serverCluster(ctx, admin, uid)
		if err == nil {
			if o.Metadata.Namespace != "ops" {
				t.Fatalf("the cluster registered in %s", o.Metadata.Namespace)
			}
			cluster = o.Metadata.Name
		}
		return err
	})

	// bob owns the clusters of workspace ops.
	raw, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "bob"}, RoleRef: rbac.RoleClusterOwner,
		Scope: api.BindingScope{Workspace: "ops", ClusterSelector: &api.LabelSelector{}}})
	if _, _, err := admin.Apply(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: "bob-ops"}, Spec: raw}, false); err != nil {
		t.Fatal(err)
	}
	const password = "correct horse battery staple 42"
	cli(t, adminCLI, password+"\n", "user", "create", "bob", "--password-stdin")
	dir := t.TempDir()
	bobCLI := &e2e.CLI{Bin: adminCLI.Bin, Env: []string{"FLOTILLA_SERVER=" + srv.URL, "FLOTILLA_CA_FILE=" + srv.CAFile, "FLOTILLA_CONFIG=" + filepath.Join(dir, "bob.json")}}
	cli(t, bobCLI, password+"\n", "login", "--username", "bob", "--password-stdin")
	// The CLI names a cluster of another workspace with -n (or as WORKSPACE.NAME).
	kubeconfig := filepath.Join(dir, "bob.kubeconfig")
	cli(t, bobCLI, "", "kubeconfig", "-n", "ops", cluster, "--ttl", "1h", "-o", kubeconfig)
	cfg, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), api.PathK8sClusters+"ops."+cluster+"\n") {
		t.Fatalf("bob's kubeconfig for ops.%s:\n%s", cluster, cfg)
	}
	eventually(t, time.Minute, "bob's rules on the cluster", func() error {
		out, _ := exec.CommandContext(ctx, kubectlBin, "--kubeconfig", kc.KubeconfigPath(), "auth", "can-i", "create", "pods/exec", "-n", "default", "--as", rbac.UserPrefix+"bob").Output()
		if strings.TrimSpace(string(out)) != "yes" {
			return fmt.Errorf("can-i: %q", out)
		}
		return nil
	})
	if _, err := k.CoreV1().Pods("default").Get(ctx, "p", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}

	hc := serverHTTP(srv)
	streams := func() int { return serverMetric(t, ctx, srv, "flotilla_tunnel_streams_open") }
	released := func(what string) {
		t.Helper()
		eventually(t, time.Minute, "no stream open after "+what, func() error {
			if n := streams(); n != 0 {
				return fmt.Errorf("%d streams open", n)
			}
			return nil
		})
	}
	command := func(ctx context.Context, spdy bool, args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		c.Env = append(os.Environ(), "KUBECTL_REMOTE_COMMAND_WEBSOCKETS="+strconv.FormatBool(!spdy), "KUBECTL_PORT_FORWARD_WEBSOCKETS="+strconv.FormatBool(!spdy))
		return c
	}

	for _, spdy := range []bool{false, true} {
		mode := map[bool]string{false: "websocket", true: "spdy"}[spdy]
		run := func(stdin string, args ...string) (string, string, error) {
			t.Helper()
			c := command(ctx, spdy, args...)
			c.Stdin = strings.NewReader(stdin)
			var out, errOut strings.Builder
			c.Stdout, c.Stderr = &out, &errOut
			err := c.Run()
			released(mode + " " + strings.Join(args, " "))
			return out.String(), errOut.String(), err
		}
		if out, errOut, err := run("hello\n", "exec", "-i", "p", "--", "cat"); err != nil || out != "hello\n" {
			t.Errorf("%s: exec cat: %v %q %q", mode, err, out, errOut)
		}
		if out, errOut, err := run("", "exec", "p", "--", "echo", "a", "b"); err != nil || out != "a b\n" || !strings.Contains(errOut, "to stderr") {
			t.Errorf("%s: exec echo: %v %q %q", mode, err, out, errOut)
		}
		if _, errOut, err := run("", "exec", "p", "--", "exit", "7"); func() bool { ee, ok := err.(*exec.ExitError); return !ok || ee.ExitCode() != 7 }() {
			t.Errorf("%s: exec exit 7: %v %q", mode, err, errOut)
		}
		if out, errOut, err := run("typed\n", "attach", "-i", "p"); err != nil || !strings.Contains(out, "attached\ntyped\n") {
			t.Errorf("%s: attach: %v %q %q", mode, err, out, errOut)
		}

		// logs -f streams until kubectl stops.
		lctx, stop := context.WithCancel(ctx)
		follow := command(lctx, spdy, "logs", "-f", "p")
		lines, stderr := outputLines(t, follow)
		for _, want := range []string{"line 1", "line 2"} {
			if want != "line 1" {
				echo.Log <- want
			}
			if got := nextLine(t, lines, stderr); got != want {
				t.Errorf("%s: logs -f: %q, want %q", mode, got, want)
			}
		}
		stop()
		follow.Wait()
		released(mode + " logs -f")

		pctx, stop := context.WithCancel(ctx)
		pf := command(pctx, spdy, "port-forward", "--address", "127.0.0.1", "pod/p", ":8080")
		lines, stderr = outputLines(t, pf)
		var local string
		for local == "" {
			if rest, ok := strings.CutPrefix(nextLine(t, lines, stderr), "Forwarding from 127.0.0.1:"); ok {
				local = "127.0.0.1:" + strings.Fields(rest)[0]
			}
		}
		conn, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(conn, "ping")
		if got, err := bufio.NewReader(conn).ReadString('\n'); err != nil || got != "PING\n" {
			t.Errorf("%s: port-forward: %q %v\n%s", mode, got, err, stderr)
		}
		conn.Close()
		stop()
		pf.Wait()
		released(mode + " port-forward")
	}

	// The service proxy: the cluster's kube-apiserver proxies, the agent reaches only it.
	for path, want := range map[string]string{
		"/api/v1/namespaces/default/services/web:http/proxy/a/b?x=1": "GET /a/b?x=1 body=",
		"/api/v1/namespaces/default/services/https:web:443/proxy/s":  "GET /s tls body=",
	} {
		out, err := command(ctx, false, "get", "--raw", path).CombinedOutput()
		if err != nil || string(out) != want {
			t.Errorf("kubectl get --raw %s: %v %q, want %q", path, err, out, want)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost,
		srv.URL+api.PathK8sClusters+"ops."+cluster+"/api/v1/namespaces/default/services/web:80/proxy/form?q=2", strings.NewReader("a=1"))
	req.Header.Set("Authorization", "Bearer "+bobToken(t, cfg))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "POST /form?q=2 body=a=1" {
		t.Errorf("POST through the service proxy: %d %s", resp.StatusCode, body)
	}
	released("the service proxy")
}

// bobToken is the token a kubeconfig carries.
func bobToken(t *testing.T, kubeconfig []byte) string {
	for _, l := range strings.Split(string(kubeconfig), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "token: "); ok {
			return v
		}
	}
	t.Fatal("no token in the kubeconfig")
	return ""
}

func outputLines(t *testing.T, c *exec.Cmd) (<-chan string, *strings.Builder) {
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

func nextLine(t *testing.T, ch <-chan string, stderr *strings.Builder) string {
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
