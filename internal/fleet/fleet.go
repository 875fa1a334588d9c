// Package fleet is the server's in-memory model of the fleet: every cluster with its labels,
// the cluster groups, the bundles with their compiled targets, and the last reported state of
// every (cluster, bundle) pair. Desired state is computed from it, never stored per pair: a
// cluster's deployments are the bundles whose targets match it, customised by the matching
// target. Each cluster carries the revision at which its desired state last changed, so an
// agent's "anything new since R?" is answered from memory.
//
// The model is loaded with streaming scans when the server starts and kept current by store
// watches; reported status is persisted in the store's compact status rows and rolled up per
// bundle, cluster and group incrementally.
package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/store"
)

// LabelGitRepo names the GitRepo a bundle came from; its rollup adds up those bundles.
const LabelGitRepo = "flotilla.dev/gitrepo"

// Config tunes the model.
type Config struct {
	// PollInterval is the base interval agents are told to poll at.
	PollInterval time.Duration
	// PollBudget is the rate of polls per second the whole fleet may make; agents are told
	// to come back later as the fleet grows, so the load stays within it.
	PollBudget float64
	// BellPollInterval is how often agents whose doorbell pings the server answers are
	// told to poll HTTPS (at least the fleet's interval): their pings carry their desired
	// version and keep them seen, and a ring brings them at once, so a poll is only a
	// safety net.
	BellPollInterval time.Duration
	// MaxWaiters bounds how many agents may hold a long poll open at once; they are told
	// "come now" the moment their desired state changes.
	MaxWaiters int
	// OfflineAfter: a cluster not seen for this long is Offline.
	OfflineAfter time.Duration
	// StatusInterval is how often rolled-up status is written to objects.
	StatusInterval time.Duration
	// LastSeenResolution: a cluster's stored lastSeen is refreshed at most this often when
	// nothing else about it changed, to keep an idle fleet from writing constantly.
	LastSeenResolution time.Duration
	// LastSeenWriteBudget bounds the Cluster writes per second that only refresh lastSeen;
	// in a large fleet the stored lastSeen gets coarser instead (the model keeps the exact
	// time, and a cluster going offline is written at once).
	LastSeenWriteBudget float64
	Logger              *slog.Logger
	// Gone, if set, is told of a cluster that left the model: deleted, or its Cluster given
	// to a rebuilt cluster (a new UID). It is called with the model locked: it must not block.
	Gone func(ns, name string)
	// Observe, if set, is told how long each status pass took.
	Observe func(controller string, d time.Duration, err error)
	// Changed, if set, is told the UID of a cluster whose desired state changed, and
	// AllChanged of a change to every cluster's (the doorbell rings their agents). Both
	// are called with the model locked: they must not block.
	Changed    func(uid string)
	AllChanged func()
	// Leading, if set, says whether this replica writes the fleet's rolled-up status
	// (bundles, GitRepos, groups, projects, cluster states: the offline sweep included).
	// Other replicas keep their model current and write only what they alone know: when
	// their agents were last seen and what inventory they reported. Nil: always leads.
	Leading func() bool
	// Replicated says other server processes share the store: the model then follows the
	// reports they store. A store of one process (SQLite) has none to follow.
	Replicated bool
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	// A held poll costs the server about 20 KB; 5,000 of them, 100 MB.
	return Config{PollInterval: 15 * time.Second, PollBudget: 2000, BellPollInterval: 6 * time.Hour, MaxWaiters: 5000, OfflineAfter: 2 * time.Minute, StatusInterval: 2 * time.Second,
		LastSeenResolution: time.Minute, LastSeenWriteBudget: 50, Logger: slog.Default()}
}

// Store is what the model needs of the store.
type Store interface {
	store.Store
	store.Agents
	store.Summaries
}

// Fleet is the model.
type Fleet struct {
	cfg Config
	st  Store
	log *slog.Logger

	mu         sync.RWMutex
	workspaces map[string]*workspace
	byUID      map[string]*Cluster
	// agg is the dashboard's counts and the clusters in list order (aggregate.go).
	agg aggIndex
	// loadRev is the store revision the model was loaded at.
	loadRev int64
	ready   atomic.Bool
	// loadedAt is when the model was last loaded (unix nanoseconds).
	loadedAt atomic.Int64
	bell     atomic.Pointer[Pingers]
	clusters atomic.Int64

	waiters map[*Cluster]chan struct{}
	// known wakes registrations waiting for their cluster (WaitKnown).
	known knownWaiters
	// reporting holds the clusters whose report is being stored, until it is.
	reporting map[*Cluster]chan struct{}
	// held keeps, for a cluster in reporting, the newest stored rows the status follower
	// passed over meanwhile; the report takes them when it is done (takeHeld).
	held map[*Cluster]storedStatus

	dirtyBundles  map[*bundleEntry]struct{}
	dirtyClusters dirtySet
	dirtyGroups   map[string]struct{} // namespaces whose groups need their counts written

	// access, when set, adds each cluster's compiled access objects to its desired state.
	access      Access
	accessOpts  rbac.CompileOptions
	accessReady func() bool
	// accessGen grows with every access change covering all clusters: a cluster versioned
	// at an older one is stale, so such a change marks a million clusters in one step.
	accessGen atomic.Int64
	// usage is what clusters reported of each project's quota usage: project → cluster
	// UID → namespace → resource → used. Only in memory; agents report it again.
	usage         map[string]map[string]map[string]map[string]string
	dirtyProjects map[string]struct{}

	// statusFrom is where the status follower starts after a load: the status revision
	// read before the load's scans.
	statusFrom store.StatusCursor
}

