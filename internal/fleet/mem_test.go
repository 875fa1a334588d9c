package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// TestModelMemory reports the fleet model's heap per cluster (FLOTILLA_MEM_CLUSTERS, default
// 20,000), with clusters shaped as registered agents make them, one bundle targeting them all
// and every cluster's report of it (as a simulated fleet after a change).
func TestModelMemory(t *testing.T) {
	n := envCount("FLOTILLA_MEM_CLUSTERS", 0)
	if n == 0 {
		t.Skip("set FLOTILLA_MEM_CLUSTERS=N to measure the model's memory")
	}
	ctx := context.Background()
	st := seedFleet(t, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f := New(st, Config{})
	if _, err := f.load(ctx); err != nil {
		t.Fatal(err)
	}
	if b := f.workspaces["fleet-default"].bundles["app"]; b == nil || b.counts[api.StateReady] != n {
		t.Fatalf("bundle app: %+v, want %d clusters Ready", b, n)
	}
	runtime.ReadMemStats(&after)
	t.Logf("FIGURE after the load: heap in use %d B per cluster, RSS %d B per cluster; the load allocated %d B per cluster, %d collections",
		(after.HeapInuse-before.HeapInuse)/uint64(n), rss()/uint64(n), (after.TotalAlloc-before.TotalAlloc)/uint64(n), after.NumGC-before.NumGC)
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("FIGURE fleet model: %d clusters, %d bytes of live heap per cluster", n, (after.HeapAlloc-before.HeapAlloc)/uint64(n))
	// What one collection of the model costs: an idle server collects every
	// (GOGC/100 × live heap) / (allocation rate) seconds.
	start, cpu := time.Now(), cpuTime()
	runtime.GC()
	t.Logf("FIGURE a collection with the model loaded: %v, %v of CPU", time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond))
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	per := func(v uint64) uint64 { return v / uint64(n) }
	t.Logf("FIGURE RSS after FreeOSMemory: %d B per cluster (heap objects %d, heap spans in use %d, runtime metadata %d, everything else mapped by Go %d)",
		per(rss()), per(after.HeapAlloc), per(after.HeapInuse), per(after.MSpanSys+after.MCacheSys+after.GCSys+after.BuckHashSys+after.OtherSys),
		per(after.StackSys+after.HeapSys-after.HeapReleased-after.HeapInuse))
	if p := os.Getenv("FLOTILLA_MEM_PROFILE"); p != "" {
		fh, _ := os.Create(p)
		pprof.Lookup("heap").WriteTo(fh, 0)
		fh.Close()
	}
	runtime.KeepAlive(f)
}

// rss is the process's resident memory (Linux), or 0.
func rss() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// envCount is a size a figure-producing test or benchmark takes from the environment.
func envCount(name string, def int) int {
	if n, _ := strconv.Atoi(os.Getenv(name)); n > 0 {
		return n
	}
	return def
}

// seededName and seededUID are the name and UID seedClusters gives cluster i.
func seededName(i int) string { return fmt.Sprintf("c-%016x", i*7919) }
func seededUID(i int) string  { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }

// seedClusters returns a SQLite store, written as the server writes it (summaries
// included), holding n Clusters shaped as registered agents make them.
func seedClusters(t testing.TB, n int) *sqlite.Store {
	t.Helper()
	st := openSeedStore(t, t.TempDir())
	writeClusters(t, st, n)
	return st
}

