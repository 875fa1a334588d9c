package e2e_test

import (
	"path/filepath"
	"strings"
	"testing"

	"flotilla.dev/internal/e2e"
)

// TestQuickStart runs the README's quick-start commands that need no cluster and no simulator:
// build both binaries, start the server, log in with its admin token and CA checksum, apply
// docs/examples/fleet.yaml, list clusters and bundles, create an agent token, and render
// docs/examples/repo for a production cluster. A change that breaks the documented commands or
// examples fails here.
func TestQuickStart(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	e2e.Binary(t, "flotilla-agent") // `make build` builds both
	s := e2e.StartServer(t, e2e.ServerOptions{})
	if s.Checksum == "" || s.Token == "" {
		t.Fatalf("the server printed no CA checksum or admin token:\n%s", s.Stdout())
	}
	// Only the config file written by login: no token or server in the environment.
	c := &e2e.CLI{Bin: e2e.Binary(t, "flotilla"), Env: []string{"FLOTILLA_CONFIG=" + filepath.Join(t.TempDir(), "cli.json")}}
	mustRun(t, c, "", "login", "--server", s.URL, "--token", s.Token, "--ca-checksum", s.Checksum)

	out := mustRun(t, c, "", "apply", "-f", filepath.Join(root, "docs", "examples", "fleet.yaml"))
	for _, want := range []string{"production", "hello"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply of docs/examples/fleet.yaml does not mention %q:\n%s", want, out)
		}
	}
	mustRun(t, c, "", "get", "clusters", "-l", "env=prod", "-o", "wide")
	if out := mustRun(t, c, "", "get", "bundles"); !strings.Contains(out, "hello") {
		t.Errorf("get bundles lacks the example bundle hello:\n%s", out)
	}
	if out := mustRun(t, c, "", "token", "create"); strings.TrimSpace(out) == "" {
		t.Error("token create printed nothing")
	}

	// A user who may see the production clusters only, as the README shows.
	const pass = "a long demo passphrase\n"
	mustRun(t, c, pass, "user", "create", "alice", "--password-stdin")
	mustRun(t, c, "", "rolebinding", "create", "alice-prod", "--role", "cluster-member", "--user", "alice", "--cluster-selector", "env=prod")
	if out := mustRun(t, c, "", "auth", "can-i", "list", "clusters", "--as", "alice"); strings.TrimSpace(out) != "yes" {
		t.Errorf("can-i list clusters --as alice: %q", out)
	}
	aliceCfg := filepath.Join(t.TempDir(), "alice.json")
	mustRun(t, c, pass, "login", "--config", aliceCfg, "--server", s.URL, "--ca-checksum", s.Checksum, "--username", "alice", "--password-stdin")
	mustRun(t, c, "", "get", "clusters", "--config", aliceCfg)

	out = mustRun(t, c, "", "render", filepath.Join(root, "docs", "examples", "repo"), "-l", "env=prod")
	for _, want := range []string{"kind: Deployment", "name: web", "namespace: web", "app: web", "kind: ConfigMap"} {
		if !strings.Contains(out, want) {
			t.Errorf("render of docs/examples/repo lacks %q:\n%s", want, out)
		}
	}
}
