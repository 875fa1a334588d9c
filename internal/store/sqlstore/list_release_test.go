package sqlstore_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
)

// A large list's memory, once released, is taken by the next list instead of allocated
// again, and that next list's objects are whole: the released blocks were not reused while
// the first list still held them, nor leak into the second.
func TestListReleaseReusesBlocks(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t, sqlstore.Config{})
			ctx := testCtx(t)
			const n = 400
			createAll(t, s, n, func(i int) *api.Object {
				o := storetest.Obj("ns", fmt.Sprintf("c%03d", i), map[string]string{"half": fmt.Sprint(i % 2)})
				o.Spec = json.RawMessage(fmt.Sprintf(`{"displayName":%q}`, strings.Repeat(fmt.Sprint(i%10), 4000)))
				return o
			})
			check := func(res *store.ListResult, want int) {
				t.Helper()
				if len(res.Items) != want {
					t.Fatalf("%d items, want %d", len(res.Items), want)
				}
				for _, it := range res.Items {
					var o api.Object
					if err := json.Unmarshal(it, &o); err != nil {
						t.Fatalf("an item does not decode: %v", err)
					}
					var i int
					fmt.Sscanf(o.Metadata.Name, "c%d", &i)
					if !bytes.Contains(o.Spec, []byte(strings.Repeat(fmt.Sprint(i%10), 4000))) {
						t.Fatalf("%s holds another object's bytes", o.Metadata.Name)
					}
				}
			}
			list := func(opts store.ListOptions) (*store.ListResult, uint64) {
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				res, err := s.List(ctx, opts)
				runtime.ReadMemStats(&m1)
				if err != nil {
					t.Fatal(err)
				}
				return res, m1.TotalAlloc - m0.TotalAlloc
			}
			all := store.ListOptions{Kind: api.KindCluster}
			// A collection between the two lists may empty the pool: tried a few times.
			var saved uint64
			for range 3 {
				first, a1 := list(all)
				check(first, n)
				if first.Release == nil {
					t.Fatal("a list of 1.6 MB has nothing to release")
				}
				first.Release()
				second, a2 := list(all)
				check(second, n)
				second.Release()
				if saved = a1 - min(a1, a2); saved >= 1<<20 {
					break
				}
			}
			if saved < 1<<20 {
				t.Errorf("the list after a release allocated %d B less than the first, want at least a block (1 MB) less", saved)
			}
			// A small list has nothing to release.
			small, _ := list(store.ListOptions{Kind: api.KindCluster, Limit: 3})
			check(small, 3)
			if small.Release != nil {
				t.Error("a list of three holds pooled blocks")
			}
		})
	}
}

// createAll creates objects 0 to n-1 of obj in s, 32 at a time.
func createAll(t *testing.T, s store.Store, n int, obj func(i int) *api.Object) {
	t.Helper()
	ctx := testCtx(t)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := s.Create(ctx, obj(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}
