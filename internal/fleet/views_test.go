package fleet

import (
	"time"

	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/internal/auth/rbac"
)

// Pages of any size, walked forwards and then backwards, hold every selected cluster once,
// in order; the overview counts what the pages hold.
func TestListClustersPages(t *testing.T) {
	const n = 300
	f := New(seedClusters(t, n), Config{})
	if _, err := f.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The seeded clusters were last seen days ago: past the load's grace, they are Offline.
	f.loadedAt.Store(time.Now().Add(-time.Hour).UnixNano())
	f.sweep(time.Now())
	prod := labels.SelectorFromSet(labels.Set{"env": "prod"})
	euOnly := func(c rbac.Cluster) bool { return c.Labels["region"] == "eu" }
	for _, tc := range []struct {
		name string
		q    ClusterQuery
		want int
	}{
		{"all", ClusterQuery{}, n},
		{"prod", ClusterQuery{Selector: prod}, n / 2},
		{"dev", ClusterQuery{Selector: labels.SelectorFromSet(labels.Set{"env": "dev"})}, n / 2},
		{"prod seen by an eu viewer", ClusterQuery{Selector: prod, View: euOnly, ViewByLabels: true}, 50},
		{"prefix", ClusterQuery{NamePrefix: "c-00000000000000"}, 1}, // c-0000000000000000 only
		{"state", ClusterQuery{State: "Offline"}, n},
	} {
		for _, limit := range []int{1, 7, 50, 500} {
			var keys []string
			after := ""
			for pages := 0; ; pages++ {
				p := f.ListClusters(tc.q, after, "", limit)
				if p.Total != tc.want {
					t.Fatalf("%s: total %d, want %d", tc.name, p.Total, tc.want)
				}
				for _, r := range p.Rows {
					keys = append(keys, r.Key())
				}
				if !p.More || pages > n {
					break
				}
				after = p.Rows[len(p.Rows)-1].Key()
			}
			if len(keys) != tc.want || !slices.IsSorted(keys) || len(slices.Compact(slices.Clone(keys))) != len(keys) {
				t.Fatalf("%s, pages of %d: %d keys (want %d), sorted %v", tc.name, limit, len(keys), tc.want, slices.IsSorted(keys))
			}
			// Backwards from past the end gives the same keys.
			var back []string
			before := "~"
			for pages := 0; ; pages++ {
				p := f.ListClusters(tc.q, "", before, limit)
				back = append(slices.Clone(rowKeys(p.Rows)), back...)
				if !p.Earlier || pages > n {
					break
				}
				before = p.Rows[0].Key()
			}
			if !slices.Equal(keys, back) {
				t.Fatalf("%s, pages of %d: backwards %d keys, forwards %d", tc.name, limit, len(back), len(keys))
			}
		}
		q := tc.q
		q.CountLabel = "env"
		o := f.Overview(q)
		if o.Total != tc.want || o.ByState["Offline"] != tc.want || o.ByArch["arm64"] != tc.want || o.ByLabel["prod"]+o.ByLabel["dev"] != tc.want {
			t.Errorf("%s: overview %+v, want %d clusters, all offline arm64, each prod or dev", tc.name, o, tc.want)
		}
	}
}

func rowKeys(rows []ClusterRow) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.Key())
	}
	return out
}

