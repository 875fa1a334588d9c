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
	// Type names the condition, such as Ready, Accepted or GitPolling.
	Type string `json:"type"`
	// Status is True, False or Unknown.
	Status string `json:"status"`
	// Reason is the cause of the last transition, one CamelCase word.
	Reason string `json:"reason,omitempty"`
	// Message explains the condition to people.
	Message string `json:"message,omitempty"`
	// LastTransitionTime is when Status last changed.
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
	// Inventory is what the agent last reported about the cluster.
	Inventory *ClusterInventory `json:"inventory,omitempty"`
	// LastSeen is when the cluster's agent last reached the server.
	LastSeen *time.Time `json:"lastSeen,omitempty"`
	// State is Ready, NotReady, Offline or Pending (registered, never seen working).
	State string `json:"state,omitempty"`
	// Summary counts the cluster's deployments by state.
	Summary *Summary `json:"summary,omitempty"`
	// Conditions are the cluster's status conditions.
	Conditions []Condition `json:"conditions,omitempty"`
	// Tunnel is the state of the cluster's tunnel to the server that answered: open, kept
	// (open, and kept open while idle), requested (waiting for the agent to dial in), or
	// empty when there is none. It is added when the cluster is read, never stored.
	Tunnel string `json:"tunnel,omitempty"`
}

// ClusterInventory is what the agent reports about its cluster.
type ClusterInventory struct {
	// KubernetesVersion is the version of the cluster's API server.
	KubernetesVersion string `json:"kubernetesVersion,omitempty"`
	// NodeCount is the number of nodes.
	NodeCount int `json:"nodeCount,omitempty"`
	// Architectures are the nodes' CPU architectures (amd64, arm64), each once.
	Architectures []string `json:"architectures,omitempty"`
	// Architecture summarises Architectures: amd64, arm64 or mixed.
	Architecture string `json:"architecture,omitempty"`
	// AllocatableCPU is the CPU allocatable on all nodes together, a Kubernetes quantity.
	AllocatableCPU string `json:"allocatableCPU,omitempty"`
	// AllocatableMemory is the memory allocatable on all nodes together, a Kubernetes quantity.
	AllocatableMemory string `json:"allocatableMemory,omitempty"`
	// AgentVersion is the version of the cluster's flotilla-agent.
	AgentVersion string `json:"agentVersion,omitempty"`
	// Doorbell says whether the agent hears of changes by the server's datagram doorbell:
	// on, off (not offered, or turned off on the agent) or blocked (pings unanswered; the
	// agent relies on HTTPS long polls alone).
	Doorbell string `json:"doorbell,omitempty"`
}

// ClusterGroupSpec makes a named selector over clusters.
type ClusterGroupSpec struct {
	// Selector selects the group's clusters, in the ClusterGroup's namespace, by their labels. An
	// empty selector selects every cluster; none selects none.
	Selector *LabelSelector `json:"selector,omitempty"`
}

// ClusterGroupStatus counts the group's clusters.
type ClusterGroupStatus struct {
	// ClusterCount is the number of clusters in the group.
	ClusterCount int `json:"clusterCount"`
	// NonReadyClusterCount is how many of them are not ready.
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
	// Replace lets the token re-adopt the cluster it is bound to when that cluster was rebuilt
	// (a new kube-system UID, its agent's state lost): a cluster registering with it takes
	// over the Cluster — name, labels, template values, bindings, bundles — under its own
	// identity, and the old cluster's credential stops working. Needs clusterName.
	Replace bool `json:"replace,omitempty"`
}

// RegistrationTokenStatus says whether the token can still be used. The token's value is
// shown once, when it is created, and stored only as a hash.
type RegistrationTokenStatus struct {
	// Expires is when the token stops working, set from spec.ttl when it is created; none means
	// never.
	Expires *time.Time `json:"expires,omitempty"`
	// Uses counts the clusters registered with the token.
	Uses int `json:"uses"`
	// Token is set only in the response to the create call.
	Token string `json:"token,omitempty"`
}