type workspace struct {
	name     string
	clusters map[string]*Cluster
	groups   map[string]*group
	bundles  map[string]*bundleEntry
}

// Cluster is one registered cluster in memory. A million of them are most of the server's
// heap: fields few clusters use live in more, and small ones are kept together so that the
// struct stays in a smaller size class.
type Cluster struct {
	Namespace, Name, UID string
	Labels, Annotations  map[string]string
	ClientID             string

	// desiredRev is the version of the desired state: a digest of it (see version), so that
	// an agent's version from before a restart still matches when nothing changed for it.
	// 0 means not computed yet (after a load or a change); polls compute it under the read
	// lock, so it is atomic.
	desiredRev atomic.Int64
	// accessGen is the Fleet's accessGen when desiredRev was computed.
	accessGen atomic.Int64
	seq       int64
	// seen is when the agent last called, in unix nanoseconds; polls set it under the read
	// lock, so it is atomic.
	seen atomic.Int64
	// storedSeen is the lastSeen last seen stored, in unix nanoseconds (0: none).
	storedSeen int64
	inventory  invDoc      // most clusters of a fleet report alike
	storedInv  invDoc      // the inventory last seen stored (by any replica)
	state      stateCode   // last written cluster state
	statusHash uint64      // of the stored status document (see statusHash)
	deps       deps        // one pair per bundle that targets the cluster or that it reported
	counts     stateCounts // effective state → n, over this cluster's deployments
	Paused     bool
	dirty      bool // its status is to be written (Fleet.dirtyClusters)
	more       *clusterMore
	agg        aggIn // what the cluster added to the dashboard's counts
}

// invDoc is an inventory's JSON, one copy of each held by the unique package; the zero
// invDoc is none. Half the size of a string, and a copy no cluster holds any more is
// freed.
type invDoc = unique.Handle[string]

// invOf returns the invDoc of JSON b ("" and null: none).
func invOf(b []byte) invDoc {
	if len(b) == 0 || string(b) == "null" {
		return invDoc{}
	}
	return unique.Make(string(b))
}

// invJSON returns the JSON of an invDoc ("" for none).
func invJSON(d invDoc) string {
	if d == (invDoc{}) {
		return ""
	}
	return d.Value()
}

// clusterMore is what few clusters have.
type clusterMore struct {
	values   map[string]any // the cluster's templateValues
	tmplHash string
	access   *accessReport
	projects map[string]struct{} // projects whose usage the cluster reported
}

// ext returns c's clusterMore, made if it has none.
func (c *Cluster) ext() *clusterMore {
	if c.more == nil {
		c.more = &clusterMore{}
	}
	return c.more
}

// Values returns the cluster's templateValues.
func (c *Cluster) Values() map[string]any {
	if c.more == nil {
		return nil
	}
	return c.more.values
}

// setValues sets the cluster's templateValues and forgets the digest made of them.
func (c *Cluster) setValues(v map[string]any) {
	if c.more == nil && v == nil {
		return
	}
	c.ext().values, c.more.tmplHash = v, ""
}

func (c *Cluster) accessReport() *accessReport {
	if c.more == nil {
		return nil
	}
	return c.more.access
}

func (c *Cluster) projectSet() map[string]struct{} {
	if c.more == nil {
		return nil
	}
	return c.more.projects
}

// storedSeenAt is when the stored lastSeen says the agent last called (zero: unknown).
func (c *Cluster) storedSeenAt() time.Time {
	if c.storedSeen == 0 {
		return time.Time{}
	}
	return time.Unix(0, c.storedSeen)
}

func (c *Cluster) setStoredSeen(t time.Time) {
	if t.IsZero() {
		c.storedSeen = 0
		return
	}
	c.storedSeen = t.UnixNano()
}

// stateIndex is the index of a known state in states, or -1.
func stateIndex(s string) int {
	for i, st := range states {
		if st == s {
			return i
		}
	}
	return -1
}

// stateCode is a cluster state as a Cluster keeps the one last written: a byte, where a
// string was 16 of the ~250 a cluster takes. 0 is none; the states the model writes are
// 1 + their stateSlot; stateOther is any other text found stored, which the model's own
// state never equals, so it is written over.
type stateCode uint8

const stateOther stateCode = 255

// The codes loadGrace compares with, figured once.
var (
	codeOffline = codeOf("Offline")
	codePending = codeOf("Pending")
)

// codeOf returns s's stateCode.
func codeOf(s string) stateCode {
	if s == "" {
		return 0
	}
	for i, st := range stateSlots {
		if st == s {
			return stateCode(i + 1)
		}
	}
	return stateOther
}

// stateCounts counts deployments by state without a map per cluster.
type stateCounts [7]int32

var states = [...]string{api.StateReady, api.StateNotReady, api.StateModified, api.StateWaitApplied, api.StateErrApplied, api.StateOutOfSync, api.StatePending}

func (s *stateCounts) add(state string, d int32) {
	if i := stateIndex(state); i >= 0 {
		s[i] += d
	}
}

// notReady reports whether any counted deployment is not Ready.
func (s *stateCounts) notReady() bool {
	for i := 1; i < len(states); i++ {
		if s[i] > 0 {
			return true
		}
	}
	return false
}

// asMap returns the counts as a map, and their total.
func (s *stateCounts) asMap() (map[string]int, int) {
	m := map[string]int{}
	total := 0
	for i, n := range s {
		if n != 0 {
			m[states[i]] = int(n)
			total += int(n)
		}
	}
	return m, total
}

