package apply_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	loaderv3 "helm.sh/helm/v3/pkg/chart/loader"
	helmkube "helm.sh/helm/v3/pkg/kube"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla.dev/internal/agent/apply"
)

// The agent installs releases with Helm v4's SDK; these tests hold them to what Helm 3's
// SDK reads and writes, as the helm CLI of either version must work on them.

// helmConfig is Helm's own action configuration over the test cluster, with Helm's Secret
// driver: what the helm CLI uses.
func (e *env) helmConfig(t *testing.T, ns string) *action.Configuration {
	t.Helper()
	cfg := new(action.Configuration)
	if err := cfg.Init(helmkube.GetConfig(e.cluster.KubeconfigPath(), "", ns), ns, "secret", t.Logf); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// releaseSecrets lists the release Secrets of a release by name, as Helm labels them.
func (e *env) releaseSecrets(t *testing.T, ns, name string) []corev1.Secret {
	t.Helper()
	list, err := e.kube.CoreV1().Secrets(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "owner=helm,name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(list.Items, func(a, b corev1.Secret) int { return strings.Compare(a.Name, b.Name) })
	return list.Items
}

// revisions decodes every stored revision with Helm's own Secret driver.
func (e *env) revisions(t *testing.T, ns, name string) map[int]*release.Release {
	t.Helper()
	d := driver.NewSecrets(e.kube.CoreV1().Secrets(ns))
	rels, err := d.Query(map[string]string{"owner": "helm", "name": name})
	if err != nil && err != driver.ErrReleaseNotFound {
		t.Fatalf("helm's secret driver: %v", err)
	}
	out := map[int]*release.Release{}
	for _, r := range rels {
		out[r.Version] = r
	}
	return out
}

func (e *env) wantRevisions(t *testing.T, ns, name string, want map[int]release.Status) {
	t.Helper()
	got := map[int]release.Status{}
	for v, r := range e.revisions(t, ns, name) {
		got[v] = r.Info.Status
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("revisions of %s/%s: got %v, want %v", ns, name, got, want)
	}
}

func (e *env) testHelmStorage(t *testing.T) {
	ctx := t.Context()
	const ns, name = "helm-store", "store"
	d := apply.Deployment{ID: "fleet-default/helm-store", Hash: "1", DefaultNamespace: ns, Helm: &apply.HelmRelease{
		ReleaseName: name, Chart: demoChart("0.1.0"), Values: map[string]any{"greeting": "hi"},
	}}
	e.mustApply(t, d, apply.Ready)

	// The Secret is laid out as Helm's Secret driver lays it out.
	secs := e.releaseSecrets(t, ns, name)
	if len(secs) != 1 {
		t.Fatalf("release Secrets after install: %d, want 1", len(secs))
	}
	s := secs[0]
	if s.Name != "sh.helm.release.v1.store.v1" || s.Type != "helm.sh/release.v1" {
		t.Errorf("Secret %s of type %s, want sh.helm.release.v1.store.v1 of type helm.sh/release.v1", s.Name, s.Type)
	}
	for k, want := range map[string]string{"name": name, "owner": "helm", "status": "deployed", "version": "1"} {
		if got := s.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if s.Labels["createdAt"] == "" && s.Labels["modifiedAt"] == "" {
		t.Errorf("no createdAt or modifiedAt label: %v", s.Labels)
	}
	// Helm's base64 of gzip, inside the Secret's bytes.
	if data := s.Data["release"]; !bytes.HasPrefix(data, []byte("H4sI")) {
		t.Errorf("release data starts %q, want the base64 of a gzip stream (H4sI)", data[:min(len(data), 8)])
	}

	// Helm's own decoding, list and get read the release.
	rel := e.revisions(t, ns, name)[1]
	if rel == nil {
		t.Fatal("helm's secret driver does not find revision 1")
	}
	if rel.Name != name || rel.Namespace != ns || rel.Chart.Metadata.Version != "0.1.0" || rel.Config["greeting"] != "hi" {
		t.Errorf("decoded release: name %q ns %q chart %s config %v", rel.Name, rel.Namespace, rel.Chart.Metadata.Version, rel.Config)
	}
	if !strings.Contains(rel.Manifest, "name: store-cfg") || !strings.Contains(rel.Manifest, apply.LabelBundleID) {
		t.Errorf("manifest lacks the ConfigMap or the bundle label:\n%s", rel.Manifest)
	}
	cfg := e.helmConfig(t, ns)
	got, err := action.NewGet(cfg).Run(name)
	if err != nil {
		t.Fatalf("helm get: %v", err)
	}
	if got.Version != 1 || got.Info.Status != release.StatusDeployed {
		t.Errorf("helm get: revision %d %s, want 1 deployed", got.Version, got.Info.Status)
	}
	list := action.NewList(cfg)
	list.All = true
	rels, err := list.Run()
	if err != nil || len(rels) != 1 || rels[0].Name != name {
		t.Errorf("helm list -n %s: %v, %v", ns, rels, err)
	}
	vals, err := action.NewGetValues(cfg).Run(name)
	if err != nil || vals["greeting"] != "hi" {
		t.Errorf("helm get values: %v, %v", vals, err)
	}

	// The same chart and values, or other inputs that render the same: no new revision.
	e.mustApply(t, d, apply.Ready)
	d.Hash, d.Helm.RenderKey = "1b", "other options"
	e.mustApply(t, d, apply.Ready)
	e.wantRevisions(t, ns, name, map[int]release.Status{1: release.StatusDeployed})

	// Changed values: revision 2 deployed, 1 superseded.
	d.Hash, d.Helm.Values = "2", map[string]any{"greeting": "hello again"}
	e.mustApply(t, d, apply.Ready)
	e.wantRevisions(t, ns, name, map[int]release.Status{1: release.StatusSuperseded, 2: release.StatusDeployed})
	if cm, _ := e.getCM(t, ns, "store-cfg"); cm.Data["greeting"] != "hello again" {
		t.Errorf("greeting after upgrade: %q", cm.Data["greeting"])
	}
	hist, err := action.NewHistory(cfg).Run(name)
	if err != nil || len(hist) != 2 {
		t.Errorf("helm history: %d revisions, %v", len(hist), err)
	}

	// A pending revision left by an agent that died mid-upgrade is marked failed, and the
	// next upgrade goes on from it.
	stuck := e.revisions(t, ns, name)[2]
	stuck.Version = 3
	stuck.Info.Status = release.StatusPendingUpgrade
	stuck.Labels = nil
	if err := driver.NewSecrets(e.kube.CoreV1().Secrets(ns)).Create("sh.helm.release.v1.store.v3", stuck); err != nil {
		t.Fatal(err)
	}
	e.mustStatus(t, d, apply.NotReady)
	d.Hash, d.Helm.Values = "3", map[string]any{"greeting": "after the crash"}
	e.mustApply(t, d, apply.Ready)
	e.wantRevisions(t, ns, name, map[int]release.Status{1: release.StatusSuperseded, 2: release.StatusSuperseded, 3: release.StatusFailed, 4: release.StatusDeployed})

	// MaxHistory prunes the oldest revisions, never the deployed one.
	d.Helm.MaxHistory = 2
	for i, greeting := range []string{"a", "b", "c"} {
		d.Hash, d.Helm.Values = fmt.Sprint(5+i), map[string]any{"greeting": greeting}
		e.mustApply(t, d, apply.Ready)
	}
	e.wantRevisions(t, ns, name, map[int]release.Status{6: release.StatusSuperseded, 7: release.StatusDeployed})

	// A revision someone made with the helm CLI copies the agent's labels; the agent still
	// sees that it did not make it, and upgrades back to the bundle's values.
	dir := t.TempDir()
	if err := chartutil.SaveDir(demoChart("0.1.0"), dir); err != nil {
		t.Fatal(err)
	}
	// The chart as Helm 3's CLI loads it from disk.
	chv3, err := loaderv3.Load(dir + "/demo")
	if err != nil {
		t.Fatal(err)
	}
	up := action.NewUpgrade(cfg)
	up.Namespace = ns
	up.MaxHistory = 2
	if _, err := up.RunWithContext(ctx, name, chv3, map[string]any{"greeting": "by hand"}); err != nil {
		t.Fatalf("helm upgrade of the agent's release: %v", err)
	}
	if cm, _ := e.getCM(t, ns, "store-cfg"); cm.Data["greeting"] != "by hand" {
		t.Errorf("greeting after helm upgrade: %q", cm.Data["greeting"])
	}
	e.mustStatus(t, d, apply.OutOfSync)
	e.mustApply(t, d, apply.Ready)
	e.wantRevisions(t, ns, name, map[int]release.Status{8: release.StatusSuperseded, 9: release.StatusDeployed})
	if cm, _ := e.getCM(t, ns, "store-cfg"); cm.Data["greeting"] != "c" {
		t.Errorf("greeting after the agent took its release back: %q, want c", cm.Data["greeting"])
	}

	if path, err := exec.LookPath("helm"); err == nil {
		out, err := exec.CommandContext(ctx, path, "list", "-A", "--kubeconfig", e.cluster.KubeconfigPath()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), name) || !strings.Contains(string(out), "deployed") {
			t.Errorf("helm list -A: %v\n%s", err, out)
		}
		t.Logf("helm list -A:\n%s", out)
		out, err = exec.CommandContext(ctx, path, "history", name, "-n", ns, "--kubeconfig", e.cluster.KubeconfigPath()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "superseded") {
			t.Errorf("helm history: %v\n%s", err, out)
		}
	}

	// Remove uninstalls: objects and every revision go.
	if err := e.applier.Remove(ctx, d.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if secs := e.releaseSecrets(t, ns, name); len(secs) != 0 {
		t.Errorf("%d release Secrets left after Remove", len(secs))
	}
	for _, n := range []string{"store-cfg"} {
		if _, ok := e.getCM(t, ns, n); ok {
			t.Errorf("ConfigMap %s survived Remove", n)
		}
	}
	if _, err := e.kube.CoreV1().Secrets(ns).Get(ctx, "store-secret", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("chart Secret store-secret after Remove: %v, want not found", err)
	}
}

// testHelmUninstallByHelm: Helm itself uninstalls a release the agent installed.
func (e *env) testHelmUninstallByHelm(t *testing.T) {
	const ns, name = "helm-cli", "cli"
	d := apply.Deployment{ID: "fleet-default/helm-cli", Hash: "1", DefaultNamespace: ns, Helm: &apply.HelmRelease{ReleaseName: name, Chart: demoChart("0.2.0")}}
	e.mustApply(t, d, apply.Ready)
	if _, err := action.NewUninstall(e.helmConfig(t, ns)).Run(name); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	if _, ok := e.getCM(t, ns, "cli-cfg"); ok {
		t.Error("helm uninstall left the chart's ConfigMap")
	}
	if secs := e.releaseSecrets(t, ns, name); len(secs) != 0 {
		t.Errorf("%d release Secrets left after helm uninstall", len(secs))
	}
	// The agent notices and installs it again.
	e.mustStatus(t, d, apply.Modified)
	e.mustApply(t, d, apply.Ready)
	e.wantRevisions(t, ns, name, map[int]release.Status{1: release.StatusDeployed})
	if err := e.applier.Remove(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
}

// hookChart has a pre-install Pod hook, a post-install and post-upgrade Job hook deleted
// when it succeeds, a CRD in crds/ and a custom resource of it.
func hookChart() *chartv2.Chart {
	ch := demoChart("0.3.0")
	ch.Templates = append(ch.Templates,
		&common.File{Name: "templates/pre.yaml", Data: []byte(`apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-pre
  annotations:
    helm.sh/hook: pre-install
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
`)},
		&common.File{Name: "templates/post.yaml", Data: []byte(`apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-post
  annotations:
    helm.sh/hook: post-install,post-upgrade
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: busybox
`)},
		&common.File{Name: "templates/gadget.yaml", Data: []byte(`apiVersion: example.flotilla.dev/v1
kind: Gadget
metadata:
  name: {{ .Release.Name }}-gadget
spec:
  size: 1
`)},
	)
	ch.Files = append(ch.Files, &common.File{Name: "crds/gadgets.yaml", Data: []byte(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.flotilla.dev
spec:
  group: example.flotilla.dev
  names: {kind: Gadget, plural: gadgets, singular: gadget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
`)})
	return ch
}

// finishHooks plays the kubelet and the Job controller, which the test cluster lacks: it
// makes the hooks' Pods and Jobs succeed (or fail) as they appear, until ctx ends.
func (e *env) finishHooks(ctx context.Context, t *testing.T, ns string, fail bool) <-chan []string {
	seen := make(chan []string, 1)
	go func() {
		var names []string
		defer func() { seen <- names }()
		done := map[string]bool{}
		for ctx.Err() == nil {
			pods, _ := e.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			for _, p := range pods.Items {
				key := "Pod/" + p.Name + "/" + string(p.UID)
				if done[key] || p.Status.Phase == corev1.PodSucceeded {
					continue
				}
				p.Status.Phase = corev1.PodSucceeded
				if _, err := e.kube.CoreV1().Pods(ns).UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err == nil {
					done[key] = true
					names = append(names, "Pod/"+p.Name)
				}
			}
			jobs, _ := e.kube.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
			for _, j := range jobs.Items {
				key := "Job/" + j.Name + "/" + string(j.UID)
				if done[key] {
					continue
				}
				now := metav1.Now()
				j.Status.StartTime = &now
				if fail {
					j.Status.Failed = 1
					j.Status.Conditions = append(j.Status.Conditions,
						jobCondition("FailureTarget", "BackoffLimitExceeded", now),
						jobCondition("Failed", "BackoffLimitExceeded", now))
				} else {
					j.Status.Succeeded = 1
					j.Status.CompletionTime = &now
					j.Status.Conditions = append(j.Status.Conditions,
						jobCondition("SuccessCriteriaMet", "CompletionsReached", now),
						jobCondition("Complete", "CompletionsReached", now))
				}
				if _, err := e.kube.BatchV1().Jobs(ns).UpdateStatus(ctx, &j, metav1.UpdateOptions{}); err != nil {
					t.Logf("setting Job status: %v", err)
					continue
				}
				done[key] = true
				names = append(names, "Job/"+j.Name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return seen
}

func jobCondition(typ, reason string, now metav1.Time) batchv1.JobCondition {
	return batchv1.JobCondition{Type: batchv1.JobConditionType(typ), Status: corev1.ConditionTrue, Reason: reason, Message: reason, LastProbeTime: now, LastTransitionTime: now}
}

func (e *env) testHelmHooksAndCRDs(t *testing.T) {
	const ns, name = "helm-hooks", "hooks"
	ctx, cancel := context.WithCancel(t.Context())
	seen := e.finishHooks(ctx, t, ns, false)
	d := apply.Deployment{ID: "fleet-default/helm-hooks", Hash: "1", DefaultNamespace: ns, Helm: &apply.HelmRelease{ReleaseName: name, Chart: hookChart(), TimeoutSeconds: 30}}
	e.mustApply(t, d, apply.Ready)
	d.Hash, d.Helm.Values = "2", map[string]any{"greeting": "upgraded"}
	e.mustApply(t, d, apply.Ready)
	cancel()
	got := <-seen
	want := []string{"Pod/hooks-pre", "Job/hooks-post", "Job/hooks-post"}
	if !slices.Equal(got, want) {
		t.Errorf("hooks run: %v, want %v", got, want)
	}
	// The pre-install Pod has the default policy (deleted before it is created again) and
	// stays; the Job is deleted when it succeeds.
	if _, err := e.kube.CoreV1().Pods(ns).Get(t.Context(), "hooks-pre", metav1.GetOptions{}); err != nil {
		t.Errorf("pre-install hook Pod: %v", err)
	}
	if _, err := e.kube.BatchV1().Jobs(ns).Get(t.Context(), "hooks-post", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("succeeded Job hook with hook-succeeded policy: %v, want deleted", err)
	}
	rel := e.revisions(t, ns, name)[2]
	if rel == nil || len(rel.Hooks) != 2 {
		t.Fatalf("revision 2 hooks: %+v", rel)
	}
	for _, h := range rel.Hooks {
		if h.Name == "hooks-post" && h.LastRun.Phase != release.HookPhaseSucceeded {
			t.Errorf("hook %s last run %s, want Succeeded", h.Name, h.LastRun.Phase)
		}
	}
	// The CRD from crds/ exists, and the custom resource of the chart was applied.
	gvr := schema.GroupVersionResource{Group: "example.flotilla.dev", Version: "v1", Resource: "gadgets"}
	if _, err := e.dynamic.Resource(gvr).Namespace(ns).Get(t.Context(), "hooks-gadget", metav1.GetOptions{}); err != nil {
		t.Errorf("custom resource of the chart: %v", err)
	}

	// A failing hook fails the upgrade and says which hook.
	ctx, cancel = context.WithCancel(t.Context())
	seen = e.finishHooks(ctx, t, ns, true)
	d.Hash, d.Helm.Values = "3", map[string]any{"greeting": "doomed"}
	res, err := e.applier.Apply(t.Context(), d)
	cancel()
	<-seen
	if err == nil || res.State != apply.ErrApplied || !strings.Contains(res.Message, "post-upgrade hook") || !strings.Contains(res.Message, "hooks-post") {
		t.Errorf("Apply with a failing hook: %s %q, %v; want ErrApplied naming the post-upgrade hook", res.State, res.Message, err)
	}
	e.wantRevisions(t, ns, name, map[int]release.Status{1: release.StatusSuperseded, 2: release.StatusDeployed, 3: release.StatusFailed})

	if err := e.applier.Remove(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
	// Like Helm, uninstalling keeps the chart's CRDs (deleting them would delete every
	// object of their kinds).
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := e.dynamic.Resource(crds).Get(t.Context(), "gadgets.example.flotilla.dev", metav1.GetOptions{}); err != nil {
		t.Errorf("chart CRD after uninstall: %v", err)
	}
	if _, err := e.dynamic.Resource(gvr).Namespace(ns).Get(t.Context(), "hooks-gadget", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("custom resource after uninstall: %v, want deleted", err)
	}
}

// An atomic install whose wait times out is uninstalled, leaving nothing; an atomic upgrade
// is rolled back.
func (e *env) testHelmAtomic(t *testing.T) {
	const ns, name = "helm-atomic", "atomic"
	ch := demoChart("0.4.0")
	ch.Templates = append(ch.Templates, &common.File{Name: "templates/deploy.yaml", Data: []byte(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
`)})
	d := apply.Deployment{ID: "fleet-default/helm-atomic", Hash: "1", DefaultNamespace: ns, Helm: &apply.HelmRelease{ReleaseName: name, Chart: ch, Atomic: true, TimeoutSeconds: 2}}
	res, err := e.applier.Apply(t.Context(), d)
	if err == nil || !strings.Contains(res.Message, "uninstalled due to rollback-on-failure") {
		t.Errorf("atomic install that cannot become ready: %s %q, %v", res.State, res.Message, err)
	}
	if secs := e.releaseSecrets(t, ns, name); len(secs) != 0 {
		t.Errorf("%d release Secrets left after an atomic install failed", len(secs))
	}
	if _, ok := e.getCM(t, ns, "atomic-cfg"); ok {
		t.Error("atomic install that failed left its ConfigMap")
	}

	// An atomic upgrade that fails is rolled back to the last good revision.
	d.Helm.Chart, d.Helm.Atomic = demoChart("0.4.0"), false
	e.mustApply(t, d, apply.Ready)
	d.Hash, d.Helm.Chart, d.Helm.Atomic = "2", ch, true
	res, err = e.applier.Apply(t.Context(), d)
	if err == nil || !strings.Contains(res.Message, "rolled back due to rollback-on-failure") {
		t.Errorf("atomic upgrade that cannot become ready: %s %q, %v", res.State, res.Message, err)
	}
	// As `helm upgrade --rollback-on-failure` leaves them: the failed revision stays failed.
	e.wantRevisions(t, ns, name, map[int]release.Status{1: release.StatusSuperseded, 2: release.StatusFailed, 3: release.StatusDeployed})
	if rel := e.revisions(t, ns, name)[3]; rel == nil || rel.Info.Description != "Rollback to 1" || rel.Chart.Metadata.Name != "demo" || strings.Contains(rel.Manifest, "atomic-web") {
		t.Errorf("revision 3 is not the rollback to 1: %+v", rel)
	}
	if _, err := e.kube.AppsV1().Deployments(ns).Get(t.Context(), "atomic-web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Deployment of the failed upgrade after rollback: %v, want deleted", err)
	}
	if _, ok := e.getCM(t, ns, "atomic-cfg"); !ok {
		t.Error("ConfigMap of revision 1 missing after rollback")
	}
	if err := e.applier.Remove(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
}
