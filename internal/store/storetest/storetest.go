// Package storetest is the conformance suite every store driver must pass, so that the
// SQLite and PostgreSQL drivers behave the same to the server.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// Summaries are the summarizers stores under test must be opened with.
var Summaries = map[string]store.Summarizer{
	api.KindCluster: func(o *api.Object) []byte { return []byte(o.Metadata.Name + "|" + o.Metadata.Labels["env"]) },
}

// Harness gives the suite fresh stores.
type Harness struct {
	// Open returns a new, empty store, closed by the harness at test end.
	Open func(t testing.TB) store.Store
	// Reopen closes s and opens the same database again.
	Reopen func(t testing.TB, s store.Store) store.Store
	// RestartDatabase, when set, restarts the database server under an open store.
	RestartDatabase func(t testing.TB)
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"CreateGet", testCreateGet},
		{"UpdateConflict", testUpdateConflict},
		{"Delete", testDelete},
		{"ListSelectors", testListSelectors},
		{"Pagination", testPagination},
		{"PaginationCompacted", testPaginationCompacted},
		{"Watch", testWatch},
		{"WatchSelector", testWatchSelector},
		{"WatchResume", testWatchResume},
		{"WatchCompacted", testWatchCompacted},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Reopen", testReopen},
		{"DatabaseRestart", testDatabaseRestart},
		{"AgentContentAndStatus", testAgents},
		{"StatusChanges", testStatusChanges},
		{"Summaries", testSummaries},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// Obj builds a Cluster object for tests.
func Obj(ns, name string, l map[string]string) *api.Object {
	return &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: ns, Name: name, UID: "uid-" + name, Labels: l},
		Spec:     json.RawMessage(`{"displayName":"` + name + `"}`),
	}
}

func mustCreate(t testing.TB, s store.Store, o *api.Object) *api.Object {
	t.Helper()
	out, err := s.Create(ctx(t), o)
	if err != nil {
		t.Fatalf("create %s: %v", o.Metadata.Name, err)
	}
	return out
}

func rv(t testing.TB, o *api.Object) int64 {
	t.Helper()
	n, err := strconv.ParseInt(o.Metadata.ResourceVersion, 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q: %v", o.Metadata.ResourceVersion, err)
	}
	return n
}

func names(t testing.TB, items []json.RawMessage) []string {
	t.Helper()
	var out []string
	for _, it := range items {
		o, err := store.Decode(it)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o.Metadata.Name)
	}
	return out
}

func testCreateGet(t *testing.T, h Harness) {
	s := h.Open(t)
	a := mustCreate(t, s, Obj("ns1", "a", map[string]string{"env": "prod"}))
	if a.Metadata.ResourceVersion == "" {
		t.Fatal("created object has no resourceVersion")
	}
	got, err := s.Get(ctx(t), store.Key{Kind: api.KindCluster, Namespace: "ns1", Name: "a"})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.Metadata.ResourceVersion != a.Metadata.ResourceVersion || got.Metadata.Labels["env"] != "prod" || string(got.Spec) != `{"displayName":"a"}` {
		t.Errorf("get = %+v, want %+v", got, a)
	}
	if _, err := s.Create(ctx(t), Obj("ns1", "a", nil)); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("second create: err = %v, want ErrAlreadyExists", err)
	}
	// Same name, other namespace or kind: distinct objects.
	mustCreate(t, s, Obj("ns2", "a", nil))
	other := Obj("ns1", "a", nil)
	other.Kind = api.KindBundle
	mustCreate(t, s, other)
	if _, err := s.Get(ctx(t), store.Key{Kind: api.KindCluster, Namespace: "ns1", Name: "missing"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("get missing: err = %v, want ErrNotFound", err)
	}
	counts, err := s.Count(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if counts[api.KindCluster] != 2 || counts[api.KindBundle] != 1 {
		t.Errorf("counts = %v, want Cluster:2 Bundle:1", counts)
	}
}

func testUpdateConflict(t *testing.T, h Harness) {
	s := h.Open(t)
	a := mustCreate(t, s, Obj("ns", "a", map[string]string{"env": "dev"}))
	upd := a.DeepCopy()
	upd.Metadata.Labels["env"] = "prod"
	b, err := s.Update(ctx(t), upd)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if rv(t, b) <= rv(t, a) {
		t.Errorf("resourceVersion went from %d to %d, want it to grow", rv(t, a), rv(t, b))
	}
	stale := a.DeepCopy()
	stale.Metadata.Labels["env"] = "stale"
	if _, err := s.Update(ctx(t), stale); !errors.Is(err, store.ErrConflict) {
		t.Errorf("update with stale resourceVersion: err = %v, want ErrConflict", err)
	}
	got, _ := s.Get(ctx(t), store.KeyOf(a))
	if got.Metadata.Labels["env"] != "prod" {
		t.Errorf("after refused update env = %q, want prod", got.Metadata.Labels["env"])
	}
	// Labels changed: the label index must follow.
	res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Selector: labels.SelectorFromSet(labels.Set{"env": "dev"})})
	if err != nil || len(res.Items) != 0 {
		t.Errorf("list env=dev after relabel = %v, %v; want nothing", res, err)
	}
	uncond := got.DeepCopy()
	uncond.Metadata.ResourceVersion = ""
	uncond.Spec = json.RawMessage(`{"paused":true}`)
	if _, err := s.Update(ctx(t), uncond); err != nil {
		t.Errorf("unconditional update: %v", err)
	}
	missing := Obj("ns", "missing", nil)
	if _, err := s.Update(ctx(t), missing); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("update missing: err = %v, want ErrNotFound", err)
	}
}