// deps are a cluster's pairs. A slice rather than a map by bundle name: a cluster has few,
// and a Go map holding one costs ~250 bytes, a quarter of the model's memory per cluster.
// The pairs are held in the slice, not behind pointers: at a million clusters each object
// less per cluster is a million fewer for the collector to mark. A pair's address is
// therefore good only until the cluster's pairs are next added to or removed.
type deps []pair

// get returns the pair of bundle, or nil.
func (d deps) get(bundle string) *pair {
	for i := range d {
		if d[i].bundle == bundle {
			return &d[i]
		}
	}
	return nil
}

// addDep adds the pair of a bundle c has none for yet, and returns it.
func (c *Cluster) addDep(bundle string, p pair) *pair {
	p.bundle = bundle
	c.deps = append(c.deps, p)
	return &c.deps[len(c.deps)-1]
}

// delDep removes bundle's pair.
func (c *Cluster) delDep(bundle string) {
	for i := range c.deps {
		if c.deps[i].bundle == bundle {
			c.deps = slices.Delete(c.deps, i, i+1)
			if len(c.deps) == 0 {
				c.deps = nil
			}
			return
		}
	}
}

// pair is one (cluster, bundle): which target matched (-1: none), what was reported, and,
// while a rollout holds the cluster back, the older deployment it keeps running.
//
// At a million clusters there is a pair for nearly every cluster, so its size counts: the
// index and the state are packed into one word (80 bytes, where a string and an int made 96).
type pair struct {
	bundle     string // the bundle's name, shared with its entry
	desiredID  string
	reportedID string
	message    string
	held       *api.DeploymentSpec // its ID is the held deployment's
	target     int32               // an index into the bundle's targets, or -1
	state      depState
}

// depState is a reported deployment state: 0 for none, else 1 + its index in states.
type depState uint8

// depStateOf returns s's depState. Reports with other states are refused, so only a store
// written by another version can hold one; it counts as NotReady, which it surely is to
// this server.
func depStateOf(s string) depState {
	if i := stateIndex(s); i >= 0 {
		return depState(i + 1)
	}
	if s == "" {
		return 0
	}
	return depState(stateIndex(api.StateNotReady) + 1)
}

func (s depState) String() string {
	if s == 0 {
		return ""
	}
	return states[s-1]
}

// available reports whether the cluster runs this bundle well, in whichever version it has.
func (p *pair) available() bool {
	if p.held != nil {
		return p.reportedID == p.held.ID && p.state == readyState
	}
	return p.effective() == api.StateReady
}

func (p *pair) effective() string {
	switch {
	case p.target < 0:
		return ""
	case p.held != nil:
		// Not updated yet: a rollout holds it back.
		return api.StateOutOfSync
	case p.reportedID == "":
		return api.StateWaitApplied
	case p.reportedID != p.desiredID:
		return api.StateOutOfSync
	}
	return p.state.String()
}

// readyState is Ready's depState.
var readyState = depStateOf(api.StateReady)

type group struct {
	name     string
	labels   map[string]string
	selector labels.Selector
}

type targetInfo struct {
	opts api.BundleDeploymentOptions
	id   string
	spec *api.DeploymentSpec
}

type bundleEntry struct {
	ns, name    string
	rv          string
	generation  int64
	labels      map[string]string
	spec        api.BundleSpec
	matcher     *bundle.Matcher
	targets     []targetInfo
	templated   bool
	usesGroups  bool
	releaseName string
	err         string

	counts   map[string]int
	desired  int
	notReady map[*Cluster]struct{}

	// rollout is the latest rollout state, for status; rolling says clusters are held.
	rolling bool
	rollout rolloutStatus
}

// New returns an empty model; Run loads and maintains it.
func New(st Store, cfg Config) *Fleet {
	def := DefaultConfig()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = def.PollInterval
	}
	if cfg.PollBudget == 0 {
		cfg.PollBudget = def.PollBudget
	}
	if cfg.MaxWaiters == 0 {
		cfg.MaxWaiters = def.MaxWaiters
	}
	if cfg.BellPollInterval == 0 {
		cfg.BellPollInterval = def.BellPollInterval
	}
	if cfg.OfflineAfter == 0 {
		cfg.OfflineAfter = max(def.OfflineAfter, 4*cfg.PollInterval)
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = def.StatusInterval
	}
	if cfg.LastSeenResolution == 0 {
		cfg.LastSeenResolution = def.LastSeenResolution
	}
	if cfg.LastSeenWriteBudget == 0 {
		cfg.LastSeenWriteBudget = def.LastSeenWriteBudget
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	return &Fleet{cfg: cfg, st: st, log: cfg.Logger, workspaces: map[string]*workspace{}, byUID: map[string]*Cluster{}, agg: newAggIndex(), waiters: map[*Cluster]chan struct{}{}, reporting: map[*Cluster]chan struct{}{}, held: map[*Cluster]storedStatus{},
		dirtyBundles: map[*bundleEntry]struct{}{}, dirtyGroups: map[string]struct{}{},
		usage: map[string]map[string]map[string]map[string]string{}, dirtyProjects: map[string]struct{}{}}
}

// Ready reports whether the model has been loaded.
func (f *Fleet) Ready() bool { return f.ready.Load() }

func (f *Fleet) ws(ns string) *workspace {
	w := f.workspaces[ns]
	if w == nil {
		w = &workspace{name: ns, clusters: map[string]*Cluster{}, groups: map[string]*group{}, bundles: map[string]*bundleEntry{}}
		f.workspaces[ns] = w
	}
	return w
}

