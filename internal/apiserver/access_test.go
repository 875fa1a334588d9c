package apiserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
)

// as is e calling with a session of user in groups.
func (e *env) as(user string, groups ...string) *env {
	e.t.Helper()
	tok, err := e.auth.IssueSession(context.Background(), auth.Identity{User: user, Groups: groups}, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	c := *e
	c.token = tok
	return &c
}

func (e *env) mustDo(method, path string, v any, want int) []byte {
	e.t.Helper()
	code, body := e.json(method, path, v)
	if code != want {
		e.t.Fatalf("%s %s: %d %s, want %d", method, path, code, body, want)
	}
	return body
}

func newObj(kind, ns, name string, labels map[string]string, spec any) *api.Object {
	raw, _ := json.Marshal(spec)
	return &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kind},
		Metadata: api.ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Spec: raw}
}

func binding(name, role string, subj api.Subject, scope api.BindingScope) *api.Object {
	return newObj(api.KindRoleBinding, "", name, nil, api.RoleBindingSpec{Subject: subj, RoleRef: role, Scope: scope})
}

func names(t testing.TB, body []byte) []string {
	t.Helper()
	var l struct {
		Items []api.Object `json:"items"`
	}
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	var out []string
	for _, o := range l.Items {
		out = append(out, o.Metadata.Name)
	}
	slices.Sort(out)
	return out
}

const clustersPath = base + "/namespaces/fleet-default/clusters"

func (e *env) fleetOfFour() {
	e.t.Helper()
	for _, c := range []struct{ name, env string }{{"dev1", "dev"}, {"dev2", "dev"}, {"prod1", "prod"}, {"prod2", "prod"}} {
		e.mustDo("POST", clustersPath, newObj(api.KindCluster, "fleet-default", c.name, map[string]string{"env": c.env}, api.ClusterSpec{}), http.StatusCreated)
	}
}