func testDelete(t *testing.T, h Harness) {
	s := h.Open(t)
	a := mustCreate(t, s, Obj("ns", "a", map[string]string{"env": "prod"}))
	if _, err := s.Delete(ctx(t), store.KeyOf(a), "1"+a.Metadata.ResourceVersion); !errors.Is(err, store.ErrConflict) {
		t.Errorf("delete with wrong resourceVersion: err = %v, want ErrConflict", err)
	}
	last, err := s.Delete(ctx(t), store.KeyOf(a), a.Metadata.ResourceVersion)
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	if last.Metadata.Name != "a" || rv(t, last) <= rv(t, a) {
		t.Errorf("delete returned %+v, want a's last state at a newer revision", last.Metadata)
	}
	if _, err := s.Get(ctx(t), store.KeyOf(a)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("get after delete: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Delete(ctx(t), store.KeyOf(a), ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second delete: err = %v, want ErrNotFound", err)
	}
	res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Selector: labels.SelectorFromSet(labels.Set{"env": "prod"})})
	if err != nil || len(res.Items) != 0 {
		t.Errorf("list after delete = %d items, %v; want none", len(res.Items), err)
	}
	// The name can be used again.
	mustCreate(t, s, Obj("ns", "a", nil))
	counts, _ := s.Count(ctx(t))
	if counts[api.KindCluster] != 1 {
		t.Errorf("count = %d, want 1", counts[api.KindCluster])
	}
}

func testListSelectors(t *testing.T, h Harness) {
	s := h.Open(t)
	for _, o := range []struct {
		ns, name string
		l        map[string]string
	}{
		{"a", "prod-web", map[string]string{"env": "prod", "tier": "web", "size": "5"}},
		{"a", "prod-db", map[string]string{"env": "prod", "tier": "db", "size": "2"}},
		{"a", "dev-web", map[string]string{"env": "dev", "tier": "web"}},
		{"b", "staging", map[string]string{"env": "staging"}},
		{"b", "bare", nil},
	} {
		mustCreate(t, s, Obj(o.ns, o.name, o.l))
	}
	other := Obj("a", "bundle", map[string]string{"env": "prod"})
	other.Kind = api.KindBundle
	mustCreate(t, s, other)

	tests := []struct {
		sel, ns string
		want    []string
	}{
		{"", "", []string{"prod-web", "prod-db", "dev-web", "staging", "bare"}},
		{"", "b", []string{"staging", "bare"}},
		{"env=prod", "", []string{"prod-web", "prod-db"}},
		{"env==prod", "a", []string{"prod-web", "prod-db"}},
		{"env!=prod", "", []string{"dev-web", "staging", "bare"}},
		{"env in (prod,staging)", "", []string{"prod-web", "prod-db", "staging"}},
		{"env notin (prod,staging)", "", []string{"dev-web", "bare"}},
		{"tier", "", []string{"prod-web", "prod-db", "dev-web"}},
		{"!tier", "", []string{"staging", "bare"}},
		{"env=prod,tier=web", "", []string{"prod-web"}},
		{"tier=web,env!=prod", "", []string{"dev-web"}},
		{"!tier,env", "", []string{"staging"}},
		{"size>3", "", []string{"prod-web"}},
		{"env=prod,size<3", "", []string{"prod-db"}},
		{"env=nothing", "", nil},
		{"env=prod", "b", nil},
	}
	for _, tc := range tests {
		sel, err := labels.Parse(tc.sel)
		if err != nil {
			t.Fatalf("parse %q: %v", tc.sel, err)
		}
		res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Namespace: tc.ns, Selector: sel})
		if err != nil {
			t.Errorf("list %q: %v", tc.sel, err)
			continue
		}
		if got := names(t, res.Items); !slices.Equal(got, tc.want) {
			t.Errorf("list %q in %q = %v, want %v", tc.sel, tc.ns, got, tc.want)
		}
	}
}

