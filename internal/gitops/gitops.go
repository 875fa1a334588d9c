package gitops

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
)

// Labels on the Bundles a GitRepo produces. Fleet's label comes first so that tools written
// for Fleet find them; the commit label says which commit a bundle was last written from.
const (
	LabelRepoName   = "fleet.cattle.io/repo-name"
	LabelGitRepo    = "flotilla.dev/gitrepo"
	LabelCommit     = "fleet.cattle.io/commit"
	AnnotationPath  = "flotilla.dev/bundle-path"
	conditionPoll   = "GitPolling"
	conditionAccept = "Accepted"
	// conditionStalled is True while the GitRepo backs off after overrunning a budget.
	conditionStalled = "Stalled"
	reasonBudget     = "RenderBudgetExceeded"
)

// Contents stores bundle content by digest.
type Contents interface {
	PutContent(ctx context.Context, digest string, data []byte) error
}

// Secrets reads a Secret's decrypted values.
type Secrets interface {
	Get(ctx context.Context, namespace, name string) (*secrets.Secret, error)
}

// Config configures the controller.
type Config struct {
	Store    store.Store
	Contents Contents
	Secrets  Secrets
	// Dir holds the local clones, one per GitRepo.
	Dir    string
	Logger *slog.Logger
	// Limits bound each bundle's content; zero means bundle.DefaultLimits.
	Limits bundle.Limits
	// MaxRepoBytes bounds the files of one commit; zero means DefaultMaxRepoBytes.
	MaxRepoBytes int64
	// Workers bounds how many GitRepos fetch and scan at once. GitRepos wait for a worker in
	// the order they asked for one.
	Workers int
	// RetryFailed is how long a commit that failed to become bundles waits before it is tried
	// again without a change or a webhook. It is also the first backoff of a GitRepo that
	// overran its budget, which doubles at each overrun in a row up to MaxBackoff.
	RetryFailed time.Duration
	// RenderBudget bounds each render of a bundle (see bundle.Budget); zero fields mean
	// bundle.DefaultBudget's.
	RenderBudget bundle.Budget
	// SyncTimeout bounds one sync of one GitRepo, from fetch to the last bundle written, so
	// that no repository holds a worker longer; zero means DefaultSyncTimeout.
	SyncTimeout time.Duration
	// MaxBackoff bounds the wait of a GitRepo that keeps overrunning; zero means an hour.
	MaxBackoff time.Duration
	// HTTPClient fetches charts for GitRepos without a Helm secret; nil means a default client.
	HTTPClient *http.Client
	// RegistryPlainHTTP talks to OCI registries over plain HTTP (tests).
	RegistryPlainHTTP bool
	// Leading, if set, says whether this server replica runs git sync (Run runs only on the
	// leader); a webhook reaching another replica is refused as unavailable, so the sender
	// tries again (a load balancer may send the retry to the leader) and polling catches up.
	Leading func() bool
}

// DefaultMaxRepoBytes bounds the checked-out files of one commit.
const DefaultMaxRepoBytes = 512 << 20

// DefaultSyncTimeout bounds one GitRepo's sync: ten renders at their whole time budget, or the
// clone of a large repository.
const DefaultSyncTimeout = 5 * time.Minute

// FlagSyncTimeout is the server flag that sets Config.SyncTimeout; errors name it.
const FlagSyncTimeout = "--gitrepo-sync-timeout"

// Controller is the GitRepo controller.
type Controller struct {
	cfg Config
	log *slog.Logger
	sem *fairSem

	mu    sync.Mutex
	repos map[store.Key]*worker
	wg    sync.WaitGroup
}

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Limits == (bundle.Limits{}) {
		cfg.Limits = bundle.DefaultLimits()
	}
	if cfg.MaxRepoBytes == 0 {
		cfg.MaxRepoBytes = DefaultMaxRepoBytes
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.RetryFailed == 0 {
		cfg.RetryFailed = 5 * time.Minute
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = DefaultSyncTimeout
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Hour
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 2 * time.Minute}
	}
	return &Controller{cfg: cfg, log: cfg.Logger.With("controller", "gitops"), sem: newFairSem(cfg.Workers), repos: map[store.Key]*worker{}}
}