// clusterView is how the bundle package sees a cluster.
func (f *Fleet) clusterView(w *workspace, c *Cluster) bundle.Cluster {
	groups := map[string]map[string]string{}
	for _, g := range w.groups {
		if g.selector.Matches(labels.Set(c.Labels)) {
			groups[g.name] = g.labels
		}
	}
	// As in Fleet, the group "default" holds every cluster unless a ClusterGroup of that
	// name says otherwise.
	if _, ok := w.groups[bundle.DefaultGroup]; !ok {
		groups[bundle.DefaultGroup] = map[string]string{}
	}
	return bundle.Cluster{Name: c.Name, Namespace: c.Namespace, Labels: c.Labels, Annotations: c.Annotations, Groups: groups}
}

// digestOf hashes parts into a short stable ID.
func digestOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

func templateHash(c *Cluster) string {
	m := c.ext()
	if m.tmplHash == "" {
		l, _ := json.Marshal(c.Labels)
		a, _ := json.Marshal(c.Annotations)
		v, _ := json.Marshal(m.values)
		m.tmplHash = digestOf(c.Namespace, c.Name, string(l), string(a), string(v))
	}
	return m.tmplHash
}

// compileBundle prepares a bundle's targets: which clusters match and, per target, the
// options and the deployment ID those clusters get.
func compileBundle(obj *api.Object) (*bundleEntry, error) {
	var spec api.BundleSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return nil, fmt.Errorf("decoding bundle %s/%s: %w", obj.Metadata.Namespace, obj.Metadata.Name, err)
	}
	b := &bundleEntry{ns: obj.Metadata.Namespace, name: obj.Metadata.Name, rv: obj.Metadata.ResourceVersion,
		generation: obj.Metadata.Generation, labels: obj.Metadata.Labels, spec: spec,
		counts: map[string]int{}, notReady: map[*Cluster]struct{}{}}
	b.releaseName = bundle.BundleName(b.name, "")
	m, err := bundle.NewMatcher(spec.Targets, spec.TargetRestrictions)
	if err != nil {
		b.err = err.Error()
	}
	b.matcher = m
	for i := range spec.Targets {
		t := &spec.Targets[i]
		if t.ClusterGroup != "" || t.ClusterGroupSelector != nil {
			b.usesGroups = true
		}
		opts := bundle.Merge(spec.BundleDeploymentOptions, t)
		raw, _ := json.Marshal(opts)
		id := digestOf(spec.ContentHash, string(raw), b.releaseName, strconv.FormatBool(spec.Paused))
		b.targets = append(b.targets, targetInfo{opts: opts, id: id, spec: &api.DeploymentSpec{
			Bundle: b.ns + "/" + b.name, ID: id, ContentHash: spec.ContentHash, ReleaseName: b.releaseName, Options: opts, Paused: spec.Paused}})
		if opts.Helm != nil && (len(opts.Helm.Values) > 0 || len(opts.Helm.TemplateValues) > 0) {
			// Values may be templated with the cluster's labels: the ID must change when
			// they do, so that the agent renders again.
			b.templated = true
		}
	}
	for _, r := range spec.TargetRestrictions {
		if r.ClusterGroup != "" || r.ClusterGroupSelector != nil {
			b.usesGroups = true
		}
	}
	return b, nil
}

// match returns which target of b applies to c, or -1.
func (f *Fleet) match(w *workspace, b *bundleEntry, c *Cluster) (int, string) {
	if b.matcher == nil || b.spec.ContentHash == "" {
		return -1, ""
	}
	var view bundle.Cluster
	if b.usesGroups {
		view = f.clusterView(w, c)
	} else {
		// No target or restriction of b names a group: the cluster's groups (two maps made
		// per cluster and bundle) would not be read.
		view = bundle.Cluster{Name: c.Name, Namespace: c.Namespace, Labels: c.Labels, Annotations: c.Annotations}
	}
	t, ok := b.matcher.Match(view)
	if !ok {
		return -1, ""
	}
	for i := range b.spec.Targets {
		if &b.spec.Targets[i] == t {
			id := b.targets[i].id
			if b.templated {
				id = digestOf(id, templateHash(c))
			}
			return i, id
		}
	}
	return -1, ""
}

// setPair moves one pair to its new target and keeps every rollup in step. It returns
// whether the cluster's desired state changed. With prev set (a staged rollout of a new
// version of b), a cluster that ran the previous version keeps it until the rollout admits it.
func (f *Fleet) setPair(b *bundleEntry, c *Cluster, target int, id string, prev *bundleEntry) bool {
	p := c.deps.get(b.name)
	if p == nil {
		if target < 0 {
			return false
		}
		p = c.addDep(b.name, pair{target: -1})
	}
	if int(p.target) == target && p.desiredID == id {
		return false
	}
	old := p.effective()
	switch {
	case target < 0:
		p.held = nil
	case prev != nil && p.held == nil && p.target >= 0 && int(p.target) < len(prev.targets):
		spec := *prev.targets[p.target].spec
		spec.ID = p.desiredID
		p.held = &spec
		b.rolling = true
	case prev == nil:
		p.held = nil
	}
	p.target, p.desiredID = int32(target), id
	f.recount(b, c, old, p.effective())
	if target < 0 && p.reportedID == "" {
		c.delDep(b.name)
	}
	return true
}

