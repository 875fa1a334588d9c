package fleet

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"
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
	st := seedClusters(b, n)
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
