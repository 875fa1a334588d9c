package kube

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func clientset(t *testing.T, c *Cluster) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatalf("client for %s: %v", c.Name, err)
	}
	return cs
}

// Two API servers on one etcd must not see each other's objects.
func TestClustersShareEtcdButNotData(t *testing.T) {
	t.Parallel()
	etcd := StartEtcd(t)
	alpha := StartCluster(t, etcd, Options{Name: "alpha"})
	beta := StartCluster(t, etcd, Options{Name: "beta"})
	ctx := t.Context()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "only-in-alpha"}}
	if _, err := clientset(t, alpha).CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace in alpha: %v", err)
	}
	if _, err := clientset(t, alpha).CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("namespace missing from alpha: %v", err)
	}
	_, err := clientset(t, beta).CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("getting alpha's namespace from beta: got %v, want NotFound", err)
	}

	// The kubeconfig must work for kubectl too, with TLS verified.
	kubectl := filepath.Join(Binaries(t), "kubectl")
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", alpha.KubeconfigPath(),
		"get", "namespace", ns.Name, "-o", "name").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "namespace/"+ns.Name {
		t.Fatalf("kubectl get namespace on alpha: %v: %s", err, out)
	}
	out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", beta.KubeconfigPath(),
		"get", "namespace", ns.Name).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("NotFound")) {
		t.Fatalf("kubectl get namespace on beta: got %v: %s, want NotFound", err, out)
	}

	// A second cluster with a name already in use on this etcd is refused.
	if err := etcd.claim("/clusters/alpha", &Cluster{}); err == nil {
		t.Error("claiming alpha's prefix twice succeeded")
	}

	logRSS(t, etcd.proc, alpha.apiserver, beta.apiserver)
}

// With the controller manager, a Deployment gets a ReplicaSet and Pods.
func TestControllerManagerReconcilesDeployments(t *testing.T) {
	t.Parallel()
	etcd := StartEtcd(t)
	c := StartCluster(t, etcd, Options{ControllerManager: true})
	cs := clientset(t, c)
	ctx := t.Context()

	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: metav1.NamespaceDefault},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}},
			},
		},
	}
	dep, err := cs.AppsV1().Deployments(dep.Namespace).Create(ctx, dep, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating deployment: %v", err)
	}

	start := time.Now()
	var owned, pods int
	for time.Since(start) < 30*time.Second {
		rsList, err := cs.AppsV1().ReplicaSets(dep.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("listing replicasets: %v", err)
		}
		owned = 0
		for _, rs := range rsList.Items {
			if ref := metav1.GetControllerOf(&rs); ref != nil && ref.UID == dep.UID {
				owned++
			}
		}
		podList, err := cs.CoreV1().Pods(dep.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("listing pods: %v", err)
		}
		pods = len(podList.Items)
		if owned == 1 && pods == 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if owned != 1 || pods != 2 {
		t.Fatalf("after %s: %d ReplicaSets owned by the deployment and %d pods, want 1 and 2",
			time.Since(start).Round(time.Millisecond), owned, pods)
	}
	t.Logf("ReplicaSet and pods created in %s", time.Since(start).Round(time.Millisecond))

	logRSS(t, etcd.proc, c.apiserver, c.cm)
}

// logRSS records the resident memory of each process, to keep an eye on
// what a test cluster costs.
func logRSS(t *testing.T, procs ...*process) {
	t.Helper()
	var parts []string
	for _, p := range procs {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
		if err != nil {
			return // not Linux, or gone
		}
		for line := range strings.Lines(string(status)) {
			if rss, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				parts = append(parts, p.name+" "+strings.Join(strings.Fields(rss), " "))
			}
		}
	}
	t.Logf("RSS: %s", strings.Join(parts, ", "))
}
