package sqlstore_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
	"flotilla.dev/internal/testenv/pg"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pg.StopShared()
	os.Exit(code)
}

type testStore interface {
	store.Store
	store.Agents
}

var quiet = slog.New(slog.DiscardHandler)

// backend opens a store and a second, independent connection to the same database.
type backend struct {
	name string
	open func(t testing.TB, cfg sqlstore.Config) (testStore, *sql.DB)
}

var backends = []backend{
	{"sqlite", func(t testing.TB, cfg sqlstore.Config) (testStore, *sql.DB) {
		cfg.Logger = quiet
		dir := t.TempDir()
		s, err := sqlite.Open(context.Background(), dir, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, sqlite.FileName)+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return s, db
	}},
	{"postgres", func(t testing.TB, cfg sqlstore.Config) (testStore, *sql.DB) {
		cfg.Logger = quiet
		url := pg.Start(t).NewDatabase(t)
		s, err := postgres.Open(context.Background(), url, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		db, err := sql.Open("pgx", url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return s, db
	}},
}

func testCtx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// holdWriter locks the revision row from another connection, so the store's writer stops at
// its next revisioned batch while later writes queue up behind it. The returned func lets it
// go. (SQLite's writer waits for the lock up to its 10 s busy timeout: release sooner.)
func holdWriter(t testing.TB, db *sql.DB) (release func()) {
	t.Helper()
	tx, err := db.BeginTx(testCtx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`UPDATE meta SET value = value WHERE name = 'revision'`); err != nil {
		tx.Rollback()
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := tx.Rollback(); err != nil {
				t.Errorf("releasing the writer: %v", err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

// stall makes the writer take one create alone and wait at holdWriter's lock; it returns
// the release and the blocked create's result.
func stall(t testing.TB, s store.Store, db *sql.DB) (release func(), blocker chan error) {
	t.Helper()
	release = holdWriter(t, db)
	blocker = make(chan error, 1)
	go func() {
		_, err := s.Create(testCtx(t), storetest.Obj("stall", "blocker", nil))
		blocker <- err
	}()
	time.Sleep(200 * time.Millisecond)
	return release, blocker
}

type batchSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchSizes) observe(n int) { b.mu.Lock(); b.sizes = append(b.sizes, n); b.mu.Unlock() }

func (b *batchSizes) max() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.sizes) == 0 {
		return 0
	}
	return slices.Max(b.sizes)
}

// TestBatchedCreates queues many creates behind a stalled writer so that they commit in one
// batch: several attempts at each new key, attempts at keys that exist, and (in the large
// case) more rows than one statement may carry. Exactly one attempt per new key wins, the
// rest and every attempt at an existing key get ErrAlreadyExists, and the winners' rows,
// labels, events and counts are exactly as if they had been written one by one.
func TestBatchedCreates(t *testing.T) {
	cases := []struct {
		name                   string
		keys, dups, labels     int
		existing, existingDups int
		maxBatch               int
	}{
		{name: "mixed", keys: 200, dups: 3, labels: 2, existing: 20, existingDups: 2},
		// More than one statement's worth of objects, labels and events (30,000 parameters).
		{name: "chunked", keys: 5200, dups: 2, labels: 8, existing: 30, existingDups: 1, maxBatch: 20000},
	}
	for _, b := range backends {
		for _, tc := range cases {
			t.Run(b.name+"/"+tc.name, func(t *testing.T) {
				if testing.Short() && tc.keys > 1000 {
					t.Skip("short")
				}
				var sizes batchSizes
				nops := tc.keys*tc.dups + tc.existing*tc.existingDups
				s, db := b.open(t, sqlstore.Config{Summaries: storetest.Summaries, MaxBatch: tc.maxBatch,
					ObserveBatch: sizes.observe, WatchBuffer: 2 * nops})
				c := testCtx(t)
				old := map[string]*api.Object{}
				for i := range tc.existing {
					name := fmt.Sprintf("old-%d", i)
					o, err := s.Create(c, storetest.Obj("batch", name, map[string]string{"batch": "old"}))
					if err != nil {
						t.Fatal(err)
					}
					old[name] = o
				}
				rev0, err := s.Revision(c)
				if err != nil {
					t.Fatal(err)
				}
				wc, stopWatch := context.WithCancel(c)
				defer stopWatch()
				events, err := s.Watch(wc, store.WatchOptions{Kind: api.KindCluster, Namespace: "batch", Revision: rev0})
				if err != nil {
					t.Fatal(err)
				}

				type attempt struct {
					name string
					obj  *api.Object
					out  *api.Object
					err  error
				}
				var ops []*attempt
				newObj := func(name, batch string) *api.Object {
					l := map[string]string{"batch": batch, "attempt": strconv.Itoa(len(ops))}
					for j := range tc.labels {
						l[fmt.Sprintf("l%d", j)] = fmt.Sprintf("v%d", j)
					}
					return storetest.Obj("batch", name, l)
				}
				for i := range tc.keys {
					for range tc.dups {
						name := fmt.Sprintf("new-%d", i)
						ops = append(ops, &attempt{name: name, obj: newObj(name, "new")})
					}
				}
				for i := range tc.existing {
					for range tc.existingDups {
						name := fmt.Sprintf("old-%d", i)
						ops = append(ops, &attempt{name: name, obj: newObj(name, "again")})
					}
				}
				rand.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })

				release, blocker := stall(t, s, db)
				var started, done sync.WaitGroup
				for _, a := range ops {
					started.Add(1)
					done.Add(1)
					go func() {
						defer done.Done()
						started.Done()
						a.out, a.err = s.Create(c, a.obj)
					}()
				}
				started.Wait()
				time.Sleep(300 * time.Millisecond)
				release()
				done.Wait()
				if err := <-blocker; err != nil {
					t.Fatalf("blocker: %v", err)
				}
				if m := sizes.max(); m < nops/2 {
					t.Errorf("largest batch held %d writes of %d: the creates were not batched (sizes %v)", m, nops, sizes.sizes)
				}

				winners := map[string]*attempt{}
				revs := map[int64]bool{}
				for _, a := range ops {
					switch {
					case a.err == nil:
						if winners[a.name] != nil {
							t.Errorf("%s created twice", a.name)
						}
						winners[a.name] = a
						rv, err := strconv.ParseInt(a.out.Metadata.ResourceVersion, 10, 64)
						if err != nil || rv <= rev0 || rv > rev0+int64(nops)+1 {
							t.Errorf("%s: resourceVersion %q outside (%d, %d]", a.name, a.out.Metadata.ResourceVersion, rev0, rev0+int64(nops)+1)
						}
						if revs[rv] {
							t.Errorf("resourceVersion %d given twice", rv)
						}
						revs[rv] = true
						if a.out.Metadata.Labels["attempt"] != a.obj.Metadata.Labels["attempt"] {
							t.Errorf("%s: returned attempt %s, submitted %s", a.name, a.out.Metadata.Labels["attempt"], a.obj.Metadata.Labels["attempt"])
						}
					case errors.Is(a.err, store.ErrAlreadyExists):
					default:
						t.Errorf("create %s: %v", a.name, a.err)
					}
				}
				if len(winners) != tc.keys {
					t.Errorf("%d keys created, want %d", len(winners), tc.keys)
				}
				for name := range old {
					if winners[name] != nil {
						t.Errorf("existing %s was created again", name)
					}
				}
				if t.Failed() {
					return
				}

				// Every revisioned write takes a revision, refused or not.
				if rev, _ := s.Revision(c); rev != rev0+int64(nops)+1 {
					t.Errorf("revision %d after %d writes from %d, want %d", rev, nops+1, rev0, rev0+int64(nops)+1)
				}
				counts, err := s.Count(c)
				if err != nil {
					t.Fatal(err)
				}
				if want := int64(tc.existing + tc.keys + 1); counts[api.KindCluster] != want {
					t.Errorf("count %d, want %d", counts[api.KindCluster], want)
				}

				// The stored rows are the winners', in the order of their revisions, and
				// every label is selectable.
				list := func(sel string) []*api.Object {
					t.Helper()
					ls, err := labels.Parse(sel)
					if err != nil {
						t.Fatal(err)
					}
					res, err := s.List(c, store.ListOptions{Kind: api.KindCluster, Namespace: "batch", Selector: ls})
					if err != nil {
						t.Fatalf("list %q: %v", sel, err)
					}
					var out []*api.Object
					for _, it := range res.Items {
						o, err := store.Decode(it)
						if err != nil {
							t.Fatal(err)
						}
						out = append(out, o)
					}
					return out
				}
				got := list("batch=new")
				if len(got) != tc.keys {
					t.Errorf("batch=new lists %d objects, want %d", len(got), tc.keys)
				}
				var last int64
				for _, o := range got {
					w := winners[o.Metadata.Name]
					if w == nil {
						t.Errorf("listed %s, which no create won", o.Metadata.Name)
						continue
					}
					if o.Metadata.ResourceVersion != w.out.Metadata.ResourceVersion || o.Metadata.Labels["attempt"] != w.obj.Metadata.Labels["attempt"] {
						t.Errorf("%s stored at %s from attempt %s, the winner was attempt %s at %s", o.Metadata.Name,
							o.Metadata.ResourceVersion, o.Metadata.Labels["attempt"], w.obj.Metadata.Labels["attempt"], w.out.Metadata.ResourceVersion)
					}
					rv, _ := strconv.ParseInt(o.Metadata.ResourceVersion, 10, 64)
					if rv <= last {
						t.Errorf("%s at %d listed after revision %d: ids not in write order", o.Metadata.Name, rv, last)
					}
					last = rv
				}
				for j := range tc.labels {
					if n := len(list(fmt.Sprintf("l%d=v%d", j, j))); n != tc.keys {
						t.Errorf("l%d=v%d lists %d objects, want %d", j, j, n, tc.keys)
					}
				}
				if n := len(list("batch=again")); n != 0 {
					t.Errorf("batch=again lists %d objects: a refused create's labels were stored", n)
				}
				for _, o := range list("batch=old") {
					if o.Metadata.ResourceVersion != old[o.Metadata.Name].Metadata.ResourceVersion {
						t.Errorf("existing %s changed", o.Metadata.Name)
					}
				}
				if n := len(list("batch=old")); n != tc.existing {
					t.Errorf("batch=old lists %d objects, want %d", n, tc.existing)
				}
				if n := len(list("attempt=" + winners["new-0"].obj.Metadata.Labels["attempt"])); n != 1 {
					t.Errorf("the winner of new-0 is listed %d times by its attempt label", n)
				}

				// The watch sees each winner's Added event, in revision order.
				seen := map[string]bool{}
				last = rev0
				for len(seen) < tc.keys {
					var ev store.Event
					select {
					case e, ok := <-events:
						if !ok {
							t.Fatalf("watch closed after %d events", len(seen))
						}
						ev = e
					case <-time.After(20 * time.Second):
						t.Fatalf("watch: %d of %d events", len(seen), tc.keys)
					}
					if ev.Err != nil {
						t.Fatalf("watch: %v", ev.Err)
					}
					o, err := store.Decode(ev.Object)
					if err != nil {
						t.Fatal(err)
					}
					w := winners[o.Metadata.Name]
					switch {
					case ev.Type != api.Added || w == nil:
						t.Errorf("event %s %s", ev.Type, o.Metadata.Name)
					case seen[o.Metadata.Name]:
						t.Errorf("two events for %s", o.Metadata.Name)
					case strconv.FormatInt(ev.Revision, 10) != w.out.Metadata.ResourceVersion || o.Metadata.ResourceVersion != w.out.Metadata.ResourceVersion:
						t.Errorf("event for %s at %d (object at %s), created at %s", o.Metadata.Name, ev.Revision, o.Metadata.ResourceVersion, w.out.Metadata.ResourceVersion)
					case o.Metadata.Labels["attempt"] != w.obj.Metadata.Labels["attempt"]:
						t.Errorf("event for %s carries attempt %s, the winner was %s", o.Metadata.Name, o.Metadata.Labels["attempt"], w.obj.Metadata.Labels["attempt"])
					}
					if ev.Revision <= last {
						t.Errorf("event at %d after %d", ev.Revision, last)
					}
					last = ev.Revision
					seen[o.Metadata.Name] = true
				}
			})
		}
	}
}

// TestBatchedStatus queues agent reports (and a status deletion) behind a stalled writer, in a
// known order, so that they commit in one batch: the stored rows and sequences must be those
// of applying the reports one by one, a report older than its cluster's last one (stored
// before, or earlier in the batch) refused as stale.
func TestBatchedStatus(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			var sizes batchSizes
			s, db := b.open(t, sqlstore.Config{ObserveBatch: sizes.observe})
			c := testCtx(t)
			type report struct {
				cluster string
				seq     int64
				rows    []store.DeploymentStatus
				removed []string
				del     bool // DeleteClusterStatus
			}
			clusters := []string{"c0", "c1", "c2", "c3"}
			bundles := []string{"ns/a", "ns/b", "ns/c", "ns/d"}
			rng := rand.New(rand.NewPCG(1, 2))
			// The model: rows by cluster and bundle, and sequences.
			rows := map[string]store.DeploymentStatus{}
			seqs := map[string]int64{}
			// apply reports whether the report is stale: older than its cluster's stored one.
			apply := func(r report) bool {
				if r.del {
					for k, row := range rows {
						if row.Cluster == r.cluster {
							delete(rows, k)
						}
					}
					delete(seqs, r.cluster)
					return false
				}
				if cur, ok := seqs[r.cluster]; ok && r.seq < cur {
					return true
				}
				for _, row := range r.rows {
					row.Cluster = r.cluster
					rows[r.cluster+" "+row.Bundle] = row
				}
				for _, b := range r.removed {
					delete(rows, r.cluster+" "+b)
				}
				seqs[r.cluster] = max(seqs[r.cluster], r.seq)
				return false
			}
			put := func(r report) error {
				if r.del {
					return s.DeleteClusterStatus(c, r.cluster)
				}
				return s.PutStatus(c, r.cluster, r.seq, r.rows, r.removed)
			}
			random := func(i int) report {
				r := report{cluster: clusters[rng.IntN(len(clusters))], seq: int64(rng.IntN(30))}
				for _, b := range bundles {
					switch rng.IntN(4) {
					case 0:
						r.rows = append(r.rows, store.DeploymentStatus{Bundle: b, ID: strconv.Itoa(i), State: "Ready", Message: fmt.Sprintf("report %d", i)})
					case 1:
						r.removed = append(r.removed, b)
					case 2:
						// In both: the removal, applied after, wins.
						r.rows = append(r.rows, store.DeploymentStatus{Bundle: b, ID: strconv.Itoa(i), State: "NotReady"})
						r.removed = append(r.removed, b)
					}
				}
				if rng.IntN(5) == 0 && len(r.rows) > 0 {
					// The same bundle twice in one report: the later row wins.
					d := r.rows[0]
					d.State, d.Message = "Modified", "again"
					r.rows = append(r.rows, d)
				}
				return r
			}
			// Stored before the batch, so the batch meets existing rows and larger sequences.
			for i, cl := range clusters {
				r := report{cluster: cl, seq: 20, rows: []store.DeploymentStatus{{Bundle: bundles[i], ID: "0", State: "Ready"}, {Bundle: "ns/old", ID: "0", State: "Ready"}}}
				if err := put(r); err != nil {
					t.Fatal(err)
				}
				apply(r)
			}
			var reports []report
			for i := range 60 {
				reports = append(reports, random(i))
				if i == 30 {
					reports = append(reports, report{cluster: "c1", del: true})
				}
			}

			release, blocker := stall(t, s, db)
			errs := make([]error, len(reports))
			stale := make([]bool, len(reports))
			var done sync.WaitGroup
			for i, r := range reports {
				stale[i] = apply(r)
				started := make(chan struct{})
				done.Add(1)
				go func() {
					defer done.Done()
					close(started)
					errs[i] = put(r)
				}()
				// The writer takes reports in the order they are queued.
				<-started
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond)
			release()
			done.Wait()
			if err := <-blocker; err != nil {
				t.Fatalf("blocker: %v", err)
			}
			nstale := 0
			for i, err := range errs {
				if stale[i] {
					nstale++
					if !errors.Is(err, store.ErrStale) {
						t.Errorf("report %d (seq %d, older than its cluster's): err = %v, want ErrStale", i, reports[i].seq, err)
					}
				} else if err != nil {
					t.Errorf("report %d: %v", i, err)
				}
			}
			if nstale == 0 || nstale == len(reports)-1 {
				t.Errorf("%d of %d reports stale: the batch does not mix fresh and stale ones", nstale, len(reports))
			}
			if m := sizes.max(); m < len(reports)/2 {
				t.Errorf("largest batch held %d writes of %d: the reports were not batched (sizes %v)", m, len(reports), sizes.sizes)
			}
			got := map[string]store.DeploymentStatus{}
			if err := s.ScanStatus(c, func(r store.DeploymentStatus) error { got[r.Cluster+" "+r.Bundle] = r; return nil }); err != nil {
				t.Fatal(err)
			}
			gotSeqs := map[string]int64{}
			if err := s.ScanSeqs(c, func(cl string, n int64) error { gotSeqs[cl] = n; return nil }); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(rows) {
				t.Errorf("status rows\n got %v\nwant %v", got, rows)
			}
			if fmt.Sprint(gotSeqs) != fmt.Sprint(seqs) {
				t.Errorf("sequences %v, want %v", gotSeqs, seqs)
			}
		})
	}
}

