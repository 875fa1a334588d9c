package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// A changed desired state carries the content its cluster has not applied, within the
// budget; content the store lacks, content over the budget, and content the cluster
// reported applied are left for the agent to fetch, and the answer is the same otherwise.
func TestInlineContent(t *testing.T) {
	e := newAgentEnv(t)
	const digest = "sha256:0123"
	contents := func() map[string][]byte {
		t.Helper()
		resp, ds := e.pollQuery("since=0&inline=1")
		if ds == nil {
			t.Fatalf("poll answered %d, want a desired state", resp.StatusCode)
		}
		if len(ds.Deployments) != 1 || ds.Deployments[0].ContentHash != digest {
			t.Fatalf("deployments %+v, want app's", ds.Deployments)
		}
		return ds.Contents
	}
	if c := contents(); c != nil {
		t.Errorf("content the store lacks was sent: %v", c)
	}
	data := bytes.Repeat([]byte("archive "), 100)
	if err := e.st.PutContent(context.Background(), digest, data); err != nil {
		t.Fatal(err)
	}
	if c := contents(); len(c) != 1 || !bytes.Equal(c[digest], data) {
		t.Errorf("contents %v, want app's archive", c)
	}
	// An agent that does not ask for contents (one built before them) is not sent them:
	// it would fetch the archive anyway.
	if _, ds := e.poll(0, 0); ds == nil || ds.Contents != nil {
		t.Errorf("an agent that did not ask: %+v, want the state without contents", ds)
	}
	// However large the configured budget, an answer carries at most MaxInlineContent.
	big := bytes.Repeat([]byte{'x'}, api.MaxInlineContent+1)
	const bigDigest = "sha256:0bad"
	if err := e.st.PutContent(context.Background(), bigDigest, big); err != nil {
		t.Fatal(err)
	}
	e.srv.InlineContent = 4 * api.MaxInlineContent
	if ds := (&api.DesiredState{Deployments: []api.DeploymentSpec{{Bundle: envNS + "/big", ContentHash: bigDigest}}}); true {
		e.srv.inline(context.Background(), identity{Namespace: envNS, Name: "edge-1", UID: envUID}, ds)
		if ds.Contents != nil {
			t.Errorf("an archive over MaxInlineContent was sent (budget %d)", e.srv.InlineContent)
		}
	}
	e.srv.InlineContent = len(data) - 1
	if c := contents(); c != nil {
		t.Errorf("content over the budget was sent: %d archives", len(c))
	}
	// The inlining filled the cache; the agent's fetch is served from it.
	if _, ok := e.srv.cache.get(digest); !ok {
		t.Error("the archive read for inlining was not cached")
	}
	req, _ := http.NewRequest(http.MethodGet, e.url+api.PathContent+digest, nil)
	req.Header.Set("Authorization", "Bearer "+e.cred)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Errorf("fetching the archive not sent: %d, %d bytes", resp.StatusCode, len(got))
	}
	e.srv.InlineContent = 0
	if c := contents(); c != nil {
		t.Errorf("inlining off, yet %d archives were sent", len(c))
	}
	e.srv.InlineContent = DefaultInlineContent
	_, ds := e.poll(0, 0)
	body := fmt.Sprintf(`{"seq":1,"deployments":[{"bundle":%q,"id":%q,"state":"Ready"}]}`, ds.Deployments[0].Bundle, ds.Deployments[0].ID)
	if code, st := e.post([]byte(body)); code != http.StatusOK {
		t.Fatalf("report: %d %+v", code, st)
	}
	if c := contents(); c != nil {
		t.Errorf("content the cluster reported applied was sent again: %d archives", len(c))
	}
}

// One answer reads at most maxInlineReads archives from the store: a cluster of many
// bundles polling again and again does not make each poll read them all.
func TestInlineContentReadsBounded(t *testing.T) {
	e := newAgentEnv(t)
	ctx := context.Background()
	e.srv.InlineContent = 0
	const n = maxInlineReads + 2
	for i := range n {
		digest := fmt.Sprintf("sha256:%04d", i)
		if err := e.st.PutContent(ctx, digest, []byte("archive "+digest)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			continue // app's, sha256:0000 is not it: app's content stays unstored
		}
		now := time.Now().UTC()
		if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Namespace: envNS, Name: fmt.Sprintf("b%d", i), Generation: 1, CreationTimestamp: &now},
			Spec:     json.RawMessage(`{"contentHash":"` + digest + `","targets":[{"clusterName":"edge-1"}]}`)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ds := e.poll(0, 0); ds != nil && len(ds.Deployments) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the model did not take the %d bundles", n-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.srv.InlineContent = DefaultInlineContent
	// app's content is unstored: one read that finds nothing, then three archives.
	if _, ds := e.pollQuery("since=0&inline=1"); len(ds.Contents) != maxInlineReads-1 {
		t.Errorf("first answer carried %d archives, want %d (the store read %d times)", len(ds.Contents), maxInlineReads-1, maxInlineReads)
	}
	// The three are cached now: they and two more read.
	if _, ds := e.pollQuery("since=0&inline=1"); len(ds.Contents) != n-1 {
		t.Errorf("second answer carried %d archives, want %d", len(ds.Contents), n-1)
	}
}

