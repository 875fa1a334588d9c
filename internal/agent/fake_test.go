package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/agent/apply"
	"flotilla.dev/internal/bundle"
)

// fakeServer speaks the agent protocol from memory, for unit tests of the agent's runtime.
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server

	mu            sync.Mutex
	tokens        map[string]int // registration token → uses left
	credential    string
	registrations []api.RegisterRequest
	desired       api.DesiredState
	content       map[string][]byte
	corrupt       map[string]bool // serve damaged bytes for these digests
	// inline, when set, sends every deployment's content with the desired state, as the
	// server does for content not applied yet; corrupt digests are sent damaged there too.
	inline      bool
	down        bool    // drop every connection
	tooLarge    bool    // refuse a changed state as too large to send
	deleted     bool    // the cluster was deleted
	polls       []int64 // since of every poll
	notModified int
	fetches     map[string]int
	reports     []api.StatusReport
	lastSeq     int64
	// latest is the server's view: the last state reported per bundle.
	latest map[string]api.DeploymentStatus
	// tokensSeen are the bearer tokens seen on non-registration calls.
	tokensSeen map[string]bool
	// pollAfter, when set, is the poll-after the server answers with; held counts the
	// long polls it holds open now.
	pollAfter time.Duration
	held      int
	// phaseInterval, when set, makes the poll-after what the real server answers: the time
	// from the answer to this cluster's next phase point in the interval, at least a tenth
	// of it away, in whole seconds. served is when each revision was first answered.
	phaseInterval time.Duration
	served        map[int64]time.Time
	// Credential renewal: credentials expire after expiresIn (0: never); the server asks
	// for renewal on every answer while askRenew; expired is a credential answered with
	// CredentialExpired; refuseRenew answers renewals with 401.
	expiresIn   time.Duration
	askRenew    bool
	expired     string
	refuseRenew bool
	renewals    int
	// previous is the credential before the last renewal: still valid, as on the server.
	previous string
}

func newFakeServer(t *testing.T) *fakeServer {
	f := &fakeServer{
		t:          t,
		tokens:     map[string]int{"good-token": 1},
		credential: "cred-1",
		content:    map[string][]byte{},
		corrupt:    map[string]bool{},
		fetches:    map[string]int{},
		latest:     map[string]api.DeploymentStatus{},
		tokensSeen: map[string]bool{},
		desired:    api.DesiredState{Revision: 1, ClusterName: "c-1", ClusterNamespace: "fleet-default", Deployments: []api.DeploymentSpec{}},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathRegister, f.register)
	mux.HandleFunc("GET "+api.PathDesired, f.authed(f.getDesired))
	mux.HandleFunc("GET "+api.PathContent+"{digest}", f.authed(f.getContent))
	mux.HandleFunc("POST "+api.PathStatus, f.authed(f.postStatus))
	mux.HandleFunc("POST "+api.PathRenew, f.renew)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		down := f.down
		f.mu.Unlock()
		if down {
			// As an unreachable server looks to the client: the connection just ends.
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		mux.ServeHTTP(w, r)
	}))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused by the CA pin
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) fail(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(&api.Status{Code: code, Reason: reason, Message: msg})
}

func (f *fakeServer) register(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if f.tokens[tok] <= 0 {
		f.fail(w, http.StatusUnauthorized, api.ReasonTokenInvalid, "unknown registration token")
		return
	}
	f.tokens[tok]--
	if f.deleted {
		// Registered anew after a deletion: a new Cluster, with a new credential.
		f.deleted = false
		f.credential = "cred-new"
	}
	var req api.RegisterRequest
	json.NewDecoder(r.Body).Decode(&req)
	f.registrations = append(f.registrations, req)
	json.NewEncoder(w).Encode(api.RegisterResponse{Namespace: "fleet-default", ClusterName: "c-1", Credential: f.credential, Expires: f.expiry()})
}

func (f *fakeServer) expiry() *time.Time {
	if f.expiresIn == 0 {
		return nil
	}
	e := time.Now().Add(f.expiresIn)
	return &e
}

