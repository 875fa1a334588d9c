package rbac

import (
	"slices"
	"strings"
	"testing"

	"flotilla.dev/api"
)

var (
	prodShop = &Cluster{Name: "shop-1", Workspace: "fleet-default", Labels: map[string]string{"env": "prod", "site": "shop"}, Groups: []string{"shops"}}
	devBox   = &Cluster{Name: "dev-1", Workspace: "fleet-default", Labels: map[string]string{"env": "dev"}}
	edgeBox  = &Cluster{Name: "shop-1", Workspace: "edge", Labels: map[string]string{"env": "prod"}}
)

// TestBuiltinDecisions checks what each built-in role grants in Flotilla's API, bound at a
// scope its context allows.
func TestBuiltinDecisions(t *testing.T) {
	a := New()
	mustProject(t, a, "web", api.ProjectSpec{ClusterSelector: sel("env", "prod"), Namespaces: []api.ProjectNamespace{{Name: "web"}}})
	mustBind(t, a, "admin", "root", RoleAdmin, api.BindingScope{Global: true})
	mustBind(t, a, "ro", "auditor", RoleReadOnly, api.BindingScope{Global: true})
	mustBind(t, a, "co", "owner", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod")})
	mustBind(t, a, "cm", "member", RoleClusterMember, api.BindingScope{ClusterGroup: "shops"})
	mustBind(t, a, "po", "powner", RoleProjectOwner, api.BindingScope{Project: "web"})
	mustBind(t, a, "pm", "pmember", RoleProjectMember, api.BindingScope{Project: "web"})

	type req struct {
		verb, kind, ns, name string
		cluster              *Cluster
	}
	tests := []struct {
		user string
		r    req
		want bool
	}{
		{"root", req{"delete", api.KindGitRepo, "fleet-default", "x", nil}, true},
		{"root", req{"create", api.KindRoleBinding, "", "", nil}, true},
		{"root", req{"update", api.KindCluster, "edge", "shop-1", edgeBox}, true},

		{"auditor", req{"list", api.KindSecret, "fleet-default", "", nil}, true},
		{"auditor", req{"watch", api.KindUser, "", "", nil}, true},
		{"auditor", req{"get", api.KindCluster, "fleet-default", "dev-1", devBox}, true},
		{"auditor", req{"update", api.KindGitRepo, "fleet-default", "x", nil}, false},
		{"auditor", req{"delete", api.KindCluster, "fleet-default", "dev-1", devBox}, false},

		{"owner", req{"get", api.KindCluster, "fleet-default", "shop-1", prodShop}, true},
		{"owner", req{"update", api.KindCluster, "fleet-default", "shop-1", prodShop}, true},
		{"owner", req{"delete", api.KindCluster, "edge", "shop-1", edgeBox}, true},
		{"owner", req{"get", api.KindCluster, "fleet-default", "dev-1", devBox}, false},
		{"owner", req{"create", api.KindCluster, "fleet-default", "", nil}, false},
		{"owner", req{"list", api.KindGitRepo, "fleet-default", "", nil}, false},
		{"owner", req{"create", api.KindProject, "", "", prodShop}, true},

		{"member", req{"get", api.KindCluster, "fleet-default", "shop-1", prodShop}, true},
		{"member", req{"update", api.KindCluster, "fleet-default", "shop-1", prodShop}, false},
		{"member", req{"get", api.KindCluster, "edge", "shop-1", edgeBox}, false}, // not in the group
		{"member", req{"get", api.KindCluster, "fleet-default", "dev-1", devBox}, false},

		{"powner", req{"get", api.KindProject, "", "web", nil}, true},
		{"powner", req{"update", api.KindProject, "", "web", nil}, false},
		{"powner", req{"get", api.KindProject, "", "other", nil}, false},
		{"powner", req{"get", api.KindCluster, "fleet-default", "shop-1", prodShop}, true},
		{"pmember", req{"watch", api.KindProject, "", "web", nil}, true},
		{"pmember", req{"get", api.KindCluster, "edge", "shop-1", edgeBox}, true},
		{"pmember", req{"get", api.KindCluster, "fleet-default", "dev-1", devBox}, false},
		{"pmember", req{"delete", api.KindCluster, "fleet-default", "shop-1", prodShop}, false},
		{"pmember", req{"get", api.KindGitRepo, "fleet-default", "x", nil}, false},

		{"nobody", req{"get", api.KindCluster, "fleet-default", "shop-1", prodShop}, false},
		{"root", req{"patch", api.KindCluster, "fleet-default", "shop-1", prodShop}, false}, // unknown verb
		{"root", req{"*", api.KindCluster, "fleet-default", "shop-1", prodShop}, false},     // not a request verb
	}
	for _, tt := range tests {
		r := Request{Verb: tt.r.verb, Kind: tt.r.kind, Namespace: tt.r.ns, Name: tt.r.name, Cluster: tt.r.cluster}
		d := a.Decide(Subject{User: tt.user}, r)
		if d.Allowed != tt.want {
			t.Errorf("%s %s %s %s/%s: got allowed=%v (%s), want %v", tt.user, tt.r.verb, tt.r.kind, tt.r.ns, tt.r.name, d.Allowed, d.Reason(), tt.want)
		}
	}
}

func TestDecideScopesAndGroups(t *testing.T) {
	a := New()
	mustRole(t, a, "gitops", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"gitrepos", "bundles"}, Verbs: []string{"*"}}}})
	mustRole(t, a, "one-repo", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"gitrepos"}, Verbs: []string{"update"}, ResourceNames: []string{"apps"}}}})
	mustBind(t, a, "ws", "group:devs", "gitops", api.BindingScope{Workspace: "team-a"})
	mustBind(t, a, "named", "carol", "one-repo", api.BindingScope{Global: true})
	mustBind(t, a, "edge-only", "dave", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod"), Workspace: "edge"})
	mustBind(t, a, "by-name", "erin", RoleClusterMember, api.BindingScope{Cluster: "shop-1"})

	tests := []struct {
		name string
		s    Subject
		r    Request
		want bool
		why  string
	}{
		{"group in workspace", Subject{User: "bob", Groups: []string{"x", "devs"}}, Request{Verb: "create", Kind: api.KindGitRepo, Namespace: "team-a"}, true, `role binding "ws"`},
		{"group elsewhere", Subject{User: "bob", Groups: []string{"devs"}}, Request{Verb: "create", Kind: api.KindGitRepo, Namespace: "team-b"}, false, `user "bob" may not create GitRepo`},
		{"group other kind", Subject{User: "bob", Groups: []string{"devs"}}, Request{Verb: "get", Kind: api.KindCluster, Namespace: "team-a"}, false, ""},
		{"user named like the group", Subject{User: "devs"}, Request{Verb: "get", Kind: api.KindGitRepo, Namespace: "team-a"}, false, ""},
		{"resource name", Subject{User: "carol"}, Request{Verb: "update", Kind: api.KindGitRepo, Namespace: "w", Name: "apps"}, true, ""},
		{"other name", Subject{User: "carol"}, Request{Verb: "update", Kind: api.KindGitRepo, Namespace: "w", Name: "infra"}, false, `may not update GitRepo infra`},
		{"list with names", Subject{User: "carol"}, Request{Verb: "update", Kind: api.KindGitRepo, Namespace: "w"}, false, ""},
		{"selector narrowed to workspace", Subject{User: "dave"}, Request{Verb: "update", Kind: api.KindCluster, Namespace: "edge", Name: "shop-1", Cluster: edgeBox}, true, ""},
		{"selector outside workspace", Subject{User: "dave"}, Request{Verb: "update", Kind: api.KindCluster, Namespace: "fleet-default", Name: "shop-1", Cluster: prodShop}, false, ""},
		{"cluster by name in the default workspace", Subject{User: "erin"}, Request{Verb: "get", Kind: api.KindCluster, Name: "shop-1", Cluster: prodShop}, true, ""},
		{"same name in another workspace", Subject{User: "erin"}, Request{Verb: "get", Kind: api.KindCluster, Name: "shop-1", Cluster: edgeBox}, false, ""},
		{"cluster scope without a cluster", Subject{User: "erin"}, Request{Verb: "list", Kind: api.KindCluster, Namespace: "fleet-default"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := a.Decide(tt.s, tt.r)
			if d.Allowed != tt.want {
				t.Fatalf("got allowed=%v (%s), want %v", d.Allowed, d.Reason(), tt.want)
			}
			if !strings.Contains(d.Reason(), tt.why) {
				t.Fatalf("reason %q does not contain %q", d.Reason(), tt.why)
			}
		})
	}
}

