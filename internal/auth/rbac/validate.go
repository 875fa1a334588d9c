package rbac

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"flotilla.dev/api"
)

// InvalidError is a refused Role, RoleBinding or Project, with every reason.
type InvalidError struct {
	Kind, Name string
	Causes     []api.StatusCause
}

func (e *InvalidError) Error() string {
	msgs := make([]string, len(e.Causes))
	for i, c := range e.Causes {
		msgs[i] = c.Message
		if c.Field != "" {
			msgs[i] = c.Field + ": " + c.Message
		}
	}
	return fmt.Sprintf("%s %q is invalid: %s", e.Kind, e.Name, strings.Join(msgs, "; "))
}

type causes []api.StatusCause

func (c *causes) add(field, format string, args ...any) {
	*c = append(*c, api.StatusCause{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (c causes) err(kind, name string) error {
	if len(c) == 0 {
		return nil
	}
	return &InvalidError{Kind: kind, Name: name, Causes: c}
}

// Names reserved for the objects compile makes beside roles' ClusterRoles.
var reservedRoleNames = map[string]bool{"impersonator": true}

func checkName(c *causes, field, name string) {
	if name == "" {
		c.add(field, "a name is required")
		return
	}
	for _, m := range validation.IsDNS1123Subdomain(name) {
		c.add(field, "%q: %s", name, m)
	}
}

// subjectName allows what identity providers produce (e-mail addresses, "Domain Users",
// "team:ops"), bounded and printable, since it becomes a Kubernetes user or group name.
func checkSubjectName(c *causes, field, name string) {
	switch {
	case name == "":
		c.add(field, "a name is required")
	case len(name) > 200:
		c.add(field, "longer than 200 bytes")
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		c.add(field, "%q contains a control character", name)
	}
}

// validateRole checks spec as role name among the roles lookup knows (spec itself replacing
// any role of that name): fields, known and same-context parents, and no inheritance cycle.
func validateRole(name string, spec api.RoleSpec, lookup func(string) (api.RoleSpec, bool)) error {
	var c causes
	checkName(&c, "metadata.name", name)
	if reservedRoleNames[name] {
		c.add("metadata.name", "%q is reserved for Flotilla's own objects", name)
	}
	switch spec.Context {
	case api.RoleContextGlobal, api.RoleContextCluster, api.RoleContextProject:
	default:
		c.add("spec.context", "%q is not global, cluster or project", spec.Context)
	}
	for i, r := range spec.Rules {
		for _, m := range validateRule(fmt.Sprintf("spec.rules[%d]", i), r) {
			c.add("", "%s", m)
		}
	}
	for i, r := range spec.KubernetesRules {
		for _, m := range validateKubeRule(fmt.Sprintf("spec.kubernetesRules[%d]", i), r, spec.Context == api.RoleContextProject) {
			c.add("", "%s", m)
		}
	}
	for i, p := range spec.InheritFrom {
		f := fmt.Sprintf("spec.inheritFrom[%d]", i)
		if p == name {
			c.add(f, "role %q cannot inherit from itself", name)
			continue
		}
		ps, ok := lookup(p)
		if !ok {
			c.add(f, "unknown role %q", p)
			continue
		}
		if ps.Context != spec.Context {
			c.add(f, "role %q has context %s, this role %s: a role inherits only roles of its own context", p, ps.Context, spec.Context)
		}
	}
	if cycle := findCycle(name, spec, lookup); cycle != nil {
		c.add("spec.inheritFrom", "inheritance cycle: %s", strings.Join(cycle, " → "))
	}
	return c.err(api.KindRole, name)
}

// findCycle returns a cycle reachable from name through inheritFrom (start repeated at the
// end), or nil.
func findCycle(name string, spec api.RoleSpec, lookup func(string) (api.RoleSpec, bool)) []string {
	parents := func(n string) []string {
		if n == name {
			return spec.InheritFrom
		}
		s, _ := lookup(n)
		return s.InheritFrom
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var path []string
	var visit func(n string) []string
	visit = func(n string) []string {
		state[n] = visiting
		path = append(path, n)
		for _, p := range parents(n) {
			if p == n {
				continue // reported as self-inheritance
			}
			switch state[p] {
			case visiting:
				i := slices.Index(path, p)
				return append(slices.Clone(path[i:]), p)
			case 0:
				if _, ok := lookup(p); !ok && p != name {
					continue
				}
				if cyc := visit(p); cyc != nil {
					return cyc
				}
			}
		}
		path = path[:len(path)-1]
		state[n] = done
		return nil
	}
	return visit(name)
}

// validateBinding checks a binding against the roles and projects it names.
func validateBinding(name string, spec api.RoleBindingSpec, lookupRole func(string) (api.RoleSpec, bool), projectExists func(string) bool) error {
	var c causes
	checkName(&c, "metadata.name", name)
	switch spec.Subject.Kind {
	case api.SubjectUser, api.SubjectGroup:
	default:
		c.add("spec.subject.kind", "%q is not User or Group", spec.Subject.Kind)
	}
	checkSubjectName(&c, "spec.subject.name", spec.Subject.Name)

	sc := spec.Scope
	var set []string
	if sc.Global {
		set = append(set, "global")
	}
	if sc.ClusterSelector != nil {
		set = append(set, "clusterSelector")
		if _, err := parseSelector(sc.ClusterSelector); err != nil {
			c.add("spec.scope.clusterSelector", "%v", err)
		}
	}
	if sc.ClusterGroup != "" {
		set = append(set, "clusterGroup")
		checkName(&c, "spec.scope.clusterGroup", sc.ClusterGroup)
	}
	if sc.Cluster != "" {
		set = append(set, "cluster")
		checkName(&c, "spec.scope.cluster", sc.Cluster)
	}
	if sc.Project != "" {
		set = append(set, "project")
		if !projectExists(sc.Project) {
			c.add("spec.scope.project", "unknown project %q", sc.Project)
		}
	}
	if sc.Workspace != "" {
		checkName(&c, "spec.scope.workspace", sc.Workspace)
	}
	kind := scopeKind(0)
	switch {
	case len(set) > 1:
		c.add("spec.scope", "set exactly one of global, workspace, clusterSelector, clusterGroup, cluster and project; got %s", strings.Join(set, ", "))
	case len(set) == 0 && sc.Workspace == "":
		c.add("spec.scope", "set one of global, workspace, clusterSelector, clusterGroup, cluster and project")
	case len(set) == 0:
		kind = scopeWorkspace
	case sc.Workspace != "" && (sc.Global || sc.Project != ""):
		c.add("spec.scope.workspace", "only narrows clusterSelector, clusterGroup or cluster; not %s", set[0])
	default:
		kind = map[string]scopeKind{"global": scopeGlobal, "clusterSelector": scopeSelector, "clusterGroup": scopeGroup, "cluster": scopeCluster, "project": scopeProject}[set[0]]
	}

	if spec.RoleRef == "" {
		c.add("spec.roleRef", "a role name is required")
	} else if rs, ok := lookupRole(spec.RoleRef); !ok {
		c.add("spec.roleRef", "unknown role %q", spec.RoleRef)
	} else if kind != 0 {
		if want := contextFor(kind); rs.Context != want {
			c.add("spec.scope", "role %q has context %s and cannot be bound at %s scope; %s", spec.RoleRef, rs.Context, kind, scopesFor(rs.Context))
		}
	}
	return c.err(api.KindRoleBinding, name)
}

// contextFor is the role context each scope takes. Global roles may be bound globally or to
// a workspace; cluster roles to clusters (clusterSelector: {} covers every cluster); project
// roles to a project. A mismatch is refused rather than reinterpreted, so that a binding
// never grants more (or other) than its reader expects.
func contextFor(s scopeKind) string {
	switch s {
	case scopeGlobal, scopeWorkspace:
		return api.RoleContextGlobal
	case scopeProject:
		return api.RoleContextProject
	}
	return api.RoleContextCluster
}

func scopesFor(ctx string) string {
	switch ctx {
	case api.RoleContextGlobal:
		return "bind it with scope global or workspace"
	case api.RoleContextCluster:
		return "bind it with scope clusterSelector, clusterGroup or cluster (clusterSelector: {} covers every cluster)"
	case api.RoleContextProject:
		return "bind it with scope project"
	}
	return "its context is invalid"
}

// protectedNamespace reports namespaces no project may claim: owning them would own the
// cluster (kube-system) or the agent.
func protectedNamespace(ns string) bool {
	return strings.HasPrefix(ns, "kube-") || ns == "default" || ns == AgentNamespace
}

// validateProject checks a project's selectors, namespaces and quantities, and that the
// per-namespace quotas of its named namespaces fit within its total.
func validateProject(name string, spec api.ProjectSpec) error {
	var c causes
	checkName(&c, "metadata.name", name)
	if _, err := parseSelector(spec.ClusterSelector); err != nil {
		c.add("spec.clusterSelector", "%v", err)
	}
	if _, err := parseSelector(spec.NamespaceSelector); err != nil {
		c.add("spec.namespaceSelector", "%v", err)
	}
	seen := map[string]bool{}
	for i, ns := range spec.Namespaces {
		f := fmt.Sprintf("spec.namespaces[%d].name", i)
		for _, m := range validation.IsDNS1123Label(ns.Name) {
			c.add(f, "%q: %s", ns.Name, m)
		}
		if protectedNamespace(ns.Name) {
			c.add(f, "%q is a system namespace and cannot belong to a project", ns.Name)
		}
		if seen[ns.Name] {
			c.add(f, "%q is listed twice", ns.Name)
		}
		seen[ns.Name] = true
		checkQuota(&c, fmt.Sprintf("spec.namespaces[%d].quota", i), ns.Quota)
	}
	checkQuota(&c, "spec.namespaceQuota", spec.NamespaceQuota)
	checkQuota(&c, "spec.quota", spec.Quota)
	if d := spec.ContainerDefaults; d != nil {
		for f, m := range map[string]map[string]string{"default": d.Default, "defaultRequest": d.DefaultRequest, "max": d.Max, "min": d.Min} {
			checkQuantities(&c, "spec.containerDefaults."+f, m)
		}
	}
	if len(c) == 0 && spec.Quota != nil {
		// The named namespaces' quotas are what Kubernetes enforces; they must add up to no
		// more than the project's total, or the total would be a promise nobody keeps.
		sum := map[string]resource.Quantity{}
		for _, ns := range spec.Namespaces {
			q := spec.NamespaceQuota
			if ns.Quota != nil {
				q = ns.Quota
			}
			if q == nil {
				continue
			}
			for k, v := range q.Hard {
				s := sum[k]
				s.Add(resource.MustParse(v))
				sum[k] = s
			}
		}
		for _, k := range slices.Sorted(maps.Keys(spec.Quota.Hard)) {
			total := resource.MustParse(spec.Quota.Hard[k])
			if s, ok := sum[k]; ok && s.Cmp(total) > 0 {
				c.add("spec.quota.hard."+k, "the namespaces' quotas add up to %s, more than the project's %s", s.String(), total.String())
			}
		}
	}
	return c.err(api.KindProject, name)
}

func checkQuota(c *causes, field string, q *api.ResourceQuotaSpec) {
	if q == nil {
		return
	}
	if len(q.Hard) == 0 {
		c.add(field+".hard", "at least one resource is required")
	}
	checkQuantities(c, field+".hard", q.Hard)
}

func checkQuantities(c *causes, field string, m map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if len(validation.IsQualifiedName(k)) > 0 {
			c.add(field, "%q is not a resource name", k)
		}
		q, err := resource.ParseQuantity(m[k])
		if err != nil {
			c.add(field+"."+k, "%q is not a quantity", m[k])
		} else if q.Sign() < 0 {
			c.add(field+"."+k, "%q is negative", m[k])
		}
	}
}
