package agent

import (
	"encoding/pem"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.dev/api"
	"flotilla.dev/internal/agent/apply"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/doorbell"
)

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestRegistersOnceAndKeepsCredential(t *testing.T) {
	f := newFakeServer(t)
	dir := t.TempDir()
	cfg := testConfig(t, f, dir)
	a := startAgent(t, cfg, nil)
	waitFor(t, "a status report", func() bool { return len(f.snapshot().reports) > 0 })
	if err := a.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	fi, err := os.Stat(filepath.Join(dir, credentialsFile))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("credentials file mode = %v, want %v", got, want)
	}
	data, _ := os.ReadFile(filepath.Join(dir, credentialsFile))
	if !strings.Contains(string(data), "BEGIN CERTIFICATE") || !strings.Contains(string(data), "cred-1") {
		t.Errorf("credentials file lacks the CA or the credential: %s", data)
	}
	if strings.Contains(string(data), "good-token") {
		t.Error("the registration token was stored")
	}

	// Restarted with the same token (which has no use left): it must not register again.
	a = startAgent(t, cfg, nil)
	waitFor(t, "polls after restart", func() bool { return len(f.snapshot().polls) > 3 })
	if err := a.stop(); err != nil {
		t.Fatalf("Run after restart: %v", err)
	}
	s := f.snapshot()
	if s.registrations != 1 {
		t.Errorf("registrations = %d, want 1", s.registrations)
	}
	f.mu.Lock()
	seen := f.tokensSeen
	reg := f.registrations[0]
	f.mu.Unlock()
	if seen["good-token"] {
		t.Error("the registration token was sent on a call other than registration")
	}
	if reg.ClientID != "uid-1" || reg.Labels["env"] != "test" || reg.Inventory == nil || reg.Inventory.Architecture != "arm64" {
		t.Errorf("registration request = %+v, want clientID, labels and inventory", reg)
	}
	// The first report of each run carries the inventory.
	if inv := s.reports[0].Inventory; inv == nil || inv.AgentVersion != "test" {
		t.Errorf("first report's inventory = %+v, want one with the agent version", inv)
	}
}

func TestRegistrationErrors(t *testing.T) {
	f := newFakeServer(t)
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"unknown token", "bad-token", ErrTokenInvalid},
		{"no token", "", ErrNotRegistered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, f, t.TempDir())
			cfg.Token = tt.token
			err := startAgent(t, cfg, nil).wait(5 * time.Second)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Run = %v, want %v", err, tt.want)
			}
		})
	}
	t.Run("wrong CA checksum", func(t *testing.T) {
		cfg := testConfig(t, f, t.TempDir())
		cfg.CAChecksum = strings.Repeat("0", 64)
		err := startAgent(t, cfg, nil).wait(5 * time.Second)
		if err == nil || !strings.Contains(err.Error(), "checksum") {
			t.Fatalf("Run = %v, want an error about the CA checksum", err)
		}
	})
	if got := f.snapshot().registrations; got != 0 {
		t.Errorf("registrations = %d, want 0", got)
	}
}

