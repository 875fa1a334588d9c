package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/agent/apply"
	"flotilla.dev/internal/tunnel"
)

// applier is the apply engine: *apply.Applier, or a fake in tests.
type applier interface {
	Apply(ctx context.Context, d apply.Deployment) (apply.Result, error)
	Status(ctx context.Context, d apply.Deployment) (apply.Result, error)
	Remove(ctx context.Context, id string) error
	Watch(ctx context.Context, notify func(id string)) error
	// Deployments lists the deployments applied to the cluster, whatever the state
	// directory remembers.
	Deployments(ctx context.Context) ([]string, error)
}

var _ applier = (*apply.Applier)(nil)

// clusterInfo is what the agent reads from its cluster besides applied objects.
type clusterInfo interface {
	ClientID(ctx context.Context) (string, error)
	Inventory(ctx context.Context) (*api.ClusterInventory, error)
	ValuesFrom(ctx context.Context, refs []api.ValuesFrom, ns string) (map[string]any, error)
}

var _ clusterInfo = (*kubeCluster)(nil)

// Run runs the agent until ctx ends, when it returns nil, or until it must stop: then it
// returns ErrClusterDeleted, ErrUnauthorized, ErrTokenInvalid or ErrNotRegistered (wrapped
// with the server's explanation), or an error about its state directory or configuration.
// Everything else (the server or the cluster being unreachable) is retried.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	rc, err := restConfig(cfg)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	ap, err := apply.New(apply.Config{RESTConfig: rc, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	target, err := tunnelTarget(rc)
	if err != nil {
		return err
	}
	dir, err := openStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	var creds credStore = fileCreds{dir}
	if cfg.InCluster {
		creds = secretCreds{kube: kube, namespace: cfg.SecretNamespace, name: cfg.SecretName}
	}
	return run(ctx, cfg, deps{
		cluster: &kubeCluster{kube: kube, version: cfg.Version},
		applier: ap,
		creds:   creds,
		dir:     dir,
		access:  &kubeAccess{dyn: dyn},
		tunnel:  target,
	})
}

// tunnelTarget is what the tunnel forwards to: the cluster's own API server, as the agent's
// configuration names it, with the agent's credentials.
func tunnelTarget(rc *rest.Config) (http.Handler, error) {
	return tunnel.TargetFor(rc)
}

// restConfig finds the managed cluster's configuration.
func restConfig(cfg Config) (*rest.Config, error) {
	switch {
	case cfg.RESTConfig != nil:
		return rest.CopyConfig(cfg.RESTConfig), nil
	case cfg.Kubeconfig != "":
		rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig %s: %w", cfg.Kubeconfig, err)
		}
		return rc, nil
	case cfg.InCluster:
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration: %w", err)
		}
		return rc, nil
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	return rc, nil
}

// deps are the agent's collaborators, replaced by fakes in unit tests.
type deps struct {
	cluster clusterInfo
	applier applier
	creds   credStore
	dir     *stateDir
	now     func() time.Time
	// access applies the access objects; nil leaves them alone.
	access accessManager
	// tunnel serves the requests coming through the tunnel; nil opens none.
	tunnel http.Handler
}

// agent is one run of the agent. Its goroutines: the poller (desired state and content),
// the reconciler (render, apply, status), the reporter (status queue), the drift watch and
// the inventory refresh.
type agent struct {
	cfg Config
	log *slog.Logger
	deps
	client *client.Client
	queue  *statusQueue

	mu      sync.Mutex
	desired *api.DesiredState
	// desiredGen grows when the desired state changes, or content it lacked arrives: the
	// reconciler then makes a full pass.
	desiredGen uint64
	drifted    map[string]bool
	inventory  *api.ClusterInventory
	// contentErrs are content digests the server could not give correctly: why, and when
	// to ask again.
	contentErrs map[string]*contentFailure

	// cur is the credentials in use; the renewal replaces them.
	cur *credentials

	// pollAfter is the server's last poll-after, in nanoseconds.
	pollAfter atomic.Int64

	wakeReconcile chan struct{}
	wakeReport    chan struct{}
	online        chan struct{} // the server answered after failures

	// tun is the agent's end of the tunnel; nil without one.
	tun *tunnel.Agent

	// rung: the doorbell said the desired state changed or a tunnel is wanted; poll now.
	rung chan struct{}
	// undeliverable: the server said the desired state is too large to send. Until a poll
	// succeeds, the doorbell's "changed" (which that state keeps it saying) does not cut
	// the backoff short.
	undeliverable atomic.Bool
	// bellPort is the doorbell port polls advertise (-1: no poll answered yet), bellAdvert
	// kicked when it changes; bellState is api.DoorbellOn/Off/Blocked.
	bellPort   atomic.Int32
	bellAd     atomic.Value // "server URL|port" of the last advertisement
	bellAdvert chan struct{}
	bellRekey  chan struct{}
	// bellPollAfter is the poll-after the server gives while the doorbell answers
	// (nanoseconds; 0: none).
	bellPollAfter atomic.Int64
	bellState     atomic.Value

	// Reconciler state, owned by its goroutine.
	deployments map[string]*deploymentState
}

