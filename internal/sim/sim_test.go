package sim_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"flotilla.dev/client"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/server"
	"flotilla.dev/internal/sim"
)

const adminToken = "sim-test-admin-token-0123456789"

// startServer runs a real server in-process on loopback.
func startServer(t *testing.T, poll time.Duration) (url, checksum string) {
	t.Helper()
	return startServerWith(t, poll, nil)
}

// startServerWith runs a real server in-process on loopback, its config changed by with.
func startServerWith(t *testing.T, poll time.Duration, with func(*server.Config)) (url, checksum string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	scfg := server.Config{Listen: addr, DataDir: t.TempDir(), BootstrapToken: adminToken,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Fleet:  fleet.Config{PollInterval: poll, StatusInterval: 100 * time.Millisecond}}
	if with != nil {
		with(&scfg)
	}
	s, err := server.New(ctx, scfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	url = "https://" + addr
	c, err := client.New(client.Config{Server: url, CAChecksum: s.CAChecksum()})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := c.Do(ctx, "GET", "/readyz", nil, nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("server not ready: %v", err)
		}
	}
	return url, s.CAChecksum()
}

func TestRun(t *testing.T) {
	url, checksum := startServer(t, time.Second)
	ls, err := sim.ParseLabelSpec("env=prod:70,dev:30")
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = url, checksum, adminToken
	cfg.Clusters, cfg.Labels = 300, ls
	cfg.LongPoll, cfg.LongPollFraction = 30*time.Second, 0.5
	cfg.DoorbellFraction = 0.5
	cfg.Connections, cfg.Workers = 2, 16
	cfg.FailFraction, cfg.OfflineFraction = 0.05, 0.05
	cfg.ReportDelay, cfg.ReadyDelay = 20*time.Millisecond, 100*time.Millisecond
	cfg.MinBackoff, cfg.MaxBackoff = 100*time.Millisecond, time.Second
	cfg.Baseline, cfg.PollStorm, cfg.Duration = 200*time.Millisecond, 200*time.Millisecond, 1500*time.Millisecond
	cfg.ChangeBundle, cfg.ChangeSelector = "web", "env=prod"
	cfg.Timeout = time.Minute
	cfg.Progress, cfg.ProgressInterval = &progress, 100*time.Millisecond
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := s.Run(ctx)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	if rep.Registration.Clusters != 300 {
		t.Errorf("registered %d clusters, want 300", rep.Registration.Clusters)
	}
	c := rep.Change
	if c.Expect.Targeted < 150 || c.Expect.Ready == 0 || c.Expect.ErrApplied == 0 || c.Expect.WaitApplied == 0 {
		t.Errorf("expectation %+v: want about 210 targeted, some failing, some offline", c.Expect)
	}
	if c.Reached != int64(c.Expect.Reach) || c.Reported != int64(c.Expect.Reach) {
		t.Errorf("change reached %d and reported %d clusters, want %d", c.Reached, c.Reported, c.Expect.Reach)
	}
	if c.ReachAll <= 0 || c.ReportAll < c.ReachAll || c.ServerRollup < c.ReportAll {
		t.Errorf("change times reach %v, report %v, rollup %v: want 0 < reach <= report <= rollup", c.ReachAll, c.ReportAll, c.ServerRollup)
	}
	for i := range s.Clusters() {
		deps := s.Deployments(i)
		targeted := s.Labels(i)["env"] == "prod"
		switch {
		case s.Offline(i):
		case !targeted && len(deps) != 0:
			t.Errorf("cluster %d (not targeted) runs %+v", i, deps)
		case targeted && (len(deps) != 1 || deps[0].ContentHash != c.ContentHash):
			t.Errorf("cluster %d runs %+v, want the change %s", i, deps, c.ContentHash)
		case targeted && s.Failing(i) && deps[0].Acked != "ErrApplied":
			t.Errorf("failing cluster %d acknowledged %q, want ErrApplied", i, deps[0].Acked)
		case targeted && !s.Failing(i) && deps[0].Acked != "Ready":
			t.Errorf("cluster %d acknowledged %q, want Ready", i, deps[0].Acked)
		}
	}
	if rep.Baseline == nil || rep.Baseline.RequestsPerSec <= 0 || rep.PollStorm == nil || rep.PollStorm.Unchanged == 0 || rep.PollStorm.ServerCPUPerPoll <= 0 {
		t.Errorf("baseline %+v, poll storm %+v: want both measured", rep.Baseline, rep.PollStorm)
	}
	if r := rep.ReconnectStorm; r == nil || r.Unchanged == 0 || r.Unchanged != r.Polls || r.ServerCPUPerPoll <= 0 {
		t.Errorf("reconnect storm %+v: want unchanged polls measured", r)
	}
	if rep.ServerMemory.End <= 0 || rep.Idle == nil || rep.Idle.PollsPerSec <= 0 {
		t.Errorf("server memory %+v, idle %+v: want both measured", rep.ServerMemory, rep.Idle)
	}
	if g := rep.PollStorm; g != nil && (g.ServerGC.AllocPerSec <= 0 || g.ServerGC.AllocPerRequest <= 0) {
		t.Errorf("poll storm's server heap %+v: want the allocations per poll measured", g.ServerGC)
	}
	if i := rep.Idle; i != nil && (i.ServerGC.AllocPerSec <= 0 || i.ServerGC.AllocPerRequest <= 0) {
		t.Errorf("idle fleet's server heap %+v: want the allocations per request measured", i.ServerGC)
	}
	if !strings.Contains(progress.String(), "registered 300/300") {
		t.Errorf("no progress line with every cluster registered:\n%s", progress.String())
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	for _, want := range []string{"baseline", "registration", "reached all", "unchanged poll", "server RSS", "desired-304"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("\n%s", table.String())
}

// TestLongPoll checks that clusters holding their polls open learn of a change at once,
// well within the poll interval.
func TestLongPoll(t *testing.T) {
	url, checksum := startServer(t, 5*time.Second)
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = url, checksum, adminToken
	cfg.Clusters, cfg.Connections, cfg.Workers = 100, 2, 16
	cfg.LongPoll, cfg.LongPollFraction = 30*time.Second, 1
	cfg.DoorbellFraction = 0
	cfg.ReportDelay, cfg.Heartbeat = 10*time.Millisecond, 0
	cfg.Timeout = 30 * time.Second
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer func() { cancel(); s.Wait() }()
	tok, err := s.CreateRegistrationToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistrationToken(tok)
	s.Start(ctx)
	if _, err := s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.Progress().InFlight < 100 {
		if time.Now().After(deadline) {
			t.Fatalf("the clusters do not hold polls: %+v", s.Progress())
		}
		time.Sleep(10 * time.Millisecond)
	}
	ch, err := s.Change(ctx, "hint", "")
	if err != nil {
		t.Fatal(err)
	}
	if ch.ReachAll.Duration() > 2*time.Second {
		t.Errorf("long-polling clusters took %v to receive a change, with a 5s poll interval; want at once", ch.ReachAll)
	}
	time.Sleep(3 * time.Second)
	t.Logf("reached all in %v, %d polls, %d long polls answered", ch.ReachAll, s.Progress().Polls, s.Calls()["long-poll"].Count)
	// About one poll per cluster every 5s: 100 first, 100 held when the change came, and
	// a few rounds since.
	if n := s.Progress().Polls; n > 800 {
		t.Errorf("%d polls from 100 clusters in some 10s: long polls must keep the poll interval", n)
	}
}

// TestDoorbell: with short polls only and a server that sends agents away for an hour, a
// change reaches every simulated cluster because the doorbell rings, through sockets that
// many clusters share; between pings (10 s apart under the server's ping budget) the
// clusters send keepalives every second, which the server never reads; a ping storm
// measures the server's cost per datagram.
func TestDoorbell(t *testing.T) {
	url, checksum := startServerWith(t, time.Hour, func(c *server.Config) {
		c.DoorbellInterval, c.DoorbellBudget = time.Second, 20
	})
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken = url, checksum, adminToken
	cfg.Clusters, cfg.Connections, cfg.Workers = 200, 2, 16
	cfg.LongPoll, cfg.DoorbellFraction, cfg.DoorbellPerSocket = 0, 1, 64
	cfg.ReportDelay, cfg.Heartbeat = 10*time.Millisecond, 0
	cfg.Timeout = 30 * time.Second
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer func() { cancel(); s.Wait() }()
	tok, err := s.CreateRegistrationToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRegistrationToken(tok)
	s.Start(ctx)
	if _, err := s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}
	ch, err := s.Change(ctx, "rung", "")
	if err != nil {
		t.Fatal(err)
	}
	if ch.Doorbell == nil || ch.Doorbell.Reached != 200 || ch.HTTPS != nil {
		t.Fatalf("the change reached %+v by doorbell, %+v by HTTPS only; want all 200 by doorbell", ch.Doorbell, ch.HTTPS)
	}
	// Every poll brought news: the first of each cluster its desired state, a ring's the
	// change. (A ping of the version held before a poll due at once would be answered
	// "changed", and the cluster would poll again for nothing: one unchanged poll each.) A
	// ping that crosses a ring's poll on the way may still cause one.
	if p := s.Progress(); p.Unchanged > 200/20 {
		t.Errorf("%d of %d polls unchanged; want hardly any with the doorbell ringing", p.Unchanged, p.Polls)
	}
	idle, err := s.Idle(ctx, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// 200 clusters keep alive every second or so, and ping less often (the server reads
	// the pings alone).
	if idle.KeepAlivesPerSec < 100 || idle.DoorbellPerSec >= idle.KeepAlivesPerSec {
		t.Errorf("idle: %.0f keepalives/s sent, %.0f datagrams/s read by the server; want ~200, and fewer read", idle.KeepAlivesPerSec, idle.DoorbellPerSec)
	}
	// The second half is measured on its own, within the window.
	if l := idle.Late; l == nil || l.Duration < idle.Duration/4 || l.Duration > idle.Duration*3/4 || l.ServerCPU < 0 || l.ServerGC.AllocPerSec <= 0 {
		t.Errorf("idle: second half %+v of %v; want it measured, about half as long", l, idle.Duration)
	}
	ps, err := s.PingStorm(ctx, 300*time.Millisecond, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Received == 0 || ps.ServerCPUPerPacket <= 0 {
		t.Errorf("ping storm: %+v", ps)
	}
}
