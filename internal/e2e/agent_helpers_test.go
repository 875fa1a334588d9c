package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// This file holds what the agent's end-to-end tests share: flotilla-agent processes, a
// loopback TCP proxy that can cut an agent off and counts the bytes it carries, and
// helpers to read the server's and the clusters' state.

// agentProc is a running flotilla-agent.
type agentProc struct {
	stateDir string
	cmd      *exec.Cmd
	logs     *lockedBuffer
	done     chan struct{}
	err      error // after done
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// agentEnv is the test's environment without what would configure the agent behind the
// test's back (the CLI's FLOTILLA_TOKEN is an admin token, not a registration token).
func agentEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "FLOTILLA_") || strings.HasPrefix(kv, "KUBECONFIG=") || strings.HasPrefix(kv, "KUBERNETES_SERVICE_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// startAgent starts flotilla-agent with args (and --state-dir stateDir); it is stopped when
// the test ends.
func startAgent(t *testing.T, stateDir string, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{stateDir: stateDir, logs: &lockedBuffer{}, done: make(chan struct{})}
	args = append([]string{"--state-dir", stateDir, "--in-cluster=false"}, args...)
	p.cmd = exec.Command(e2e.Binary(t, "flotilla-agent"), args...)
	p.cmd.Env = agentEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("flotilla-agent (%s) log:\n%s", stateDir, p.logs.String())
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *agentProc) stop(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.exitCode()
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("flotilla-agent did not exit within 20s of SIGTERM")
	}
	return p.exitCode()
}

// wait waits for the agent to exit by itself and returns its exit code, or -1 on timeout.
func (p *agentProc) wait(timeout time.Duration) int {
	select {
	case <-p.done:
		return p.exitCode()
	case <-time.After(timeout):
		return -1
	}
}

func (p *agentProc) exitCode() int {
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// memKiB reads the agent's resident memory from /proc: VmRSS, and its anonymous (heap,
// stacks) and file-backed (the mapped binary) parts.
func (p *agentProc) memKiB(t *testing.T) (rss, anon, file int64) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.cmd.Process.Pid), "status"))
	if err != nil {
		t.Logf("reading the agent's RSS: %v", err)
		return 0, 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "RssAnon":
			anon = n
		case "RssFile":
			file = n
		}
	}
	return rss, anon, file
}

// tcpProxy forwards loopback connections to target. Cut drops every connection and refuses
// new ones until Restore, as a network outage looks to both ends; it counts the bytes it
// carries each way.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}

	toServer, toClient atomic.Int64
	accepted           atomic.Int64
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
	})
	return p
}

func (p *tcpProxy) URL() string { return "https://" + p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.accepted.Add(1)
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		go p.forward(c)
	}
}

func (p *tcpProxy) forward(c net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		c.Close()
	}()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		s.Close()
		return
	}
	p.conns[s] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, s)
		p.mu.Unlock()
		s.Close()
	}()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, n *atomic.Int64) {
		buf := make([]byte, 32<<10)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				n.Add(int64(k))
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go pipe(s, c, &p.toServer)
	go pipe(c, s, &p.toClient)
	<-done
}