func testPagination(t *testing.T, h Harness) {
	for _, tc := range []struct{ sel string }{{""}, {"env=prod"}} {
		t.Run("selector="+tc.sel, func(t *testing.T) {
			s := h.Open(t)
			sel, _ := labels.Parse(tc.sel)
			objs := map[string]*api.Object{}
			var want []string
			for i := range 25 {
				name := fmt.Sprintf("c%02d", i)
				env := "prod"
				if i%5 == 0 {
					env = "dev"
				}
				objs[name] = mustCreate(t, s, Obj("ns", name, map[string]string{"env": env}))
				if tc.sel == "" || env == "prod" {
					want = append(want, name)
				}
			}
			res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Selector: sel, Limit: 7})
			if err != nil {
				t.Fatal(err)
			}
			first := res.Revision
			var got []string
			pages := 0
			for {
				pages++
				for _, it := range res.Items {
					o, _ := store.Decode(it)
					got = append(got, o.Metadata.Name)
					if v := objs[o.Metadata.Name].Metadata.ResourceVersion; o.Metadata.ResourceVersion != v {
						t.Errorf("%s at resourceVersion %s, want %s as of the first page", o.Metadata.Name, o.Metadata.ResourceVersion, v)
					}
				}
				if res.Continue == "" {
					break
				}
				if pages == 1 {
					// Change objects not yet listed: a delete, a relabel out of the selection, a
					// new object. None of it may show in this listing.
					if _, err := s.Delete(ctx(t), store.KeyOf(objs["c21"]), ""); err != nil {
						t.Fatal(err)
					}
					cur := objs["c22"].DeepCopy()
					cur.Metadata.Labels = map[string]string{"env": "changed"}
					if _, err := s.Update(ctx(t), cur); err != nil {
						t.Fatal(err)
					}
					mustCreate(t, s, Obj("ns", "new", map[string]string{"env": "prod"}))
				}
				res, err = s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Selector: sel, Limit: 7, Continue: res.Continue})
				if err != nil {
					t.Fatalf("page %d: %v", pages+1, err)
				}
				if res.Revision != first {
					t.Errorf("page %d at revision %d, want %d", pages+1, res.Revision, first)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("paged names = %v, want %v", got, want)
			}
			if wantPages := (len(want) + 6) / 7; pages != wantPages {
				t.Errorf("%d pages, want %d", pages, wantPages)
			}
			if _, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Limit: 5, Continue: "garbage"}); err == nil {
				t.Error("list with a garbage continue token succeeded")
			}
		})
	}
}

func testPaginationCompacted(t *testing.T, h Harness) {
	s := h.Open(t)
	for i := range 10 {
		mustCreate(t, s, Obj("ns", fmt.Sprintf("c%d", i), nil))
	}
	res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Limit: 3})
	if err != nil || res.Continue == "" {
		t.Fatalf("first page: %v, continue %q", err, res.Continue)
	}
	mustCreate(t, s, Obj("ns", "later", nil))
	rev, _ := s.Revision(ctx(t))
	if err := s.Compact(ctx(t), rev); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if _, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Limit: 3, Continue: res.Continue}); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("continue after compaction: err = %v, want ErrCompacted", err)
	}
}

// next reads one event or fails after a while.
func next(t testing.TB, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		if ev.Err != nil {
			t.Fatalf("watch error: %v", ev.Err)
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no watch event within 20s")
	}
	return store.Event{}
}

