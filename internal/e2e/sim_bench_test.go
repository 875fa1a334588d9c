package e2e_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/sim"
	"flotilla.dev/internal/testenv/pg"
)

// TestSimBenchmark is the scale benchmark of DESIGN.md §7: a real server (SQLite, then
// PostgreSQL), N simulated clusters registering, one bundle change reaching all of them, an
// idle fleet, unchanged polls as fast as they go, kill -9 and restart at full size, and
// listing 10,000 clusters by label. It prints FIGURE lines, each rate also as a ratio to the
// bare-HTTPS baseline measured in the same run; it asserts nothing about time.
//
//	FLOTILLA_SIM_CLUSTERS=10000 go test -run TestSimBenchmark -v -timeout 2h ./internal/e2e/
//
// Also read from the environment: FLOTILLA_SIM_DRIVERS (default "sqlite,postgres"),
// FLOTILLA_SIM_POLL_INTERVAL (the server's --agent-poll-interval, default 15s),
// FLOTILLA_SIM_SERVER_ARGS (more server flags, space-separated), FLOTILLA_SIM_CONNECTIONS
// and FLOTILLA_SIM_WORKERS (default 8 and 128), FLOTILLA_SIM_RAMP (registrations per second,
// default all at once), FLOTILLA_SIM_LONG_POLL and FLOTILLA_SIM_LONG_POLL_FRACTION (how
// long the clusters let the server hold a poll, as the agent's PollWait, default 30s; and
// which fraction of them long-poll, default all; 0s for short polls only),
// FLOTILLA_SIM_IDLE (how long the idle fleet is measured, default 30s),
// FLOTILLA_SIM_JSON_DIR (where to write each run's report as JSON) and
// FLOTILLA_SIM_PROFILE_DIR (where to write a CPU profile of the server while the fleet idles,
// for `go tool pprof`).
//
// At 100k clusters and more, pass FLOTILLA_SIM_SERVER_ARGS="--log-level warn": the test
// keeps the server's log in memory, one line per registration at the info level. The
// simulator runs in the test process and needs about 1 KB per cluster and, per request,
// about as much CPU as the server does; watch its scheduling lag in the report. Each held
// long poll costs it (and the server) some 20 KB more: at 1M clusters, let a fraction
// long-poll (FLOTILLA_SIM_LONG_POLL_FRACTION) or none (FLOTILLA_SIM_LONG_POLL=0s).
func TestSimBenchmark(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FLOTILLA_SIM_CLUSTERS"))
	if n == 0 {
		t.Skip("set FLOTILLA_SIM_CLUSTERS=N to run the fleet benchmark")
	}
	drivers := simEnv("FLOTILLA_SIM_DRIVERS", "sqlite,postgres")
	for _, d := range []string{"sqlite", "postgres"} {
		if slices.Contains(strings.Split(drivers, ","), d) {
			t.Run(d, func(t *testing.T) { simBench(t, d, n) })
		}
	}
}

func simEnv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func simEnvDuration(t *testing.T, key string, def time.Duration) time.Duration {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return d
}

func simEnvInt(t *testing.T, key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return n
}