func (f *fakeServer) renew(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if f.refuseRenew || (tok != f.credential && tok != f.expired) {
		f.fail(w, http.StatusUnauthorized, api.ReasonCredentialExpired, "the cluster credential expired too long ago to renew")
		return
	}
	f.renewals++
	if tok == f.credential {
		f.previous = tok
	}
	f.credential = "cred-" + strconv.Itoa(f.renewals+1)
	f.askRenew = false
	json.NewEncoder(w).Encode(api.RegisterResponse{Namespace: "fleet-default", ClusterName: "c-1", Credential: f.credential, Expires: f.expiry()})
}

func (f *fakeServer) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		f.tokensSeen[tok] = true
		deleted := f.deleted
		ok := tok == f.credential || (tok == f.previous && tok != "")
		expired := tok == f.expired
		if f.askRenew || expired {
			w.Header().Set(api.HeaderRenewCredential, "1")
		}
		f.mu.Unlock()
		switch {
		case expired:
			f.fail(w, http.StatusUnauthorized, api.ReasonCredentialExpired, "the cluster credential expired; renew it")
		case deleted:
			f.fail(w, http.StatusUnauthorized, api.ReasonClusterDeleted, "cluster fleet-default/c-1 was deleted from the server; its credential is revoked")
		case !ok:
			f.fail(w, http.StatusUnauthorized, "Unauthorized", "invalid cluster credential")
		default:
			h(w, r)
		}
	}
}

func (f *fakeServer) getDesired(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	since, _ := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
	f.polls = append(f.polls, since)
	if f.tooLarge && since < f.desired.Revision {
		f.fail(w, http.StatusInternalServerError, api.ReasonDesiredTooLarge, "the desired state of cluster fleet-default/c-1 is larger than an agent reads")
		return
	}
	if f.pollAfter > 0 {
		w.Header().Set(api.HeaderPollAfter, strconv.Itoa(int(f.pollAfter/time.Second)))
	}
	// A long poll, as the real server holds it: until the state changes or wait passes.
	if secs, _ := strconv.Atoi(r.URL.Query().Get("wait")); secs > 0 {
		f.held++
		deadline := time.Now().Add(time.Duration(secs) * time.Second)
		for since > 0 && since >= f.desired.Revision && time.Now().Before(deadline) && r.Context().Err() == nil {
			f.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			f.mu.Lock()
		}
		f.held--
	}
	if d := f.phaseInterval; d > 0 {
		phase := d / 3
		next := (phase - time.Duration(time.Now().UnixNano()%int64(d)) + d) % d
		if next < d/10 {
			next += d
		}
		w.Header().Set(api.HeaderPollAfter, strconv.Itoa(max(1, int(next.Seconds()))))
	}
	if since > 0 && since >= f.desired.Revision {
		f.notModified++
		w.Header().Set(api.HeaderRevision, strconv.FormatInt(f.desired.Revision, 10))
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if f.served == nil {
		f.served = map[int64]time.Time{}
	}
	if _, ok := f.served[f.desired.Revision]; !ok {
		f.served[f.desired.Revision] = time.Now()
	}
	ds := f.desired
	if f.inline {
		ds.Contents = map[string][]byte{}
		for _, d := range ds.Deployments {
			ds.Contents[d.ContentHash] = f.content[d.ContentHash]
			if f.corrupt[d.ContentHash] {
				ds.Contents[d.ContentHash] = append([]byte("garbage"), f.content[d.ContentHash]...)
			}
		}
		// Content no deployment names is not taken, though its digest is right.
		ds.Contents[bundle.Digest([]byte("stray"))] = []byte("stray")
	}
	json.NewEncoder(w).Encode(ds)
}

func (f *fakeServer) getContent(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := r.PathValue("digest")
	f.fetches[d]++
	data, ok := f.content[d]
	if !ok {
		f.fail(w, http.StatusForbidden, "Forbidden", "content "+d+" is not part of the cluster's desired state")
		return
	}
	if f.corrupt[d] {
		data = append([]byte("garbage"), data...)
	}
	w.Write(data)
}

func (f *fakeServer) postStatus(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var rep api.StatusReport
	if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
		f.fail(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	f.reports = append(f.reports, rep)
	if rep.Seq > f.lastSeq {
		f.lastSeq = rep.Seq
		for _, d := range rep.Deployments {
			f.latest[d.Bundle] = d
		}
		for _, b := range rep.Removed {
			delete(f.latest, b)
		}
	}
	json.NewEncoder(w).Encode(api.StatusAck{Seq: rep.Seq})
}

func (f *fakeServer) checksum() string {
	return client.ChecksumPEM(pemOf(f.srv.Certificate().Raw))
}

// setDesired publishes a new desired state with the given deployments, whose content is
// given as files.
func (f *fakeServer) setDesired(labels map[string]string, deps ...fakeDeployment) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.desired.Revision++
	f.desired.ClusterLabels = labels
	f.desired.Deployments = []api.DeploymentSpec{}
	for _, d := range deps {
		data, digest, err := bundle.Pack(d.files)
		if err != nil {
			f.t.Fatal(err)
		}
		f.content[digest] = data
		spec := api.DeploymentSpec{Bundle: "fleet-default/" + d.name, ID: d.name + "-" + digest[7:19], ContentHash: digest, ReleaseName: d.name, Paused: d.paused, Options: d.opts}
		if d.paused {
			spec.ID += "-paused"
		}
		f.desired.Deployments = append(f.desired.Deployments, spec)
	}
}

type fakeDeployment struct {
	name   string
	files  bundle.Files
	opts   api.BundleDeploymentOptions
	paused bool
}

func configMapBundle(name, value string) fakeDeployment {
	return fakeDeployment{name: name, files: bundle.Files{"cm.yaml": []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: " + name + "\ndata:\n  v: \"" + value + "\"\n")}}
}

