package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// BenchmarkLoad times loading the fleet model from a store of FLOTILLA_LOAD_CLUSTERS
// clusters (default 20,000) with five labels each.
//
//	FLOTILLA_LOAD_CLUSTERS=100000 go test -run XXX -bench Load -benchtime 3x ./internal/fleet/
func BenchmarkLoad(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("FLOTILLA_LOAD_CLUSTERS"))
	if n == 0 {
		n = 20000
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, b.TempDir(), sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: SummarizeCluster}})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var wg sync.WaitGroup
	now := time.Now().UTC()
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
					Metadata: api.ObjectMeta{Name: fmt.Sprintf("c-%07d", i), Namespace: "fleet-default", UID: fmt.Sprintf("uid-%d", i), CreationTimestamp: &now,
						Labels: map[string]string{"env": []string{"prod", "dev", "staging"}[i%3], "region": "r" + strconv.Itoa(i%10), "customer": "c" + strconv.Itoa(i%1000), "arch": "amd64", "group": "g" + strconv.Itoa(i/10000)}},
					Spec:   json.RawMessage(`{"clientID":"` + strconv.Itoa(i) + `"}`),
					Status: json.RawMessage(`{"state":"Ready","lastSeen":"2026-11-22T20:00:00Z","inventory":{"kubernetesVersion":"v1.37.2","nodeCount":1,"architecture":"amd64"}}`),
				})
			}
		}()
	}
	wg.Wait()
	b.ResetTimer()
	for range b.N {
		f := New(st, Config{})
		start := time.Now()
		if _, err := f.load(ctx); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Microseconds())/float64(n), "µs/cluster")
	}
}
