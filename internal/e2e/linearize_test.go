package e2e_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/linearize"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/testenv/pg"
)

// The linearizability suite: concurrent clients create, update (at a resourceVersion), read
// and delete a few objects, and watch them, through a real server built with the writer's
// failpoints, while the test kills the server with SIGKILL, holds the SQLite write lock or
// restarts PostgreSQL. The history is checked with porcupine (internal/linearize); a
// request whose outcome is unknown (a timeout, a reset connection, a server error) counts as
// possibly done.
//
// FLOTILLA_LINEARIZE_DURATION sets the load time per driver (default 3s); a fault comes
// every quarter of it, or every 5s in a longer run.

const (
	linNamespace = "linearize"
	linValue     = "flotilla.dev/lin-value"
	linKeyLabel  = "flotilla.dev/lin-key"
	linToken     = "linearize-admin-token-0123456789"
	linClients   = 6
	linKeys      = 3
)

// linFailpoints makes about one write transaction in seven meet a fault;
// FLOTILLA_LINEARIZE_FAILPOINTS replaces it (the syntax is in sqlstore's failpoint_on.go).
const linFailpoints = "begin=busy:0.03,mid=stall:0.05,commit=error:0.02,committed=error:0.05"

var (
	failpointBinOnce sync.Once
	failpointBin     string
	failpointBinErr  error
)

// failpointServer builds the server with the writer's failpoints compiled in.
func failpointServer(t *testing.T) string {
	t.Helper()
	failpointBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flotilla-linearize-bin-")
		if err != nil {
			failpointBinErr = err
			return
		}
		_, file, _, _ := runtime.Caller(0)
		failpointBin = filepath.Join(dir, "flotilla")
		build := exec.Command("go", "build", "-tags", "flotilla_failpoints", "-o", failpointBin, "./cmd/flotilla")
		build.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		if out, err := build.CombinedOutput(); err != nil {
			failpointBinErr = fmt.Errorf("building the server with failpoints: %v\n%s", err, out)
		}
	})
	if failpointBinErr != nil {
		t.Fatal(failpointBinErr)
	}
	return failpointBin
}

func linDuration(t *testing.T) time.Duration {
	d := 3 * time.Second
	if v := os.Getenv("FLOTILLA_LINEARIZE_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			t.Fatalf("FLOTILLA_LINEARIZE_DURATION=%q: want a duration such as 30s", v)
		}
	}
	return d
}

func TestLinearizable(t *testing.T) {
	bin := failpointServer(t)
	t.Run("sqlite", func(t *testing.T) {
		runLinearize(t, bin, nil, func(t *testing.T, s *e2e.Server) { holdSQLiteLock(t, s.DataDir) })
	})
	t.Run("postgres", func(t *testing.T) {
		srv := pg.Start(t)
		db := srv.NewDatabase(t)
		runLinearize(t, bin, []string{"--db", db}, func(t *testing.T, _ *e2e.Server) { srv.Restart(t) })
	})
}

