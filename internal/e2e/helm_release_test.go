package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	chartv3 "helm.sh/helm/v3/pkg/chart"
	releasev3 "helm.sh/helm/v3/pkg/release"
	driverv3 "helm.sh/helm/v3/pkg/storage/driver"
	helmtime "helm.sh/helm/v3/pkg/time"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/internal/agent/apply"
	"flotilla.dev/internal/testenv/kube"
)

// helmVersion is the helm CLI that hack/helm-binary.sh builds.
const helmVersion = "v4.3.1"

// helmCLI returns the helm binary hack/helm-binary.sh built, skipping the test without
// it (failing it under CI=true).
func helmCLI(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FLOTILLA_HELM_BIN")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(home, ".cache", "flotilla", "helm-"+helmVersion)
	}
	path := filepath.Join(dir, "helm")
	if fi, err := os.Stat(path); err == nil && fi.Mode()&0o111 != 0 {
		return path
	}
	msg := fmt.Sprintf("no helm %s at %s: build it with hack/helm-binary.sh (set FLOTILLA_HELM_BIN to use another directory)", helmVersion, path)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

const greetingTemplate = `apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cfg
data:
  greeting: {{ .Values.greeting | quote }}
`

// greetingChart is a chart as bundle.Render gives it to the agent: Helm v4's chart type.
func greetingChart() *chart.Chart {
	return &chart.Chart{
		Metadata:  &chart.Metadata{APIVersion: chart.APIVersionV2, Name: "greeting", Version: "0.1.0", AppVersion: "1.0"},
		Templates: []*common.File{{Name: "templates/configmap.yaml", Data: []byte(greetingTemplate)}},
		Values:    map[string]any{"greeting": "hello"},
	}
}

// greetingChartV3 is the same chart in Helm 3's type, for releases written as Helm 3 does.
func greetingChartV3() *chartv3.Chart {
	return &chartv3.Chart{
		Metadata:  &chartv3.Metadata{APIVersion: chartv3.APIVersionV2, Name: "greeting", Version: "0.1.0", AppVersion: "1.0"},
		Templates: []*chartv3.File{{Name: "templates/configmap.yaml", Data: []byte(greetingTemplate)}},
		Values:    map[string]any{"greeting": "hello"},
	}
}

type helmEnv struct {
	cluster *kube.Cluster
	kube    kubernetes.Interface
	applier *apply.Applier
	helm    string
}

