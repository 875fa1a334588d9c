package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/server"
)

// realServer is a Flotilla server on 127.0.0.1 with its store in a temporary directory.
type realServer struct {
	url, checksum string
	admin         *client.Client
}

func startRealServer(t *testing.T) *realServer {
	t.Helper()
	return startRealServerWith(t, fleet.Config{PollInterval: time.Second, StatusInterval: 100 * time.Millisecond})
}

func startRealServerWith(t *testing.T, fcfg fleet.Config) *realServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	const admin = "test-admin-token-0123456789"
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.New(ctx, server.Config{Listen: addr, DataDir: t.TempDir(), BootstrapToken: admin,
		Logger: slog.New(slog.DiscardHandler), Fleet: fcfg})
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
	return rs
}

func (rs *realServer) token(t *testing.T, name string, spec api.RegistrationTokenSpec) string {
	t.Helper()
	raw, _ := json.Marshal(spec)
	out, err := rs.admin.Create(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace}, Spec: raw})
	if err != nil {
		t.Fatal(err)
	}
	var st api.RegistrationTokenStatus
	json.Unmarshal(out.Status, &st)
	return st.Token
}

// clientIDOf returns the client ID of the Cluster name, or "" when there is none.
func (rs *realServer) clientIDOf(t *testing.T, name string) string {
	t.Helper()
	o, err := rs.admin.Get(context.Background(), api.KindCluster, api.DefaultNamespace, name)
	if client.Code(err) == 404 {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var spec api.ClusterSpec
	json.Unmarshal(o.Spec, &spec)
	return spec.ClientID
}

// TestClusterNameWithRealServer runs the agent against a real server: --cluster-name names
// the Cluster, a name another cluster has or a bound token's other name stops the agent
// with a clear error, and a registered agent keeps its name across restarts.
func TestClusterNameWithRealServer(t *testing.T) {
	rs := startRealServer(t)
	open := rs.token(t, "open", api.RegistrationTokenSpec{})
	edge := rs.token(t, "edge", api.RegistrationTokenSpec{ClusterName: "edge-1"})
	config := func(token, name, dir string) Config {
		return Config{Server: rs.url, CAChecksum: rs.checksum, Token: token, ClusterName: name, StateDir: dir,
			Logger: testLogger(t), Version: "test", PollInterval: 20 * time.Millisecond, PollWait: 200 * time.Millisecond,
			StatusInterval: 100 * time.Millisecond, HeartbeatInterval: time.Hour, InventoryInterval: time.Hour,
			ReportDelay: 5 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	}

	// The chosen name is the Cluster's, and the agent works under it.
	dirA := t.TempDir()
	apA := newFakeApplier()
	a := startAgentAs(t, "uid-a", config(open, "prod", dirA), apA)
	waitFor(t, "Cluster prod", func() bool { return rs.clientIDOf(t, "prod") == "uid-a" })
	spec, _ := json.Marshal(map[string]any{
		"resources": []map[string]string{{"name": "cm.yaml", "content": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\n"}},
		"targets":   []map[string]any{{"clusterName": "prod"}},
	})
	if _, _, err := rs.admin.Apply(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: "for-prod", Namespace: api.DefaultNamespace}, Spec: spec}, false); err != nil {
		t.Fatal(err)
	}
	applied := func(ap *fakeApplier) func() bool {
		return func() bool {
			n := 0
			ap.get(func(ap *fakeApplier) { n = len(ap.applied) })
			return n > 0
		}
	}
	waitFor(t, "the bundle targeting prod applied", applied(apA))

	// Another cluster asking for the name stops with ErrClusterNameRefused.
	err := startAgentAs(t, "uid-b", config(open, "prod", t.TempDir()), nil).wait(20 * time.Second)
	if !errors.Is(err, ErrClusterNameRefused) || !strings.Contains(err.Error(), "taken by another cluster") {
		t.Errorf("another cluster asking for prod: %v; want %v saying it is taken", err, ErrClusterNameRefused)
	}
	if id := rs.clientIDOf(t, "prod"); id != "uid-a" {
		t.Errorf("Cluster prod now has client ID %q", id)
	}

	// A bound token registers under its name only.
	err = startAgentAs(t, "uid-c", config(edge, "edge-2", t.TempDir()), nil).wait(20 * time.Second)
	if !errors.Is(err, ErrTokenInvalid) || !strings.Contains(err.Error(), "bound to cluster") {
		t.Errorf("a token bound to edge-1 asking for edge-2: %v", err)
	}
	if rs.clientIDOf(t, "edge-2") != "" {
		t.Error("Cluster edge-2 was registered")
	}
	startAgentAs(t, "uid-c", config(edge, "edge-1", t.TempDir()), nil)
	waitFor(t, "Cluster edge-1", func() bool { return rs.clientIDOf(t, "edge-1") == "uid-c" })

	// Restarted, with its token deleted meanwhile and even with another name asked for, the
	// agent keeps its registration: the stored credential, the same Cluster.
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.admin.Delete(context.Background(), api.KindRegistrationToken, api.DefaultNamespace, "open", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.admin.Delete(context.Background(), api.KindBundle, api.DefaultNamespace, "for-prod", ""); err != nil {
		t.Fatal(err)
	}
	apA2 := newFakeApplier()
	startAgentAs(t, "uid-a", config(open, "renamed", dirA), apA2)
	if _, _, err := rs.admin.Apply(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: "for-prod-again", Namespace: api.DefaultNamespace}, Spec: spec}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restarted agent applying a bundle for prod", applied(apA2))
	if rs.clientIDOf(t, "renamed") != "" {
		t.Error("a registered agent asking for another name made a second Cluster")
	}
}

func TestClusterNameFlag(t *testing.T) {
	env := func(k string) string {
		if k == "FLOTILLA_CLUSTER_NAME" {
			return "from-env"
		}
		return ""
	}
	cfg, _, _, err := parseFlags(nil, env, &strings.Builder{})
	if err != nil || cfg.ClusterName != "from-env" {
		t.Errorf("from the environment: %q, %v", cfg.ClusterName, err)
	}
	cfg, _, _, err = parseFlags([]string{"--cluster-name", "prod-1"}, env, &strings.Builder{})
	if err != nil || cfg.ClusterName != "prod-1" {
		t.Errorf("the flag over the environment: %q, %v", cfg.ClusterName, err)
	}
	for _, bad := range []string{"Prod", "prod.eu", "prod_1", strings.Repeat("a", 64)} {
		if _, _, _, err := parseFlags([]string{"--cluster-name", bad}, env, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "--cluster-name") {
			t.Errorf("--cluster-name %q: %v; want refused", bad, err)
		}
	}
}
