package postgres_test

import (
	"context"
	"fmt"
	"time"

	"flotilla.dev/api"
	"os"
	"strings"
	"testing"

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
