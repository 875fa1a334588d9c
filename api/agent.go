package api

import (
	"encoding/json"
	"time"
)

// The agent protocol. An agent registers once with a registration token and gets a
// per-cluster credential; from then on it polls its desired state, fetches content by digest,
// and reports status. All paths are under AgentPrefix; all calls but registration carry the
// cluster credential as a bearer token.
const (
	AgentPrefix = "/v1/agent"
	// PathRegister: POST RegisterRequest with the registration token → RegisterResponse.
	PathRegister = AgentPrefix + "/register"
	// PathDesired: GET ?since=R → 200 DesiredState, or 304 when nothing changed since R.
	// With &wait=S the server holds the request up to S seconds (at most 60) for a change;
	// with &inline=1 the agent says it takes Contents.
	PathDesired = AgentPrefix + "/desired"
	// PathContent: GET /v1/agent/content/{digest} → the content archive (immutable).
	PathContent = AgentPrefix + "/content/"
	// PathStatus: POST StatusReport → 200 StatusAck.
	PathStatus = AgentPrefix + "/status"
	// PathRenew: POST with the cluster credential (valid, or expired less than the server's
	// renewal grace ago) → RegisterResponse with a fresh credential.
	PathRenew = AgentPrefix + "/renew"

	// HeaderPollAfter tells the agent how many seconds to wait before its next poll, also
	// on 304 answers, which carry no body.
	HeaderPollAfter = "X-Flotilla-Poll-After"
	// HeaderRevision carries the desired-state revision on 304 answers.
	HeaderRevision = "X-Flotilla-Revision"
	// HeaderRenewCredential, on any answer to a cluster, asks the agent to renew its
	// credential soon: it is old, or signed by a key the server has since rotated.
	HeaderRenewCredential = "X-Flotilla-Renew-Credential"

	// PathDoorbell: GET → DoorbellInfo, what the cluster's agent needs to use the server's
	// datagram doorbell; 404 when the server has none.
	PathDoorbell = AgentPrefix + "/doorbell"
	// HeaderDoorbell, on answers to polls (200 or 304), says the server has a datagram
	// doorbell: its value is the UDP port, on the host of the server's URL.
	HeaderDoorbell = "X-Flotilla-Doorbell"
	// HeaderBellPollAfter, on answers to polls of a cluster whose doorbell pings the server
	// answers, is how many seconds to wait before the next poll while the doorbell keeps
	// answering: much longer than HeaderPollAfter, as the pings carry the desired version
	// and a change rings. An agent whose doorbell does not answer (it may not hear the
	// answers the server sends) goes by HeaderPollAfter.
	HeaderBellPollAfter = "X-Flotilla-Doorbell-Poll-After"
)

// DoorbellInfo is how a cluster's agent uses the datagram doorbell: it pings "my desired
// version is V" to Port every IntervalSeconds, with datagrams signed by Key, and polls at
// once when the server answers or rings that the state changed or a tunnel is wanted.
type DoorbellInfo struct {
	// Port is the UDP port, on the host of the server's URL.
	Port int `json:"port"`
	// UID is the cluster's UID, which every datagram names.
	UID string `json:"uid"`
	// Key is the cluster's doorbell key (32 bytes, base64 in JSON).
	Key []byte `json:"key"`
	// IntervalSeconds is how often to ping, unless an answer says otherwise.
	IntervalSeconds int `json:"intervalSeconds"`
	// KeepAliveSeconds, when set, is how often to send a keepalive (one byte) to Port
	// between pings, unless an answer says otherwise: it keeps NATs on the way from
	// forgetting the path rings take, and the server drops it unread. Pings then carry the
	// keepalive flag, and their answers both intervals. Unset: pings only.
	KeepAliveSeconds int `json:"keepAliveSeconds,omitempty"`
}

// Doorbell states an agent reports in its inventory.
const (
	// DoorbellOn: pings are answered; changes reach the agent by datagram.
	DoorbellOn = "on"
	// DoorbellOff: the server offers no doorbell, or the agent was told not to use it.
	DoorbellOff = "off"
	// DoorbellBlocked: pings go unanswered (UDP filtered on the way); the agent relies on
	// its HTTPS long polls alone.
	DoorbellBlocked = "blocked"
)

// Deployment states, as Fleet names them.
const (
	StateReady       = "Ready"
	StateNotReady    = "NotReady"
	StateModified    = "Modified"
	StateWaitApplied = "WaitApplied"
	StateErrApplied  = "ErrApplied"
	StateOutOfSync   = "OutOfSync"
	StatePending     = "Pending"
)

