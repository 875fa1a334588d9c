package apply_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	helmkube "helm.sh/helm/v3/pkg/kube"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/internal/agent/apply"
	"flotilla.dev/internal/testenv/kube"
)

// env is one API server shared by the subtests of TestAgainstAPIServer:
// starting one costs seconds, and every subtest uses its own deployment IDs
// and namespaces.
type env struct {
	cluster *kube.Cluster
	applier *apply.Applier
	kube    kubernetes.Interface
	dynamic dynamic.Interface
}

func TestAgainstAPIServer(t *testing.T) {
	etcd := kube.StartEtcd(t)
	c := kube.StartCluster(t, etcd, kube.Options{})
	a, err := apply.New(apply.Config{RESTConfig: c.RESTConfig(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cluster: c, applier: a, kube: kubernetes.NewForConfigOrDie(c.RESTConfig()), dynamic: dynamic.NewForConfigOrDie(c.RESTConfig())}

	t.Run("ApplyCreatesObjectsAndNamespace", e.testApplyCreates)
	t.Run("Prune", e.testPrune)
	t.Run("Remove", e.testRemove)
	t.Run("Drift", e.testDrift)
	t.Run("ComparePatches", e.testComparePatches)
	t.Run("Readiness", e.testReadiness)
	t.Run("CRDAndCustomResource", e.testCRD)
	t.Run("Helm", e.testHelm)
	t.Run("HelmStorage", e.testHelmStorage)
	t.Run("HelmUninstallByHelm", e.testHelmUninstallByHelm)
	t.Run("HelmHooksAndCRDs", e.testHelmHooksAndCRDs)
	t.Run("HelmAtomic", e.testHelmAtomic)
	t.Run("Watch", e.testWatch)
	t.Run("Figures", e.testFigures)
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

func configMap(ns, name string, data map[string]string) *unstructured.Unstructured {
	d := map[string]any{}
	for k, v := range data {
		d[k] = v
	}
	obj := map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": name}, "data": d}
	if ns != "" {
		obj["metadata"].(map[string]any)["namespace"] = ns
	}
	return &unstructured.Unstructured{Object: obj}
}

func (e *env) mustApply(t *testing.T, d apply.Deployment, want apply.State) apply.Result {
	t.Helper()
	res, err := e.applier.Apply(t.Context(), d)
	if err != nil {
		t.Fatalf("Apply(%s): %v", d.ID, err)
	}
	if res.State != want {
		t.Fatalf("Apply(%s): state %s (%s), want %s", d.ID, res.State, res.Message, want)
	}
	if res.AppliedHash != d.Hash {
		t.Errorf("Apply(%s): applied hash %q, want %q", d.ID, res.AppliedHash, d.Hash)
	}
	return res
}

func (e *env) mustStatus(t *testing.T, d apply.Deployment, want apply.State) apply.Result {
	t.Helper()
	res, err := e.applier.Status(t.Context(), d)
	if err != nil {
		t.Fatalf("Status(%s): %v", d.ID, err)
	}
	if res.State != want {
		t.Fatalf("Status(%s): state %s (%s), want %s", d.ID, res.State, res.Message, want)
	}
	return res
}

func (e *env) getCM(t *testing.T, ns, name string) (*corev1.ConfigMap, bool) {
	t.Helper()
	cm, err := e.kube.CoreV1().ConfigMaps(ns).Get(t.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("getting ConfigMap %s/%s: %v", ns, name, err)
	}
	return cm, true
}

func (e *env) testApplyCreates(t *testing.T) {
	d := apply.Deployment{
		ID:               "fleet-default/create",
		Hash:             "h1",
		DefaultNamespace: "create-ns",
		Objects: []*unstructured.Unstructured{
			configMap("", "cfg", map[string]string{"k": "v"}),
			configMap("create-other", "cfg2", map[string]string{"k": "v"}),
			{Object: map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
				"metadata": map[string]any{"name": "create-role", "namespace": "ignored-for-cluster-scoped"},
				"rules":    []any{map[string]any{"apiGroups": []any{""}, "resources": []any{"pods"}, "verbs": []any{"get"}}}}},
		},
	}
	e.mustApply(t, d, apply.Ready)

	for _, ns := range []string{"create-ns", "create-other"} {
		if _, err := e.kube.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{}); err != nil {
			t.Errorf("namespace %s: %v", ns, err)
		}
	}
	cm, ok := e.getCM(t, "create-ns", "cfg")
	if !ok {
		t.Fatal("ConfigMap create-ns/cfg was not created in the default namespace")
	}
	if got, want := cm.Labels[apply.LabelBundleID], apply.LabelValue(d.ID); got != want {
		t.Errorf("label %s = %q, want %q", apply.LabelBundleID, got, want)
	}
	if got := cm.Annotations[apply.AnnotationBundleID]; got != d.ID {
		t.Errorf("annotation %s = %q, want %q", apply.AnnotationBundleID, got, d.ID)
	}
	if !managedBy(cm.ManagedFields, apply.DefaultFieldManager, metav1.ManagedFieldsOperationApply) {
		t.Errorf("ConfigMap not server-side applied by %s: %+v", apply.DefaultFieldManager, cm.ManagedFields)
	}
	if _, err := e.kube.RbacV1().ClusterRoles().Get(t.Context(), "create-role", metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole: %v", err)
	}

	// Applying the same deployment again changes nothing, nor does a new
	// hash with the same objects: server-side apply is a no-op then.
	before := cm.ResourceVersion
	e.mustApply(t, d, apply.Ready)
	d.Hash = "h2"
	e.mustApply(t, d, apply.Ready)
	cm, _ = e.getCM(t, "create-ns", "cfg")
	if cm.ResourceVersion != before {
		t.Errorf("re-apply changed the ConfigMap: resourceVersion %s, want %s", cm.ResourceVersion, before)
	}
	e.mustStatus(t, d, apply.Ready)

	// Status of a version not applied yet.
	d.Hash = "h3"
	e.mustStatus(t, d, apply.OutOfSync)
	if res := e.mustStatus(t, apply.Deployment{ID: "never-applied"}, apply.WaitApplied); res.AppliedHash != "" {
		t.Errorf("applied hash of a deployment never applied: %q", res.AppliedHash)
	}
}

func managedBy(fields []metav1.ManagedFieldsEntry, manager string, op metav1.ManagedFieldsOperationType) bool {
	for _, f := range fields {
		if f.Manager == manager && f.Operation == op {
			return true
		}
	}
	return false
}

func (e *env) testPrune(t *testing.T) {
	d := apply.Deployment{ID: "prune", Hash: "1", DefaultNamespace: "prune", Objects: []*unstructured.Unstructured{
		configMap("", "keep", nil), configMap("", "drop", nil), configMap("", "moved", nil),
	}}
	e.mustApply(t, d, apply.Ready)

	// "moved" now belongs to another deployment, which applied it after us:
	// dropping it from ours must not delete it.
	other := apply.Deployment{ID: "prune-other", Hash: "1", DefaultNamespace: "prune", Objects: []*unstructured.Unstructured{configMap("", "moved", nil)}}
	e.mustApply(t, other, apply.Ready)

	d.Hash, d.Objects = "2", d.Objects[:1]
	e.mustApply(t, d, apply.Ready)
	for name, want := range map[string]bool{"keep": true, "drop": false, "moved": true} {
		if _, got := e.getCM(t, "prune", name); got != want {
			t.Errorf("ConfigMap prune/%s exists: %v, want %v", name, got, want)
		}
	}
}

func (e *env) testRemove(t *testing.T) {
	ctx := t.Context()
	d := apply.Deployment{ID: "team/remove", Hash: "1", DefaultNamespace: "remove", Objects: []*unstructured.Unstructured{
		{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "remove-owned"}}},
		configMap("", "a", nil), configMap("remove-owned", "b", nil),
	}}
	e.mustApply(t, d, apply.Ready)
	if err := e.applier.Remove(ctx, d.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, ok := e.getCM(t, "remove", "a"); ok {
		t.Error("ConfigMap remove/a survived Remove")
	}
	if _, ok := e.getCM(t, "remove-owned", "b"); ok {
		t.Error("ConfigMap remove-owned/b survived Remove")
	}
	// No namespace controller runs here, so a deleted namespace stays
	// Terminating.
	ns, err := e.kube.CoreV1().Namespaces().Get(ctx, "remove-owned", metav1.GetOptions{})
	if err == nil && ns.DeletionTimestamp == nil {
		t.Error("namespace remove-owned, part of the deployment, was not deleted")
	}
	// The default namespace was only created for the deployment and may
	// hold other things: it stays.
	if ns, err := e.kube.CoreV1().Namespaces().Get(ctx, "remove", metav1.GetOptions{}); err != nil || ns.DeletionTimestamp != nil {
		t.Errorf("default namespace remove: %v, deleting %v; want it kept", err, ns.DeletionTimestamp)
	}
	e.mustStatus(t, d, apply.WaitApplied)
	if err := e.applier.Remove(ctx, d.ID); err != nil {
		t.Errorf("second Remove: %v", err)
	}

	keep := apply.Deployment{ID: "remove-keep", Hash: "1", DefaultNamespace: "remove", KeepResources: true, Objects: []*unstructured.Unstructured{configMap("", "kept", nil)}}
	e.mustApply(t, keep, apply.Ready)
	if err := e.applier.Remove(ctx, keep.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, ok := e.getCM(t, "remove", "kept"); !ok {
		t.Error("ConfigMap of a KeepResources deployment was deleted")
	}
	e.mustStatus(t, keep, apply.WaitApplied)
}

// edit changes a ConfigMap's data as another client would.
func (e *env) edit(t *testing.T, ns, name, key, value string) {
	t.Helper()
	cm, ok := e.getCM(t, ns, name)
	if !ok {
		t.Fatalf("ConfigMap %s/%s missing", ns, name)
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[key] = value
	if _, err := e.kube.CoreV1().ConfigMaps(ns).Update(t.Context(), cm, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatalf("editing ConfigMap %s/%s: %v", ns, name, err)
	}
}

func (e *env) testDrift(t *testing.T) {
	ctx := t.Context()
	d := apply.Deployment{ID: "drift", Hash: "1", DefaultNamespace: "drift", Objects: []*unstructured.Unstructured{
		configMap("", "cfg", map[string]string{"key": "want"}), configMap("", "other", nil),
	}}
	e.mustApply(t, d, apply.Ready)

	// A field we set, changed by someone else.
	e.edit(t, "drift", "cfg", "key", "changed")
	res := e.mustStatus(t, d, apply.Modified)
	if !strings.Contains(res.Message, "ConfigMap drift/cfg: modified") {
		t.Errorf("message %q does not name ConfigMap drift/cfg as modified", res.Message)
	}
	if len(res.Modified) != 1 || fmt.Sprint(res.Modified[0].Fields) != "[/data/key]" {
		t.Errorf("modified %+v, want ConfigMap drift/cfg with field /data/key", res.Modified)
	}
	// The message the server gets says which field drifted.
	if !strings.Contains(res.Message, "drifted: ConfigMap/drift/cfg: data.key") {
		t.Errorf("message %q does not name the drifted field ConfigMap/drift/cfg: data.key", res.Message)
	}
	// A field someone else added is theirs, not drift.
	e.edit(t, "drift", "other", "added", "by-someone")
	if res := e.mustStatus(t, d, apply.Modified); len(res.Modified) != 1 {
		t.Errorf("modified %+v, want only ConfigMap drift/cfg", res.Modified)
	}

	// Without CorrectDrift, Apply reports drift and leaves it.
	e.mustApply(t, d, apply.Modified)
	if cm, _ := e.getCM(t, "drift", "cfg"); cm.Data["key"] != "changed" {
		t.Errorf("Apply without CorrectDrift reverted the edit: key=%q", cm.Data["key"])
	}

	// A deleted object is drift too.
	if err := e.kube.CoreV1().ConfigMaps("drift").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	res = e.mustStatus(t, d, apply.Modified)
	if !strings.Contains(res.Message, "ConfigMap drift/other: missing") || len(res.Modified) != 2 {
		t.Errorf("after deleting drift/other: %q %+v", res.Message, res.Modified)
	}

	// CorrectDrift restores both.
	d.CorrectDrift = true
	e.mustApply(t, d, apply.Ready)
	if cm, _ := e.getCM(t, "drift", "cfg"); cm.Data["key"] != "want" {
		t.Errorf("after correcting drift: key=%q, want %q", cm.Data["key"], "want")
	}
	if _, ok := e.getCM(t, "drift", "other"); !ok {
		t.Error("deleted ConfigMap drift/other was not recreated")
	}
	e.mustStatus(t, d, apply.Ready)

	// ForceDrift recreates an object whose drift cannot be undone in place.
	immutable := configMap("", "frozen", map[string]string{"key": "want"})
	immutable.Object["immutable"] = true
	f := apply.Deployment{ID: "drift-force", Hash: "1", DefaultNamespace: "drift", CorrectDrift: true, ForceDrift: true,
		Objects: []*unstructured.Unstructured{immutable}}
	e.mustApply(t, f, apply.Ready)
	if err := e.kube.CoreV1().ConfigMaps("drift").Delete(ctx, "frozen", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := e.kube.CoreV1().ConfigMaps("drift").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "frozen", Labels: map[string]string{apply.LabelBundleID: apply.LabelValue(f.ID)}},
		Data:       map[string]string{"key": "other"}, Immutable: new(true),
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.mustStatus(t, f, apply.Modified)
	e.mustApply(t, f, apply.Ready)
	if cm, _ := e.getCM(t, "drift", "frozen"); cm.Data["key"] != "want" {
		t.Errorf("immutable ConfigMap not recreated: key=%q", cm.Data["key"])
	}
}

func (e *env) testComparePatches(t *testing.T) {
	d := apply.Deployment{ID: "patches", Hash: "1", DefaultNamespace: "patches", Objects: []*unstructured.Unstructured{
		configMap("", "cfg", map[string]string{"ignored": "a", "byop": "b", "watched": "c"}),
	}, ComparePatches: []apply.ComparePatch{{
		APIVersion: "v1", Kind: "ConfigMap", Name: "cfg", Namespace: "patches",
		Operations:   []apply.PatchOperation{{Op: "remove", Path: "/data/byop"}},
		JSONPointers: []string{"/data/ignored"},
	}}}
	e.mustApply(t, d, apply.Ready)
	e.edit(t, "patches", "cfg", "ignored", "x")
	e.edit(t, "patches", "cfg", "byop", "y")
	e.mustStatus(t, d, apply.Ready)
	e.edit(t, "patches", "cfg", "watched", "z")
	res := e.mustStatus(t, d, apply.Modified)
	if fmt.Sprint(res.Modified[0].Fields) != "[/data/watched]" {
		t.Errorf("modified fields %v, want [/data/watched]", res.Modified[0].Fields)
	}
}

func webDeployment(ns string, replicas int64) *unstructured.Unstructured {
	labels := map[string]any{"app": "web"}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "web", "namespace": ns},
		"spec": map[string]any{
			"replicas": replicas,
			"selector": map[string]any{"matchLabels": labels},
			"template": map[string]any{
				"metadata": map[string]any{"labels": labels},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "web", "image": "nginx"}}},
			},
		},
	}}
}

