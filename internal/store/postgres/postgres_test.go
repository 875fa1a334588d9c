package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
	"flotilla.dev/internal/testenv/pg"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pg.StopShared()
	os.Exit(code)
}

func TestConformance(t *testing.T) {
	srv := pg.Start(t)
	urls := map[store.Store]string{}
	open := func(t testing.TB, url string) store.Store {
		s, err := postgres.Open(context.Background(), url, sqlstore.Config{Summaries: storetest.Summaries})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		urls[s] = url
		return s
	}
	storetest.Run(t, storetest.Harness{
		Open: func(t testing.TB) store.Store { return open(t, srv.NewDatabase(t)) },
		Reopen: func(t testing.TB, s store.Store) store.Store {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, urls[s])
		},
		RestartDatabase: srv.Restart,
	})
}

func TestBadURL(t *testing.T) {
	_, err := postgres.Open(context.Background(), "postgres://user:s3cret@[::1", sqlstore.Config{})
	if err == nil {
		t.Fatal("opened a malformed URL")
	}
	if got := err.Error(); strings.Contains(got, "s3cret") {
		t.Errorf("error %q leaks the password", got)
	}
}

// Two stores on one database, as two server replicas: a commit through one wakes the
// other's Changes (NOTIFY; the engine's own poller would not close it) and its watchers,
// and the other reads the status written through the first.
func TestReplicasWakeEachOther(t *testing.T) {
	url := pg.Start(t).NewDatabase(t)
	open := func() *postgres.Store {
		// A poll interval far longer than the test: only a notification can wake the watch.
		s, err := postgres.Open(context.Background(), url, sqlstore.Config{PollInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open(), open()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	from, err := b.StatusRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events, err := b.Watch(ctx, store.WatchOptions{Kind: api.KindCluster})
	if err != nil {
		t.Fatal(err)
	}
	woken := b.Changes()
	if err := a.PutStatus(ctx, "uid-1", 1, []store.DeploymentStatus{{Bundle: "ns/x", ID: "1", State: "Ready"}}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case <-ctx.Done():
		t.Fatal("the second store was not told of the first's status commit")
	}
	var got []string
	if _, err := b.StatusChanges(ctx, store.StatusCursor{Rev: from}, 10, func(c string, seq int64, rows []store.DeploymentStatus) error {
		got = append(got, fmt.Sprintf("%s@%d:%d", c, seq, len(rows)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "uid-1@1:1" {
		t.Errorf("status changes seen by the second store = %v", got)
	}
	if _, err := a.Create(ctx, storetest.Obj("ns", "one", nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Err != nil || ev.Type != api.Added {
			t.Fatalf("event = %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("the second store's watch did not see the first's create")
	}
}

// Two stores on one database, as two server replicas, take one cluster's reports
// concurrently and in shuffled order: whatever the interleaving, the newest report's rows
// and sequence are what stays, and every older report is either stored before it or
// refused as stale. An older report that passed its check on a stale read would overwrite
// the newer rows.
func TestReplicasKeepNewestReport(t *testing.T) {
	url := pg.Start(t).NewDatabase(t)
	open := func() *postgres.Store {
		s, err := postgres.Open(context.Background(), url, sqlstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	replicas := []*postgres.Store{open(), open()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 400
	seqs := rand.Perm(n)
	var next atomic.Int64
	var stored, stale atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := replicas[w%len(replicas)]
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				seq := int64(seqs[i] + 1)
				err := s.PutStatus(ctx, "uid-1", seq, []store.DeploymentStatus{{Bundle: "ns/a", ID: strconv.FormatInt(seq, 10), State: "Ready"}}, nil)
				switch {
				case err == nil:
					stored.Add(1)
				case errors.Is(err, store.ErrStale):
					stale.Add(1)
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d reports stored, %d refused as stale", stored.Load(), stale.Load())
	for i, s := range replicas {
		var rows []string
		if err := s.ScanStatus(ctx, func(r store.DeploymentStatus) error { rows = append(rows, r.Bundle+"="+r.ID); return nil }); err != nil {
			t.Fatal(err)
		}
		var seq int64
		if err := s.ScanSeqs(ctx, func(_ string, n int64) error { seq = n; return nil }); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("ns/a=%d", n); strings.Join(rows, " ") != want || seq != n {
			t.Errorf("replica %d reads rows %v at sequence %d, want %s at %d", i, rows, seq, want, n)
		}
	}
}

// Two replicas' reports of one cluster wait for the status counter's lock, the newer one
// first: the older one, let through after the newer committed, must find the newer's
// sequence, not the one stored before it waited.
func TestReplicasStaleReportAfterLock(t *testing.T) {
	url := pg.Start(t).NewDatabase(t)
	open := func() *postgres.Store {
		s, err := postgres.Open(context.Background(), url, sqlstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open(), open()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.PutStatus(ctx, "uid-1", 1, []store.DeploymentStatus{{Bundle: "ns/a", ID: "1", State: "Ready"}}, nil); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	hold, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback()
	if _, err := hold.Exec(`UPDATE meta SET value = value WHERE name = 'status_revision'`); err != nil {
		t.Fatal(err)
	}
	waiting := func(n int) {
		t.Helper()
		for {
			var got int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got >= n {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%d writers wait for the lock, want %d", got, n)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	errs := make(chan error, 2)
	go func() {
		errs <- a.PutStatus(ctx, "uid-1", 9, []store.DeploymentStatus{{Bundle: "ns/a", ID: "9", State: "Ready"}}, nil)
	}()
	waiting(1)
	go func() {
		errs <- b.PutStatus(ctx, "uid-1", 8, []store.DeploymentStatus{{Bundle: "ns/a", ID: "8", State: "NotReady"}, {Bundle: "ns/b", ID: "8", State: "Ready"}}, nil)
	}()
	waiting(2)
	if err := hold.Rollback(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil && !errors.Is(err, store.ErrStale) {
			t.Fatal(err)
		}
	}
	var rows []string
	if err := b.ScanStatus(ctx, func(r store.DeploymentStatus) error { rows = append(rows, r.Bundle+"="+r.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	var seq int64
	if err := b.ScanSeqs(ctx, func(_ string, n int64) error { seq = n; return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rows, " ") != "ns/a=9" || seq != 9 {
		t.Errorf("rows %v at sequence %d, want ns/a=9 at 9", rows, seq)
	}
}
