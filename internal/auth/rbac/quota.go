package rbac

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"flotilla.dev/api"
)

// ProjectUsage is what agents report: per cluster, per project namespace, the quota usage
// ("used" of the namespace's ResourceQuota) by resource name.
type ProjectUsage map[string]map[string]map[string]string

// ProjectStatus computes a project's status from usage. The project's total applies per
// cluster (each cluster is its own pool of capacity); Used is, per resource, the largest sum
// over one cluster's namespaces, and OverQuota is True while any cluster's sum exceeds the
// total. Values that do not parse are ignored: usage comes from agents.
func ProjectStatus(spec api.ProjectSpec, usage ProjectUsage, now time.Time) api.ProjectStatus {
	maxUsed := map[string]resource.Quantity{}
	var over []string
	for _, cl := range slices.Sorted(maps.Keys(usage)) {
		sum := map[string]resource.Quantity{}
		for _, res := range usage[cl] {
			for k, v := range res {
				q, err := resource.ParseQuantity(v)
				if err != nil {
					continue
				}
				s := sum[k]
				s.Add(q)
				sum[k] = s
			}
		}
		for k, s := range sum {
			if m, ok := maxUsed[k]; !ok || s.Cmp(m) > 0 {
				maxUsed[k] = s
			}
		}
		if spec.Quota == nil {
			continue
		}
		for _, k := range slices.Sorted(maps.Keys(spec.Quota.Hard)) {
			total, err := resource.ParseQuantity(spec.Quota.Hard[k])
			if s, ok := sum[k]; err == nil && ok && s.Cmp(total) > 0 {
				over = append(over, fmt.Sprintf("%s on cluster %s: %s used of %s", k, cl, s.String(), total.String()))
			}
		}
	}
	st := api.ProjectStatus{}
	if len(maxUsed) > 0 {
		st.Used = map[string]string{}
		for k, q := range maxUsed {
			st.Used[k] = q.String()
		}
	}
	if spec.Quota != nil {
		c := api.Condition{Type: api.ConditionOverQuota, Status: "False", Reason: "WithinQuota", LastTransitionTime: &now}
		if len(over) > 0 {
			c.Status, c.Reason = "True", "QuotaExceeded"
			c.Message = over[0]
			if len(over) > 1 {
				c.Message += fmt.Sprintf(" (and %d more)", len(over)-1)
			}
		}
		st.Conditions = []api.Condition{c}
	}
	return st
}