func (e *env) testReadiness(t *testing.T) {
	ctx := t.Context()
	d := apply.Deployment{ID: "ready", Hash: "1", DefaultNamespace: "ready", Objects: []*unstructured.Unstructured{
		configMap("", "cfg", nil), webDeployment("ready", 3),
	}}
	res := e.mustApply(t, d, apply.NotReady)
	if len(res.NonReady) != 1 || res.NonReady[0].Kind != "Deployment" {
		t.Fatalf("not ready %+v, want only the Deployment", res.NonReady)
	}
	res = e.mustStatus(t, d, apply.NotReady)
	t.Logf("message: %s", res.Message)
	if !strings.HasPrefix(res.Message, "Deployment ready/web: not ready") {
		t.Errorf("message %q, want it to name Deployment ready/web as not ready", res.Message)
	}

	// Act as the deployment controller would once three pods are up.
	dep, err := e.kube.AppsV1().Deployments("ready").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	dep.Status = appsv1.DeploymentStatus{
		ObservedGeneration: dep.Generation, Replicas: 3, UpdatedReplicas: 3, ReadyReplicas: 3, AvailableReplicas: 3,
		Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now},
			{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", LastUpdateTime: now, LastTransitionTime: now},
		},
	}
	if _, err := e.kube.AppsV1().Deployments("ready").UpdateStatus(ctx, dep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.mustStatus(t, d, apply.Ready)

	// A new spec is not ready until the controller observes it.
	d.Hash, d.Objects[1] = "2", webDeployment("ready", 4)
	e.mustApply(t, d, apply.NotReady)
}

