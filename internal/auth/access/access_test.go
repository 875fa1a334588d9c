package access

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

func put(t *testing.T, st store.Store, kind, name string, spec any) {
	t.Helper()
	raw, _ := json.Marshal(spec)
	ctx := context.Background()
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kind}, Metadata: api.ObjectMeta{Name: name}, Spec: raw}
	if _, err := st.Create(ctx, obj); errors.Is(err, store.ErrAlreadyExists) {
		_, err = st.Update(ctx, obj)
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, st store.Store, kind, name string) {
	t.Helper()
	if _, err := st.Delete(context.Background(), store.Key{Kind: kind, Name: name}, ""); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond; the deadline is generous and only bounds a broken test.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting until %s", what)
}

type covLog struct {
	mu   sync.Mutex
	seen []rbac.Coverage
}

func (l *covLog) add(c rbac.Coverage) { l.mu.Lock(); l.seen = append(l.seen, c); l.mu.Unlock() }
func (l *covLog) n() int              { l.mu.Lock(); defer l.mu.Unlock(); return len(l.seen) }
func (l *covLog) last() rbac.Coverage { l.mu.Lock(); defer l.mu.Unlock(); return l.seen[len(l.seen)-1] }

var prod = rbac.Cluster{Name: "c1", Workspace: api.DefaultNamespace, Labels: map[string]string{"env": "prod"}}

func alice() rbac.Subject { return rbac.Subject{User: "alice"} }

func TestIndexFollowsStore(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := sqlite.Open(ctx, t.TempDir(), sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	// Loaded at start: a role and a binding of it on the prod clusters.
	put(t, st, api.KindUser, "alice", api.UserSpec{})
	put(t, st, api.KindRole, "viewer", api.RoleSpec{Context: api.RoleContextCluster,
		Rules:           []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get"}}},
		KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}})
	put(t, st, api.KindRoleBinding, "alice-prod", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: "viewer",
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}})

	x := New(st, slog.Default())
	var log covLog
	x.Subscribe(log.add)
	go x.Run(ctx)
	eventually(t, "the index is ready", x.Ready)
	az := x.Authorizer()
	get := rbac.Request{Verb: "get", Kind: api.KindCluster, Namespace: prod.Workspace, Name: prod.Name, Cluster: &prod}
	if d := az.Decide(alice(), get); !d.Allowed {
		t.Fatalf("loaded binding not in force: %s", d.Reason())
	}
	if _, _, ok := az.Impersonation(alice(), prod); !ok {
		t.Fatal("alice not bound on the prod cluster")
	}

	// A global binding of admin, watched: every cluster is covered.
	put(t, st, api.KindRoleBinding, "alice-admin", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleAdmin, Scope: api.BindingScope{Global: true}})
	eventually(t, "the global binding is covered", func() bool { return log.n() > 0 && log.last().All() })
	del := rbac.Request{Verb: "delete", Kind: api.KindGitRepo, Namespace: "ws"}
	if d := az.Decide(alice(), del); !d.Allowed {
		t.Fatalf("watched binding not in force: %s", d.Reason())
	}

	// Disabling the user denies everything.
	put(t, st, api.KindUser, "alice", api.UserSpec{Disabled: true})
	eventually(t, "alice is disabled", func() bool { return !az.Decide(alice(), get).Allowed })
	put(t, st, api.KindUser, "alice", api.UserSpec{})
	eventually(t, "alice is enabled", func() bool { return az.Decide(alice(), get).Allowed })

	// A status write to a project changes nothing downstream: no coverage is reported.
	put(t, st, api.KindProject, "web", api.ProjectSpec{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
		Namespaces: []api.ProjectNamespace{{Name: "web"}}})
	eventually(t, "the project is covered", func() bool {
		return log.n() > 0 && len(log.last().Sets) == 1 && log.last().Sets[0].Selector != nil
	})
	n := log.n()
	p, err := st.Get(ctx, store.Key{Kind: api.KindProject, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = json.RawMessage(`{"used":{"pods":"3"}}`)
	if _, err := st.Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	// A later change that reaches no cluster, to know the status write was seen before it.
	put(t, st, api.KindRoleBinding, "bob-read", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "bob"}, RoleRef: rbac.RoleReadOnly, Scope: api.BindingScope{Global: true}})
	eventually(t, "bob's binding is in force", func() bool { return az.Decide(rbac.Subject{User: "bob"}, get).Allowed })
	if log.n() != n {
		t.Fatalf("a status write reported coverage %+v", log.last())
	}

	// Deleting the user deletes their bindings, in the store and so in the index.
	del2(t, st, api.KindUser, "alice")
	eventually(t, "alice's bindings are gone", func() bool {
		res, err := st.List(ctx, store.ListOptions{Kind: api.KindRoleBinding})
		return err == nil && len(res.Items) == 1 && len(az.BindingsOf(api.SubjectUser, "alice")) == 0
	})
	if _, _, ok := az.Impersonation(alice(), prod); ok {
		t.Fatal("a deleted user is still bound on the cluster")
	}
}

