package fleet

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
)

// accessFleet is a model holding clusters a (prod) and b (dev) of fleet-default and c
// (prod) of workspace "other", joined with a real rbac.Authorizer.
func accessFleet(t *testing.T) (*Fleet, *rbac.Authorizer) {
	t.Helper()
	f := New(nil, Config{})
	for _, c := range []*Cluster{
		{Namespace: api.DefaultNamespace, Name: "a", UID: "uid-a", Labels: map[string]string{"env": "prod"}},
		{Namespace: api.DefaultNamespace, Name: "b", UID: "uid-b", Labels: map[string]string{"env": "dev"}},
		{Namespace: "other", Name: "c", UID: "uid-c", Labels: map[string]string{"env": "prod"}},
	} {
		f.ws(c.Namespace).clusters[c.Name] = c
		f.byUID[c.UID] = c
	}
	az := rbac.New()
	f.SetAccess(az, rbac.DefaultCompileOptions(), nil)
	return f, az
}

var accessClusters = []struct{ ns, name, uid string }{
	{api.DefaultNamespace, "a", "uid-a"}, {api.DefaultNamespace, "b", "uid-b"}, {"other", "c", "uid-c"},
}

// poll returns every cluster's version, failing if any is unchanged since revs (nil: any).
func pollAll(t *testing.T, f *Fleet) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, c := range accessClusters {
		ds, rev, err := f.Desired(c.ns, c.name, c.uid, 0)
		if err != nil || ds == nil || ds.Access == nil {
			t.Fatalf("desired state of %s: %v, %+v", c.name, err, ds)
		}
		out[c.name] = rev
	}
	return out
}

// changed reports which clusters' desired state changed since revs, as the agent sees it.
func changed(t *testing.T, f *Fleet, revs map[string]int64) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, c := range accessClusters {
		ds, rev, err := f.Desired(c.ns, c.name, c.uid, revs[c.name])
		if err != nil {
			t.Fatal(err)
		}
		if ds != nil {
			out[c.name] = true
			revs[c.name] = rev
		}
	}
	return out
}

// marked names the clusters whose version a change made stale (to be recomputed).
func marked(f *Fleet) map[string]bool {
	out := map[string]bool{}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, c := range accessClusters {
		if f.currentRev(f.workspaces[c.ns].clusters[c.name]) == 0 {
			out[c.name] = true
		}
	}
	return out
}