func expect(t testing.TB, ev store.Event, typ, name string) {
	t.Helper()
	o, err := store.Decode(ev.Object)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != typ || o.Metadata.Name != name {
		t.Errorf("event %s %s, want %s %s", ev.Type, o.Metadata.Name, typ, name)
	}
	if o.Metadata.ResourceVersion != strconv.FormatInt(ev.Revision, 10) {
		t.Errorf("event object at resourceVersion %s, event revision %d", o.Metadata.ResourceVersion, ev.Revision)
	}
}

func testWatch(t *testing.T, h Harness) {
	s := h.Open(t)
	pre := mustCreate(t, s, Obj("ns", "before", nil))
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	ch, err := s.Watch(c, store.WatchOptions{Kind: api.KindCluster})
	if err != nil {
		t.Fatal(err)
	}
	a := mustCreate(t, s, Obj("ns", "a", nil))
	other := Obj("ns", "x", nil)
	other.Kind = api.KindBundle
	mustCreate(t, s, other) // another kind: not seen
	a.Spec = json.RawMessage(`{"paused":true}`)
	a2, err := s.Update(ctx(t), a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx(t), store.KeyOf(pre), ""); err != nil {
		t.Fatal(err)
	}
	e1, e2, e3 := next(t, ch), next(t, ch), next(t, ch)
	expect(t, e1, api.Added, "a")
	expect(t, e2, api.Modified, "a")
	expect(t, e3, api.Deleted, "before")
	if e2.Revision != rv(t, a2) || !(e1.Revision < e2.Revision && e2.Revision < e3.Revision) {
		t.Errorf("revisions %d %d %d not increasing or not matching the update's %d", e1.Revision, e2.Revision, e3.Revision, rv(t, a2))
	}
	// From an old revision: history replays.
	ch2, err := s.Watch(c, store.WatchOptions{Kind: api.KindCluster, Namespace: "ns", Revision: rv(t, pre)})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, next(t, ch2), api.Added, "a")
	expect(t, next(t, ch2), api.Modified, "a")
	expect(t, next(t, ch2), api.Deleted, "before")
	// Namespace filter.
	ch3, err := s.Watch(c, store.WatchOptions{Kind: api.KindCluster, Namespace: "other"})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, Obj("ns", "not-seen", nil))
	mustCreate(t, s, Obj("other", "seen", nil))
	expect(t, next(t, ch3), api.Added, "seen")
}

func testWatchSelector(t *testing.T, h Harness) {
	s := h.Open(t)
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	sel, _ := labels.Parse("env=prod")
	ch, err := s.Watch(c, store.WatchOptions{Kind: api.KindCluster, Selector: sel})
	if err != nil {
		t.Fatal(err)
	}
	a := mustCreate(t, s, Obj("ns", "a", map[string]string{"env": "dev"}))
	a.Metadata.Labels["env"] = "prod"
	a, err = s.Update(ctx(t), a)
	if err != nil {
		t.Fatal(err)
	}
	a.Metadata.Labels["env"] = "dev"
	if _, err := s.Update(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, Obj("ns", "b", map[string]string{"env": "prod"}))
	expect(t, next(t, ch), api.Added, "a")   // entered the selection
	expect(t, next(t, ch), api.Deleted, "a") // left it
	expect(t, next(t, ch), api.Added, "b")
}

func testWatchResume(t *testing.T, h Harness) {
	s := h.Open(t)
	start, _ := s.Revision(ctx(t))
	c, cancel := context.WithCancel(ctx(t))
	ch, err := s.Watch(c, store.WatchOptions{Kind: api.KindCluster, Revision: start})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		mustCreate(t, s, Obj("ns", fmt.Sprintf("c%d", i), nil))
	}
	var last int64
	for i := range 3 {
		ev := next(t, ch)
		expect(t, ev, api.Added, fmt.Sprintf("c%d", i))
		last = ev.Revision
	}
	cancel() // the connection drops
	for i := 5; i < 8; i++ {
		mustCreate(t, s, Obj("ns", fmt.Sprintf("c%d", i), nil))
	}
	c2, cancel2 := context.WithCancel(ctx(t))
	defer cancel2()
	ch2, err := s.Watch(c2, store.WatchOptions{Kind: api.KindCluster, Revision: last})
	if err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 8; i++ {
		expect(t, next(t, ch2), api.Added, fmt.Sprintf("c%d", i))
	}
}

