package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/server"
)

// startBellServer runs a real server on 127.0.0.1 whose agents are told to poll once an
// hour, so that only a long poll or the doorbell brings them a change sooner.
func startBellServer(t *testing.T, sans ...string) (*realServer, *server.Server, string) {
	t.Helper()
	return startBellServerWith(t, server.Config{Fleet: fleet.Config{PollInterval: time.Hour, StatusInterval: 100 * time.Millisecond}}, sans...)
}

// startBellServerWith is startBellServer with cfg's fleet and doorbell settings.
func startBellServerWith(t *testing.T, cfg server.Config, sans ...string) (*realServer, *server.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	const admin = "test-admin-token-0123456789"
	ctx, cancel := context.WithCancel(context.Background())
	cfg.Listen, cfg.DataDir, cfg.BootstrapToken, cfg.TLSSANs, cfg.Logger = addr, t.TempDir(), admin, sans, slog.New(slog.DiscardHandler)
	s, err := server.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	rs := &realServer{url: "https://" + addr, checksum: s.CAChecksum()}
	if rs.admin, err = client.New(client.Config{Server: rs.url, Token: admin, CAChecksum: rs.checksum}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server", func() bool {
		_, err := rs.admin.List(context.Background(), api.KindCluster, "", client.ListOptions{Limit: 1})
		return err == nil
	})
	return rs, s, addr
}

func bellAgentConfig(t *testing.T, url, checksum, token, name string) Config {
	return Config{Server: url, CAChecksum: checksum, Token: token, ClusterName: name, StateDir: t.TempDir(),
		Logger: testLogger(t), Version: "test", PollInterval: time.Hour, PollWait: time.Hour,
		StatusInterval: 100 * time.Millisecond, HeartbeatInterval: time.Hour, InventoryInterval: time.Hour,
		ReportDelay: 5 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		DoorbellTimeout: 200 * time.Millisecond}
}

func (rs *realServer) applyConfigMapBundle(t *testing.T, name, cluster, value string) {
	t.Helper()
	spec, _ := json.Marshal(map[string]any{
		"resources": []map[string]string{{"name": "cm.yaml", "content": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\ndata: {v: \"" + value + "\"}\n"}},
		"targets":   []map[string]any{{"clusterName": cluster}},
	})
	if _, _, err := rs.admin.Apply(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace}, Spec: spec}, false); err != nil {
		t.Fatal(err)
	}
}

// doorbellOf is the doorbell state the cluster's agent reported.
func (rs *realServer) doorbellOf(t *testing.T, name string) string {
	t.Helper()
	o, err := rs.admin.Get(context.Background(), api.KindCluster, api.DefaultNamespace, name)
	if err != nil {
		return ""
	}
	var st struct {
		Inventory *api.ClusterInventory `json:"inventory"`
	}
	json.Unmarshal(o.Status, &st)
	if st.Inventory == nil {
		return ""
	}
	return st.Inventory.Doorbell
}

// appliedCount is how many deployments the applier applied.
func appliedCount(ap *fakeApplier) int {
	n := 0
	ap.get(func(ap *fakeApplier) {
		for _, c := range ap.applies {
			n += c
		}
	})
	return n
}

// TestDoorbellWithRealServer: a real server and a real agent loop on loopback. The agent's
// HTTPS polls come once an hour and, the doorbell answering, none is held open: a change
// reaches it only because the server rings. The agent reports the doorbell on.
func TestDoorbellWithRealServer(t *testing.T) {
	rs, srv, _ := startBellServer(t)
	tok := rs.token(t, "open", api.RegistrationTokenSpec{})
	ap := newFakeApplier()
	startAgentAs(t, "uid-bell", bellAgentConfig(t, rs.url, rs.checksum, tok, "bell"), ap)
	waitFor(t, "the agent to report the doorbell on", func() bool { return rs.doorbellOf(t, "bell") == api.DoorbellOn })

	rs.applyConfigMapBundle(t, "first", "bell", "1")
	waitFor(t, "the bundle applied after a ring", func() bool { return appliedCount(ap) >= 1 })
	rs.applyConfigMapBundle(t, "first", "bell", "2")
	waitFor(t, "the changed bundle applied after a ring", func() bool { return appliedCount(ap) >= 2 })
	if n := srv.Doorbell().Stats.Rung.Load(); n < 1 {
		t.Errorf("the server rang %v times", n)
	}
}

