package e2e_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/pg"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pg.StopShared()
	os.Exit(code)
}

const manifests = `
apiVersion: flotilla.dev/v1alpha1
kind: Cluster
metadata:
  name: edge-1
  labels: {env: prod, region: eu}
spec: {displayName: "Shop 1"}
---
apiVersion: flotilla.dev/v1alpha1
kind: Cluster
metadata:
  name: edge-2
  labels: {env: dev, region: us}
---
# Fleet's manifests apply unchanged.
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata:
  name: apps
spec:
  repo: https://git.example.com/apps.git
  paths: [simple]
  targets:
  - clusterSelector:
      matchLabels: {env: prod}
---
apiVersion: fleet.cattle.io/v1alpha1
kind: ClusterGroup
metadata: {name: prod}
spec:
  selector:
    matchLabels: {env: prod}
`

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustRun(t *testing.T, c *e2e.CLI, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := c.Run(ctxT(t), stdin, args...)
	if err != nil {
		t.Fatalf("flotilla %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// mustFail runs a command that must be refused with a message containing want.
func mustFail(t *testing.T, c *e2e.CLI, stdin, want string, args ...string) {
	t.Helper()
	out, errOut, err := c.Run(ctxT(t), stdin, args...)
	if err == nil {
		t.Fatalf("flotilla %s succeeded, want it refused:\n%s", strings.Join(args, " "), out)
	}
	if !strings.Contains(errOut, want) {
		t.Errorf("flotilla %s: stderr %q, want it to contain %q", strings.Join(args, " "), errOut, want)
	}
}

func TestServerEndToEnd(t *testing.T) {
	s := e2e.StartServer(t, e2e.ServerOptions{})
	if s.Checksum == "" || s.Token == "" {
		t.Fatalf("server did not print a CA checksum and an admin token:\n%s", s.Stdout())
	}
	testResourceFlow(t, s)

	// SIGTERM stops it cleanly.
	if err := s.Signal(t, syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatalf("server exit after SIGTERM: %v\n%s", err, s.Stderr())
	}
	if !strings.Contains(s.Stderr(), "stopped") {
		t.Errorf("no clean stop in the log:\n%s", s.Stderr())
	}

	// A restart keeps data and certificates and prints no new token.
	s2 := e2e.StartServer(t, e2e.ServerOptions{DataDir: s.DataDir})
	if s2.Checksum != s.Checksum {
		t.Errorf("CA checksum changed across restart: %s then %s", s.Checksum, s2.Checksum)
	}
	if s2.Token != "" {
		t.Errorf("restart printed a new admin token")
	}
	s2.Token = s.Token
	out := mustRun(t, s2.CLI(t), "", "get", "clusters", "-o", "name")
	if out != "cluster.flotilla.dev/edge-1\ncluster.flotilla.dev/edge-2\n" {
		t.Errorf("after restart: %q", out)
	}
}

func TestServerPostgres(t *testing.T) {
	db := pg.Start(t).NewDatabase(t)
	s := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--db", db}, Env: []string{"FLOTILLA_BOOTSTRAP_TOKEN=pg-admin-token-0123456789"}})
	if s.Token != "" {
		t.Error("with a bootstrap token the server still generated one")
	}
	s.Token = "pg-admin-token-0123456789"
	testResourceFlow(t, s)
}

func testResourceFlow(t *testing.T, s *e2e.Server) {
	c := s.CLI(t)
	out := mustRun(t, c, manifests, "apply", "-f", "-")
	for _, want := range []string{"cluster.flotilla.dev/edge-1 created", "gitrepo.flotilla.dev/apps created", "clustergroup.flotilla.dev/prod created"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output %q lacks %q", out, want)
		}
	}
	if out := mustRun(t, c, manifests, "apply", "-f", "-"); strings.Count(out, "unchanged") != 4 {
		t.Errorf("second apply: %q, want 4 unchanged", out)
	}

	// Every output format.
	table := mustRun(t, c, "", "get", "clusters")
	if !strings.HasPrefix(table, "NAME") || !strings.Contains(table, "edge-1") || strings.Contains(table, "LABELS") {
		t.Errorf("table:\n%s", table)
	}
	wide := mustRun(t, c, "", "get", "clusters", "-o", "wide", "-l", "env=prod")
	if !strings.Contains(wide, "LABELS") || !strings.Contains(wide, "env=prod,region=eu") || strings.Contains(wide, "edge-2") {
		t.Errorf("wide, env=prod:\n%s", wide)
	}
	var o api.Object
	if err := json.Unmarshal([]byte(mustRun(t, c, "", "get", "cluster", "edge-1", "-o", "json")), &o); err != nil {
		t.Fatalf("json output: %v", err)
	}
	if o.Metadata.Labels["region"] != "eu" || o.Metadata.UID == "" || o.Metadata.Generation != 1 || o.Metadata.Namespace != api.DefaultNamespace {
		t.Errorf("json output: %+v", o.Metadata)
	}
	y := mustRun(t, c, "", "get", "gitrepo", "apps", "-o", "yaml")
	// Fleet's group was accepted and normalised; defaults were applied by the server.
	for _, want := range []string{"apiVersion: flotilla.dev/v1alpha1", "pollingInterval: 15s", "repo: https://git.example.com/apps.git"} {
		if !strings.Contains(y, want) {
			t.Errorf("yaml output lacks %q:\n%s", want, y)
		}
	}
	if out := mustRun(t, c, "", "get", "clustergroups", "-o", "name"); out != "clustergroup.flotilla.dev/prod\n" {
		t.Errorf("name output: %q", out)
	}
	if out := mustRun(t, c, "", "describe", "gitrepo", "apps"); !strings.Contains(out, "Name:              apps") || !strings.Contains(out, "paths:") {
		t.Errorf("describe:\n%s", out)
	}

	// A change arrives on a watch.
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	lines := c.Stream(t, ctx, "get", "clusters", "-w", "-o", "json")
	// The initial listing comes first: wait for its end.
	waitFor(t, lines, func(l string) bool { return l == "}" })
	mustRun(t, c, strings.Replace(manifests, "region: us", "region: ap", 1), "apply", "-f", "-")
	// Keys print sorted: the object comes before the event type.
	waitFor(t, lines, func(l string) bool { return strings.Contains(l, `"region": "ap"`) })
	waitFor(t, lines, func(l string) bool { return strings.Contains(l, `"type": "MODIFIED"`) })
	cancel()

	// The store's revision moves on with the server's own status writes (the relabelled
	// clusters and their group are rolled up in the background), so what must not change is
	// checked object by object: nothing refused is created, and edge-1 keeps its spec.
	edge1 := mustRun(t, c, "", "get", "cluster", "edge-1", "-o", "jsonpath={.metadata.generation} {.metadata.labels}")
	// Bad input: each refused with a clear message, changing nothing.
	mustFail(t, c, "apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata: {name: x\n", "malformed YAML", "apply", "-f", "-")
	mustFail(t, c, "apiVersion: flotilla.dev/v1alpha1\nkind: Widget\nmetadata: {name: x}\n", `unknown kind "Widget"`, "apply", "-f", "-")
	// A valid object followed by an invalid one: neither is applied.
	mustFail(t, c, "apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata: {name: fine}\n---\napiVersion: flotilla.dev/v1alpha1\nkind: ClusterGroup\nmetadata: {name: g}\nspec: {selector: {matchLabels: {env: prod}}, bogus: 1}\n", "spec.bogus: unknown field", "apply", "-f", "-")
	mustFail(t, c, "", "invalid label selector", "get", "clusters", "-l", "env in (prod")
	stale := mustRun(t, c, "", "get", "cluster", "edge-1", "-o", "json")
	stale = strings.Replace(stale, `"env": "prod"`, `"env": "stale"`, 1)
	var so api.Object
	json.Unmarshal([]byte(stale), &so)
	so.Metadata.ResourceVersion = "1"
	staleJSON, _ := json.Marshal(so)
	mustFail(t, c, string(staleJSON), "the object has been modified", "apply", "-f", "-")
	bad := &e2e.CLI{Bin: c.Bin, Env: append(append([]string{}, c.Env...), "FLOTILLA_TOKEN=wrong-token")}
	mustFail(t, bad, "", "Unauthorized", "get", "clusters")
	mustFail(t, bad, manifests, "Unauthorized", "apply", "-f", "-")
	for _, kn := range [][2]string{{"cluster", "x"}, {"cluster", "fine"}, {"clustergroup", "g"}} {
		mustFail(t, c, "", "not found", "get", kn[0], kn[1])
	}
	if after := mustRun(t, c, "", "get", "cluster", "edge-1", "-o", "jsonpath={.metadata.generation} {.metadata.labels}"); after != edge1 {
		t.Errorf("refused requests changed edge-1: %s → %s", edge1, after)
	}
	if out, _, _ := c.Run(ctxT(t), "", "get", "cluster", "fine"); strings.Contains(out, "fine") {
		t.Error("the valid half of a refused apply was stored")
	}

	// Health is open; metrics need a token.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := hc.Get(s.URL + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", p, resp, err)
		}
	}
	resp, err := hc.Get(s.URL + "/metrics")
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token: %v %v, want 401", resp, err)
	}
	req, _ := http.NewRequest("GET", s.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"flotilla_http_requests_total", "flotilla_http_request_duration_seconds", "flotilla_store_operation_duration_seconds", `flotilla_objects{kind="Cluster"} 2`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Delete.
	if out := mustRun(t, c, "", "delete", "cluster", "edge-2"); !strings.Contains(out, "deleted") {
		t.Errorf("delete: %q", out)
	}
	mustFail(t, c, "", "not found", "get", "cluster", "edge-2")
	mustRun(t, c, "apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: edge-2\n  labels: {env: dev, region: us}\n", "apply", "-f", "-")
}

func waitFor(t *testing.T, lines <-chan string, match func(string) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("stream ended")
			}
			if match(l) {
				return
			}
		case <-timeout:
			t.Fatal("expected line did not arrive within 30s")
		}
	}
}