func TestPollAppliesAndAnswers304(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"), configMapBundle("db", "1"))
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "both deployments reported Ready", func() bool {
		l := f.snapshot().latest
		return l["fleet-default/web"].State == api.StateReady && l["fleet-default/db"].State == api.StateReady
	})
	waitFor(t, "304 answers", func() bool { return f.snapshot().notModified >= 5 })
	s := f.snapshot()
	// The first poll asks for everything, the rest for what changed since revision 2.
	if s.polls[0] != 0 {
		t.Errorf("first poll since = %d, want 0", s.polls[0])
	}
	for _, since := range s.polls[1:] {
		if since != 2 {
			t.Fatalf("later poll since = %d, want 2", since)
		}
	}
	if got, want := s.fetches, 2; got != want {
		t.Errorf("content fetched for %d digests, want %d", got, want)
	}
	var d apply.Deployment
	a.applier.get(func(ap *fakeApplier) { d = ap.applied["fleet-default/web"] })
	if len(d.Objects) != 1 || d.Objects[0].GetName() != "web" || d.DefaultNamespace != "" {
		t.Errorf("applied deployment = %+v, want the rendered ConfigMap", d)
	}
	f.mu.Lock()
	wantID := f.desired.Deployments[0].ID
	f.mu.Unlock()
	if got := s.latest["fleet-default/web"].ID; got != wantID {
		t.Errorf("reported ID = %q, want the spec's ID %q", got, wantID)
	}

	// A change: web gets new content, db goes away.
	f.setDesired(nil, configMapBundle("web", "2"))
	waitFor(t, "db removed and reported so", func() bool {
		_, ok := f.snapshot().latest["fleet-default/db"]
		return !ok
	})
	a.applier.get(func(ap *fakeApplier) {
		if len(ap.removed) != 1 || ap.removed[0] != "fleet-default/db" {
			t.Errorf("removed = %v, want [fleet-default/db]", ap.removed)
		}
	})
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	ds, err := (&stateDir{dir: a.cfg.StateDir}).loadDesired()
	if err != nil || ds == nil || ds.Revision != 3 {
		t.Fatalf("persisted desired state = %+v, %v; want revision 3", ds, err)
	}
	entries, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "content"))
	if len(entries) != 1 {
		t.Errorf("content cache holds %d archives, want 1 (the others pruned)", len(entries))
	}
}

func TestContentDigestIsVerified(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"))
	digest := f.desired.Deployments[0].ContentHash
	f.set(func(f *fakeServer) { f.corrupt[digest] = true })
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "ErrApplied for damaged content", func() bool {
		st := f.snapshot().latest["fleet-default/web"]
		return st.State == api.StateErrApplied && strings.Contains(st.Message, digest)
	})
	a.applier.get(func(ap *fakeApplier) {
		if ap.applies["fleet-default/web"] != 0 {
			t.Error("damaged content was applied")
		}
	})
	if (&stateDir{dir: a.cfg.StateDir}).hasContent(digest) {
		t.Error("damaged content was cached")
	}
	// Fixed on the server: the agent fetches it again with a later poll.
	f.set(func(f *fakeServer) { f.corrupt[digest] = false })
	waitFor(t, "Ready after the content is right", func() bool {
		return f.snapshot().latest["fleet-default/web"].State == api.StateReady
	})
}

// Content sent with the desired state is taken without a fetch; content sent damaged is
// refused and fetched; content no deployment names is not kept; and the persisted desired
// state holds none of it.
func TestInlineContent(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"), configMapBundle("api", "1"))
	web, apiDigest := f.desired.Deployments[0].ContentHash, f.desired.Deployments[1].ContentHash
	f.set(func(f *fakeServer) { f.inline, f.corrupt[apiDigest] = true, true })
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "web Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	// The damaged api archive was fetched instead, and the fetch was damaged too.
	waitFor(t, "api ErrApplied for damaged content", func() bool {
		return f.snapshot().latest["fleet-default/api"].State == api.StateErrApplied
	})
	f.set(func(f *fakeServer) { f.corrupt[apiDigest] = false })
	waitFor(t, "api Ready once fetched whole", func() bool {
		return f.snapshot().latest["fleet-default/api"].State == api.StateReady
	})
	f.set(func(f *fakeServer) {
		if f.fetches[web] != 0 {
			t.Errorf("web's content was fetched %d times; it came with the desired state", f.fetches[web])
		}
		if f.fetches[apiDigest] == 0 {
			t.Error("api's damaged content was taken without a fetch")
		}
	})
	dir := &stateDir{dir: a.cfg.StateDir}
	if dir.hasContent(bundle.Digest([]byte("stray"))) {
		t.Error("content no deployment names was kept")
	}
	if ds, err := dir.loadDesired(); err != nil || ds == nil || ds.Contents != nil {
		t.Errorf("persisted desired state %+v, %v; want one without contents", ds, err)
	}
}

