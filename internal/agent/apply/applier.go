package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// DefaultFieldManager is the server-side apply field manager of the agent.
const DefaultFieldManager = "flotilla-agent"

// Config configures an Applier.
type Config struct {
	// RESTConfig reaches the cluster the agent manages. When it sets no rate
	// limits, the Applier uses 50 QPS with bursts of 100: client-go's default
	// of 5 would make a 50-object deployment take seconds to check.
	RESTConfig *rest.Config
	// FieldManager is the server-side apply field manager; DefaultFieldManager
	// when empty.
	FieldManager string
	// SystemNamespace holds the inventories; DefaultSystemNamespace when empty.
	SystemNamespace string
	// Logger receives the engine's logs; slog.Default() when nil.
	Logger *slog.Logger
}

// Applier applies deployments to one cluster, reports their status and
// removes them. It is safe for concurrent use; calls for the same deployment
// ID are serialised.
type Applier struct {
	restConfig      *rest.Config
	fieldManager    string
	systemNamespace string
	log             *slog.Logger

	kube      kubernetes.Interface
	dynamic   dynamic.Interface
	metadata  metadata.Interface
	discovery discovery.CachedDiscoveryInterface
	mapper    *restmapper.DeferredDiscoveryRESTMapper

	locks keyedMutex

	// known tracks the kinds each applied deployment uses, for Watch.
	knownMu sync.Mutex
	known   map[string][]objectRef
	// knownChanged is closed and replaced whenever known changes.
	knownChanged chan struct{}
}

// New returns an Applier for the cluster cfg.RESTConfig reaches. It does not
// contact the cluster.
func New(cfg Config) (*Applier, error) {
	if cfg.RESTConfig == nil {
		return nil, errors.New("apply: no REST config")
	}
	rc := rest.CopyConfig(cfg.RESTConfig)
	if rc.QPS == 0 && rc.Burst == 0 && rc.RateLimiter == nil {
		rc.QPS, rc.Burst = 50, 100
	}
	if rc.UserAgent == "" {
		rc.UserAgent = DefaultFieldManager
	}
	a := &Applier{
		restConfig:      rc,
		fieldManager:    cfg.FieldManager,
		systemNamespace: cfg.SystemNamespace,
		log:             cfg.Logger,
		known:           map[string][]objectRef{},
		knownChanged:    make(chan struct{}),
	}
	if a.fieldManager == "" {
		a.fieldManager = DefaultFieldManager
	}
	if a.systemNamespace == "" {
		a.systemNamespace = DefaultSystemNamespace
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	var err error
	if a.kube, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("apply: kubernetes client: %w", err)
	}
	if a.dynamic, err = dynamic.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("apply: dynamic client: %w", err)
	}
	if a.metadata, err = metadata.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("apply: metadata client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("apply: discovery client: %w", err)
	}
	a.discovery = memory.NewMemCacheClient(dc)
	a.mapper = restmapper.NewDeferredDiscoveryRESTMapper(a.discovery)
	return a, nil
}

// Apply makes the cluster run d and returns its status right after.
//
// A deployment whose Hash is already applied is not applied again: Apply
// then only checks it, and re-applies drifted objects when d.CorrectDrift is
// set. Objects applied for an earlier version of d that are no longer in it
// are deleted. On failure the Result says ErrApplied and the error is
// returned as well.
func (a *Applier) Apply(ctx context.Context, d Deployment) (Result, error) {
	if err := d.validate(); err != nil {
		return failed("", err)
	}
	defer a.locks.lock(d.ID)()
	log := a.log.With("deployment", d.ID)

	inv, err := a.readInventory(ctx, d.ID)
	if err != nil {
		return failed("", err)
	}
	if d.Helm != nil {
		return a.applyRelease(ctx, log, d, inv)
	}
	items, err := a.prepare(ctx, d)
	if err != nil {
		return failed(inv.hash(), err)
	}
	hash := d.hash()
	if inv != nil && inv.Hash == hash && inv.HelmRelease == "" {
		return a.keepApplied(ctx, log, d, items, inv)
	}
	return a.applyAll(ctx, log, d, items, inv)
}