// Cut drops every connection and refuses new ones.
func (p *tcpProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections through again.
func (p *tcpProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func (p *tcpProxy) bytes() (toServer, toClient int64) {
	return p.toServer.Load(), p.toClient.Load()
}

// adminClient is a Go client of the server with its admin token.
func adminClient(t *testing.T, s *e2e.Server) *client.Client {
	t.Helper()
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{Server: s.URL, Token: s.Token, CAData: ca})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// cli runs a flotilla command and fails the test if it fails.
func cli(t *testing.T, c *e2e.CLI, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := c.Run(testCtx(t, time.Minute), stdin, args...)
	if err != nil {
		t.Fatalf("flotilla %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// newToken creates a registration token with the CLI.
func newToken(t *testing.T, c *e2e.CLI, args ...string) string {
	t.Helper()
	tok := strings.TrimSpace(cli(t, c, "", append([]string{"token", "create"}, args...)...))
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("token create printed %q", tok)
	}
	return tok
}

// eventually retries check until it returns nil, and fails the test with its last error.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clusterUID is the cluster's identity as the agent reports it.
func clusterUID(t *testing.T, k kubernetes.Interface) string {
	t.Helper()
	ns, err := k.CoreV1().Namespaces().Get(testCtx(t, time.Minute), "kube-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(ns.UID)
}

// serverCluster finds the Cluster registered for clientID.
func serverCluster(ctx context.Context, c *client.Client, clientID string) (*api.Object, api.ClusterStatus, error) {
	l, err := c.ListAll(ctx, api.KindCluster, "", "")
	if err != nil {
		return nil, api.ClusterStatus{}, err
	}
	var found []*api.Object
	for _, raw := range l.Items {
		var o api.Object
		if err := json.Unmarshal(raw, &o); err != nil {
			return nil, api.ClusterStatus{}, err
		}
		var spec api.ClusterSpec
		json.Unmarshal(o.Spec, &spec)
		if spec.ClientID == clientID {
			found = append(found, &o)
		}
	}
	if len(found) != 1 {
		return nil, api.ClusterStatus{}, fmt.Errorf("%d clusters with client ID %s", len(found), clientID)
	}
	var st api.ClusterStatus
	json.Unmarshal(found[0].Status, &st)
	return found[0], st, nil
}

// bundleSummary reads a bundle's rolled-up status.
func bundleSummary(ctx context.Context, c *client.Client, name string) (*api.Summary, error) {
	o, err := c.Get(ctx, api.KindBundle, api.DefaultNamespace, name)
	if err != nil {
		return nil, err
	}
	var st api.BundleStatus
	json.Unmarshal(o.Status, &st)
	if st.Summary == nil {
		return nil, errors.New("no summary yet")
	}
	return st.Summary, nil
}

// summaryIs checks a summary's counts: desired, ready, then state=count pairs.
func summaryIs(s *api.Summary, desired, ready int, states map[string]int) error {
	got := map[string]int{api.StateNotReady: s.NotReady, api.StateModified: s.Modified, api.StateWaitApplied: s.WaitApplied,
		api.StateErrApplied: s.ErrApplied, api.StateOutOfSync: s.OutOfSync, api.StatePending: s.Pending}
	ok := s.DesiredReady == desired && s.Ready == ready
	for k, v := range got {
		if states[k] != v {
			ok = false
		}
	}
	if !ok {
		b, _ := json.Marshal(s)
		return fmt.Errorf("summary %s, want desired %d, ready %d, %v", b, desired, ready, states)
	}
	return nil
}

// startClusters starts n API servers on one etcd.
func startClusters(t *testing.T, names ...string) ([]*kube.Cluster, []kubernetes.Interface) {
	t.Helper()
	etcd := kube.StartEtcd(t)
	var cs []*kube.Cluster
	var ks []kubernetes.Interface
	for _, n := range names {
		c := kube.StartCluster(t, etcd, kube.Options{Name: n})
		cs = append(cs, c)
		ks = append(ks, kubernetes.NewForConfigOrDie(c.RESTConfig()))
	}
	return cs, ks
}

// addNode registers a Node as a kubelet would, so that the inventory has something to count.
func addNode(t *testing.T, k kubernetes.Interface, name, arch, cpu, mem string) {
	t.Helper()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelArchStable: arch}},
		Status: corev1.NodeStatus{
			NodeInfo:    corev1.NodeSystemInfo{Architecture: arch, OperatingSystem: "linux"},
			Capacity:    corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
		},
	}
	ctx := testCtx(t, time.Minute)
	created, err := k.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(created.Status.Allocatable) == 0 {
		created.Status = n.Status
		if _, err := k.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// markDeploymentAvailable sets a Deployment's status as its controller would once its pods
// run: no kubelet runs in these tests.
func markDeploymentAvailable(ctx context.Context, k kubernetes.Interface, ns, name string) error {
	d, err := k.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	r := int32(1)
	if d.Spec.Replicas != nil {
		r = *d.Spec.Replicas
	}
	now := metav1.Now()
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration: d.Generation, Replicas: r, UpdatedReplicas: r, ReadyReplicas: r, AvailableReplicas: r,
		Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now},
			{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", LastUpdateTime: now, LastTransitionTime: now},
		},
	}
	_, err = k.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{})
	return err
}

// configMapData reads a ConfigMap's data, or nil when it does not exist.
func configMapData(ctx context.Context, k kubernetes.Interface, ns, name string) (map[string]string, error) {
	cm, err := k.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if cm.Data == nil {
		return map[string]string{}, nil
	}
	return cm.Data, nil
}

// indent prefixes every line of s, for YAML block scalars.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix) + "\n"
}

// bundleYAML builds a Bundle manifest with inline resources.
func bundleYAML(name, options string, resources map[string]string, targets string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: %s\nkind: Bundle\nmetadata:\n  name: %s\nspec:\n", api.APIVersion, name)
	if options != "" {
		b.WriteString(indent(options, "  "))
	}
	b.WriteString("  resources:\n")
	for _, n := range slices.Sorted(maps.Keys(resources)) {
		fmt.Fprintf(&b, "  - name: %s\n    content: |\n%s", n, indent(resources[n], "      "))
	}
	b.WriteString("  targets:\n" + indent(targets, "  "))
	return b.String()
}