func same(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func TestAccessJoinReversionsOnlyCovered(t *testing.T) {
	f, az := accessFleet(t)
	revs := pollAll(t, f)
	if got := changed(t, f, revs); len(got) != 0 {
		t.Fatalf("unchanged clusters got a new state: %v", got)
	}

	alice := api.Subject{Kind: api.SubjectUser, Name: "alice"}
	steps := []struct {
		what        string
		change      func() (rbac.Coverage, error)
		mark, reach map[string]bool
	}{
		{"a binding on cluster a", func() (rbac.Coverage, error) {
			return az.PutBinding("alice-a", api.RoleBindingSpec{Subject: alice, RoleRef: rbac.RoleClusterMember, Scope: api.BindingScope{Cluster: "a"}})
		}, map[string]bool{"a": true}, map[string]bool{"a": true}},
		{"a binding on prod clusters of any workspace", func() (rbac.Coverage, error) {
			return az.PutBinding("alice-prod", api.RoleBindingSpec{Subject: alice, RoleRef: rbac.RoleClusterOwner, Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}})
		}, map[string]bool{"a": true, "c": true}, map[string]bool{"a": true, "c": true}},
		{"a binding on workspace other", func() (rbac.Coverage, error) {
			return az.PutBinding("bob-other", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "bob"}, RoleRef: rbac.RoleAdmin, Scope: api.BindingScope{Workspace: "other"}})
		}, map[string]bool{"c": true}, map[string]bool{"c": true}},
		{"a binding covering every cluster", func() (rbac.Coverage, error) {
			return az.PutBinding("carol-admin", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "carol"}, RoleRef: rbac.RoleAdmin, Scope: api.BindingScope{Global: true}})
		}, map[string]bool{"a": true, "b": true, "c": true}, map[string]bool{"a": true, "b": true, "c": true}},
		{"unbinding from cluster a", func() (rbac.Coverage, error) { return az.DeleteBinding("alice-a") },
			map[string]bool{"a": true}, map[string]bool{"a": true}},
		// A change announced for a workspace whose content does not change: every cluster
		// of it is looked at again, and each is still told "unchanged".
		{"nothing, announced for fleet-default", func() (rbac.Coverage, error) {
			return rbac.Coverage{Sets: []rbac.ClusterSet{{Workspace: api.DefaultNamespace}}}, nil
		}, map[string]bool{"a": true, "b": true}, map[string]bool{}},
	}
	for _, s := range steps {
		cov, err := s.change()
		if err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		f.AccessChanged(cov)
		if got := marked(f); !same(got, s.mark) {
			t.Errorf("%s: re-versioned %v, want %v", s.what, got, s.mark)
		}
		if got := changed(t, f, revs); !same(got, s.reach) {
			t.Errorf("%s: new desired state for %v, want %v", s.what, got, s.reach)
		}
	}

	// What cluster c holds now: alice's owner binding and bob's workspace-wide admin.
	ds, _, _ := f.Desired("other", "c", "uid-c", 0)
	var names []string
	for _, raw := range ds.Access.Objects {
		var o struct {
			Kind     string                `json:"kind"`
			Metadata struct{ Name string } `json:"metadata"`
		}
		json.Unmarshal(raw, &o)
		names = append(names, o.Kind+"/"+o.Metadata.Name)
	}
	got := strings.Join(names, " ")
	for _, want := range []string{"ClusterRoleBinding/flotilla-cluster-owner", "ClusterRoleBinding/flotilla-admin", "ClusterRoleBinding/flotilla-admin:all"} {
		if !strings.Contains(got+" ", want+" ") {
			t.Errorf("cluster c lacks %s: %s", want, got)
		}
	}
}

// A binding covering every cluster marks them all in one step and wakes the waiting agents.
func TestAccessChangeWakesWaiters(t *testing.T) {
	f, az := accessFleet(t)
	revs := pollAll(t, f)
	woke := make(chan bool)
	go func() {
		woke <- f.Wait(context.Background(), api.DefaultNamespace, "b", revs["b"], time.Hour)
	}()
	// Wait registers the waiter under the lock; wait until it has.
	for {
		f.mu.RLock()
		n := len(f.waiters)
		f.mu.RUnlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cov, err := az.PutBinding("all", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectGroup, Name: "ops"}, RoleRef: rbac.RoleAdmin, Scope: api.BindingScope{Global: true}})
	if err != nil || !cov.All() {
		t.Fatalf("coverage %+v, %v", cov, err)
	}
	f.AccessChanged(cov)
	if !<-woke {
		t.Fatal("the waiting agent was not told of the change")
	}
}