// holdSQLiteLock takes the database's write lock from another connection for a while, as
// a backup or a second process would: the server's writes must wait, not fail or vanish.
func holdSQLiteLock(t *testing.T, dataDir string) {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, sqlite.FileName)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatalf("taking the SQLite write lock: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}

func runLinearize(t *testing.T, bin string, args []string, fault func(*testing.T, *e2e.Server)) {
	dur := linDuration(t)
	fp := linFailpoints
	if v := os.Getenv("FLOTILLA_LINEARIZE_FAILPOINTS"); v != "" {
		fp = v
	}
	opts := e2e.ServerOptions{Bin: bin, Args: args, Env: []string{"FLOTILLA_BOOTSTRAP_TOKEN=" + linToken, "FLOTILLA_FAILPOINTS=" + fp, "FLOTILLA_FAILPOINTS_NAMESPACE=" + linNamespace}}
	srv := e2e.StartServer(t, opts)
	opts.DataDir, opts.Addr = srv.DataDir, srv.Addr
	ca, err := os.ReadFile(srv.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	newClient := func() *client.Client {
		c, err := client.New(client.Config{Server: srv.URL, Token: linToken, CAData: ca})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	keys := make([]string, linKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("lin-%d", i)
	}

	hist := linearize.NewHistory()
	var obsMu sync.Mutex
	observed := map[string]bool{}
	observe := func(v string) {
		obsMu.Lock()
		observed[v] = true
		obsMu.Unlock()
	}

	// The first watch of each key starts before any write.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start, err := newClient().List(ctx, api.KindSecret, linNamespace, client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	from, _ := strconv.ParseInt(start.Metadata.ResourceVersion, 10, 64)
	var watchers []*linWatcher
	var wwg sync.WaitGroup
	startWatch := func(name, key string, from int64) *linWatcher {
		w := &linWatcher{w: linearize.Watch{Name: name, Key: key, From: from}, c: newClient(), observe: observe}
		watchers = append(watchers, w)
		wwg.Add(1)
		go func() { defer wwg.Done(); w.run(ctx) }()
		return w
	}
	first := map[string]*linWatcher{}
	for _, k := range keys {
		first[k] = startWatch("from-start", k, from)
	}

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var lwg sync.WaitGroup
	for i := range linClients {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			linClient(loadCtx, t, i, newClient(), keys, hist, observe)
		}()
	}

	// A fault every quarter of the load, or every 5s in a longer run (the time a fault takes
	// is not counted): SIGKILL and a restart, then the driver's own fault, in turn. A second
	// watch of each key joins after the first fault, from where the first watch has got to.
	period := min(dur/4, 5*time.Second)
	faults := 0
	for loaded := period; ; loaded += period {
		time.Sleep(period)
		if loaded >= dur {
			break
		}
		if faults%2 == 0 {
			srv.Kill()
			srv = e2e.StartServer(t, opts)
		} else {
			fault(t, srv)
		}
		faults++
		if faults == 1 {
			for _, k := range keys {
				startWatch("joined", k, first[k].last())
			}
		}
	}
	stopLoad()
	lwg.Wait()

	// Read every key once more, so the history ends with what is stored, and wait for the
	// watches to reach each key's last acknowledged write.
	final := newClient()
	for _, k := range keys {
		linDo(ctx, t, linClients, final, hist, observe, linearize.Input{Kind: linearize.Get, Key: k}, 30*time.Second)
	}
	ops := hist.Operations()
	upTo := map[string]int64{}
	for _, op := range ops {
		in, out := op.Input.(linearize.Input), op.Output.(linearize.Output)
		if in.Kind != linearize.Get && out.Outcome == linearize.OK {
			rv, _ := strconv.ParseInt(out.RV, 10, 64)
			upTo[in.Key] = max(upTo[in.Key], rv)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, w := range watchers {
		for w.last() < upTo[w.w.Key] && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	cancel()
	wwg.Wait()

	var watches []linearize.Watch
	resumes, events := 0, 0
	for _, w := range watchers {
		watches = append(watches, w.w)
		resumes += w.resumes
		events += len(w.w.Events)
		for _, p := range w.problems {
			t.Errorf("watch %s of %s: %s", w.w.Name, w.w.Key, p)
		}
	}
	res := linearize.Check(ops, observed, t.TempDir(), 2*time.Minute)
	t.Logf("%s; %d faults; %d watch events over %d watches, %d resumes", res, faults, events, len(watches), resumes)
	if !res.OK {
		t.Errorf("%s", res)
	}
	for _, p := range linearize.CheckWatches(ops, watches, upTo) {
		t.Error(p)
	}
	if res.Operations-res.Unknown < 20 {
		t.Errorf("only %d requests with a known outcome: the load did not run", res.Operations-res.Unknown)
	}
}

// linClient makes random requests until ctx ends. It updates and deletes at the
// resourceVersion it last saw, so some of its requests conflict with the other clients'.
func linClient(ctx context.Context, t *testing.T, id int, c *client.Client, keys []string, hist *linearize.History, observe func(string)) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	type seen struct{ value, rv string }
	known := map[string]seen{}
	for seq := 0; ctx.Err() == nil; seq++ {
		key := keys[rng.IntN(len(keys))]
		in := linearize.Input{Key: key}
		k, haveRV := known[key]
		switch r := rng.IntN(100); {
		case r < 30 || (r >= 50 && !haveRV):
			in.Kind = linearize.Get
		case r < 50:
			in.Kind, in.Value = linearize.Create, fmt.Sprintf("c%d-%d", id, seq)
		case r < 85:
			in.Kind, in.Value, in.Pre, in.PreRV = linearize.Update, fmt.Sprintf("c%d-%d", id, seq), k.value, k.rv
		case r < 93:
			in.Kind, in.Pre, in.PreRV = linearize.Delete, k.value, k.rv
		default:
			in.Kind = linearize.Delete // unconditional
		}
		// Most requests wait long enough to finish; some give up within milliseconds,
		// often while their write is in the writer's hands.
		timeout := 5 * time.Second
		if rng.IntN(100) < 15 {
			timeout = time.Duration(1+rng.IntN(60)) * time.Millisecond
		}
		out := linDo(ctx, t, id, c, hist, observe, in, timeout)
		switch {
		case out.Outcome == linearize.OK && in.Kind != linearize.Delete:
			known[key] = seen{out.Value, out.RV}
		case out.Outcome == linearize.OK || out.Outcome == linearize.NotFound:
			delete(known, key)
		case out.Outcome == linearize.Unknown:
			time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond)
		}
	}
}

// linDo makes one request and records it.
func linDo(ctx context.Context, t *testing.T, id int, c *client.Client, hist *linearize.History, observe func(string), in linearize.Input, timeout time.Duration) linearize.Output {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	call := hist.Now()
	var obj *api.Object
	var err error
	switch in.Kind {
	case linearize.Get:
		obj, err = c.Get(rctx, api.KindSecret, linNamespace, in.Key)
	case linearize.Create:
		obj, err = c.Create(rctx, linObject(in.Key, in.Value, ""))
	case linearize.Update:
		obj, err = c.Update(rctx, linObject(in.Key, in.Value, in.PreRV))
	case linearize.Delete:
		obj, err = c.Delete(rctx, api.KindSecret, linNamespace, in.Key, in.PreRV)
	}
	out := linearize.Output{Outcome: linearize.OK}
	var st *api.Status
	var want string
	switch {
	case err == nil:
		out.Value, out.RV = obj.Metadata.Annotations[linValue], obj.Metadata.ResourceVersion
		observe(out.Value)
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nothing reached the server: the request did not happen.
		return linearize.Output{Outcome: linearize.Unknown}
	case errors.As(err, &st) && st.Code == http.StatusNotFound:
		out.Outcome = linearize.NotFound
	case errors.As(err, &st) && st.Code == http.StatusConflict:
		// A create's 409 says the object exists, an update's or a delete's that its
		// resourceVersion is stale. The reason is in the body, which a request that times out
		// just after the status line never reads.
		out.Outcome, want = linearize.Conflict, api.ReasonConflict
		if in.Kind == linearize.Create {
			out.Outcome, want = linearize.AlreadyExists, api.ReasonAlreadyExists
		}
		if st.Reason != "" && st.Reason != want {
			t.Errorf("%s: reason %q, want %q", linearize.Describe(in, out), st.Reason, want)
		}
	case errors.As(err, &st) && st.Code/100 == 4 && st.Code != http.StatusTooManyRequests:
		t.Errorf("%s refused: %v", linearize.Describe(in, out), err)
		return linearize.Output{Outcome: linearize.Unknown}
	default:
		out.Outcome = linearize.Unknown
	}
	if err != nil {
		out.Err = err.Error()
	}
	hist.Add(id, in, call, out)
	return out
}

func linObject(key, value, rv string) *api.Object {
	return &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
		Metadata: api.ObjectMeta{Name: key, Namespace: linNamespace, ResourceVersion: rv,
			Labels: map[string]string{linKeyLabel: key}, Annotations: map[string]string{linValue: value}},
		Spec: json.RawMessage(`{}`),
	}
}

// linWatcher watches one key, resuming from the last revision it saw whenever the stream
// breaks.
type linWatcher struct {
	c        *client.Client
	observe  func(string)
	mu       sync.Mutex
	w        linearize.Watch
	at       int64 // the revision to resume after: the last event's or bookmark's
	resumes  int
	problems []string
}

func (w *linWatcher) last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return max(w.at, w.w.From)
}

func (w *linWatcher) run(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := w.c.Watch(ctx, api.KindSecret, linNamespace, linKeyLabel+"="+w.w.Key, strconv.FormatInt(w.last(), 10))
		if err != nil {
			var st *api.Status
			if errors.As(err, &st) && st.Code/100 == 4 {
				w.problems = append(w.problems, fmt.Sprintf("resuming after %d: %v", w.last(), err))
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		for ev := range ch {
			var obj api.Object
			if err := json.Unmarshal(ev.Object, &obj); err != nil {
				w.problems = append(w.problems, fmt.Sprintf("undecodable %s event: %v", ev.Type, err))
				continue
			}
			rv, _ := strconv.ParseInt(obj.Metadata.ResourceVersion, 10, 64)
			switch ev.Type {
			case api.Bookmark:
				w.mu.Lock()
				w.at = max(w.at, rv)
				w.mu.Unlock()
			case api.Error:
				w.problems = append(w.problems, fmt.Sprintf("error event after %d: %s", w.last(), ev.Object))
			default:
				v := obj.Metadata.Annotations[linValue]
				w.observe(v)
				w.mu.Lock()
				w.w.Events = append(w.w.Events, linearize.Event{Type: ev.Type, RV: rv, Value: v})
				w.at = rv
				w.mu.Unlock()
			}
		}
		if ctx.Err() == nil {
			w.resumes++
		}
	}
}
