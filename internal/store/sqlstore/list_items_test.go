package sqlstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
)

// ListOptions.Items is handed exactly the page's objects, in order, while they are read:
// whole lists in batches, pages without the object past the limit, lists filtered in Go,
// and continue pages with objects changed since the first. A list that fails after handing
// objects out leaves their memory alone: later lists do not reuse it under the writer.
func TestListItemsStream(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t, sqlstore.Config{})
			ctx := testCtx(t)
			const n = 600
			body := func(i int) string { return strings.Repeat(fmt.Sprint(i%10), 2000) }
			createAll(t, s, n, func(i int) *api.Object {
				o := storetest.Obj("ns", fmt.Sprintf("c%03d", i), map[string]string{"half": fmt.Sprint(i % 2), "n": fmt.Sprint(i)})
				o.Spec = json.RawMessage(fmt.Sprintf(`{"displayName":%q}`, body(i)))
				return o
			})
			list := func(opts store.ListOptions) (*store.ListResult, [][]json.RawMessage) {
				t.Helper()
				var got [][]json.RawMessage
				opts.Kind = api.KindCluster
				opts.Items = func(items []json.RawMessage) { got = append(got, items) }
				res, err := s.List(ctx, opts)
				if err != nil {
					t.Fatal(err)
				}
				return res, got
			}
			same := func(what string, res *store.ListResult, got [][]json.RawMessage, want int) {
				t.Helper()
				var flat []json.RawMessage
				for _, b := range got {
					flat = append(flat, b...)
				}
				if len(res.Items) != want || len(flat) != want {
					t.Fatalf("%s: %d items, %d handed out, want %d", what, len(res.Items), len(flat), want)
				}
				for i := range flat {
					if !bytes.Equal(flat[i], res.Items[i]) {
						t.Fatalf("%s: item %d handed out differs from the result's", what, i)
					}
				}
			}
			res, got := list(store.ListOptions{})
			same("all", res, got, n)
			if len(got) < 2 {
				t.Errorf("a list of %d handed its objects out in %d batch(es), want them as they are read", n, len(got))
			}
			res.Release()
			half, _ := labels.Parse("half=1")
			res, got = list(store.ListOptions{Selector: half, Limit: 100})
			same("a page", res, got, 100)
			if res.Continue == "" {
				t.Fatal("a page of 100 of 300 has no continue token")
			}
			// Changed after the first page: the next page holds its state as of then.
			o, err := s.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: "ns", Name: "c401"})
			if err != nil {
				t.Fatal(err)
			}
			o.Metadata.Labels["half"] = "0"
			if _, err := s.Update(ctx, o); err != nil {
				t.Fatal(err)
			}
			res, got = list(store.ListOptions{Selector: half, Limit: 100, Continue: res.Continue})
			same("a continue page", res, got, 100)
			// A selector of nothing lists nothing (it has no requirements to query by).
			if res, _ := list(store.ListOptions{Selector: labels.Nothing()}); len(res.Items) != 0 || res.Revision == 0 {
				t.Fatalf("a selector of nothing listed %d objects at revision %d", len(res.Items), res.Revision)
			}
			gt, _ := labels.Parse("n>500")
			res, got = list(store.ListOptions{Selector: gt})
			same("filtered in Go", res, got, 99)

			// Failing once objects are out: their blocks are not released. With one P, a block
			// put in the pool is the next one taken from it (each P has its own).
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			cctx, cancel := context.WithCancel(ctx)
			var kept []json.RawMessage
			_, err = s.List(cctx, store.ListOptions{Kind: api.KindCluster, Items: func(items []json.RawMessage) {
				kept = append(kept, items...)
				cancel()
				// database/sql closes the rows on the context's end from a goroutine of its own.
				time.Sleep(100 * time.Millisecond)
			}})
			if err == nil {
				t.Fatal("a list whose context ended midway succeeded")
			}
			if len(kept) == 0 {
				t.Fatal("no objects were handed out before the list failed")
			}
			snapshot := make([][]byte, len(kept))
			for i, it := range kept {
				snapshot[i] = bytes.Clone(it)
			}
			// Other objects than the failed list's first ones, which would rewrite the same
			// bytes in the same places.
			other, _ := labels.Parse("half=0")
			for range 3 {
				res, _ := list(store.ListOptions{Selector: other})
				res.Release()
			}
			for i, it := range kept {
				if !bytes.Equal(it, snapshot[i]) {
					t.Fatalf("object %d handed out by the failed list was overwritten by later lists", i)
				}
			}
		})
	}
}
