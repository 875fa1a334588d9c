package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/testenv/kube"
)

// TestRunAgainstAPIServer runs the whole agent, with the real apply engine, against a real
// kube-apiserver and the fake protocol server, as an in-cluster agent would run: the
// credential goes to a Secret, not the state directory, and Helm values come from a
// ConfigMap of the cluster.
func TestRunAgainstAPIServer(t *testing.T) {
	c := kube.StartCluster(t, kube.StartEtcd(t), kube.Options{})
	k := kubernetes.NewForConfigOrDie(c.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if _, err := k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "hello"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.CoreV1().ConfigMaps("hello").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "site-values"},
		Data:       map[string]string{"values.yaml": "greeting: from the cluster\n"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	f := newFakeServer(t)
	helm := fakeDeployment{name: "hello", files: bundle.Files{
		"Chart.yaml":              []byte("apiVersion: v2\nname: hello\nversion: 0.1.0\n"),
		"values.yaml":             []byte("greeting: hello\n"),
		"templates/greeting.yaml": []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: greeting\ndata:\n  greeting: {{ .Values.greeting | quote }}\n"),
		// Post-renders the chart's output, as in Fleet.
		"kustomization.yaml": []byte("commonLabels:\n  overlay: kustomized\n"),
	}, opts: api.BundleDeploymentOptions{DefaultNamespace: "hello", Helm: &api.HelmOptions{
		ValuesFrom: []api.ValuesFrom{{ConfigMapKeyRef: &api.KeySelector{Name: "site-values"}}},
	}}}
	raw := configMapBundle("web", "1")
	raw.opts.DefaultNamespace = "web"
	f.setDesired(nil, raw, helm)

	dir := t.TempDir()
	cfg := testConfig(t, f, dir)
	cfg.RESTConfig = c.RESTConfig()
	cfg.InCluster = true
	var (
		stop context.CancelFunc
		done = make(chan error, 1)
	)
	start := func() {
		var runCtx context.Context
		runCtx, stop = context.WithCancel(ctx)
		go func() { done <- Run(runCtx, cfg) }()
	}
	halt := func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	start()
	defer func() { halt() }()

	waitFor(t, "both deployments Ready", func() bool {
		l := f.snapshot().latest
		return l["fleet-default/web"].State == api.StateReady && l["fleet-default/hello"].State == api.StateReady
	})
	cm, err := k.CoreV1().ConfigMaps("hello").Get(ctx, "greeting", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cm.Data["greeting"], "from the cluster"; got != want {
		t.Errorf("greeting = %q, want %q (from valuesFrom)", got, want)
	}
	if got := cm.Labels["overlay"]; got != "kustomized" {
		t.Errorf("label overlay of the chart's ConfigMap = %q, want kustomized (the bundle's post-rendering)", got)
	}
	rel, err := k.CoreV1().Secrets("hello").Get(ctx, "sh.helm.release.v1.hello.v1", metav1.GetOptions{})
	if err != nil || rel.Labels["status"] != "deployed" {
		t.Errorf("helm release Secret hello v1: %v, labels %v", err, rel.GetLabels())
	}
	if _, err := k.CoreV1().ConfigMaps("web").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		t.Errorf("raw bundle's ConfigMap: %v", err)
	}

	sec, err := k.CoreV1().Secrets("flotilla-system").Get(ctx, "flotilla-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("credential secret: %v", err)
	}
	if string(sec.Data[secretKeyCredential]) != "cred-1" || len(sec.Data[secretKeyCA]) == 0 {
		t.Errorf("secret data keys %v lack the credential or CA", keysOf(sec.Data))
	}
	if _, err := os.Stat(filepath.Join(dir, credentialsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("in-cluster agent wrote %s: %v", credentialsFile, err)
	}
	uid, err := (&kubeCluster{kube: k}).ClientID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	reg := f.registrations[0]
	f.mu.Unlock()
	if reg.ClientID != uid || reg.Inventory == nil || reg.Inventory.KubernetesVersion != kube.Version {
		t.Errorf("registration %+v, want client ID %s and the cluster's version", reg, uid)
	}

	// The bundle removed on the server is removed from the cluster.
	f.setDesired(nil, helm)
	waitFor(t, "web removed", func() bool {
		_, err := k.CoreV1().ConfigMaps("web").Get(ctx, "web", metav1.GetOptions{})
		_, reported := f.snapshot().latest["fleet-default/web"]
		return err != nil && !reported
	})

	// An agent whose state directory was lost still removes, from the cluster's
	// inventories, a bundle the server dropped meanwhile: here the Helm release.
	halt()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	f.setDesired(nil)
	start()
	waitFor(t, "the helm release uninstalled", func() bool {
		secs, err := k.CoreV1().Secrets("hello").List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=hello"})
		_, cmErr := k.CoreV1().ConfigMaps("hello").Get(ctx, "greeting", metav1.GetOptions{})
		return err == nil && len(secs.Items) == 0 && cmErr != nil
	})
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
