package e2e_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// TestKubectlThroughFlotilla runs the real server, a real cluster (kube-apiserver) with the
// real flotilla-agent, and the real kubectl with kubeconfigs written by `flotilla kubeconfig
// NAME`: the server lets through only users bound on the cluster, impersonates them through
// the agent's tunnel, opened on demand and closed when idle, and the cluster's own RBAC
// decides the rest.
func TestKubectlThroughFlotilla(t *testing.T) {
	etcd := kube.StartEtcd(t)
	kc := kube.StartCluster(t, etcd, kube.Options{Name: "proxy-a"})
	kubectlBin := filepath.Join(kube.Binaries(t), "kubectl")
	k := kubernetes.NewForConfigOrDie(kc.RESTConfig())
	uid := clusterUID(t, k)

	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s", "--tunnel-wait", "60s"}})
	admin := adminClient(t, srv)
	adminCLI := srv.CLI(t)
	ctx := testCtx(t, 10*time.Minute)
	put := func(kind, name string, spec any) {
		t.Helper()
		raw, _ := json.Marshal(spec)
		obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kind}, Metadata: api.ObjectMeta{Name: name}, Spec: raw}
		if _, _, err := admin.Apply(ctx, obj, false); err != nil {
			t.Fatalf("applying %s %s: %v", kind, name, err)
		}
	}

	// The agent closes its tunnel after a second without a request.
	agent := startAgent(t, t.TempDir(), "--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", newToken(t, adminCLI, "--ttl", "1h"),
		"--kubeconfig", kc.KubeconfigPath(), "--labels", "env=prod", "--tunnel-idle", "1s", "--log-level", "debug")
	var cluster string
	eventually(t, time.Minute, "the cluster registered", func() error {
		o, _, err := serverCluster(ctx, admin, uid)
		if err == nil {
			cluster = o.Metadata.Name
		}
		return err
	})

	metric := func(name string) int { return serverMetric(t, ctx, srv, name) }

	// Users: bob a member of project shop (namespace shop-web), alice a cluster-member of
	// the prod clusters, carol bound nowhere.
	put(api.KindProject, "shop", api.ProjectSpec{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
		Namespaces: []api.ProjectNamespace{{Name: "shop-web"}}})
	put(api.KindRoleBinding, "bob-shop", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "bob"}, RoleRef: rbac.RoleProjectMember,
		Scope: api.BindingScope{Project: "shop"}})
	put(api.KindRoleBinding, "alice-prod", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleClusterMember,
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}})
	const password = "correct horse battery staple 42"
	dir := t.TempDir()
	kubeconfigOf := map[string]string{}
	userCLI := map[string]*e2e.CLI{}
	for _, u := range []string{"alice", "bob", "carol"} {
		cli(t, adminCLI, password+"\n", "user", "create", u, "--password-stdin")
		c := &e2e.CLI{Bin: adminCLI.Bin, Env: []string{"FLOTILLA_SERVER=" + srv.URL, "FLOTILLA_CA_FILE=" + srv.CAFile, "FLOTILLA_CONFIG=" + filepath.Join(dir, u+".json")}}
		cli(t, c, password+"\n", "login", "--username", u, "--password-stdin")
		userCLI[u] = c
		if u != "carol" {
			kubeconfigOf[u] = filepath.Join(dir, u+".kubeconfig")
			cli(t, c, "", "kubeconfig", cluster, "--ttl", "1h", "-o", kubeconfigOf[u])
		}
	}
	eventually(t, time.Minute, "the project namespace on the cluster", func() error {
		_, err := k.CoreV1().Namespaces().Get(ctx, "shop-web", metav1.GetOptions{})
		return err
	})
	eventually(t, time.Minute, "bob's rules on the cluster", func() error {
		_, err := k.RbacV1().RoleBindings("shop-web").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		out, _ := exec.CommandContext(ctx, kubectlBin, "--kubeconfig", kc.KubeconfigPath(), "auth", "can-i", "list", "pods", "-n", "shop-web", "--as", rbac.UserPrefix+"bob").Output()
		if strings.TrimSpace(string(out)) != "yes" {
			return fmt.Errorf("can-i: %q", out)
		}
		return nil
	})
	if _, err := k.CoreV1().ConfigMaps("shop-web").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "first"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	kubectl := func(kubeconfig string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", kubeconfig, "--request-timeout", "90s"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustKubectl := func(kubeconfig string, args ...string) string {
		t.Helper()
		out, err := kubectl(kubeconfig, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s\nagent:\n%s", strings.Join(args, " "), err, out, agent.logs.String())
		}
		return out
	}

	// No tunnel before anyone asks; the first call opens it.
	if n := metric("flotilla_tunnels_open"); n != 0 {
		t.Fatalf("%d tunnels open before any call", n)
	}
	out := mustKubectl(kubeconfigOf["bob"], "get", "configmaps", "-n", "shop-web", "-o", "name")
	if !strings.Contains(out, "configmap/first") {
		t.Fatalf("bob's list of configmaps: %q", out)
	}
	opened := metric("flotilla_tunnels_opened_total")
	if opened < 1 {
		t.Fatalf("the call went through no tunnel: opened %d", opened)
	}

	// The cluster's own RBAC decides the rest: bob is refused in kube-system by the cluster,
	// as flotilla:user:bob, whatever impersonation he asks for himself.
	for _, extra := range [][]string{nil, {"--as", "system:admin"}, {"--as", "system:admin", "--as-group", "system:masters"}} {
		args := append(append([]string{}, extra...), "get", "pods", "-n", "kube-system")
		out, err := kubectl(kubeconfigOf["bob"], args...)
		if err == nil || !strings.Contains(out, `User "flotilla:user:bob" cannot list resource "pods"`) {
			t.Errorf("kubectl %s as bob: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out := mustKubectl(kubeconfigOf["bob"], "auth", "can-i", "create", "deployments", "-n", "shop-web"); strings.TrimSpace(out) != "yes" {
		t.Errorf("bob may not create deployments in his project: %q", out)
	}
	mustKubectl(kubeconfigOf["bob"], "create", "configmap", "made-by-bob", "-n", "shop-web")
	if _, err := k.CoreV1().ConfigMaps("shop-web").Get(ctx, "made-by-bob", metav1.GetOptions{}); err != nil {
		t.Errorf("bob's configmap on the cluster: %v", err)
	}
	// Client-side and server-side apply, a label selector, delete and discovery.
	manifest := func(name, v string) string {
		f := filepath.Join(dir, name+".yaml")
		os.WriteFile(f, fmt.Appendf(nil, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: shop-web, labels: {app: applied}}\ndata: {v: %q}\n", name, v), 0o600)
		return f
	}
	mustKubectl(kubeconfigOf["bob"], "apply", "-f", manifest("applied-cs", "1"))
	mustKubectl(kubeconfigOf["bob"], "apply", "-f", manifest("applied-cs", "2"))
	mustKubectl(kubeconfigOf["bob"], "apply", "--server-side", "-f", manifest("applied-ss", "1"))
	mustKubectl(kubeconfigOf["bob"], "apply", "--server-side", "-f", manifest("applied-ss", "2"))
	for _, name := range []string{"applied-cs", "applied-ss"} {
		if cm, err := k.CoreV1().ConfigMaps("shop-web").Get(ctx, name, metav1.GetOptions{}); err != nil || cm.Data["v"] != "2" {
			t.Errorf("%s on the cluster: %v, %v", name, cm, err)
		}
	}
	if out := mustKubectl(kubeconfigOf["bob"], "get", "configmaps", "-n", "shop-web", "-l", "app=applied", "-o", "name"); out != "configmap/applied-cs\nconfigmap/applied-ss\n" {
		t.Errorf("bob's configmaps labelled app=applied: %q", out)
	}
	mustKubectl(kubeconfigOf["bob"], "delete", "configmap", "applied-cs", "-n", "shop-web")
	if _, err := k.CoreV1().ConfigMaps("shop-web").Get(ctx, "applied-cs", metav1.GetOptions{}); err == nil {
		t.Error("bob's deleted configmap is still on the cluster")
	}
	if out := mustKubectl(kubeconfigOf["bob"], "api-resources", "--api-group", ""); !strings.Contains(out, "configmaps") {
		t.Errorf("api-resources through Flotilla:\n%s", out)
	}

	// alice, cluster-member: reads nodes and namespaces, may not delete them.
	mustKubectl(kubeconfigOf["alice"], "get", "namespaces", "-l", "kubernetes.io/metadata.name=shop-web")
	if out, _ := kubectl(kubeconfigOf["alice"], "auth", "can-i", "delete", "namespaces"); !strings.HasSuffix(strings.TrimSpace(out), "\nno") {
		t.Errorf("alice may delete namespaces: %q", out)
	}
	if out, err := kubectl(kubeconfigOf["alice"], "delete", "namespace", "shop-web"); err == nil || !strings.Contains(out, `User "flotilla:user:alice" cannot delete`) {
		t.Errorf("alice deleting a namespace: %v\n%s", err, out)
	}

	// carol, bound nowhere, gets Flotilla's 403: no tunnel is even asked for.
	carolToken := strings.TrimSpace(cli(t, userCLI["carol"], "", "token", "create", "--api", "--ttl", "1h"))
	eventually(t, time.Minute, "the idle tunnel closed", func() error {
		if n := metric("flotilla_tunnels_open"); n != 0 {
			return fmt.Errorf("%d open", n)
		}
		return nil
	})
	if out := cli(t, adminCLI, "", "get", "clusters", cluster, "-o", "wide"); regexp.MustCompile(`\sopen\s`).MatchString(out) {
		t.Errorf("get clusters -o wide with no tunnel:\n%s", out)
	}
	openedBefore := metric("flotilla_tunnels_opened_total")
	out, err := kubectl(kubeconfigOf["bob"], "--token", carolToken, "get", "pods", "-n", "shop-web")
	if err == nil || !strings.Contains(out, "carol may not reach cluster") {
		t.Errorf("carol's call: %v\n%s", err, out)
	}
	if n := metric("flotilla_tunnels_opened_total"); n != openedBefore {
		t.Errorf("carol's refused call opened a tunnel")
	}

	// Reopened on demand, and a watch streams through it.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := exec.CommandContext(wctx, kubectlBin, "--kubeconfig", kubeconfigOf["bob"], "get", "configmaps", "-n", "shop-web", "-w", "-o", "name")
	pr, pw := io.Pipe()
	watch.Stdout = pw
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { watch.Wait(); pw.Close() }()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	await := func(want string) {
		t.Helper()
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the watch ended before %s", want)
				}
				if l == want {
					return
				}
			case <-timeout:
				t.Fatalf("the watch did not show %s", want)
			}
		}
	}
	await("configmap/first")
	if n := metric("flotilla_tunnels_opened_total"); n <= openedBefore {
		t.Errorf("the tunnel was not opened again: opened %d", n)
	}
	// While the watch holds it, the cluster shows its tunnel.
	if out := cli(t, adminCLI, "", "get", "clusters", cluster, "-o", "wide"); !strings.Contains(out, "TUNNEL") || !regexp.MustCompile(`\sopen\s`).MatchString(out) {
		t.Errorf("get clusters -o wide with the tunnel open:\n%s", out)
	}
	if _, err := k.CoreV1().ConfigMaps("shop-web").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "second"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	await("configmap/second")
	stopWatch()

	// Every proxied call is audited, with the caller and the cluster.
	eventually(t, time.Minute, "the proxied calls in the audit log", func() error {
		for _, u := range []string{"carol", "bob"} {
			if records := cli(t, adminCLI, "", "audit", "--user", u, "-o", "json"); !strings.Contains(records, api.PathK8sClusters+cluster+"/api/v1/namespaces/") {
				return fmt.Errorf("%s's calls are not in the audit log:\n%s", u, records)
			}
		}
		return nil
	})
}

// serverHTTP is an HTTP client trusting the server's CA.
func serverHTTP(srv *e2e.Server) *http.Client {
	ca, _ := os.ReadFile(srv.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// serverMetric reads a gauge or counter of the server's /metrics.
func serverMetric(t *testing.T, ctx context.Context, srv *e2e.Server, name string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+srv.Token)
	resp, err := serverHTTP(srv).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int(f)
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
