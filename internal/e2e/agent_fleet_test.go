package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/release"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/agent"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

func webConfigMap(v string) string {
	return "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  v: \"" + v + "\"\n"
}

const webDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example/web:1
`

var helloChart = map[string]string{
	"chart/Chart.yaml":  "apiVersion: v2\nname: hello\nversion: 0.1.0\n",
	"chart/values.yaml": "greeting: hello\n",
	"chart/templates/configmap.yaml": `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-greeting
data:
  greeting: {{ .Values.greeting | quote }}
`,
}

// TestAgentFleet runs the real server and two real clusters, each with a real
// flotilla-agent labelled differently, and follows bundles through targeting, apply,
// readiness, drift, a label change, Helm, re-registration and revocation.
func TestAgentFleet(t *testing.T) {
	clusters, kubes := startClusters(t, "edge-a", "edge-b")
	ka, kb := kubes[0], kubes[1]
	addNode(t, ka, "a-1", "amd64", "2", "4Gi")
	addNode(t, ka, "a-2", "arm64", "4", "8Gi")
	addNode(t, kb, "b-1", "arm64", "4", "4Gi")
	uidA, uidB := clusterUID(t, ka), clusterUID(t, kb)

	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s"}})
	cl := srv.CLI(t)
	admin := adminClient(t, srv)
	ctx := testCtx(t, 10*time.Minute)

	tok := newToken(t, cl, "--ttl", "1h", "--max-uses", "2", "--labels", "fleet=e2e")
	args := func(c *kube.Cluster, labels, token string) []string {
		return []string{"--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", token, "--kubeconfig", c.KubeconfigPath(),
			"--labels", labels, "--status-interval", "2s", "--log-level", "debug"}
	}
	dirA := t.TempDir()
	agentA := startAgent(t, dirA, args(clusters[0], "env=prod,site=a", tok)...)
	agentB := startAgent(t, t.TempDir(), args(clusters[1], "env=dev,site=b", tok)...)

	// Registration: one Cluster each, with the agent's and the token's labels, and an
	// inventory of the cluster.
	var nameA, nameB string
	eventually(t, time.Minute, "both clusters registered with their inventory", func() error {
		oa, sa, err := serverCluster(ctx, admin, uidA)
		if err != nil {
			return err
		}
		ob, sb, err := serverCluster(ctx, admin, uidB)
		if err != nil {
			return err
		}
		nameA, nameB = oa.Metadata.Name, ob.Metadata.Name
		if l := oa.Metadata.Labels; l["env"] != "prod" || l["site"] != "a" || l["fleet"] != "e2e" {
			return fmt.Errorf("cluster A labels %v", l)
		}
		// The agents use the server's doorbell, on by default on both sides.
		want := api.ClusterInventory{KubernetesVersion: kube.Version, NodeCount: 2, Architectures: []string{"amd64", "arm64"}, Architecture: "mixed",
			AllocatableCPU: "6", AllocatableMemory: "12Gi", Doorbell: api.DoorbellOn}
		if err := inventoryIs(sa.Inventory, want); err != nil {
			return fmt.Errorf("cluster A: %w", err)
		}
		want = api.ClusterInventory{KubernetesVersion: kube.Version, NodeCount: 1, Architectures: []string{"arm64"}, Architecture: "arm64",
			AllocatableCPU: "4", AllocatableMemory: "4Gi", Doorbell: api.DoorbellOn}
		if err := inventoryIs(sb.Inventory, want); err != nil {
			return fmt.Errorf("cluster B: %w", err)
		}
		if sa.LastSeen == nil || sb.LastSeen == nil {
			return errors.New("no last-seen time yet")
		}
		return nil
	})
	out := cli(t, cl, "", "get", "clusters", "-o", "wide")
	if !strings.Contains(lineOf(out, nameA), kube.Version) || !strings.Contains(lineOf(out, nameA), "mixed") {
		t.Errorf("flotilla get clusters -o wide does not show cluster A's inventory:\n%s", out)
	}

	// A bundle targeted at env=prod reaches cluster A only.
	webResources := map[string]string{"configmap.yaml": webConfigMap("1"), "deployment.yaml": webDeployment}
	prod := "- clusterSelector:\n    matchLabels: {env: prod}\n"
	cli(t, cl, bundleYAML("web", "defaultNamespace: web\n", webResources, prod), "apply", "-f", "-")
	eventually(t, time.Minute, "web applied in cluster A", func() error {
		return hasWeb(ctx, ka, "1")
	})
	if err := hasNoWeb(ctx, kb); err != nil {
		t.Errorf("cluster B: %v", err)
	}

	// Readiness: no kubelet runs, so the Deployment stays NotReady, and says so, until the
	// test sets its status as the deployment controller would.
	eventually(t, time.Minute, "web reported NotReady", func() error {
		s, err := bundleSummary(ctx, admin, "web")
		if err != nil {
			return err
		}
		if err := summaryIs(s, 1, 0, map[string]int{api.StateNotReady: 1}); err != nil {
			return err
		}
		if len(s.NonReadyResources) != 1 || !strings.Contains(s.NonReadyResources[0].Message, "Deployment web/web") {
			return fmt.Errorf("non-ready resources %+v do not name the Deployment", s.NonReadyResources)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // periodic re-checks must not make it Ready
	if s, err := bundleSummary(ctx, admin, "web"); err != nil || s.Ready != 0 {
		t.Fatalf("web summary %+v, %v: want still not ready", s, err)
	}
	if err := markDeploymentAvailable(ctx, ka, "web", "web"); err != nil {
		t.Fatal(err)
	}
	waitSummary(t, ctx, admin, "web", 1, 1, nil)
	if out := cli(t, cl, "", "get", "bundles"); !strings.Contains(lineOf(out, "web"), "1/1") {
		t.Errorf("flotilla get bundles does not show web 1/1:\n%s", out)
	}
	if out := cli(t, cl, "", "get", "clusters"); !strings.Contains(lineOf(out, nameA), "1/1") {
		t.Errorf("flotilla get clusters does not show cluster A's bundle ready:\n%s", out)
	}

	// Drift: an edit in the cluster is reported Modified, naming the object.
	setConfigMapValue(t, ctx, ka, "web", "web-config", "tampered")
	eventually(t, time.Minute, "web reported Modified", func() error {
		s, err := bundleSummary(ctx, admin, "web")
		if err != nil {
			return err
		}
		if err := summaryIs(s, 1, 0, map[string]int{api.StateModified: 1}); err != nil {
			return err
		}
		if len(s.NonReadyResources) != 1 || !strings.Contains(s.NonReadyResources[0].Message, "ConfigMap web/web-config") {
			return fmt.Errorf("non-ready resources %+v do not name the ConfigMap", s.NonReadyResources)
		}
		return nil
	})
	// With correctDrift the agent undoes edits and deletions.
	cli(t, cl, bundleYAML("web", "defaultNamespace: web\ncorrectDrift: {enabled: true}\n", webResources, prod), "apply", "-f", "-")
	eventually(t, time.Minute, "the edit undone", func() error { return hasWeb(ctx, ka, "1") })
	waitSummary(t, ctx, admin, "web", 1, 1, nil)
	if err := ka.CoreV1().ConfigMaps("web").Delete(ctx, "web-config", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the deleted ConfigMap restored", func() error { return hasWeb(ctx, ka, "1") })
	waitSummary(t, ctx, admin, "web", 1, 1, nil)

	// A label change on the server moves the bundle from A to B.
	setClusterLabel(t, cl, nameA, "env", "dev")
	setClusterLabel(t, cl, nameB, "env", "prod")
	eventually(t, time.Minute, "web moved to cluster B", func() error {
		if err := hasWeb(ctx, kb, "1"); err != nil {
			return fmt.Errorf("cluster B: %w", err)
		}
		if err := hasNoWeb(ctx, ka); err != nil {
			return fmt.Errorf("cluster A: %w", err)
		}
		return nil
	})
	eventually(t, time.Minute, "B's Deployment marked available", func() error { return markDeploymentAvailable(ctx, kb, "web", "web") })
	waitSummary(t, ctx, admin, "web", 1, 1, nil)

	// A Helm chart given inline is installed as a Helm release, values templated with the
	// cluster's labels.
	helmOpts := "defaultNamespace: hello\nhelm:\n  chart: chart\n  releaseName: hello\n  values:\n    greeting: hi from ${ .ClusterLabels.site }\n"
	cli(t, cl, bundleYAML("hello", helmOpts, helloChart, "- clusterSelector:\n    matchLabels: {env: dev}\n"), "apply", "-f", "-")
	eventually(t, time.Minute, "the hello release in cluster A", func() error {
		rels, err := helmReleases(clusters[0].KubeconfigPath(), "hello")
		if err != nil {
			return err
		}
		if len(rels) != 1 || rels[0].Name != "hello" || rels[0].Info.Status != release.StatusDeployed {
			return fmt.Errorf("releases %v", releaseNames(rels))
		}
		d, err := configMapData(ctx, ka, "hello", "hello-greeting")
		if err != nil || d["greeting"] != "hi from a" {
			return fmt.Errorf("hello-greeting data %v, %v", d, err)
		}
		return nil
	})
	waitSummary(t, ctx, admin, "hello", 1, 1, nil)
	if rels, _ := helmReleases(clusters[1].KubeconfigPath(), "hello"); len(rels) != 0 {
		t.Errorf("cluster B has releases %v", releaseNames(rels))
	}
	if helm, err := exec.LookPath("helm"); err == nil {
		out, err := exec.Command(helm, "list", "-A", "--kubeconfig", clusters[0].KubeconfigPath()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hello") {
			t.Errorf("helm list: %v\n%s", err, out)
		}
	} else {
		t.Log("no helm binary; checked the release with the Helm SDK only")
	}

	// The same cluster registering again (state wiped) with a token bound to its Cluster gets
	// its Cluster back; an unbound token may not take an existing Cluster over.
	if code := agentA.stop(t); code != 0 {
		t.Errorf("agent A exited %d on SIGTERM, want 0", code)
	}
	if err := os.RemoveAll(dirA); err != nil {
		t.Fatal(err)
	}
	agentA = startAgent(t, t.TempDir(), args(clusters[0], "env=prod,site=a", newToken(t, cl, "--max-uses", "1", "--cluster", nameA))...)
	eventually(t, time.Minute, "agent A registered again and reporting", func() error {
		logs := agentA.logs.String()
		if !strings.Contains(logs, "msg=registered") {
			return errors.New("no registration logged")
		}
		if !strings.Contains(logs, "bundle=fleet-default/hello state=Ready") {
			return errors.New("hello not reported Ready by the new agent")
		}
		return nil
	})
	l, err := admin.ListAll(ctx, api.KindCluster, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 {
		t.Errorf("%d clusters after re-registering one, want 2", len(l.Items))
	}
	if o, _, err := serverCluster(ctx, admin, uidA); err != nil || o.Metadata.Name != nameA || o.Metadata.Labels["env"] != "dev" {
		t.Errorf("re-registered cluster: %v, %v; want %s with the operator's env=dev kept", o, err, nameA)
	}
	// It picks up where it was: the release is there, untouched, and reported Ready.
	waitSummary(t, ctx, admin, "hello", 1, 1, nil)
	if rels, err := helmReleases(clusters[0].KubeconfigPath(), "hello"); err != nil || len(rels) != 1 || rels[0].Version != 1 {
		t.Errorf("after re-registration: releases %v, %v; want hello at revision 1", releaseNames(rels), err)
	}

	// Deleting a Cluster revokes its credential: its agent says so and exits non-zero.
	cli(t, cl, "", "delete", "cluster", nameB)
	if code := agentB.wait(time.Minute); code != agent.ExitRevoked {
		t.Fatalf("agent B exit code %d after its cluster was deleted, want %d", code, agent.ExitRevoked)
	}
	if logs := agentB.logs.String(); !strings.Contains(logs, "this cluster was deleted from the Flotilla server; its credential is revoked") {
		t.Errorf("agent B did not say its cluster was deleted:\n%s", logs)
	}

	// A used-up token gets a clear refusal, and the agent exits.
	late := startAgent(t, t.TempDir(), args(clusters[1], "env=dev", tok)...)
	if code := late.wait(time.Minute); code != agent.ExitRegistration {
		t.Fatalf("agent with a used-up token exited %d, want %d", code, agent.ExitRegistration)
	}
	if logs := late.logs.String(); !strings.Contains(logs, "used up") {
		t.Errorf("agent with a used-up token did not say so:\n%s", logs)
	}
}

func inventoryIs(got *api.ClusterInventory, want api.ClusterInventory) error {
	if got == nil {
		return errors.New("no inventory")
	}
	if got.AgentVersion == "" {
		return errors.New("no agent version in the inventory")
	}
	g := *got
	g.AgentVersion = ""
	if fmt.Sprint(g) != fmt.Sprint(want) {
		return fmt.Errorf("inventory %+v, want %+v", g, want)
	}
	return nil
}

func waitSummary(t *testing.T, ctx context.Context, c interface {
	Get(context.Context, string, string, string) (*api.Object, error)
}, name string, desired, ready int, states map[string]int) {
	t.Helper()
	eventually(t, time.Minute, "bundle "+name+" summary", func() error {
		o, err := c.Get(ctx, api.KindBundle, api.DefaultNamespace, name)
		if err != nil {
			return err
		}
		var st api.BundleStatus
		json.Unmarshal(o.Status, &st)
		if st.Summary == nil {
			return errors.New("no summary yet")
		}
		return summaryIs(st.Summary, desired, ready, states)
	})
}

// lineOf returns the first line of a table that contains word.
func lineOf(table, word string) string {
	for _, l := range strings.Split(table, "\n") {
		if strings.Contains(l, word) {
			return l
		}
	}
	return ""
}

func hasWeb(ctx context.Context, k kubernetes.Interface, v string) error {
	d, err := configMapData(ctx, k, "web", "web-config")
	if err != nil {
		return err
	}
	if d["v"] != v {
		return fmt.Errorf("web-config data %v, want v=%s", d, v)
	}
	if _, err := k.AppsV1().Deployments("web").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		return fmt.Errorf("deployment web: %w", err)
	}
	return nil
}

func hasNoWeb(ctx context.Context, k kubernetes.Interface) error {
	if _, err := k.CoreV1().ConfigMaps("web").Get(ctx, "web-config", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return fmt.Errorf("web-config: %v, want not found", err)
	}
	if _, err := k.AppsV1().Deployments("web").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return fmt.Errorf("deployment web: %v, want not found", err)
	}
	return nil
}

func setConfigMapValue(t *testing.T, ctx context.Context, k kubernetes.Interface, ns, name, v string) {
	t.Helper()
	cm, err := k.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["v"] = v
	if _, err := k.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// setClusterLabel changes a Cluster's label as an operator would: get, edit, apply.
func setClusterLabel(t *testing.T, cl *e2e.CLI, name, key, value string) {
	t.Helper()
	var o map[string]any
	if err := json.Unmarshal([]byte(cli(t, cl, "", "get", "cluster", name, "-o", "json")), &o); err != nil {
		t.Fatal(err)
	}
	meta := o["metadata"].(map[string]any)
	labels, _ := meta["labels"].(map[string]any)
	if labels == nil {
		labels = map[string]any{}
	}
	labels[key] = value
	meta["labels"] = labels
	raw, _ := json.Marshal(o)
	cli(t, cl, string(raw), "apply", "-f", "-")
}

// helmReleases lists the Helm releases of a namespace with the Helm SDK, as `helm list` does.
func helmReleases(kubeconfig, ns string) ([]*release.Release, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &ns
	var cfg action.Configuration
	if err := cfg.Init(flags, ns, "secret", func(string, ...any) {}); err != nil {
		return nil, err
	}
	return action.NewList(&cfg).Run()
}

func releaseNames(rels []*release.Release) []string {
	var out []string
	for _, r := range rels {
		out = append(out, fmt.Sprintf("%s/%s v%d %s", r.Namespace, r.Name, r.Version, r.Info.Status))
	}
	return out
}
