package web_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// processCPU is the process's user and system CPU time so far.
func processCPU(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestDashboardStreams measures what FLOTILLA_WEB_STREAMS open overviews cost (e.g. 100):
// a real server on FLOTILLA_WEB_STREAMS_CLUSTERS stored clusters (default 10,000), ten
// users logged in through the form (five administrators, five who see only the production
// clusters), each stream its own connection, while clusters are paused and resumed ten
// times a second for FLOTILLA_WEB_STREAMS_SECONDS (default 60) without streams and then
// with them. It reports events per stream per second, the process's CPU in both phases and
// memory per stream (docs/benchmarks.md); it asserts at most one event a second per stream,
// that every stream was told of changes, and that every stream ends and frees its
// goroutines when its browser goes.
func TestDashboardStreams(t *testing.T) {
	streams, _ := strconv.Atoi(os.Getenv("FLOTILLA_WEB_STREAMS"))
	if streams <= 0 {
		t.Skip("set FLOTILLA_WEB_STREAMS to a number of open overviews, e.g. 100")
	}
	clusters, _ := strconv.Atoi(os.Getenv("FLOTILLA_WEB_STREAMS_CLUSTERS"))
	if clusters <= 0 {
		clusters = 10_000
	}
	secs, _ := strconv.Atoi(os.Getenv("FLOTILLA_WEB_STREAMS_SECONDS"))
	if secs <= 0 {
		secs = 60
	}
	phase := time.Duration(secs) * time.Second
	dir := t.TempDir()
	seedStore(t, dir, clusters)
	r, _ := startServer(t, dir)
	ctx := context.Background()
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("viewer%d", i)
		if i%2 == 0 {
			r.addUser(t, name, "admin")
		} else {
			r.addUser(t, name, "")
			spec, _ := json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: name}, RoleRef: "cluster-member",
				Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}})
			if _, err := r.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
				Metadata: api.ObjectMeta{Name: name + "-prod"}, Spec: spec}); err != nil {
				t.Fatal(err)
			}
		}
		names = append(names, name)
	}
	time.Sleep(2 * time.Second) // the bindings reach the index
	base, _ := url.Parse(r.url)
	var cookies []string
	for _, name := range names {
		c := r.browser(t)
		r.login(t, c, name)
		for _, ck := range c.Jar.Cookies(base) {
			if ck.Name == "__Host-flotilla-session" {
				cookies = append(cookies, ck.Name+"="+ck.Value)
			}
		}
	}
	if len(cookies) != len(names) {
		t.Fatalf("%d session cookies for %d logins", len(cookies), len(names))
	}

	// The fleet changes all along: a production cluster is paused or resumed every 100 ms
	// (every view sees a count change each second).
	stopDriver := make(chan struct{})
	driverDone := make(chan struct{})
	var patches atomic.Int64
	go func() {
		defer close(driverDone)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopDriver:
				return
			case <-tk.C:
			}
			name := fmt.Sprintf("c-%07d", (i%40)*5) // i%5 < 3: env=prod
			patch := fmt.Sprintf(`{"spec":{"paused":%t}}`, (i/40)%2 == 0)
			if _, err := r.admin.Patch(ctx, api.KindCluster, api.DefaultNamespace, name, client.MergePatch, []byte(patch), "", false); err != nil {
				t.Errorf("pausing %s: %v", name, err)
				return
			}
			patches.Add(1)
		}
	}()

	cpu0 := processCPU(t)
	time.Sleep(phase)
	idleCPU := processCPU(t) - cpu0

	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()

	type stream struct {
		events atomic.Int64
		err    error
		done   chan struct{}
	}
	ss := make([]*stream, streams)
	sctx, closeStreams := context.WithCancel(ctx)
	defer closeStreams()
	for i := range ss {
		s := &stream{done: make(chan struct{})}
		ss[i] = s
		// Each stream is a browser of its own: its own connection (HTTP/1.1, as an
		// EventSource per tab), no client timeout.
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.caPool(t)}}}
		req, _ := http.NewRequestWithContext(sctx, http.MethodGet, r.url+"/events/overview", nil)
		req.Header.Set("Cookie", cookies[i%len(cookies)])
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("stream %d: %d %s", i, res.StatusCode, res.Header.Get("Content-Type"))
		}
		go func() {
			defer close(s.done)
			defer hc.CloseIdleConnections()
			defer res.Body.Close()
			sc := bufio.NewScanner(res.Body)
			for sc.Scan() {
				if sc.Text() == "event: overview" {
					s.events.Add(1)
				}
			}
			s.err = sc.Err()
		}()
	}
	time.Sleep(2 * time.Second)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	g1 := runtime.NumGoroutine()

	var before []int64
	for _, s := range ss {
		before = append(before, s.events.Load())
	}
	cpu1 := processCPU(t)
	time.Sleep(phase)
	liveCPU := processCPU(t) - cpu1
	var total, most, fewest int64
	fewest = 1 << 62
	for i, s := range ss {
		n := s.events.Load() - before[i]
		total += n
		most, fewest = max(most, n), min(fewest, n)
	}
	close(stopDriver)
	<-driverDone

	// The browsers go: every stream ends, and the server's goroutines with them.
	closeStreams()
	for i, s := range ss {
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("stream %d did not end", i)
		}
		if s.err != nil && !strings.Contains(s.err.Error(), "context canceled") {
			t.Errorf("stream %d ended with %v", i, s.err)
		}
	}
	g2 := runtime.NumGoroutine()
	for deadline := time.Now().Add(10 * time.Second); g2 > g0+5 && time.Now().Before(deadline); g2 = runtime.NumGoroutine() {
		time.Sleep(100 * time.Millisecond)
	}

	perMin := func(d time.Duration) float64 { return d.Seconds() * 60 / phase.Seconds() }
	t.Logf("%d clusters, %d streams over %d sessions, %d pauses or resumes in the two %v phases; GOMAXPROCS %d; %s",
		clusters, streams, len(cookies), patches.Load(), phase, runtime.GOMAXPROCS(0), cpuModel())
	t.Logf("events per stream per second: mean %.2f, most %.2f, fewest %.2f",
		float64(total)/float64(streams)/phase.Seconds(), float64(most)/phase.Seconds(), float64(fewest)/phase.Seconds())
	t.Logf("process CPU per minute: %.2f s without streams, %.2f s with %d (ratio %.2f)",
		perMin(idleCPU), perMin(liveCPU), streams, liveCPU.Seconds()/idleCPU.Seconds())
	t.Logf("memory per stream (server and client ends): heap %.1f KB, %.1f goroutines; goroutines after close %d (before streams %d)",
		float64(int64(m1.HeapInuse)-int64(m0.HeapInuse))/float64(streams)/1024, float64(g1-g0)/float64(streams), g2, g0)

	if float64(most) > phase.Seconds()+1 {
		t.Errorf("a stream had %d events in %v: more than one a second", most, phase)
	}
	if fewest == 0 {
		t.Errorf("a stream was told of no change in %v of changes", phase)
	}
	if g2 > g0+5 {
		t.Errorf("%d goroutines after the streams closed, %d before they opened", g2, g0)
	}
}
