package api

import (
	"encoding/json"
	"time"
)

// The kinds Flotilla stores, in its own API group.
const (
	KindCluster           = "Cluster"
	KindClusterGroup      = "ClusterGroup"
	KindRegistrationToken = "RegistrationToken"
	KindGitRepo           = "GitRepo"
	KindBundle            = "Bundle"
)

// Condition is a Kubernetes-style status condition.
type Condition struct {
	Type               string     `json:"type"`
	Status             string     `json:"status"`
	Reason             string     `json:"reason,omitempty"`
	Message            string     `json:"message,omitempty"`
	LastTransitionTime *time.Time `json:"lastTransitionTime,omitempty"`
}

// ClusterSpec is what an operator says about a registered cluster.
type ClusterSpec struct {
	// Paused stops new deployments reaching the cluster; what runs there keeps running.
	Paused bool `json:"paused,omitempty"`
	// ClientID is the cluster's stable identity as its agent reports it (the kube-system
	// namespace UID), so that registering the same cluster again reuses this Cluster.
	ClientID string `json:"clientID,omitempty"`
	// DisplayName is an optional human name shown instead of the generated one.
	DisplayName string `json:"displayName,omitempty"`
	// TemplateValues are the cluster's values for `${ .ClusterValues.x }` in bundles' Helm
	// values, as in Fleet.
	TemplateValues map[string]any `json:"templateValues,omitempty"`
}

// ClusterStatus is what Flotilla observed about a cluster.
type ClusterStatus struct {
	Inventory *ClusterInventory `json:"inventory,omitempty"`
	// LastSeen is when the cluster's agent last reached the server.
	LastSeen *time.Time `json:"lastSeen,omitempty"`
	// State is Ready, NotReady, Offline or Pending (registered, never seen working).
	State string `json:"state,omitempty"`
	// Summary counts the cluster's deployments by state.
	Summary    *Summary    `json:"summary,omitempty"`
	Conditions []Condition `json:"conditions,omitempty"`
}

// ClusterInventory is what the agent reports about its cluster.
type ClusterInventory struct {
	KubernetesVersion string   `json:"kubernetesVersion,omitempty"`
	NodeCount         int      `json:"nodeCount,omitempty"`
	Architectures     []string `json:"architectures,omitempty"`
	// Architecture summarises Architectures: amd64, arm64 or mixed.
	Architecture      string `json:"architecture,omitempty"`
	AllocatableCPU    string `json:"allocatableCPU,omitempty"`
	AllocatableMemory string `json:"allocatableMemory,omitempty"`
	AgentVersion      string `json:"agentVersion,omitempty"`
}

// ClusterGroupSpec makes a named selector over clusters.
type ClusterGroupSpec struct {
	Selector *LabelSelector `json:"selector,omitempty"`
}

// ClusterGroupStatus counts the group's clusters.
type ClusterGroupStatus struct {
	ClusterCount         int `json:"clusterCount"`
	NonReadyClusterCount int `json:"nonReadyClusterCount"`
}

// RegistrationTokenSpec scopes a token that agents exchange for a per-cluster credential.
type RegistrationTokenSpec struct {
	// TTL is how long the token stays valid after creation, as a Go duration ("24h").
	TTL string `json:"ttl,omitempty"`
	// MaxUses bounds how many clusters may register with it; 0 means unlimited.
	MaxUses int `json:"maxUses,omitempty"`
	// Labels are given to every cluster registered with this token.
	Labels map[string]string `json:"labels,omitempty"`
	// ClusterName binds the token to one cluster of its namespace: it registers only that
	// cluster, and may take it over when it exists (a cluster whose credential was lost).
	ClusterName string `json:"clusterName,omitempty"`
}

// RegistrationTokenStatus says whether the token can still be used. The token's value is
// shown once, when it is created, and stored only as a hash.
type RegistrationTokenStatus struct {
	Expires *time.Time `json:"expires,omitempty"`
	Uses    int        `json:"uses"`
	// Token is set only in the response to the create call.
	Token string `json:"token,omitempty"`
}

