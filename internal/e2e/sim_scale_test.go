package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/agentapi"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/sim"
)

const simAdminToken = "sim-e2e-admin-token-0123456789"

// TestSimScale runs a few thousand simulated clusters against the real server binary and
// checks correctness at that size, not speed: every cluster registers exactly once, every
// targeted cluster converges, a cluster whose labels change is re-targeted, and no
// acknowledged status report is lost when the server is killed mid-rollout.
func TestSimScale(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 500
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e2e.Binary(t, "flotilla")
	began := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(began).Seconds(), what) }
	opts := e2e.ServerOptions{DataDir: t.TempDir(), Addr: e2e.FreePort(t),
		Args: []string{"--agent-poll-interval", "2s"}, Env: []string{"FLOTILLA_BOOTSTRAP_TOKEN=" + simAdminToken}}
	srv := e2e.StartServer(t, opts)
	admin, err := client.New(client.Config{Server: srv.URL, Token: simAdminToken, CAChecksum: srv.Checksum})
	if err != nil {
		t.Fatal(err)
	}
	// A token for exactly n clusters: registering one again must not use it up.
	tokName, token := simRegistrationToken(t, ctx, admin, n)

	ls, err := sim.ParseLabelSpec("env=prod:50,dev:50;region=eu,us,ap")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sim.DefaultConfig()
	cfg.Server, cfg.CAChecksum, cfg.AdminToken, cfg.RegistrationToken = srv.URL, srv.Checksum, simAdminToken, token
	cfg.Clusters, cfg.Labels, cfg.Prefix = n, ls, "scale"
	cfg.Connections, cfg.Workers = 4, 64
	cfg.FailFraction, cfg.OfflineFraction = 0.02, 0.01
	cfg.ReportDelay, cfg.Heartbeat = 100*time.Millisecond, 20*time.Second
	cfg.MinBackoff, cfg.MaxBackoff = 200*time.Millisecond, 2*time.Second
	cfg.RequestTimeout, cfg.Timeout = 20*time.Second, time.Minute
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer func() { stopFleet(); s.Wait(); phase("fleet stopped") }()
	s.Start(fleetCtx)

	// Every cluster registers exactly once; registering again reuses the cluster.
	if _, err := s.WaitRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	ns := s.Namespace()
	phase("registered")
	simCheckClusters(t, ctx, admin, s)
	anon, _ := client.New(client.Config{Server: srv.URL, CAChecksum: srv.Checksum})
	for _, i := range []int{0, n / 2, n - 1} {
		resp, err := anon.Register(ctx, token, api.RegisterRequest{ClientID: s.ClientID(i), Labels: s.Labels(i), Credential: s.Credential(i)})
		if err != nil {
			t.Fatalf("registering cluster %d again: %v", i, err)
		}
		if want := agentapi.ClusterName(s.ClientID(i)); resp.ClusterName != want {
			t.Errorf("cluster %d registered again as %s, want its cluster %s", i, resp.ClusterName, want)
		}
	}
	if _, err := anon.Register(ctx, token, api.RegisterRequest{ClientID: "one-too-many"}); client.Reason(err) != api.ReasonTokenInvalid {
		t.Errorf("cluster %d on a token for %d: %v, want %s", n+1, n, err, api.ReasonTokenInvalid)
	}
	simCheckClusters(t, ctx, admin, s)
	simEventually(t, ctx, "the token's use count", func() error {
		tok, err := admin.Get(ctx, api.KindRegistrationToken, ns, tokName)
		if err != nil {
			return err
		}
		var st api.RegistrationTokenStatus
		json.Unmarshal(tok.Status, &st)
		if st.Uses != n {
			return fmt.Errorf("registration token used %d times, want %d (once per cluster)", st.Uses, n)
		}
		return nil
	})
	if _, err := s.WaitPolled(ctx); err != nil {
		t.Fatal(err)
	}
	phase("every cluster polled")

	// Every targeted cluster converges.
	ch, err := s.Change(ctx, "web", "env=prod")
	if err != nil {
		t.Fatalf("first rollout: %v (%+v)", err, ch)
	}
	t.Logf("rollout to %+v: reached all in %v, all reported in %v, server rollup %v", ch.Expect, ch.ReachAll, ch.ReportAll, ch.ServerRollup)
	simCheckBundle(t, ctx, admin, ns, "web", ch.Expect)
	phase("first rollout done")

	// Labels change: ten prod clusters become dev and ten dev clusters prod. The bundle
	// leaves the first and reaches the second.
	var toDev, toProd []int
	for i := 0; i < n && (len(toDev) < 10 || len(toProd) < 10); i++ {
		if s.Offline(i) || s.Failing(i) {
			continue
		}
		if s.Labels(i)["env"] == "prod" && len(toDev) < 10 {
			toDev = append(toDev, i)
		} else if s.Labels(i)["env"] == "dev" && len(toProd) < 10 {
			toProd = append(toProd, i)
		}
	}
	moved := map[int]string{}
	for _, i := range toDev {
		moved[i] = "dev"
	}
	for _, i := range toProd {
		moved[i] = "prod"
	}
	env := func(i int) string {
		if e, ok := moved[i]; ok {
			return e
		}
		return s.Labels(i)["env"]
	}
	for i, e := range moved {
		simSetLabel(t, ctx, admin, ns, agentapi.ClusterName(s.ClientID(i)), "env", e)
	}
	simEventually(t, ctx, "the moved clusters to be re-targeted", func() error {
		for i, e := range moved {
			deps := s.Deployments(i)
			switch {
			case e == "dev" && len(deps) != 0:
				return fmt.Errorf("cluster %d moved to dev still runs %+v", i, deps)
			case e == "prod" && (len(deps) != 1 || deps[0].ContentHash != ch.ContentHash):
				return fmt.Errorf("cluster %d moved to prod runs %+v, want %s", i, deps, ch.ContentHash)
			case !s.Settled(i):
				return fmt.Errorf("cluster %d has not reported its new state", i)
			}
		}
		return nil
	})
	// Ten out, ten in: the same counts as before; and each cluster's own status says so.
	simCheckBundle(t, ctx, admin, ns, "web", ch.Expect)
	simCheckClusterStatus(t, ctx, admin, s, ns, env)
	phase("moved clusters re-targeted")

	// A rollout is cut by kill -9 of the server; once it is back, every report it
	// acknowledged before is still counted, and the rollout completes.
	type result struct {
		ch  *sim.ChangeResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		ch, err := s.Change(ctx, "web", "env=prod")
		done <- result{ch, err}
	}()
	simEventually(t, ctx, "a third of the second rollout to be reported", func() error {
		if p := s.Progress(); p.Change != 2 || p.ChangeReported < int64(ch.Expect.Reach/3) {
			return fmt.Errorf("change %d: %d reported", p.Change, p.ChangeReported)
		}
		return nil
	})
	srv.Kill()
	before := s.Progress().ChangeReported
	e2e.StartServer(t, opts) // stopped by its cleanup
	phase("server restarted")
	t.Logf("server killed with %d of %d clusters' reports of the second rollout acknowledged, and restarted", before, ch.Expect.Reach)
	r := <-done
	if r.err != nil {
		t.Fatalf("second rollout, across the restart: %v (%+v)", r.err, r.ch)
	}
	simCheckBundle(t, ctx, admin, ns, "web", r.ch.Expect)
	simCheckClusters(t, ctx, admin, s)
	phase("second rollout done")

	// Every cluster's last report is what the server shows for it.
	simCheckClusterStatus(t, ctx, admin, s, ns, env)
	phase("every cluster's status matches its last report")
	t.Logf("second rollout across the restart: reached all in %v, all reported in %v, server rollup %v", r.ch.ReachAll, r.ch.ReportAll, r.ch.ServerRollup)
}