// recount moves one pair's contribution from state old to state now ("" = not targeted).
func (f *Fleet) recount(b *bundleEntry, c *Cluster, old, now string) {
	if old == now {
		return
	}
	if old != "" {
		b.counts[old]--
		c.counts.add(old, -1)
		b.desired--
	}
	if now != "" {
		b.counts[now]++
		c.counts.add(now, 1)
		b.desired++
	}
	f.aggRecount(c, old, now)
	f.aggTouch(c)
	if now != "" && now != api.StateReady {
		b.notReady[c] = struct{}{}
	} else if _, ok := b.notReady[c]; ok {
		delete(b.notReady, c)
		if len(b.notReady) == 0 {
			// A map keeps the size it grew to: a change rolled out to a million clusters
			// left 31 MB of empty slots behind it.
			b.notReady = map[*Cluster]struct{}{}
		}
	}
	f.dirtyBundles[b] = struct{}{}
	f.dirtyClusters.add(c)
	f.dirtyGroups[c.Namespace] = struct{}{}
}

// retarget recomputes c's pairs with every bundle of its workspace; force gives it a new
// version even if no pair changed (its labels did, which templated values may use).
func (f *Fleet) retarget(w *workspace, c *Cluster, force bool) {
	changed := false
	for _, b := range w.bundles {
		t, id := f.match(w, b, c)
		if f.setPair(b, c, t, id, nil) {
			changed = true
		}
	}
	if changed || force {
		f.bump(c)
	}
}

// bump marks c's desired state changed (its next poll computes the new version) and wakes
// an agent waiting for one.
func (f *Fleet) bump(c *Cluster) {
	c.desiredRev.Store(0)
	if ch := f.waiters[c]; ch != nil {
		close(ch)
		delete(f.waiters, c)
	}
	if f.cfg.Changed != nil {
		f.cfg.Changed(c.UID)
	}
}

// DoorbellLookup returns the cluster whose UID has the text form uid, and whether its
// desired state differs from version; ok is false for an unknown UID. A state not versioned
// since a change or a load is versioned here, as a poll would, so that a fleet pinging after
// a server restart is told "unchanged" where nothing changed. A state that cannot be served
// yet (access not loaded) counts as unchanged: the agent asks again at its next ping. uid is
// bytes so that the look-up allocates nothing (every doorbell ping makes one).
func (f *Fleet) DoorbellLookup(uid []byte, version int64) (c *Cluster, changed, ok bool) {
	f.mu.RLock()
	c = f.byUID[string(uid)]
	var ns, name, id string
	var rev int64
	if c != nil {
		// Read under the lock: a re-registration renames the cluster in place.
		ns, name, id, rev = c.Namespace, c.Name, c.UID, f.currentRev(c)
	}
	f.mu.RUnlock()
	if c == nil {
		return nil, false, false
	}
	if rev != 0 {
		return c, rev != version, true
	}
	_, rev, err := f.Desired(ns, name, id, version)
	if errors.Is(err, ErrUnknownCluster) {
		return nil, false, false
	}
	return c, err == nil && rev != version, true
}

// KnownUID reports whether a cluster with uid exists.
func (f *Fleet) KnownUID(uid string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.byUID[uid] != nil
}

// UIDOf returns the UID of the cluster ns/name, or "".
func (f *Fleet) UIDOf(ns, name string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if w := f.workspaces[ns]; w != nil {
		if c := w.clusters[name]; c != nil {
			return c.UID
		}
	}
	return ""
}

// Errors for the agent API.
var (
	ErrUnknownCluster = errors.New("cluster not found")
	ErrNotReady       = errors.New("fleet model is loading")
)

// Desired returns c's desired state if it changed after since; nil means unchanged.
func (f *Fleet) Desired(ns, name, uid string, since int64) (*api.DesiredState, int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w := f.workspaces[ns]
	c := w.cluster(name, uid)
	if c == nil {
		return nil, 0, ErrUnknownCluster
	}
	if f.access != nil && f.accessReady != nil && !f.accessReady() {
		return nil, 0, ErrNotReady
	}
	rev := f.currentRev(c)
	if rev != 0 && since == rev {
		return nil, rev, nil
	}
	ds := &api.DesiredState{ClusterName: c.Name, ClusterNamespace: c.Namespace,
		ClusterLabels: c.Labels, ClusterAnnotations: c.Annotations, ClusterValues: c.Values(), Deployments: []api.DeploymentSpec{}}
	names := make([]string, 0, len(c.deps))
	for _, p := range c.deps {
		if p.target >= 0 {
			names = append(names, p.bundle)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		b := w.bundles[n]
		p := c.deps.get(n)
		var d api.DeploymentSpec
		switch {
		case p.held != nil:
			d = *p.held
		case p.reportedID == "" && f.blocked(w, b, c) != "":
			// dependsOn holds back a first deployment until its dependencies are ready here.
			continue
		default:
			d = *b.targets[p.target].spec
			d.ID = p.desiredID
		}
		d.Paused = d.Paused || c.Paused
		ds.Deployments = append(ds.Deployments, d)
	}
	if f.access != nil {
		ds.Access = f.accessState(w, c)
	}
	if rev == 0 {
		// Under the read lock no change can come between: concurrent polls of the same
		// cluster compute the same version. The access objects count by their digest.
		full := ds.Access
		if full != nil {
			ds.Access = &api.AccessState{Digest: full.Digest}
		}
		rev = version(ds)
		ds.Access = full
		c.desiredRev.Store(rev)
		c.accessGen.Store(f.accessGen.Load())
	}
	if since == rev {
		return nil, rev, nil
	}
	ds.Revision = rev
	return ds, rev, nil
}

// version is the digest of a desired state (Revision and PollAfterSeconds unset), as a
// positive number. encoding/json writes map keys in order, so the same state always has the
// same version; agents compare versions for equality only.
func version(ds *api.DesiredState) int64 {
	h := sha256.New()
	json.NewEncoder(h).Encode(ds)
	var sum [sha256.Size]byte
	v := int64(binary.BigEndian.Uint64(h.Sum(sum[:0])) >> 1)
	return max(v, 1)
}

// Unapplied appends to dst the content digests of ds's deployments that the cluster has
// not reported applied (a report names the deployment's ID), each once and at most max of
// them: the content its agent is about to fetch. A paused deployment counts only until the
// cluster first reports on its bundle: its agent fetches the content once to check it, but
// then reports the ID it last applied, never the paused one, so the content would be listed
// again in every answer. ds is an answer of Desired for the same cluster.
func (f *Fleet) Unapplied(ns, name, uid string, ds *api.DesiredState, max int, dst []string) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := f.workspaces[ns].cluster(name, uid)
	if c == nil {
		return dst
	}
	// A cluster of thousands of bundles: one pass over its pairs, not one per deployment,
	// built only once a lookup is needed.
	var byBundle map[string]*pair
	lookup := func(bundle string) *pair {
		if len(c.deps) <= 16 {
			return c.deps.get(bundle)
		}
		if byBundle == nil {
			byBundle = make(map[string]*pair, len(c.deps))
			for i := range c.deps {
				byBundle[c.deps[i].bundle] = &c.deps[i]
			}
		}
		return byBundle[bundle]
	}
	start := len(dst)
	for _, d := range ds.Deployments {
		if len(dst)-start >= max {
			break
		}
		// dst holds at most max of ours: the check is bounded by it.
		if d.ContentHash == "" || slices.Contains(dst[start:], d.ContentHash) {
			continue
		}
		_, bname, _ := splitKey(d.Bundle)
		// Listed until the cluster reports the deployment's ID; a paused one only until
		// the cluster first reports on its bundle.
		if p := lookup(bname); p == nil || p.reportedID == "" || !d.Paused && p.reportedID != d.ID {
			dst = append(dst, d.ContentHash)
		}
	}
	return dst
}

