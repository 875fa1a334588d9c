package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/agent"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// TestRebuiltEdgeClusterIsReadopted: an edge cluster is rebuilt from scratch — a fresh
// kube-apiserver (a new kube-system UID) and an agent with no state. Registering with a token
// the operator bound to its Cluster for replacement, it comes back as the same Cluster: name,
// labels, bundles and bindings reach the new cluster, and the old cluster's credential is
// refused.
func TestRebuiltEdgeClusterIsReadopted(t *testing.T) {
	etcd := kube.StartEtcd(t)
	before := kube.StartCluster(t, etcd, kube.Options{Name: "edge-before"})
	kBefore := kubernetes.NewForConfigOrDie(before.RESTConfig())
	kubectlBin := filepath.Join(kube.Binaries(t), "kubectl")

	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s"}})
	cl := srv.CLI(t)
	admin := adminClient(t, srv)
	ctx := testCtx(t, 10*time.Minute)
	agentArgs := func(kc *kube.Cluster, token string) []string {
		return []string{"--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", token, "--kubeconfig", kc.KubeconfigPath(),
			"--labels", "env=edge", "--status-interval", "2s"}
	}
	oldState := t.TempDir()
	firstToken := newToken(t, cl, "--ttl", "1h")
	oldAgent := startAgent(t, oldState, agentArgs(before, firstToken)...)
	var name, firstUID string
	eventually(t, time.Minute, "the cluster registered", func() error {
		o, _, err := serverCluster(ctx, admin, clusterUID(t, kBefore))
		if err == nil {
			name, firstUID = o.Metadata.Name, o.Metadata.UID
		}
		return err
	})
	setClusterLabel(t, cl, name, "site", "shop-17")

	// What the cluster holds: a bundle for env=edge, and alice bound on the clusters of site
	// shop-17.
	cli(t, cl, bundleYAML("web", "defaultNamespace: web\n", map[string]string{"configmap.yaml": webConfigMap("1")},
		"- clusterSelector:\n    matchLabels: {env: edge}\n"), "apply", "-f", "-")
	raw, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleClusterMember,
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"site": "shop-17"}}}})
	if _, _, err := admin.Apply(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: "alice-shop-17"}, Spec: raw}, false); err != nil {
		t.Fatal(err)
	}
	aliceCan := func(kc *kube.Cluster) error {
		out, err := exec.CommandContext(ctx, kubectlBin, "--kubeconfig", kc.KubeconfigPath(), "auth", "can-i", "list", "nodes", "--as", rbac.UserPrefix+"alice").Output()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		if strings.TrimSpace(string(out)) != "yes" {
			return fmt.Errorf("alice may not list nodes: %q", out)
		}
		return nil
	}
	hasConfig := func(k kubernetes.Interface) error {
		d, err := configMapData(ctx, k, "web", "web-config")
		if err != nil || d["v"] != "1" {
			return fmt.Errorf("web-config: %v, %v", d, err)
		}
		return nil
	}
	eventually(t, time.Minute, "web and alice's access on the cluster", func() error {
		if err := hasConfig(kBefore); err != nil {
			return err
		}
		return aliceCan(before)
	})
	if code := oldAgent.stop(t); code != 0 {
		t.Errorf("the agent exited %d on SIGTERM, want 0", code)
	}

	// The box is rebuilt: a new cluster, an agent without state, a token bound for replacement.
	after := kube.StartCluster(t, etcd, kube.Options{Name: "edge-after"})
	kAfter := kubernetes.NewForConfigOrDie(after.RESTConfig())
	newUID := clusterUID(t, kAfter)
	tok := newToken(t, cl, "--cluster", name, "--replace", "--max-uses", "1", "--ttl", "1h")
	newAgent := startAgent(t, t.TempDir(), agentArgs(after, tok)...)
	eventually(t, 2*time.Minute, "web and alice's access on the rebuilt cluster", func() error {
		if err := hasConfig(kAfter); err != nil {
			return err
		}
		return aliceCan(after)
	})
	o, _, err := serverCluster(ctx, admin, newUID)
	if err != nil {
		t.Fatalf("the rebuilt cluster on the server: %v\nagent:\n%s", err, newAgent.logs.String())
	}
	if o.Metadata.Name != name || o.Metadata.UID == firstUID || o.Metadata.Labels["site"] != "shop-17" || o.Metadata.Labels["env"] != "edge" {
		t.Errorf("re-adopted Cluster %s (uid %s, was %s) labels %v; want %s with site=shop-17 kept", o.Metadata.Name, o.Metadata.UID, firstUID, o.Metadata.Labels, name)
	}
	l, err := admin.ListAll(ctx, api.KindCluster, "", "")
	if err != nil || len(l.Items) != 1 {
		t.Errorf("%d clusters after the rebuild, want 1 (%v)", len(l.Items), err)
	}

	// The old cluster's agent, should the old box come back, is refused and stops.
	stale := startAgent(t, oldState, agentArgs(before, firstToken)...)
	if code := stale.wait(time.Minute); code != agent.ExitRevoked {
		t.Errorf("the old cluster's agent exited %d, want %d (revoked)\n%s", code, agent.ExitRevoked, stale.logs.String())
	}
}