// simCheckClusterStatus checks that every Cluster's status counts what its simulated
// cluster last reported: its deployments by acknowledged state, or, for an offline one
// that never received the bundle, one waiting to be applied when env says it is targeted.
func simCheckClusterStatus(t *testing.T, ctx context.Context, admin *client.Client, s *sim.Sim, ns string, env func(int) string) {
	t.Helper()
	n := s.Clusters()
	simEventually(t, ctx, "every cluster's status to match its last report", func() error {
		l, err := admin.ListAll(ctx, api.KindCluster, ns, sim.RunLabel+"=scale")
		if err != nil {
			return err
		}
		byName := map[string]api.ClusterStatus{}
		for _, raw := range l.Items {
			obj, err := simDecode(raw)
			if err != nil {
				return err
			}
			var st api.ClusterStatus
			json.Unmarshal(obj.Status, &st)
			byName[obj.Metadata.Name] = st
		}
		for i := range n {
			st := byName[agentapi.ClusterName(s.ClientID(i))]
			sum := st.Summary
			if sum == nil {
				sum = &api.Summary{}
			}
			want := api.Summary{}
			if s.Offline(i) {
				if env(i) == "prod" {
					want.DesiredReady, want.WaitApplied = 1, 1
				}
			} else {
				for _, d := range s.Deployments(i) {
					want.DesiredReady++
					switch d.Acked {
					case api.StateReady:
						want.Ready++
					case api.StateErrApplied:
						want.ErrApplied++
					default:
						return fmt.Errorf("cluster %d: deployment %s acknowledged as %q", i, d.Bundle, d.Acked)
					}
				}
			}
			if sum.DesiredReady != want.DesiredReady || sum.Ready != want.Ready || sum.ErrApplied != want.ErrApplied || sum.WaitApplied != want.WaitApplied {
				return fmt.Errorf("cluster %d (%s): server summary %+v, want %+v", i, agentapi.ClusterName(s.ClientID(i)), *sum, want)
			}
		}
		return nil
	})
}