func TestAccessDecisions(t *testing.T) {
	e := newEnv(t)
	e.fleetOfFour()
	alice := e.as("alice")

	// No binding: nothing, and a missing name answers as an existing one does.
	for _, p := range []string{clustersPath, clustersPath + "/dev1", clustersPath + "/nosuch", base + "/gitrepos", base + "/roles"} {
		if code, body := alice.do("GET", p, "", nil); code != http.StatusForbidden {
			t.Fatalf("GET %s without a binding: %d %s", p, code, body)
		}
	}

	// Cluster member of env=dev: sees those two only, in lists, gets and tables.
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-member",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	if got := names(t, alice.mustDo("GET", clustersPath, nil, http.StatusOK)); !slices.Equal(got, []string{"dev1", "dev2"}) {
		t.Fatalf("alice lists %v, want dev1 dev2", got)
	}
	if got := names(t, alice.mustDo("GET", base+"/clusters", nil, http.StatusOK)); !slices.Equal(got, []string{"dev1", "dev2"}) {
		t.Fatalf("alice lists %v in all namespaces, want dev1 dev2", got)
	}
	alice.mustDo("GET", clustersPath+"/dev1", nil, http.StatusOK)
	alice.mustDo("GET", clustersPath+"/prod1", nil, http.StatusForbidden)
	// A page may come back short of the limit; following continue tokens gives the rest.
	var paged []string
	cont := ""
	for i := 0; i < 10; i++ {
		body := alice.mustDo("GET", clustersPath+"?limit=1&continue="+cont, nil, http.StatusOK)
		paged = append(paged, names(t, body)...)
		var l api.List
		json.Unmarshal(body, &l)
		if cont = l.Metadata.Continue; cont == "" {
			break
		}
	}
	slices.Sort(paged)
	if !slices.Equal(paged, []string{"dev1", "dev2"}) {
		t.Fatalf("alice pages through %v", paged)
	}
	// A member may not change a cluster.
	alice.mustDo("PUT", clustersPath+"/dev1", newObj(api.KindCluster, "fleet-default", "dev1", map[string]string{"env": "dev", "x": "y"}, api.ClusterSpec{}), http.StatusForbidden)

	// Cluster owner of env=dev: may change those clusters, not move one out of its view,
	// nor relabel one into it.
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev-owner", "cluster-owner",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice.mustDo("PUT", clustersPath+"/dev1", newObj(api.KindCluster, "fleet-default", "dev1", map[string]string{"env": "dev", "x": "y"}, api.ClusterSpec{}), http.StatusOK)
	before := e.snapshot()
	code, body := alice.json("PUT", clustersPath+"/dev1", newObj(api.KindCluster, "fleet-default", "dev1", map[string]string{"env": "prod"}, api.ClusterSpec{}))
	e.refused("moving a cluster out of the owner's view", code, body, before, http.StatusForbidden, "may not update")
	code, body = alice.do("PATCH", clustersPath+"/prod1", "application/merge-patch+json", []byte(`{"metadata":{"labels":{"env":"dev"}}}`))
	e.refused("relabelling a cluster into the owner's view", code, body, before, http.StatusForbidden, "may not")
	code, body = alice.do("DELETE", clustersPath+"/prod2", "", nil)
	e.refused("deleting a cluster outside the view", code, body, before, http.StatusForbidden, "may not delete")

	// Escalation: a cluster owner holding the right to write bindings may hand out what it
	// holds, where it holds it, and nothing more.
	e.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "binder", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"rolebindings"}, Verbs: []string{"create", "delete", "get", "list"}}}}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("alice-binder", "binder", api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{Global: true}), http.StatusCreated)
	alice.mustDo("POST", base+"/rolebindings", binding("bob-dev", "cluster-owner",
		api.Subject{Kind: api.SubjectUser, Name: "bob"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	before = e.snapshot()
	code, body = alice.json("POST", base+"/rolebindings", binding("alice-admin", "admin", api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{Global: true}))
	e.refused("binding oneself admin", code, body, before, http.StatusForbidden, `may not grant role "admin"`)
	code, body = alice.json("POST", base+"/rolebindings", binding("bob-prod", "cluster-owner",
		api.Subject{Kind: api.SubjectUser, Name: "bob"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}))
	e.refused("granting a role where one does not hold it", code, body, before, http.StatusForbidden, "may not grant")
	bob := e.as("bob")
	if got := names(t, bob.mustDo("GET", clustersPath, nil, http.StatusOK)); !slices.Equal(got, []string{"dev1", "dev2"}) {
		t.Fatalf("bob lists %v", got)
	}

	// Groups from the session count; unbinding takes access away at once.
	carol := e.as("carol", "sre")
	carol.mustDo("GET", base+"/gitrepos", nil, http.StatusForbidden)
	e.mustDo("POST", base+"/rolebindings", binding("sre-ro", "read-only", api.Subject{Kind: api.SubjectGroup, Name: "sre"}, api.BindingScope{Global: true}), http.StatusCreated)
	carol.mustDo("GET", base+"/gitrepos", nil, http.StatusOK)
	if got := names(t, carol.mustDo("GET", clustersPath, nil, http.StatusOK)); len(got) != 4 {
		t.Fatalf("read-only sees %v", got)
	}
	carol.mustDo("DELETE", clustersPath+"/dev1", nil, http.StatusForbidden)
	e.mustDo("DELETE", base+"/rolebindings/sre-ro", nil, http.StatusOK)
	carol.mustDo("GET", base+"/gitrepos", nil, http.StatusForbidden)

	// A disabled user is refused whatever it is bound to.
	e.mustDo("POST", base+"/users", newObj(api.KindUser, "", "bob", nil, api.UserSpec{Disabled: true}), http.StatusCreated)
	bob.mustDo("GET", clustersPath, nil, http.StatusForbidden)
	// Deleting a user deletes the bindings naming it: made again, it starts with nothing.
	e.mustDo("DELETE", base+"/users/bob", nil, http.StatusOK)
	e.mustDo("GET", base+"/rolebindings/bob-dev", nil, http.StatusNotFound)
	e.mustDo("POST", base+"/users", newObj(api.KindUser, "", "bob", nil, api.UserSpec{}), http.StatusCreated)
	e.as("bob").mustDo("GET", clustersPath, nil, http.StatusForbidden)
	e.mustDo("GET", base+"/rolebindings/alice-dev", nil, http.StatusOK)
}

func TestAccessWatchIsNarrowed(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-member",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice := e.as("alice")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, sc := alice.watch(ctx, "/namespaces/fleet-default/clusters?watch=true")
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %d", resp.StatusCode)
	}
	e.fleetOfFour()
	var seen []string
	for len(seen) < 2 && sc.Scan() {
		var ev api.WatchEvent
		json.Unmarshal(sc.Bytes(), &ev)
		var o api.Object
		json.Unmarshal(ev.Object, &o)
		seen = append(seen, o.Metadata.Name)
	}
	// The two prod clusters were created after dev2: had they been sent, dev2's event could
	// not be the second.
	if !slices.Equal(seen, []string{"dev1", "dev2"}) {
		t.Fatalf("alice's watch saw %v", seen)
	}
	// The Kubernetes flavour (a watch from 0 lists first) is narrowed too.
	resp2, sc2 := alice.watch(ctx, "/clusters?watch=true&resourceVersion=0")
	defer resp2.Body.Close()
	var initial []string
	for len(initial) < 2 && sc2.Scan() {
		var ev api.WatchEvent
		json.Unmarshal(sc2.Bytes(), &ev)
		var o api.Object
		json.Unmarshal(ev.Object, &o)
		initial = append(initial, o.Metadata.Name)
	}
	slices.Sort(initial)
	if !slices.Equal(initial, []string{"dev1", "dev2"}) {
		t.Fatalf("alice's watch from 0 began with %v", initial)
	}
}

func TestAccessKindsRules(t *testing.T) {
	e := newEnv(t)
	role := func(name string, inherit ...string) *api.Object {
		return newObj(api.KindRole, "", name, nil, api.RoleSpec{Context: api.RoleContextGlobal, InheritFrom: inherit,
			Rules: []api.PolicyRule{{Resources: []string{"gitrepos"}, Verbs: []string{"get"}}}})
	}
	e.mustDo("POST", base+"/roles", role("a"), http.StatusCreated)
	e.mustDo("POST", base+"/roles", role("b", "a"), http.StatusCreated)
	cases := []struct {
		what   string
		method string
		path   string
		body   any
		code   int
		want   string
	}{
		{"a cycle", "PUT", base + "/roles/a", role("a", "b"), http.StatusUnprocessableEntity, "cycle"},
		{"an unknown parent", "POST", base + "/roles", role("c", "nosuch"), http.StatusUnprocessableEntity, "nosuch"},
		{"a binding to an unknown role", "POST", base + "/rolebindings", binding("x", "nosuch", api.Subject{Kind: api.SubjectUser, Name: "u"}, api.BindingScope{Global: true}), http.StatusUnprocessableEntity, "nosuch"},
		{"an invalid selector", "POST", base + "/rolebindings", binding("x", "cluster-member", api.Subject{Kind: api.SubjectUser, Name: "u"},
			api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"bad key!": "v"}}}), http.StatusUnprocessableEntity, "selector"},
		{"a project role bound globally", "POST", base + "/rolebindings", binding("x", "project-member", api.Subject{Kind: api.SubjectUser, Name: "u"}, api.BindingScope{Global: true}), http.StatusUnprocessableEntity, "project"},
		{"changing a built-in role", "PUT", base + "/roles/admin", role("admin"), http.StatusForbidden, "built in"},
		{"deleting a built-in role", "DELETE", base + "/roles/read-only", nil, http.StatusForbidden, "built in"},
		{"deleting a role another inherits", "DELETE", base + "/roles/a", nil, http.StatusConflict, "still used"},
		{"a role in a namespace", "POST", base + "/namespaces/fleet-default/roles", role("d"), http.StatusNotFound, "global"},
		{"a user name with a slash", "POST", base + "/users", newObj(api.KindUser, "", "a/b", nil, api.UserSpec{}), http.StatusUnprocessableEntity, "metadata.name"},
		{"an access kind in Fleet's group", "GET", "/apis/fleet.cattle.io/v1alpha1/roles", nil, http.StatusNotFound, ""},
	}
	for _, c := range cases {
		before := e.snapshot()
		code, body := e.json(c.method, c.path, c.body)
		e.refused(c.what, code, body, before, c.code, c.want)
	}
	// Built-in roles are listed, marked built in.
	body := e.mustDo("GET", base+"/roles", nil, http.StatusOK)
	for _, want := range []string{"admin", "read-only", "cluster-owner", "cluster-member", "project-owner", "project-member", "a", "b"} {
		if !slices.Contains(names(t, body), want) {
			t.Fatalf("roles listed: %v, missing %s", names(t, body), want)
		}
	}
	// A role and its binding in one go: the binding is checked against the role just written.
	e.mustDo("POST", base+"/roles", role("fresh"), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("fresh-u", "fresh", api.Subject{Kind: api.SubjectUser, Name: "u"}, api.BindingScope{Global: true}), http.StatusCreated)
	before := e.snapshot()
	code, body := e.do("DELETE", base+"/roles/fresh", "", nil)
	e.refused("deleting a bound role", code, body, before, http.StatusConflict, "fresh-u")
}

