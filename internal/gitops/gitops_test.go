package gitops_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/provenance"
	repo "helm.sh/helm/v4/pkg/repo/v1"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/gitops"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/testenv/gitserver"
)

const ns = api.DefaultNamespace

// env is a controller over a real SQLite store, with its webhook endpoint on loopback.
type env struct {
	t      *testing.T
	st     *sqlite.Store
	keeper *secrets.Keeper
	ctrl   *gitops.Controller
	hook   *httptest.Server
	dir    string
}

func newEnv(t *testing.T, tune func(*gitops.Config)) *env {
	t.Helper()
	gitserver.Git(t)
	ctx, cancel := context.WithCancel(context.Background())
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	scfg := sqlstore.DefaultConfig()
	scfg.Logger = quiet
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "db"), scfg)
	if err != nil {
		t.Fatal(err)
	}
	keeper, err := secrets.Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	cfg := gitops.Config{Store: st, Contents: st, Secrets: keeper, Dir: filepath.Join(dir, "git"), Logger: quiet}
	if tune != nil {
		tune(&cfg)
	}
	e := &env{t: t, st: st, keeper: keeper, ctrl: gitops.New(cfg), dir: cfg.Dir}
	done := make(chan struct{})
	go func() {
		e.ctrl.Run(ctx)
		close(done)
	}()
	mux := http.NewServeMux()
	e.ctrl.Register(mux)
	e.hook = httptest.NewServer(mux)
	t.Cleanup(func() {
		e.hook.Close()
		cancel()
		<-done
		st.Close()
	})
	return e
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// put creates or updates an object as the API server would: validated, hooks run,
// generation moved when the spec changes.
func (e *env) put(kind, name string, spec any, hooks apiserver.Hooks) {
	e.t.Helper()
	ctx := ctxT(e.t)
	raw, _ := json.Marshal(spec)
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kind}, Metadata: api.ObjectMeta{Name: name, Namespace: ns}, Spec: raw}
	if err := resource.Prepare(obj); err != nil {
		e.t.Fatal(err)
	}
	cur, err := e.st.Get(ctx, store.KeyOf(obj))
	if errors.Is(err, store.ErrNotFound) {
		if hooks != nil {
			if err := hooks.BeforeCreate(ctx, obj, false); err != nil {
				e.t.Fatal(err)
			}
		}
		now := time.Now().UTC()
		obj.Metadata.UID, obj.Metadata.Generation, obj.Metadata.CreationTimestamp = apiserver.NewUID(), 1, &now
		if _, err := e.st.Create(ctx, obj); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if err != nil {
		e.t.Fatal(err)
	}
	if hooks != nil {
		if err := hooks.BeforeUpdate(ctx, cur, obj, false); err != nil {
			e.t.Fatal(err)
		}
	}
	next := cur.DeepCopy()
	next.Spec = obj.Spec
	next.Metadata.Generation++
	if _, err := e.st.Update(ctx, next); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) secret(name, typ string, data map[string]string) {
	e.t.Helper()
	e.put(api.KindSecret, name, api.SecretSpec{Type: typ, StringData: data}, e.keeper)
}

func (e *env) gitRepo(name string, spec api.GitRepoSpec) {
	e.t.Helper()
	if spec.PollingInterval == "" {
		spec.PollingInterval = "1h" // tests trigger fetches themselves unless they test polling
	}
	e.put(api.KindGitRepo, name, spec, nil)
}

func (e *env) status(name string) api.GitRepoStatus {
	e.t.Helper()
	obj, err := e.st.Get(ctxT(e.t), store.Key{Kind: api.KindGitRepo, Namespace: ns, Name: name})
	if err != nil {
		e.t.Fatal(err)
	}
	var st api.GitRepoStatus
	json.Unmarshal(obj.Status, &st)
	return st
}