func (f *fakeServer) snapshot() fakeSnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	latest := map[string]api.DeploymentStatus{}
	for k, v := range f.latest {
		latest[k] = v
	}
	return fakeSnapshot{
		registrations: len(f.registrations),
		polls:         append([]int64(nil), f.polls...),
		notModified:   f.notModified,
		reports:       append([]api.StatusReport(nil), f.reports...),
		latest:        latest,
		fetches:       len(f.fetches),
	}
}

type fakeSnapshot struct {
	registrations int
	polls         []int64
	notModified   int
	reports       []api.StatusReport
	latest        map[string]api.DeploymentStatus
	fetches       int
}

func (f *fakeServer) set(fn func(f *fakeServer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// fakeApplier records what the agent asks of the apply engine.
type fakeApplier struct {
	mu      sync.Mutex
	applied map[string]apply.Deployment // by ID, the last Apply
	applies map[string]int
	// hashes are the hashes applied, by ID, in order.
	hashes  map[string][]string
	status  map[string]int
	removed []string
	// state overrides the result state of a deployment (Ready by default).
	state  map[string]apply.State
	failed map[string]error
	notify func(string)
	// inventoried are deployments the cluster holds from before the agent's state was lost.
	inventoried []string
}

func newFakeApplier() *fakeApplier {
	return &fakeApplier{applied: map[string]apply.Deployment{}, applies: map[string]int{}, hashes: map[string][]string{}, status: map[string]int{}, state: map[string]apply.State{}, failed: map[string]error{}}
}

func (a *fakeApplier) result(d apply.Deployment) apply.Result {
	st := a.state[d.ID]
	if st == "" {
		st = apply.Ready
	}
	res := apply.Result{State: st, AppliedHash: d.Hash}
	if st != apply.Ready {
		res.Message = "ConfigMap x: " + string(st)
	}
	return res
}

func (a *fakeApplier) Apply(_ context.Context, d apply.Deployment) (apply.Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.failed[d.ID]; err != nil {
		return apply.Result{State: apply.ErrApplied, Message: err.Error()}, err
	}
	a.applies[d.ID]++
	a.hashes[d.ID] = append(a.hashes[d.ID], d.Hash)
	a.applied[d.ID] = d
	return a.result(d), nil
}

func (a *fakeApplier) Status(_ context.Context, d apply.Deployment) (apply.Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status[d.ID]++
	old, ok := a.applied[d.ID]
	switch {
	case !ok:
		return apply.Result{State: apply.WaitApplied, Message: "not applied yet"}, nil
	case old.Hash != d.Hash:
		return apply.Result{State: apply.OutOfSync, AppliedHash: old.Hash, Message: "an older version is applied"}, nil
	}
	return a.result(d), nil
}

func (a *fakeApplier) Remove(_ context.Context, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.removed = append(a.removed, id)
	delete(a.applied, id)
	a.inventoried = slices.DeleteFunc(a.inventoried, func(s string) bool { return s == id })
	return nil
}

// Deployments are those applied and not removed, and those inventoried by an earlier run.
func (a *fakeApplier) Deployments(context.Context) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id := range a.applied {
		ids = append(ids, id)
	}
	return append(ids, a.inventoried...), nil
}

func (a *fakeApplier) Watch(ctx context.Context, notify func(string)) error {
	a.mu.Lock()
	a.notify = notify
	a.mu.Unlock()
	<-ctx.Done()
	return nil
}

func (a *fakeApplier) set(fn func(a *fakeApplier)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	fn(a)
}

func (a *fakeApplier) get(fn func(a *fakeApplier)) { a.set(fn) }

// fakeCluster is a cluster with a fixed identity and inventory.
type fakeCluster struct {
	id  string
	inv api.ClusterInventory
}

func (c *fakeCluster) ClientID(context.Context) (string, error) { return c.id, nil }
func (c *fakeCluster) Inventory(context.Context) (*api.ClusterInventory, error) {
	inv := c.inv
	return &inv, nil
}
func (c *fakeCluster) ValuesFrom(context.Context, []api.ValuesFrom, string) (map[string]any, error) {
	return nil, nil
}

// testAgent runs the agent against a fake server and applier until stopped.
type testAgent struct {
	t       *testing.T
	cfg     Config
	applier *fakeApplier
	cluster *fakeCluster
	cancel  context.CancelFunc
	done    chan error
}

func testConfig(t *testing.T, f *fakeServer, stateDir string) Config {
	return Config{
		Server:            f.srv.URL,
		CAChecksum:        f.checksum(),
		Token:             "good-token",
		Labels:            map[string]string{"env": "test"},
		StateDir:          stateDir,
		Logger:            testLogger(t),
		Version:           "test",
		PollInterval:      20 * time.Millisecond,
		StatusInterval:    100 * time.Millisecond,
		HeartbeatInterval: time.Hour,
		InventoryInterval: time.Hour,
		ReportDelay:       5 * time.Millisecond,
		MinBackoff:        10 * time.Millisecond,
		MaxBackoff:        100 * time.Millisecond,
	}
}

func startAgent(t *testing.T, cfg Config, ap *fakeApplier) *testAgent {
	t.Helper()
	return startAgentAs(t, "uid-1", cfg, ap)
}

// startAgentAs runs the agent on a cluster whose identity is clientID.
func startAgentAs(t *testing.T, clientID string, cfg Config, ap *fakeApplier) *testAgent {
	t.Helper()
	if ap == nil {
		ap = newFakeApplier()
	}
	cfg = cfg.withDefaults()
	dir, err := openStateDir(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{t: t, cfg: cfg, applier: ap, cluster: &fakeCluster{id: clientID, inv: api.ClusterInventory{KubernetesVersion: "v1.37.2", NodeCount: 1, Architecture: "arm64", AgentVersion: "test"}}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	ta.cancel = cancel
	go func() {
		ta.done <- run(ctx, cfg, deps{cluster: ta.cluster, applier: ap, creds: fileCreds{dir}, dir: dir})
	}()
	t.Cleanup(func() { ta.stop() })
	return ta
}

// stop ends the agent and returns what Run returned.
func (ta *testAgent) stop() error {
	ta.cancel()
	select {
	case err := <-ta.done:
		ta.done <- err
		return err
	case <-time.After(10 * time.Second):
		ta.t.Fatal("the agent did not stop within 10s of its context ending")
	}
	return nil
}

// wait returns what Run returned once it returns by itself.
func (ta *testAgent) wait(timeout time.Duration) error {
	select {
	case err := <-ta.done:
		ta.done <- err
		return err
	case <-time.After(timeout):
		return errors.New("the agent is still running")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