func TestCanI(t *testing.T) {
	e := newEnv(t)
	e.fleetOfFour()
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-member",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice := e.as("alice")
	ask := func(who *env, q api.AccessReview, want bool) {
		t.Helper()
		var ans api.AccessReview
		if err := json.Unmarshal(who.mustDo("POST", api.PathCanI, q, http.StatusOK), &ans); err != nil {
			t.Fatal(err)
		}
		if ans.Allowed != want || ans.Reason == "" {
			t.Fatalf("can-i %+v: %+v, want allowed=%v with a reason", q, ans, want)
		}
	}
	ask(alice, api.AccessReview{Verb: "get", Kind: "clusters", Name: "dev1"}, true)
	ask(alice, api.AccessReview{Verb: "get", Kind: "clusters", Name: "prod1"}, false)
	ask(alice, api.AccessReview{Verb: "delete", Kind: "gitrepos"}, false)
	// Lists are answered as the API answers them: in part, with what the bindings cover.
	ask(alice, api.AccessReview{Verb: "list", Kind: "clusters"}, true)
	ask(alice, api.AccessReview{Verb: "list", Kind: "gitrepos"}, false)
	ask(e, api.AccessReview{Verb: "get", Kind: "clusters", Name: "dev2", As: "alice"}, true)
	ask(e, api.AccessReview{Verb: "update", Kind: "clusters", Name: "dev2", As: "alice"}, false)
	// Asking for someone else needs the right to list bindings everywhere.
	alice.mustDo("POST", api.PathCanI, api.AccessReview{Verb: "get", Kind: "clusters", As: "bob"}, http.StatusForbidden)
	for _, bad := range []api.AccessReview{{Verb: "fly", Kind: "clusters"}, {Verb: "get", Kind: "spaceships"}, {Verb: "get", Kind: "clusters", As: "a/b"}} {
		if code, body := e.json("POST", api.PathCanI, bad); code != http.StatusBadRequest {
			t.Fatalf("can-i %+v: %d %s", bad, code, body)
		}
	}
}