func del2(t *testing.T, st store.Store, kind, name string) { t.Helper(); del(t, st, kind, name) }

// The four watches deliver independently: a binding may arrive before the role it names.
// The index holds it back and applies it when the role comes.
func TestIndexOutOfOrder(t *testing.T) {
	x := New(nil, slog.Default())
	x.loaded = true
	var log covLog
	x.Subscribe(log.add)
	bind := api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: "ops", Scope: api.BindingScope{Global: true}}
	role := api.RoleSpec{Context: api.RoleContextGlobal, KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}
	ev := func(kind, name string, spec any) store.Event {
		raw, _ := json.Marshal(&api.Object{TypeMeta: api.TypeMeta{Kind: kind}, Metadata: api.ObjectMeta{Name: name}, Spec: mustJSON(spec)})
		return store.Event{Type: api.Added, Object: raw}
	}
	x.apply(context.Background(), api.KindRoleBinding, ev(api.KindRoleBinding, "b", bind))
	if len(x.pending) != 1 || log.n() != 0 {
		t.Fatalf("binding before its role: pending %v, %d notifications", x.pending, log.n())
	}
	x.apply(context.Background(), api.KindRole, ev(api.KindRole, "ops", role))
	if len(x.pending) != 0 || log.n() == 0 || !log.last().All() {
		t.Fatalf("role arrived: pending %v, coverage %+v", x.pending, log.seen)
	}
	if _, _, ok := x.Authorizer().Impersonation(alice(), prod); !ok {
		t.Fatal("the held-back binding was not applied")
	}
}

func mustJSON(v any) json.RawMessage { raw, _ := json.Marshal(v); return raw }

// The API applies a change to the authorizer as it stores it, before the watch event comes:
// the index must still name the clusters the object reached before, and take a deletion the
// authorizer already made as done.
func TestIndexAfterTheAPI(t *testing.T) {
	x := New(nil, slog.Default())
	x.loaded = true
	var log covLog
	x.Subscribe(log.add)
	ev := func(typ, kind, name string, spec any) store.Event {
		raw, _ := json.Marshal(&api.Object{TypeMeta: api.TypeMeta{Kind: kind}, Metadata: api.ObjectMeta{Name: name}, Spec: mustJSON(spec)})
		return store.Event{Type: typ, Object: raw}
	}
	on := func(cluster string) api.RoleBindingSpec {
		return api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "alice"}, RoleRef: rbac.RoleClusterMember, Scope: api.BindingScope{Cluster: cluster}}
	}
	ctx := context.Background()
	x.apply(ctx, api.KindRoleBinding, ev(api.Added, api.KindRoleBinding, "b", on("a")))

	// Moved from cluster a to cluster c by the API, then seen on the watch.
	if _, err := x.Authorizer().PutBinding("b", on("c")); err != nil {
		t.Fatal(err)
	}
	n := log.n()
	x.apply(ctx, api.KindRoleBinding, ev(api.Modified, api.KindRoleBinding, "b", on("c")))
	if log.n() != n+1 {
		t.Fatal("the move was not announced")
	}
	for _, c := range []string{"a", "c"} {
		if !log.last().Matches(rbac.Cluster{Name: c, Workspace: api.DefaultNamespace}) {
			t.Errorf("the move does not cover cluster %s: %+v", c, log.last().Sets)
		}
	}

	// Deleted by the API, then seen on the watch.
	if _, err := x.Authorizer().DeleteBinding("b"); err != nil {
		t.Fatal(err)
	}
	x.apply(ctx, api.KindRoleBinding, ev(api.Deleted, api.KindRoleBinding, "b", on("c")))
	if len(x.pending) != 0 {
		t.Fatalf("a deletion the authorizer already made is pending: %v", x.pending)
	}
	if !log.last().Matches(rbac.Cluster{Name: "c", Workspace: api.DefaultNamespace}) {
		t.Errorf("the deletion does not cover cluster c: %+v", log.last().Sets)
	}
}
