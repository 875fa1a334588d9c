package rbac

import (
	"slices"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
)

// ClusterSet describes a set of clusters without listing them: every cluster (All), or the
// clusters of a workspace, or of that workspace (any, when empty) with a name, in a
// ClusterGroup or matching a selector. The zero ClusterSet is empty.
type ClusterSet struct {
	All          bool               `json:"all,omitempty"`
	Workspace    string             `json:"workspace,omitempty"`
	Cluster      string             `json:"cluster,omitempty"`
	ClusterGroup string             `json:"clusterGroup,omitempty"`
	Selector     *api.LabelSelector `json:"selector,omitempty"`
}

func (s ClusterSet) empty() bool { return s == ClusterSet{} }

// Matches reports whether c is in the set. It parses the selector; callers testing many
// clusters should translate the set into their own index lookups instead.
func (s ClusterSet) Matches(c Cluster) bool {
	switch {
	case s.All:
		return true
	case s.empty():
		return false
	case s.Workspace != "" && s.Workspace != c.Workspace:
		return false
	case s.Cluster != "":
		return s.Cluster == c.Name
	case s.ClusterGroup != "":
		return slices.Contains(c.Groups, s.ClusterGroup)
	case s.Selector != nil:
		sel, err := parseSelector(s.Selector)
		return err == nil && sel.Matches(labels.Set(c.Labels))
	}
	return true // a workspace alone
}

// Coverage is a union of cluster sets: the clusters whose compiled access objects a change
// touches. Its size follows the bindings changed, never the number of clusters.
type Coverage struct {
	Sets []ClusterSet
	seen map[ClusterSet]struct{}
}

// All reports whether the coverage is every cluster.
func (c Coverage) All() bool { return len(c.Sets) == 1 && c.Sets[0].All }

// Empty reports whether no cluster is touched.
func (c Coverage) Empty() bool { return len(c.Sets) == 0 }

// Matches reports whether cl is covered.
func (c Coverage) Matches(cl Cluster) bool {
	for _, s := range c.Sets {
		if s.Matches(cl) {
			return true
		}
	}
	return false
}

func (c *Coverage) add(s ClusterSet) {
	if s.empty() || c.All() {
		return
	}
	if s.All {
		c.Sets, c.seen = []ClusterSet{{All: true}}, nil
		return
	}
	if c.seen == nil {
		c.seen = map[ClusterSet]struct{}{}
	}
	if _, ok := c.seen[s]; ok {
		return
	}
	c.seen[s] = struct{}{}
	c.Sets = append(c.Sets, s)
}

// scopeSet is the clusters b's scope reaches, whatever its role grants.
func (a *Authorizer) scopeSet(b *binding) ClusterSet {
	switch b.scope {
	case scopeGlobal:
		return ClusterSet{All: true}
	case scopeWorkspace:
		return ClusterSet{Workspace: b.target}
	case scopeCluster:
		return ClusterSet{Workspace: b.workspace, Cluster: b.target}
	case scopeGroup:
		return ClusterSet{Workspace: b.workspace, ClusterGroup: b.target}
	case scopeSelector:
		return selectorSet(b.workspace, b.sel)
	case scopeProject:
		if p := a.projects[b.target]; p != nil && p.sel != nil {
			return selectorSet("", p.sel)
		}
	}
	return ClusterSet{}
}

// selectorSet describes the clusters of workspace (any when "") matching s; the empty
// selector over every workspace is All, so that callers need not recognise it.
func selectorSet(workspace string, s *selector) ClusterSet {
	switch {
	case s.key == "" && workspace == "":
		return ClusterSet{All: true}
	case s.key == "":
		return ClusterSet{Workspace: workspace}
	}
	return ClusterSet{Workspace: workspace, Selector: s.src}
}

// bindingSet is the clusters whose compiled objects b contributes to: none when its role
// pushes nothing downstream.
func (a *Authorizer) bindingSet(b *binding) ClusterSet {
	if len(b.role.kube) == 0 {
		return ClusterSet{}
	}
	return a.scopeSet(b)
}