// worker polls one GitRepo.
type worker struct {
	key    store.Key
	cancel context.CancelFunc
	kick   chan struct{}
	done   chan struct{} // closed when the poller has stopped

	// force makes the next sync retry a commit that failed, as a webhook or spec change asks.
	force atomic.Bool
	// specChanged says the GitRepo's spec changed: it ends a backoff.
	specChanged atomic.Bool

	mu  sync.Mutex
	obj *api.Object
	// deployed is what the GitRepo's bundles were last written from; failed is the last
	// attempt that did not make it, and when.
	deployed  attempt
	failed    attempt
	failedAt  time.Time
	failedErr string
	// overruns counts syncs in a row that overran a budget; until then, only a spec change
	// makes the GitRepo sync again.
	overruns int
	until    time.Time
}

type attempt struct {
	commit     string
	generation int64
}

func (w *worker) current() *api.Object {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.obj
}

// trigger asks the worker to fetch now.
func (w *worker) trigger() {
	w.force.Store(true)
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Run watches GitRepos and keeps one poller per GitRepo until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer func() {
		c.mu.Lock()
		for _, w := range c.repos {
			w.cancel()
		}
		c.mu.Unlock()
		c.wg.Wait()
	}()
	c.removeLeftovers(ctx)
	backoff := time.Second
	for {
		rev, err := c.resync(ctx)
		if err == nil {
			backoff = time.Second
			err = c.watch(ctx, rev)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.log.Warn("watching GitRepos", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// resync lists every GitRepo, starts and updates pollers, stops those of GitRepos that are
// gone, and deletes Bundles whose GitRepo no longer exists.
func (c *Controller) resync(ctx context.Context) (int64, error) {
	seen := map[store.Key]bool{}
	var rev int64
	cont := ""
	for {
		res, err := c.cfg.Store.List(ctx, store.ListOptions{Kind: api.KindGitRepo, Limit: 500, Continue: cont})
		if err != nil {
			return 0, err
		}
		rev = res.Revision
		for _, raw := range res.Items {
			obj, err := store.Decode(raw)
			if err != nil {
				return 0, err
			}
			seen[store.KeyOf(obj)] = true
			c.upsert(ctx, obj)
		}
		if res.Continue == "" {
			break
		}
		cont = res.Continue
	}
	c.mu.Lock()
	var gone []store.Key
	for k := range c.repos {
		if !seen[k] {
			gone = append(gone, k)
		}
	}
	c.mu.Unlock()
	for _, k := range gone {
		c.remove(ctx, k)
	}
	// Bundles of GitRepos deleted while the server was down.
	sel, _ := labels.Parse(LabelGitRepo)
	res, err := c.cfg.Store.List(ctx, store.ListOptions{Kind: api.KindBundle, Selector: sel})
	if err != nil {
		return 0, err
	}
	for _, raw := range res.Items {
		b, err := store.Decode(raw)
		if err != nil {
			continue
		}
		owner := store.Key{Kind: api.KindGitRepo, Namespace: b.Metadata.Namespace, Name: b.Metadata.Labels[LabelGitRepo]}
		if !seen[owner] {
			if _, err := c.cfg.Store.Delete(ctx, store.KeyOf(b), b.Metadata.ResourceVersion); err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrConflict) {
				c.log.Warn("deleting bundle of a deleted GitRepo", "bundle", store.KeyOf(b).String(), "err", err)
			}
		}
	}
	return rev, nil
}

func (c *Controller) watch(ctx context.Context, rev int64) error {
	ch, err := c.cfg.Store.Watch(ctx, store.WatchOptions{Kind: api.KindGitRepo, Revision: rev})
	if err != nil {
		return err
	}
	for ev := range ch {
		if ev.Err != nil {
			return ev.Err
		}
		obj, err := store.Decode(ev.Object)
		if err != nil {
			continue
		}
		switch ev.Type {
		case api.Added, api.Modified:
			c.upsert(ctx, obj)
		case api.Deleted:
			c.remove(ctx, store.KeyOf(obj))
		}
	}
	return ctx.Err()
}

// upsert starts a poller for a new GitRepo, or hands a changed one to its poller, which
// fetches at once when the spec changed.
func (c *Controller) upsert(ctx context.Context, obj *api.Object) {
	key := store.KeyOf(obj)
	c.mu.Lock()
	defer c.mu.Unlock()
	if w, ok := c.repos[key]; ok {
		w.mu.Lock()
		changed := w.obj.Metadata.Generation != obj.Metadata.Generation || w.obj.Metadata.UID != obj.Metadata.UID
		w.obj = obj
		w.mu.Unlock()
		if changed {
			w.specChanged.Store(true)
			w.trigger()
		}
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &worker{key: key, cancel: cancel, kick: make(chan struct{}, 1), done: make(chan struct{}), obj: obj}
	var st api.GitRepoStatus
	json.Unmarshal(obj.Status, &st)
	if st.Commit != "" && st.Error == "" {
		w.deployed = attempt{commit: st.Commit, generation: st.ObservedGeneration}
	}
	c.repos[key] = w
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(w.done)
		c.poll(wctx, w)
	}()
}

// remove stops a deleted GitRepo's poller, deletes its Bundles and its clone.
func (c *Controller) remove(ctx context.Context, key store.Key) {
	c.mu.Lock()
	w, ok := c.repos[key]
	delete(c.repos, key)
	c.mu.Unlock()
	if ok {
		// A sync in flight could write bundles after they are deleted: let it end first.
		w.cancel()
		<-w.done
	}
	log := c.log.With("gitrepo", key.Namespace+"/"+key.Name)
	matches := clonesOf(c.cfg.Dir, key.Namespace, key.Name)
	for _, m := range matches {
		os.RemoveAll(m)
	}
	if _, err := c.deleteBundles(ctx, key, nil); err != nil {
		log.Warn("deleting bundles of a deleted GitRepo", "err", err)
	}
	log.Info("GitRepo deleted; its bundles are removed")
}

// poll runs one GitRepo's loop: sync, then wait for the polling interval or a trigger. A GitRepo
// that overran its budget waits out its backoff first, whatever triggers it, unless its spec
// changes.
func (c *Controller) poll(ctx context.Context, w *worker) {
	for {
		c.sync(ctx, w)
		for !c.wait(ctx, w) {
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// wait waits for the next sync of w; false means wait again.
func (c *Controller) wait(ctx context.Context, w *worker) bool {
	var spec api.GitRepoSpec
	json.Unmarshal(w.current().Spec, &spec)
	d, err := time.ParseDuration(spec.PollingInterval)
	if err != nil || d <= 0 {
		d = 15 * time.Second
	}
	w.mu.Lock()
	backoff := time.Until(w.until)
	w.mu.Unlock()
	t := time.NewTimer(max(d, backoff))
	defer t.Stop()
	tick := t.C
	if spec.DisablePolling && backoff <= 0 {
		tick = nil
	}
	select {
	case <-ctx.Done():
		return true
	case <-w.kick:
		if w.specChanged.Swap(false) {
			w.mu.Lock()
			w.overruns, w.until = 0, time.Time{}
			w.mu.Unlock()
			return true
		}
		w.mu.Lock()
		inBackoff := time.Now().Before(w.until)
		w.mu.Unlock()
		return !inBackoff
	case <-tick:
		return true
	}
}

// Trigger makes the GitRepo namespace/name fetch now; it reports whether it exists.
func (c *Controller) Trigger(namespace, name string) bool {
	c.mu.Lock()
	w, ok := c.repos[store.Key{Kind: api.KindGitRepo, Namespace: namespace, Name: name}]
	c.mu.Unlock()
	if ok {
		w.trigger()
	}
	return ok
}

// fairSem hands out n workers in the order they were asked for, so that a GitRepo that syncs
// again goes behind those already waiting.
type fairSem struct {
	mu      sync.Mutex
	free    int
	waiters []chan struct{}
}

func newFairSem(n int) *fairSem { return &fairSem{free: n} }

// acquire waits for a worker; false means ctx ended first.
func (s *fairSem) acquire(ctx context.Context) bool {
	s.mu.Lock()
	if s.free > 0 && len(s.waiters) == 0 {
		s.free--
		s.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if i := slices.Index(s.waiters, ch); i >= 0 {
			s.waiters = slices.Delete(s.waiters, i, i+1)
			return false
		}
		// Handed a worker as ctx ended: pass it on.
		s.releaseLocked()
		return false
	}
}

func (s *fairSem) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked()
}

func (s *fairSem) releaseLocked() {
	if len(s.waiters) > 0 {
		ch := s.waiters[0]
		s.waiters = s.waiters[1:]
		close(ch)
		return
	}
	s.free++
}
