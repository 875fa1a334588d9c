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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// TestAccessCompiledIntoClusters runs the real server and a real cluster (kube-apiserver and
// kube-controller-manager, for quota usage) with a real flotilla-agent, writes access objects
// through the API, and asks the cluster itself with kubectl auth can-i what a Flotilla user
// may do there.
func TestAccessCompiledIntoClusters(t *testing.T) {
	etcd := kube.StartEtcd(t)
	kc := kube.StartCluster(t, etcd, kube.Options{Name: "access-a", ControllerManager: true})
	kubectlBin := filepath.Join(kube.Binaries(t), "kubectl")
	k := kubernetes.NewForConfigOrDie(kc.RESTConfig())
	uid := clusterUID(t, k)

	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s"}})
	cl := srv.CLI(t)
	admin := adminClient(t, srv)
	ctx := testCtx(t, 10*time.Minute)
	put := func(kind, name string, spec any) {
		t.Helper()
		raw, _ := json.Marshal(spec)
		obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kind}, Metadata: api.ObjectMeta{Name: name}, Spec: raw}
		if _, _, err := admin.Apply(ctx, obj, false); err != nil {
			t.Fatalf("applying %s %s: %v", kind, name, err)
		}
	}
	del := func(kind, name string) {
		t.Helper()
		if _, err := admin.Delete(ctx, kind, "", name, ""); err != nil {
			t.Fatalf("deleting %s %s: %v", kind, name, err)
		}
	}

	tok := newToken(t, cl, "--ttl", "1h")
	startAgent(t, t.TempDir(), "--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", tok, "--kubeconfig", kc.KubeconfigPath(),
		"--labels", "env=prod", "--status-interval", "2s", "--log-level", "debug")
	var clusterName string
	eventually(t, time.Minute, "the cluster registered", func() error {
		o, _, err := serverCluster(ctx, admin, uid)
		if err == nil {
			clusterName = o.Metadata.Name
		}
		return err
	})

	// canI asks the cluster's own authorizer, as Flotilla's proxy would impersonate alice.
	canI := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", kc.KubeconfigPath(), "auth", "can-i", "--as", rbac.UserPrefix + "alice"}, args...)...)
		out, err := cmd.Output() // the answer; warnings go to stderr
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("kubectl: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	becomes := func(what, want string, args ...string) {
		t.Helper()
		eventually(t, time.Minute, what, func() error {
			if got := canI(args...); got != want {
				return fmt.Errorf("kubectl auth can-i %s: %q, want %q", strings.Join(args, " "), got, want)
			}
			return nil
		})
	}

	put(api.KindUser, "alice", api.UserSpec{DisplayName: "Alice"})
	if got := canI("list", "nodes"); got != "no" {
		t.Fatalf("alice may list nodes before any binding: %q", got)
	}

	// A binding on the prod clusters gives alice cluster-member there; unbinding takes it away.
	member := api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleClusterMember,
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}}
	put(api.KindRoleBinding, "alice-prod", member)
	becomes("alice may list nodes after the binding", "yes", "list", "nodes")
	if got := canI("delete", "nodes"); got != "no" {
		t.Errorf("cluster-member may delete nodes: %q", got)
	}
	eventually(t, time.Minute, "the cluster reports its access objects applied", func() error {
		obj, err := admin.Get(ctx, api.KindCluster, api.DefaultNamespace, clusterName)
		if err != nil {
			return err
		}
		if !strings.Contains(string(obj.Status), `"type":"AccessApplied","status":"True"`) {
			return fmt.Errorf("status %s", obj.Status)
		}
		return nil
	})
	del(api.KindRoleBinding, "alice-prod")
	becomes("alice may not list nodes after unbinding", "no", "list", "nodes")
	eventually(t, time.Minute, "the ClusterRoleBinding is pruned", func() error {
		_, err := k.RbacV1().ClusterRoleBindings().Get(ctx, rbac.ObjectPrefix+rbac.RoleClusterMember, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})

	// A project: its namespace, labelled, with quota and limit range; alice a member of it.
	project := api.ProjectSpec{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
		Namespaces:        []api.ProjectNamespace{{Name: "shop-web"}},
		NamespaceQuota:    &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "3"}},
		Quota:             &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "3"}},
		ContainerDefaults: &api.ContainerLimits{Default: map[string]string{"cpu": "200m"}, DefaultRequest: map[string]string{"cpu": "100m"}}}
	put(api.KindProject, "shop", project)
	put(api.KindRoleBinding, "alice-shop", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleProjectMember,
		Scope: api.BindingScope{Project: "shop"}})
	eventually(t, time.Minute, "the project namespace with its quota and limit range", func() error {
		ns, err := k.CoreV1().Namespaces().Get(ctx, "shop-web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ns.Labels[rbac.ProjectLabel] != "shop" {
			return fmt.Errorf("namespace labels %v", ns.Labels)
		}
		q, err := k.CoreV1().ResourceQuotas("shop-web").Get(ctx, rbac.ProjectObjectName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := q.Spec.Hard[corev1.ResourcePods]; h.String() != "3" {
			return fmt.Errorf("quota %v", q.Spec.Hard)
		}
		lr, err := k.CoreV1().LimitRanges("shop-web").Get(ctx, rbac.ProjectObjectName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(lr.Spec.Limits) != 1 || lr.Spec.Limits[0].Default.Cpu().String() != "200m" {
			return fmt.Errorf("limit range %+v", lr.Spec)
		}
		return nil
	})
	becomes("alice may create deployments in the project namespace", "yes", "create", "deployments", "-n", "shop-web")
	if got := canI("create", "deployments", "-n", "default"); got != "no" {
		t.Errorf("alice may create deployments outside her project: %q", got)
	}

	// The namespace selector: an existing namespace labelled team=shop joins the project on
	// this cluster, as the agent expands it.
	if _, err := k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop-extra", Labels: map[string]string{"team": "shop"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	project.NamespaceSelector = &api.LabelSelector{MatchLabels: map[string]string{"team": "shop"}}
	put(api.KindProject, "shop", project)
	eventually(t, time.Minute, "the selected namespace joined the project", func() error {
		ns, err := k.CoreV1().Namespaces().Get(ctx, "shop-extra", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ns.Labels[rbac.ProjectLabel] != "shop" {
			return fmt.Errorf("namespace labels %v", ns.Labels)
		}
		_, err = k.CoreV1().ResourceQuotas("shop-extra").Get(ctx, rbac.ProjectObjectName, metav1.GetOptions{})
		return err
	})
	becomes("alice may create deployments in the selected namespace", "yes", "create", "deployments", "-n", "shop-extra")

	// Usage: pods in the namespace count against its quota; the server rolls them up into
	// the Project's status, OverQuota once over the total.
	eventually(t, time.Minute, "the namespace's default service account", func() error {
		_, err := k.CoreV1().ServiceAccounts("shop-web").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	for i := range 2 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i)}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/app:1"}}}}
		if _, err := k.CoreV1().Pods("shop-web").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	projectStatus := func() (api.ProjectStatus, error) {
		obj, err := admin.Get(ctx, api.KindProject, "", "shop")
		if err != nil {
			return api.ProjectStatus{}, err
		}
		var ps api.ProjectStatus
		err = json.Unmarshal(obj.Status, &ps)
		return ps, err
	}
	eventually(t, 2*time.Minute, "the project's usage rolled up", func() error {
		ps, err := projectStatus()
		if err != nil {
			return err
		}
		if ps.Used["pods"] != "2" || len(ps.Conditions) != 1 || ps.Conditions[0].Status != "False" {
			return fmt.Errorf("status %+v", ps)
		}
		return nil
	})
	// Lowering the total below what runs: the namespace quota follows the project's own
	// namespaceQuota, the project total does not stop pods that already run.
	project.Quota = &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "1"}}
	project.NamespaceQuota = &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "1"}}
	put(api.KindProject, "shop", project)
	eventually(t, 2*time.Minute, "the project is over quota", func() error {
		ps, err := projectStatus()
		if err != nil {
			return err
		}
		if len(ps.Conditions) != 1 || ps.Conditions[0].Type != api.ConditionOverQuota || ps.Conditions[0].Status != "True" {
			return fmt.Errorf("status %+v", ps)
		}
		return nil
	})

	// Deleting the user: their bindings go with them, in the store and on the cluster.
	put(api.KindRoleBinding, "alice-prod", member)
	becomes("alice may list nodes after binding again", "yes", "list", "nodes")
	del(api.KindUser, "alice")
	becomes("a deleted user may not list nodes", "no", "list", "nodes")
	becomes("a deleted user may not create deployments in the project", "no", "create", "deployments", "-n", "shop-web")
	for _, b := range []string{"alice-prod", "alice-shop"} {
		if _, err := admin.Get(ctx, api.KindRoleBinding, "", b); !client.IsNotFound(err) {
			t.Errorf("role binding %s of a deleted user: %v", b, err)
		}
	}
	// The project namespace stays (it may hold workloads); the project's objects too.
	if _, err := k.CoreV1().Namespaces().Get(ctx, "shop-web", metav1.GetOptions{}); err != nil {
		t.Errorf("project namespace: %v", err)
	}
}
