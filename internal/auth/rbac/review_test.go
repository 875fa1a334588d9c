package rbac

import (
	"slices"
	"testing"
)

// Kubernetes lets a subject write a Role or RoleBinding granting more than it holds only with
// the verbs escalate or bind on them ("*" includes both). A project owner holding those in its
// namespaces could bind the cluster's admin ClusterRole there and lift the quotas and limit
// ranges Flotilla keeps read-only for it.
func TestReviewProjectRolesCannotEscalateDownstream(t *testing.T) {
	for name, spec := range Builtin() {
		if spec.Context != "project" {
			continue
		}
		for _, r := range spec.KubernetesRules {
			if !slices.Contains(r.APIGroups, "rbac.authorization.k8s.io") && !slices.Contains(r.APIGroups, "*") {
				continue
			}
			for _, v := range r.Verbs {
				if v == "*" || v == "bind" || v == "escalate" || v == "impersonate" {
					t.Errorf("role %s grants %q on %v in %v", name, v, r.Resources, r.APIGroups)
				}
			}
		}
	}
}