// GitRepoSpec is a git repository to deliver from, in Fleet's shape.
type GitRepoSpec struct {
	// Repo is the git repository's URL: https://, http://, ssh:// or scp-like user@host:path.
	Repo string `json:"repo"`
	// Branch is the branch to follow; none means the repository's default branch (its HEAD).
	Branch string `json:"branch,omitempty"`
	// Revision pins a tag or commit to deploy instead of following a branch.
	Revision string `json:"revision,omitempty"`
	// Paths are globs of the directories to look for bundles in; none means the whole repository.
	Paths []string `json:"paths,omitempty"`
	// ClientSecretName names the Secret with the credentials to fetch the repository:
	// kubernetes.io/basic-auth for HTTPS, kubernetes.io/ssh-auth (with known_hosts) for SSH.
	ClientSecretName string `json:"clientSecretName,omitempty"`
	// HelmSecretName names the Secret with the credentials and CA certificates to download Helm
	// charts with.
	HelmSecretName string `json:"helmSecretName,omitempty"`
	// HelmSecretNameForPaths is Fleet's per-path Helm credentials. Not supported yet: a GitRepo
	// that sets it deploys nothing.
	HelmSecretNameForPaths string `json:"helmSecretNameForPaths,omitempty"`
	// HelmRepoURLRegex sends the Helm credentials only to chart URLs matching this regular
	// expression.
	HelmRepoURLRegex string `json:"helmRepoURLRegex,omitempty"`
	// CABundle is PEM certificates to trust for the repository's HTTPS server.
	CABundle string `json:"caBundle,omitempty"`
	// InsecureSkipTLSVerify fetches over HTTPS without verifying the server's certificate.
	InsecureSkipTLSVerify bool `json:"insecureSkipTLSverify,omitempty"`
	// PollingInterval is how often the repository is fetched, a Go duration; default 15s, at least
	// 1s.
	PollingInterval string `json:"pollingInterval,omitempty"`
	// DisablePolling stops periodic fetches: only webhooks, spec changes and retries fetch.
	DisablePolling bool `json:"disablePolling,omitempty"`
	// WebhookSecret names the Secret whose keys github and gitlab verify webhook push events. A
	// GitRepo without one is not triggered by webhooks.
	WebhookSecret string `json:"webhookSecret,omitempty"`
	// Paused keeps fetching but deploys nothing new.
	Paused bool `json:"paused,omitempty"`
	// ForceSyncGeneration redeploys the bundles whenever it changes.
	ForceSyncGeneration int64 `json:"forceSyncGeneration,omitempty"`
	// ServiceAccount is what the agents deploy the bundles as, instead of their own identity.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// TargetNamespace puts every namespaced object of the bundles in this namespace.
	TargetNamespace string `json:"targetNamespace,omitempty"`
	// KeepResources leaves the deployed objects in place when a bundle is removed.
	KeepResources bool `json:"keepResources,omitempty"`
	// DeleteNamespace deletes the namespace created for a bundle when it is removed.
	DeleteNamespace bool `json:"deleteNamespace,omitempty"`
	// CorrectDrift makes the agents undo changes made in the clusters to the deployed objects.
	CorrectDrift *CorrectDrift `json:"correctDrift,omitempty"`
	// Targets select the clusters the bundles go to; none means every cluster in the GitRepo's
	// namespace.
	Targets []GitTarget `json:"targets,omitempty"`
	// Fleet fields accepted so that existing manifests apply unchanged: ImageScanInterval,
	// ImageScanCommit and OCIRegistry. Flotilla neither scans images nor stores bundles in
	// an OCI registry.
	ImageScanInterval string          `json:"imageScanInterval,omitempty"`
	ImageScanCommit   json.RawMessage `json:"imageScanCommit,omitempty"`
	OCIRegistry       json.RawMessage `json:"ociRegistry,omitempty"`
}

// GitRepoStatus shows what was deployed from the repository and how it is doing.
type GitRepoStatus struct {
	// Commit is the commit the bundles were last written from.
	Commit string `json:"commit,omitempty"`
	// ObservedGeneration is the GitRepo generation that commit was deployed with.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// LastPollingTime is when the repository was last fetched.
	LastPollingTime *time.Time `json:"lastPollingTime,omitempty"`
	// Bundles are the names of the Bundles the GitRepo produced.
	Bundles []string `json:"bundles,omitempty"`
	// Summary counts the deployments of the GitRepo's bundles by state.
	Summary *Summary `json:"summary,omitempty"`
	// Conditions are GitPolling (fetch health) and Accepted (whether the latest commit was
	// deployed).
	Conditions []Condition `json:"conditions,omitempty"`
	// Error says why the latest fetch or commit was not deployed, naming the commit and file.
	Error string `json:"error,omitempty"`
}

