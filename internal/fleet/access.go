package fleet

import (
	"encoding/json"
	"maps"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// Access is the access model whose compiled objects join every cluster's desired state:
// *rbac.Authorizer.
type Access interface {
	Compile(c rbac.Cluster, opts rbac.CompileOptions) rbac.Compiled
}

var _ Access = (*rbac.Authorizer)(nil)

// accessReport is what a cluster's agent last said about its access objects; nil until it
// says something.
type accessReport struct {
	digest, err string
}

// SetAccess makes a's compiled objects part of every cluster's desired state, each cluster
// compiled at its agent's next poll. Changes are announced with AccessChanged. Until ready
// reports true (nil: at once) desired states are not served: an agent given an empty set of
// access objects would prune what its cluster holds.
func (f *Fleet) SetAccess(a Access, opts rbac.CompileOptions, ready func() bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.access, f.accessOpts, f.accessReady = a, opts, ready
	f.allAccessChanged()
}

// AccessChanged re-versions the desired state of the clusters cov covers; it is an
// access.Index subscriber. Nothing is compiled here: a cluster's objects are compiled when
// its agent next polls, and one covering every cluster costs one counter (and waking the
// waiting agents), whatever the fleet's size.
func (f *Fleet) AccessChanged(cov rbac.Coverage) {
	if cov.Empty() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if cov.All() {
		f.allAccessChanged()
		return
	}
	for _, s := range cov.Sets {
		f.bumpSet(s)
	}
}

// allAccessChanged makes every cluster's version stale at once; the caller holds f.mu.
func (f *Fleet) allAccessChanged() {
	f.accessGen.Add(1)
	for c, ch := range f.waiters {
		close(ch)
		delete(f.waiters, c)
	}
	if f.cfg.AllChanged != nil {
		f.cfg.AllChanged()
	}
}

// bumpSet re-versions the clusters of one set, looking them up by workspace and name where
// the set names them; the caller holds f.mu.
func (f *Fleet) bumpSet(s rbac.ClusterSet) {
	var sel labels.Selector
	if s.Selector != nil {
		var err error
		if sel, err = resource.Selector(s.Selector); err != nil {
			return // rbac parsed it before; a set that does not parse covers nothing
		}
	}
	visit := func(w *workspace) {
		if s.Cluster != "" {
			if c := w.clusters[s.Cluster]; c != nil {
				f.bump(c)
			}
			return
		}
		var g *group
		if s.ClusterGroup != "" {
			if g = w.groups[s.ClusterGroup]; g == nil {
				return
			}
		}
		for _, c := range w.clusters {
			switch {
			case g != nil && !g.selector.Matches(labels.Set(c.Labels)):
			case sel != nil && !sel.Matches(labels.Set(c.Labels)):
			default:
				f.bump(c)
			}
		}
	}
	if s.Workspace != "" {
		if w := f.workspaces[s.Workspace]; w != nil {
			visit(w)
		}
		return
	}
	for _, w := range f.workspaces {
		visit(w)
	}
}

// currentRev is c's version, or 0 when a change may have made it stale; the caller holds
// f.mu (for reading at least).
func (f *Fleet) currentRev(c *Cluster) int64 {
	if f.access != nil && c.accessGen.Load() != f.accessGen.Load() {
		return 0
	}
	return c.desiredRev.Load()
}

// rbacCluster is how the access model sees c: its ClusterGroups are those of its workspace
// whose selector matches it.
func (f *Fleet) rbacCluster(w *workspace, c *Cluster) rbac.Cluster {
	rc := rbac.Cluster{Name: c.Name, Workspace: c.Namespace, Labels: c.Labels}
	for _, g := range w.groups {
		if g.selector.Matches(labels.Set(c.Labels)) {
			rc.Groups = append(rc.Groups, g.name)
		}
	}
	slices.Sort(rc.Groups)
	return rc
}

// accessState compiles c's access objects; the caller holds f.mu (for reading at least).
func (f *Fleet) accessState(w *workspace, c *Cluster) *api.AccessState {
	comp := f.access.Compile(f.rbacCluster(w, c), f.accessOpts)
	st := &api.AccessState{Digest: comp.Digest, Conflicts: comp.Conflicts, Objects: make([]json.RawMessage, len(comp.Objects))}
	for i, m := range comp.Objects {
		st.Objects[i] = m.Object
	}
	for _, t := range comp.Templates {
		at := api.AccessTemplate{Project: t.Project, Selector: t.Selector, Objects: make([]json.RawMessage, len(t.Objects))}
		for i, m := range t.Objects {
			at.Objects[i] = m.Object
		}
		st.Templates = append(st.Templates, at)
	}
	return st
}

// projectsOf names the projects whose objects c holds: the only ones whose usage c may
// report.
func projectsOf(st *api.AccessState) map[string]bool {
	out := map[string]bool{}
	for _, t := range st.Templates {
		out[t.Project] = true
	}
	for _, raw := range st.Objects {
		var o struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		if json.Unmarshal(raw, &o) == nil {
			if p := o.Metadata.Labels[rbac.ProjectLabel]; p != "" {
				out[p] = true
			}
		}
	}
	return out
}

// takeAccess records an agent's access report; the caller holds f.mu. Usage of a project
// the cluster does not hold is dropped, so that a cluster cannot make up projects' usage.
func (f *Fleet) takeAccess(c *Cluster, rep *api.AccessReport) {
	if rep == nil {
		return
	}
	if a := c.accessReport(); a == nil || a.digest != rep.Digest || a.err != rep.Error {
		c.ext().access = &accessReport{digest: rep.Digest, err: rep.Error}
		f.dirtyClusters.add(c)
	}
	if f.access == nil {
		return
	}
	// Heartbeats repeat the last usage: the cluster's objects are compiled (to check which
	// projects it holds) only when something in it is new.
	allowed := map[string]bool{}
	fresh := false
	for p, nss := range rep.Usage {
		if old, ok := f.usage[p][c.UID]; ok && equalUsage(old, nss) {
			allowed[p] = true
		} else {
			fresh = true
		}
	}
	if fresh {
		if w := f.workspaces[c.Namespace]; w != nil && w.clusters[c.Name] == c {
			allowed = projectsOf(f.accessState(w, c))
		} else {
			allowed = nil
		}
	}
	// Projects this cluster reported before and no longer does lose its usage.
	for p := range c.projectSet() {
		if _, ok := rep.Usage[p]; !ok || !allowed[p] {
			delete(f.usage[p], c.UID)
			delete(c.more.projects, p)
			f.dirtyProjects[p] = struct{}{}
		}
	}
	for p, nss := range rep.Usage {
		if !allowed[p] {
			continue
		}
		if f.usage[p] == nil {
			f.usage[p] = map[string]map[string]map[string]string{}
		}
		if old, ok := f.usage[p][c.UID]; ok && equalUsage(old, nss) {
			continue
		}
		f.usage[p][c.UID] = nss
		m := c.ext()
		if m.projects == nil {
			m.projects = map[string]struct{}{}
		}
		m.projects[p] = struct{}{}
		f.dirtyProjects[p] = struct{}{}
	}
}

func equalUsage(a, b map[string]map[string]string) bool {
	return maps.EqualFunc(a, b, func(x, y map[string]string) bool { return maps.Equal(x, y) })
}

// forgetUsage drops a deleted cluster's usage; the caller holds f.mu.
func (f *Fleet) forgetUsage(c *Cluster) {
	for p := range c.projectSet() {
		delete(f.usage[p], c.UID)
		f.dirtyProjects[p] = struct{}{}
	}
	if c.more != nil {
		c.more.projects = nil
	}
}

// projectWrites are the Project status writes due: each project's usage rolled up with
// rbac.ProjectStatus, once per project. The caller holds f.mu.
func (f *Fleet) projectWrites(now time.Time) []pendingWrite {
	var out []pendingWrite
	for p := range f.dirtyProjects {
		usage := rbac.ProjectUsage{}
		for uid, nss := range f.usage[p] {
			usage[uid] = nss
		}
		if len(f.usage[p]) == 0 {
			delete(f.usage, p)
		}
		out = append(out, pendingWrite{key: store.Key{Kind: api.KindProject, Name: p}, statusOf: func(obj *api.Object) (any, error) {
			var spec api.ProjectSpec
			if err := json.Unmarshal(obj.Spec, &spec); err != nil {
				return nil, err
			}
			st := rbac.ProjectStatus(spec, usage, now.UTC().Truncate(time.Second))
			// A condition keeps its transition time while its status does not change.
			var old api.ProjectStatus
			json.Unmarshal(obj.Status, &old)
			for i, c := range st.Conditions {
				for _, o := range old.Conditions {
					if o.Type == c.Type && o.Status == c.Status && o.Reason == c.Reason {
						st.Conditions[i].LastTransitionTime = o.LastTransitionTime
					}
				}
			}
			return st, nil
		}})
	}
	clear(f.dirtyProjects)
	return out
}

// accessCondition is the AccessApplied condition of a cluster's status, or nil before its
// agent reported on access.
func accessCondition(c *Cluster) *api.Condition {
	a := c.accessReport()
	if a == nil {
		return nil
	}
	if a.err != "" {
		return &api.Condition{Type: ConditionAccessApplied, Status: "False", Reason: "ApplyFailed", Message: a.err}
	}
	return &api.Condition{Type: ConditionAccessApplied, Status: "True", Reason: "Applied", Message: "access objects " + a.digest}
}

// ConditionAccessApplied is the Cluster condition saying whether the agent applied the
// cluster's access objects.
const ConditionAccessApplied = "AccessApplied"

// UsageOf returns what a project's clusters reported, by cluster UID: for tests and
// diagnostics.
func (f *Fleet) UsageOf(project string) rbac.ProjectUsage {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := rbac.ProjectUsage{}
	maps.Copy(out, f.usage[project])
	return out
}

// ClusterGroupsOf names the ClusterGroups of workspace ns whose selector picks a cluster with
// these labels: what an API decision needs for bindings scoped to a ClusterGroup.
func (f *Fleet) ClusterGroupsOf(ns string, lbls map[string]string) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w := f.workspaces[ns]
	if w == nil {
		return nil
	}
	var out []string
	for _, g := range w.groups {
		if g.selector.Matches(labels.Set(lbls)) {
			out = append(out, g.name)
		}
	}
	slices.Sort(out)
	return out
}