// TestCreateThroughput times registering many clusters through the store from concurrent
// callers, as the server does when a fleet registers:
//
//	FLOTILLA_STORE_BENCH=1 go test -run TestCreateThroughput -v ./internal/store/sqlstore/
//
// FLOTILLA_STORE_BENCH_N sets the number of clusters (20,000) and FLOTILLA_STORE_BENCH_C
// the callers (64).
func TestCreateThroughput(t *testing.T) {
	if os.Getenv("FLOTILLA_STORE_BENCH") == "" {
		t.Skip("set FLOTILLA_STORE_BENCH=1 to run")
	}
	n, conc := 20000, 64
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_STORE_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_STORE_BENCH_C")); err == nil && v > 0 {
		conc = v
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			var batches, writes atomic.Int64
			s, _ := b.open(t, sqlstore.Config{Summaries: storetest.Summaries, ObserveBatch: func(k int) {
				batches.Add(1)
				writes.Add(int64(k))
			}})
			c := testCtx(t)
			spec, _ := json.Marshal(map[string]any{"displayName": "cluster", "clientID": "7f0c1b8e-5a8f-4d0e-9c49-2b8a1f7f3a11",
				"kubernetesVersion": "v1.31.4", "agentVersion": "v0.9.0"})
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, conc)
			start := time.Now()
			for range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(n) {
							return
						}
						o := &api.Object{
							TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
							Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: fmt.Sprintf("c-%07d", i), UID: fmt.Sprintf("uid-%07d", i),
								Labels: map[string]string{"env": []string{"prod", "staging", "dev"}[i%3], "region": fmt.Sprintf("r%d", i%8), "flotilla.dev/token": "default"}},
							Spec: spec,
						}
						if _, err := s.Create(c, o); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			d := time.Since(start)
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			t.Logf("%s: %d creates from %d callers in %v: %.0f creates/s (%d transactions, %.0f writes each)",
				b.name, n, conc, d.Round(time.Millisecond), float64(n)/d.Seconds(), batches.Load(), float64(writes.Load())/float64(max(batches.Load(), 1)))
		})
	}
}
