package postgres_test

import (
	"context"
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