func startHelmEnv(t *testing.T) *helmEnv {
	t.Helper()
	c := kube.StartCluster(t, kube.StartEtcd(t), kube.Options{})
	a, err := apply.New(apply.Config{RESTConfig: c.RESTConfig(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &helmEnv{cluster: c, kube: kubernetes.NewForConfigOrDie(c.RESTConfig()), applier: a}
}

func (e *helmEnv) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.helm, append(args, "--kubeconfig", e.cluster.KubeconfigPath())...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (e *helmEnv) apply(t *testing.T, d apply.Deployment, want apply.State) {
	t.Helper()
	res, err := e.applier.Apply(t.Context(), d)
	if err != nil || res.State != want {
		t.Fatalf("Apply(%s): %s %q, %v; want %s", d.ID, res.State, res.Message, err, want)
	}
}

func (e *helmEnv) status(t *testing.T, d apply.Deployment) apply.Result {
	t.Helper()
	res, err := e.applier.Status(t.Context(), d)
	if err != nil {
		t.Fatalf("Status(%s): %v", d.ID, err)
	}
	return res
}

func (e *helmEnv) configMap(t *testing.T, ns, name string) *corev1.ConfigMap {
	t.Helper()
	cm, err := e.kube.CoreV1().ConfigMaps(ns).Get(t.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// The real helm CLI sees the agent's releases as its own: list, history and get values
// agree with what the agent did; a helm upgrade is noticed and undone by the agent; helm
// uninstall removes the release.
func TestHelmCLIAgreesWithAgent(t *testing.T) {
	helm := helmCLI(t)
	e := startHelmEnv(t)
	e.helm = helm
	const ns, name = "cli", "web"
	d := apply.Deployment{ID: "fleet-default/web", Hash: "1", DefaultNamespace: ns, Helm: &apply.HelmRelease{
		ReleaseName: name, Chart: greetingChart(), Values: map[string]any{"greeting": "hi"},
	}}
	e.apply(t, d, apply.Ready)
	d.Hash, d.Helm.Values = "2", map[string]any{"greeting": "hi again"}
	e.apply(t, d, apply.Ready)

	var list []struct{ Name, Namespace, Revision, Status, Chart string }
	if err := json.Unmarshal([]byte(e.run(t, "list", "-A", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != name || list[0].Namespace != ns || list[0].Revision != "2" || list[0].Status != "deployed" || list[0].Chart != "greeting-0.1.0" {
		t.Errorf("helm list -A: %+v, want %s/%s revision 2 deployed greeting-0.1.0", list, ns, name)
	}
	var hist []struct {
		Revision int
		Status   string
	}
	if err := json.Unmarshal([]byte(e.run(t, "history", name, "-n", ns, "-o", "json")), &hist); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(hist) != "[{1 superseded} {2 deployed}]" {
		t.Errorf("helm history: %v, want revision 1 superseded and 2 deployed", hist)
	}
	var vals map[string]any
	if err := json.Unmarshal([]byte(e.run(t, "get", "values", name, "-n", ns, "-o", "json")), &vals); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(vals) != "map[greeting:hi again]" {
		t.Errorf("helm get values: %v, want greeting: hi again", vals)
	}

	// helm upgrade by hand: the agent reports it out of sync and puts the bundle's values
	// back in a new revision. The agent owns the fields it applied (server-side apply), so
	// a person's upgrade that changes them must force the conflicts, as with kubectl.
	dir := t.TempDir()
	if err := chartutil.SaveDir(greetingChart(), dir); err != nil {
		t.Fatal(err)
	}
	e.run(t, "upgrade", name, filepath.Join(dir, "greeting"), "-n", ns, "--set", "greeting=by hand", "--force-conflicts")
	if cm := e.configMap(t, ns, name+"-cfg"); cm == nil || cm.Data["greeting"] != "by hand" {
		t.Fatalf("ConfigMap after helm upgrade: %v", cm)
	}
	if res := e.status(t, d); res.State != apply.OutOfSync {
		t.Errorf("Status after helm upgrade: %s %q, want OutOfSync", res.State, res.Message)
	}
	e.apply(t, d, apply.Ready)
	if cm := e.configMap(t, ns, name+"-cfg"); cm == nil || cm.Data["greeting"] != "hi again" {
		t.Errorf("ConfigMap after the agent took the release back: %v", cm)
	}
	if err := json.Unmarshal([]byte(e.run(t, "history", name, "-n", ns, "-o", "json")), &hist); err != nil {
		t.Fatal(err)
	}
	if len(hist) != 4 || hist[3].Revision != 4 || hist[3].Status != "deployed" {
		t.Errorf("helm history after the agent's upgrade: %v, want revision 4 deployed", hist)
	}

	// helm uninstall: the release and its objects go, and the agent sees it missing.
	e.run(t, "uninstall", name, "-n", ns)
	if cm := e.configMap(t, ns, name+"-cfg"); cm != nil {
		t.Error("ConfigMap survived helm uninstall")
	}
	if res := e.status(t, d); res.State != apply.Modified || !strings.Contains(res.Message, "missing") {
		t.Errorf("Status after helm uninstall: %s %q, want Modified (release missing)", res.State, res.Message)
	}
	if out := e.run(t, "list", "-A", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("helm list after uninstall: %q", out)
	}
}

// A release that an earlier agent wrote itself (Helm 3's Secret layout, objects
// server-side applied with the agent's field manager) is upgraded in place: a new
// revision, the same objects (same UIDs), not a reinstall.
func TestHelmTakesOverV3Release(t *testing.T) {
	e := startHelmEnv(t)
	ctx := t.Context()
	const ns, name = "legacy", "web"
	d := apply.Deployment{ID: "fleet-default/legacy", Hash: "1", DefaultNamespace: ns, Helm: &apply.HelmRelease{
		ReleaseName: name, Chart: greetingChart(), Values: map[string]any{"greeting": "old"},
	}}
	if _, err := e.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What the earlier agent left: the object with Helm's marks and the bundle's label,
	// applied by its field manager, and revision 1 written with Helm 3's Secret driver.
	manifest := fmt.Sprintf(`---
# Source: greeting/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: %s-cfg
  labels:
    %s: %s
  annotations:
    %s: %s
data:
  greeting: "old"
`, name, apply.LabelBundleID, apply.LabelValue(d.ID), apply.AnnotationBundleID, d.ID)
	applied := fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"%s-cfg","namespace":"%s",
"labels":{"%s":"%s","app.kubernetes.io/managed-by":"Helm"},
"annotations":{"%s":"%s","meta.helm.sh/release-name":"%s","meta.helm.sh/release-namespace":"%s"}},"data":{"greeting":"old"}}`,
		name, ns, apply.LabelBundleID, apply.LabelValue(d.ID), apply.AnnotationBundleID, d.ID, name, ns)
	force := true
	cm, err := e.kube.CoreV1().ConfigMaps(ns).Patch(ctx, name+"-cfg", types.ApplyPatchType, []byte(applied), metav1.PatchOptions{FieldManager: apply.DefaultFieldManager, Force: &force})
	if err != nil {
		t.Fatal(err)
	}
	now := helmtime.Now()
	rel := &releasev3.Release{
		Name: name, Namespace: ns, Version: 1, Chart: greetingChartV3(), Config: map[string]any{"greeting": "old"}, Manifest: manifest,
		Info: &releasev3.Info{FirstDeployed: now, LastDeployed: now, Status: releasev3.StatusDeployed, Description: "Install complete (flotilla-agent)"},
	}
	if err := driverv3.NewSecrets(e.kube.CoreV1().Secrets(ns)).Create("sh.helm.release.v1."+name+".v1", rel); err != nil {
		t.Fatal(err)
	}

	d.Helm.Values = map[string]any{"greeting": "new"}
	e.apply(t, d, apply.Ready)
	after := e.configMap(t, ns, name+"-cfg")
	if after == nil || after.UID != cm.UID || after.Data["greeting"] != "new" {
		t.Fatalf("ConfigMap after the upgrade: %v; want the same object (UID %s) with greeting new", after, cm.UID)
	}
	secrets, err := e.kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, s := range secrets.Items {
		status[s.Labels["version"]] = s.Labels["status"]
	}
	if fmt.Sprint(status) != "map[1:superseded 2:deployed]" {
		t.Errorf("release revisions after the upgrade: %v, want 1 superseded and 2 deployed", status)
	}
	if res := e.status(t, d); res.State != apply.Ready {
		t.Errorf("Status after the upgrade: %s %q", res.State, res.Message)
	}
}
