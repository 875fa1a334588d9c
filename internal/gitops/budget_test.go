package gitops_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/gitops"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/testenv/gitserver"
)

// fanOutTree is a kustomization whose bases fan out: levels levels of two bases each, each
// naming both of the next level's. Kustomize reads a base once per reference, so rendering it
// doubles in cost with every level: at 20 levels it would run for days.
func fanOutTree(levels int) map[string]string {
	f := map[string]string{"app/fleet.yaml": "{}\n", "app/kustomization.yaml": "resources:\n- l0a\n- l0b\n"}
	for i := range levels {
		for _, s := range []string{"a", "b"} {
			d := fmt.Sprintf("app/l%d%s", i, s)
			if i == levels-1 {
				f[d+"/kustomization.yaml"] = "namePrefix: " + s + "-\nresources:\n- cm.yaml\n"
				f[d+"/cm.yaml"] = configMap("x", "1")
				continue
			}
			f[d+"/kustomization.yaml"] = fmt.Sprintf("namePrefix: %s-\nresources:\n- ../l%da\n- ../l%db\n", s, i+1, i+1)
		}
	}
	return f
}

// creds stores a secret with gs's credentials and returns its name.
func (e *env) creds(name string, gs *gitserver.Server) string {
	e.t.Helper()
	e.secret(name, api.SecretTypeBasicAuth, map[string]string{"username": gs.User, "password": gs.Password})
	return name
}

func stalled(st api.GitRepoStatus) bool {
	c := condition(st, "Stalled")
	return c != nil && c.Status == "True" && c.Reason == "RenderBudgetExceeded"
}

// A GitRepo whose bundle overruns the render budget is Stalled with a condition naming the
// budget and its flag, backs off, and does not keep the only worker from a normal GitRepo.
func TestGitRepoRenderBudget(t *testing.T) {
	e := newEnv(t, func(c *gitops.Config) {
		c.Workers = 1
		c.RenderBudget = bundle.Budget{MaxObjects: 1500}
		c.RetryFailed = time.Hour
	})
	hostileServer, normalServer := gitserver.Start(t), gitserver.Start(t)
	hostile := hostileServer.NewRepo(t, "hostile")
	hostile.WriteFiles(fanOutTree(20))
	hostile.Commit("fan out")
	normal := normalServer.NewRepo(t, "normal")
	normal.Write("apps/cm.yaml", configMap("normal", "1"))
	c1 := normal.Commit("first")

	hc, nc := e.creds("hostile-creds", hostileServer), e.creds("normal-creds", normalServer)
	e.gitRepo("hostile", api.GitRepoSpec{Repo: hostile.HTTPURL(), Branch: "main", ClientSecretName: hc})
	e.gitRepo("normal", api.GitRepoSpec{Repo: normal.HTTPURL(), Branch: "main", Paths: []string{"apps"}, ClientSecretName: nc})

	e.waitCommit("normal", c1)
	st := e.wait("hostile", "Stalled", stalled)
	msg := condition(st, "Stalled").Message
	for _, want := range []string{"render budget exceeded", "objects budget of 1500 objects", bundle.FlagRenderMaxObjects, "retrying in 1h0m0s"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Stalled message %q does not say %q", msg, want)
		}
	}
	if c := condition(st, "Accepted"); c == nil || c.Status != "False" || c.Reason != "RenderBudgetExceeded" {
		t.Errorf("Accepted condition %+v, want False/RenderBudgetExceeded", c)
	}
	if len(e.bundles("hostile")) != 0 {
		t.Error("the hostile GitRepo has bundles")
	}

	// Backing off, it is not fetched again when triggered, while the normal one is.
	before := hostileServer.Requests()
	e.ctrl.Trigger(ns, "hostile")
	normal.Write("apps/cm.yaml", configMap("normal", "2"))
	c2 := normal.Commit("second")
	e.ctrl.Trigger(ns, "normal")
	e.waitCommit("normal", c2)
	if n := hostileServer.Requests() - before; n != 0 {
		t.Errorf("a trigger made the backing-off GitRepo fetch (%d requests)", n)
	}

	// A spec change ends the backoff; a commit that fits the budget deploys.
	hostile.Write("app/kustomization.yaml", "resources:\n- cm.yaml\n")
	hostile.Write("app/cm.yaml", configMap("tamed", "1"))
	c3 := hostile.Commit("tamed")
	e.gitRepo("hostile", api.GitRepoSpec{Repo: hostile.HTTPURL(), Branch: "main", Paths: []string{"app"}, ClientSecretName: hc})
	st = e.waitCommit("hostile", c3)
	if c := condition(st, "Stalled"); c == nil || c.Status != "False" {
		t.Errorf("Stalled condition %+v after a deploy, want False", c)
	}
}

// A GitRepo whose sync overruns the sync's own time (here, renders each within their budget
// but too many of them) is stopped and Stalled, naming --gitrepo-sync-timeout.
func TestGitRepoSyncTimeout(t *testing.T) {
	e := newEnv(t, func(c *gitops.Config) {
		c.RenderBudget = bundle.Budget{Time: time.Hour, MaxObjects: 1 << 30, MaxBytes: 1 << 40}
		c.SyncTimeout = 2 * time.Second
		c.RetryFailed = time.Hour
	})
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "slow")
	repo.WriteFiles(fanOutTree(20))
	repo.Commit("fan out")
	e.gitRepo("slow", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: e.creds("creds", gs)})
	st := e.wait("slow", "Stalled", stalled)
	if msg := condition(st, "Stalled").Message; !strings.Contains(msg, gitops.FlagSyncTimeout) || !strings.Contains(msg, "sync time budget of 2s") {
		t.Errorf("Stalled message %q does not name the sync budget and %s", msg, gitops.FlagSyncTimeout)
	}
}

// Deleting a GitRepo stops its render in flight: the render returns (it is not left running
// in the background), though Kustomize takes no context.
func TestDeleteStopsRender(t *testing.T) {
	e := newEnv(t, func(c *gitops.Config) {
		c.RenderBudget = bundle.Budget{Time: time.Hour, MaxObjects: 1 << 30, MaxBytes: 1 << 40}
		c.SyncTimeout = time.Hour
	})
	gs := gitserver.Start(t)
	repo := gs.NewRepo(t, "hostile")
	repo.WriteFiles(fanOutTree(20))
	repo.Commit("fan out")
	idle := bundle.RendersInFlight()
	e.gitRepo("hostile", api.GitRepoSpec{Repo: repo.HTTPURL(), Branch: "main", ClientSecretName: e.creds("creds", gs)})
	waitFor(t, "the render to start", func() bool { return bundle.RendersInFlight() > idle })

	if _, err := e.st.Delete(ctxT(t), store.Key{Kind: api.KindGitRepo, Namespace: ns, Name: "hostile"}, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the render to stop", func() bool { return bundle.RendersInFlight() == idle })
	if st := e.statusMaybe("hostile"); st != nil {
		t.Errorf("GitRepo still there: %+v", st)
	}
}

// waitFor polls cond for up to a minute: long enough for a loaded machine, far shorter than
// the hostile render would run.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("waited a minute for %s", what)
}

func (e *env) statusMaybe(name string) *api.GitRepoStatus {
	if _, err := e.st.Get(ctxT(e.t), store.Key{Kind: api.KindGitRepo, Namespace: ns, Name: name}); err != nil {
		return nil
	}
	st := e.status(name)
	return &st
}
