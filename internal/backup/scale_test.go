package backup_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/backup"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/testenv/pg"
)

// TestMigrateScale measures a backup and `flotilla migrate` of an embedded installation of
// FLOTILLA_MIGRATE_CLUSTERS clusters (default 100,000), each with five labels, a status, a
// deployment status row and an agent sequence number, as the agents leave them. Run with
// FLOTILLA_MIGRATE_SCALE=1; it reports figures and asserts only that everything arrived.
func TestMigrateScale(t *testing.T) {
	if os.Getenv("FLOTILLA_MIGRATE_SCALE") == "" {
		t.Skip("set FLOTILLA_MIGRATE_SCALE=1 to measure a migration at scale")
	}
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_MIGRATE_CLUSTERS")); err == nil && v > 0 {
		n = v
	}
	srv := pg.Start(t)
	ctx := context.Background()
	from := dataDir(t)
	cfg := sqlstore.DefaultConfig()
	cfg.Summaries = map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}
	st, err := sqlite.Open(ctx, from, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				name := fmt.Sprintf("cluster-%07d", i)
				o := cluster(name, map[string]string{"env": []string{"prod", "staging", "dev"}[i%3], "region": "region-" + strconv.Itoa(i%10),
					"customer": "customer-" + strconv.Itoa(i%1000), "arch": []string{"amd64", "arm64"}[i%2], "group": "g" + strconv.Itoa(i/10000)})
				o.Status = []byte(`{"phase":"Ready","lastSeen":"2026-12-01T08:00:00Z","agentVersion":"v0.9.0","kubernetesVersion":"v1.37.2","nodes":3,"conditions":[{"type":"Ready","status":"True"}]}`)
				if _, err := st.Create(ctx, o); err != nil {
					failed.Store(err)
					return
				}
				rows := []store.DeploymentStatus{{Cluster: name, Bundle: "default/app", ID: "s-1", State: api.StateReady}}
				if err := st.PutStatus(ctx, name, 1, rows, nil); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d clusters with their status in %s", n, time.Since(start).Round(time.Millisecond))
	st.Close()
	dbSize := fileSize(filepath.Join(from, sqlite.FileName)) + fileSize(filepath.Join(from, sqlite.FileName+"-wal"))

	// A backup of the stopped installation: what `flotilla backup` streams, to a file.
	st, err = sqlite.Open(ctx, from, cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "fleet.backup")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := backup.Write(ctx, f, st, from, true); err != nil {
		t.Fatal(err)
	}
	f.Close()
	took := time.Since(start)
	st.Close()
	start = time.Now()
	bf, err := backup.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	bf.Close()
	t.Logf("backup: %s to write, %s to check; %d bytes (database %d bytes), %d rows", took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), fileSize(file), dbSize, bf.Rows)

	url := srv.NewDatabase(t)
	start = time.Now()
	bf, err = backup.Migrate(ctx, from, url, t.TempDir(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MIGRATE %d clusters (%d rows) SQLite → PostgreSQL: %s", n, bf.Rows, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	pgs, err := postgres.Open(ctx, url, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pgs.Close()
	counts, err := pgs.Count(ctx)
	if err != nil || counts[api.KindCluster] != int64(n) {
		t.Fatalf("%v clusters in PostgreSQL (%v), want %d", counts, err, n)
	}
	var statuses int
	if err := pgs.ScanStatus(ctx, func(store.DeploymentStatus) error { statuses++; return nil }); err != nil || statuses != n {
		t.Fatalf("%d status rows (%v), want %d", statuses, err, n)
	}
	t.Logf("PostgreSQL store opened and counted in %s", time.Since(start).Round(time.Millisecond))
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}
