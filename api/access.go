package api

import "time"

// The kinds of the access model: who may do what, where. All four are global objects (no
// metadata.namespace): a role or a user means the same thing in every workspace.
const (
	KindUser        = "User"
	KindRole        = "Role"
	KindRoleBinding = "RoleBinding"
	KindProject     = "Project"
)

// Role contexts: where a role may be bound.
const (
	// RoleContextGlobal roles are bound at global or workspace scope. Their rules over
	// Flotilla's kinds apply everywhere (or in the workspace); their Kubernetes rules apply on
	// every cluster (or every cluster of the workspace).
	RoleContextGlobal = "global"
	// RoleContextCluster roles are bound to clusters (one, a ClusterGroup, or a selector). Their
	// Kubernetes rules apply cluster-wide on those clusters.
	RoleContextCluster = "cluster"
	// RoleContextProject roles are bound to a project. Their Kubernetes rules apply in the
	// project's namespaces on the project's clusters.
	RoleContextProject = "project"
)

// Verbs a rule over Flotilla's kinds may name; "*" names all of them.
const (
	VerbGet    = "get"
	VerbList   = "list"
	VerbWatch  = "watch"
	VerbCreate = "create"
	VerbUpdate = "update"
	VerbDelete = "delete"
)

// Subject kinds of a RoleBinding.
const (
	SubjectUser  = "User"
	SubjectGroup = "Group"
)

// User providers.
const (
	ProviderLocal = "local"
	ProviderOIDC  = "oidc"
	ProviderLDAP  = "ldap"
)

// ConditionOverQuota is the Project condition set while the project's usage exceeds its total.
const ConditionOverQuota = "OverQuota"

// UserSpec is a person who may log in. A local user's password hash is stored apart from
// this object and never served; users of an identity provider have no password here at all.
type UserSpec struct {
	DisplayName string `json:"displayName,omitempty"`
	// Disabled users cannot log in, and every session they hold stops working at once.
	Disabled bool `json:"disabled,omitempty"`
	// Provider is local, oidc or ldap; empty means local.
	Provider string `json:"provider,omitempty"`
	// Groups are the user's groups as the provider last reported them (set by the server for
	// provider users, refreshed at login; ignored for local users, who are put in groups by
	// bindings naming them instead).
	Groups []string `json:"groups,omitempty"`
}

// UserStatus is what the server observed about a user.
type UserStatus struct {
	LastLogin *time.Time `json:"lastLogin,omitempty"`
	// GroupsRefreshed is when Groups was last read from the provider.
	GroupsRefreshed *time.Time `json:"groupsRefreshed,omitempty"`
}

// PolicyRule grants verbs on Flotilla's kinds. Resources are plurals as on the command line
// ("clusters", "gitrepos") or "*"; APIGroups may be omitted (Flotilla's group), or name
// flotilla.dev, fleet.cattle.io or "*". ResourceNames, when set, limits the rule to objects
// of those names.
type PolicyRule struct {
	APIGroups     []string `json:"apiGroups,omitempty"`
	Resources     []string `json:"resources"`
	Verbs         []string `json:"verbs"`
	ResourceNames []string `json:"resourceNames,omitempty"`
}

// KubernetesPolicyRule has the shape of Kubernetes' rbac/v1 PolicyRule; it is pushed to the
// downstream clusters where the role is bound.
type KubernetesPolicyRule struct {
	APIGroups       []string `json:"apiGroups,omitempty"`
	Resources       []string `json:"resources,omitempty"`
	Verbs           []string `json:"verbs"`
	ResourceNames   []string `json:"resourceNames,omitempty"`
	NonResourceURLs []string `json:"nonResourceURLs,omitempty"`
}

// RoleSpec is a named set of grants.
type RoleSpec struct {
	DisplayName string `json:"displayName,omitempty"`
	// Context is global, cluster or project; it decides where the role may be bound.
	Context string `json:"context"`
	// Rules apply to Flotilla's API (CLI, dashboard) within the binding's scope.
	Rules []PolicyRule `json:"rules,omitempty"`
	// KubernetesRules are pushed to the downstream clusters the binding covers.
	KubernetesRules []KubernetesPolicyRule `json:"kubernetesRules,omitempty"`
	// InheritFrom names roles of the same context whose rules this role also grants.
	InheritFrom []string `json:"inheritFrom,omitempty"`
}

// RoleStatus marks the built-in roles, which the server recreates and refuses to change.
type RoleStatus struct {
	Builtin bool `json:"builtin,omitempty"`
}

// RoleBindingSpec grants a role to a user or group at one scope. It is stored once, whatever
// the number of clusters the scope covers.
type RoleBindingSpec struct {
	Subject Subject `json:"subject"`
	// RoleRef is the name of the Role granted.
	RoleRef string       `json:"roleRef"`
	Scope   BindingScope `json:"scope"`
}

