package e2e_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/sim"
)

// TestSimTunnelBenchmark measures agent tunnels and the Kubernetes proxy with simulated
// clusters (each the real tunnel.Agent serving sim.NewKubeAPI) against the real server. It
// prints FIGURE lines and asserts nothing about time; it fails on leaks (tunnels or
// goroutines left over after a restart) and on errors.
//
//	FLOTILLA_TUNNEL_SCALE=1 go test -run TestSimTunnelBenchmark -v -timeout 1h ./internal/e2e/
//
// Its parts run one after the other, each with its own server, and can be picked with -run
// TestSimTunnelBenchmark/NAME:
//
//   - overhead: the same small GET straight to the simulated cluster's handler (HTTPS, HTTP/2,
//     in this process) and through server → proxy → tunnel → agent → handler, at a few
//     concurrency levels: latency and CPU per request, as ratios within the run.
//   - open: FLOTILLA_TUNNEL_COUNT tunnels (default 10,000) kept open at once (the clusters
//     labelled flotilla.dev/tunnel=always): memory and goroutines per tunnel on both sides,
//     and the CPU of the fleet idling without and with them (FLOTILLA_TUNNEL_IDLE, default
//     1m; the fleet polls every FLOTILLA_TUNNEL_POLL_INTERVAL, default 15s, short polls only);
//     then the server restarted (SIGTERM, start again): time until it is ready, until
//     the first proxied call succeeds, until every tunnel is back, and nothing left over.
//   - cold: FLOTILLA_TUNNEL_COLD_CLUSTERS (default 2,000) clusters told to poll every
//     FLOTILLA_TUNNEL_COLD_INTERVAL (default 8m20s, a 1M fleet's interval at the default poll
//     budget), half of them holding their polls (30 s, as the agent): time to first byte of
//     a call to FLOTILLA_TUNNEL_COLD (default 50) clusters with no tunnel open, in each half.
//
// FLOTILLA_TUNNEL_OVERHEAD_WINDOW (default 5s) is how long each overhead measurement runs;
// FLOTILLA_TUNNEL_PROFILE_DIR, when set, receives the server's CPU profile during proxied
// calls and both sides' heap profiles with the tunnels open, for `go tool pprof`.
func TestSimTunnelBenchmark(t *testing.T) {
	if os.Getenv("FLOTILLA_TUNNEL_SCALE") == "" {
		t.Skip("set FLOTILLA_TUNNEL_SCALE=1 to run the tunnel benchmark")
	}
	t.Run("overhead", simTunnelOverhead)
	t.Run("open", simTunnelOpen)
	t.Run("cold", simTunnelCold)
}

// simTunnelFleet starts a server with args and a simulated fleet of n clusters configured
// by tune, waits until every cluster polled, and binds user alice as a cluster-member of
// every simulated cluster; it returns alice's token.
func simTunnelFleet(t *testing.T, ctx context.Context, opts e2e.ServerOptions, n int, tune func(*sim.Config)) (*e2e.Server, *sim.Sim, string) {
	t.Helper()
	opts.Env = append(opts.Env, "FLOTILLA_BOOTSTRAP_TOKEN="+simAdminToken)
	srv := e2e.StartServer(t, opts)
	admin, err := client.New(client.Config{Server: srv.URL, Token: simAdminToken, CAChecksum: srv.Checksum})
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = srv.URL, srv.Checksum, simAdminToken
	cfg.Clusters, cfg.Prefix = n, "tun"
	cfg.MaxTunnels = n
	cfg.Progress = simProgress{t}
	cfg.ProgressInterval = 10 * time.Second
	if tune != nil {
		tune(&cfg)
	}
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Bound before the clusters register: a binding made later changes every cluster's
	// desired state, and its next poll would be answered at once instead of held.
	alice := simTunnelUser(t, ctx, srv, admin, "alice", &api.LabelSelector{MatchLabels: map[string]string{sim.RunLabel: "tun"}})
	tok, err := s.CreateRegistrationToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistrationToken(tok)
	fleetCtx, stop := context.WithCancel(ctx)
	t.Cleanup(func() { stop(); s.Wait() })
	s.Start(fleetCtx)
	if _, err := s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}
	return srv, s, alice
}