// References reports whether digest is content of one of c's deployments.
func (f *Fleet) References(ns, name, uid, digest string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w := f.workspaces[ns]
	c := w.cluster(name, uid)
	if c == nil {
		return false
	}
	for _, p := range c.deps {
		n := p.bundle
		if p.target >= 0 && w.bundles[n] != nil && w.bundles[n].spec.ContentHash == digest {
			return true
		}
		if p.held != nil && p.held.ContentHash == digest {
			return true
		}
	}
	return false
}

// Pingers is what the model needs of the datagram doorbell (internal/doorbell.Server).
type Pingers interface {
	// Len is the number of clusters whose agents ping.
	Len() int
	// PingInterval is how often each pings.
	PingInterval() time.Duration
}

// SetDoorbell tells the model of the server's doorbell: the clusters pinging it poll
// HTTPS every BellPollInterval, leaving the poll budget to the others.
func (f *Fleet) SetDoorbell(p Pingers) { f.bell.Store(&p) }

func (f *Fleet) pingers() Pingers {
	if p := f.bell.Load(); p != nil {
		return *p
	}
	return nil
}

// Interval is the mean time between the polls of an agent not on the doorbell: the base
// interval, stretched so that the whole fleet polls within the budget. Clusters on the
// doorbell take their share of the budget at BellPollInterval.
func (f *Fleet) Interval() time.Duration {
	d := f.cfg.PollInterval
	n, budget := float64(f.clusters.Load()), f.cfg.PollBudget
	if p := f.pingers(); p != nil {
		b := min(float64(p.Len()), n)
		n -= b
		budget = max(budget-b/f.BellInterval().Seconds(), budget/10)
	}
	if budget > 0 && n/budget > d.Seconds() {
		d = time.Duration(n / budget * float64(time.Second))
	}
	return d
}

// BellInterval is the mean time between the polls of an agent on the doorbell:
// BellPollInterval, or longer when even that would take the whole fleet over the budget.
func (f *Fleet) BellInterval() time.Duration {
	d := f.cfg.BellPollInterval
	if n := f.clusters.Load(); f.cfg.PollBudget > 0 && float64(n)/f.cfg.PollBudget > d.Seconds() {
		d = time.Duration(float64(n) / f.cfg.PollBudget * float64(time.Second))
	}
	return d
}

// seenInterval is the longest a cluster that is up goes between two signs of life: a poll,
// or a doorbell ping.
func (f *Fleet) seenInterval() time.Duration {
	d := f.Interval()
	if p := f.pingers(); p != nil {
		d = max(d, p.PingInterval())
	}
	return d
}

// seenResolution is how stale a stored lastSeen may get: the configured resolution,
// stretched so that refreshing every cluster's stays within the write budget.
func (f *Fleet) seenResolution() time.Duration {
	d := f.cfg.LastSeenResolution
	if n := float64(f.clusters.Load()); n/f.cfg.LastSeenWriteBudget > d.Seconds() {
		d = time.Duration(n / f.cfg.LastSeenWriteBudget * float64(time.Second))
	}
	return d
}

// PollAfter is how long the agent of the cluster with this UID should wait, from now,
// before polling again. Each cluster has its own phase in the interval (a hash of its UID)
// and is sent to its next phase at least a tenth of an interval away. A fleet that polled
// all at once (it registered, or the server restarted) is spread evenly over the interval by
// the next round, where random jitter would leave it bunched for many rounds, over the
// budget; and a change reaches every cluster within one interval (1.1 in the first round).
func (f *Fleet) PollAfter(uid string, now time.Time) time.Duration {
	return phaseAfter(uid, now, f.Interval())
}

// BellPollAfter is PollAfter for a cluster whose agent pings the doorbell.
func (f *Fleet) BellPollAfter(uid string, now time.Time) time.Duration {
	return phaseAfter(uid, now, f.BellInterval())
}