func TestPausedDeploymentIsOnlyChecked(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"))
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	var running string
	a.applier.get(func(ap *fakeApplier) { running = ap.applied["fleet-default/web"].Hash })

	p := configMapBundle("web", "2")
	p.paused = true
	f.setDesired(nil, p)
	waitFor(t, "OutOfSync for the paused change", func() bool {
		return f.snapshot().latest["fleet-default/web"].State == api.StateOutOfSync
	})
	time.Sleep(3 * a.cfg.StatusInterval)
	a.applier.get(func(ap *fakeApplier) {
		// The running version may be applied again (a retry of its own); the paused one never.
		for _, h := range ap.hashes["fleet-default/web"] {
			if h != running {
				t.Errorf("a paused deployment was applied (hash %s, the running one is %s)", h, running)
			}
		}
		if ap.status["fleet-default/web"] == 0 {
			t.Error("a paused deployment was not checked")
		}
	})
	// OutOfSync names the version that is applied, not the paused one.
	f.mu.Lock()
	pausedID := f.desired.Deployments[0].ID
	f.mu.Unlock()
	if got := f.snapshot().latest["fleet-default/web"].ID; got == pausedID {
		t.Errorf("OutOfSync reported with the paused spec's ID %q", got)
	}
}

func TestDriftNotificationIsReported(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"))
	cfg := testConfig(t, f, t.TempDir())
	cfg.StatusInterval = time.Hour // only the watch can tell
	a := startAgent(t, cfg, nil)
	waitFor(t, "Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	var notify func(string)
	waitFor(t, "the watch", func() bool {
		a.applier.get(func(ap *fakeApplier) { notify = ap.notify })
		return notify != nil
	})
	a.applier.set(func(ap *fakeApplier) { ap.state["fleet-default/web"] = apply.Modified })
	notify("fleet-default/web")
	waitFor(t, "Modified", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateModified })
	a.applier.set(func(ap *fakeApplier) { delete(ap.state, "fleet-default/web") })
	notify("fleet-default/web")
	waitFor(t, "Ready again", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
}

func TestApplyErrorIsReported(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"))
	ap := newFakeApplier()
	ap.failed["fleet-default/web"] = errors.New("admission webhook denied the request")
	startAgent(t, testConfig(t, f, t.TempDir()), ap)
	waitFor(t, "ErrApplied", func() bool {
		st := f.snapshot().latest["fleet-default/web"]
		return st.State == api.StateErrApplied && strings.Contains(st.Message, "webhook denied")
	})
	// Retried on the periodic pass, and reported once it works.
	ap.set(func(ap *fakeApplier) { delete(ap.failed, "fleet-default/web") })
	waitFor(t, "Ready after a retry", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
}

func TestLabelChangeRerenders(t *testing.T) {
	f := newFakeServer(t)
	d := fakeDeployment{name: "web", files: bundle.Files{
		"Chart.yaml":          []byte("apiVersion: v2\nname: web\nversion: 0.1.0\n"),
		"templates/cm.yaml":   []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  site: {{ .Values.site | quote }}\n"),
		"values.yaml":         []byte("site: none\n"),
		"templates/NOTES.txt": []byte("hello\n"),
	}, opts: api.BundleDeploymentOptions{Helm: &api.HelmOptions{Values: map[string]any{"site": "${ .ClusterLabels.site }"}}}}
	f.setDesired(map[string]string{"site": "berlin"}, d)
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	siteOf := func() any {
		var v any
		a.applier.get(func(ap *fakeApplier) {
			if h := ap.applied["fleet-default/web"].Helm; h != nil {
				v = h.Values["site"]
			}
		})
		return v
	}
	waitFor(t, "the release with site=berlin", func() bool { return siteOf() == "berlin" })
	// The same spec (the fake keeps IDs) with other cluster labels.
	f.set(func(f *fakeServer) {
		f.desired.Revision++
		f.desired.ClusterLabels = map[string]string{"site": "paris"}
	})
	waitFor(t, "the release with site=paris", func() bool { return siteOf() == "paris" })
}

func TestClusterDeletedStops(t *testing.T) {
	f := newFakeServer(t)
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "polls", func() bool { return len(f.snapshot().polls) > 0 })
	f.set(func(f *fakeServer) { f.deleted = true })
	err := a.wait(5 * time.Second)
	if !errors.Is(err, ErrClusterDeleted) {
		t.Fatalf("Run = %v, want ErrClusterDeleted", err)
	}
	if want := "this cluster was deleted from the Flotilla server; its credential is revoked; what it deployed is kept (--on-cluster-deleted=keep). To register it again, run the agent with a new registration token (--token; the token it registered with is not used again)"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

// A deleted cluster registers again when its agent is given a new registration token; the
// token it registered with (still in its configuration) does not bring it back.
func TestClusterDeletedRegistersWithNewToken(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["good-token"] = 5
	f.setDesired(nil, configMapBundle("web", "1"))
	registrations := func() (n int) {
		f.set(func(f *fakeServer) { n = len(f.registrations) })
		return n
	}
	cfg := testConfig(t, f, t.TempDir())
	a := startAgent(t, cfg, nil)
	waitFor(t, "web Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	f.set(func(f *fakeServer) { f.deleted = true })
	if err := a.wait(5 * time.Second); !errors.Is(err, ErrClusterDeleted) {
		t.Fatalf("Run = %v, want ErrClusterDeleted", err)
	}
	// The same token again: still stopped, though the token has uses left.
	err := startAgent(t, cfg, nil).wait(5 * time.Second)
	if !errors.Is(err, ErrClusterDeleted) || !strings.Contains(err.Error(), "new registration token (--token") {
		t.Fatalf("Run with the same token = %v, want ErrClusterDeleted saying to pass a new token", err)
	}
	if n := registrations(); n != 1 {
		t.Fatalf("%d registrations with the token the cluster registered with, want 1", n)
	}
	f.set(func(f *fakeServer) { f.tokens["new-token"] = 1 })
	cfg.Token = "new-token"
	b := startAgent(t, cfg, nil)
	waitFor(t, "a poll with the new credential", func() (seen bool) {
		f.set(func(f *fakeServer) { seen = f.tokensSeen["cred-new"] })
		return seen
	})
	if n := registrations(); n != 2 {
		t.Errorf("%d registrations, want 2", n)
	}
	if err := b.wait(200 * time.Millisecond); err == nil || errors.Is(err, ErrClusterDeleted) {
		t.Errorf("the re-registered agent stopped: %v", err)
	}
	// A deletion noticed while running, with a new token configured, registers in place.
	b.stop()
	f.set(func(f *fakeServer) { f.tokens["newer-token"] = 1 })
	cfg.Token = "newer-token"
	c := startAgent(t, cfg, nil)
	waitFor(t, "polls", func() bool { return len(f.snapshot().polls) > 0 })
	f.set(func(f *fakeServer) {
		f.deleted = true
		f.credential = "cred-x"
	})
	waitFor(t, "the third registration", func() bool { return registrations() == 3 })
	if err := c.wait(200 * time.Millisecond); err == nil || errors.Is(err, ErrClusterDeleted) {
		t.Errorf("the agent stopped instead of registering again: %v", err)
	}
}

// With --on-cluster-deleted=prune the agent removes what it deployed when its cluster is
// deleted; by default it keeps it.
func TestClusterDeletedPrune(t *testing.T) {
	for _, policy := range []string{"", OnClusterDeletedPrune} {
		f := newFakeServer(t)
		f.setDesired(nil, configMapBundle("web", "1"))
		cfg := testConfig(t, f, t.TempDir())
		cfg.OnClusterDeleted = policy
		a := startAgent(t, cfg, nil)
		waitFor(t, "web Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
		f.set(func(f *fakeServer) { f.deleted = true })
		if err := a.wait(5 * time.Second); !errors.Is(err, ErrClusterDeleted) {
			t.Fatalf("%q: Run = %v, want ErrClusterDeleted", policy, err)
		}
		var removed []string
		a.applier.get(func(ap *fakeApplier) { removed = ap.removed })
		if got, want := slices.Contains(removed, "fleet-default/web"), policy == OnClusterDeletedPrune; got != want {
			t.Errorf("%q: web removed = %v, want %v", policy, got, want)
		}
	}
}

func TestOtherCredentialRefusalStops(t *testing.T) {
	f := newFakeServer(t)
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "polls", func() bool { return len(f.snapshot().polls) > 0 })
	f.set(func(f *fakeServer) { f.credential = "rotated" })
	if err := a.wait(5 * time.Second); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Run = %v, want ErrUnauthorized", err)
	}
}

// The server goes away; the agent keeps reconciling, queues status on disk, is restarted
// while offline, and delivers the latest state of everything once the server is back.
func TestOfflineQueueAndRestart(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"), configMapBundle("db", "1"))
	dir := t.TempDir()
	cfg := testConfig(t, f, dir)
	a := startAgent(t, cfg, nil)
	waitFor(t, "Ready", func() bool { return len(f.snapshot().latest) == 2 })

	f.set(func(f *fakeServer) { f.down = true })
	time.Sleep(50 * time.Millisecond)
	// Changes in the cluster while offline: web breaks, then db.
	a.applier.set(func(ap *fakeApplier) { ap.state["fleet-default/web"] = apply.NotReady })
	a.applier.notify("fleet-default/web")
	waitFor(t, "web's change queued", func() bool { return a.queued("fleet-default/web") == api.StateNotReady })
	a.applier.set(func(ap *fakeApplier) { ap.state["fleet-default/web"] = apply.Modified })
	a.applier.notify("fleet-default/web")
	waitFor(t, "web's next change queued", func() bool { return a.queued("fleet-default/web") == api.StateModified })
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	seqBefore := readQueue(t, dir).NextSeq

	// Restarted while offline: it works from its persisted state and content.
	ap := newFakeApplier()
	ap.state["fleet-default/db"] = apply.NotReady
	ap.state["fleet-default/web"] = apply.Modified
	a = startAgent(t, cfg, ap)
	waitFor(t, "both deployments applied from the persisted state", func() bool {
		var n int
		ap.get(func(ap *fakeApplier) { n = len(ap.applied) })
		return n == 2
	})
	waitFor(t, "db's change queued", func() bool { return a.queued("fleet-default/db") == api.StateNotReady })
	if got := len(f.snapshot().latest); got != 2 {
		t.Fatalf("server has %d statuses", got)
	}

	f.set(func(f *fakeServer) { f.down = false })
	waitFor(t, "the queue flushed", func() bool {
		l := f.snapshot().latest
		return l["fleet-default/web"].State == api.StateModified && l["fleet-default/db"].State == api.StateNotReady
	})
	waitFor(t, "an empty queue", func() bool { return a.queueEmpty() })
	s := f.snapshot()
	var last int64
	for _, r := range s.reports {
		if r.Seq <= last {
			t.Errorf("report seq %d after %d: sequence numbers must grow", r.Seq, last)
		}
		last = r.Seq
	}
	var after []api.StatusReport
	for _, r := range s.reports {
		if r.Seq >= seqBefore {
			after = append(after, r)
		}
	}
	// Offline changes collapse: web went NotReady then Modified, only Modified is sent.
	for _, r := range after {
		for _, d := range r.Deployments {
			if d.Bundle == "fleet-default/web" && d.State == api.StateNotReady {
				t.Errorf("report %d carries web's intermediate state NotReady", r.Seq)
			}
		}
	}
	if len(after) == 0 {
		t.Fatalf("no report after the restart (seq from %d): %+v", seqBefore, s.reports)
	}
}

func (ta *testAgent) queued(bundle string) string {
	q := readQueue(ta.t, ta.cfg.StateDir)
	return q.Pending[bundle].State
}

func (ta *testAgent) queueEmpty() bool {
	q := readQueue(ta.t, ta.cfg.StateDir)
	return len(q.Pending) == 0 && len(q.Removed) == 0 && q.Inventory == nil
}

func readQueue(t *testing.T, dir string) queueState {
	t.Helper()
	var q queueState
	if _, err := (&stateDir{dir: dir}).readJSON(statusFile, &q); err != nil {
		t.Fatal(err)
	}
	return q
}

// A state directory that moved to another cluster must not act for the first one: the agent
// registers the new cluster and forgets what the old registration asked for.
func TestStateFromAnotherClusterIsForgotten(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("old", "1"))
	dir := t.TempDir()
	cfg := testConfig(t, f, dir)
	a := startAgent(t, cfg, nil)
	waitFor(t, "old Ready", func() bool { return f.snapshot().latest["fleet-default/old"].State == api.StateReady })
	a.stop()

	f.set(func(f *fakeServer) {
		f.tokens["good-token"] = 1
		f.down = true // the new registration must not apply the old state meanwhile
	})
	ap := newFakeApplier()
	b := startAgentAs(t, "uid-2", cfg, ap)
	time.Sleep(200 * time.Millisecond)
	ap.get(func(ap *fakeApplier) {
		if len(ap.applied) != 0 {
			t.Errorf("applied %v on another cluster before registering it", ap.applied)
		}
	})
	f.set(func(f *fakeServer) { f.down = false })
	waitFor(t, "the second registration", func() bool { return f.snapshot().registrations == 2 })
	f.mu.Lock()
	got := f.registrations[1].ClientID
	f.mu.Unlock()
	if got != "uid-2" {
		t.Errorf("second registration's client ID = %q, want uid-2", got)
	}
	if err := b.stop(); err != nil {
		t.Fatal(err)
	}

	// Without a token it refuses to go on.
	cfg.Token = ""
	err := startAgentAs(t, "uid-3", cfg, nil).wait(5 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "belongs to another cluster") {
		t.Errorf("Run on a third cluster without a token = %v", err)
	}
}

// A change reaches an agent at once through its long poll, while polls still come only as
// often as the server's poll-after says.
func TestLongPollLearnsAtOnce(t *testing.T) {
	f := newFakeServer(t)
	f.pollAfter = 3 * time.Second
	f.setDesired(nil, configMapBundle("web", "1"))
	a := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "web Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	held := func() (n int) {
		f.set(func(f *fakeServer) { n = f.held })
		return n
	}
	waitFor(t, "a poll held by the server", func() bool { return held() == 1 })
	polls := len(f.snapshot().polls)

	changed := time.Now()
	f.setDesired(nil, configMapBundle("web", "2"))
	applied := func() (v string) {
		a.applier.get(func(ap *fakeApplier) {
			if d, ok := ap.applied["fleet-default/web"]; ok && len(d.Objects) == 1 {
				v, _, _ = unstructured.NestedString(d.Objects[0].Object, "data", "v")
			}
		})
		return v
	}
	waitFor(t, "the change applied", func() bool { return applied() == "2" })
	if took := time.Since(changed); took > time.Second {
		t.Errorf("the change took %s to reach the agent, want far less than the poll-after of 3s", took)
	}
	// The next poll is held until the poll-after: no burst of polls after a change.
	time.Sleep(time.Second)
	if got := len(f.snapshot().polls) - polls; got > 1 {
		t.Errorf("%d more polls in the second after a change, want one, held until the poll-after", got)
	}
	if held() != 1 {
		t.Errorf("%d polls held a second after a change, want 1", held())
	}
}