func simBench(t *testing.T, driver string, n int) {
	ctx := context.Background()
	poll := simEnvDuration(t, "FLOTILLA_SIM_POLL_INTERVAL", 15*time.Second)
	args := []string{"--agent-poll-interval", poll.String()}
	if extra := os.Getenv("FLOTILLA_SIM_SERVER_ARGS"); extra != "" {
		args = append(args, strings.Fields(extra)...)
	}
	if driver == "postgres" {
		args = append(args, "--db", pg.Start(t).NewDatabase(t))
	}
	opts := e2e.ServerOptions{DataDir: t.TempDir(), Addr: e2e.FreePort(t), Args: args,
		Env: []string{"FLOTILLA_BOOTSTRAP_TOKEN=" + simAdminToken}}
	srv := e2e.StartServer(t, opts)
	figure := func(format string, a ...any) {
		t.Logf("FIGURE %s %d clusters: %s", driver, n, fmt.Sprintf(format, a...))
	}

	conns, workers := simEnvInt(t, "FLOTILLA_SIM_CONNECTIONS", 8), simEnvInt(t, "FLOTILLA_SIM_WORKERS", 128)
	base, err := sim.Baseline(ctx, conns, workers, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	figure("bare-HTTPS baseline: %.0f requests/s, %v CPU per request (client and server)", base.RequestsPerSec, base.CPUPerRequest)

	ls, err := sim.ParseLabelSpec("env=prod:50,dev:50;region=eu,us,ap;group=@10000")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = srv.URL, srv.Checksum, simAdminToken
	cfg.Clusters, cfg.Labels, cfg.Prefix = n, ls, "bench"
	cfg.Connections, cfg.Workers = conns, workers
	cfg.Ramp = float64(simEnvInt(t, "FLOTILLA_SIM_RAMP", 0))
	cfg.LongPoll = simEnvDuration(t, "FLOTILLA_SIM_LONG_POLL", cfg.LongPoll)
	if f := os.Getenv("FLOTILLA_SIM_LONG_POLL_FRACTION"); f != "" {
		if cfg.LongPollFraction, err = strconv.ParseFloat(f, 64); err != nil {
			t.Fatalf("FLOTILLA_SIM_LONG_POLL_FRACTION: %v", err)
		}
	}
	if cfg.LongPoll > 0 {
		figure("%.1f%% of the clusters long-poll as the agent does, each poll held for the server's poll-after, at most %v", 100*cfg.LongPollFraction, cfg.LongPoll)
	} else {
		figure("short polls only")
	}
	cfg.Timeout = time.Hour
	cfg.Progress, cfg.ProgressInterval = os.Stderr, 5*time.Second
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep := &sim.Report{Server: srv.URL, Clusters: n, Connections: conns, Workers: workers, Started: time.Now(), Baseline: base}
	rssBefore, _ := s.ServerRSS(ctx)
	tok, err := s.CreateRegistrationToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistrationToken(tok)
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer func() { stopFleet(); s.Wait() }()
	s.Start(fleetCtx)

	if rep.Registration, err = s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	figure("register all: %v (%.0f clusters/s, %.3f× the baseline request rate)", rep.Registration.Duration, rep.Registration.PerSec, rep.Registration.PerSec/base.RequestsPerSec)
	if rep.InitialSync, err = s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}
	rssRegistered, _ := s.ServerRSS(ctx)
	if rep.Held, err = s.WaitHeld(ctx); err != nil {
		t.Fatal(err)
	}
	if rep.Held > 0 {
		figure("nine in ten long-polling clusters have made a long poll %v after the start", rep.Held)
	}

	if rep.Change, err = s.Change(ctx, "bench", ""); err != nil {
		t.Fatal(err)
	}
	c := rep.Change
	figure("one bundle change to all: reached every cluster in %v (half in %v, 90%% in %v, 99%% in %v), all reported Ready in %v, Bundle status counted all in %v, every Cluster's status written in %v (poll interval %v; %d requests, %v at the baseline rate)",
		c.ReachAll, c.Reach.P50, c.Reach.P90, c.Reach.P99, c.ReportAll, c.ServerRollup, c.StatusSettled, c.PollAfter, c.Requests, sim.Seconds(float64(c.Requests)/base.RequestsPerSec))

	idle := simEnvDuration(t, "FLOTILLA_SIM_IDLE", 30*time.Second)
	profiled := profileServer(t, srv.URL, idle, driver, n)
	if rep.Idle, err = s.Idle(ctx, idle); err != nil {
		t.Fatal(err)
	}
	<-profiled
	figure("idle fleet: %.0f polls/s, server CPU %.1f%% of one core (simulator %.1f%%); server heap %s", rep.Idle.PollsPerSec, 100*rep.Idle.ServerCPU, 100*rep.Idle.SimCPU, rep.Idle.ServerGC)

	listFigure(t, figure, srv.URL, n, "while the fleet idles")

	// The machine is shared: measure the baseline again right before the storm, so that
	// the two see the same conditions.
	base2, err := sim.Baseline(ctx, conns, workers, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	figure("bare-HTTPS baseline again, with the fleet idling: %.0f requests/s, %v CPU per request", base2.RequestsPerSec, base2.CPUPerRequest)
	if rep.PollStorm, err = s.PollStorm(ctx, 5*time.Second, base2); err != nil {
		t.Fatal(err)
	}
	p := rep.PollStorm
	figure("unchanged poll: %.0f/s (%.3f× the baseline rate), CPU per poll server %v + simulator %v (%.2f× the baseline's client+server %v); server heap %s",
		p.PerSec, p.RateRatio, p.ServerCPUPerPoll, p.SimCPUPerPoll, p.CPURatio, base2.CPUPerRequest, p.ServerGC)

	if rep.ReconnectStorm, err = s.ReconnectStorm(ctx, 5*time.Second, base2); err != nil {
		t.Fatal(err)
	}
	p = rep.ReconnectStorm
	figure("unchanged poll on a new connection (resumed TLS session), as agents of a large fleet poll: %.0f/s, CPU per poll server %v + simulator %v (%.2f× the baseline's client+server on open connections); server heap %s",
		p.PerSec, p.ServerCPUPerPoll, p.SimCPUPerPoll, p.CPURatio, p.ServerGC)

	rssEnd, heapEnd, _ := s.ServerMemoryNow(ctx)
	rep.ServerMemory = sim.ServerMemory{Before: rssBefore, AfterRegistration: rssRegistered, End: rssEnd, GoHeap: heapEnd,
		PerCluster: rssEnd / float64(n), GrowthPerCluster: (rssEnd - rssBefore) / float64(n)}
	figure("server RSS: %.1f MB before, %.1f MB registered, %.1f MB at the end: %.0f bytes per cluster (%.0f of growth); Go heap in use %.1f MB, %.0f bytes per cluster",
		rssBefore/(1<<20), rssRegistered/(1<<20), rssEnd/(1<<20), rep.ServerMemory.PerCluster, rep.ServerMemory.GrowthPerCluster, heapEnd/(1<<20), heapEnd/float64(n))

	// kill -9 at full size, with the fleet polling: time to /readyz, then until every
	// cluster's poll is answered again.
	srv.Kill()
	s.Mark()
	start := time.Now()
	// At the info level the restarted server logs how long opening the store and loading
	// the fleet model took (it registers nobody, so its log stays short).
	restart := opts
	restart.Args = append(slices.Clip(opts.Args), "--log-level", "info")
	srv = e2e.StartServer(t, restart)
	ready := time.Since(start)
	back, err := s.WaitMarked(ctx)
	if err != nil {
		t.Fatal(err)
	}
	figure("restart after kill -9: process start to /readyz %v; every cluster's poll answered again after %v", ready.Round(time.Millisecond), back)
	for _, line := range strings.Split(srv.Stderr()+srv.Stdout(), "\n") {
		if strings.Contains(line, "store open") || strings.Contains(line, "fleet model loaded") {
			figure("restart: %s", strings.TrimSpace(line))
		}
	}
	if rss, heap, err := s.ServerMemoryNow(ctx); err == nil {
		figure("server RSS after the restart (state loaded from the store): %.1f MB, %.0f bytes per cluster; Go heap in use %.1f MB, %.0f bytes per cluster",
			rss/(1<<20), rss/float64(n), heap/(1<<20), heap/float64(n))
	}

	listFigure(t, figure, srv.URL, n, "after the restart, with the fleet polling again")

	s.Finish(rep)
	figure("simulator: %.0f bytes of heap per cluster, %v CPU in all, scheduling lag p99 %v", rep.Simulator.PerCluster, rep.Simulator.CPU, rep.Simulator.SchedulingLag.P99)
	var table strings.Builder
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if dir := os.Getenv("FLOTILLA_SIM_JSON_DIR"); dir != "" {
		data, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("sim-%s-%d.json", driver, n)), data, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// profileServer fetches a CPU profile of the server over the idle period, and then a heap
// profile, into FLOTILLA_SIM_PROFILE_DIR when set; the channel closes when both are written.
func profileServer(t *testing.T, url string, d time.Duration, driver string, n int) <-chan struct{} {
	done := make(chan struct{})
	dir := os.Getenv("FLOTILLA_SIM_PROFILE_DIR")
	secs := int(d.Seconds())
	if dir == "" || secs < 1 {
		close(done)
		return done
	}
	fetch := func(path, file string) {
		hc := &http.Client{Timeout: d + time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		req, _ := http.NewRequest(http.MethodGet, url+path, nil)
		req.Header.Set("Authorization", "Bearer "+simAdminToken)
		resp, err := hc.Do(req)
		if err != nil {
			t.Errorf("server profile %s: %v", path, err)
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", resp.Status, data)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s-%d.pprof", file, driver, n)), data, 0o644)
		}
		if err != nil {
			t.Errorf("server profile %s: %v", path, err)
		}
	}
	go func() {
		defer close(done)
		fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), "idle-cpu")
		fetch("/debug/pprof/heap?gc=1", "heap")
	}()
	return done
}