// BenchmarkOverview is one pass of the dashboard's overview and of a filtered page over
// FLOTILLA_VIEW_CLUSTERS clusters (default 100,000).
func BenchmarkOverview(b *testing.B) {
	n := 100000
	if v, _ := strconv.Atoi(os.Getenv("FLOTILLA_VIEW_CLUSTERS")); v > 0 {
		n = v
	}
	f := New(seedClusters(b, n), Config{})
	if _, err := f.load(context.Background()); err != nil {
		b.Fatal(err)
	}
	prod := labels.SelectorFromSet(labels.Set{"env": "prod"})
	b.Run("overview", func(b *testing.B) {
		for range b.N {
			f.Overview(ClusterQuery{})
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/cluster")
	})
	b.Run("page-env=prod", func(b *testing.B) {
		for range b.N {
			f.ListClusters(ClusterQuery{Selector: prod}, "", "", 50)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/cluster")
	})
	b.Run("page-view-by-labels", func(b *testing.B) {
		eu := func(c rbac.Cluster) bool { return c.Labels["region"] == "eu" }
		for range b.N {
			f.ListClusters(ClusterQuery{View: eu, ViewByLabels: true}, "", "", 50)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/cluster")
	})
}

// A sweep lets go of the model's lock between chunks of clusters, so that polls and pings
// are not held for the whole walk, and still marks every cluster; a load in one of its
// pauses ends it.
func TestSweepLetsGoOfTheLock(t *testing.T) {
	const n = 3*sweepChunk + 5
	f := New(seedClusters(t, n), Config{})
	if _, err := f.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Seen days ago and past the load's grace: every cluster turns Offline at the sweep.
	f.loadedAt.Store(time.Now().Add(-time.Hour).UnixNano())
	f.dirtyClusters.clear()
	yields, held := 0, 0
	sweepYield = func() {
		yields++
		if !f.mu.TryRLock() {
			held++
			return
		}
		f.mu.RUnlock()
	}
	defer func() { sweepYield = nil }()
	f.sweep(time.Now())
	if yields != n/sweepChunk || held > 0 || f.dirtyClusters.len() != n {
		t.Fatalf("a sweep of %d clusters let go of the lock %d times (want %d), %d of them still held; %d clusters marked",
			n, yields, n/sweepChunk, held, f.dirtyClusters.len())
	}

	f.dirtyClusters.clear()
	sweepYield = func() { f.loadedAt.Add(1) } // a load in the first pause
	f.sweep(time.Now())
	if f.dirtyClusters.len() != sweepChunk {
		t.Fatalf("after a load in its first pause the sweep marked %d clusters, want the %d before it", f.dirtyClusters.len(), sweepChunk)
	}
}

// TestSortByKey checks sortByKey against keyCmp: names that share their first 8 bytes, a
// name that begins another, names shorter than 8 bytes, and several namespaces.
func TestSortByKey(t *testing.T) {
	names := []string{"a", "ab", "abcdefgh", "abcdefgh1", "abcdefgh0", "abcdefg", "b", "c-00000001", "c-00000010", "c-0000000",
		"edge-store-0001", "edge-store-0010", "edge-store-0002", "z", "", "zzzzzzzzz", "0"}
	var cs []*Cluster
	for _, ns := range []string{"fleet-default", "a", "fleet-local", "fleet"} {
		for _, n := range names {
			cs = append(cs, &Cluster{Namespace: ns, Name: n})
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		rng.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
		got := slices.Clone(cs)
		sortByKey(got)
		want := slices.Clone(cs)
		slices.SortStableFunc(want, keyCmp)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("at %d: %s/%q, want %s/%q", i, got[i].Namespace, got[i].Name, want[i].Namespace, want[i].Name)
			}
		}
	}
}

// BenchmarkSortClusters sorts 1M clusters with random names, as a load does, by keyCmp and by
// sortByKey.
func BenchmarkSortClusters(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	cs := make([]*Cluster, 1<<20)
	for i := range cs {
		cs[i] = &Cluster{Namespace: "fleet-default", Name: fmt.Sprintf("c-%016x", rng.Uint64())}
	}
	for _, s := range []struct {
		name string
		sort func([]*Cluster)
	}{{"keyCmp", func(cs []*Cluster) { slices.SortFunc(cs, keyCmp) }}, {"sortByKey", sortByKey}} {
		b.Run(s.name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				in := slices.Clone(cs)
				b.StartTimer()
				s.sort(in)
			}
		})
	}
}
