package audit

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

func openStore(t testing.TB) store.Store {
	t.Helper()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := sqlite.Open(context.Background(), t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// gated holds every Create until open is closed: the writer stalls as behind a slow disk.
type gated struct {
	store.Store
	open    chan struct{}
	entered atomic.Int64
}

func (g *gated) Create(ctx context.Context, obj *api.Object) (*api.Object, error) {
	g.entered.Add(1)
	<-g.open
	return g.Store.Create(ctx, obj)
}

func stored(t *testing.T, st store.Store) []api.AuditRecord {
	t.Helper()
	l, err := New(Config{Store: st, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out []api.AuditRecord
	q := Query{Limit: 7}
	for {
		page, err := l.List(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Items...)
		if page.Continue == "" {
			return out
		}
		q.Continue = page.Continue
	}
}

// A flood while the store is stalled holds at most the queue and one batch in memory; every
// other record is dropped and counted, and what was taken is written once the store resumes.
func TestQueueBoundUnderFlood(t *testing.T) {
	st := &gated{Store: openStore(t), open: make(chan struct{})}
	const queue, batch, requests = 8, 4, 200
	l, err := New(Config{Store: st, QueueSize: queue, BatchSize: batch, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	var wg sync.WaitGroup
	for i := range requests {
		wg.Go(func() {
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodDelete, "/apis/flotilla.dev/v1/namespaces/default/bundles/b"+string(rune('a'+i%26)), nil))
		})
	}
	wg.Wait()
	if d := l.Stats().Dropped; d < requests-queue-batch {
		t.Errorf("dropped %d of %d with a queue of %d and batches of %d: the queue grew", d, requests, queue, batch)
	}
	if len(l.q) > queue {
		t.Errorf("queue holds %d", len(l.q))
	}
	close(st.open)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	got := len(stored(t, st.Store))
	if int64(got) != s.Written || s.Written+s.Dropped != requests || s.Failed != 0 {
		t.Errorf("stored %d, stats %+v; want stored == written and written + dropped == %d", got, s, requests)
	}
}

// Retention deletes old records, at most a bounded number per pass, and keeps the young.
func TestPruneByAge(t *testing.T) {
	st := openStore(t)
	var now atomic.Pointer[time.Time]
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now.Store(&t0)
	l, err := New(Config{Store: st, Retention: 24 * time.Hour, PruneBatch: 2, BatchSize: 1, Logger: quiet(),
		Now: func() time.Time { return *now.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	send := func(at time.Time, n int) {
		now.Store(&at)
		for range n {
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/v1/login", nil))
		}
	}
	send(t0, 25)
	waitWritten(t, l, 25)
	send(t0.Add(20*time.Hour), 3)
	waitWritten(t, l, 28)
	later := t0.Add(30 * time.Hour)
	now.Store(&later)
	n, err := l.Prune(context.Background())
	if err != nil || n != pruneBatches*2 {
		t.Fatalf("first pass pruned %d, %v; want the bound %d", n, err, pruneBatches*2)
	}
	if n, err = l.Prune(context.Background()); err != nil || n != 5 {
		t.Fatalf("second pass pruned %d, %v; want 5", n, err)
	}
	if n, _ = l.Prune(context.Background()); n != 0 {
		t.Fatalf("third pass pruned %d", n)
	}
	l.Close()
	left := stored(t, st)
	if len(left) != 3 {
		t.Fatalf("%d records left, want the 3 young ones", len(left))
	}
	for _, r := range left {
		if !r.Time.Equal(t0.Add(20 * time.Hour)) {
			t.Errorf("kept a record of %v", r.Time)
		}
	}
}

func waitWritten(t *testing.T, l *Log, n int64) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); l.Stats().Written < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d records written", l.Stats().Written, n)
		}
	}
}

// Filters and pages: each page reads a bounded part of the log, and the pages together hold
// each matching record once.
func TestListFiltersAndPages(t *testing.T) {
	st := openStore(t)
	var now atomic.Pointer[time.Time]
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	now.Store(&t0)
	l, err := New(Config{Store: st, BatchSize: 1, Logger: quiet(), Now: func() time.Time { return *now.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	users := []string{"alice", "bob", "carol@example.com"}
	mux := http.NewServeMux()
	h := l.Middleware(mux)
	mux.HandleFunc("POST /apis/flotilla.dev/{version}/namespaces/{ns}/{plural}", func(w http.ResponseWriter, r *http.Request) {
		u := r.Header.Get("X-Test-User")
		Annotate(r.Context(), u, []string{"team"}, "", "", "")
		if u == "bob" {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"kind":"Status","code":403,"reason":"Forbidden","message":"bob may not create Bundle"}`)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	for i := range 30 {
		at := t0.Add(time.Duration(i) * 10 * time.Minute)
		now.Store(&at)
		r := httptest.NewRequest(http.MethodPost, "/apis/flotilla.dev/v1/namespaces/default/bundles", nil)
		r.Header.Set("X-Test-User", users[i%3])
		h.ServeHTTP(httptest.NewRecorder(), r)
		waitWritten(t, l, int64(i+1))
	}
	end := t0.Add(300 * time.Minute)
	now.Store(&end)
	all := func(q Query) []api.AuditRecord {
		var out []api.AuditRecord
		pages := 0
		for {
			page, err := l.List(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Items) > q.Limit {
				t.Fatalf("page of %d over the limit %d", len(page.Items), q.Limit)
			}
			out = append(out, page.Items...)
			if pages++; page.Continue == "" {
				return out
			}
			q.Continue = page.Continue
		}
	}
	if got := all(Query{Limit: 4}); len(got) != 30 {
		t.Fatalf("%d records, want 30", len(got))
	} else {
		seen := map[string]bool{}
		for i, r := range got {
			if seen[r.RequestID] || i > 0 && r.Time.Before(got[i-1].Time) {
				t.Fatalf("record %d repeated or out of order", i)
			}
			seen[r.RequestID] = true
			if r.Verb != "create" || r.Kind != api.KindBundle || r.Namespace != "default" || len(r.Groups) != 1 {
				t.Fatalf("record %+v", r)
			}
		}
	}
	denied := all(Query{Limit: 5, Result: "denied"})
	if len(denied) != 10 || denied[0].User != "bob" || denied[0].Code != 403 || denied[0].Reason != "Forbidden" || !strings.Contains(denied[0].Message, "may not") {
		t.Fatalf("denied: %d, first %+v", len(denied), denied[0])
	}
	if got := all(Query{Limit: 3, User: "carol@example.com"}); len(got) != 10 || got[0].User != "carol@example.com" {
		t.Fatalf("by user: %d", len(got))
	}
	if got := all(Query{Limit: 3, Result: "201"}); len(got) != 20 {
		t.Fatalf("by code: %d", len(got))
	}
	// 11:00 to 12:00 inclusive: records 6 to 12.
	got := all(Query{Limit: 3, Since: t0.Add(time.Hour), Until: t0.Add(2 * time.Hour)})
	if len(got) != 7 || !got[0].Time.Equal(t0.Add(time.Hour)) {
		t.Fatalf("by time: %d", len(got))
	}
	// A range wider than the hour index serves is filtered page by page.
	if got := all(Query{Limit: 4, Since: t0.Add(-100 * time.Hour), Until: t0.Add(time.Hour)}); len(got) != 7 {
		t.Fatalf("wide range: %d, want 7", len(got))
	}
	if got := all(Query{Limit: 3, Verb: "delete"}); len(got) != 0 {
		t.Fatalf("by verb delete: %d", len(got))
	}
}

func TestRedactedPath(t *testing.T) {
	for in, want := range map[string]string{
		"/v1/login":                               "/v1/login",
		"/apis/x?token=abc&limit=5":               "/apis/x?limit=5&token=REDACTED",
		"/apis/x?access_token=abc&Password=p&a=b": "/apis/x?Password=REDACTED&a=b&access_token=REDACTED",
		"/apis/x?code=123&state=s":                "/apis/x?code=REDACTED&state=s",
		"/apis/x?%zz=secret":                      "/apis/x?REDACTED",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redactedPath(u); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}

func TestRequestID(t *testing.T) {
	if got := requestID("abc-123_x.y:z"); got != "abc-123_x.y:z" {
		t.Errorf("sane ID replaced: %s", got)
	}
	for _, bad := range []string{"", "a b", "x\ny", strings.Repeat("a", 129), "é"} {
		if got := requestID(bad); got == bad || len(got) != 32 {
			t.Errorf("%q kept or badly replaced: %q", bad, got)
		}
	}
}

func TestLabelValue(t *testing.T) {
	seen := map[string]string{}
	for _, s := range []string{"alice", "alice@example.com", "alice_example.com", "-x-", strings.Repeat("é", 40), strings.Repeat("a", 64)} {
		v := labelValue(s)
		if !validLabel(v) {
			t.Errorf("%q → invalid label %q", s, v)
		}
		if o, ok := seen[v]; ok {
			t.Errorf("%q and %q share %q", s, o, v)
		}
		seen[v] = s
	}
}

// The recorder passes Flush through (watch streams) and unwraps for ResponseController.
func TestWriterKeepsFlusher(t *testing.T) {
	l, err := New(Config{Store: openStore(t), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var flushed bool
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := w.(http.Flusher)
		if ok {
			f.Flush()
		}
		flushed = ok && http.NewResponseController(w).Flush() == nil
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/apis/flotilla.dev/v1/bundles?watch=true", nil))
	if !flushed || !rec.Flushed {
		t.Error("the audit writer hides Flush")
	}
	if rec.Header().Get(api.HeaderRequestID) == "" {
		t.Error("no request ID in the response")
	}
}

// Which calls are kept, and what they are called.
func TestAuditedAndVerbs(t *testing.T) {
	for _, c := range []struct {
		method, path string
		code         int
		kept         bool
		verb, kind   string
	}{
		{"POST", api.PathRegister, 200, true, "register", api.KindCluster},
		{"POST", api.PathRenew, 200, true, "renew", api.KindCluster},
		{"POST", api.PathStatus, 200, false, "report", api.KindCluster},
		{"POST", api.PathStatus, 401, true, "report", api.KindCluster},
		{"GET", api.PathDesired, 200, false, "poll", api.KindCluster},
		{"GET", api.PathDesired, 401, true, "poll", api.KindCluster},
		{"POST", "/v1/login", 200, true, "login", ""},
		{"POST", api.PathCanI, 200, false, "can-i", ""},
		{"POST", api.PathCanI, 401, true, "can-i", ""},
		{"POST", "/v1/webhooks/git", 202, true, "webhook", ""},
		{"DELETE", api.PathTokens + "/abc", 200, true, "revoke", "APIToken"},
		{"POST", api.PathRotateKeys, 200, true, "rotate-keys", ""},
		{"GET", "/apis/x/bundles?watch=true", 403, true, "watch", api.KindBundle},
		{"GET", "/apis/x/bundles", 404, false, "list", api.KindBundle},
		{"PATCH", "/apis/x/bundles/b", 200, true, "patch", api.KindBundle},
	} {
		r := httptest.NewRequest(c.method, c.path, nil)
		name := ""
		if strings.HasSuffix(c.path, "/b") {
			name = "b"
		}
		kind := ""
		if strings.Contains(c.path, "bundles") {
			kind = api.KindBundle
		}
		verb, k := verbOf(r, kind, name)
		if kept := audited(c.method, r.URL.Path, c.code); kept != c.kept || verb != c.verb || k != c.kind {
			t.Errorf("%s %s %d: kept %v, %s %s; want %v, %s %s", c.method, c.path, c.code, kept, verb, k, c.kept, c.verb, c.kind)
		}
	}
}

// BenchmarkMiddleware: the cost the log adds to an audited call, up to the queue (the
// store is stalled, so records are queued, then dropped).
func BenchmarkMiddleware(b *testing.B) {
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = quiet()
	raw, err := sqlite.Open(context.Background(), b.TempDir(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	st := &gated{Store: raw, open: make(chan struct{})}
	l, err := New(Config{Store: st, QueueSize: b.N + 1, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("DELETE /apis/flotilla.dev/{version}/namespaces/{ns}/{plural}/{name}", func(w http.ResponseWriter, r *http.Request) {
		Annotate(r.Context(), "alice", []string{"dev"}, "", "", "")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"kind":"Status","code":404,"reason":"NotFound","message":"bundles \"b\" not found"}`)
	})
	h := l.Middleware(mux)
	r := httptest.NewRequest(http.MethodDelete, "/apis/flotilla.dev/v1alpha1/namespaces/default/bundles/b?dryRun=All", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for range b.N {
		h.ServeHTTP(w, r)
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "heapB/queued")
	start := time.Now()
	close(st.open)
	l.Close()
	if n := l.Stats().Written; n > 0 {
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "stored/s")
	}
}

// BenchmarkMiddlewareUnaudited is what every agent heartbeat costs the middleware: a call it
// answers and does not record. At a million clusters these allocations set how often the
// idle server's collector marks the fleet model.
func BenchmarkMiddlewareUnaudited(b *testing.B) {
	l, err := New(Config{Store: openStore(b), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Annotate(r.Context(), "", nil, api.KindCluster, "fleet-default", "edge")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"seq":7}`)
	}))
	r := httptest.NewRequest(http.MethodPost, api.PathStatus, nil)
	r.Header.Set(api.HeaderRequestID, "0123456789abcdef")
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for range b.N {
		clear(w.Header())
		h.ServeHTTP(w, r)
	}
	b.StopTimer()
	l.Close()
	if st := l.Stats(); st.Written+st.Dropped > 0 {
		b.Fatalf("heartbeats recorded: %+v; want none", st)
	}
}