// TestDoorbellBlocked: the agent reaches the server's HTTPS at an address where nothing
// answers UDP (a TCP relay on 127.0.0.2), as behind a firewall that drops datagrams. It
// reports the doorbell blocked and still hears of changes at once, by its HTTPS long poll.
func TestDoorbellBlocked(t *testing.T) {
	rs, srv, addr := startBellServer(t, "127.0.0.2")
	_, port, _ := net.SplitHostPort(addr)
	relay, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", port))
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2 for the relay: %v", err)
	}
	t.Cleanup(func() { relay.Close() })
	go func() {
		for {
			c, err := relay.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	tok := rs.token(t, "open", api.RegistrationTokenSpec{})
	ap := newFakeApplier()
	startAgentAs(t, "uid-blocked", bellAgentConfig(t, "https://"+net.JoinHostPort("127.0.0.2", port), rs.checksum, tok, "blocked"), ap)
	waitFor(t, "the agent to report the doorbell blocked", func() bool { return rs.doorbellOf(t, "blocked") == api.DoorbellBlocked })
	rs.applyConfigMapBundle(t, "first", "blocked", "1")
	waitFor(t, "the bundle applied by long poll", func() bool { return appliedCount(ap) >= 1 })
	if n := srv.Doorbell().Stats.Answered.Load(); n != 0 {
		t.Errorf("the server answered %v pings it should never have got", n)
	}
}

// TestDoorbellOff: an agent told not to use the doorbell reports it off and works by HTTPS.
func TestDoorbellOff(t *testing.T) {
	rs, srv, _ := startBellServer(t)
	tok := rs.token(t, "open", api.RegistrationTokenSpec{})
	ap := newFakeApplier()
	cfg := bellAgentConfig(t, rs.url, rs.checksum, tok, "quiet")
	cfg.NoDoorbell = true
	startAgentAs(t, "uid-quiet", cfg, ap)
	rs.applyConfigMapBundle(t, "first", "quiet", "1")
	waitFor(t, "the bundle applied by long poll", func() bool { return appliedCount(ap) >= 1 })
	if s := rs.doorbellOf(t, "quiet"); s != api.DoorbellOff {
		t.Errorf("doorbell reported %q, want off", s)
	}
	if n := srv.Doorbell().Stats.Received.Load(); n != 0 {
		t.Errorf("the server got %v pings from an agent told not to ping", n)
	}
}

// TestDoorbellQuietsPolls: the server tells agents to poll every second, but once the
// agent's pings are answered it polls at the far longer interval the server gives clusters
// on the doorbell: the idle fleet costs datagrams, not HTTPS requests.
func TestDoorbellQuietsPolls(t *testing.T) {
	rs, _, _ := startBellServerWith(t, server.Config{Fleet: fleet.Config{PollInterval: time.Second, BellPollInterval: time.Hour, StatusInterval: 100 * time.Millisecond}})
	tok := rs.token(t, "open", api.RegistrationTokenSpec{})
	cfg := bellAgentConfig(t, rs.url, rs.checksum, tok, "idle")
	cfg.PollInterval, cfg.PollWait = time.Second, time.Second
	startAgentAs(t, "uid-idle", cfg, nil)
	waitFor(t, "the agent to report the doorbell on", func() bool { return rs.doorbellOf(t, "idle") == api.DoorbellOn })
	last := rs.agentRequests(t, "desired")
	waitFor(t, "three seconds without a poll", func() bool {
		time.Sleep(3 * time.Second)
		n := rs.agentRequests(t, "desired")
		quiet := n == last
		last = n
		return quiet
	})
}

// TestDoorbellRekey: after rotate-keys the agent is told by its doorbell to fetch its new
// key, does, and is rung with it.
func TestDoorbellRekey(t *testing.T) {
	rs, _, _ := startBellServerWith(t, server.Config{DoorbellInterval: time.Second,
		Fleet: fleet.Config{PollInterval: time.Hour, StatusInterval: 100 * time.Millisecond}})
	tok := rs.token(t, "open", api.RegistrationTokenSpec{})
	ap := newFakeApplier()
	startAgentAs(t, "uid-rekey", bellAgentConfig(t, rs.url, rs.checksum, tok, "rekey"), ap)
	waitFor(t, "the agent to report the doorbell on", func() bool { return rs.doorbellOf(t, "rekey") == api.DoorbellOn })
	fetched := rs.agentRequests(t, "doorbell")
	if _, err := rs.admin.RotateKeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent to fetch its new doorbell key", func() bool { return rs.agentRequests(t, "doorbell") > fetched })
	rs.applyConfigMapBundle(t, "first", "rekey", "1")
	waitFor(t, "the bundle applied after a ring", func() bool { return appliedCount(ap) >= 1 })
}

// agentRequests is how many agent calls of a kind (desired, doorbell, …) the server
// answered, from its metrics.
func (rs *realServer) agentRequests(t *testing.T, call string) int {
	t.Helper()
	tc, _ := client.TLSConfig(nil, rs.checksum, false)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	req, _ := http.NewRequest("GET", rs.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer test-admin-token-0123456789")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	n := 0
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "flotilla_agent_requests_total{") && strings.Contains(line, `call="`+call+`"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int(v)
		}
	}
	return n
}
