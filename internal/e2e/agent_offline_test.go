package e2e_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/e2e"
)

func cmYAML(name, v string) string {
	return "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: " + name + "\ndata:\n  v: \"" + v + "\"\n"
}

// TestAgentOffline cuts a real agent off from the real server (with a loopback proxy that
// drops connections, then by stopping the server), changes things on both sides, restarts
// the agent while it is cut off, reconnects, and checks that everything converges and that
// no status is lost. On the way it measures the agent's idle memory and the bytes of a poll
// that finds nothing changed.
func TestAgentOffline(t *testing.T) {
	clusters, kubes := startClusters(t, "edge-offline")
	k := kubes[0]
	addNode(t, k, "n-1", "arm64", "4", "4Gi")
	dataDir, addr := t.TempDir(), e2e.FreePort(t)
	serverArgs := []string{"--agent-poll-interval", "1s"}
	srv := e2e.StartServer(t, e2e.ServerOptions{DataDir: dataDir, Addr: addr, Args: serverArgs})
	cl := srv.CLI(t)
	admin := adminClient(t, srv)
	ctx := testCtx(t, 10*time.Minute)
	proxy := startProxy(t, addr)

	// A token good for one registration: were the agent to send it again, it would fail.
	tok := newToken(t, cl, "--max-uses", "1")
	stateDir := t.TempDir()
	args := []string{"--server", proxy.URL(), "--ca-checksum", srv.Checksum, "--token", tok, "--kubeconfig", clusters[0].KubeconfigPath(),
		"--labels", "env=edge", "--status-interval", "2s", "--log-level", "debug",
		// The proxy cuts TCP only; the doorbell's datagrams would still reach the server
		// (and, answered, let the agent poll only every few hours).
		"--doorbell", "off"}
	ag := startAgent(t, stateDir, args...)

	edge := "- clusterSelector:\n    matchLabels: {env: edge}\n"
	appOpts := "defaultNamespace: app\ncorrectDrift: {enabled: true}\n"
	cli(t, cl, bundleYAML("app", appOpts, map[string]string{"cm.yaml": cmYAML("app-config", "1")}, edge), "apply", "-f", "-")
	cli(t, cl, bundleYAML("cfg", "defaultNamespace: cfg\n", map[string]string{"cm.yaml": cmYAML("cfg-config", "1")}, edge), "apply", "-f", "-")
	extra := map[string]string{}
	for i := range 5 {
		extra[fmt.Sprintf("cm%d.yaml", i)] = cmYAML(fmt.Sprintf("extra-%d", i), "1")
	}
	cli(t, cl, bundleYAML("extra", "defaultNamespace: extra\n", extra, edge), "apply", "-f", "-")
	cli(t, cl, bundleYAML("hello", "defaultNamespace: hello\nhelm:\n  chart: chart\n  releaseName: hello\n", helloChart, edge), "apply", "-f", "-")
	for _, b := range []string{"app", "cfg", "extra", "hello"} {
		waitSummary(t, ctx, admin, b, 1, 1, nil)
	}

	measureIdleAgent(t, ag, proxy, addr)

	// Cut off. The agent keeps reconciling: a deleted object of a bundle that corrects
	// drift comes back without the server.
	proxy.Cut()
	time.Sleep(2 * time.Second)
	setConfigMapValue(t, ctx, k, "cfg", "cfg-config", "edited-offline")
	deleteConfigMap(t, ctx, k, "app", "app-config")
	eventually(t, time.Minute, "app-config restored while offline", func() error { return configMapIs(ctx, k, "app", "app-config", "1") })
	eventually(t, time.Minute, "cfg's drift queued on disk", func() error { return queuedState(stateDir, "fleet-default/cfg", api.StateModified) })
	// Meanwhile on the server, app gets new content.
	cli(t, cl, bundleYAML("app", appOpts, map[string]string{"cm.yaml": cmYAML("app-config", "2")}, edge), "apply", "-f", "-")
	waitSummary(t, ctx, admin, "app", 1, 0, map[string]int{api.StateOutOfSync: 1})
	if s, err := bundleSummary(ctx, admin, "cfg"); err != nil || s.Modified != 0 {
		t.Fatalf("cfg summary %+v, %v: the server cannot know of the edit yet", s, err)
	}

	// The agent restarts while cut off: it starts from its persisted desired state and
	// content, and keeps the cluster there.
	if code := ag.stop(t); code != 0 {
		t.Errorf("agent exited %d on SIGTERM, want 0", code)
	}
	deleteConfigMap(t, ctx, k, "app", "app-config")
	ag = startAgent(t, stateDir, args...)
	eventually(t, time.Minute, "app-config restored by the restarted agent, still offline", func() error {
		return configMapIs(ctx, k, "app", "app-config", "1")
	})
	if logs := ag.logs.String(); !strings.Contains(logs, "starting from the persisted desired state") {
		t.Errorf("the restarted agent did not start from its persisted state:\n%s", logs)
	}

	// Back online: the new content is applied, and the status queued across the restart
	// reaches the server.
	proxy.Restore()
	eventually(t, time.Minute, "app's new content applied", func() error { return configMapIs(ctx, k, "app", "app-config", "2") })
	waitSummary(t, ctx, admin, "app", 1, 1, nil)
	eventually(t, time.Minute, "cfg reported Modified", func() error {
		s, err := bundleSummary(ctx, admin, "cfg")
		if err != nil {
			return err
		}
		if err := summaryIs(s, 1, 0, map[string]int{api.StateModified: 1}); err != nil {
			return err
		}
		if len(s.NonReadyResources) == 0 || !strings.Contains(s.NonReadyResources[0].Message, "ConfigMap cfg/cfg-config") {
			return fmt.Errorf("message %+v does not name the ConfigMap", s.NonReadyResources)
		}
		return nil
	})
	eventually(t, time.Minute, "an empty status queue", func() error { return queueEmpty(stateDir) })

	// Now the server goes away. Meanwhile the cluster changes twice (the edit undone, and an
	// object of a bundle without correctDrift deleted); the agent queues the latest state.
	srv.Stop(t)
	setConfigMapValue(t, ctx, k, "cfg", "cfg-config", "1")
	deleteConfigMap(t, ctx, k, "extra", "extra-3")
	eventually(t, time.Minute, "cfg Ready queued", func() error { return queuedState(stateDir, "fleet-default/cfg", api.StateReady) })
	eventually(t, time.Minute, "extra Modified queued", func() error { return queuedState(stateDir, "fleet-default/extra", api.StateModified) })
	srv2 := e2e.StartServer(t, e2e.ServerOptions{DataDir: dataDir, Addr: addr, Args: serverArgs})
	srv2.Token, srv2.Checksum = srv.Token, srv.Checksum // printed on the first start only
	admin = adminClient(t, srv2)
	waitSummary(t, ctx, admin, "cfg", 1, 1, nil)
	eventually(t, time.Minute, "extra reported Modified", func() error {
		s, err := bundleSummary(ctx, admin, "extra")
		if err != nil {
			return err
		}
		if err := summaryIs(s, 1, 0, map[string]int{api.StateModified: 1}); err != nil {
			return err
		}
		if !strings.Contains(s.NonReadyResources[0].Message, "extra-3") {
			return fmt.Errorf("message %q does not name extra-3", s.NonReadyResources[0].Message)
		}
		return nil
	})
	for _, b := range []string{"app", "hello"} {
		waitSummary(t, ctx, admin, b, 1, 1, nil)
	}
	eventually(t, time.Minute, "an empty status queue", func() error { return queueEmpty(stateDir) })
	if code := ag.stop(t); code != 0 {
		t.Errorf("agent exited %d on SIGTERM, want 0", code)
	}
	if logs := ag.logs.String(); strings.Contains(logs, "registering") || strings.Contains(logs, "msg=registered") {
		t.Errorf("the restarted agent registered again:\n%s", logs)
	}

	// The credential is kept private and never logged, nor is the registration token.
	credFile := filepath.Join(stateDir, "credentials.json")
	fi, err := os.Stat(credFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", credFile, fi.Mode().Perm())
	}
	var creds struct{ Credential string }
	data, _ := os.ReadFile(credFile)
	if err := json.Unmarshal(data, &creds); err != nil || creds.Credential == "" {
		t.Fatalf("reading the stored credential: %v", err)
	}
	if logs := ag.logs.String(); strings.Contains(logs, creds.Credential) || strings.Contains(logs, tok) {
		t.Error("the agent logged its credential or the registration token")
	}
}