// run runs the agent; when its Cluster was deleted and it was given a registration token
// other than the one it registered with, it registers anew with that token.
func run(ctx context.Context, cfg Config, d deps) error {
	for {
		again, err := runOnce(ctx, cfg, d)
		if !again {
			return err
		}
	}
}

func runOnce(ctx context.Context, cfg Config, d deps) (again bool, err error) {
	if d.now == nil {
		d.now = time.Now
	}
	a := &agent{
		cfg:           cfg,
		log:           cfg.Logger,
		deps:          d,
		drifted:       map[string]bool{},
		contentErrs:   map[string]*contentFailure{},
		wakeReconcile: make(chan struct{}, 1),
		wakeReport:    make(chan struct{}, 1),
		online:        make(chan struct{}, 1),
		rung:          make(chan struct{}, 1),
		bellAdvert:    make(chan struct{}, 1),
		bellRekey:     make(chan struct{}, 1),
		deployments:   map[string]*deploymentState{},
	}
	a.bellPort.Store(-1)
	a.bellState.Store(api.DoorbellOff)
	creds, err := a.register(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, err
	}
	a.setCurrent(creds)
	a.log = a.log.With("cluster", creds.Namespace+"/"+creds.ClusterName)
	a.client, err = client.New(client.Config{Server: creds.Server, CAData: []byte(creds.CA), Token: creds.Credential})
	if err != nil {
		return false, err
	}
	if a.queue, err = openQueue(d.dir, d.now); err != nil {
		return false, err
	}
	ds, err := d.dir.loadDesired()
	if err != nil {
		// A damaged file is not a reason to stop: the server sends the state again.
		a.log.Error("ignoring the persisted desired state", "err", err)
	}
	if ds != nil {
		a.desired, a.desiredGen = ds, 1
		a.log.Info("starting from the persisted desired state", "revision", ds.Revision, "deployments", len(ds.Deployments))
		kick(a.wakeReconcile)
	}
	if inv, err := d.cluster.Inventory(ctx); err != nil {
		a.log.Warn("reading the cluster's inventory", "err", err)
	} else {
		inv.Doorbell = a.doorbellState()
		a.inventory = inv
		// Sent with the first report: the agent may have been upgraded, the cluster too.
		if err := a.queue.setInventory(inv); err != nil {
			a.log.Error("queueing the inventory", "err", err)
		}
		kick(a.wakeReport)
	}

	if d.tunnel != nil {
		if a.tun, err = a.newTunnel(creds); err != nil {
			return false, err
		}
		a.client.OnTunnelWanted(a.tun.Want)
		if ds := a.currentDesired(); ds != nil {
			a.tun.SetAlways(ds.ClusterLabels[api.LabelTunnel] == api.TunnelAlways)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		stopOnce sync.Once
		stopErr  error
	)
	stop := func(err error) {
		if err == nil {
			return
		}
		stopOnce.Do(func() { stopErr = err })
		cancel()
	}
	wg.Go(func() { stop(a.pollLoop(ctx)) })
	wg.Go(func() { stop(a.reportLoop(ctx)) })
	wg.Go(func() { stop(a.renewLoop(ctx)) })
	wg.Go(func() { a.reconcileLoop(ctx) })
	wg.Go(func() { a.watchLoop(ctx) })
	wg.Go(func() { a.inventoryLoop(ctx) })
	if !a.cfg.NoDoorbell {
		a.client.OnDoorbell(a.advertised)
		wg.Go(func() { a.doorbellLoop(ctx) })
	}
	if a.tun != nil {
		wg.Go(func() { a.tun.Run(ctx) })
	}
	wg.Wait()
	if errors.Is(stopErr, ErrClusterDeleted) {
		return a.clusterDeleted(context.WithoutCancel(ctx))
	}
	return false, stopErr
}

// newTunnel prepares the agent's end of the tunnel: it dials the server it polls, with the
// credential in use, when a poll says a tunnel is wanted.
func (a *agent) newTunnel(creds *credentials) (*tunnel.Agent, error) {
	tc, err := client.TLSConfig([]byte(creds.CA), "", false)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	idle := a.cfg.TunnelIdle
	if a.cfg.TunnelAlways {
		idle = -1
	}
	return tunnel.NewAgent(tunnel.AgentConfig{Server: creds.Server, ServerURL: a.client.Server, HTTPClient: &http.Client{Transport: tr}, Credential: a.client.Credential,
		Target: a.deps.tunnel, Idle: idle, MinBackoff: a.cfg.MinBackoff, MaxBackoff: a.cfg.MaxBackoff, Logger: a.log.With("component", "tunnel")}), nil
}

// clusterDeleted handles the server's word that this cluster was deleted: it removes what
// the agent deployed if told to, and registers again when given a registration token other
// than the one the revoked credential was had for. Otherwise it says what to do.
func (a *agent) clusterDeleted(ctx context.Context) (again bool, err error) {
	if a.cfg.OnClusterDeleted == OnClusterDeletedPrune {
		if err := a.pruneAll(ctx); err != nil {
			return false, fmt.Errorf("%w; removing its deployments (--on-cluster-deleted=prune): %v", ErrClusterDeleted, err)
		}
	}
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	if a.cfg.Token != "" && cur != nil && cur.TokenDigest != "" && tokenDigest(a.cfg.Token) != cur.TokenDigest {
		a.log.Warn("this cluster was deleted from the Flotilla server; registering again with the registration token given")
		if err := a.creds.forget(ctx); err != nil {
			return false, err
		}
		if err := a.dir.forgetRegistration(); err != nil {
			return false, err
		}
		return true, nil
	}
	what := "run the agent with a new registration token (--token; the token it registered with is not used again)"
	if cur == nil || cur.TokenDigest == "" {
		what = "remove " + a.creds.where() + " and run the agent with a registration token (--token)"
	}
	kept := "what it deployed is kept (--on-cluster-deleted=keep)"
	if a.cfg.OnClusterDeleted == OnClusterDeletedPrune {
		kept = "what it deployed was removed (--on-cluster-deleted=prune)"
	}
	return false, fmt.Errorf("%w; %s. To register it again, %s", ErrClusterDeleted, kept, what)
}

// pruneAll removes every deployment the agent applied to the cluster.
func (a *agent) pruneAll(ctx context.Context) error {
	ids, err := a.applier.Deployments(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := a.applier.Remove(ctx, id); err != nil {
			return fmt.Errorf("removing %s: %w", id, err)
		}
		a.log.Info("removed a deployment of the deleted cluster", "deployment", id)
	}
	return a.dir.forgetRegistration()
}

// kick wakes a loop without blocking; wakes coalesce.
func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// fatal turns the server's refusal of the credential into the error Run stops with, and
// returns nil for anything worth retrying.
func fatal(err error) error {
	switch client.Code(err) {
	case http.StatusUnauthorized:
		switch client.Reason(err) {
		case api.ReasonClusterDeleted:
			return ErrClusterDeleted
		case api.ReasonCredentialExpired:
			// The renewal loop renews it (the answer asked for it); the call is retried.
			return nil
		}
		return fmt.Errorf("%w: %v", ErrUnauthorized, err)
	case http.StatusForbidden:
		return fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	return nil
}

// transient reports whether a failed call is worth retrying as it is: the server was not
// reached, or answered that it is busy or broken.
func transient(err error) bool {
	c := client.Code(err)
	return c == 0 || c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500
}

// watchLoop turns changes of applied objects into prompt re-checks.
func (a *agent) watchLoop(ctx context.Context) {
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	for {
		err := a.applier.Watch(ctx, a.noteChanged)
		if ctx.Err() != nil {
			return
		}
		wait := bo.next()
		a.log.Warn("watching applied objects stopped; starting again", "err", err, "in", wait.Round(time.Millisecond))
		if !sleep(ctx, wait) {
			return
		}
	}
}

// noteChanged is called by the watch when an object of deployment id changed.
func (a *agent) noteChanged(id string) {
	a.mu.Lock()
	a.drifted[id] = true
	a.mu.Unlock()
	kick(a.wakeReconcile)
}

// inventoryLoop refreshes the inventory and queues it when it changed.
func (a *agent) inventoryLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.InventoryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		inv, err := a.cluster.Inventory(ctx)
		if err != nil {
			a.log.Warn("reading the cluster's inventory", "err", err)
			continue
		}
		inv.Doorbell = a.doorbellState()
		a.mu.Lock()
		changed := !reflect.DeepEqual(inv, a.inventory)
		a.inventory = inv
		a.mu.Unlock()
		if changed {
			a.log.Info("cluster inventory changed", "nodes", inv.NodeCount, "architecture", inv.Architecture, "version", inv.KubernetesVersion)
			if err := a.queue.setInventory(inv); err != nil {
				a.log.Error("queueing the inventory", "err", err)
			}
			kick(a.wakeReport)
		}
	}
}

func (a *agent) currentInventory() *api.ClusterInventory {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inventory
}