// roleCoverage is what a change to these roles touches: every cluster their bindings reach,
// whether the roles pushed rules downstream before the change or do after it.
func (a *Authorizer) roleCoverage(roles []*role) Coverage {
	var cov Coverage
	for _, r := range roles {
		for b := range r.bindings {
			cov.add(a.scopeSet(b))
			if cov.All() {
				return cov
			}
		}
	}
	return cov
}

// BindingCoverage returns the clusters a binding's compiled objects reach, as a description
// the fleet can re-version from (one All for a binding covering every cluster).
func (a *Authorizer) BindingCoverage(name string) Coverage {
	a.mu.RLock()
	defer a.mu.RUnlock()
	var cov Coverage
	if b := a.bindings[name]; b != nil {
		cov.add(a.bindingSet(b))
	}
	return cov
}

// ClusterFilter is which clusters a subject may get, list or watch, computed once per list
// request from the subject's own bindings.
type ClusterFilter struct {
	entries []FilterEntry
	sels    []*selector // parsed Selector of each entry, or nil
}

// FilterEntry is one cluster set a subject may see; Names, when set, narrows it to clusters of
// those names (a rule with resourceNames).
type FilterEntry struct {
	Set   ClusterSet
	Names []string
}

// All reports whether the subject may see every cluster.
func (f ClusterFilter) All() bool {
	for _, e := range f.entries {
		if e.Set.All && e.Names == nil {
			return true
		}
	}
	return false
}

// Entries are the sets the subject may see, for translation into a store query.
func (f ClusterFilter) Entries() []FilterEntry { return f.entries }

// Matches reports whether the subject may see c.
func (f ClusterFilter) Matches(c Cluster) bool {
	for i, e := range f.entries {
		if e.Names != nil && !slices.Contains(e.Names, c.Name) {
			continue
		}
		s := e.Set
		if s.Selector != nil {
			if s.Workspace != "" && s.Workspace != c.Workspace {
				continue
			}
			if f.sels[i].sel.Matches(labels.Set(c.Labels)) {
				return true
			}
			continue
		}
		if s.Matches(c) {
			return true
		}
	}
	return false
}

// ClusterFilter returns which clusters s may act on with verb (get, list or watch): every
// binding of the user and their groups whose role grants verb on clusters contributes its
// scope. The cost follows the subject's bindings, not the fleet.
func (a *Authorizer) ClusterFilter(s Subject, verb string) ClusterFilter {
	var f ClusterFilter
	bit := verbBit(verb)
	if bit == 0 || bit == verbAll {
		return f
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if _, off := a.disabled[s.User]; off {
		return f
	}
	seen := map[*binding]bool{}
	visit := func(b *binding) {
		if seen[b] {
			return
		}
		seen[b] = true
		rs := &b.role.rules
		var names []string
		if rs.star&bit == 0 && rs.byKind[api.KindCluster]&bit == 0 {
			for _, n := range rs.named {
				if n.verbs&bit != 0 && (n.kind == "" || n.kind == api.KindCluster) {
					names = append(names, n.names...)
				}
			}
			if names == nil {
				return
			}
		}
		set := a.scopeSet(b)
		if set.empty() {
			return
		}
		var sel *selector
		if set.Selector != nil {
			sel = b.sel
			if b.scope == scopeProject {
				sel = a.projects[b.target].sel
			}
		}
		f.entries = append(f.entries, FilterEntry{Set: set, Names: names})
		f.sels = append(f.sels, sel)
	}
	keys := make([]subjectKey, 0, 1+len(s.Groups))
	keys = append(keys, subjectKey{name: s.User})
	for _, g := range s.Groups {
		keys = append(keys, subjectKey{group: true, name: g})
	}
	for _, k := range keys {
		e := a.subjects[k]
		if e == nil {
			continue
		}
		for _, b := range e.global {
			visit(b)
		}
		for _, b := range e.selectors {
			visit(b)
		}
		for _, b := range e.projects {
			visit(b)
		}
		for _, b := range e.keyed {
			visit(b)
		}
	}
	return f
}