// measureIdleAgent reports the agent's resident memory once it has settled, and the bytes a
// poll that finds nothing changed costs on the wire (TLS included), counted by the proxy.
func measureIdleAgent(t *testing.T, ag *agentProc, proxy *tcpProxy, serverAddr string) {
	t.Helper()
	time.Sleep(10 * time.Second) // let the agent settle
	polls := func() int { return strings.Count(ag.logs.String(), "desired state unchanged") }
	reports := func() int { return strings.Count(ag.logs.String(), "reported status") }
	up0, down0 := proxy.bytes()
	p0, r0, conns0 := polls(), reports(), proxy.accepted.Load()
	time.Sleep(15 * time.Second)
	up1, down1 := proxy.bytes()
	p1, r1, conns1 := polls(), reports(), proxy.accepted.Load()
	rss, anon, file := ag.memKiB(t)

	proto := "unknown"
	if c, err := tls.Dial("tcp", serverAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}); err == nil {
		proto = c.ConnectionState().NegotiatedProtocol
		c.Close()
	}
	n := p1 - p0
	if n == 0 {
		t.Fatalf("no unchanged polls in 15s")
	}
	if r1 != r0 || conns1 != conns0 {
		t.Logf("note: %d status reports and %d new connections in the window also count", r1-r0, conns1-conns0)
	}
	t.Logf("FIGURE agent idle RSS (4 deployments, settled): %.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB)",
		float64(rss)/1024, float64(anon)/1024, float64(file)/1024)
	t.Logf("FIGURE unchanged poll on the wire (TLS, %s, kept-alive connection): %d bytes (request %d + response %d), averaged over %d polls",
		proto, (up1-up0+down1-down0)/int64(n), (up1-up0)/int64(n), (down1-down0)/int64(n), n)
	if rss == 0 {
		t.Error("could not read the agent's RSS")
	}
}