// phaseAfter is the time from now to the cluster's next phase in an interval of d, at
// least a tenth of d away.
func phaseAfter(uid string, now time.Time, d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	phase := time.Duration(fnv1a(uid) % uint64(d))
	next := (phase - time.Duration(now.UnixNano()%int64(d)) + d) % d
	if next < d/10 {
		next += d
	}
	return next
}

// Wait blocks until c's desired state differs from since, timeout passes or ctx ends; it
// reports whether the state changed. When too many agents wait already it returns at once.
func (f *Fleet) Wait(ctx context.Context, ns, name string, since int64, timeout time.Duration) bool {
	f.mu.Lock()
	var c *Cluster
	if w := f.workspaces[ns]; w != nil {
		c = w.clusters[name]
	}
	if c == nil {
		f.mu.Unlock()
		return false
	}
	if rev := f.currentRev(c); rev == 0 || rev != since {
		// Changed, or not versioned since a change or a load: Desired decides.
		f.mu.Unlock()
		return true
	}
	ch := f.waiters[c]
	if ch == nil {
		if len(f.waiters) >= f.cfg.MaxWaiters {
			f.mu.Unlock()
			return false
		}
		ch = make(chan struct{})
		f.waiters[c] = ch
	}
	f.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	f.mu.Lock()
	if f.waiters[c] == ch {
		delete(f.waiters, c)
	}
	f.mu.Unlock()
	return false
}

// ReportResult is what became of a status report.
type ReportResult struct {
	// Fresh is false for a report already seen (a resend after an outage), or older than
	// one the store has (stored through another replica while this one was delayed):
	// nothing of it was taken.
	Fresh bool
	// Refused names the entries that were not stored: a cluster's status is kept only for
	// the bundles that target it (or that it ran and has not yet reported removed).
	Refused []api.StatusCause
}

// Report applies an agent's status report. The report is persisted before it returns, and
// the model takes it (its sequence number above all) only once the store has it: a report
// whose write failed is not seen, so its resend is stored, not ignored as a duplicate.
//
// Only entries about the cluster's own deployments are stored: a cluster credential must
// not be able to add a row per name it can make up. The check is a look-up among the
// cluster's pairs, which the report updates anyway.
func (f *Fleet) Report(ctx context.Context, ns, name, uid string, rep *api.StatusReport, now time.Time) (ReportResult, error) {
	var res ReportResult
	f.mu.Lock()
	c, err := f.reportSlot(ctx, ns, name, uid, now)
	if err != nil {
		f.mu.Unlock()
		return res, err
	}
	if rep.Seq <= c.seq {
		f.mu.Unlock()
		return res, nil
	}
	res.Fresh = true
	// Field names are made only for refused entries: accepted ones cost no allocation
	// under the lock.
	refuse := func(field string, i int, format string, args ...any) {
		res.Refused = append(res.Refused, api.StatusCause{Field: fmt.Sprintf(field, i), Message: fmt.Sprintf(format, args...)})
	}
	rows := make([]store.DeploymentStatus, 0, len(rep.Deployments))
	for i, d := range rep.Deployments {
		bns, bname, ok := splitKey(d.Bundle)
		switch {
		case !ok || bns != ns:
			refuse("deployments[%d].bundle", i, "%.80q is not a bundle of namespace %s", d.Bundle, ns)
		case !api.KnownState(d.State):
			refuse("deployments[%d].state", i, "unknown state %.40q", d.State)
		case c.deps.get(bname) == nil:
			refuse("deployments[%d].bundle", i, "bundle %.80s does not target cluster %s/%s", d.Bundle, ns, name)
		default:
			rows = append(rows, store.DeploymentStatus{Cluster: uid, Bundle: d.Bundle, ID: d.ID, State: d.State, Message: truncate(d.Message, 1024)})
		}
	}
	var removed []string
	for i, key := range rep.Removed {
		bns, bname, ok := splitKey(key)
		switch {
		case !ok || bns != ns:
			refuse("removed[%d]", i, "%.80q is not a bundle of namespace %s", key, ns)
		case c.deps.get(bname) != nil:
			// The removal of a bundle the cluster has no pair for has nothing to delete.
			removed = append(removed, key)
		}
	}
	if len(rows) == 0 && len(removed) == 0 {
		// A heartbeat: its inventory, if new, reaches the store with the Cluster's status.
		// Its sequence number is neither stored nor kept: sequence numbers only keep a
		// resent report from undoing a later one, and this one changes nothing a resend
		// could undo. At 1M clusters this saves a database write per heartbeat (1,700/s at
		// 10 minutes).
		f.setInventory(c, rep.Inventory)
		f.takeAccess(c, rep.Access)
		f.mu.Unlock()
		return res, nil
	}
	// One report of a cluster at a time is between the store and the model, so that they
	// take a cluster's reports in the same order.
	done := make(chan struct{})
	f.reporting[c] = done
	f.mu.Unlock()
	err = f.st.PutStatus(ctx, uid, rep.Seq, rows, removed)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.reporting, c)
	close(done)
	defer f.takeHeld(c)
	if errors.Is(err, store.ErrStale) {
		// A newer report of the cluster was stored (through another replica) first: this
		// one is old news, acknowledged so that the agent does not send it again. The model
		// takes the newer rows from the store, not these.
		return ReportResult{}, nil
	}
	if err != nil {
		// The write may not have committed: the model stays as it was, behind the store at
		// worst, never ahead of it.
		return ReportResult{}, err
	}
	f.applyReport(c, rep.Seq, rep.Inventory, rows, removed)
	f.takeAccess(c, rep.Access)
	return res, nil
}