func testWatchCompacted(t *testing.T, h Harness) {
	s := h.Open(t)
	a := mustCreate(t, s, Obj("ns", "a", nil))
	mustCreate(t, s, Obj("ns", "b", nil))
	rev, _ := s.Revision(ctx(t))
	if err := s.Compact(ctx(t), rev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(ctx(t), store.WatchOptions{Kind: api.KindCluster, Revision: rv(t, a)}); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("watch from a compacted revision: err = %v, want ErrCompacted", err)
	}
	// From the compaction point on it still works.
	c, cancel := context.WithCancel(ctx(t))
	defer cancel()
	ch, err := s.Watch(c, store.WatchOptions{Kind: api.KindCluster, Revision: rev})
	if err != nil {
		t.Fatalf("watch from the compacted revision itself: %v", err)
	}
	mustCreate(t, s, Obj("ns", "c", nil))
	expect(t, next(t, ch), api.Added, "c")
}

func testConcurrentWriters(t *testing.T, h Harness) {
	s := h.Open(t)
	counter := mustCreate(t, s, Obj("ns", "counter", map[string]string{"n": "0"}))
	const writers, each = 8, 60
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]bool{}
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				o, err := s.Create(ctx(t), Obj("ns", fmt.Sprintf("w%d-%d", w, i), map[string]string{"writer": strconv.Itoa(w)}))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if seen[o.Metadata.ResourceVersion] {
					errs <- fmt.Errorf("resourceVersion %s given twice", o.Metadata.ResourceVersion)
				}
				seen[o.Metadata.ResourceVersion] = true
				mu.Unlock()
				// Increment the shared counter with optimistic concurrency.
				for {
					cur, err := s.Get(ctx(t), store.KeyOf(counter))
					if err != nil {
						errs <- err
						return
					}
					n, _ := strconv.Atoi(cur.Metadata.Labels["n"])
					cur.Metadata.Labels["n"] = strconv.Itoa(n + 1)
					if _, err := s.Update(ctx(t), cur); errors.Is(err, store.ErrConflict) {
						continue
					} else if err != nil {
						errs <- err
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	cur, _ := s.Get(ctx(t), store.KeyOf(counter))
	if got := cur.Metadata.Labels["n"]; got != strconv.Itoa(writers*each) {
		t.Errorf("counter = %s, want %d: an increment was lost", got, writers*each)
	}
	res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Selector: labels.SelectorFromSet(labels.Set{"writer": "3"})})
	if err != nil || len(res.Items) != each {
		t.Errorf("writer 3 has %d objects (%v), want %d", len(res.Items), err, each)
	}
	counts, _ := s.Count(ctx(t))
	if counts[api.KindCluster] != writers*each+1 {
		t.Errorf("count = %d, want %d", counts[api.KindCluster], writers*each+1)
	}
}

func testReopen(t *testing.T, h Harness) {
	s := h.Open(t)
	var last *api.Object
	for i := range 20 {
		last = mustCreate(t, s, Obj("ns", fmt.Sprintf("c%d", i), map[string]string{"i": strconv.Itoa(i)}))
	}
	s = h.Reopen(t, s)
	res, err := s.List(ctx(t), store.ListOptions{Kind: api.KindCluster})
	if err != nil || len(res.Items) != 20 {
		t.Fatalf("after reopen: %d objects, %v; want 20", len(res.Items), err)
	}
	n := mustCreate(t, s, Obj("ns", "after", nil))
	if rv(t, n) <= rv(t, last) {
		t.Errorf("revision after reopen %d, want > %d", rv(t, n), rv(t, last))
	}
	sel, _ := labels.Parse("i=7")
	res, _ = s.List(ctx(t), store.ListOptions{Kind: api.KindCluster, Selector: sel})
	if got := names(t, res.Items); !slices.Equal(got, []string{"c7"}) {
		t.Errorf("label index after reopen: %v, want [c7]", got)
	}
}