type simProgress struct{ t *testing.T }

func (p simProgress) Write(b []byte) (int, error) {
	p.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// hammerResult is c workers sending GETs for d.
type hammerResult struct {
	n              int
	p50, p99       time.Duration
	selfCPU        time.Duration // this process: client, and agent and handler or the direct server
	serverCPU      time.Duration // the Flotilla server process
	errs           int
	firstErr       error
	requestsPerSec float64
}

func simHammer(t *testing.T, ctx context.Context, s *sim.Sim, c int, d time.Duration, get func(ctx context.Context) error) hammerResult {
	t.Helper()
	srv0, _ := s.ServerMetric(ctx, "process_cpu_seconds_total")
	cpu0, t0 := selfCPU(), time.Now()
	var mu sync.Mutex
	var lat []time.Duration
	var res hammerResult
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			var mine []time.Duration
			for time.Since(t0) < d {
				start := time.Now()
				err := get(ctx)
				took := time.Since(start)
				mu.Lock()
				if err != nil {
					res.errs++
					if res.firstErr == nil {
						res.firstErr = err
					}
				}
				mu.Unlock()
				mine = append(mine, took)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	wall := time.Since(t0)
	res.selfCPU = selfCPU() - cpu0
	srv1, _ := s.ServerMetric(ctx, "process_cpu_seconds_total")
	res.serverCPU = time.Duration((srv1 - srv0) * float64(time.Second))
	res.n = len(lat)
	res.p50, res.p99 = quantile(lat, 0.5), quantile(lat, 0.99)
	res.requestsPerSec = float64(res.n) / wall.Seconds()
	return res
}

func simTunnelOverhead(t *testing.T) {
	ctx := testCtx(t, 15*time.Minute)
	srv, s, alice := simTunnelFleet(t, ctx, e2e.ServerOptions{Args: []string{"--log-level", "warn"}}, 4, nil)
	figure := func(format string, a ...any) { t.Logf("FIGURE overhead: %s", fmt.Sprintf(format, a...)) }
	hc := simK8sClient(t, srv)
	proxied := srv.URL + api.PathK8sClusters + s.ClusterName(0) + "/version"
	if _, _, err := simK8sGet(ctx, hc, proxied, alice, nil); err != nil {
		t.Fatal(err)
	}
	// The same handler served straight: HTTPS and HTTP/2 on loopback, as the proxy is.
	direct := httptest.NewUnstartedServer(sim.NewKubeAPI(s.ClientID(0)))
	direct.EnableHTTP2 = true
	direct.StartTLS()
	defer direct.Close()
	dc := direct.Client()
	getDirect := func(ctx context.Context) error {
		_, _, err := simK8sGet(ctx, dc, direct.URL+"/version", "unused", http.Header{"Impersonate-User": {rbac.UserPrefix + "alice"}})
		return err
	}
	getProxied := func(ctx context.Context) error {
		_, _, err := simK8sGet(ctx, hc, proxied, alice, nil)
		return err
	}
	d := simEnvDuration(t, "FLOTILLA_TUNNEL_OVERHEAD_WINDOW", 5*time.Second)
	for _, c := range []int{1, 8, 32} {
		dr := simHammer(t, ctx, s, c, d, getDirect)
		pr := simHammer(t, ctx, s, c, d, getProxied)
		for _, r := range []hammerResult{dr, pr} {
			if r.errs > 0 {
				t.Errorf("concurrency %d: %d of %d calls failed, the first: %v", c, r.errs, r.n, r.firstErr)
			}
		}
		per := func(r hammerResult, cpu time.Duration) time.Duration { return cpu / time.Duration(max(r.n, 1)) }
		dCPU, pCPU := per(dr, dr.selfCPU+dr.serverCPU), per(pr, pr.selfCPU+pr.serverCPU)
		if dir := os.Getenv("FLOTILLA_TUNNEL_PROFILE_DIR"); dir != "" && c == 8 {
			// The server's CPU profile while proxied calls go as fast as they are answered.
			done := make(chan struct{})
			go func() {
				defer close(done)
				simHammer(t, ctx, s, c, 12*time.Second, getProxied)
			}()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/debug/pprof/profile?seconds=10", nil)
			req.Header.Set("Authorization", "Bearer "+simAdminToken)
			if resp, err := hc.Do(req); err != nil {
				t.Error(err)
			} else {
				data, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				os.WriteFile(filepath.Join(dir, "proxy-server.pprof"), data, 0o644)
			}
			<-done
		}
		figure("concurrency %d: direct %.0f req/s p50 %v p99 %v, CPU %v per request (this process %v, idle server %v); "+
			"proxied %.0f req/s p50 %v p99 %v, CPU %v per request (server %v, client+agent+handler %v); ratio p50 %.1f×, p99 %.1f×, CPU %.1f×",
			c, dr.requestsPerSec, dr.p50, dr.p99, dCPU, per(dr, dr.selfCPU), per(dr, dr.serverCPU),
			pr.requestsPerSec, pr.p50, pr.p99, pCPU, per(pr, pr.serverCPU), per(pr, pr.selfCPU),
			float64(pr.p50)/float64(dr.p50), float64(pr.p99)/float64(dr.p99), float64(pCPU)/float64(dCPU))
	}
}

// simRusage is this process's goroutines and live heap after a collection.
func simRusage() (goroutines int, heap uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse
}

func simTunnelOpen(t *testing.T) {
	n := simEnvInt(t, "FLOTILLA_TUNNEL_COUNT", 10000)
	idle := simEnvDuration(t, "FLOTILLA_TUNNEL_IDLE", time.Minute)
	ctx := testCtx(t, 40*time.Minute)
	figure := func(format string, a ...any) { t.Logf("FIGURE open %d tunnels: %s", n, fmt.Sprintf(format, a...)) }
	poll := simEnvDuration(t, "FLOTILLA_TUNNEL_POLL_INTERVAL", 15*time.Second)
	opts := e2e.ServerOptions{DataDir: t.TempDir(), Addr: e2e.FreePort(t),
		Args: []string{"--log-level", "warn", "--max-tunnels", fmt.Sprint(n + 100), "--agent-poll-interval", poll.String()}}
	// Short polls: a held poll costs both sides some 20 KB, which would blur the tunnels'
	// own cost; the server asks for a tunnel at the cluster's next poll instead.
	srv, s, alice := simTunnelFleet(t, ctx, opts, n, func(c *sim.Config) { c.LongPoll = 0 })
	res, err := s.OpenTunnels(ctx, n, idle)
	if err != nil {
		t.Fatal(err)
	}
	figure("opened in %v from labelling them; %d tokens received, %d dials", res.OpenedIn, res.Counts.Tokens, res.Counts.Dials)
	figure("server RSS %.1f → %.1f MB, Go heap in use %.1f → %.1f MB, goroutines %.0f → %.0f: per tunnel %.1f KB RSS, %.1f KB heap, %.2f goroutines",
		res.ServerBefore.RSS/1e6, res.Server.RSS/1e6, res.ServerBefore.Heap/1e6, res.Server.Heap/1e6, res.ServerBefore.Goroutines, res.Server.Goroutines,
		res.ServerRSSPerTunnel/1024, res.ServerHeapPerTunnel/1024, res.ServerGoroutinesPerTunnel)
	figure("simulator Go heap in use %.1f → %.1f MB, goroutines %.0f → %.0f: per tunnel %.1f KB heap, %.2f goroutines",
		res.SimulatorBefore.Heap/1e6, res.Simulator.Heap/1e6, res.SimulatorBefore.Goroutines, res.Simulator.Goroutines, res.SimHeapPerTunnel/1024, res.SimGoroutinesPerTunnel)
	figure("idle CPU over %v: server %.1f%% of one core without tunnels, %.1f%% with (%.2f µs per tunnel-second); simulator %.1f%%, %.1f%%",
		res.Server.IdleWindow, 100*res.ServerBefore.IdleCPU, 100*res.Server.IdleCPU, (res.Server.IdleCPU-res.ServerBefore.IdleCPU)*1e6/float64(n),
		100*res.SimulatorBefore.IdleCPU, 100*res.Simulator.IdleCPU)

	hc := simK8sClient(t, srv)
	if dir := os.Getenv("FLOTILLA_TUNNEL_PROFILE_DIR"); dir != "" {
		// Where the server's memory per tunnel goes.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/debug/pprof/heap?gc=1", nil)
		req.Header.Set("Authorization", "Bearer "+simAdminToken)
		if resp, err := hc.Do(req); err != nil {
			t.Error(err)
		} else {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			os.WriteFile(filepath.Join(dir, "tunnels-server-heap.pprof"), data, 0o644)
		}
		f, err := os.Create(filepath.Join(dir, "tunnels-simulator-heap.pprof"))
		if err == nil {
			runtime.GC()
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}

	// A server restart with every tunnel open.
	probe := srv.URL + api.PathK8sClusters + s.ClusterName(rand.N(n)) + "/version"
	if _, _, err := simK8sGet(ctx, hc, probe, alice, nil); err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	goroutines0, _ := simRusage()
	srvGoroutines0 := res.Server.Goroutines
	var firstOK atomic.Int64
	var stopped atomic.Bool
	stopAt := time.Now()
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	go func() {
		for probeCtx.Err() == nil {
			cctx, cancel := context.WithTimeout(probeCtx, 5*time.Second)
			_, _, err := simK8sGet(cctx, hc, probe, alice, nil)
			cancel()
			if err == nil && stopped.Load() {
				firstOK.Store(int64(time.Since(stopAt)))
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	srv.Stop(t)
	stopped.Store(true)
	down := time.Since(stopAt)
	e2e.StartServer(t, opts) // on the same address and data: the simulator finds it there
	ready := time.Since(stopAt)
	var back, simBack time.Duration
	deadline := time.Now().Add(10 * time.Minute)
	for back == 0 || simBack == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the restart: %+v tunnels on the simulator's side", s.TunnelCounts())
		}
		if open, err := s.ServerMetric(ctx, "flotilla_tunnels_open"); err == nil && int(open) >= n && back == 0 {
			back = time.Since(stopAt)
		}
		if c := s.TunnelCounts(); c.Open == int64(n) && simBack == 0 {
			simBack = time.Since(stopAt)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for firstOK.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	figure("restart (SIGTERM, start again on the same data): server gone after %v, ready after %v, first proxied call answered after %v, "+
		"every tunnel open again on the server after %v (on the simulator's side %v)",
		down.Round(time.Millisecond), ready.Round(time.Millisecond), time.Duration(firstOK.Load()).Round(time.Millisecond), back.Round(time.Millisecond), simBack.Round(time.Millisecond))

	// Nothing left over: let the old connections' goroutines end, then count.
	time.Sleep(10 * time.Second)
	c := s.TunnelCounts()
	goroutines1, heap1 := simRusage()
	srvGoroutines1, _ := s.ServerMetric(ctx, "go_goroutines")
	rss1, heapSrv1, _ := s.ServerMemoryNow(ctx)
	figure("after the restart: simulator %d tunnel connections alive, %d agents, %d dials in all, goroutines %d → %d, heap %.1f MB; server goroutines %.0f → %.0f, RSS %.1f MB, Go heap %.1f MB",
		c.Open, c.Agents, c.Dials, goroutines0, goroutines1, float64(heap1)/1e6, srvGoroutines0, srvGoroutines1, rss1/1e6, heapSrv1/1e6)
	if c.Open != int64(n) || c.Agents != int64(n) {
		t.Errorf("after the restart the simulator holds %d tunnel connections and %d agents, want %d each", c.Open, c.Agents, n)
	}
	// Polls in flight and the like vary a little; a leak grows with the tunnels.
	if d := goroutines1 - goroutines0; d > n/20 {
		t.Errorf("the simulator has %d more goroutines after the restart than before (%d → %d)", d, goroutines0, goroutines1)
	}
	if d := srvGoroutines1 - srvGoroutines0; d > float64(n/20) {
		t.Errorf("the restarted server has %.0f more goroutines than the old one had (%.0f → %.0f)", d, srvGoroutines0, srvGoroutines1)
	}
}

func simTunnelCold(t *testing.T) {
	n := simEnvInt(t, "FLOTILLA_TUNNEL_COLD_CLUSTERS", 2000)
	interval := simEnvDuration(t, "FLOTILLA_TUNNEL_COLD_INTERVAL", 500*time.Second)
	cold := simEnvInt(t, "FLOTILLA_TUNNEL_COLD", 50)
	ctx := testCtx(t, 4*interval+10*time.Minute)
	figure := func(format string, a ...any) {
		t.Logf("FIGURE cold %d of %d clusters polling every %v: %s", cold, n, interval, fmt.Sprintf(format, a...))
	}
	wait := interval + time.Minute
	opts := e2e.ServerOptions{Args: []string{"--log-level", "warn", "--agent-poll-interval", interval.String(), "--tunnel-wait", wait.String()}}
	srv, s, alice := simTunnelFleet(t, ctx, opts, n, func(c *sim.Config) {
		c.LongPoll, c.LongPollFraction = 30*time.Second, 0.5
		c.RequestTimeout = wait + time.Minute
	})
	// As a fleet that has run for a while: a cluster's first poll after registering is
	// never held, its next one is.
	if _, err := s.WaitHeld(ctx); err != nil {
		t.Fatal(err)
	}
	// Half the cold clusters hold their polls, half do not; none has had a tunnel.
	var held, short []int
	for _, i := range rand.Perm(n) {
		switch {
		case s.LongPolling(i) && len(held) < cold/2:
			held = append(held, i)
		case !s.LongPolling(i) && len(short) < cold-cold/2:
			short = append(short, i)
		}
	}
	hc := simK8sClient(t, srv)
	hc.Timeout = wait + time.Minute
	ttfb := make(map[int]time.Duration)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for _, i := range append(slices.Clone(held), short...) {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+api.PathK8sClusters+s.ClusterName(i)+"/version", nil)
			req.Header.Set("Authorization", "Bearer "+alice)
			resp, err := hc.Do(req)
			took := time.Since(start)
			if err != nil {
				t.Errorf("cluster %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("cluster %d: %s after %v", i, resp.Status, took)
				return
			}
			mu.Lock()
			ttfb[i] = took
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, group := range []struct {
		name string
		ids  []int
	}{{"holding their polls (30 s of each interval)", held}, {"short polls only", short}} {
		var ds []time.Duration
		within2s, within30s := 0, 0
		for _, i := range group.ids {
			if d, ok := ttfb[i]; ok {
				ds = append(ds, d)
				if d < 2*time.Second {
					within2s++
				}
				if d < 30*time.Second {
					within30s++
				}
			}
		}
		r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
		figure("%s: %d calls, first byte min %v, p50 %v, p90 %v, max %v; %d within 2 s, %d within 30 s (the default --tunnel-wait)",
			group.name, len(ds), r(quantile(ds, 0)), r(quantile(ds, 0.5)), r(quantile(ds, 0.9)), r(quantile(ds, 1)), within2s, within30s)
	}
}