func simRegistrationToken(t *testing.T, ctx context.Context, admin *client.Client, maxUses int) (name, token string) {
	t.Helper()
	spec, _ := json.Marshal(api.RegistrationTokenSpec{TTL: "1h", MaxUses: maxUses})
	out, err := admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: "sim", Namespace: api.DefaultNamespace}, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	var st api.RegistrationTokenStatus
	json.Unmarshal(out.Status, &st)
	return out.Metadata.Name, st.Token
}

func simDecode(raw json.RawMessage) (*api.Object, error) {
	var o api.Object
	err := json.Unmarshal(raw, &o)
	return &o, err
}

// simCheckClusters checks that the server holds exactly one Cluster per simulated cluster,
// named after its client ID.
func simCheckClusters(t *testing.T, ctx context.Context, admin *client.Client, s *sim.Sim) {
	t.Helper()
	l, err := admin.ListAll(ctx, api.KindCluster, "", "")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]int{}
	for _, raw := range l.Items {
		obj, err := simDecode(raw)
		if err != nil {
			t.Fatal(err)
		}
		names[obj.Metadata.Name]++
	}
	if len(l.Items) != s.Clusters() {
		t.Errorf("%d clusters on the server, want %d", len(l.Items), s.Clusters())
	}
	for i := range s.Clusters() {
		if name := agentapi.ClusterName(s.ClientID(i)); names[name] != 1 {
			t.Errorf("cluster %d (%s) is on the server %d times, want once", i, name, names[name])
		}
	}
}

// simCheckBundle checks a bundle's rolled-up status against what the fleet should report.
func simCheckBundle(t *testing.T, ctx context.Context, admin *client.Client, ns, name string, want sim.Expectation) {
	t.Helper()
	simEventually(t, ctx, "bundle "+name+"'s status", func() error {
		o, err := admin.Get(ctx, api.KindBundle, ns, name)
		if err != nil {
			return err
		}
		var st api.BundleStatus
		json.Unmarshal(o.Status, &st)
		s := st.Summary
		if s == nil {
			return errors.New("no summary")
		}
		if s.DesiredReady != want.Targeted || s.Ready != want.Ready || s.ErrApplied != want.ErrApplied || s.WaitApplied != want.WaitApplied ||
			s.OutOfSync != 0 || s.NotReady != 0 || s.Modified != 0 || s.Pending != 0 {
			return fmt.Errorf("summary desired %d, ready %d, errApplied %d, waitApplied %d, outOfSync %d, notReady %d; want %+v",
				s.DesiredReady, s.Ready, s.ErrApplied, s.WaitApplied, s.OutOfSync, s.NotReady, want)
		}
		return nil
	})
}

func simSetLabel(t *testing.T, ctx context.Context, admin *client.Client, ns, name, key, value string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		o, err := admin.Get(ctx, api.KindCluster, ns, name)
		if err != nil {
			t.Fatal(err)
		}
		o.Metadata.Labels[key] = value
		_, err = admin.Update(ctx, o)
		if err == nil {
			return
		}
		if !client.IsConflict(err) || attempt > 10 {
			t.Fatalf("labelling cluster %s: %v", name, err)
		}
	}
}

func simEventually(t *testing.T, ctx context.Context, what string, check func() error) {
	t.Helper()
	start := time.Now()
	// Shorter than the server's one-minute refresh of idle clusters' status, which would
	// hide a stale one.
	deadline := start.Add(30 * time.Second)
	var last error
	for {
		err := check()
		if err == nil {
			if time.Since(start) > 10*time.Second {
				t.Logf("waited %v for %s; before: %v", time.Since(start).Round(time.Millisecond), what, last)
			}
			return
		}
		last = err
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
