package e2e_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/kube"
)

// kubectlT runs the real kubectl against one Flotilla server.
type kubectlT struct {
	t    *testing.T
	bin  string
	env  []string
	home string
}

func (k *kubectlT) run(stdin string, args ...string) (string, error) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.bin, append([]string{"--cache-dir", filepath.Join(k.home, "cache")}, args...)...)
	cmd.Env = append(os.Environ(), k.env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (k *kubectlT) must(stdin string, args ...string) string {
	k.t.Helper()
	out, err := k.run(stdin, args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (k *kubectlT) fails(want string, stdin string, args ...string) {
	k.t.Helper()
	out, err := k.run(stdin, args...)
	if err == nil || !strings.Contains(out, want) {
		k.t.Errorf("kubectl %s: %v\n%s\nwant a failure mentioning %q", strings.Join(args, " "), err, out, want)
	}
}

func contains(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
}

const kubectlManifests = `
apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata:
  name: apps
spec:
  repo: https://git.example.com/apps.git
  branch: main
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
---
apiVersion: v1
kind: Secret
metadata: {name: git-auth}
type: kubernetes.io/basic-auth
stringData: {username: deploy, password: hunter2-kubectl}
`

// The real kubectl, with the kubeconfig `flotilla kubeconfig` writes, works on Flotilla's
// kinds: discovery, explain, get with the server's columns and every output, watch, client-
// and server-side apply of Fleet's manifests and Kubernetes Secrets, label, annotate, patch,
// edit and delete.
func TestKubectl(t *testing.T) {
	kubectl := filepath.Join(kube.Binaries(t), "kubectl")
	srv := e2e.StartServer(t, e2e.ServerOptions{})
	home := t.TempDir()
	kubeconfig := filepath.Join(home, "kubeconfig")
	mustRun(t, srv.CLI(t), "", "kubeconfig", "-o", kubeconfig)
	k := &kubectlT{t: t, bin: kubectl, home: home, env: []string{"KUBECONFIG=" + kubeconfig, "HOME=" + home}}

	out := k.must("", "api-resources")
	contains(t, "api-resources", out, "gitrepos", "gr", api.APIVersion, "GitRepo", api.FleetAPIVersion, "secrets")
	contains(t, "explain", k.must("", "explain", "gitrepos.spec"), "repo", "pollingInterval", "targets")

	// Client-side apply of Fleet's manifests and a Kubernetes Secret, unchanged.
	out = k.must(kubectlManifests, "apply", "-f", "-")
	contains(t, "apply", out, "gitrepo.fleet.cattle.io/apps created", "clustergroup.fleet.cattle.io/prod created", "secret/git-auth created")
	out = k.must(kubectlManifests, "apply", "-f", "-")
	contains(t, "second apply", out, "gitrepo.fleet.cattle.io/apps unchanged", "clustergroup.fleet.cattle.io/prod unchanged")
	out = k.must(strings.Replace(kubectlManifests, "branch: main", "branch: release", 1), "apply", "-f", "-")
	contains(t, "apply of a change", out, "gitrepo.fleet.cattle.io/apps configured")
	// Strict validation by the server: an unknown field is named and nothing changes.
	k.fails("colour", strings.Replace(kubectlManifests, "branch: main", "colour: blue", 1), "apply", "-f", "-")

	// get prints the columns `flotilla get` prints.
	out = k.must("", "get", "gitrepos")
	contains(t, "get gitrepos", out, "NAME", "REPO", "COMMIT", "BUNDLES-READY", "STATUS", "AGE", "apps", "https://git.example.com/apps.git")
	contains(t, "get -o wide", k.must("", "get", "gitrepos", "-o", "wide"), "BRANCH", "release")
	contains(t, "get -A", k.must("", "get", "clustergroups", "-A"), "NAMESPACE", api.DefaultNamespace, "prod")
	contains(t, "get -o yaml", k.must("", "get", "gitrepo", "apps", "-o", "yaml"), "repo: https://git.example.com/apps.git", "kind: GitRepo")
	contains(t, "get -o json", k.must("", "get", "gitrepos", "-o", "json"), `"items": [`, `"branch": "release"`)
	if out := k.must("", "get", "gitrepo", "apps", "-o", "jsonpath={.spec.branch}"); out != "release" {
		t.Errorf("-o jsonpath: %q", out)
	}
	contains(t, "custom-columns", k.must("", "get", "gitrepos", "-o", "custom-columns=N:.metadata.name,R:.spec.repo"), "apps", "https://git.example.com/apps.git")
	contains(t, "get flotilla", k.must("", "get", "flotilla"), "gitrepo.flotilla.dev/apps", "clustergroup.flotilla.dev/prod")

	// The Secret's values never come back, not even in kubectl's annotation.
	secret := k.must("", "get", "secret", "git-auth", "-o", "yaml")
	if strings.Contains(secret, "hunter2") || strings.Contains(secret, "ZGVwbG95") {
		t.Errorf("the Secret shows a value:\n%s", secret)
	}
	contains(t, "get secret", secret, "type: kubernetes.io/basic-auth", api.CoreV1Redacted)
	contains(t, "describe secret", k.must("", "describe", "secret", "git-auth"), "password:  12 bytes")

	// label, annotate, patch (merge and JSON), edit.
	contains(t, "label", k.must("", "label", "gitrepo", "apps", "env=prod"), "labeled")
	contains(t, "annotate", k.must("", "annotate", "gitrepo", "apps", "owner=team-a"), "annotated")
	k.must("", "patch", "gitrepo", "apps", "--type", "merge", "-p", `{"spec":{"paused":true}}`)
	k.must("", "patch", "gitrepo", "apps", "--type", "json", "-p", `[{"op":"replace","path":"/spec/paths","value":["a","b"]}]`)
	k.fails("not supported", "", "patch", "gitrepo", "apps", "-p", `{"spec":{"paused":false}}`)
	editor := filepath.Join(home, "editor.sh")
	os.WriteFile(editor, []byte("#!/bin/sh\nsed -i 's/branch: release/branch: edited/' \"$1\"\n"), 0o700)
	k.env = append(k.env, "KUBE_EDITOR="+editor)
	contains(t, "edit", k.must("", "edit", "gitrepo", "apps"), "edited")
	if out := k.must("", "get", "gitrepo", "apps", "-o", "jsonpath={.metadata.labels.env} {.metadata.annotations.owner} {.spec.paths} {.spec.paused} {.spec.branch}"); out != `prod team-a ["a","b"] true edited` {
		t.Errorf("after label, annotate, patch and edit: %q", out)
	}

	// Server-side apply: the manager's fields, conflicts with another's, forced.
	const cg = "apiVersion: flotilla.dev/v1alpha1\nkind: ClusterGroup\nmetadata: {name: edge}\nspec:\n  selector:\n    matchLabels: {tier: %s}\n"
	contains(t, "apply --server-side", k.must(strings.Replace(cg, "%s", "edge", 1), "apply", "--server-side", "-f", "-"), "clustergroup.flotilla.dev/edge serverside-applied")
	k.fails("conflict", strings.Replace(cg, "%s", "core", 1), "apply", "--server-side", "--field-manager", "other", "-f", "-")
	k.must(strings.Replace(cg, "%s", "core", 1), "apply", "--server-side", "--field-manager", "other", "--force-conflicts", "-f", "-")
	if out := k.must("", "get", "clustergroup", "edge", "-o", "jsonpath={.spec.selector.matchLabels.tier}"); out != "core" {
		t.Errorf("after the forced apply: %q", out)
	}

	// get -w prints changes as table rows.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := exec.CommandContext(ctx, kubectl, "--cache-dir", filepath.Join(home, "cache"), "get", "gitrepos", "-w")
	w.Env = append(os.Environ(), k.env...)
	stdout, _ := w.StdoutPipe()
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.Contains(lines.Text(), "NAME") || !lines.Scan() || !strings.HasPrefix(lines.Text(), "apps ") {
		t.Fatalf("get -w did not start with the table: %q", lines.Text())
	}
	k.must(strings.Replace(strings.Split(kubectlManifests, "---")[0], "name: apps", "name: web", 1), "apply", "-f", "-")
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "web ") {
		t.Errorf("get -w: %q, want a row for the new GitRepo", lines.Text())
	}
	cancel()
	w.Wait()

	contains(t, "delete", k.must("", "delete", "gitrepo", "apps", "web"), `"apps" deleted`, `"web" deleted`)
	k.must(kubectlManifests, "delete", "-f", "-", "--ignore-not-found")
	if out := mustRun(t, srv.CLI(t), "", "get", "secrets", "-o", "name"); out != "" {
		t.Errorf("after delete -f, secrets left: %q", out)
	}
}