// A caller whose view is one label selector in one workspace, listing another workspace,
// gets nothing: the store was once asked there with a selector of nothing, which has no
// requirements to query by, and answered every cluster of that workspace.
func TestAccessListOfAnotherWorkspaceIsEmpty(t *testing.T) {
	e := newEnv(t)
	e.fleetOfFour()
	e.mustDo("POST", base+"/namespaces/other/clusters", newObj(api.KindCluster, "other", "elsewhere", map[string]string{"env": "dev"}, api.ClusterSpec{}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("alice-dev", "cluster-member",
		api.Subject{Kind: api.SubjectUser, Name: "alice"}, api.BindingScope{Workspace: "fleet-default", ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}), http.StatusCreated)
	alice := e.as("alice")
	if got := names(t, alice.mustDo("GET", clustersPath, nil, http.StatusOK)); !slices.Equal(got, []string{"dev1", "dev2"}) {
		t.Fatalf("alice lists %v in her workspace", got)
	}
	for _, path := range []string{
		base + "/namespaces/other/clusters",
		base + "/namespaces/other/clusters?labelSelector=env%3Ddev",
		base + "/namespaces/other/clusters?fieldSelector=metadata.name%3Delsewhere", // the Kubernetes flavour
		base + "/namespaces/other/clusters?limit=1",
	} {
		if got := names(t, alice.mustDo("GET", path, nil, http.StatusOK)); len(got) != 0 {
			t.Errorf("GET %s: alice sees %v in a workspace not hers", path, got)
		}
	}
}
