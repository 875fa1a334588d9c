package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"flotilla.dev/internal/testenv/kube"
)

const chartsDir = "../../deploy/charts"

// TestCharts checks Flotilla's Helm charts with the real helm CLI — lint, the objects they
// render, the refusals of bad values — and installs both into a real kube-apiserver, where
// the agent's service account may apply anything but impersonate nobody by itself.
func TestCharts(t *testing.T) {
	helm := helmCLI(t)
	run := func(args ...string) (string, error) {
		t.Helper()
		var out, stderr bytes.Buffer
		cmd := exec.Command(helm, args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		err := cmd.Run()
		if err != nil {
			return out.String() + stderr.String(), err
		}
		return out.String(), nil
	}
	server := filepath.Join(chartsDir, "flotilla-server")
	agent := filepath.Join(chartsDir, "flotilla-agent")
	agentValues := []string{"--set", "server=https://fleet.example:8443", "--set", "caChecksum=0123abcd", "--set", "token.value=frt_example", "--set", "labels=env=edge"}

	for _, c := range []struct {
		chart string
		args  []string
	}{{server, nil}, {agent, agentValues}} {
		if out, err := run(append([]string{"lint", "--strict", c.chart}, c.args...)...); err != nil {
			t.Errorf("helm lint %s: %v\n%s", c.chart, err, out)
		}
	}

	// render returns the kinds and objects a chart renders, by kind/name.
	render := func(chart, ns string, args ...string) (map[string]*unstructured.Unstructured, error) {
		t.Helper()
		out, err := run(append([]string{"template", "rel", chart, "-n", ns}, args...)...)
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, out)
		}
		objs := map[string]*unstructured.Unstructured{}
		for _, doc := range strings.Split(out, "\n---") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("%s renders invalid YAML: %v\n%s", chart, err, doc)
			}
			if u.GetKind() != "" {
				objs[u.GetKind()+"/"+u.GetName()] = u
			}
		}
		return objs, nil
	}
	objs, err := render(server, "flotilla")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"StatefulSet/rel", "Service/rel", "ServiceAccount/rel"} {
		if objs[want] == nil {
			t.Errorf("the server chart renders no %s (has %v)", want, keys(objs))
		}
	}
	if objs, err := render(server, "flotilla", "--set", "storage=postgres", "--set", "postgres.existingSecret=db"); err != nil || objs["Deployment/rel"] == nil || objs["StatefulSet/rel"] != nil {
		t.Errorf("the server chart on PostgreSQL: %v %v", keys(objs), err)
	}
	ha := []string{"--set", "storage=postgres", "--set", "postgres.existingSecret=db", "--set", "replicas=3", "--set", "tls.existingSecret=tls", "--set", "kek.existingSecret=kek"}
	if objs, err := render(server, "flotilla", ha...); err != nil || objs["Deployment/rel"] == nil {
		t.Errorf("the server chart with three replicas on PostgreSQL: %v %v", keys(objs), err)
	} else if spec := objs["Deployment/rel"].Object["spec"].(map[string]any); fmt.Sprint(spec["replicas"]) != "3" || fmt.Sprint(spec["strategy"]) != "map[rollingUpdate:map[maxSurge:0 maxUnavailable:1] type:RollingUpdate]" {
		t.Errorf("the server chart with three replicas: replicas %v, strategy %v", spec["replicas"], spec["strategy"])
	}
	for _, bad := range []struct {
		chart, ns, want string
		args            []string
	}{
		{server, "flotilla", "storage must be sqlite or postgres", []string{"--set", "storage=mysql"}},
		{server, "flotilla", "exactly one replica", []string{"--set", "replicas=2"}},
		{server, "flotilla", "needs postgres.existingSecret", []string{"--set", "storage=postgres"}},
		{server, "flotilla", "needs tls.existingSecret", []string{"--set", "storage=postgres", "--set", "postgres.existingSecret=db", "--set", "replicas=2"}},
		{server, "flotilla", "needs kek.existingSecret", []string{"--set", "storage=postgres", "--set", "postgres.existingSecret=db", "--set", "replicas=2", "--set", "tls.existingSecret=tls"}},
		{agent, "flotilla-system", "server is required", nil},
		{agent, "default", "namespace flotilla-system", agentValues},
	} {
		if _, err := render(bad.chart, bad.ns, bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("helm template %s %v: %v; want an error saying %q", bad.chart, bad.args, err, bad.want)
		}
	}
	objs, err = render(agent, "flotilla-system", agentValues...)
	if err != nil {
		t.Fatal(err)
	}
	role := objs["ClusterRole/flotilla-agent"]
	if role == nil || strings.Contains(fmt.Sprint(role.Object["rules"]), "impersonate") {
		t.Errorf("the agent's ClusterRole: %v", role)
	}

	// Both installed into a real cluster by the real helm (no kubelet runs: objects only).
	etcd := kube.StartEtcd(t)
	kc := kube.StartCluster(t, etcd, kube.Options{Name: "charts"})
	k := kubernetes.NewForConfigOrDie(kc.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kcfg := "--kubeconfig=" + kc.KubeconfigPath()
	if out, err := run(append([]string{"install", "flotilla-agent", agent, "-n", "flotilla-system", "--create-namespace", kcfg}, agentValues...)...); err != nil {
		t.Fatalf("helm install the agent: %v\n%s", err, out)
	}
	if out, err := run("install", "flotilla", server, "-n", "flotilla", "--create-namespace", kcfg, "--set", "image.tag=v1.2.3"); err != nil {
		t.Fatalf("helm install the server: %v\n%s", err, out)
	}
	if out, err := run("list", "-A", kcfg); err != nil || !strings.Contains(out, "flotilla-agent") || strings.Count(out, "deployed") != 2 {
		t.Errorf("helm list: %v\n%s", err, out)
	}
	d, err := k.AppsV1().Deployments("flotilla-system").Get(ctx, "flotilla-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sc := d.Spec.Template.Spec.Containers[0].SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("the agent's container security context: %+v", sc)
	}
	if s, err := k.CoreV1().Secrets("flotilla-system").Get(ctx, "flotilla-agent-registration", metav1.GetOptions{}); err != nil || string(s.Data["token"]) != "frt_example" {
		t.Errorf("the registration Secret: %v", err)
	}
	sts, err := k.AppsV1().StatefulSets("flotilla").Get(ctx, "flotilla", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := sts.Spec.Template.Spec.Containers[0].Image; img != "flotilla-server:v1.2.3" || len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("the server's StatefulSet: image %s, %d volume claims", img, len(sts.Spec.VolumeClaimTemplates))
	}
	if _, err := k.CoreV1().Services("flotilla").Get(ctx, "flotilla", metav1.GetOptions{}); err != nil {
		t.Errorf("the server's Service: %v", err)
	}

	// The agent's service account, asked of the cluster's own authorizer.
	kubectl := filepath.Join(kube.Binaries(t), "kubectl")
	canI := func(args ...string) string {
		out, err := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", kc.KubeconfigPath(), "auth", "can-i", "--as", "system:serviceaccount:flotilla-system:flotilla-agent"}, args...)...).Output()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "deployments", "-n", "shop"}, "yes"},
		{[]string{"delete", "customresourcedefinitions"}, "yes"},
		{[]string{"escalate", "clusterroles"}, "yes"},
		{[]string{"impersonate", "users"}, "no"},
		{[]string{"impersonate", "groups"}, "no"},
	} {
		if got := canI(c.args...); got != c.want {
			t.Errorf("the agent may %v: %s, want %s", c.args, got, c.want)
		}
	}
	if out, err := run("uninstall", "flotilla-agent", "-n", "flotilla-system", kcfg); err != nil {
		t.Errorf("helm uninstall: %v\n%s", err, out)
	}
}

func keys(m map[string]*unstructured.Unstructured) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