// A change made at any moment reaches the agent at once: it holds a poll at all times, as
// the server's poll-after (counted from its answer, and aimed at the cluster's phase in the
// interval) varies from poll to poll.
func TestLongPollHeldAtAllTimes(t *testing.T) {
	const interval = 2 * time.Second
	f := newFakeServer(t)
	f.phaseInterval = interval
	f.setDesired(nil)
	startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "the first poll", func() bool { return len(f.snapshot().polls) > 0 })
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 8 {
		time.Sleep(time.Duration(rng.Int64N(int64(interval))))
		var rev int64
		f.setDesired(map[string]string{"change": strconv.Itoa(i)})
		changed := time.Now()
		f.set(func(f *fakeServer) { rev = f.desired.Revision })
		var served time.Time
		waitFor(t, "the change served", func() bool {
			f.set(func(f *fakeServer) { served = f.served[rev] })
			return !served.IsZero()
		})
		if delay := served.Sub(changed); delay > interval/5 {
			t.Errorf("change %d reached the agent after %s, want under a fifth of the %s poll interval", i, delay.Round(time.Millisecond), interval)
		}
	}
}

// An agent whose state directory was lost still removes what the cluster's inventories
// hold and the server no longer wants.
func TestInventoriedDeploymentsAreRemoved(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"))
	ap := newFakeApplier()
	ap.inventoried = []string{"fleet-default/gone"}
	a := startAgent(t, testConfig(t, f, t.TempDir()), ap)
	waitFor(t, "gone removed", func() bool {
		var removed []string
		a.applier.get(func(ap *fakeApplier) { removed = ap.removed })
		return slices.Contains(removed, "fleet-default/gone")
	})
	waitFor(t, "web Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	a.applier.get(func(ap *fakeApplier) {
		if slices.Contains(ap.removed, "fleet-default/web") {
			t.Errorf("removed %v, want only fleet-default/gone", ap.removed)
		}
	})
}