// Usage reported by agents is rolled up into the Project's status, once per project; usage
// of a project the cluster does not hold is refused.
func TestProjectUsageRollup(t *testing.T) {
	e := newReportEnv(t)
	ctx := context.Background()
	spec := api.ProjectSpec{ClusterSelector: &api.LabelSelector{}, Namespaces: []api.ProjectNamespace{{Name: "web"}, {Name: "api"}},
		NamespaceQuota: &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "6"}}, Quota: &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "12"}}}
	raw, _ := json.Marshal(spec)
	if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindProject}, Metadata: api.ObjectMeta{Name: "shop"}, Spec: raw}); err != nil {
		t.Fatal(err)
	}
	az := rbac.New()
	if _, err := az.PutProject("shop", spec); err != nil {
		t.Fatal(err)
	}
	e.f.SetAccess(az, rbac.DefaultCompileOptions(), nil)
	report := func(seq int64, usage map[string]map[string]map[string]string) {
		t.Helper()
		rep := &api.StatusReport{Seq: seq, Access: &api.AccessReport{Digest: "sha256:x", Usage: usage}}
		if _, err := e.f.Report(ctx, reportNS, reportName, reportUID, rep, time.Now()); err != nil {
			t.Fatal(err)
		}
		e.f.flush(ctx, time.Now())
	}
	status := func() api.ProjectStatus {
		t.Helper()
		obj, err := e.st.Get(ctx, store.Key{Kind: api.KindProject, Name: "shop"})
		if err != nil {
			t.Fatal(err)
		}
		var st api.ProjectStatus
		json.Unmarshal(obj.Status, &st)
		return st
	}
	report(1, map[string]map[string]map[string]string{"shop": {"web": {"pods": "4"}, "api": {"pods": "3"}}, "made-up": {"x": {"pods": "100"}}})
	st := status()
	if st.Used["pods"] != "7" || len(st.Conditions) != 1 || st.Conditions[0].Status != "False" {
		t.Fatalf("status after 7 pods: %+v", st)
	}
	if u := e.f.UsageOf("made-up"); len(u) != 0 {
		t.Fatalf("usage of a project the cluster does not hold was kept: %v", u)
	}
	report(2, map[string]map[string]map[string]string{"shop": {"web": {"pods": "9"}, "api": {"pods": "4"}}})
	st = status()
	if st.Used["pods"] != "13" || st.Conditions[0].Type != api.ConditionOverQuota || st.Conditions[0].Status != "True" {
		t.Fatalf("status after 13 pods of 12: %+v", st)
	}
	// The cluster's status says the access objects were applied.
	obj, _ := e.st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: reportNS, Name: reportName})
	if !strings.Contains(string(obj.Status), ConditionAccessApplied) {
		t.Fatalf("cluster status lacks %s: %s", ConditionAccessApplied, obj.Status)
	}
}

// Until the access model is loaded no desired state is served: an empty set of access
// objects would make the agent prune what its cluster holds.
func TestAccessNotReady(t *testing.T) {
	f, az := accessFleet(t)
	loaded := false
	f.SetAccess(az, rbac.DefaultCompileOptions(), func() bool { return loaded })
	if _, _, err := f.Desired(api.DefaultNamespace, "a", "uid-a", 0); err != ErrNotReady {
		t.Fatalf("desired state before the access model loaded: %v", err)
	}
	loaded = true
	if ds, _, err := f.Desired(api.DefaultNamespace, "a", "uid-a", 0); err != nil || ds.Access == nil {
		t.Fatalf("desired state after: %+v, %v", ds, err)
	}
}

// A ClusterGroup's membership changing re-versions the clusters that joined or left it: the
// bindings scoped to the group now reach them, or no longer do.
func TestAccessFollowsClusterGroups(t *testing.T) {
	f, az := accessFleet(t)
	revs := pollAll(t, f)
	cov, err := az.PutBinding("alice-g", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleClusterMember, Scope: api.BindingScope{ClusterGroup: "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	f.AccessChanged(cov) // the group does not exist yet: nothing to re-version
	if got := changed(t, f, revs); len(got) != 0 {
		t.Fatalf("a binding to a missing group changed %v", got)
	}
	group := func(typ string) store.Event {
		raw, _ := json.Marshal(&api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindClusterGroup},
			Metadata: api.ObjectMeta{Namespace: api.DefaultNamespace, Name: "dev"}, Spec: json.RawMessage(`{"selector":{"matchLabels":{"env":"dev"}}}`)})
		return store.Event{Type: typ, Object: raw}
	}
	f.apply(api.KindClusterGroup, group(api.Added))
	if got := marked(f); !same(got, map[string]bool{"b": true}) {
		t.Errorf("group created: re-versioned %v, want b", got)
	}
	if got := changed(t, f, revs); !same(got, map[string]bool{"b": true}) {
		t.Errorf("group created: new desired state for %v, want b", got)
	}
	f.apply(api.KindClusterGroup, group(api.Deleted))
	if got := changed(t, f, revs); !same(got, map[string]bool{"b": true}) {
		t.Errorf("group deleted: new desired state for %v, want b", got)
	}
}
