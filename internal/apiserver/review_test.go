package apiserver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// A user who may write roles must not raise what a role already bound grants: that would
// hand itself (or others) rights no binding author could grant.
func TestReviewRoleUpdateCannotEscalate(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "role-editor", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"roles"}, Verbs: []string{"get", "list", "create", "update"}}}}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("mallory-roles", "role-editor", api.Subject{Kind: api.SubjectUser, Name: "mallory"}, api.BindingScope{Global: true}), http.StatusCreated)
	mallory := e.as("mallory")
	mallory.mustDo("GET", base+"/gitrepos", nil, http.StatusForbidden)

	// Widening the role bound to oneself, or making it inherit admin.
	for _, spec := range []api.RoleSpec{
		{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"*"}, Verbs: []string{"*"}}}},
		{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"roles"}, Verbs: []string{"get"}}}, InheritFrom: []string{"admin"}},
	} {
		before := e.snapshot()
		code, body := mallory.json("PUT", base+"/roles/role-editor", newObj(api.KindRole, "", "role-editor", nil, spec))
		e.refused("widening a bound role", code, body, before, http.StatusForbidden, "in use")
		mallory.mustDo("GET", base+"/gitrepos", nil, http.StatusForbidden)
	}
	// Through PATCH as well.
	before := e.snapshot()
	code, body := mallory.do("PATCH", base+"/roles/role-editor", "application/merge-patch+json", []byte(`{"spec":{"inheritFrom":["admin"]}}`))
	e.refused("widening a bound role by a patch", code, body, before, http.StatusForbidden, "in use")

	// A role nobody holds may be written: binding it still needs MayGrant.
	mallory.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "draft", nil, api.RoleSpec{Context: api.RoleContextGlobal, InheritFrom: []string{"admin"}}), http.StatusCreated)
	mallory.mustDo("PUT", base+"/roles/draft", newObj(api.KindRole, "", "draft", nil, api.RoleSpec{Context: api.RoleContextGlobal}), http.StatusOK)
	// An administrator still changes a bound role.
	e.mustDo("PUT", base+"/roles/role-editor", newObj(api.KindRole, "", "role-editor", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"roles"}, Verbs: []string{"get"}}}}), http.StatusOK)
}

// A dry run (or a refused update) of a User that disables it must not disable it.
func TestReviewDryRunDoesNotDisableUser(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/users", newObj(api.KindUser, "", "bob", nil, api.UserSpec{}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("bob-ro", "read-only", api.Subject{Kind: api.SubjectUser, Name: "bob"}, api.BindingScope{Global: true}), http.StatusCreated)
	bob := e.as("bob")
	bob.mustDo("GET", base+"/gitrepos", nil, http.StatusOK)
	e.mustDo("PUT", base+"/users/bob?dryRun=All", newObj(api.KindUser, "", "bob", nil, api.UserSpec{Disabled: true}), http.StatusOK)
	bob.mustDo("GET", base+"/gitrepos", nil, http.StatusOK)
}

// A caller allowed to update some objects must get the same 403 for an object it may not
// update whether or not it exists: a 404, 409 or 422 would let it probe names.
func TestReviewWritesDoNotProbeNames(t *testing.T) {
	e := newEnv(t)
	e.fleetOfFour()
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-owner",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice := e.as("alice")
	stale := newObj(api.KindCluster, "fleet-default", "", map[string]string{"env": "dev"}, api.ClusterSpec{})
	stale.Metadata.ResourceVersion = "1"
	bad := newObj(api.KindCluster, "fleet-default", "", map[string]string{"env": "dev", "bad key!": "x"}, api.ClusterSpec{})
	for _, name := range []string{"prod1", "nosuch"} {
		before := e.snapshot()
		code, body := alice.json("PUT", clustersPath+"/"+name, stale)
		e.refused("a stale update of "+name, code, body, before, http.StatusForbidden, "may not")
		code, body = alice.json("PUT", clustersPath+"/"+name, bad)
		e.refused("an invalid update of "+name, code, body, before, http.StatusForbidden, "may not")
		code, body = alice.do("PATCH", clustersPath+"/"+name, "application/merge-patch+json", []byte(`{"spec":{"paused":true}}`))
		e.refused("a patch of "+name, code, body, before, http.StatusForbidden, "may not")
	}
	// Its own clusters still answer as before.
	alice.mustDo("PUT", clustersPath+"/dev1", stale, http.StatusConflict)
	if code, body := alice.do("PATCH", clustersPath+"/dev1", "application/merge-patch+json", []byte(`{"spec":{"paused":true}}`)); code != http.StatusOK {
		t.Fatalf("patching an own cluster: %d %s", code, body)
	}
}