func (e *env) testCRD(t *testing.T) {
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "widgets.example.com"},
		"spec": map[string]any{
			"group": "example.com", "scope": "Namespaced",
			"names": map[string]any{"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
			"versions": []any{map[string]any{
				"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type": "object", "x-kubernetes-preserve-unknown-fields": true,
				}},
			}},
		},
	}}
	widget := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "example.com/v1", "kind": "Widget",
		"metadata": map[string]any{"name": "w1"},
		"spec":     map[string]any{"size": int64(3)},
	}}
	// Listed before its CRD on purpose: the engine orders them.
	d := apply.Deployment{ID: "crd", Hash: "1", DefaultNamespace: "crd", Objects: []*unstructured.Unstructured{widget, crd}}
	e.mustApply(t, d, apply.Ready)
	gvr := schema.GroupVersionResource{Group: "example.com", Version: "v1", Resource: "widgets"}
	got, err := e.dynamic.Resource(gvr).Namespace("crd").Get(t.Context(), "w1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Widget crd/w1: %v", err)
	}
	if size, _, _ := unstructured.NestedInt64(got.Object, "spec", "size"); size != 3 {
		t.Errorf("Widget spec.size = %d, want 3", size)
	}
	e.mustStatus(t, d, apply.Ready)

	// Drift of a custom resource is found like any other.
	if err := unstructured.SetNestedField(got.Object, int64(5), "spec", "size"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dynamic.Resource(gvr).Namespace("crd").Update(t.Context(), got, metav1.UpdateOptions{FieldManager: "someone"}); err != nil {
		t.Fatal(err)
	}
	if res := e.mustStatus(t, d, apply.Modified); !strings.Contains(res.Message, "Widget crd/w1: modified") {
		t.Errorf("message %q does not name Widget crd/w1", res.Message)
	}
	if err := e.applier.Remove(t.Context(), d.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
}

// demoChart is a chart as bundle.Render gives it to the agent: Helm v4's chart type.
func demoChart(version string) *chartv2.Chart {
	return &chartv2.Chart{
		Metadata: &chartv2.Metadata{APIVersion: chartv2.APIVersionV2, Name: "demo", Version: version, AppVersion: "1.0"},
		Templates: []*common.File{
			{Name: "templates/configmap.yaml", Data: []byte(`apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cfg
data:
  greeting: {{ .Values.greeting | quote }}
`)},
			{Name: "templates/secret.yaml", Data: []byte(`apiVersion: v1
kind: Secret
metadata:
  name: {{ .Release.Name }}-secret
stringData:
  password: {{ .Values.password | quote }}
`)},
		},
		Values: map[string]any{"greeting": "hello", "password": "s3cret"},
	}
}

// helmReleases lists the releases in the cluster as `helm list -A` would.
func (e *env) helmReleases(t *testing.T) map[string]*release.Release {
	t.Helper()
	cfg := new(action.Configuration)
	getter := helmkube.GetConfig(e.cluster.KubeconfigPath(), "", "")
	if err := cfg.Init(getter, "", "secret", t.Logf); err != nil {
		t.Fatal(err)
	}
	list := action.NewList(cfg)
	list.AllNamespaces = true
	list.All = true
	rels, err := list.Run()
	if err != nil {
		t.Fatalf("helm list: %v", err)
	}
	out := map[string]*release.Release{}
	for _, r := range rels {
		out[r.Namespace+"/"+r.Name] = r
	}
	return out
}

func (e *env) testHelm(t *testing.T) {
	ctx := t.Context()
	d := apply.Deployment{ID: "fleet-default/helm-demo", Hash: "1", DefaultNamespace: "helm-demo", Helm: &apply.HelmRelease{
		ReleaseName: "demo", Chart: demoChart("0.1.0"), Values: map[string]any{"greeting": "hi"},
	}}
	e.mustApply(t, d, apply.Ready)
	rel := e.helmReleases(t)["helm-demo/demo"]
	if rel == nil || rel.Version != 1 || rel.Info.Status != release.StatusDeployed {
		t.Fatalf("release helm-demo/demo after install: %+v, want revision 1 deployed", rel)
	}
	cm, ok := e.getCM(t, "helm-demo", "demo-cfg")
	if !ok || cm.Data["greeting"] != "hi" {
		t.Fatalf("ConfigMap helm-demo/demo-cfg = %+v, want greeting hi", cm)
	}
	if cm.Labels[apply.LabelBundleID] != apply.LabelValue(d.ID) || cm.Labels["app.kubernetes.io/managed-by"] != "Helm" {
		t.Errorf("chart object labels %v, want Helm's and %s", cm.Labels, apply.LabelBundleID)
	}
	if path, err := exec.LookPath("helm"); err == nil {
		out, err := exec.CommandContext(ctx, path, "list", "-A", "--kubeconfig", e.cluster.KubeconfigPath()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "demo") {
			t.Errorf("helm list -A: %v\n%s", err, out)
		}
	} else {
		t.Log("no helm binary on PATH; checked the release with the Helm SDK only")
	}

	// The same chart and values again: no new revision.
	e.mustApply(t, d, apply.Ready)
	d.Hash = "1b" // other options changed, chart and values did not
	e.mustApply(t, d, apply.Ready)
	if rel := e.helmReleases(t)["helm-demo/demo"]; rel.Version != 1 {
		t.Errorf("revision after re-applying the same chart and values: %d, want 1", rel.Version)
	}
	e.mustStatus(t, d, apply.Ready)

	// Changed values upgrade.
	d.Hash, d.Helm.Values = "2", map[string]any{"greeting": "hello again"}
	e.mustApply(t, d, apply.Ready)
	if rel := e.helmReleases(t)["helm-demo/demo"]; rel.Version != 2 {
		t.Errorf("revision after changing values: %d, want 2", rel.Version)
	}
	if cm, _ := e.getCM(t, "helm-demo", "demo-cfg"); cm.Data["greeting"] != "hello again" {
		t.Errorf("greeting after upgrade: %q", cm.Data["greeting"])
	}

	// Drift of a chart object is reported, and corrected by an upgrade.
	e.edit(t, "helm-demo", "demo-cfg", "greeting", "edited")
	res := e.mustStatus(t, d, apply.Modified)
	if !strings.Contains(res.Message, "ConfigMap helm-demo/demo-cfg: modified") {
		t.Errorf("message %q does not name the edited ConfigMap", res.Message)
	}
	d.CorrectDrift = true
	d.Hash = "3"
	e.mustApply(t, d, apply.Ready) // a new hash with the same digest: only a check
	e.edit(t, "helm-demo", "demo-cfg", "greeting", "edited")
	e.mustApply(t, d, apply.Ready)
	if cm, _ := e.getCM(t, "helm-demo", "demo-cfg"); cm.Data["greeting"] != "hello again" {
		t.Errorf("greeting after correcting drift: %q, want %q", cm.Data["greeting"], "hello again")
	}

	if err := e.applier.Remove(ctx, d.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if rel := e.helmReleases(t)["helm-demo/demo"]; rel != nil {
		t.Errorf("release still listed after Remove: revision %d %s", rel.Version, rel.Info.Status)
	}
	if _, ok := e.getCM(t, "helm-demo", "demo-cfg"); ok {
		t.Error("chart ConfigMap survived Remove")
	}
}

func (e *env) testWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	notified := make(chan string, 100)
	done := make(chan error, 1)
	go func() {
		done <- e.applier.Watch(ctx, func(id string) {
			select {
			case notified <- id:
			default:
			}
		})
	}()

	d := apply.Deployment{ID: "ns/watched", Hash: "1", DefaultNamespace: "watch", Objects: []*unstructured.Unstructured{configMap("", "cfg", nil)}}
	e.mustApply(t, d, apply.Ready)
	// Applying starts the watch on ConfigMaps and notifies about our own
	// changes; let that settle, so that what follows is the edit's.
	settle := time.After(5 * time.Second)
settling:
	for {
		select {
		case <-notified:
		case <-time.After(500 * time.Millisecond):
			break settling
		case <-settle:
			t.Fatal("notifications did not settle after applying")
		}
	}
	e.edit(t, "watch", "cfg", "n", "1")
	edited := time.Now()
	select {
	case id := <-notified:
		if id != d.ID {
			t.Errorf("notified %q, want %q", id, d.ID)
		}
		t.Logf("edit noticed in %s", time.Since(edited).Round(10*time.Microsecond))
	case <-time.After(5 * time.Second):
		t.Fatal("no notification within 5s of editing a watched object")
	}
	// A deletion is noticed too, within a second.
	for len(notified) > 0 {
		<-notified
	}
	if err := e.kube.CoreV1().ConfigMaps("watch").Delete(ctx, "cfg", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	select {
	case id := <-notified:
		if id != d.ID {
			t.Errorf("notified %q, want %q", id, d.ID)
		}
		t.Logf("deletion noticed in %s", time.Since(deleted).Round(10*time.Microsecond))
	case <-time.After(5 * time.Second):
		t.Error("no notification within 5s of deleting a watched object")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch: %v", err)
	}
}

// testFigures measures the engine on a 50-object deployment and logs the
// figures; they are not assertions.
func (e *env) testFigures(t *testing.T) {
	const n = 50
	objs := make([]*unstructured.Unstructured, n)
	for i := range objs {
		objs[i] = configMap("", fmt.Sprintf("cfg-%02d", i), map[string]string{"i": fmt.Sprint(i), "payload": strings.Repeat("x", 512)})
	}
	d := apply.Deployment{ID: "figures", Hash: "1", DefaultNamespace: "figures", Objects: objs}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	e.mustApply(t, d, apply.Ready)
	first := time.Since(start)
	runtime.ReadMemStats(&after)
	firstAlloc := after.TotalAlloc - before.TotalAlloc

	start = time.Now()
	e.mustApply(t, d, apply.Ready)
	noop := time.Since(start)

	start = time.Now()
	e.mustStatus(t, d, apply.Ready)
	status := time.Since(start)

	d.Hash = "2"
	d.Objects[0] = configMap("", "cfg-00", map[string]string{"i": "changed"})
	start = time.Now()
	e.mustApply(t, d, apply.Ready)
	update := time.Since(start)

	// What watching costs: the heap of a Watch over the 50 objects.
	ctx, cancel := context.WithCancel(t.Context())
	runtime.GC()
	runtime.ReadMemStats(&before)
	watchDone := make(chan error, 1)
	go func() { watchDone <- e.applier.Watch(ctx, func(string) {}) }()
	time.Sleep(time.Second)
	runtime.GC()
	runtime.ReadMemStats(&after)
	cancel()
	if err := <-watchDone; err != nil {
		t.Errorf("Watch: %v", err)
	}
	watchHeap := int64(after.HeapAlloc) - int64(before.HeapAlloc)

	start = time.Now()
	if err := e.applier.Remove(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
	remove := time.Since(start)
	t.Logf("%d ConfigMaps: first apply %s (%d KiB allocated), unchanged apply %s, status %s, apply with one change %s, remove %s; watch heap %d KiB",
		n, first.Round(time.Millisecond), firstAlloc/1024, noop.Round(time.Millisecond),
		status.Round(time.Millisecond), update.Round(time.Millisecond), remove.Round(time.Millisecond), watchHeap/1024)
}