// Status reports how the cluster's state compares with d: readiness of
// every object, drift from what was applied, or that d is not (fully)
// applied yet.
func (a *Applier) Status(ctx context.Context, d Deployment) (Result, error) {
	if err := d.validate(); err != nil {
		return Result{}, err
	}
	defer a.locks.lock(d.ID)()
	inv, err := a.readInventory(ctx, d.ID)
	if err != nil {
		return Result{}, err
	}
	if inv == nil {
		return Result{State: WaitApplied, Message: "not applied yet"}, nil
	}
	if inv.Hash != d.hash() {
		return Result{State: OutOfSync, AppliedHash: inv.Hash, Message: "an older version is applied"}, nil
	}
	if d.Helm != nil {
		return a.releaseStatus(ctx, d, inv)
	}
	items, err := a.prepare(ctx, d)
	if err != nil {
		return Result{}, err
	}
	return a.status(ctx, d, items, inv.Hash)
}

// Remove deletes everything applied for the deployment id, or uninstalls its
// Helm release, unless it was applied with KeepResources; either way the
// agent forgets it. Removing an unknown deployment does nothing.
func (a *Applier) Remove(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("apply: empty deployment ID")
	}
	defer a.locks.lock(id)()
	log := a.log.With("deployment", id)
	inv, err := a.readInventory(ctx, id)
	if err != nil || inv == nil {
		return err
	}
	switch {
	case inv.KeepResources:
		log.Info("removing deployment, keeping its resources")
	case inv.HelmRelease != "":
		if err := a.uninstallRelease(ctx, log, id, inv.HelmNamespace, inv.HelmRelease, inv.Objects); err != nil {
			return err
		}
	default:
		if err := a.deleteObjects(ctx, log, id, inv.Objects); err != nil {
			return err
		}
	}
	return a.deleteInventory(ctx, id)
}

// mapping finds the resource of a kind, rediscovering the API once when the
// kind is unknown: it may have been added by a CRD since.
func (a *Applier) mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset()
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("finding the resource of %s: %w", gvk, err)
	}
	return m, nil
}

func (a *Applier) resource(m *meta.RESTMapping, namespace string) dynamic.ResourceInterface {
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dynamic.Resource(m.Resource).Namespace(namespace)
	}
	return a.dynamic.Resource(m.Resource)
}

func (d *Deployment) validate() error {
	if d.ID == "" {
		return errors.New("apply: deployment has no ID")
	}
	if d.Helm != nil && d.Helm.Chart == nil {
		return fmt.Errorf("apply: deployment %s: helm release without a chart", d.ID)
	}
	return nil
}

// hash is d.Hash, or a digest of the objects when the caller gave none.
func (d *Deployment) hash() string {
	if d.Hash != "" {
		return d.Hash
	}
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, o := range d.Objects {
		_ = enc.Encode(o.Object)
	}
	if d.Helm != nil {
		h.Write([]byte(helmDigest(d)))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func (inv *inventory) hash() string {
	if inv == nil {
		return ""
	}
	return inv.Hash
}

// failed is the Result of a failed Apply; appliedHash is what is still
// applied, if anything.
func failed(appliedHash string, err error) (Result, error) {
	msg := err.Error()
	if len(msg) > 1024 {
		msg = msg[:1024] + "…"
	}
	return Result{State: ErrApplied, Message: msg, AppliedHash: appliedHash}, err
}

// noteInventory and forgetInventory keep the kinds in use current for Watch.
func (a *Applier) noteInventory(inv *inventory) {
	a.knownMu.Lock()
	defer a.knownMu.Unlock()
	a.known[inv.ID] = inv.Objects
	close(a.knownChanged)
	a.knownChanged = make(chan struct{})
}

func (a *Applier) forgetInventory(id string) {
	a.knownMu.Lock()
	defer a.knownMu.Unlock()
	delete(a.known, id)
	close(a.knownChanged)
	a.knownChanged = make(chan struct{})
}

// keyedMutex serialises work per deployment ID without one lock for all.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