// A holder of a project role that may update its Project widens what every binding scoped to
// the project grants, its own included, by changing the project's cluster selector. The same
// holds for a ClusterGroup that bindings are scoped to (its selector) and a workspace editor.
func TestReviewProjectScopeCannotBeWidened(t *testing.T) {
	e := newEnv(t)
	e.fleetOfFour()
	e.mustDo("POST", base+"/projects", newObj(api.KindProject, "", "web", nil, api.ProjectSpec{
		ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	e.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "project-admin", nil, api.RoleSpec{Context: api.RoleContextProject,
		Rules: []api.PolicyRule{{Resources: []string{"projects"}, Verbs: []string{"get", "update"}}, {Resources: []string{"clusters"}, Verbs: []string{"get", "list"}}}}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("alice-web", "project-admin", api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{Project: "web"}), http.StatusCreated)
	alice := e.as("alice")
	alice.mustDo("GET", clustersPath+"/prod1", nil, http.StatusForbidden)
	before := e.snapshot()
	code, body := alice.json("PUT", base+"/projects/web", newObj(api.KindProject, "", "web", nil, api.ProjectSpec{ClusterSelector: &api.LabelSelector{}}))
	e.refused("widening one's own project", code, body, before, http.StatusForbidden, "may not")
	alice.mustDo("GET", clustersPath+"/prod1", nil, http.StatusForbidden)
	// Its display name is the holder's to change; an administrator may change the rest.
	alice.mustDo("PUT", base+"/projects/web", newObj(api.KindProject, "", "web", nil, api.ProjectSpec{DisplayName: "Web",
		ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusOK)
	e.mustDo("PUT", base+"/projects/web", newObj(api.KindProject, "", "web", nil, api.ProjectSpec{ClusterSelector: &api.LabelSelector{}}), http.StatusOK)
}

// A ClusterGroup that bindings are scoped to is what they grant: only an administrator may
// change which clusters it holds; a group no binding names is anyone's (with the verbs) to edit.
func TestClusterGroupInUseIsAdministrators(t *testing.T) {
	e := newEnv(t)
	group := func(name string, sel map[string]string) *api.Object {
		return newObj(api.KindClusterGroup, "fleet-default", name, nil, api.ClusterGroupSpec{Selector: &api.LabelSelector{MatchLabels: sel}})
	}
	cgs := base + "/namespaces/fleet-default/clustergroups"
	e.mustDo("POST", cgs, group("edge", map[string]string{"tier": "edge"}), http.StatusCreated)
	e.mustDo("POST", cgs, group("spare", map[string]string{"tier": "spare"}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("bob-edge", "cluster-owner", api.Subject{Kind: api.SubjectUser, Name: "bob"}, api.BindingScope{ClusterGroup: "edge"}), http.StatusCreated)
	e.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "cg-editor", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"clustergroups"}, Verbs: []string{"get", "update"}}}}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("alice-cg", "cg-editor", api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{Workspace: "fleet-default"}), http.StatusCreated)
	alice := e.as("alice")
	before := e.snapshot()
	code, body := alice.json("PUT", cgs+"/edge", group("edge", map[string]string{}))
	e.refused("widening a group bindings are scoped to", code, body, before, http.StatusForbidden, "bob-edge")
	alice.mustDo("PUT", cgs+"/spare", group("spare", map[string]string{"tier": "spare", "x": "y"}), http.StatusOK)
	e.mustDo("PUT", cgs+"/edge", group("edge", map[string]string{"tier": "edge", "site": "a"}), http.StatusOK)
}

// Deleting a User deletes the bindings naming it: a user who may delete users but could not
// delete those bindings (it does not hold their roles) must not strip an administrator that way.
func TestReviewUserDeletionCannotDropOthersBindings(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/users", newObj(api.KindUser, "", "root", nil, api.UserSpec{}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("root-admin", "admin", api.Subject{Kind: api.SubjectUser, Name: "root"}, api.BindingScope{Global: true}), http.StatusCreated)
	e.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "user-manager", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"users"}, Verbs: []string{"*"}}}}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("mgr", "user-manager", api.Subject{Kind: api.SubjectUser, Name: "mgr"}, api.BindingScope{Global: true}), http.StatusCreated)
	mgr := e.as("mgr")
	before := e.snapshot()
	code, body := mgr.do("DELETE", base+"/users/root", "", nil)
	e.refused("deleting an administrator's user", code, body, before, http.StatusForbidden, "root-admin")
	e.as("root").mustDo("GET", base+"/gitrepos", nil, http.StatusOK)
	// A user bound to nothing it could not grant goes, with its bindings.
	e.mustDo("POST", base+"/users", newObj(api.KindUser, "", "temp", nil, api.UserSpec{}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("temp-um", "user-manager", api.Subject{Kind: api.SubjectUser, Name: "temp"}, api.BindingScope{Global: true}), http.StatusCreated)
	mgr.mustDo("DELETE", base+"/users/temp", nil, http.StatusOK)
	e.mustDo("GET", base+"/rolebindings/temp-um", nil, http.StatusNotFound)
}

// When an object leaves a caller's view during a watch, the caller is told it is gone, but
// not what it became: its new labels and spec are not the caller's to see.
func TestReviewWatchDoesNotShowObjectsLeavingView(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-member",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice := e.as("alice")
	e.mustDo("POST", clustersPath, newObj(api.KindCluster, "fleet-default", "dev1", map[string]string{"env": "dev"}, api.ClusterSpec{}), http.StatusCreated)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	qs := []string{"/namespaces/fleet-default/clusters?watch=true&resourceVersion=1", "/clusters?watch=true&resourceVersion=1&fieldSelector=metadata.namespace%3Dfleet-default"}
	var scs []*bufio.Scanner
	for _, q := range qs {
		resp, sc := alice.watch(ctx, q)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("watch %s: %d", q, resp.StatusCode)
		}
		scs = append(scs, sc)
	}
	e.mustDo("PUT", clustersPath+"/dev1", newObj(api.KindCluster, "fleet-default", "dev1", map[string]string{"env": "prod", "team": "secret-team"},
		api.ClusterSpec{DisplayName: "moved out of view"}), http.StatusOK)
	for i, sc := range scs {
		q := qs[i]
		var last api.WatchEvent
		for sc.Scan() {
			json.Unmarshal(sc.Bytes(), &last)
			if last.Type == api.Deleted {
				break
			}
		}
		if last.Type != api.Deleted {
			t.Fatalf("watch %s: no DELETED event for dev1 leaving the view", q)
		}
		if s := string(last.Object); strings.Contains(s, "secret-team") || strings.Contains(s, "moved out of view") || !strings.Contains(s, `"dev1"`) {
			t.Errorf("watch %s: the DELETED event shows %s", q, s)
		}
	}
}