// testDatabaseRestart writes continuously while the database restarts: every write that was
// acknowledged must be there afterwards, and writing must resume.
func testDatabaseRestart(t *testing.T, h Harness) {
	if h.RestartDatabase == nil {
		t.Skip("embedded database: covered by Reopen")
	}
	s := h.Open(t)
	var mu sync.Mutex
	var acked []string
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			name := fmt.Sprintf("c%d", i)
			if _, err := s.Create(c, Obj("ns", name, nil)); err == nil {
				mu.Lock()
				acked = append(acked, name)
				mu.Unlock()
			}
			cancel()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	h.RestartDatabase(t)
	// Writes resume after the restart.
	deadline := time.Now().Add(30 * time.Second)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n > before+20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume after the database restart (%d acknowledged)", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	<-done
	for _, name := range acked {
		if _, err := s.Get(ctx(t), store.Key{Kind: api.KindCluster, Namespace: "ns", Name: name}); err != nil {
			t.Errorf("acknowledged write %s lost: %v", name, err)
		}
	}
	t.Logf("%d writes acknowledged across the restart", len(acked))
}

func testAgents(t *testing.T, h Harness) {
	s := h.Open(t)
	ag, ok := s.(store.Agents)
	if !ok {
		t.Fatalf("%T does not implement store.Agents", s)
	}
	c := ctx(t)
	if err := ag.PutContent(c, "sha256:aa", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := ag.PutContent(c, "sha256:aa", []byte("hello")); err != nil {
		t.Fatalf("storing the same content again: %v", err)
	}
	if got, err := ag.GetContent(c, "sha256:aa"); err != nil || string(got) != "hello" {
		t.Errorf("GetContent = %q, %v", got, err)
	}
	if _, err := ag.GetContent(c, "sha256:bb"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing content: err = %v, want ErrNotFound", err)
	}
	rows := []store.DeploymentStatus{{Bundle: "ns/a", ID: "1", State: "Ready"}, {Bundle: "ns/b", ID: "1", State: "NotReady", Message: "Deployment web: 0/1"}}
	if err := ag.PutStatus(c, "uid-1", 5, rows, nil); err != nil {
		t.Fatal(err)
	}
	// A newer report updates one row and removes the other; an older report, which
	// arrives late (its write delayed behind the newer one's), changes nothing.
	if err := ag.PutStatus(c, "uid-1", 7, []store.DeploymentStatus{{Bundle: "ns/a", ID: "2", State: "Modified"}}, []string{"ns/b"}); err != nil {
		t.Fatal(err)
	}
	if err := ag.PutStatus(c, "uid-1", 6, []store.DeploymentStatus{{Bundle: "ns/a", ID: "1", State: "Ready"}, {Bundle: "ns/c", ID: "1", State: "Ready"}}, nil); !errors.Is(err, store.ErrStale) {
		t.Fatalf("older report: err = %v, want ErrStale", err)
	}
	// The same report again is written again.
	if err := ag.PutStatus(c, "uid-1", 7, []store.DeploymentStatus{{Bundle: "ns/a", ID: "2", State: "Modified"}}, []string{"ns/b"}); err != nil {
		t.Fatalf("the stored report again: %v", err)
	}
	if err := ag.PutStatus(c, "uid-2", 1, []store.DeploymentStatus{{Bundle: "ns/a", ID: "2", State: "Ready"}}, nil); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	ag = s.(store.Agents)
	got := map[string]store.DeploymentStatus{}
	if err := ag.ScanStatus(c, func(r store.DeploymentStatus) error { got[r.Cluster+" "+r.Bundle] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	want := map[string]store.DeploymentStatus{
		"uid-1 ns/a": {Cluster: "uid-1", Bundle: "ns/a", ID: "2", State: "Modified"},
		"uid-2 ns/a": {Cluster: "uid-2", Bundle: "ns/a", ID: "2", State: "Ready"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("status rows = %v, want %v", got, want)
	}
	seqs := map[string]int64{}
	ag.ScanSeqs(c, func(cl string, n int64) error { seqs[cl] = n; return nil })
	if seqs["uid-1"] != 7 || seqs["uid-2"] != 1 {
		t.Errorf("sequences = %v, want uid-1:7 uid-2:1", seqs)
	}
	if err := ag.DeleteClusterStatus(c, "uid-1"); err != nil {
		t.Fatal(err)
	}
	n := 0
	ag.ScanStatus(c, func(r store.DeploymentStatus) error { n++; return nil })
	if n != 1 {
		t.Errorf("%d rows after deleting uid-1's, want 1", n)
	}
}

// testStatusChanges: every status write moves its cluster to the end of the stream, with
// all its rows and its largest sequence; a cursor resumes after what it saw, one commit's
// clusters included (paged with a limit of one).
func testStatusChanges(t *testing.T, h Harness) {
	s := h.Open(t)
	ag := s.(store.Agents)
	c := ctx(t)
	start, err := ag.StatusRevision(c)
	if err != nil {
		t.Fatal(err)
	}
	put := func(cluster string, seq int64, rows []store.DeploymentStatus, removed []string) {
		t.Helper()
		if err := ag.PutStatus(c, cluster, seq, rows, removed); err != nil {
			t.Fatal(err)
		}
	}
	put("uid-1", 3, []store.DeploymentStatus{{Bundle: "ns/a", ID: "1", State: "Ready"}, {Bundle: "ns/b", ID: "1", State: "Ready"}}, nil)
	put("uid-2", 1, []store.DeploymentStatus{{Bundle: "ns/a", ID: "1", State: "NotReady"}}, nil)
	put("uid-1", 4, nil, []string{"ns/b"})
	read := func(from store.StatusCursor) (string, store.StatusCursor) {
		t.Helper()
		var got []string
		cur := from
		for {
			next, err := ag.StatusChanges(c, cur, 1, func(cluster string, seq int64, rows []store.DeploymentStatus) error {
				var rs []string
				for _, r := range rows {
					rs = append(rs, r.Bundle+"="+r.ID+":"+r.State)
				}
				sort.Strings(rs)
				got = append(got, fmt.Sprintf("%s@%d%v", cluster, seq, rs))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if next == cur {
				return strings.Join(got, " "), cur
			}
			cur = next
		}
	}
	got, cur := read(store.StatusCursor{Rev: start})
	if want := "uid-2@1[ns/a=1:NotReady] uid-1@4[ns/a=1:Ready]"; got != want {
		t.Errorf("status changes = %q, want %q", got, want)
	}
	if rev, err := ag.StatusRevision(c); err != nil || rev != cur.Rev {
		t.Errorf("StatusRevision = %d, %v; want the cursor's %d", rev, err, cur.Rev)
	}
	if got, _ := read(cur); got != "" {
		t.Errorf("changes after the last cursor = %q, want none", got)
	}
	// An older report stores neither its rows nor its sequence, but its cluster is seen
	// again, with the newer report's rows: a follower that passed over the newer write
	// takes it then.
	if err := ag.PutStatus(c, "uid-2", 0, []store.DeploymentStatus{{Bundle: "ns/a", ID: "1", State: "Ready"}, {Bundle: "ns/b", ID: "1", State: "Ready"}}, nil); !errors.Is(err, store.ErrStale) {
		t.Fatalf("older report: err = %v, want ErrStale", err)
	}
	got, cur = read(cur)
	if want := "uid-2@1[ns/a=1:NotReady]"; got != want {
		t.Errorf("changes after an older report = %q, want %q", got, want)
	}
}

func testSummaries(t *testing.T, h Harness) {
	s := h.Open(t)
	sc, ok := s.(store.Summaries)
	if !ok {
		t.Fatalf("%T does not implement store.Summaries", s)
	}
	a := mustCreate(t, s, Obj("ns", "a", map[string]string{"env": "dev"}))
	mustCreate(t, s, Obj("ns", "b", map[string]string{"env": "dev"}))
	mustCreate(t, s, Obj("other", "c", nil))
	gone := Obj("ns", "gone", nil)
	mustCreate(t, s, gone)
	if _, err := s.Delete(ctx(t), store.KeyOf(gone), ""); err != nil {
		t.Fatal(err)
	}
	a.Metadata.Labels["env"] = "prod"
	if _, err := s.Update(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	bundle := Obj("ns", "bundle", nil)
	bundle.Kind = api.KindBundle
	mustCreate(t, s, bundle)
	var got []string
	rev, err := sc.ScanSummaries(ctx(t), api.KindCluster, func(b []byte) error { got = append(got, string(b)); return nil })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []string{"a|prod", "b|dev", "c|"}; !slices.Equal(got, want) {
		t.Errorf("summaries = %q, want %q", got, want)
	}
	if cur, _ := s.Revision(ctx(t)); rev != cur {
		t.Errorf("scan at revision %d, store at %d", rev, cur)
	}
}
