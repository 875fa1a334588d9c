//go:build linux

package fleet

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
)

// TestAccessScale measures the access join at fleet scale, in process (no HTTP): N clusters
// in the model, 10,000 users and 200 groups holding 100,000 bindings scoped like a real
// organisation (as internal/auth/rbac's benchmarks), then one binding covering every cluster.
// It reports how long and how much CPU the change takes to mark the fleet, and then to bring
// every cluster's desired state to the new version (each cluster's next poll: compile, version,
// answer), and what an unchanged poll costs after. It asserts the behaviour, not the times.
//
//	FLOTILLA_ACCESS_SCALE_CLUSTERS=1000000 go test -run TestAccessScale -v -timeout 30m ./internal/fleet/
func TestAccessScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FLOTILLA_ACCESS_SCALE_CLUSTERS"))
	if n <= 0 {
		t.Skip("set FLOTILLA_ACCESS_SCALE_CLUSTERS to the number of clusters to simulate")
	}
	start := time.Now()
	f := New(nil, Config{})
	const workspaces, sites = 20, 1000
	siteLabels := make([]map[string]string, sites)
	for s := range sites {
		siteLabels[s] = map[string]string{"site": fmt.Sprintf("s%d", s), "env": "prod"}
	}
	clusters := make([]*Cluster, n)
	for i := range n {
		c := &Cluster{Namespace: fmt.Sprintf("ws%d", i%workspaces), Name: fmt.Sprintf("cluster-%d", i), UID: fmt.Sprintf("uid-%d", i), Labels: siteLabels[(i/workspaces)%sites]}
		clusters[i] = c
		f.ws(c.Namespace).clusters[c.Name] = c
		f.byUID[c.UID] = c
	}
	// 500 ClusterGroups, 25 per workspace, each holding two sites.
	for g := range 500 {
		sel, _ := labels.Parse(fmt.Sprintf("site in (s%d,s%d)", g, g+500))
		f.ws(fmt.Sprintf("ws%d", g%workspaces)).groups[fmt.Sprintf("g%d", g)] = &group{name: fmt.Sprintf("g%d", g), selector: sel}
	}
	f.clusters.Store(int64(n))

	az := rbac.New()
	roles := map[string]api.RoleSpec{"site-viewer": {Context: api.RoleContextCluster,
		KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}}
	projects := map[string]api.ProjectSpec{}
	for p := range 100 {
		projects[fmt.Sprintf("p%d", p)] = api.ProjectSpec{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"site": fmt.Sprintf("s%d", p*10+4)}},
			Namespaces: []api.ProjectNamespace{{Name: fmt.Sprintf("p%d-app", p)}}, NamespaceQuota: &api.ResourceQuotaSpec{Hard: map[string]string{"requests.cpu": "2"}}}
	}
	bindings := map[string]api.RoleBindingSpec{}
	for i := range 100_000 {
		s := api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: fmt.Sprintf("user-%d", i%10_000)}}
		if i%10 == 3 {
			s.Subject = api.Subject{Kind: api.SubjectGroup, Name: fmt.Sprintf("group-%d", i%200)}
		}
		switch {
		case i%10 < 4:
			k := (i * 7919) % n
			s.RoleRef, s.Scope.Cluster, s.Scope.Workspace = rbac.RoleClusterOwner, fmt.Sprintf("cluster-%d", k), fmt.Sprintf("ws%d", k%workspaces)
		case i%10 < 7:
			s.RoleRef, s.Scope.ClusterSelector = "site-viewer", &api.LabelSelector{MatchLabels: map[string]string{"site": fmt.Sprintf("s%d", i%sites)}}
		case i%10 == 7:
			g := i % 500
			s.RoleRef, s.Scope.ClusterGroup, s.Scope.Workspace = rbac.RoleClusterMember, fmt.Sprintf("g%d", g), fmt.Sprintf("ws%d", g%workspaces)
		case i%10 == 8:
			s.RoleRef, s.Scope.Project = rbac.RoleProjectMember, fmt.Sprintf("p%d", i%100)
		default:
			s.RoleRef, s.Scope.Workspace = rbac.RoleReadOnly, fmt.Sprintf("ws%d", i%workspaces)
		}
		bindings[fmt.Sprintf("b-%d", i)] = s
	}
	if err := az.Load(roles, projects, bindings); err != nil {
		t.Fatal(err)
	}
	f.SetAccess(az, rbac.DefaultCompileOptions(), nil)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("FIGURE setup: %d clusters, 100,000 bindings loaded in %v; heap %d MiB", n, time.Since(start).Round(time.Millisecond), ms.HeapAlloc>>20)

	revs := make([]int64, n)
	// pass polls every cluster since its last version, on every core, as agents would.
	pass := func(what string, wantChanged bool) {
		t.Helper()
		var changed, errs atomic.Int64
		workers := runtime.GOMAXPROCS(0)
		var wg sync.WaitGroup
		cpu0, wall0 := cpuTime(), time.Now()
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					c := clusters[i]
					ds, rev, err := f.Desired(c.Namespace, c.Name, c.UID, revs[i])
					switch {
					case err != nil:
						errs.Add(1)
					case ds != nil:
						changed.Add(1)
						revs[i] = rev
					}
				}
			})
		}
		wg.Wait()
		wall, cpu := time.Since(wall0), cpuTime()-cpu0
		t.Logf("FIGURE %s: %d of %d clusters got a new desired state in %v wall, %v CPU (%.1f µs CPU a cluster, %d cores)",
			what, changed.Load(), n, wall.Round(time.Millisecond), cpu.Round(time.Millisecond), float64(cpu.Microseconds())/float64(n), workers)
		if errs.Load() > 0 {
			t.Fatalf("%d polls failed", errs.Load())
		}
		if want := int64(0); wantChanged {
			want = int64(n)
			if changed.Load() != want {
				t.Fatalf("%s: %d clusters changed, want %d", what, changed.Load(), want)
			}
		} else if changed.Load() != 0 {
			t.Fatalf("%s: %d clusters changed, want none", what, changed.Load())
		}
	}
	pass("first poll after the load (every cluster compiled)", true)
	pass("unchanged poll", false)

	// One binding covering every cluster.
	if _, err := az.PutRole("pods-reader", api.RoleSpec{Context: api.RoleContextGlobal,
		KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}); err != nil {
		t.Fatal(err)
	}
	cpu0, wall0 := cpuTime(), time.Now()
	cov, err := az.PutBinding("everyone-pods", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectGroup, Name: "everyone"}, RoleRef: "pods-reader", Scope: api.BindingScope{Global: true}})
	if err != nil || !cov.All() {
		t.Fatalf("global binding: %+v, %v", cov, err)
	}
	f.AccessChanged(cov)
	t.Logf("FIGURE a binding covering every cluster: stored in the index and the fleet marked in %v wall, %v CPU",
		time.Since(wall0).Round(time.Microsecond), (cpuTime() - cpu0).Round(time.Microsecond))
	pass("the global binding reaching every cluster (each compiled at its poll)", true)
	pass("unchanged poll after it", false)

	// A binding on one cluster re-versions that cluster alone.
	cpu0, wall0 = cpuTime(), time.Now()
	cov, err = az.PutBinding("one", api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: "user-1"}, RoleRef: rbac.RoleClusterOwner,
		Scope: api.BindingScope{Cluster: "cluster-3", Workspace: "ws3"}})
	if err != nil {
		t.Fatal(err)
	}
	f.AccessChanged(cov)
	t.Logf("FIGURE a binding on one cluster: marked in %v wall, %v CPU", time.Since(wall0).Round(time.Microsecond), (cpuTime() - cpu0).Round(time.Microsecond))
	marked := 0
	f.mu.RLock()
	for _, c := range clusters {
		if f.currentRev(c) == 0 {
			marked++
		}
	}
	f.mu.RUnlock()
	if marked != 1 {
		t.Fatalf("a binding on one cluster re-versioned %d clusters", marked)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