// Reasons an agent can act on.
const (
	// ReasonClusterDeleted: the credential's cluster no longer exists; the agent stops.
	ReasonClusterDeleted = "ClusterDeleted"
	// ReasonTokenInvalid: the registration token is unknown, expired or used up.
	ReasonTokenInvalid = "RegistrationTokenInvalid"
	// ReasonCredentialExpired: the cluster credential expired; the agent renews it
	// (PathRenew), which the server allows for a grace period after expiry.
	ReasonCredentialExpired = "CredentialExpired"
	// ReasonRegistrationRefused: the cluster already exists and the registration proved no
	// right to it (its credential, or a registration token bound to it).
	ReasonRegistrationRefused = "RegistrationRefused"
	// ReasonDesiredTooLarge: the cluster's desired state is larger than MaxDesiredBytes,
	// more than its agent reads, and is not sent.
	ReasonDesiredTooLarge = "DesiredStateTooLarge"
)

// RegisterRequest is sent once, with the registration token as bearer token.
type RegisterRequest struct {
	// ClientID is the cluster's stable identity (the kube-system namespace UID), so that a
	// cluster registering again gets its existing Cluster back.
	ClientID  string            `json:"clientID"`
	Labels    map[string]string `json:"labels,omitempty"`
	Inventory *ClusterInventory `json:"inventory,omitempty"`
	// ClusterName is the name the agent asks for (--cluster-name): a DNS label the server
	// grants when the token allows it and no other cluster has it. Empty: the name is
	// derived from ClientID.
	ClusterName string `json:"clusterName,omitempty"`
	// Credential is the cluster's current credential, if it has one: registering again as
	// an existing cluster needs it (valid, or expired within the renewal grace), unless the
	// registration token is bound to that cluster.
	Credential string `json:"credential,omitempty"`
}

// RegisterResponse hands the agent its identity and credential.
type RegisterResponse struct {
	Namespace   string `json:"namespace"`
	ClusterName string `json:"clusterName"`
	// Credential is the per-cluster bearer token; the server keeps no copy of it.
	Credential string `json:"credential"`
	// Expires is when the credential stops working; the agent renews it before then.
	Expires *time.Time `json:"expires,omitempty"`
	// Doorbell, on registration, is what the cluster needs to use the server's datagram
	// doorbell (as PathDoorbell answers); absent when the server has none.
	Doorbell *DoorbellInfo `json:"doorbell,omitempty"`
}

// DesiredState is everything a cluster should run.
type DesiredState struct {
	// Revision identifies this state; the agent sends it back as since=.
	Revision           int64             `json:"revision"`
	ClusterName        string            `json:"clusterName"`
	ClusterNamespace   string            `json:"clusterNamespace"`
	ClusterLabels      map[string]string `json:"clusterLabels,omitempty"`
	ClusterAnnotations map[string]string `json:"clusterAnnotations,omitempty"`
	// ClusterValues are the Cluster's spec.templateValues.
	ClusterValues map[string]any `json:"clusterValues,omitempty"`
	// Deployments are every bundle targeting the cluster, with its options already
	// customised for this cluster.
	Deployments []DeploymentSpec `json:"deployments"`
	// PollAfterSeconds is when to ask again.
	PollAfterSeconds int `json:"pollAfterSeconds"`
	// Access is the RBAC objects, project namespaces, quotas and limit ranges compiled from
	// the roles bound on the cluster and the projects spanning it; nil when the server does
	// not manage access (the agent then leaves what it applied before alone).
	Access *AccessState `json:"access,omitempty"`
	// Contents are content archives, by digest, that the agent would otherwise fetch at once:
	// the server sends the small ones of deployments the cluster has not reported applied,
	// up to a budget per answer, to save a round trip each. The agent checks each against
	// its digest as it checks fetched content, and fetches any it is not given or that fails
	// the check. They are not part of the state's Revision. Sent only to agents that ask
	// for them (inline=1), at most MaxInlineContent bytes of archives.
	Contents map[string][]byte `json:"contents,omitempty"`
}

// MaxInlineContent bounds the archive bytes one desired-state answer carries in Contents,
// whatever the server is configured to: an answer is held in memory whole on both sides.
const MaxInlineContent = 1 << 20

// MaxDesiredBytes bounds an encoded desired-state answer an agent reads: thousands of
// deployments with their options, and MaxInlineContent of archives in base64.
const MaxDesiredBytes = 64 << 20

