package sqlite_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	dirs := map[store.Store]string{}
	open := func(t testing.TB, dir string) store.Store {
		s, err := sqlite.Open(context.Background(), dir, sqlstore.Config{Summaries: storetest.Summaries})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		dirs[s] = dir
		return s
	}
	storetest.Run(t, storetest.Harness{
		Open: func(t testing.TB) store.Store { return open(t, t.TempDir()) },
		Reopen: func(t testing.TB, s store.Store) store.Store {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, dirs[s])
		},
	})
}

func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := sqlite.Open(context.Background(), dir, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := sqlite.Open(context.Background(), dir, sqlstore.Config{}); err == nil {
		t.Fatal("a second store opened the same data directory")
	}
}

// Store operation metrics see the error an operation returned.
func TestObserveSeesErrors(t *testing.T) {
	var mu sync.Mutex
	errs := map[string]error{}
	s, err := sqlite.Open(context.Background(), t.TempDir(), sqlstore.Config{Observe: func(op string, _ time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		errs[op] = err
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(context.Background(), store.Key{Kind: "Cluster", Namespace: "fleet-default", Name: "missing"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get of a missing object: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !errors.Is(errs["get"], store.ErrNotFound) {
		t.Errorf("observed get error %v, want not found", errs["get"])
	}
}

// BenchmarkGet reads one object by key, as agents' registrations and the API do.
func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, b.TempDir(), sqlstore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster}, Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: "c-1", UID: "u-1"}}
	if _, err := s.Create(ctx, obj); err != nil {
		b.Fatal(err)
	}
	key := store.KeyOf(obj)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Get(ctx, key); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