// reportSlot finds the reporting cluster and waits, with the model's lock released, while
// another report of it is being stored. It is called and returns with the lock held.
func (f *Fleet) reportSlot(ctx context.Context, ns, name, uid string, now time.Time) (*Cluster, error) {
	for {
		c := f.workspaces[ns].cluster(name, uid)
		if c == nil {
			return nil, ErrUnknownCluster
		}
		c.seen.Store(now.UnixNano())
		f.aggTouch(c)
		busy := f.reporting[c]
		if busy == nil {
			return c, nil
		}
		f.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			f.mu.Lock()
			return nil, ctx.Err()
		}
		f.mu.Lock()
	}
}

func (f *Fleet) setInventory(c *Cluster, inv *api.ClusterInventory) {
	if inv == nil {
		return
	}
	if raw, _ := json.Marshal(inv); string(raw) != invJSON(c.inventory) {
		c.inventory = invOf(raw)
		f.dirtyClusters.add(c)
		f.aggTouch(c)
	}
}

// applyReport takes a stored report into the model. The caller holds the lock.
func (f *Fleet) applyReport(c *Cluster, seq int64, inv *api.ClusterInventory, rows []store.DeploymentStatus, removed []string) {
	defer f.aggTouch(c)
	c.seq = max(c.seq, seq)
	f.setInventory(c, inv)
	// The cluster may have been deleted meanwhile; its detached entry takes the report
	// harmlessly.
	w := f.workspaces[c.Namespace]
	bundleOf := func(name string) *bundleEntry {
		if w == nil {
			return nil
		}
		return w.bundles[name]
	}
	for _, d := range rows {
		_, bname, _ := splitKey(d.Bundle)
		p := c.deps.get(bname)
		if p == nil {
			p = c.addDep(bname, pair{target: -1})
		}
		old := p.effective()
		// Share the strings every cluster has alike: a million clusters report the same
		// deployment IDs and states.
		id := d.ID
		if id == p.desiredID {
			id = p.desiredID
		}
		p.reportedID, p.state, p.message = id, depStateOf(d.State), d.Message
		if b := bundleOf(bname); b != nil {
			f.recount(b, c, old, p.effective())
		}
		if w != nil && (old == api.StateReady) != (p.effective() == api.StateReady) {
			f.dependents(w, c, bname)
		}
	}
	for _, key := range removed {
		_, bname, _ := splitKey(key)
		if p := c.deps.get(bname); p != nil {
			old := p.effective()
			p.reportedID, p.state, p.message = "", 0, ""
			if b := bundleOf(bname); b != nil {
				f.recount(b, c, old, p.effective())
			}
			if p.target < 0 {
				c.delDep(bname)
			}
		}
	}
}

// Seen records a poll.
func (f *Fleet) Seen(ns, name string, now time.Time) {
	f.mu.RLock()
	var c *Cluster
	if w := f.workspaces[ns]; w != nil {
		c = w.clusters[name]
	}
	f.mu.RUnlock()
	if c != nil {
		f.SeenCluster(c, now)
	}
}

// SeenCluster is Seen for a cluster DoorbellLookup returned, without looking it up again.
func (f *Fleet) SeenCluster(c *Cluster, now time.Time) {
	c.seen.Store(now.UnixNano())
	f.mu.RLock()
	// Counted Offline or Pending: its silence has ended.
	back := c.agg.g != nil && c.agg.state >= stateSlot("Offline")
	f.mu.RUnlock()
	if back {
		// Once per silence: the counts move it under the write lock. Only the model's own
		// cluster: one a load replaced since its look-up counts in counts that are gone.
		f.mu.Lock()
		if f.byUID[c.UID] == c {
			f.aggTouch(c)
		}
		f.mu.Unlock()
	}
}

// KeyOf names a cluster DoorbellLookup returned, as "namespace/name".
func (f *Fleet) KeyOf(c *Cluster) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return c.Namespace + "/" + c.Name
}

// LastSeen is when the cluster's agent last called this server (zero: not since it started).
func (f *Fleet) LastSeen(ns, name string) time.Time {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if w := f.workspaces[ns]; w != nil {
		if c := w.clusters[name]; c != nil {
			return c.lastSeen()
		}
	}
	return time.Time{}
}

// Label returns the value of the cluster's label key.
func (f *Fleet) Label(ns, name, key string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if w := f.workspaces[ns]; w != nil {
		if c := w.clusters[name]; c != nil {
			return c.Labels[key]
		}
	}
	return ""
}

// Labels returns the cluster's labels, if the model knows the cluster. The map is shared:
// callers must not change it.
func (f *Fleet) Labels(ns, name string) (map[string]string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if w := f.workspaces[ns]; w != nil {
		if c := w.clusters[name]; c != nil {
			return c.Labels, true
		}
	}
	return nil, false
}

// lastSeen is when c's agent last called.
func (c *Cluster) lastSeen() time.Time {
	if n := c.seen.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Known reports whether the cluster exists with that UID.
func (f *Fleet) Known(ns, name, uid string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.workspaces[ns].cluster(name, uid) != nil
}

// cluster returns the named cluster if it has that UID. A poll asks the model about its
// cluster several times: one lookup each in a map of a million clusters.
func (w *workspace) cluster(name, uid string) *Cluster {
	if w == nil {
		return nil
	}
	if c := w.clusters[name]; c != nil && c.UID == uid {
		return c
	}
	return nil
}

func splitKey(k string) (string, string, bool) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:], i > 0 && i < len(k)-1
		}
	}
	return "", "", false
}

// truncate cuts s to n bytes at a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