// listFigure lists 10,000 clusters by label through the API seven times and prints the
// time to the response's last byte (the server's part) and to a decoded list (a client's).
func listFigure(t *testing.T, figure func(string, ...any), url string, n int, when string) {
	t.Helper()
	sel := "group=b0"
	if n < 10000 {
		sel = sim.RunLabel + "=bench"
	}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	defer hc.CloseIdleConnections()
	var received, decoded []time.Duration
	items := 0
	for range 7 {
		req, _ := http.NewRequest(http.MethodGet, url+"/apis/"+api.APIVersion+"/namespaces/"+api.DefaultNamespace+"/clusters?labelSelector="+sel, nil)
		req.Header.Set("Authorization", "Bearer "+simAdminToken)
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		received = append(received, time.Since(t0))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("listing clusters by %s: %s: %s", sel, resp.Status, body)
		}
		var l api.List
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatal(err)
		}
		if len(l.Items) == 0 {
			t.Fatalf("listing clusters by %s found none", sel)
		}
		decoded = append(decoded, time.Since(t0))
		items = len(l.Items)
	}
	figure("list %d clusters by label (%s) through the API %s: last byte received median %v (min %v, max %v); decoded median %v",
		items, sel, when, median(received), minD(received), maxD(received), median(decoded))
}
