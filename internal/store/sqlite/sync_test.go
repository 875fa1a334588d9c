package sqlite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlstore"
)

// An acknowledged write must survive a power loss: by default every connection, the
// writer's above all, syncs the log at each commit (synchronous=FULL, 2). NORMAL (1) is
// there only when asked for.
func TestSynchronousMode(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode string
		want int
	}{{"", 2}, {"full", 2}, {"normal", 1}} {
		s, err := OpenWith(ctx, t.TempDir(), sqlstore.Config{}, Options{Synchronous: tc.mode})
		if err != nil {
			t.Fatalf("mode %q: %v", tc.mode, err)
		}
		var w, r int
		if err := s.writeDB.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&w); err != nil {
			t.Fatal(err)
		}
		if err := s.db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&r); err != nil {
			t.Fatal(err)
		}
		if w != tc.want || r != tc.want {
			t.Errorf("mode %q: synchronous is %d on the writer and %d on readers, want %d", tc.mode, w, r, tc.want)
		}
		s.Close()
	}
	if _, err := OpenWith(ctx, t.TempDir(), sqlstore.Config{}, Options{Synchronous: "off"}); err == nil {
		t.Error("synchronous=off was accepted")
	}
}

// BenchmarkSyncWrites measures what FULL costs against NORMAL: object creates and agent
// reports, from one writer (a commit, and with FULL an fsync, per write) and from 64 at once
// (the batching writer groups them, so FULL costs an fsync per batch).
//
//	go test -run '^$' -bench SyncWrites -benchtime 5000x ./internal/store/sqlite/
func BenchmarkSyncWrites(b *testing.B) {
	ctx := context.Background()
	for _, mode := range []string{SyncFull, SyncNormal} {
		for _, writers := range []int{1, 64} {
			for _, kind := range []string{"create", "report"} {
				b.Run(fmt.Sprintf("sync=%s/writers=%d/%s", mode, writers, kind), func(b *testing.B) {
					var txs atomic.Int64
					s, err := OpenWith(ctx, b.TempDir(), sqlstore.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
						ObserveBatch: func(int) { txs.Add(1) }}, Options{Synchronous: mode})
					if err != nil {
						b.Fatal(err)
					}
					defer s.Close()
					var next atomic.Int64
					var wg sync.WaitGroup
					b.ResetTimer()
					txs.Store(0)
					start := time.Now()
					for range writers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for {
								i := next.Add(1)
								if i > int64(b.N) {
									return
								}
								var err error
								if kind == "create" {
									_, err = s.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
										Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: fmt.Sprintf("c-%d", i), Labels: map[string]string{"env": "prod"}},
										Spec:     json.RawMessage(`{"clientID":"x"}`)})
								} else {
									err = s.PutStatus(ctx, fmt.Sprintf("uid-%d", i%1000), i, []store.DeploymentStatus{{Bundle: "fleet-default/app", ID: "0123456789abcdef0123456789abcdef", State: "Ready"}}, nil)
								}
								if err != nil && !errors.Is(err, store.ErrStale) {
									// Concurrent writers may queue a cluster's reports out of order.
									b.Error(err)
									return
								}
							}
						}()
					}
					wg.Wait()
					b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), kind+"s/s")
					// Each transaction is one commit: with FULL, one fsync of the log.
					b.ReportMetric(float64(b.N)/float64(txs.Load()), "writes/commit")
				})
			}
		}
	}
}
