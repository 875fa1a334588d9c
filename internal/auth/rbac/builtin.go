package rbac

import "flotilla.dev/api"

// Names of the built-in roles.
const (
	RoleAdmin         = "admin"
	RoleReadOnly      = "read-only"
	RoleClusterOwner  = "cluster-owner"
	RoleClusterMember = "cluster-member"
	RoleProjectOwner  = "project-owner"
	RoleProjectMember = "project-member"
)

var (
	readVerbs = []string{api.VerbGet, api.VerbList, api.VerbWatch}
	kubeRead  = []string{"get", "list", "watch"}
	kubeAll   = []string{"*"}
	kubeWrite = []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
)

// Builtin returns the built-in roles, modelled on Rancher's global role "admin", its
// read-only global role, and the role templates cluster-owner, cluster-member, project-owner
// and project-member. A fresh copy each call: callers may not change the index's own.
func Builtin() map[string]api.RoleSpec {
	return map[string]api.RoleSpec{
		// Everything in Flotilla and, like Rancher's admin, everything on every cluster.
		RoleAdmin: {
			DisplayName:     "Administrator",
			Context:         api.RoleContextGlobal,
			Rules:           []api.PolicyRule{{Resources: []string{"*"}, Verbs: []string{"*"}}},
			KubernetesRules: []api.KubernetesPolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: kubeAll}, {NonResourceURLs: []string{"*"}, Verbs: kubeAll}},
		},
		// Read every Flotilla object (Secrets' values stay redacted by the API, password
		// hashes are never served); nothing downstream.
		RoleReadOnly: {
			DisplayName: "Read-only",
			Context:     api.RoleContextGlobal,
			Rules:       []api.PolicyRule{{Resources: []string{"*"}, Verbs: readVerbs}},
		},
		// Rancher's cluster-owner: full control of the cluster, in Flotilla (its Cluster
		// object, its projects) and downstream (* on * plus non-resource URLs).
		RoleClusterOwner: {
			DisplayName: "Cluster Owner",
			Context:     api.RoleContextCluster,
			Rules: []api.PolicyRule{
				{Resources: []string{"clusters"}, Verbs: []string{api.VerbGet, api.VerbList, api.VerbWatch, api.VerbUpdate, api.VerbDelete}},
				{Resources: []string{"projects"}, Verbs: []string{"*"}},
			},
			KubernetesRules: []api.KubernetesPolicyRule{
				{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: kubeAll},
				{NonResourceURLs: []string{"*"}, Verbs: kubeAll},
			},
			InheritFrom: []string{RoleClusterMember},
		},
		// Rancher's cluster-member: see the cluster and its cluster-wide, non-secret objects
		// (nodes, storage, CRDs, …); namespaces' content only through projects.
		RoleClusterMember: {
			DisplayName: "Cluster Member",
			Context:     api.RoleContextCluster,
			Rules: []api.PolicyRule{
				{Resources: []string{"clusters", "projects"}, Verbs: readVerbs},
			},
			KubernetesRules: []api.KubernetesPolicyRule{
				{APIGroups: []string{""}, Resources: []string{"nodes", "persistentvolumes", "namespaces", "componentstatuses"}, Verbs: kubeRead},
				{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"storageclasses", "csidrivers", "csinodes"}, Verbs: kubeRead},
				{APIGroups: []string{"apiextensions.k8s.io"}, Resources: []string{"customresourcedefinitions"}, Verbs: kubeRead},
				{APIGroups: []string{"apiregistration.k8s.io"}, Resources: []string{"apiservices"}, Verbs: kubeRead},
				{APIGroups: []string{"scheduling.k8s.io"}, Resources: []string{"priorityclasses"}, Verbs: kubeRead},
				{APIGroups: []string{"node.k8s.io"}, Resources: []string{"runtimeclasses"}, Verbs: kubeRead},
				{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingressclasses"}, Verbs: kubeRead},
				{APIGroups: []string{"metrics.k8s.io"}, Resources: []string{"nodes", "pods"}, Verbs: kubeRead},
			},
		},
		// Rancher's project-owner: Kubernetes' "admin" in the project's namespaces (every
		// workload kind, Roles and RoleBindings there), but the quotas and limit ranges that
		// Flotilla pushes stay read-only so that an owner cannot lift them.
		RoleProjectOwner: {
			DisplayName: "Project Owner",
			Context:     api.RoleContextProject,
			Rules: []api.PolicyRule{
				{Resources: []string{"projects", "clusters"}, Verbs: readVerbs},
			},
			KubernetesRules: []api.KubernetesPolicyRule{
				// Not "*": that includes bind and escalate, with which Kubernetes lets a Role or
				// RoleBinding grant more than its author holds (the quotas above all).
				{APIGroups: []string{"rbac.authorization.k8s.io"}, Resources: []string{"roles", "rolebindings"}, Verbs: kubeWrite},
			},
			InheritFrom: []string{RoleProjectMember},
		},
		// Rancher's project-member: Kubernetes' "edit" in the project's namespaces.
		RoleProjectMember: {
			DisplayName: "Project Member",
			Context:     api.RoleContextProject,
			Rules: []api.PolicyRule{
				{Resources: []string{"projects", "clusters"}, Verbs: readVerbs},
			},
			KubernetesRules: []api.KubernetesPolicyRule{
				{APIGroups: []string{""}, Resources: []string{
					"pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/log", "pods/status",
					"services", "services/proxy", "endpoints", "configmaps", "secrets", "serviceaccounts",
					"persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale",
				}, Verbs: kubeAll},
				{APIGroups: []string{""}, Resources: []string{"events", "resourcequotas", "limitranges", "namespaces"}, Verbs: kubeRead},
				{APIGroups: []string{"apps", "batch", "autoscaling"}, Resources: []string{"*"}, Verbs: kubeAll},
				{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "networkpolicies"}, Verbs: kubeAll},
				{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: kubeAll},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: kubeRead},
				{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: kubeRead},
				{APIGroups: []string{"metrics.k8s.io"}, Resources: []string{"pods"}, Verbs: kubeRead},
			},
		},
	}
}