func TestIncrementalUpdates(t *testing.T) {
	a := New()
	alice := Subject{User: "alice"}
	get := Request{Verb: "get", Kind: api.KindCluster, Namespace: "fleet-default", Name: "shop-1", Cluster: prodShop}
	upd := get
	upd.Verb = "update"
	check := func(step string, r Request, want bool) {
		t.Helper()
		if d := a.Decide(alice, r); d.Allowed != want {
			t.Fatalf("%s: %s: got %v (%s), want %v", step, r.Verb, d.Allowed, d.Reason(), want)
		}
	}
	check("empty", get, false)
	mustRole(t, a, "base", api.RoleSpec{Context: api.RoleContextCluster})
	mustRole(t, a, "ops", api.RoleSpec{Context: api.RoleContextCluster, InheritFrom: []string{"base"}})
	mustBind(t, a, "b", "alice", "ops", api.BindingScope{ClusterGroup: "shops"})
	check("role grants nothing", get, false)

	// A change to an inherited role reaches the inheriting role's bindings.
	mustRole(t, a, "base", api.RoleSpec{Context: api.RoleContextCluster, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get"}}}})
	check("inherited grant", get, true)
	check("inherited grant", upd, false)
	mustRole(t, a, "ops", api.RoleSpec{Context: api.RoleContextCluster, InheritFrom: []string{"base"}, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"update"}}}})
	check("own grant", upd, true)

	// Replacing the binding moves it.
	mustBind(t, a, "b", "alice", "ops", api.BindingScope{Cluster: "other"})
	check("moved away", get, false)
	mustBind(t, a, "b", "alice", "ops", api.BindingScope{Cluster: "shop-1"})
	check("moved back", get, true)

	a.SetUserDisabled("alice", true)
	if d := a.Decide(alice, get); d.Allowed || d.Reason() != `user "alice" is disabled` {
		t.Fatalf("disabled: got %v (%s)", d.Allowed, d.Reason())
	}
	a.SetUserDisabled("alice", false)
	check("enabled", get, true)

	if got := a.BindingsOf(api.SubjectUser, "alice"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("BindingsOf: got %v", got)
	}
	if _, err := a.DeleteBinding("b"); err != nil {
		t.Fatal(err)
	}
	check("deleted", get, false)
	if _, err := a.DeleteBinding("b"); err == nil {
		t.Fatal("deleting a deleted binding: no error")
	}
}

