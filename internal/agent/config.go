package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"flotilla.dev/client"
	"flotilla.dev/internal/tunnel"
)

// DefaultStateDir is where the agent keeps its state unless told otherwise.
const DefaultStateDir = "/var/lib/flotilla-agent"

// Config configures Run. Server, CAChecksum and Token are needed only until the agent has
// registered: from then on the state directory (or the Secret) holds the server's address,
// CA and the cluster's credential.
type Config struct {
	// Server is the Flotilla server's URL, https://host:port, or several replicas' URLs
	// separated by commas: the agent polls one and moves to the next when it cannot reach it.
	Server string
	// CAChecksum pins the server's CA by the sha256 of its PEM. The agent fetches the CA once,
	// checks it against the checksum, and keeps it.
	CAChecksum string
	// Token is the registration token, exchanged once for the cluster's credential.
	Token string
	// Labels are the cluster's labels, sent when registering.
	Labels map[string]string
	// ClusterName is the name to register the cluster under, a DNS label. Empty: the server
	// derives one from the cluster's identity (c-<16 hex digits>).
	ClusterName string

	// Kubeconfig is the kubeconfig of the cluster the agent manages. Empty means the
	// in-cluster configuration when InCluster is set, else the usual kubeconfig rules
	// ($KUBECONFIG, ~/.kube/config).
	Kubeconfig string
	// InCluster says the agent runs in a pod of the cluster it manages: it then uses the pod's
	// service account (unless Kubeconfig is set) and keeps its credential in a Secret.
	InCluster bool
	// RESTConfig, if set, is used instead of Kubeconfig and InCluster's configuration.
	RESTConfig *rest.Config
	// SecretNamespace and SecretName name the Secret that holds the credential in-cluster;
	// flotilla-system/flotilla-agent by default.
	SecretNamespace, SecretName string

	// StateDir holds the credential (unless in-cluster), the last desired state, the content
	// cache and the queue of unsent status. DefaultStateDir when empty.
	StateDir string

	// Logger receives the agent's logs; slog.Default() when nil.
	Logger *slog.Logger
	// Version is the agent's version, reported in the inventory; Version() when empty.
	Version string

	// PollInterval is how long to wait between polls when the server does not say; 30s.
	PollInterval time.Duration
	// PollWait is the longest the agent lets the server hold a poll open waiting for a
	// change (a long poll, so that a change reaches the agent at once); 30s. Each poll is
	// held for at most the server's poll-after, so long polls never make more requests
	// than the server asked for.
	PollWait time.Duration
	// StatusInterval is how often every deployment's status is checked again, which catches
	// readiness changes that no watch reports; 20s.
	StatusInterval time.Duration
	// HeartbeatInterval is how often a report carrying the inventory is sent even when
	// nothing changed; 10m, or eight of the server's poll intervals when those are longer.
	HeartbeatInterval time.Duration
	// InventoryInterval is how often the inventory is refreshed; 10m.
	InventoryInterval time.Duration
	// ReportDelay gathers status changes that come close together into one report; 500ms.
	ReportDelay time.Duration
	// OnClusterDeleted is what the agent does with what it deployed when it learns its
	// Cluster was deleted on the server: "keep" (the default) leaves it running, "prune"
	// removes every deployment first.
	OnClusterDeleted string
	// MinBackoff and MaxBackoff bound the delay between retries while the server (or the
	// cluster) cannot be reached; 1s and 5m.
	MinBackoff, MaxBackoff time.Duration
	// TunnelIdle closes the tunnel to the server after that long without a request; 5m.
	// TunnelAlways keeps it open instead, once the server asked for it (data-centre
	// clusters).
	TunnelIdle   time.Duration
	TunnelAlways bool
	// NoDoorbell keeps the agent off the server's datagram doorbell: it hears of changes by
	// HTTPS long polls only. DoorbellTimeout is how long a ping's answer may take (2s).
	NoDoorbell      bool
	DoorbellTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.SecretNamespace == "" {
		c.SecretNamespace = "flotilla-system"
	}
	if c.SecretName == "" {
		c.SecretName = "flotilla-agent"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = Version()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PollInterval, 30*time.Second)
	def(&c.PollWait, 30*time.Second)
	def(&c.StatusInterval, 20*time.Second)
	def(&c.HeartbeatInterval, 10*time.Minute)
	def(&c.InventoryInterval, 10*time.Minute)
	def(&c.ReportDelay, 500*time.Millisecond)
	def(&c.MinBackoff, time.Second)
	def(&c.MaxBackoff, 5*time.Minute)
	def(&c.TunnelIdle, tunnel.DefaultIdle)
	if c.OnClusterDeleted == "" {
		c.OnClusterDeleted = OnClusterDeletedKeep
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	return c
}

// What the agent does with its deployments when its Cluster was deleted.
const (
	OnClusterDeletedKeep  = "keep"
	OnClusterDeletedPrune = "prune"
)

func (c Config) validate() error {
	switch c.OnClusterDeleted {
	case "", OnClusterDeletedKeep, OnClusterDeletedPrune:
	default:
		return fmt.Errorf("--on-cluster-deleted must be keep or prune, not %q", c.OnClusterDeleted)
	}
	if c.ClusterName != "" {
		if msgs := validation.IsDNS1123Label(c.ClusterName); len(msgs) > 0 {
			return fmt.Errorf("--cluster-name %q is not a valid DNS label: %s", c.ClusterName, strings.Join(msgs, "; "))
		}
	}
	if c.Server != "" {
		if _, err := client.Servers(c.Server); err != nil {
			return fmt.Errorf("the server URL must look like https://host:port (several replicas' separated by commas): %w", err)
		}
	}
	return nil
}

// Errors Run returns when the agent must stop rather than retry. Each is wrapped with the
// server's explanation.
var (
	// ErrClusterDeleted: the cluster was deleted on the server and its credential revoked.
	ErrClusterDeleted = errors.New("this cluster was deleted from the Flotilla server; its credential is revoked")
	// ErrUnauthorized: the server refused the cluster's credential for another reason.
	ErrUnauthorized = errors.New("the Flotilla server refused this cluster's credential")
	// ErrTokenInvalid: the registration token is unknown, expired or used up.
	ErrTokenInvalid = errors.New("the registration token is invalid, expired or used up")
	// ErrClusterNameRefused: the server refused the name asked for with --cluster-name
	// (another cluster has it, or it is not a name a cluster may ask for).
	ErrClusterNameRefused = errors.New("the Flotilla server refused the cluster name")
	// ErrNotRegistered: there is no credential yet and no registration token to get one.
	ErrNotRegistered = errors.New("the agent has no credential yet: give it a registration token (--token) and the server (--server, --ca-checksum)")
)
