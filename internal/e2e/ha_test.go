package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/sim"
	"flotilla.dev/internal/testenv/pg"
)

// TestHAKillLeader runs three real server replicas on one real PostgreSQL with a few
// thousand simulated clusters spread over them, and kills the leader with SIGKILL in the
// middle of a staged rollout (maxUnavailable 20%): another replica takes over within
// seconds, the rollout completes, every report acknowledged before the kill is still
// counted, every cluster converges, and all replicas (the killed one restarted) agree on
// every cluster's desired state.
func TestHAKillLeader(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	if v := os.Getenv("FLOTILLA_HA_CLUSTERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("FLOTILLA_HA_CLUSTERS: %v", err)
		}
	}
	pgSrv := pg.Start(t)
	url := pgSrv.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e2e.Binary(t, "flotilla")
	began := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }

	// Replicas share the database, the CA and serving certificate, and the key-encryption
	// key: the first makes them, the others get copies, as an operator's Secret would.
	var opts []e2e.ServerOptions
	for range 3 {
		opts = append(opts, e2e.ServerOptions{DataDir: t.TempDir(), Addr: e2e.FreePort(t),
			Args: []string{"--db", url, "--agent-poll-interval", "3s"}, Env: []string{"FLOTILLA_BOOTSTRAP_TOKEN=" + simAdminToken}})
	}
	replicas := make([]*e2e.Server, 3)
	replicas[0] = e2e.StartServer(t, opts[0])
	for i := 1; i < 3; i++ {
		for _, dir := range []string{"tls", "keys"} {
			copyDir(t, filepath.Join(opts[0].DataDir, dir), filepath.Join(opts[i].DataDir, dir))
		}
	}
	var wg sync.WaitGroup
	for i := 1; i < 3; i++ {
		wg.Go(func() { replicas[i] = e2e.StartServer(t, opts[i]) })
	}
	wg.Wait()
	checksum := replicas[0].Checksum
	for i, r := range replicas {
		if r.Checksum != checksum {
			t.Fatalf("replica %d presents CA %s, want the shared %s", i, r.Checksum, checksum)
		}
	}
	urls := func() string {
		var us []string
		for _, r := range replicas {
			us = append(us, r.URL)
		}
		return strings.Join(us, ",")
	}()
	leaderOf := func(skip int) (int, error) {
		found := -1
		for i, r := range replicas {
			if i == skip {
				continue
			}
			v, err := metricValue(ctx, r.URL, checksum, "flotilla_leader")
			if err != nil {
				return -1, fmt.Errorf("replica %d: %w", i, err)
			}
			if v == 1 {
				if found >= 0 {
					return -1, fmt.Errorf("replicas %d and %d both lead", found, i)
				}
				found = i
			}
		}
		if found < 0 {
			return -1, fmt.Errorf("no replica leads")
		}
		return found, nil
	}
	var lead int
	simEventually(t, ctx, "one leader among the replicas", func() (err error) { lead, err = leaderOf(-1); return err })
	phase(fmt.Sprintf("three replicas serving; replica %d leads", lead))

	admin, err := client.New(client.Config{Server: urls, Token: simAdminToken, CAChecksum: checksum})
	if err != nil {
		t.Fatal(err)
	}
	_, token := simRegistrationToken(t, ctx, admin, n)
	ls, err := sim.ParseLabelSpec("env=prod:80,dev:20;region=eu,us,ap")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken, cfg.RegistrationToken = urls, checksum, simAdminToken, token
	cfg.Clusters, cfg.Labels, cfg.Prefix = n, ls, "scale"
	cfg.Connections, cfg.Workers = 6, 64
	cfg.FailFraction, cfg.OfflineFraction = 0, 0
	// HTTPS long polls only: the simulator's doorbell pings the first replica, which is the
	// one killed; this test is of the replicas, not of the doorbell's fallback.
	cfg.DoorbellFraction = 0
	cfg.ReportDelay, cfg.Heartbeat = 100*time.Millisecond, 20*time.Second
	cfg.MinBackoff, cfg.MaxBackoff = 200*time.Millisecond, 2*time.Second
	cfg.RequestTimeout, cfg.Timeout = 20*time.Second, 4*time.Minute
	maxUnavailable := api.IntOrString("20%")
	cfg.ChangeRollout = &api.RolloutStrategy{MaxUnavailable: &maxUnavailable}
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer func() { stopFleet(); s.Wait() }()
	s.Start(fleetCtx)
	if _, err := s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	simCheckClusters(t, ctx, admin, s)
	if _, err := s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}
	phase("every cluster registered and polled, spread over the replicas")
	ch, err := s.Change(ctx, "web", "env=prod")
	if err != nil {
		t.Fatalf("first rollout: %v (%+v)", err, ch)
	}
	simCheckBundle(t, ctx, admin, s.Namespace(), "web", ch.Expect)
	phase(fmt.Sprintf("first version on %d clusters", ch.Expect.Reach))

	// The second version rolls out in stages; the leader dies a third of the way in.
	type result struct {
		ch  *sim.ChangeResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		ch, err := s.Change(ctx, "web", "env=prod")
		done <- result{ch, err}
	}()
	simEventually(t, ctx, "a third of the staged rollout to be reported", func() error {
		if p := s.Progress(); p.Change != 2 || p.ChangeReported < int64(ch.Expect.Reach/3) {
			return fmt.Errorf("change %d: %d reported", p.Change, p.ChangeReported)
		}
		return nil
	})
	if p := s.Progress(); p.ChangeReported >= int64(ch.Expect.Reach) {
		t.Fatalf("the rollout was complete (%d of %d) before the leader was killed: not staged", p.ChangeReported, ch.Expect.Reach)
	}
	before := s.Progress().ChangeReported
	killed := time.Now()
	replicas[lead].Kill()
	// Two figures: until another replica leads, and until a report of the rollout is
	// acknowledged after the kill (the rollout goes on through the surviving replicas).
	var next int
	var failover, resumed time.Duration
	for failover == 0 || resumed == 0 {
		if failover == 0 {
			if next, err = leaderOf(lead); err == nil {
				failover = time.Since(killed)
			}
		}
		if resumed == 0 && s.Progress().ChangeReported > before {
			resumed = time.Since(killed)
		}
		if time.Since(killed) > time.Minute {
			t.Fatalf("a minute after the leader was killed: new leader after %v (%v), reports resumed after %v", failover, err, resumed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	phase(fmt.Sprintf("leader %d killed with %d of %d reports of the staged rollout acknowledged; replica %d leads after %v",
		lead, before, ch.Expect.Reach, next, failover.Round(time.Millisecond)))
	r := <-done
	if r.err != nil {
		t.Fatalf("staged rollout across the leader's death: %v (%+v)", r.err, r.ch)
	}
	phase(fmt.Sprintf("staged rollout complete: reached all in %v, all reported in %v", r.ch.ReachAll, r.ch.ReportAll))
	// Nothing acknowledged is lost: the rollups and every cluster's status count every
	// cluster's last acknowledged report, as the new leader wrote them.
	simCheckBundle(t, ctx, admin, s.Namespace(), "web", r.ch.Expect)
	simCheckClusters(t, ctx, admin, s)
	simCheckClusterStatus(t, ctx, admin, s, s.Namespace(), func(i int) string { return s.Labels(i)["env"] })
	phase("every acknowledged report counted by the new leader")

	// The killed replica comes back as a follower; all three agree on every cluster's
	// desired state, which is the new version where it is targeted.
	replicas[lead] = e2e.StartServer(t, opts[lead])
	simEventually(t, ctx, "the replicas to agree on every cluster's desired state", func() error {
		return agree(ctx, replicas, checksum, s, r.ch.ContentHash)
	})
	if l, err := leaderOf(-1); err != nil || l != next {
		t.Errorf("after the old leader's restart: leader %d, %v; want %d to keep leading", l, err, next)
	}
	phase("all three replicas agree on every cluster's desired state")
	t.Logf("failover: %v from SIGKILL of the leader to another replica leading; first report of the rollout acknowledged %v after it",
		failover.Round(time.Millisecond), resumed.Round(time.Millisecond))
	if os.Getenv("FLOTILLA_HA_COST") != "" {
		replicaCost(t, ctx, replicas, checksum, 20*time.Second)
	}
}

// agree checks that every replica gives every cluster the same desired version, and that
// targeted clusters get content digest.
func agree(ctx context.Context, replicas []*e2e.Server, checksum string, s *sim.Sim, digest string) error {
	for i := range s.Clusters() {
		var first int64
		for j, r := range replicas {
			c, err := client.New(client.Config{Server: r.URL, CAChecksum: checksum, Token: s.Credential(i)})
			if err != nil {
				return err
			}
			ds, rev, _, err := c.Desired(ctx, 0)
			c.CloseIdleConnections()
			if err != nil {
				return fmt.Errorf("cluster %d on replica %d: %w", i, j, err)
			}
			if j == 0 {
				first = rev
			} else if rev != first {
				return fmt.Errorf("cluster %d: replica 0 says version %d, replica %d says %d", i, first, j, rev)
			}
			if s.Labels(i)["env"] == "prod" && (ds == nil || len(ds.Deployments) != 1 || ds.Deployments[0].ContentHash != digest) {
				return fmt.Errorf("cluster %d on replica %d: desired %+v, want content %s", i, j, ds, digest)
			}
		}
	}
	return nil
}

// metricValue reads a metric from a replica's /metrics: its one sample, or the sum of its
// labelled ones.
func metricValue(ctx context.Context, url, checksum, name string) (float64, error) {
	tc, err := client.TLSConfig(nil, checksum, false)
	if err != nil {
		return 0, err
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+simAdminToken)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %s", resp.Status)
	}
	// Samples of a labelled metric are added up.
	var sum float64
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (!strings.HasPrefix(rest, " ") && !strings.HasPrefix(rest, "{")) {
			continue
		}
		v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("%s in /metrics: %w", name, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("no %s in /metrics", name)
	}
	return sum, nil
}

// replicaCost logs each replica's CPU and resident memory over an idle window, with whether
// it leads and how many agent calls it answered (agents stay with the replica they reach).
func replicaCost(t *testing.T, ctx context.Context, replicas []*e2e.Server, checksum string, window time.Duration) {
	calls := func(r *e2e.Server) float64 {
		v, err := metricValue(ctx, r.URL, checksum, "flotilla_agent_requests_total")
		if err != nil {
			return 0 // none answered yet
		}
		return v
	}
	cpu := func(pid int) float64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0
		}
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		return (u + s) / 100 // clock ticks, 100 a second on Linux
	}
	rss := func(pid int) string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				return strings.TrimSpace(v)
			}
		}
		return "?"
	}
	before := make([]float64, len(replicas))
	callsBefore := make([]float64, len(replicas))
	for i, r := range replicas {
		callsBefore[i] = calls(r)
		before[i] = cpu(r.Pid())
	}
	time.Sleep(window)
	for i, r := range replicas {
		used := cpu(r.Pid()) - before[i]
		lead, _ := metricValue(ctx, r.URL, checksum, "flotilla_leader")
		t.Logf("replica %d (leader %v) over %v of an idle fleet: %.1f%% of a core, RSS %s, %.0f agent calls/s",
			i, lead == 1, window, 100*used/window.Seconds(), rss(r.Pid()), (calls(r)-callsBefore[i])/window.Seconds())
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatalf("copying %s: %v", from, err)
	}
}