// gatedStore counts content reads and holds each until release is closed.
type gatedStore struct {
	Store
	reads   atomic.Int32
	release chan struct{}
}

func (g *gatedStore) GetContent(ctx context.Context, digest string) ([]byte, error) {
	g.reads.Add(1)
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Store.GetContent(ctx, digest)
}

// Requests that want the same archive while it is being read wait for that one read, and
// a request that gives up does not fail it: a rollout wakes thousands of held polls that
// all miss the cache for the same archive.
func TestContentReadOnce(t *testing.T) {
	e := newAgentEnv(t)
	const digest = "sha256:0123"
	data := []byte("archive")
	if err := e.st.PutContent(context.Background(), digest, data); err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: e.st, release: make(chan struct{})}
	e.srv.st = g
	first := make(chan []byte)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		got, _ := e.srv.load(ctx, digest)
		first <- got
	}()
	for g.reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// The first caller gives up; the read goes on for the others.
	cancel()
	if got := <-first; got != nil {
		t.Errorf("a caller that gave up got %q", got)
	}
	gone, stop := context.WithCancel(context.Background())
	stop()
	for range 20 {
		if _, err := e.srv.load(gone, digest); err == nil {
			t.Fatal("a caller whose context is done got the archive before it was read")
		}
	}
	done := make(chan []byte)
	go func() {
		got, _ := e.srv.load(context.Background(), digest)
		done <- got
	}()
	close(g.release)
	if got := <-done; !bytes.Equal(got, data) {
		t.Errorf("the waiting caller got %q, want %q", got, data)
	}
	if n := g.reads.Load(); n != 1 {
		t.Errorf("the store was read %d times, want once", n)
	}
	if _, ok := e.srv.cache.get(digest); !ok {
		t.Error("the archive read was not cached")
	}
}

type panickyStore struct{ Store }

func (panickyStore) GetContent(context.Context, string) ([]byte, error) { panic("driver bug") }

// A panic in a shared read fails the requests that wait for it, not the process.
func TestContentReadPanicIsAnError(t *testing.T) {
	e := newAgentEnv(t)
	e.srv.st = panickyStore{e.st}
	if _, err := e.srv.load(context.Background(), "sha256:0123"); err == nil || !strings.Contains(err.Error(), "driver bug") {
		t.Errorf("a read that panicked: %v, want its error", err)
	}
}

// fetch GETs path with the cluster's credential. A request that hangs fails the test
// rather than the whole binary's timeout; no test here should come near the limit.
func (e *agentEnv) fetch(path string) (int, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+e.cred)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET %s: reading the answer: %v", path, err)
	}
	return resp.StatusCode, body
}

// An answer does not wait on a slow store to inline content: it goes without the archive,
// and the read it gave up on goes on, so the agent's fetch gets the archive once the store
// answers, without a second read.
func TestInlineContentWaitIsBounded(t *testing.T) {
	e := newAgentEnv(t)
	const digest = "sha256:0123"
	data := []byte("archive")
	if err := e.st.PutContent(context.Background(), digest, data); err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: e.st, release: make(chan struct{})}
	var once sync.Once
	open := func() { once.Do(func() { close(g.release) }) }
	// Registered after newAgentEnv's, so it runs before the test server's Close, which
	// waits for requests held on the gate.
	t.Cleanup(open)
	e.srv.st = g
	e.srv.inlineWait = 100 * time.Millisecond
	code, body := e.fetch(api.PathDesired + "?since=0&inline=1")
	if code != http.StatusOK {
		t.Fatalf("poll answered %d: %s", code, body)
	}
	var ds api.DesiredState
	if err := json.Unmarshal(body, &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds.Deployments) != 1 || ds.Deployments[0].ContentHash != digest {
		t.Fatalf("deployments %+v, want app's", ds.Deployments)
	}
	if ds.Contents != nil {
		t.Errorf("an archive the store had not read yet was sent: %v", ds.Contents)
	}
	// Else the answer went without it for some other reason, and the wait went untested.
	// (The read runs on its own goroutine: on a loaded machine it may start after the
	// answer gave up on it.)
	for deadline := time.Now().Add(30 * time.Second); g.reads.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := g.reads.Load(); n != 1 {
		t.Fatalf("the answer read the store %d times, want once", n)
	}
	open()
	if code, got := e.fetch(api.PathContent + digest); code != http.StatusOK || !bytes.Equal(got, data) {
		t.Errorf("fetching the archive not sent: %d %q, want %q", code, got, data)
	}
	if n := g.reads.Load(); n != 1 {
		t.Errorf("the store was read %d times, want once: the fetch did not take the read the answer started", n)
	}
}

