package rbac

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"flotilla.dev/api"
)

// The benchmark organisation: 10,000 users and 200 groups holding 100,000 bindings over a
// fleet of a million clusters, scoped like a real one: by cluster name (40%), by a site
// selector out of 1,000 (30%), by ClusterGroup out of 500 (10%), by project out of 100 (10%),
// by workspace out of 20 (9.9%), and globally (0.1%).
const (
	benchUsers    = 10_000
	benchGroups   = 200
	benchBindings = 100_000
)

func benchSpec(i int) (string, api.RoleBindingSpec) {
	s := api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: fmt.Sprintf("user-%d", i%benchUsers)}}
	if i%10 == 3 {
		s.Subject = api.Subject{Kind: api.SubjectGroup, Name: fmt.Sprintf("group-%d", i%benchGroups)}
	}
	switch {
	case i%1000 == 999:
		s.RoleRef, s.Scope.Global = RoleAdmin, true
	case i%10 < 4:
		s.RoleRef, s.Scope.Cluster = RoleClusterOwner, fmt.Sprintf("cluster-%d", (i*7919)%1_000_000)
	case i%10 < 7:
		s.RoleRef, s.Scope.ClusterSelector = "site-viewer", &api.LabelSelector{MatchLabels: map[string]string{"site": fmt.Sprintf("s%d", i%1000)}}
	case i%10 == 7:
		s.RoleRef, s.Scope.ClusterGroup = RoleClusterMember, fmt.Sprintf("g%d", i%500)
	case i%10 == 8:
		s.RoleRef, s.Scope.Project = RoleProjectMember, fmt.Sprintf("p%d", i%100)
	default:
		s.RoleRef, s.Scope.Workspace = RoleReadOnly, fmt.Sprintf("ws%d", i%20)
	}
	return fmt.Sprintf("b-%d", i), s
}

func buildBench(tb testing.TB) *Authorizer {
	a := New()
	mustRole(tb, a, "site-viewer", api.RoleSpec{Context: api.RoleContextCluster,
		Rules:           []api.PolicyRule{{Resources: []string{"clusters"}, Verbs: []string{"get", "list", "watch"}}},
		KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}})
	for p := range 100 {
		mustProject(tb, a, fmt.Sprintf("p%d", p), api.ProjectSpec{
			ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"site": fmt.Sprintf("s%d", p*10+4)}},
			Namespaces:      []api.ProjectNamespace{{Name: fmt.Sprintf("p%d-app", p)}},
			NamespaceQuota:  &api.ResourceQuotaSpec{Hard: map[string]string{"requests.cpu": "2"}},
		})
	}
	for i := range benchBindings {
		name, spec := benchSpec(i)
		if _, err := a.PutBinding(name, spec); err != nil {
			tb.Fatal(err)
		}
	}
	return a
}

var (
	benchOnce sync.Once
	benchAuth *Authorizer
)

func benchIndex(b *testing.B) *Authorizer {
	benchOnce.Do(func() { benchAuth = buildBench(b) })
	return benchAuth
}

// benchCluster is a cluster of site s14 (so project p1 and 100 site bindings reach it) in
// ClusterGroup g7 (20 bindings), and bound by name.
var benchCluster = Cluster{Name: "cluster-7919", Workspace: "fleet-default", Labels: map[string]string{"site": "s14", "env": "prod", "arch": "arm64"}, Groups: []string{"g7", "default"}}

func BenchmarkDecide(b *testing.B) {
	a := benchIndex(b)
	c := benchCluster
	cases := []struct {
		name string
		s    Subject
		r    Request
	}{
		// user-14 holds site-viewer on s14 (binding b-14); allowed after its keyed lookups.
		{"allowed-selector", Subject{User: "user-14", Groups: []string{"group-3", "group-13"}}, Request{Verb: "get", Kind: api.KindCluster, Namespace: "fleet-default", Name: c.Name, Cluster: &c}},
		{"allowed-workspace", Subject{User: "user-9"}, Request{Verb: "list", Kind: api.KindGitRepo, Namespace: "ws9"}},
		// Denied: every binding of the user and three groups is tried.
		{"denied", Subject{User: "user-11", Groups: []string{"group-3", "group-13", "group-23"}}, Request{Verb: "delete", Kind: api.KindCluster, Namespace: "fleet-default", Name: c.Name, Cluster: &c}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			want := tc.name != "denied"
			if d := a.Decide(tc.s, tc.r); d.Allowed != want {
				b.Fatalf("got %v (%s), want %v", d.Allowed, d.Reason(), want)
			}
			b.ReportAllocs()
			loopCPU(b, func() { a.Decide(tc.s, tc.r) })
		})
	}
}