// wait polls the GitRepo's status until cond holds.
func (e *env) wait(name, what string, cond func(api.GitRepoStatus) bool) api.GitRepoStatus {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var st api.GitRepoStatus
	for time.Now().Before(deadline) {
		if st = e.status(name); cond(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	raw, _ := json.MarshalIndent(st, "", "  ")
	e.t.Fatalf("GitRepo %s: %s never happened; status:\n%s", name, what, raw)
	return st
}

func (e *env) waitCommit(name, commit string) api.GitRepoStatus {
	e.t.Helper()
	return e.wait(name, "commit "+commit[:12]+" deployed", func(st api.GitRepoStatus) bool { return st.Commit == commit && st.Error == "" })
}

func (e *env) bundles(gitrepo string) map[string]*api.Object {
	e.t.Helper()
	res, err := e.st.List(ctxT(e.t), store.ListOptions{Kind: api.KindBundle, Namespace: ns})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]*api.Object{}
	for _, raw := range res.Items {
		b, _ := store.Decode(raw)
		if b.Metadata.Labels[gitops.LabelGitRepo] == gitrepo {
			out[b.Metadata.Name] = b
		}
	}
	return out
}

func (e *env) content(b *api.Object) bundle.Files {
	e.t.Helper()
	var spec api.BundleSpec
	json.Unmarshal(b.Spec, &spec)
	data, err := e.st.GetContent(ctxT(e.t), spec.ContentHash)
	if err != nil {
		e.t.Fatalf("content of bundle %s: %v", b.Metadata.Name, err)
	}
	files, err := bundle.Unpack(data, bundle.DefaultLimits())
	if err != nil {
		e.t.Fatal(err)
	}
	return files
}

func configMap(name, v string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  v: %q\n", name, v)
}

func randomText(n int) string {
	b := make([]byte, n/2)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// A GitRepo over HTTPS-style basic auth: the first fetch clones, later ones transfer only new
// objects; each commit updates the bundles it changes, leaves the others alone, and a removed
// path removes its bundle; polling picks up pushes; deleting the GitRepo deletes its bundles.
func TestGitRepoLifecycle(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "fleet")
	repo.WriteFiles(map[string]string{
		"apps/web/cm.yaml": configMap("web", "1"),
		"apps/db/fleet.yaml": "defaultNamespace: db\nlabels: {tier: data}\n" +
			"targetCustomizations:\n- name: prod\n  clusterSelector: {matchLabels: {env: prod}}\n  namespace: db-prod\n",
		"apps/db/cm.yaml": configMap("db", "1"),
		"docs/README.md":  "not a bundle: outside spec.paths\n",
		// Incompressible, so that a second full clone would show in the bytes served.
		"assets/blob.txt": randomText(400 << 10),
	})
	c1 := repo.Commit("first")
	e.secret("git-creds", api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
	e.gitRepo("fleet", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", Paths: []string{"apps/*"}, ClientSecretName: "git-creds",
		Targets: []api.GitTarget{{Name: "edge", ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"fleet": "edge"}}}}})

	st := e.waitCommit("fleet", c1)
	if want := []string{"fleet-apps-db", "fleet-apps-web"}; !slices.Equal(st.Bundles, want) {
		t.Errorf("status.bundles = %v, want %v", st.Bundles, want)
	}
	cloned := gs.UploadedBytes()
	bs := e.bundles("fleet")
	if len(bs) != 2 {
		t.Fatalf("bundles %v, want fleet-apps-db and fleet-apps-web", slices.Sorted(maps.Keys(bs)))
	}
	db := bs["fleet-apps-db"]
	wantLabels := map[string]string{gitops.LabelRepoName: "fleet", gitops.LabelGitRepo: "fleet", gitops.LabelCommit: c1, "tier": "data"}
	if !maps.Equal(db.Metadata.Labels, wantLabels) {
		t.Errorf("labels %v, want %v", db.Metadata.Labels, wantLabels)
	}
	var spec api.BundleSpec
	json.Unmarshal(db.Spec, &spec)
	if spec.DefaultNamespace != "db" || len(spec.Targets) != 2 || spec.Targets[0].Name != "prod" || spec.Targets[1].Name != "edge" ||
		len(spec.TargetRestrictions) != 1 || spec.TargetRestrictions[0].Name != "edge" {
		t.Errorf("bundle spec %+v: want defaultNamespace db, targets [prod edge], restriction edge", spec)
	}
	if files := e.content(db); !slices.Equal(files.Names(), []string{"cm.yaml"}) {
		t.Errorf("db content %v", files.Names())
	}
	web := bs["fleet-apps-web"]

	// A second commit changes db only.
	repo.Write("apps/db/cm.yaml", configMap("db", "2"))
	c2 := repo.Commit("db v2")
	start := time.Now()
	e.ctrl.Trigger(ns, "fleet")
	e.waitCommit("fleet", c2)
	t.Logf("clone: %d bytes; incremental fetch of one commit: %d bytes, deployed in %v", cloned, gs.UploadedBytes()-cloned, time.Since(start).Round(time.Millisecond))
	if inc := gs.UploadedBytes() - cloned; inc*20 > cloned {
		t.Errorf("second fetch transferred %d bytes after a clone of %d: not incremental", inc, cloned)
	}
	bs = e.bundles("fleet")
	if got := bs["fleet-apps-web"]; got.Metadata.ResourceVersion != web.Metadata.ResourceVersion {
		t.Errorf("bundle web was rewritten by a commit that did not change it")
	}
	if got := bs["fleet-apps-db"]; got.Metadata.Generation != 2 || !strings.Contains(string(e.content(got)["cm.yaml"]), `"2"`) {
		t.Errorf("bundle db: generation %d, content %q; want 2 and the new ConfigMap", got.Metadata.Generation, e.content(got)["cm.yaml"])
	}
	// A fetch with nothing new asks for the refs and transfers no pack.
	bytesBefore, reqBefore := gs.UploadedBytes(), gs.Requests()
	e.ctrl.Trigger(ns, "fleet")
	for deadline := time.Now().Add(10 * time.Second); gs.Requests() == reqBefore && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if gs.Requests() == reqBefore || gs.UploadedBytes() != bytesBefore {
		t.Errorf("fetch without a new commit: %d requests, %d pack bytes; want refs only", gs.Requests()-reqBefore, gs.UploadedBytes()-bytesBefore)
	}
	if clones, _ := filepath.Glob(filepath.Join(e.dir, ns, "fleet-*")); len(clones) != 1 {
		t.Errorf("local clones %v, want one kept between fetches", clones)
	}

	// Removing a path removes its bundle.
	repo.Remove("apps/web")
	c3 := repo.Commit("drop web")
	e.ctrl.Trigger(ns, "fleet")
	st = e.waitCommit("fleet", c3)
	if bs = e.bundles("fleet"); len(bs) != 1 || bs["fleet-apps-db"] == nil || !slices.Equal(st.Bundles, []string{"fleet-apps-db"}) {
		t.Errorf("after removing apps/web: bundles %v, status %v; want only fleet-apps-db", slices.Sorted(maps.Keys(bs)), st.Bundles)
	}

	// Polling: a spec change is synced at once, and a push is found without a trigger.
	e.gitRepo("fleet", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", Paths: []string{"apps/*"}, ClientSecretName: "git-creds", PollingInterval: "1s"})
	e.wait("fleet", "new generation observed", func(st api.GitRepoStatus) bool { return st.ObservedGeneration == 2 })
	if bs = e.bundles("fleet"); len(bs["fleet-apps-db"].Spec) == 0 || strings.Contains(string(bs["fleet-apps-db"].Spec), "edge") {
		t.Errorf("GitRepo targets removed, but the bundle still has them: %s", bs["fleet-apps-db"].Spec)
	}
	repo.Write("apps/db/cm.yaml", configMap("db", "4"))
	c4 := repo.Commit("db v4")
	e.waitCommit("fleet", c4)
	if st := e.status("fleet"); st.LastPollingTime == nil || time.Since(*st.LastPollingTime) > time.Minute {
		t.Errorf("lastPollingTime %v", st.LastPollingTime)
	}

	// Deleting the GitRepo deletes its bundles and its clone.
	if _, err := e.st.Delete(ctxT(t), store.Key{Kind: api.KindGitRepo, Namespace: ns, Name: "fleet"}, ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(e.bundles("fleet")) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if bs := e.bundles("fleet"); len(bs) > 0 {
		t.Errorf("bundles %v left after the GitRepo was deleted", slices.Sorted(maps.Keys(bs)))
	}
	if clones, _ := filepath.Glob(filepath.Join(e.dir, ns, "fleet-*")); len(clones) != 0 {
		t.Errorf("clones %v left after the GitRepo was deleted", clones)
	}
}

func TestGitRepoAuthentication(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "private")
	repo.Write("cm.yaml", configMap("x", "1"))
	c1 := repo.Commit("first")
	const wrong = "not-the-password-42"
	tests := []struct {
		name   string
		secret map[string]string
		want   string
	}{
		{"no secret", nil, "authentication required"},
		{"wrong password", map[string]string{"username": gs.User, "password": wrong}, "authentication failed"},
		{"token", map[string]string{"username": gs.User, "token": gs.Password}, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("private-%d", i)
			spec := api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main"}
			if tt.secret != nil {
				e.secret(name, api.SecretTypeBasicAuth, tt.secret)
				spec.ClientSecretName = name
			}
			e.gitRepo(name, spec)
			if tt.want == "" {
				e.waitCommit(name, c1)
				return
			}
			st := e.wait(name, "an error", func(st api.GitRepoStatus) bool { return st.Error != "" })
			if !strings.Contains(st.Error, tt.want) || strings.Contains(st.Error, wrong) || strings.Contains(st.Error, gs.Password) {
				t.Errorf("status.error %q: want it to say %q and hold no credential", st.Error, tt.want)
			}
			if c := condition(st, "GitPolling"); c == nil || c.Status != "False" || c.Message != st.Error {
				t.Errorf("GitPolling condition %+v", c)
			}
			if len(e.bundles(name)) != 0 {
				t.Error("bundles made without a fetch")
			}
			// Fixing the secret: the next fetch succeeds and clears the error.
			e.secret(name, api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
			e.gitRepo(name, api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: name})
			e.waitCommit(name, c1)
		})
	}
}

func condition(st api.GitRepoStatus, typ string) *api.Condition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			return &st.Conditions[i]
		}
	}
	return nil
}

// A commit that cannot become bundles changes no bundle: what was deployed keeps running, and
// the GitRepo's status names the file at fault.
func TestBadCommitsKeepBundles(t *testing.T) {
	e := newEnv(t, func(c *gitops.Config) {
		c.MaxRepoBytes = 3 << 20
		c.Limits = bundle.Limits{MaxFiles: 100, MaxFileBytes: 1 << 20, MaxBytes: 1 << 20}
	})
	gs := gitserver.Start(t)
	chart := map[string]string{
		"apps/web/chart/Chart.yaml":          "apiVersion: v2\nname: web\nversion: 0.1.0\n",
		"apps/web/chart/templates/cm.yaml":   "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: {{ .Values.v | quote }}}\n",
		"apps/web/fleet.yaml":                "helm:\n  chart: ./chart\n  values: {v: one}\n",
		"apps/api/cm.yaml":                   configMap("api", "1"),
		"apps/kust/kustomization.yaml":       "resources: [cm.yaml]\n",
		"apps/kust/cm.yaml":                  configMap("kust", "1"),
		"apps/web/chart/templates/NOTES.txt": "web\n",
	}
	tests := []struct {
		name   string
		change func(r *gitserver.Repo)
		want   []string
	}{
		{"invalid fleet.yaml", func(r *gitserver.Repo) {
			r.Write("apps/web/fleet.yaml", "helm:\n  chart: ./chart\n  valuez: {v: two}\n")
		},
			[]string{"apps/web/fleet.yaml", "valuez"}},
		{"malformed fleet.yaml", func(r *gitserver.Repo) { r.Write("apps/api/fleet.yaml", "namespace: [\n") },
			[]string{"apps/api/fleet.yaml"}},
		{"chart fails to render", func(r *gitserver.Repo) {
			r.Write("apps/web/chart/templates/bad.yaml", "{{ fail \"the chart refuses\" }}\n")
		}, []string{"templates/bad.yaml", "the chart refuses", "apps-web (path apps/web)"}},
		{"kustomize error", func(r *gitserver.Repo) {
			r.Write("apps/kust/kustomization.yaml", "resources: [cm.yaml, missing.yaml]\n")
		},
			[]string{"apps-kust (path apps/kust)", "kustomization.yaml", "missing.yaml"}},
		{"malformed manifest", func(r *gitserver.Repo) { r.Write("apps/api/extra.yaml", "kind: [\n") },
			[]string{"extra.yaml"}},
		{"symlink out of the repository", func(r *gitserver.Repo) { r.Symlink("apps/api/passwd.yaml", "../../../../../../etc/passwd") },
			[]string{"apps/api/passwd.yaml"}},
		{"oversize bundle", func(r *gitserver.Repo) { r.Write("apps/api/big.yaml", "# "+randomText(1200<<10)+"\n") },
			[]string{"too large", "big.yaml"}},
		{"oversize repository", func(r *gitserver.Repo) {
			// Two files, each within the limit a fetch puts on one object, over it together.
			r.Write("assets/huge.txt", randomText(2<<20)).Write("assets/huge2.txt", randomText(2<<20))
		},
			[]string{"repository too large", "assets/huge2.txt"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			repo := gs.NewRepo(t, fmt.Sprintf("bad-%d", i))
			repo.WriteFiles(chart)
			good := repo.Commit("good")
			name := fmt.Sprintf("bad-%d", i)
			e.secret(name, api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
			e.gitRepo(name, api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", Paths: []string{"apps/*"}, ClientSecretName: name})
			e.waitCommit(name, good)
			before := e.bundles(name)
			if len(before) != 3 {
				t.Fatalf("good commit made bundles %v", slices.Sorted(maps.Keys(before)))
			}

			tt.change(repo)
			bad := repo.Commit("bad")
			e.ctrl.Trigger(ns, name)
			st := e.wait(name, "an error", func(st api.GitRepoStatus) bool { return st.Error != "" })
			for _, w := range tt.want {
				if !strings.Contains(st.Error, w) {
					t.Errorf("status.error %q does not mention %q", st.Error, w)
				}
			}
			if !strings.Contains(st.Error, bad[:12]) || strings.Contains(st.Error, e.dir) {
				t.Errorf("status.error %q: want the commit named and no server paths", st.Error)
			}
			if st.Commit != good {
				t.Errorf("status.commit %s, want the last good commit %s", st.Commit, good)
			}
			if c := condition(st, "Accepted"); c == nil || c.Status != "False" {
				t.Errorf("Accepted condition %+v, want False", c)
			}
			after := e.bundles(name)
			for n, b := range before {
				if a := after[n]; a == nil || a.Metadata.ResourceVersion != b.Metadata.ResourceVersion {
					t.Errorf("bundle %s changed by a bad commit", n)
				}
			}
			if len(after) != len(before) {
				t.Errorf("bundles %v after a bad commit, want %v", slices.Sorted(maps.Keys(after)), slices.Sorted(maps.Keys(before)))
			}
		})
	}
}

// A pinned revision (a tag or a commit) is deployed whatever the branch does; SSH with a
// private key and known_hosts fetches like HTTP does.
func TestPinnedRevisionOverSSH(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	ssh := gs.StartSSH(t)
	repo := gs.NewRepo(t, "pinned")
	repo.Write("cm.yaml", configMap("p", "1"))
	c1 := repo.Commit("one")
	repo.Tag("v1")
	repo.Write("cm.yaml", configMap("p", "2"))
	c2 := repo.Commit("two")

	e.secret("ssh", api.SecretTypeSSHAuth, map[string]string{"ssh-privatekey": string(ssh.ClientKey), "known_hosts": string(ssh.KnownHosts)})
	e.gitRepo("by-tag", api.GitRepoSpec{Repo: ssh.URL("pinned"), Revision: "v1", ClientSecretName: "ssh"})
	e.waitCommit("by-tag", c1)
	e.gitRepo("by-hash", api.GitRepoSpec{Repo: ssh.URL("pinned"), Revision: c1, ClientSecretName: "ssh"})
	e.waitCommit("by-hash", c1)
	e.gitRepo("by-branch", api.GitRepoSpec{Repo: ssh.URL("pinned"), Branch: "main", ClientSecretName: "ssh"})
	e.waitCommit("by-branch", c2)

	// Moving the tag moves the deployment.
	repo.Tag("v1")
	e.ctrl.Trigger(ns, "by-tag")
	e.waitCommit("by-tag", c2)
	if st := e.status("by-hash"); st.Commit != c1 {
		t.Errorf("pinned commit moved to %s", st.Commit)
	}

	// A server whose key is not in known_hosts is refused; so is a secret without known_hosts.
	other := gs.StartSSH(t)
	e.secret("ssh-wrong-host", api.SecretTypeSSHAuth, map[string]string{"ssh-privatekey": string(ssh.ClientKey), "known_hosts": string(other.KnownHosts)})
	e.gitRepo("wrong-host", api.GitRepoSpec{Repo: ssh.URL("pinned"), Branch: "main", ClientSecretName: "ssh-wrong-host"})
	st := e.wait("wrong-host", "an error", func(st api.GitRepoStatus) bool { return st.Error != "" })
	t.Logf("unknown host key: %s", st.Error)
	if !strings.Contains(st.Error, "knownhosts") && !strings.Contains(st.Error, "host key") {
		t.Errorf("unknown host key: status.error %q", st.Error)
	}
	e.secret("ssh-no-hosts", api.SecretTypeSSHAuth, map[string]string{"ssh-privatekey": string(ssh.ClientKey)})
	e.gitRepo("no-hosts", api.GitRepoSpec{Repo: ssh.URL("pinned"), Branch: "main", ClientSecretName: "ssh-no-hosts"})
	st = e.wait("no-hosts", "an error", func(st api.GitRepoStatus) bool { return st.Error != "" })
	if !strings.Contains(st.Error, "known_hosts") || strings.Contains(st.Error, "PRIVATE KEY") {
		t.Errorf("no known_hosts: status.error %q", st.Error)
	}
}

func TestWebhook(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "hooked")
	repo.Write("cm.yaml", configMap("h", "1"))
	c1 := repo.Commit("one")
	e.secret("creds", api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
	e.secret("hook", api.SecretTypeOpaque, map[string]string{"github": "gh-hmac-key", "gitlab": "gl-token"})
	e.gitRepo("hooked", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: "creds", WebhookSecret: "hook"})
	e.waitCommit("hooked", c1)

	github := func(ref, url string) []byte {
		b, _ := json.Marshal(map[string]any{"ref": ref, "after": "0", "repository": map[string]any{"clone_url": url, "html_url": "http://example.invalid/x"}})
		return b
	}
	gitlab := func(ref, url string) []byte {
		b, _ := json.Marshal(map[string]any{"ref": ref, "object_kind": "push", "project": map[string]any{"git_http_url": url}})
		return b
	}
	sign := func(key string, body []byte) string {
		m := hmac.New(sha256.New, []byte(key))
		m.Write(body)
		return "sha256=" + hex.EncodeToString(m.Sum(nil))
	}
	post := func(headers map[string]string, body []byte) (int, string) {
		req, _ := http.NewRequest("POST", e.hook.URL+gitops.WebhookPath, bytes.NewReader(body))
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	// The URL as a host would write it: with .git, or without, or in another case.
	url := strings.TrimSuffix(repo.HTTPURL(), ".git")
	body := github("refs/heads/main", url)
	gh := func(sig string) map[string]string {
		return map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": sig}
	}
	gl := func(tok string) map[string]string {
		return map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": tok}
	}

	tests := []struct {
		name     string
		headers  map[string]string
		body     []byte
		code     int
		triggers bool
	}{
		{"github bad signature", gh(sign("wrong", body)), body, http.StatusUnauthorized, false},
		{"github no signature", gh(""), body, http.StatusUnauthorized, false},
		{"gitlab bad token", gl("nope"), gitlab("refs/heads/main", repo.HTTPURL()), http.StatusUnauthorized, false},
		{"other branch", gh(sign("gh-hmac-key", github("refs/heads/dev", url))), github("refs/heads/dev", url), http.StatusOK, false},
		{"other repository", gh(sign("gh-hmac-key", github("refs/heads/main", gs.URL+"/else.git"))), github("refs/heads/main", gs.URL+"/else.git"), http.StatusOK, false},
		{"ping", map[string]string{"X-GitHub-Event": "ping"}, []byte(`{}`), http.StatusOK, false},
		{"not a push", map[string]string{}, body, http.StatusBadRequest, false},
		{"github", gh(sign("gh-hmac-key", body)), body, http.StatusAccepted, true},
		{"gitlab", gl("gl-token"), gitlab("refs/heads/main", strings.ToUpper(repo.HTTPURL()[:4])+repo.HTTPURL()[4:]), http.StatusAccepted, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			repo.Write("cm.yaml", configMap("h", fmt.Sprint(i+2)))
			commit := repo.Commit(tt.name)
			code, out := post(tt.headers, tt.body)
			if code != tt.code {
				t.Fatalf("status %d (%s), want %d", code, out, tt.code)
			}
			if tt.triggers {
				if !strings.Contains(out, ns+"/hooked") {
					t.Errorf("response %s does not name the GitRepo", out)
				}
				e.waitCommit("hooked", commit)
				return
			}
			time.Sleep(300 * time.Millisecond)
			if st := e.status("hooked"); st.Commit == commit {
				t.Errorf("deployed %s without a valid webhook", commit[:12])
			}
		})
	}
}

// A chart from a Helm repository that wants credentials: helmSecretName supplies them, and
// only to the URLs helmRepoURLRegex allows.
func TestHelmRepositoryCredentials(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	dir := t.TempDir()
	ch := &chart.Chart{
		Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: "private", Version: "1.0.0"},
		Templates: []*common.File{{Name: "templates/cm.yaml", Data: []byte(
			"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: private\ndata:\n  v: {{ .Chart.Version | quote }}\n")}},
	}
	p, err := chartutil.Save(ch, dir)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := provenance.DigestFile(p)
	idx := repo.NewIndexFile()
	if err := idx.MustAdd(ch.Metadata, filepath.Base(p), "", digest); err != nil {
		t.Fatal(err)
	}
	if err := idx.WriteFile(filepath.Join(dir, "index.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	charts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "helm-user" || p != "helm-pass" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
	}))
	t.Cleanup(charts.Close)

	g := gs.NewRepo(t, "helm")
	g.Write("app/fleet.yaml", fmt.Sprintf("helm:\n  repo: %s\n  chart: private\n  version: 1.0.0\n", charts.URL))
	c1 := g.Commit("chart from a private repository")
	e.secret("git", api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
	e.secret("helm", api.SecretTypeHelmRepo, map[string]string{"username": "helm-user", "password": "helm-pass"})

	tests := []struct {
		name, secret, regex string
		ok                  bool
	}{
		{"no helm secret", "", "", false},
		{"helm secret", "helm", "", true},
		{"regex excludes the repository", "helm", "^https://charts\\.example\\.com/", false},
		{"regex includes the repository", "helm", "^http://127\\.0\\.0\\.1", true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("helm-%d", i)
			e.gitRepo(name, api.GitRepoSpec{Repo: g.HTTPURL(), Branch: "main", ClientSecretName: "git", HelmSecretName: tt.secret, HelmRepoURLRegex: tt.regex})
			if tt.ok {
				e.waitCommit(name, c1)
				b := e.bundles(name)[name+"-app"]
				if b == nil {
					t.Fatalf("no bundle %s-app", name)
				}
				if names := e.content(b).Names(); !slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, "Chart.yaml") }) {
					t.Errorf("bundle content %v: want the downloaded chart", names)
				}
				return
			}
			st := e.wait(name, "an error", func(st api.GitRepoStatus) bool { return st.Error != "" })
			if !strings.Contains(st.Error, "401") && !strings.Contains(strings.ToLower(st.Error), "unauthorized") {
				t.Errorf("status.error %q: want the chart repository's refusal", st.Error)
			}
			if strings.Contains(st.Error, "helm-pass") {
				t.Errorf("status.error shows the password: %q", st.Error)
			}
		})
	}
}

// A GitRepo with neither branch nor revision follows the remote's default branch: a
// repository with only main deploys, and so do later commits to main.
func TestDefaultBranch(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "mainonly")
	repo.Write("web/cm.yaml", configMap("web", "1"))
	c1 := repo.Commit("first")
	e.secret("git-creds", api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
	e.gitRepo("mainonly", api.GitRepoSpec{Repo: repo.HTTPURL(), ClientSecretName: "git-creds"})
	e.waitCommit("mainonly", c1)

	repo.Write("web/cm.yaml", configMap("web", "2"))
	c2 := repo.Commit("second")
	e.ctrl.Trigger(ns, "mainonly")
	e.waitCommit("mainonly", c2)
}