func deleteConfigMap(t *testing.T, ctx context.Context, k kubernetes.Interface, ns, name string) {
	t.Helper()
	if err := k.CoreV1().ConfigMaps(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func configMapIs(ctx context.Context, k kubernetes.Interface, ns, name, v string) error {
	d, err := configMapData(ctx, k, ns, name)
	if err != nil {
		return err
	}
	if d == nil {
		return fmt.Errorf("configmap %s/%s does not exist", ns, name)
	}
	if d["v"] != v {
		return fmt.Errorf("configmap %s/%s data %v, want v=%s", ns, name, d, v)
	}
	return nil
}

// agentQueue is the part of the agent's status.json the tests read.
type agentQueue struct {
	NextSeq   int64                           `json:"nextSeq"`
	Pending   map[string]api.DeploymentStatus `json:"pending"`
	Removed   []string                        `json:"removed"`
	Inventory *api.ClusterInventory           `json:"inventory"`
}

func readAgentQueue(stateDir string) (agentQueue, error) {
	var q agentQueue
	data, err := os.ReadFile(filepath.Join(stateDir, "status.json"))
	if err != nil {
		return q, err
	}
	return q, json.Unmarshal(data, &q)
}

func queuedState(stateDir, bundle, state string) error {
	q, err := readAgentQueue(stateDir)
	if err != nil {
		return err
	}
	if got := q.Pending[bundle].State; got != state {
		return fmt.Errorf("queued state of %s is %q, want %q", bundle, got, state)
	}
	return nil
}

func queueEmpty(stateDir string) error {
	q, err := readAgentQueue(stateDir)
	if err != nil {
		return err
	}
	if len(q.Pending) > 0 || len(q.Removed) > 0 || q.Inventory != nil {
		return errors.New("status still queued")
	}
	return nil
}
