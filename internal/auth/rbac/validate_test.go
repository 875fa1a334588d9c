package rbac

import (
	"errors"
	"strings"
	"testing"

	"flotilla.dev/api"
)

func sel(kv ...string) *api.LabelSelector {
	s := &api.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func TestValidateRole(t *testing.T) {
	a := New()
	if _, err := a.PutRole("viewer", api.RoleSpec{Context: api.RoleContextCluster, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get"}}}}); err != nil {
		t.Fatal(err)
	}
	ok := api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"gitrepos"}, Verbs: []string{"get"}}}}
	tests := []struct {
		name, role string
		spec       api.RoleSpec
		want       string // "" for valid
	}{
		{"valid", "r", ok, ""},
		{"valid resource forms", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{APIGroups: []string{"flotilla.dev", "fleet.cattle.io", "*"}, Resources: []string{"Cluster", "cg", "roles", "*"}, Verbs: []string{"*"}}}}, ""},
		{"bad name", "Bad_Name", ok, "metadata.name"},
		{"reserved name", "impersonator", ok, "reserved"},
		{"builtin", RoleAdmin, ok, "built in"},
		{"no context", "r", api.RoleSpec{}, `"" is not global, cluster or project`},
		{"unknown verb", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"patch"}}}}, `unknown verb "patch"`},
		{"no verbs", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"clusters"}}}}, "at least one verb"},
		{"unknown resource", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"pods"}, Verbs: []string{"get"}}}}, `unknown resource "pods"`},
		{"no resources", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Verbs: []string{"get"}}}}, "at least one resource"},
		{"foreign group", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"clusters"}, Verbs: []string{"get"}}}}, `"apps" is not`},
		{"empty resource name", "r", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get"}, ResourceNames: []string{""}}}}, "empty name"},
		{"kube rule without groups", "r", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{Resources: []string{"pods"}, Verbs: []string{"get"}}}}, "apiGroups: required"},
		{"kube rule empty", "r", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{Verbs: []string{"get"}}}}, "either resources"},
		{"kube rule mixed", "r", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, NonResourceURLs: []string{"/healthz"}, Verbs: []string{"get"}}}}, "cannot be combined"},
		{"kube rule no verbs", "r", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}}}}, "at least one verb"},
		{"non-resource URL in project role", "r", api.RoleSpec{Context: api.RoleContextProject, KubernetesRules: []api.KubernetesPolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}}, "not allowed in a project role"},
		{"unknown parent", "r", api.RoleSpec{Context: api.RoleContextCluster, InheritFrom: []string{"nope"}}, `unknown role "nope"`},
		{"parent of another context", "r", api.RoleSpec{Context: api.RoleContextGlobal, InheritFrom: []string{"viewer"}}, `role "viewer" has context cluster`},
		{"self", "r", api.RoleSpec{Context: api.RoleContextCluster, InheritFrom: []string{"r"}}, "cannot inherit from itself"},
		{"builtin parent", "r", api.RoleSpec{Context: api.RoleContextProject, InheritFrom: []string{RoleProjectMember}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.ValidateRole(tt.role, tt.spec)
			checkErr(t, err, tt.want)
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("got error %v, want none", err)
	case want != "" && err == nil:
		t.Fatalf("got no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("got error %q, want one containing %q", err, want)
	}
}

func TestRoleCycle(t *testing.T) {
	a := New()
	ctx := api.RoleContextCluster
	for _, r := range []struct {
		name    string
		parents []string
	}{{"c", nil}, {"b", []string{"c"}}, {"a", []string{"b"}}} {
		if _, err := a.PutRole(r.name, api.RoleSpec{Context: ctx, InheritFrom: r.parents}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.PutRole("c", api.RoleSpec{Context: ctx, InheritFrom: []string{"a"}})
	checkErr(t, err, "inheritance cycle: c → a → b → c")
	var inv *InvalidError
	if !errors.As(err, &inv) || inv.Causes[0].Field != "spec.inheritFrom" {
		t.Fatalf("got %#v, want an InvalidError on spec.inheritFrom", err)
	}
	// Nothing changed: c still inherits nothing.
	if got := a.roles["c"].spec.InheritFrom; len(got) != 0 {
		t.Fatalf("c inherits %v after a refused change", got)
	}

	// Load refuses a cycle given as a set, in any order, and keeps the rest.
	b := New()
	err = b.Load(map[string]api.RoleSpec{
		"x":  {Context: ctx, InheritFrom: []string{"y"}},
		"y":  {Context: ctx, InheritFrom: []string{"x"}},
		"ok": {Context: ctx, InheritFrom: []string{"z"}},
		"z":  {Context: ctx},
	}, nil, nil)
	checkErr(t, err, "inheritance cycle: x → y → x")
	if _, ok := b.roles["x"]; ok {
		t.Fatal("role x of a cycle was loaded")
	}
	if _, ok := b.roles["ok"]; !ok {
		t.Fatal("role ok, inheriting one loaded after it, was not loaded")
	}
}

func TestValidateBinding(t *testing.T) {
	a := New()
	if _, err := a.PutProject("web", api.ProjectSpec{ClusterSelector: sel("env", "prod")}); err != nil {
		t.Fatal(err)
	}
	user := api.Subject{Kind: api.SubjectUser, Name: "alice@example.com"}
	tests := []struct {
		name string
		spec api.RoleBindingSpec
		want string
	}{
		{"global", api.RoleBindingSpec{Subject: user, RoleRef: RoleAdmin, Scope: api.BindingScope{Global: true}}, ""},
		{"workspace", api.RoleBindingSpec{Subject: user, RoleRef: RoleReadOnly, Scope: api.BindingScope{Workspace: "fleet-default"}}, ""},
		{"selector", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{ClusterSelector: sel("env", "prod")}}, ""},
		{"every cluster", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterMember, Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{}}}, ""},
		{"selector in a workspace", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{ClusterSelector: sel("env", "prod"), Workspace: "edge"}}, ""},
		{"group scope", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectGroup, Name: "Domain Users"}, RoleRef: RoleClusterMember, Scope: api.BindingScope{ClusterGroup: "shops"}}, ""},
		{"cluster", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{Cluster: "c1"}}, ""},
		{"project", api.RoleBindingSpec{Subject: user, RoleRef: RoleProjectMember, Scope: api.BindingScope{Project: "web"}}, ""},
		{"subject kind", api.RoleBindingSpec{Subject: api.Subject{Kind: "ServiceAccount", Name: "x"}, RoleRef: RoleAdmin, Scope: api.BindingScope{Global: true}}, `"ServiceAccount" is not User or Group`},
		{"subject name", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser}, RoleRef: RoleAdmin, Scope: api.BindingScope{Global: true}}, "spec.subject.name: a name is required"},
		{"subject control char", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "a\nb"}, RoleRef: RoleAdmin, Scope: api.BindingScope{Global: true}}, "control character"},
		{"no scope", api.RoleBindingSpec{Subject: user, RoleRef: RoleAdmin}, "set one of"},
		{"two scopes", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{Cluster: "a", ClusterGroup: "g"}}, "got clusterGroup, cluster"},
		{"workspace with global", api.RoleBindingSpec{Subject: user, RoleRef: RoleAdmin, Scope: api.BindingScope{Global: true, Workspace: "w"}}, "only narrows"},
		{"unknown role", api.RoleBindingSpec{Subject: user, RoleRef: "nope", Scope: api.BindingScope{Global: true}}, `unknown role "nope"`},
		{"no role", api.RoleBindingSpec{Subject: user, Scope: api.BindingScope{Global: true}}, "a role name is required"},
		{"unknown project", api.RoleBindingSpec{Subject: user, RoleRef: RoleProjectMember, Scope: api.BindingScope{Project: "nope"}}, `unknown project "nope"`},
		{"invalid selector", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchExpressions: []api.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}}}, "invalid selector"},
		{"invalid selector value", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{ClusterSelector: sel("env", "has space")}}, "invalid selector"},
		{"project role globally", api.RoleBindingSpec{Subject: user, RoleRef: RoleProjectMember, Scope: api.BindingScope{Global: true}}, "has context project and cannot be bound at global scope; bind it with scope project"},
		{"cluster role globally", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{Global: true}}, "clusterSelector: {} covers every cluster"},
		{"cluster role in a workspace", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{Workspace: "w"}}, "cannot be bound at workspace scope"},
		{"global role on a cluster", api.RoleBindingSpec{Subject: user, RoleRef: RoleAdmin, Scope: api.BindingScope{Cluster: "c1"}}, "has context global and cannot be bound at cluster scope"},
		{"cluster role on a project", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterMember, Scope: api.BindingScope{Project: "web"}}, "cannot be bound at project scope"},
		{"bad cluster name", api.RoleBindingSpec{Subject: user, RoleRef: RoleClusterOwner, Scope: api.BindingScope{Cluster: "A B"}}, "spec.scope.cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.ValidateBinding("b1", tt.spec)
			checkErr(t, err, tt.want)
			_, err = a.PutBinding("b1", tt.spec)
			checkErr(t, err, tt.want)
			_, exists := a.bindings["b1"]
			if exists != (tt.want == "") {
				t.Fatalf("binding stored: %v, want %v", exists, tt.want == "")
			}
			if exists {
				if _, err := a.DeleteBinding("b1"); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if len(a.subjects) != 0 || len(a.byTarget) != 0 || len(a.byScope) != 0 || len(a.global) != 0 || len(a.sels) != 1 {
		t.Fatalf("index not empty after every binding was deleted: %d subjects, %d targets, %d scopes, %d global, %d selectors (want only the project's)",
			len(a.subjects), len(a.byTarget), len(a.byScope), len(a.global), len(a.sels))
	}
}

func TestValidateProject(t *testing.T) {
	q := func(kv ...string) *api.ResourceQuotaSpec {
		return &api.ResourceQuotaSpec{Hard: sel(kv...).MatchLabels}
	}
	tests := []struct {
		name string
		spec api.ProjectSpec
		want string
	}{
		{"valid", api.ProjectSpec{ClusterSelector: sel("env", "prod"), Namespaces: []api.ProjectNamespace{{Name: "web"}, {Name: "db", Quota: q("requests.cpu", "2")}}, NamespaceQuota: q("requests.cpu", "1", "pods", "10"), Quota: q("requests.cpu", "3"), ContainerDefaults: &api.ContainerLimits{Default: map[string]string{"cpu": "500m"}}}, ""},
		{"kube-system", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "kube-system"}}}, "system namespace"},
		{"default", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "default"}}}, "system namespace"},
		{"agent namespace", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: AgentNamespace}}}, "system namespace"},
		{"twice", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "a"}, {Name: "a"}}}, "listed twice"},
		{"bad namespace", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "A.b"}}}, "spec.namespaces[0].name"},
		{"bad quantity", api.ProjectSpec{NamespaceQuota: q("requests.cpu", "lots")}, `"lots" is not a quantity`},
		{"negative", api.ProjectSpec{Quota: q("pods", "-1")}, "negative"},
		{"empty quota", api.ProjectSpec{Quota: &api.ResourceQuotaSpec{}}, "at least one resource"},
		{"bad resource name", api.ProjectSpec{Quota: q("a b", "1")}, "not a resource name"},
		{"bad limit", api.ProjectSpec{ContainerDefaults: &api.ContainerLimits{Max: map[string]string{"memory": "x"}}}, "spec.containerDefaults.max.memory"},
		{"bad cluster selector", api.ProjectSpec{ClusterSelector: &api.LabelSelector{MatchExpressions: []api.LabelSelectorRequirement{{Key: "a", Operator: "In"}}}}, "spec.clusterSelector"},
		{"bad namespace selector", api.ProjectSpec{NamespaceSelector: sel("-x", "y")}, "spec.namespaceSelector"},
		{"namespaces over the total", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "a"}, {Name: "b"}, {Name: "c", Quota: q("limits.memory", "1Gi")}}, NamespaceQuota: q("limits.memory", "2Gi"), Quota: q("limits.memory", "4Gi")}, "add up to 5Gi, more than the project's 4Gi"},
		{"namespaces at the total", api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "a"}, {Name: "b"}}, NamespaceQuota: q("limits.memory", "2Gi"), Quota: q("limits.memory", "4Gi")}, ""},
	}
	a := New()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.PutProject("p", tt.spec)
			checkErr(t, err, tt.want)
			if _, ok := a.projects["p"]; ok != (tt.want == "") {
				t.Fatalf("project stored: %v", ok)
			}
			if ok := tt.want == ""; ok {
				if _, err := a.DeleteProject("p"); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestDeleteRefusedWhileUsed(t *testing.T) {
	a := New()
	mustRole(t, a, "base", api.RoleSpec{Context: api.RoleContextCluster})
	mustRole(t, a, "child", api.RoleSpec{Context: api.RoleContextCluster, InheritFrom: []string{"base"}})
	mustProject(t, a, "p", api.ProjectSpec{})
	mustBind(t, a, "b1", "alice", "child", api.BindingScope{Cluster: "c"})
	mustBind(t, a, "b2", "alice", RoleProjectMember, api.BindingScope{Project: "p"})

	checkErr(t, a.DeleteRole("base"), `role "base" is still used by role child`)
	checkErr(t, a.DeleteRole("child"), "role binding b1")
	checkErr(t, a.DeleteRole(RoleAdmin), "built in")
	checkErr(t, a.DeleteRole("nope"), "not found")
	_, err := a.DeleteProject("p")
	checkErr(t, err, `project "p" still has role bindings (b2)`)
	_, err = a.PutRole("child", api.RoleSpec{Context: api.RoleContextGlobal})
	checkErr(t, err, "the context cannot change while the role is used by role binding b1")
	_, err = a.PutRole("base", api.RoleSpec{Context: api.RoleContextGlobal})
	checkErr(t, err, "used by role child")

	for _, b := range []string{"b1", "b2"} {
		if _, err := a.DeleteBinding(b); err != nil {
			t.Fatal(err)
		}
	}
	checkErr(t, a.DeleteRole("child"), "")
	checkErr(t, a.DeleteRole("base"), "")
	_, err = a.DeleteProject("p")
	checkErr(t, err, "")
}

func mustRole(t testing.TB, a *Authorizer, name string, spec api.RoleSpec) {
	t.Helper()
	if _, err := a.PutRole(name, spec); err != nil {
		t.Fatal(err)
	}
}

func mustProject(t testing.TB, a *Authorizer, name string, spec api.ProjectSpec) {
	t.Helper()
	if _, err := a.PutProject(name, spec); err != nil {
		t.Fatal(err)
	}
}

// mustBind binds a user, or a group when subject starts with "group:".
func mustBind(t testing.TB, a *Authorizer, name, subject, role string, scope api.BindingScope) Coverage {
	t.Helper()
	s := api.Subject{Kind: api.SubjectUser, Name: subject}
	if g, ok := strings.CutPrefix(subject, "group:"); ok {
		s = api.Subject{Kind: api.SubjectGroup, Name: g}
	}
	cov, err := a.PutBinding(name, api.RoleBindingSpec{Subject: s, RoleRef: role, Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	return cov
}