// BundleSpec is one deployable unit: content stored once by digest, plus how and where to
// deploy it. Fleet's Bundle shape (inline resources) is accepted; the server moves inline
// resources into the content store and records their digest.
type BundleSpec struct {
	BundleDeploymentOptions `json:",inline"`

	// Paused keeps the bundle's changes from reaching clusters; what runs there keeps running.
	Paused          bool             `json:"paused,omitempty"`
	RolloutStrategy *RolloutStrategy `json:"rolloutStrategy,omitempty"`
	// Resources are the bundle's files given inline, as in Fleet; the server moves them into the
	// content store and sets ContentHash.
	Resources []BundleResource `json:"resources,omitempty"`
	// Targets select the clusters the bundle goes to, and the options merged for them.
	Targets []BundleTarget `json:"targets,omitempty"`
	// TargetRestrictions, when there are any, let only clusters matching one of them receive the
	// bundle.
	TargetRestrictions []BundleTargetRestriction `json:"targetRestrictions,omitempty"`
	// DependsOn are bundles that must be ready on a cluster before this one is deployed there.
	DependsOn []BundleRef `json:"dependsOn,omitempty"`
	// ContentHash is the digest ("sha256:…") of the bundle's content archive.
	ContentHash string `json:"contentHash,omitempty"`
}

// BundleResource is one file of a bundle given inline, as in Fleet's Bundle.
type BundleResource struct {
	// Name is the file's path in the bundle.
	Name string `json:"name,omitempty"`
	// Content is the file's content, encoded as Encoding says.
	Content string `json:"content,omitempty"`
	// Encoding is empty for plain text, base64, or base64+gz (gzip, then base64).
	Encoding string `json:"encoding,omitempty"`
}

// Summary counts deployments by state, with the first few that are not ready.
type Summary struct {
	// DesiredReady is the number of deployments.
	DesiredReady int `json:"desiredReady"`
	// Ready counts the deployments that are ready.
	Ready int `json:"ready"`
	// NotReady counts those applied whose objects are not ready.
	NotReady int `json:"notReady,omitempty"`
	// Modified counts those whose objects were changed in the cluster.
	Modified int `json:"modified,omitempty"`
	// WaitApplied counts those not applied yet.
	WaitApplied int `json:"waitApplied,omitempty"`
	// ErrApplied counts those that failed to apply.
	ErrApplied int `json:"errApplied,omitempty"`
	// OutOfSync counts those running an older version of the bundle.
	OutOfSync int `json:"outOfSync,omitempty"`
	// Pending counts those the rollout or a dependency holds back.
	Pending int `json:"pending,omitempty"`
	// NonReadyResources are the first few deployments that are not ready.
	NonReadyResources []NonReadyResource `json:"nonReadyResources,omitempty"`
}

// NonReadyResource names one deployment that is not ready and why.
type NonReadyResource struct {
	// Name names the deployment.
	Name string `json:"name"`
	// State is the deployment's state: NotReady, Modified, WaitApplied, ErrApplied, OutOfSync or
	// Pending.
	State string `json:"state"`
	// Message says why it is not ready.
	Message string `json:"message,omitempty"`
}

// BundleStatus is the rolled-up state of a bundle across its clusters.
type BundleStatus struct {
	// ObservedGeneration is the bundle generation this status is for.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Summary counts the bundle's deployments by state.
	Summary *Summary `json:"summary,omitempty"`
	// Conditions are the bundle's status conditions.
	Conditions []Condition `json:"conditions,omitempty"`
	// PartitionStatus reports the rollout partitions, in order.
	Partitions []PartitionStatus `json:"partitions,omitempty"`
}

// PartitionStatus is one rollout partition's progress.
type PartitionStatus struct {
	// Name is the partition's name.
	Name string `json:"name"`
	// Count is the number of clusters in the partition.
	Count int `json:"count"`
	// Ready is how many of them are ready.
	Ready int `json:"ready"`
	// Unavailable is how many of them are not.
	Unavailable int `json:"unavailable"`
	// MaxUnavailable is how many may be unavailable before the rollout waits.
	MaxUnavailable int `json:"maxUnavailable"`
	// Summary counts the partition's deployments by state.
	Summary *Summary `json:"summary,omitempty"`
}
