package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

const testToken = "test-admin-token-0123456789"

// apiServer serves the real API over a SQLite store.
func apiServer(t *testing.T) (string, store.Store) {
	t.Helper()
	ctx := context.Background()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := sqlite.Open(ctx, t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := auth.NewAuthenticator(st)
	if _, err := a.Bootstrap(ctx, testToken); err != nil {
		t.Fatal(err)
	}
	keeper, err := secrets.Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiserver.New(st, a, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.SetHooks(api.KindSecret, keeper)
	if err := srv.EnableAccess(ctx, apiserver.Access{Authorizer: rbac.New()}, a.UserHooks()); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL, st
}

type cliT struct {
	t      *testing.T
	server string
	config string
}

func newCLI(t *testing.T) (*cliT, store.Store) {
	url, st := apiServer(t)
	return &cliT{t: t, server: url, config: filepath.Join(t.TempDir(), "none.json")}, st
}

func (c *cliT) run(ctx context.Context, stdin string, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	root := NewRoot(strings.NewReader(stdin), &out, &errOut)
	root.SetArgs(append([]string{"--server", c.server, "--token", testToken, "--config", c.config}, args...))
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func (c *cliT) must(stdin string, args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(context.Background(), stdin, args...)
	if err != nil {
		c.t.Fatalf("flotilla %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (c *cliT) fails(want string, args ...string) {
	c.t.Helper()
	out, _, err := c.run(context.Background(), "", args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		c.t.Errorf("flotilla %s: %v (output %q), want an error containing %q", strings.Join(args, " "), err, out, want)
	}
}

const gitrepoYAML = `apiVersion: fleet.cattle.io/v1alpha1
kind: GitRepo
metadata: {name: apps, labels: {team: a}}
spec: {repo: https://git.example.com/apps.git}
`

func TestLabelAnnotatePatchEdit(t *testing.T) {
	c, _ := newCLI(t)
	c.must(gitrepoYAML, "apply", "-f", "-")

	if out := c.must("", "label", "gitrepo", "apps", "env=prod"); out != "gitrepo.flotilla.dev/apps labeled\n" {
		t.Errorf("label: %q", out)
	}
	c.fails("--overwrite", "label", "gitrepo", "apps", "team=b")
	c.must("", "label", "gitrepo", "apps", "team=b", "--overwrite")
	c.must("", "label", "gitrepo", "apps", "env-")
	c.fails(`has no label "env"`, "label", "gitrepo", "apps", "env-")
	c.fails("invalid value", "label", "gitrepo", "apps", "x=not ok")
	c.must("", "annotate", "gitrepo", "apps", "note=hello world")
	if out := c.must("", "get", "gitrepo", "apps", "-o", "jsonpath={.metadata.labels.team} {.metadata.annotations.note}"); out != "b hello world" {
		t.Errorf("after label and annotate: %q", out)
	}

	c.must("", "patch", "gitrepo", "apps", "-p", `{"spec":{"branch":"main"}}`)
	c.must("", "patch", "gitrepo", "apps", "--type", "json", "-p", `[{"op":"add","path":"/spec/paths","value":["a"]}]`)
	if out := c.must("", "get", "gitrepo", "apps", "-o", "jsonpath={.spec.branch},{.spec.paths[0]}"); out != "main,a" {
		t.Errorf("after patches: %q", out)
	}
	c.fails("spec.pollingInterval", "patch", "gitrepo", "apps", "-p", `{"spec":{"pollingInterval":"soon"}}`)
	c.fails("unknown patch type", "patch", "gitrepo", "apps", "--type", "strategic", "-p", `{}`)

	// edit runs the editor on the YAML and saves what it wrote.
	t.Setenv("FLOTILLA_EDITOR", editor(t, "s/branch: main/branch: release/"))
	if out := c.must("", "edit", "gitrepo", "apps"); out != "gitrepo.flotilla.dev/apps edited\n" {
		t.Errorf("edit: %q", out)
	}
	if out := c.must("", "get", "gitrepo", "apps", "-o", "jsonpath={.spec.branch}"); out != "release" {
		t.Errorf("after edit: branch %q, want release", out)
	}
	t.Setenv("FLOTILLA_EDITOR", "true")
	if out := c.must("", "edit", "gitrepo", "apps"); !strings.Contains(out, "no changes") {
		t.Errorf("edit without changes: %q", out)
	}
	t.Setenv("FLOTILLA_EDITOR", editor(t, "s/repo:.*/colour: blue/"))
	c.fails("colour", "edit", "gitrepo", "apps")
}

// editor returns an editor command that runs a sed expression over the file.
func editor(t *testing.T, expr string) string {
	p := filepath.Join(t.TempDir(), "editor.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nsed -i '"+expr+"' \"$1\"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGetOutputs(t *testing.T) {
	c, _ := newCLI(t)
	c.must(gitrepoYAML+"---\n"+strings.ReplaceAll(gitrepoYAML, "name: apps", "name: web"), "apply", "-f", "-")
	out := c.must("", "get", "gitrepos", "--no-headers")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "apps ") || strings.Contains(out, "NAME") {
		t.Errorf("--no-headers: %q", out)
	}
	if out := c.must("", "get", "gitrepos", "-o", "name"); out != "gitrepo.flotilla.dev/apps\ngitrepo.flotilla.dev/web\n" {
		t.Errorf("-o name: %q", out)
	}
	if out := c.must("", "get", "gitrepos", "-o", "jsonpath={.items[*].metadata.name}"); out != "apps web" {
		t.Errorf("-o jsonpath: %q", out)
	}
	c.fails("invalid JSONPath", "get", "gitrepos", "-o", "jsonpath={.items[")
	// Without a kind, the kinds.
	out = c.must("", "get")
	for _, k := range api.Kinds {
		if !strings.Contains(out, k.Plural) || !strings.Contains(out, k.Kind) {
			t.Errorf("get without a kind lacks %s:\n%s", k.Kind, out)
		}
	}
	// The table's STATUS says what a new GitRepo is doing.
	if out := c.must("", "get", "gitrepo", "apps"); !strings.Contains(out, "GitUpdating") {
		t.Errorf("get gitrepo: %q, want its status", out)
	}
}

// Ctrl-C ends a watch quietly: no error, so status 0 and nothing on standard error.
func TestWatchEndsQuietly(t *testing.T) {
	c, _ := newCLI(t)
	c.must(gitrepoYAML, "apply", "-f", "-")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var errOut string
	go func() {
		var err error
		_, errOut, err = c.run(ctx, "", "get", "gitrepos", "-w")
		done <- err
	}()
	// Usually the watch has started by now; Ctrl-C during the list before it must end quietly too.
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil || errOut != "" {
			t.Errorf("get -w after Ctrl-C: %v, stderr %q; want no error", err, errOut)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("get -w did not end after its context was cancelled")
	}
}

// No flag's help names its argument after words that were meant as a quotation.
func TestFlagHelp(t *testing.T) {
	root := NewRoot(strings.NewReader(""), io.Discard, io.Discard)
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{cmd.LocalFlags(), cmd.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if name, _ := pflag.UnquoteUsage(f); strings.Contains(name, " ") {
					t.Errorf("%s --%s: help shows the argument as %q", cmd.CommandPath(), f.Name, name)
				}
			})
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)

	var out bytes.Buffer
	root = NewRoot(strings.NewReader(""), &out, &out)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil || !strings.Contains(out.String(), Version) {
		t.Errorf("--version: %v %q", err, out.String())
	}
	root = NewRoot(strings.NewReader(""), io.Discard, io.Discard)
	root.SetArgs([]string{"-v"})
	if err := root.Execute(); err == nil {
		t.Error("-v was accepted; only --version prints the version")
	}
}

func TestDescribeConditionsOnce(t *testing.T) {
	status, _ := json.Marshal(api.GitRepoStatus{Commit: "abc", Conditions: []api.Condition{{Type: "Accepted", Status: "False", Reason: "Invalid", Message: "bad fleet.yaml"}}})
	var out bytes.Buffer
	if err := describe(&out, &api.Object{TypeMeta: api.TypeMeta{Kind: api.KindGitRepo}, Metadata: api.ObjectMeta{Name: "apps"}, Status: status}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "bad fleet.yaml"); n != 1 {
		t.Errorf("the condition is printed %d times:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "commit: abc") {
		t.Errorf("the rest of the status is missing:\n%s", out.String())
	}
}

func TestKubeconfig(t *testing.T) {
	c, _ := newCLI(t)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o600)
	out := c.must("", "kubeconfig", "--ca-file", ca, "-n", "team-a")
	for _, want := range []string{"server: " + c.server, "token: " + testToken, "namespace: team-a", "certificate-authority-data:"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubeconfig lacks %q:\n%s", want, out)
		}
	}
	file := filepath.Join(t.TempDir(), "kubeconfig")
	c.must("", "kubeconfig", "--ca-file", ca, "-o", file)
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig file: %v %v, want mode 0600", fi, err)
	}
	c.fails("CA", "kubeconfig")
}

// A Secret in Kubernetes' shape, as Fleet users write them, applies unchanged and is stored
// as Flotilla's sealed Secret.
func TestApplyCoreV1Secret(t *testing.T) {
	c, st := newCLI(t)
	const secret = `apiVersion: v1
kind: Secret
metadata: {name: git-auth}
type: kubernetes.io/basic-auth
stringData: {username: deploy, password: hunter2-secret}
`
	if out := c.must(secret, "apply", "-f", "-"); out != "secret.flotilla.dev/git-auth created\n" {
		t.Errorf("apply: %q", out)
	}
	if out := c.must(secret, "apply", "-f", "-"); !strings.Contains(out, "git-auth") {
		t.Errorf("apply again: %q", out)
	}
	stored, err := st.Get(context.Background(), store.Key{Kind: api.KindSecret, Namespace: api.DefaultNamespace, Name: "git-auth"})
	if err != nil {
		t.Fatal(err)
	}
	var spec api.SecretSpec
	json.Unmarshal(stored.Spec, &spec)
	if spec.Type != api.SecretTypeBasicAuth || spec.Sealed == "" || strings.Contains(string(stored.Spec), "hunter2") {
		t.Errorf("stored %s, want a sealed basic-auth Secret", stored.Spec)
	}
	if out := c.must("", "get", "secret", "git-auth", "-o", "yaml"); strings.Contains(out, "hunter2") || !strings.Contains(out, api.SecretRedacted) {
		t.Errorf("get shows:\n%s", out)
	}
	c.must(secret, "delete", "-f", "-")
	out, _, err := c.run(context.Background(), "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nvalue: y\n", "apply", "-f", "-")
	if err == nil || !strings.Contains(err.Error(), "value") {
		t.Errorf("a Secret with an unknown field: %v %q, want an error naming it", err, out)
	}
}