// BenchmarkIndexMemory builds the 100,000-binding index and reports the live heap it holds
// per binding.
func BenchmarkIndexMemory(b *testing.B) {
	var perBinding float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		a := buildBench(b)
		runtime.GC()
		runtime.ReadMemStats(&after)
		perBinding = float64(after.HeapAlloc-before.HeapAlloc) / benchBindings
		runtime.KeepAlive(a)
	}
	b.ReportMetric(perBinding, "heapB/binding")
}

// BenchmarkCompile is one cluster's compile with its own layer cached, as for every cluster
// of its set of bindings and projects but the first.
func BenchmarkCompile(b *testing.B) {
	a := benchIndex(b)
	out := a.Compile(benchCluster, DefaultCompileOptions())
	b.ReportAllocs()
	loopCPU(b, func() { a.Compile(benchCluster, DefaultCompileOptions()) })
	b.ReportMetric(float64(len(out.Objects)), "objects") // after the loop, which resets metrics
}

// BenchmarkCompileUncached is BenchmarkCompile with the cluster's own layer built each time,
// as for the first cluster of its set of bindings and projects after a change.
func BenchmarkCompileUncached(b *testing.B) {
	a := benchIndex(b)
	b.ReportAllocs()
	loopCPU(b, func() {
		a.own.clear()
		a.Compile(benchCluster, DefaultCompileOptions())
	})
}

// BenchmarkCoverEveryCluster adds and removes a binding covering every cluster and finds
// what each changes: one All, whatever the fleet's size.
func BenchmarkCoverEveryCluster(b *testing.B) {
	a := benchIndex(b)
	spec := api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectGroup, Name: "sre"}, RoleRef: RoleClusterOwner, Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{}}}
	b.ReportAllocs()
	loopCPU(b, func() {
		cov, err := a.PutBinding("everywhere", spec)
		if err != nil || !cov.All() {
			b.Fatalf("got %+v, %v", cov.Sets, err)
		}
		if cov, _ := a.DeleteBinding("everywhere"); !cov.All() {
			b.Fatalf("delete covers %+v", cov.Sets)
		}
	})
}

// BenchmarkRoleChange changes the role of 30,000 selector bindings (1,000 distinct
// selectors) and finds what it changes: the 1,000 selectors.
func BenchmarkRoleChange(b *testing.B) {
	a := benchIndex(b)
	spec := a.roles["site-viewer"].spec
	var sets int
	b.ReportAllocs()
	loopCPU(b, func() {
		cov, err := a.PutRole("site-viewer", spec)
		if err != nil {
			b.Fatal(err)
		}
		sets = len(cov.Sets)
	})
	b.ReportMetric(float64(sets), "sets")
}

func BenchmarkClusterFilter(b *testing.B) {
	a := benchIndex(b)
	s := Subject{User: "user-14", Groups: []string{"group-3", "group-13"}}
	f := a.ClusterFilter(s, "list")
	b.ReportAllocs()
	loopCPU(b, func() { a.ClusterFilter(s, "list") })
	b.ReportMetric(float64(len(f.Entries())), "entries")
}

// BenchmarkSharedLayer recomputes the layer every cluster shares (100 global admin bindings),
// as after a change to a binding covering every cluster: once per change, not per cluster.
func BenchmarkSharedLayer(b *testing.B) {
	a := benchIndex(b)
	opts := DefaultCompileOptions()
	b.ReportAllocs()
	loopCPU(b, func() {
		a.mu.Lock()
		a.invalidate()
		a.mu.Unlock()
		a.mu.RLock()
		a.sharedLayer(opts)
		a.mu.RUnlock()
	})
}

// BenchmarkDigest is one cluster's new version after such a change: its own layer (cached:
// built for the first cluster of its set) and one hash over the two layers' digests.
func BenchmarkDigest(b *testing.B) {
	a := benchIndex(b)
	b.ReportAllocs()
	loopCPU(b, func() { a.Digest(benchCluster, DefaultCompileOptions()) })
}

// BenchmarkCombine is what re-versioning one cluster costs when only the shared layer
// changed and the fleet kept the cluster's own digest.
func BenchmarkCombine(b *testing.B) {
	a := benchIndex(b)
	opts := DefaultCompileOptions()
	shared, own := a.SharedDigest(opts), a.OwnDigest(benchCluster, opts)
	if CombineDigests(shared, own) != a.Digest(benchCluster, opts) {
		b.Fatal("combined digest differs from Digest")
	}
	b.ReportAllocs()
	loopCPU(b, func() { CombineDigests(shared, own) })
}