// MaxContentBytes bounds a content archive an agent reads. A bundle's content is at most
// 64 MiB unpacked (bundle.DefaultLimits); its compressed archive, with tar headers, fits.
const MaxContentBytes = 80 << 20

// AccessState is everything access-related a cluster must hold. The agent applies Objects
// with server-side apply and prunes what it applied before (label flotilla.dev/owner=access)
// that is no longer listed.
type AccessState struct {
	// Digest changes exactly when the content does.
	Digest  string            `json:"digest"`
	Objects []json.RawMessage `json:"objects,omitempty"`
	// Templates are applied to every namespace of the cluster matching their selector.
	Templates []AccessTemplate `json:"templates,omitempty"`
	// Conflicts say which namespaces two projects claim on this cluster, and who keeps them.
	Conflicts []string `json:"conflicts,omitempty"`
}

// AccessTemplate is a project's objects for the namespaces its namespaceSelector picks; the
// agent fills in each namespace.
type AccessTemplate struct {
	Project  string            `json:"project"`
	Selector *LabelSelector    `json:"selector"`
	Objects  []json.RawMessage `json:"objects"`
}

// MaxAccessUsageEntries bounds the usage entries (resources over every project namespace)
// of one access report; the server refuses a report with more.
const MaxAccessUsageEntries = 5000

// AccessReport is what an agent says about the access objects of its cluster.
type AccessReport struct {
	// Digest is the AccessState.Digest last applied (completely or not).
	Digest string `json:"digest"`
	// Error is why the last apply failed; empty when it succeeded.
	Error string `json:"error,omitempty"`
	// Usage is, per project and namespace, the status.used of the namespace's ResourceQuota.
	Usage map[string]map[string]map[string]string `json:"usage,omitempty"`
}

// DeploymentSpec is one bundle as this cluster must run it.
type DeploymentSpec struct {
	// Bundle is "namespace/name".
	Bundle string `json:"bundle"`
	// ID is a digest of everything below: what the agent reports back as applied.
	ID          string                  `json:"id"`
	ContentHash string                  `json:"contentHash"`
	ReleaseName string                  `json:"releaseName"`
	Options     BundleDeploymentOptions `json:"options"`
	// Paused: keep what is deployed, do not apply changes.
	Paused bool `json:"paused,omitempty"`
}

// StatusReport is what an agent says about its cluster. Reports are idempotent: Seq grows
// with every report an agent makes, and the server ignores one it has already seen, so a
// queued report sent twice after an outage changes nothing.
type StatusReport struct {
	Seq       int64             `json:"seq"`
	Time      time.Time         `json:"time"`
	Inventory *ClusterInventory `json:"inventory,omitempty"`
	// Deployments lists the deployments whose state is reported; a deployment not listed
	// keeps its last reported state.
	Deployments []DeploymentStatus `json:"deployments,omitempty"`
	// Removed lists bundles the agent has removed from the cluster.
	Removed []string `json:"removed,omitempty"`
	// Access, when set, is the state of the cluster's access objects and project usage.
	Access *AccessReport `json:"access,omitempty"`
}

// DeploymentStatus is one deployment's observed state.
type DeploymentStatus struct {
	Bundle string `json:"bundle"`
	// ID is the DeploymentSpec.ID the agent last applied.
	ID      string `json:"id"`
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
}

// StatusAck confirms a report.
type StatusAck struct {
	Seq int64 `json:"seq"`
}

// KnownState reports whether s is a deployment state an agent may report.
func KnownState(s string) bool {
	switch s {
	case StateReady, StateNotReady, StateModified, StateWaitApplied, StateErrApplied, StateOutOfSync, StatePending:
		return true
	}
	return false
}

// The tunnel. A cluster's agent opens a tunnel to the server only when the server asks for
// one, so that the server can reach the cluster's API server for the Kubernetes proxy.
const (
	// PathTunnel: GET, a WebSocket upgrade with the cluster credential as bearer token and
	// the one-time tunnel token in HeaderTunnelToken. The server then opens streams to the
	// agent, each carrying one HTTP request for the cluster's own API server.
	PathTunnel = AgentPrefix + "/tunnel"
	// HeaderTunnelToken, on any answer to a poll (200 or 304), says the server wants the
	// cluster's tunnel; its value is a one-time token, bound to the cluster, that the
	// agent sends back on PathTunnel.
	HeaderTunnelToken = "X-Flotilla-Tunnel-Token"
)