// failingStore fails content reads with err while failing is set.
type failingStore struct {
	Store
	err     error
	failing atomic.Bool
}

func (f *failingStore) GetContent(ctx context.Context, digest string) ([]byte, error) {
	if f.failing.Load() {
		return nil, f.err
	}
	return f.Store.GetContent(ctx, digest)
}

// The content route answers a failed read with the Status its error maps to, so that the
// agent knows whether to try again, and does not remember the failure: a request after the
// store recovers gets the archive.
func TestContentRouteReadErrors(t *testing.T) {
	const digest = "sha256:0123" // app's: the cluster references it
	data := []byte("archive")
	for _, tc := range []struct {
		name   string
		err    error // the store's read error; nil: the store lacks the archive
		code   int
		reason string
	}{
		{"missing", nil, http.StatusNotFound, api.ReasonNotFound},
		{"store closed", fmt.Errorf("reading content %s: %w", digest, store.ErrClosed), http.StatusServiceUnavailable, api.ReasonUnavailable},
		{"timed out", fmt.Errorf("reading content %s: %w", digest, context.DeadlineExceeded), http.StatusServiceUnavailable, api.ReasonUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newAgentEnv(t)
			put := func() {
				t.Helper()
				if err := e.st.PutContent(context.Background(), digest, data); err != nil {
					t.Fatal(err)
				}
			}
			fs := &failingStore{Store: e.st, err: tc.err}
			if tc.err != nil {
				put()
				fs.failing.Store(true)
			}
			e.srv.st = fs
			code, body := e.fetch(api.PathContent + digest)
			var st api.Status
			if err := json.Unmarshal(body, &st); err != nil {
				t.Fatalf("answer %d %q is not a Status: %v", code, body, err)
			}
			if code != tc.code || st.Kind != "Status" || st.Code != tc.code || st.Reason != tc.reason {
				t.Errorf("answered %d %+v, want %d with a Status of reason %s", code, st, tc.code, tc.reason)
			}
			if tc.err == nil {
				put()
			} else {
				fs.failing.Store(false)
			}
			if code, got := e.fetch(api.PathContent + digest); code != http.StatusOK || !bytes.Equal(got, data) {
				t.Errorf("after the store recovered: %d %q, want %q", code, got, data)
			}
		})
	}
}

// However large the configured budget, a poll's answer carries at most MaxInlineContent of
// archives: an archive over it but within the budget is left for the agent to fetch, and a
// small one beside it is still sent.
func TestInlineContentCapOverHTTP(t *testing.T) {
	e := newAgentEnv(t)
	ctx := context.Background()
	const small, big = "sha256:0123", "sha256:0bad" // app's, and big's
	data := []byte("archive")
	large := bytes.Repeat([]byte{'x'}, api.MaxInlineContent+1)
	for digest, b := range map[string][]byte{small: data, big: large} {
		if err := e.st.PutContent(ctx, digest, b); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Namespace: envNS, Name: "big", Generation: 1, CreationTimestamp: &now},
		Spec:     json.RawMessage(`{"contentHash":"` + big + `","targets":[{"clusterName":"edge-1"}]}`)}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ds := e.poll(0, 0); ds != nil && len(ds.Deployments) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the model did not take bundle big")
		}
	}
	e.srv.InlineContent = 4 * api.MaxInlineContent
	_, ds := e.pollQuery("since=0&inline=1")
	if ds == nil {
		t.Fatal("poll answered no desired state")
	}
	if len(ds.Contents) != 1 || !bytes.Equal(ds.Contents[small], data) {
		sizes := map[string]int{}
		for d, b := range ds.Contents {
			sizes[d] = len(b)
		}
		t.Errorf("contents (digest: bytes) %v, want only %s's %d bytes", sizes, small, len(data))
	}
}