func TestDecideAllocatesNothing(t *testing.T) {
	a := New()
	mustProject(t, a, "web", api.ProjectSpec{ClusterSelector: sel("env", "prod")})
	mustBind(t, a, "a", "group:ops", RoleClusterMember, api.BindingScope{ClusterSelector: sel("site", "shop")})
	mustBind(t, a, "b", "bob", RoleProjectMember, api.BindingScope{Project: "web"})
	s := Subject{User: "bob", Groups: []string{"x", "ops"}}
	r := Request{Verb: "get", Kind: api.KindCluster, Namespace: "fleet-default", Name: "shop-1", Cluster: prodShop}
	for _, r := range []Request{r, {Verb: "delete", Kind: api.KindGitRepo, Namespace: "fleet-default", Name: "x"}} {
		if n := testing.AllocsPerRun(100, func() { a.Decide(s, r) }); n != 0 {
			t.Errorf("%s %s: %v allocations per decision, want 0", r.Verb, r.Kind, n)
		}
	}
}

func TestClusterFilter(t *testing.T) {
	a := New()
	mustProject(t, a, "web", api.ProjectSpec{ClusterSelector: sel("site", "dc")})
	mustRole(t, a, "named", api.RoleSpec{Context: api.RoleContextCluster, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get", "list"}, ResourceNames: []string{"dev-1"}}}})
	mustBind(t, a, "sel", "alice", RoleClusterMember, api.BindingScope{ClusterSelector: sel("env", "prod"), Workspace: "fleet-default"})
	mustBind(t, a, "grp", "group:ops", RoleClusterMember, api.BindingScope{ClusterGroup: "g"})
	mustBind(t, a, "prj", "alice", RoleProjectMember, api.BindingScope{Project: "web"})
	mustBind(t, a, "nm", "alice", "named", api.BindingScope{ClusterSelector: &api.LabelSelector{}})
	mustBind(t, a, "other", "bob", RoleClusterMember, api.BindingScope{ClusterSelector: &api.LabelSelector{}})

	f := a.ClusterFilter(Subject{User: "alice", Groups: []string{"ops"}}, "list")
	if f.All() {
		t.Fatal("alice may see every cluster?")
	}
	if got := len(f.Entries()); got != 4 {
		t.Fatalf("got %d entries, want 4 (selector, group, project, named): %+v", got, f.Entries())
	}
	tests := []struct {
		c    Cluster
		want bool
	}{
		{*prodShop, true},
		{*edgeBox, false}, // selector narrowed to fleet-default
		{Cluster{Name: "x", Workspace: "fleet-default", Groups: []string{"g"}}, true},
		{Cluster{Name: "x", Workspace: "edge", Groups: []string{"g"}}, false}, // another workspace's group g
		{Cluster{Name: "y", Workspace: "edge", Labels: map[string]string{"site": "dc"}}, true},
		{*devBox, true}, // by name
		{Cluster{Name: "dev-2", Labels: map[string]string{"env": "dev"}}, false},
	}
	for _, tt := range tests {
		if got := f.Matches(tt.c); got != tt.want {
			t.Errorf("%s/%s %v: got %v, want %v", tt.c.Workspace, tt.c.Name, tt.c.Labels, got, tt.want)
		}
		// The filter agrees with one decision per cluster.
		c := tt.c
		if d := a.Decide(Subject{User: "alice", Groups: []string{"ops"}}, Request{Verb: "list", Kind: api.KindCluster, Namespace: c.Workspace, Name: c.Name, Cluster: &c}); d.Allowed != tt.want {
			t.Errorf("%s/%s: Decide says %v, filter %v", c.Workspace, c.Name, d.Allowed, tt.want)
		}
	}
	if !a.ClusterFilter(Subject{User: "bob"}, "watch").All() {
		t.Fatal("bob's filter is not All")
	}
	if f := a.ClusterFilter(Subject{User: "bob"}, "delete"); len(f.Entries()) != 0 {
		t.Fatalf("bob may delete: %+v", f.Entries())
	}
	a.SetUserDisabled("bob", true)
	if f := a.ClusterFilter(Subject{User: "bob"}, "get"); f.Matches(*prodShop) {
		t.Fatal("a disabled user's filter matches")
	}
}

func TestCoverage(t *testing.T) {
	a := New()
	mustProject(t, a, "web", api.ProjectSpec{ClusterSelector: sel("env", "prod")})
	mustRole(t, a, "flotilla-only", api.RoleSpec{Context: api.RoleContextCluster, Rules: []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get"}}}})

	all := mustBind(t, a, "all", "alice", RoleAdmin, api.BindingScope{Global: true})
	if !all.All() {
		t.Fatalf("a global admin binding covers %+v, want every cluster", all.Sets)
	}
	if cov := mustBind(t, a, "ro", "alice", RoleReadOnly, api.BindingScope{Global: true}); !cov.Empty() {
		t.Fatalf("read-only pushes nothing downstream but covers %+v", cov.Sets)
	}
	if cov := mustBind(t, a, "fo", "alice", "flotilla-only", api.BindingScope{Cluster: "c1"}); !cov.Empty() {
		t.Fatalf("a role without Kubernetes rules covers %+v", cov.Sets)
	}
	cov := mustBind(t, a, "s", "bob", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod"), Workspace: "edge"})
	if len(cov.Sets) != 1 || cov.Sets[0].Workspace != "edge" || cov.Sets[0].Selector.MatchLabels["env"] != "prod" {
		t.Fatalf("selector binding covers %+v", cov.Sets)
	}
	if !cov.Matches(*edgeBox) || cov.Matches(*prodShop) {
		t.Fatal("selector coverage matches the wrong clusters")
	}
	// Moving a binding covers both where it was and where it is.
	cov = mustBind(t, a, "s", "bob", RoleClusterOwner, api.BindingScope{Cluster: "dev-1"})
	if !cov.Matches(*edgeBox) || !cov.Matches(*devBox) || cov.Matches(*prodShop) {
		t.Fatalf("moved binding covers %+v", cov.Sets)
	}
	if cov := mustBind(t, a, "p", "bob", RoleProjectMember, api.BindingScope{Project: "web"}); !cov.Matches(*prodShop) || cov.Matches(*devBox) {
		t.Fatalf("project binding covers %+v", cov.Sets)
	}
	// A role gaining Kubernetes rules covers where it is bound, even though it pushed
	// nothing before.
	cov, err := a.PutRole("flotilla-only", api.RoleSpec{Context: api.RoleContextCluster, KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cov.Sets) != 1 || cov.Sets[0].Cluster != "c1" {
		t.Fatalf("role change covers %+v, want cluster c1", cov.Sets)
	}
	// A role inherited by admin's bindings: changing cluster-member's parent covers every
	// cluster cluster-owner is bound to.
	if cov := a.BindingCoverage("all"); !cov.All() {
		t.Fatalf("BindingCoverage(all) = %+v", cov.Sets)
	}
}

func TestImpersonation(t *testing.T) {
	a := New()
	mustBind(t, a, "u", "alice", RoleClusterMember, api.BindingScope{Cluster: "shop-1"})
	mustBind(t, a, "g", "group:ops", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod")})
	mustBind(t, a, "ro", "group:all", RoleReadOnly, api.BindingScope{Global: true})

	tests := []struct {
		s      Subject
		c      *Cluster
		user   string
		groups []string
		ok     bool
	}{
		{Subject{User: "alice", Groups: []string{"ops", "all"}}, prodShop, "flotilla:user:alice", []string{"flotilla:group:ops"}, true},
		{Subject{User: "bob", Groups: []string{"ops"}}, prodShop, GroupMemberUser, []string{"flotilla:group:ops"}, true},
		{Subject{User: "bob", Groups: []string{"ops", "all"}}, devBox, "", nil, false},
		{Subject{User: "alice"}, edgeBox, "", nil, false},
		{Subject{User: "alice"}, prodShop, "flotilla:user:alice", nil, true},
	}
	for _, tt := range tests {
		user, groups, ok := a.Impersonation(tt.s, *tt.c)
		if user != tt.user || !slices.Equal(groups, tt.groups) || ok != tt.ok {
			t.Errorf("%v on %s: got %q %v %v, want %q %v %v", tt.s, tt.c.Name, user, groups, ok, tt.user, tt.groups, tt.ok)
		}
	}
}