func openSeedStore(t testing.TB, dir string) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), dir, sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: SummarizeCluster}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// seedFleet is seedClusters plus bundle "app", which targets every cluster, and each
// cluster's report of it as Ready. With FLOTILLA_SEED_DIR set the store is kept there and
// reused by later runs of the same size (seeding a million clusters takes minutes).
func seedFleet(t testing.TB, n int) *sqlite.Store {
	t.Helper()
	dir := t.TempDir()
	if d := os.Getenv("FLOTILLA_SEED_DIR"); d != "" {
		dir = filepath.Join(d, "fleet-"+strconv.Itoa(n))
		if _, err := os.Stat(filepath.Join(dir, "seeded")); err == nil {
			return openSeedStore(t, dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	st := openSeedStore(t, dir)
	writeClusters(t, st, n)
	ctx := context.Background()
	b, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: "app", Generation: 1},
		Spec:     json.RawMessage(`{"contentHash":"sha256:0123","targets":[{"name":"all","clusterSelector":{}}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	entry, err := compileBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	id := entry.targets[0].id
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Go(func() {
			for i := w; i < n; i += 64 {
				rows := []store.DeploymentStatus{{Bundle: "fleet-default/app", ID: id, State: api.StateReady}}
				if err := st.PutStatus(ctx, seededUID(i), 1, rows, nil); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if err := os.WriteFile(filepath.Join(dir, "seeded"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return st
}

// writeClusters creates clusters 0 to n-1 in st.
func writeClusters(t testing.TB, st *sqlite.Store, n int) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	inv := `{"kubernetesVersion":"v1.37.0+k3s1","nodeCount":1,"architectures":["arm64"],"architecture":"arm64","allocatableCPU":"4","allocatableMemory":"8Gi","agentVersion":"v0.1.0"}`
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				_, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
					Metadata: api.ObjectMeta{Name: seededName(i), Namespace: "fleet-default", UID: seededUID(i), CreationTimestamp: &now,
						Labels:      map[string]string{"env": []string{"prod", "dev"}[i%2], "region": []string{"eu", "us", "ap"}[i%3], "group": "g" + strconv.Itoa(i/10000)},
						Annotations: map[string]string{"flotilla.dev/registered-with": "token-abc"}},
					Spec:   json.RawMessage(`{"clientID":"` + fmt.Sprintf("%036d", i) + `"}`),
					Status: json.RawMessage(`{"state":"Ready","lastSeen":"2026-11-22T20:00:00Z","inventory":` + inv + `}`),
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestNotReadyGivenBack: a bundle's set of clusters not Ready, grown by a change that covered
// the fleet, is a fresh map once all are Ready again: a map never shrinks, and at 1M the
// empty one held 31 MB.
func TestNotReadyGivenBack(t *testing.T) {
	const n = 3000
	st := seedFleet(t, n)
	f := New(st, Config{})
	if _, err := f.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.workspaces["fleet-default"].bundles["app"]
	grown := reflect.ValueOf(b.notReady).UnsafePointer()
	for _, c := range f.byUID {
		f.recount(b, c, api.StateReady, api.StateNotReady)
	}
	if len(b.notReady) != n || reflect.ValueOf(b.notReady).UnsafePointer() != grown {
		t.Fatalf("%d clusters not Ready, want %d in the same set", len(b.notReady), n)
	}
	i := 0
	for _, c := range f.byUID {
		f.recount(b, c, api.StateNotReady, api.StateReady)
		if i++; i < n && reflect.ValueOf(b.notReady).UnsafePointer() != grown {
			t.Fatalf("the set was replaced with %d clusters still in it", len(b.notReady))
		}
	}
	if len(b.notReady) != 0 || reflect.ValueOf(b.notReady).UnsafePointer() == grown {
		t.Fatalf("%d clusters not Ready; the set grown to %d is still held", len(b.notReady), n)
	}
	if b.counts[api.StateReady] != n {
		t.Fatalf("%d Ready, want %d", b.counts[api.StateReady], n)
	}
}

// TestDirtySet checks the set of clusters to write: each once, in the order marked, and the
// queue given back once drained.
func TestDirtySet(t *testing.T) {
	var d dirtySet
	cs := make([]*Cluster, 3*dirtyChunk+5)
	for i := range cs {
		cs[i] = &Cluster{Name: strconv.Itoa(i)}
		d.add(cs[i])
	}
	d.add(cs[0]) // marked already: keeps its place
	d.remove(cs[1])
	d.remove(cs[1])
	if d.len() != len(cs)-1 {
		t.Fatalf("len %d, want %d", d.len(), len(cs)-1)
	}
	d.add(cs[1]) // marked again: taken once, at its first place still in the queue
	var got []*Cluster
	for c := d.pop(); c != nil; c = d.pop() {
		if c.dirty {
			t.Fatalf("%s popped still marked", c.Name)
		}
		got = append(got, c)
	}
	want := cs
	if len(got) != len(want) {
		t.Fatalf("popped %d clusters, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pop %d: %s, want %s", i, got[i].Name, want[i].Name)
		}
	}
	if d.len() != 0 || len(d.chunks) > 1 || (len(d.chunks) == 1 && len(d.chunks[0]) != 0) {
		t.Fatalf("drained set holds len %d, %d chunks", d.len(), len(d.chunks))
	}
	d.add(cs[5])
	d.add(cs[6])
	d.clear()
	if d.len() != 0 || cs[5].dirty || cs[6].dirty || d.pop() != nil {
		t.Fatalf("clear left len %d", d.len())
	}
}

// TestClusterSize keeps a Cluster within its allocation size class of 240 bytes: a field
// more that crosses it costs 16 bytes more in each of a million clusters.
func TestClusterSize(t *testing.T) {
	if n := unsafe.Sizeof(Cluster{}); n > 240 {
		t.Fatalf("a Cluster is %d bytes: more than the 240 of its size class", n)
	}
	// Nearly every cluster has a pair at a million: 80 bytes is a size class of its own.
	if n := unsafe.Sizeof(pair{}); n > 80 {
		t.Fatalf("a pair is %d bytes: more than 80", n)
	}
}

func TestDepState(t *testing.T) {
	if s := depStateOf("").String(); s != "" {
		t.Fatalf("no state came back as %q", s)
	}
	for _, st := range states {
		if got := depStateOf(st).String(); got != st {
			t.Fatalf("%s came back as %q", st, got)
		}
	}
	if got := depStateOf("Exploded").String(); got != api.StateNotReady {
		t.Fatalf("an unknown state came back as %q, want %s", got, api.StateNotReady)
	}
}