// A desired state the server cannot send (too large) leaves the cluster on its last state,
// the agent polling on; once the server can send it, it is applied.
func TestDesiredStateTooLarge(t *testing.T) {
	f := newFakeServer(t)
	f.setDesired(nil, configMapBundle("web", "1"))
	startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "web reported Ready", func() bool { return f.snapshot().latest["fleet-default/web"].State == api.StateReady })
	f.mu.Lock()
	first := f.desired.Deployments[0].ID
	f.mu.Unlock()
	f.mu.Lock()
	f.tooLarge = true
	f.mu.Unlock()
	f.setDesired(nil, configMapBundle("web", "2"))
	polls := len(f.snapshot().polls)
	waitFor(t, "polls refused", func() bool { return len(f.snapshot().polls) >= polls+3 })
	if got := f.snapshot().latest["fleet-default/web"]; got.ID != first || got.State != api.StateReady {
		t.Errorf("while the state could not be sent: web %+v, want %s Ready", got, first)
	}
	f.mu.Lock()
	f.tooLarge = false
	second := f.desired.Deployments[0].ID
	f.mu.Unlock()
	waitFor(t, "the new state applied once sent", func() bool {
		got := f.snapshot().latest["fleet-default/web"]
		return got.ID == second && got.State == api.StateReady
	})
}

// While the server cannot send the state, the doorbell's "changed" (which every ping then
// hears) does not wake the poll loop; a wanted tunnel does.
func TestRingWhileUndeliverable(t *testing.T) {
	a := &agent{rung: make(chan struct{}, 1)}
	a.ring(doorbell.KindChanged)
	if len(a.rung) != 1 {
		t.Fatal("a change did not ring")
	}
	<-a.rung
	a.undeliverable.Store(true)
	a.ring(doorbell.KindChanged)
	if len(a.rung) != 0 {
		t.Error("a change rang while the state cannot be sent")
	}
	a.ring(doorbell.KindTunnel)
	if len(a.rung) != 1 {
		t.Error("a wanted tunnel did not ring while the state cannot be sent")
	}
}
