package rbac

import (
	"strings"
	"testing"

	"flotilla.dev/api"
)

func TestMayGrantIsAdminMayAny(t *testing.T) {
	a := New()
	mustRole(t, a, "binder", api.RoleSpec{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"rolebindings"}, Verbs: []string{"create"}}}})
	mustBind(t, a, "dev-owner", "alice", RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "dev")})
	mustBind(t, a, "ws-ro", "alice", RoleReadOnly, api.BindingScope{Workspace: "team-a"})
	mustBind(t, a, "edge", "alice", RoleClusterMember, api.BindingScope{Cluster: "edge-1", Workspace: "edge"})
	mustBind(t, a, "root", "group:ops", RoleAdmin, api.BindingScope{Global: true})
	mustBind(t, a, "b", "bob", "binder", api.BindingScope{Global: true})

	alice := Subject{User: "alice"}
	grants := []struct {
		role  string
		scope api.BindingScope
		want  bool
	}{
		{RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "dev")}, true},
		{RoleClusterMember, api.BindingScope{ClusterSelector: sel("env", "dev")}, true}, // owner inherits member
		{RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod")}, false},
		{RoleAdmin, api.BindingScope{Global: true}, false},
		{RoleReadOnly, api.BindingScope{Workspace: "team-a"}, true},
		{RoleReadOnly, api.BindingScope{Workspace: "team-b"}, false},
		{RoleReadOnly, api.BindingScope{Global: true}, false},
		{RoleClusterMember, api.BindingScope{Cluster: "edge-1", Workspace: "edge"}, true},
		{RoleClusterMember, api.BindingScope{Cluster: "edge-1"}, false}, // fleet-default's edge-1
		{RoleClusterOwner, api.BindingScope{Cluster: "edge-1", Workspace: "edge"}, false},
		{"nosuch", api.BindingScope{Global: true}, false},
	}
	for _, g := range grants {
		if got := a.MayGrant(alice, g.role, g.scope); got != g.want {
			t.Errorf("alice MayGrant %s at %s = %v, want %v", g.role, g.scope, got, g.want)
		}
	}
	ops := Subject{User: "carol", Groups: []string{"ops"}}
	if !a.MayGrant(ops, RoleClusterOwner, api.BindingScope{ClusterSelector: sel("env", "prod")}) || !a.IsAdmin(ops) {
		t.Error("a global admin through a group may grant anything and is an admin")
	}
	if a.IsAdmin(alice) || a.IsAdmin(Subject{User: "bob"}) {
		t.Error("alice and bob are not admins")
	}
	if !a.MayAny(alice, "update", api.KindCluster) || a.MayAny(alice, "delete", api.KindGitRepo) || !a.MayAny(Subject{User: "bob"}, "create", api.KindRoleBinding) {
		t.Error("MayAny")
	}
	a.SetUserDisabled("carol", true)
	if a.IsAdmin(ops) || a.MayGrant(ops, RoleReadOnly, api.BindingScope{Global: true}) || a.MayAny(ops, "get", api.KindCluster) {
		t.Error("a disabled user is nothing")
	}
	if refs := a.RoleInUse("binder"); !strings.Contains(refs, `role binding b`) {
		t.Errorf("RoleInUse(binder) = %q", refs)
	}
	if refs := a.RoleInUse(RoleClusterMember); !strings.Contains(refs, "role cluster-owner") {
		t.Errorf("RoleInUse(cluster-member) = %q", refs)
	}
}