// Subject is a user or a group, by name.
type Subject struct {
	// Kind is User or Group.
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// BindingScope says where a binding applies. Exactly one of Global, Workspace (alone),
// ClusterSelector, ClusterGroup, Cluster and Project is set. Workspace may also accompany
// ClusterSelector, ClusterGroup or Cluster to name the workspace of the clusters meant: a
// ClusterSelector without it spans every workspace, a Cluster or ClusterGroup without it is
// the one in the default workspace (fleet-default), since names are unique per workspace.
type BindingScope struct {
	Global bool `json:"global,omitempty"`
	// Workspace is a namespace of Flotilla objects (fleet-default, …).
	Workspace       string         `json:"workspace,omitempty"`
	ClusterSelector *LabelSelector `json:"clusterSelector,omitempty"`
	ClusterGroup    string         `json:"clusterGroup,omitempty"`
	Cluster         string         `json:"cluster,omitempty"`
	Project         string         `json:"project,omitempty"`
}

// ProjectSpec groups namespaces on a set of clusters, with quotas and default limits.
type ProjectSpec struct {
	DisplayName string `json:"displayName,omitempty"`
	// ClusterSelector picks the clusters the project spans; nil picks none, {} picks all.
	ClusterSelector *LabelSelector `json:"clusterSelector,omitempty"`
	// Namespaces are created on every cluster of the project and labelled with it.
	Namespaces []ProjectNamespace `json:"namespaces,omitempty"`
	// NamespaceSelector adds every existing namespace with matching labels (the agent
	// expands it on its cluster).
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	// NamespaceQuota is the ResourceQuota given to each project namespace unless the
	// namespace names its own.
	NamespaceQuota *ResourceQuotaSpec `json:"namespaceQuota,omitempty"`
	// Quota is the project's total over all its namespaces on one cluster.
	Quota *ResourceQuotaSpec `json:"quota,omitempty"`
	// ContainerDefaults become a LimitRange in each project namespace.
	ContainerDefaults *ContainerLimits `json:"containerDefaults,omitempty"`
}

// ProjectNamespace is one namespace of a project, by name, with an optional quota of its own.
type ProjectNamespace struct {
	Name  string             `json:"name"`
	Quota *ResourceQuotaSpec `json:"quota,omitempty"`
}

// ResourceQuotaSpec has the shape of Kubernetes' ResourceQuotaSpec.hard: resource names
// ("requests.cpu", "limits.memory", "pods", …) to quantities ("4", "8Gi").
type ResourceQuotaSpec struct {
	Hard map[string]string `json:"hard"`
}

// ContainerLimits is a LimitRange item of type Container.
type ContainerLimits struct {
	// Default limits for containers that set none.
	Default map[string]string `json:"default,omitempty"`
	// DefaultRequest requests for containers that set none.
	DefaultRequest map[string]string `json:"defaultRequest,omitempty"`
	Max            map[string]string `json:"max,omitempty"`
	Min            map[string]string `json:"min,omitempty"`
}

// ProjectStatus reports usage against the project's quota.
type ProjectStatus struct {
	// Used is the project's usage summed over its namespaces on the cluster that uses most,
	// per resource name.
	Used       map[string]string `json:"used,omitempty"`
	Conditions []Condition       `json:"conditions,omitempty"`
}

// String names the scope as the CLI shows it: "global", "workspace/W", "cluster/W/C",
// "clustergroup/W/G", "selector/env=dev", "project/P".
func (s BindingScope) String() string {
	ws := func(kind, name string) string {
		if s.Workspace != "" {
			return kind + "/" + s.Workspace + "/" + name
		}
		return kind + "/" + name
	}
	switch {
	case s.Global:
		return "global"
	case s.Cluster != "":
		return ws("cluster", s.Cluster)
	case s.ClusterGroup != "":
		return ws("clustergroup", s.ClusterGroup)
	case s.ClusterSelector != nil:
		sel := LabelString(s.ClusterSelector.MatchLabels)
		if len(s.ClusterSelector.MatchExpressions) > 0 {
			sel += "+expressions"
		}
		if s.Workspace != "" {
			return "selector/" + s.Workspace + "/" + sel
		}
		return "selector/" + sel
	case s.Project != "":
		return "project/" + s.Project
	case s.Workspace != "":
		return "workspace/" + s.Workspace
	}
	return "<none>"
}

// PathCanI: POST an AccessReview (verb, kind, namespace, name, as); the answer is the same
// review with Allowed and Reason set.
const PathCanI = "/v1/auth/can-i"

// AccessReview asks whether the caller, or the user As, may do Verb on Kind.
type AccessReview struct {
	Verb      string `json:"verb"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// As names another user to ask for; it needs the right to list role bindings globally.
	As      string `json:"as,omitempty"`
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason,omitempty"`
}
