package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// TestModelMemory reports the fleet model's heap per cluster (FLOTILLA_MEM_CLUSTERS, default
// 20,000), with clusters shaped as registered agents make them.
func TestModelMemory(t *testing.T) {
	n := envCount("FLOTILLA_MEM_CLUSTERS", 0)
	if n == 0 {
		t.Skip("set FLOTILLA_MEM_CLUSTERS=N to measure the model's memory")
	}
	ctx := context.Background()
	st := seedClusters(t, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f := New(st, Config{})
	if _, err := f.load(ctx); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("FIGURE fleet model: %d clusters, %d bytes of live heap per cluster", n, (after.HeapAlloc-before.HeapAlloc)/uint64(n))
	if p := os.Getenv("FLOTILLA_MEM_PROFILE"); p != "" {
		fh, _ := os.Create(p)
		pprof.Lookup("heap").WriteTo(fh, 0)
		fh.Close()
	}
	runtime.KeepAlive(f)
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
	ctx := context.Background()
	st, err := sqlite.Open(ctx, t.TempDir(), sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: SummarizeCluster}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
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
	return st
}
