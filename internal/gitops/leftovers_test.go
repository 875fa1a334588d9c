package gitops_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/gitops"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/testenv/gitserver"
)

// A restart removes what the previous run left: checkouts of a sync cut short, packs being
// received, and the clone of a GitRepo deleted while the server was down. The clone of a
// GitRepo that exists stays, and the GitRepo keeps working.
func TestRestartRemovesLeftovers(t *testing.T) {
	gitserver.Git(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	scfg := sqlstore.DefaultConfig()
	scfg.Logger = quiet
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "db"), scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keeper, err := secrets.Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	cfg := gitops.Config{Store: st, Contents: st, Secrets: keeper, Dir: filepath.Join(dir, "git"), Logger: quiet}
	e := &env{t: t, st: st, keeper: keeper, dir: cfg.Dir}
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		e.ctrl = gitops.New(cfg)
		done := make(chan struct{})
		go func() {
			e.ctrl.Run(ctx)
			close(done)
		}()
		return func() { cancel(); <-done }
	}

	gs := gitserver.Start(t)
	commits := map[string]string{}
	for _, name := range []string{"keep", "gone"} {
		repo := gs.NewRepo(t, name)
		repo.Write("cm.yaml", configMap(name, "1"))
		commits[name] = repo.Commit("one")
		e.secret(name, api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
		e.gitRepo(name, api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: name})
	}
	stop := start()
	for name, c := range commits {
		e.waitCommit(name, c)
	}
	stop()

	clone := func(name string) string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(cfg.Dir, ns, name+"-*"))
		if len(m) != 1 {
			t.Fatalf("clones of %s: %v, want one", name, m)
		}
		return m[0]
	}
	keepClone, goneClone := clone("keep"), clone("gone")
	// What a server stopped in the middle of things leaves.
	stale := filepath.Join(cfg.Dir, ns, ".checkout-123456")
	writeTree(t, stale, "repo/cm.yaml")
	tmpPack := filepath.Join(keepClone, "objects", "pack", "tmp_flotilla_fetch_42")
	writeTree(t, filepath.Dir(tmpPack), filepath.Base(tmpPack))
	// The GitRepo deleted while the server is down.
	key := store.Key{Kind: api.KindGitRepo, Namespace: ns, Name: "gone"}
	obj, err := st.Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Delete(ctxT(t), key, obj.Metadata.ResourceVersion); err != nil {
		t.Fatal(err)
	}

	stop = start()
	defer stop()
	// Its bundles are deleted by the first resync, which runs after the leftovers are gone.
	e.wait("keep", "the deleted GitRepo's bundles removed", func(api.GitRepoStatus) bool { return len(e.bundles("gone")) == 0 })
	for _, p := range []string{stale, goneClone, tmpPack} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s survived the restart", strings.TrimPrefix(p, dir))
		}
	}
	if _, err := os.Stat(filepath.Join(keepClone, "HEAD")); err != nil {
		t.Errorf("the clone of an existing GitRepo was removed: %v", err)
	}
	e.ctrl.Trigger(ns, "keep")
	e.waitCommit("keep", commits["keep"])
}

// writeTree creates empty files (slash-separated paths) under dir.
func writeTree(t *testing.T, dir string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// The clones of GitRepo "app" are not those of "app-web": fetching or deleting one leaves the
// other's clone alone.
func TestClonesOfSimilarNamesAreKept(t *testing.T) {
	e := newEnv(t, nil)
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "apps")
	repo.Write("cm.yaml", configMap("x", "1"))
	commit := repo.Commit("one")
	e.secret("creds", api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
	webClone := func() []string {
		m, _ := filepath.Glob(filepath.Join(e.dir, ns, "app-web-*"))
		return m
	}
	e.gitRepo("app-web", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: "creds"})
	e.waitCommit("app-web", commit)
	before := webClone()
	if len(before) != 1 {
		t.Fatalf("clones of app-web: %v", before)
	}
	e.gitRepo("app", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: "creds"})
	e.waitCommit("app", commit)
	if got := webClone(); len(got) != 1 || got[0] != before[0] {
		t.Errorf("fetching app: clones of app-web %v, want %v", got, before)
	}
	key := store.Key{Kind: api.KindGitRepo, Namespace: ns, Name: "app"}
	obj, err := e.st.Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Delete(ctxT(t), key, obj.Metadata.ResourceVersion); err != nil {
		t.Fatal(err)
	}
	e.wait("app-web", "app's bundles removed", func(api.GitRepoStatus) bool { return len(e.bundles("app")) == 0 })
	if got := webClone(); len(got) != 1 || got[0] != before[0] {
		t.Errorf("deleting app: clones of app-web %v, want %v", got, before)
	}
}