// GitRepoSpec is a git repository to deliver from, in Fleet's shape.
type GitRepoSpec struct {
	Repo                   string        `json:"repo"`
	Branch                 string        `json:"branch,omitempty"`
	Revision               string        `json:"revision,omitempty"`
	Paths                  []string      `json:"paths,omitempty"`
	ClientSecretName       string        `json:"clientSecretName,omitempty"`
	HelmSecretName         string        `json:"helmSecretName,omitempty"`
	HelmSecretNameForPaths string        `json:"helmSecretNameForPaths,omitempty"`
	HelmRepoURLRegex       string        `json:"helmRepoURLRegex,omitempty"`
	CABundle               string        `json:"caBundle,omitempty"`
	InsecureSkipTLSVerify  bool          `json:"insecureSkipTLSverify,omitempty"`
	PollingInterval        string        `json:"pollingInterval,omitempty"`
	DisablePolling         bool          `json:"disablePolling,omitempty"`
	WebhookSecret          string        `json:"webhookSecret,omitempty"`
	Paused                 bool          `json:"paused,omitempty"`
	ForceSyncGeneration    int64         `json:"forceSyncGeneration,omitempty"`
	ServiceAccount         string        `json:"serviceAccount,omitempty"`
	TargetNamespace        string        `json:"targetNamespace,omitempty"`
	KeepResources          bool          `json:"keepResources,omitempty"`
	DeleteNamespace        bool          `json:"deleteNamespace,omitempty"`
	CorrectDrift           *CorrectDrift `json:"correctDrift,omitempty"`
	Targets                []GitTarget   `json:"targets,omitempty"`
	// Fleet fields accepted so that existing manifests apply unchanged.
	ImageScanInterval string          `json:"imageScanInterval,omitempty"`
	ImageScanCommit   json.RawMessage `json:"imageScanCommit,omitempty"`
	OCIRegistry       json.RawMessage `json:"ociRegistry,omitempty"`
}

// GitRepoStatus shows what was deployed from the repository and how it is doing.
type GitRepoStatus struct {
	Commit             string      `json:"commit,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
	LastPollingTime    *time.Time  `json:"lastPollingTime,omitempty"`
	Bundles            []string    `json:"bundles,omitempty"`
	Summary            *Summary    `json:"summary,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	Error              string      `json:"error,omitempty"`
}

// BundleSpec is one deployable unit: content stored once by digest, plus how and where to
// deploy it. Fleet's Bundle shape (inline resources) is accepted; the server moves inline
// resources into the content store and records their digest.
type BundleSpec struct {
	BundleDeploymentOptions `json:",inline"`

	Paused             bool                      `json:"paused,omitempty"`
	RolloutStrategy    *RolloutStrategy          `json:"rolloutStrategy,omitempty"`
	Resources          []BundleResource          `json:"resources,omitempty"`
	Targets            []BundleTarget            `json:"targets,omitempty"`
	TargetRestrictions []BundleTargetRestriction `json:"targetRestrictions,omitempty"`
	DependsOn          []BundleRef               `json:"dependsOn,omitempty"`
	// ContentHash is the digest ("sha256:…") of the bundle's content archive.
	ContentHash string `json:"contentHash,omitempty"`
}

// BundleResource is one file of a bundle given inline, as in Fleet's Bundle.
type BundleResource struct {
	Name     string `json:"name,omitempty"`
	Content  string `json:"content,omitempty"`
	Encoding string `json:"encoding,omitempty"`
}

// Summary counts deployments by state, with the first few that are not ready.
type Summary struct {
	DesiredReady      int                `json:"desiredReady"`
	Ready             int                `json:"ready"`
	NotReady          int                `json:"notReady,omitempty"`
	Modified          int                `json:"modified,omitempty"`
	WaitApplied       int                `json:"waitApplied,omitempty"`
	ErrApplied        int                `json:"errApplied,omitempty"`
	OutOfSync         int                `json:"outOfSync,omitempty"`
	Pending           int                `json:"pending,omitempty"`
	NonReadyResources []NonReadyResource `json:"nonReadyResources,omitempty"`
}

// NonReadyResource names one deployment that is not ready and why.
type NonReadyResource struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
}

// BundleStatus is the rolled-up state of a bundle across its clusters.
type BundleStatus struct {
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
	Summary            *Summary    `json:"summary,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	// PartitionStatus reports the rollout partitions, in order.
	Partitions []PartitionStatus `json:"partitions,omitempty"`
}

// PartitionStatus is one rollout partition's progress.
type PartitionStatus struct {
	Name           string   `json:"name"`
	Count          int      `json:"count"`
	Ready          int      `json:"ready"`
	Unavailable    int      `json:"unavailable"`
	MaxUnavailable int      `json:"maxUnavailable"`
	Summary        *Summary `json:"summary,omitempty"`
}
