package rbac

import (
	"cmp"

	"flotilla.dev/api"
)

// MayGrant reports whether s may hand out role at scope without gaining anything by it: s
// holds a binding of that role, or of a role inheriting it, at the same scope or at one that
// contains it (global contains every scope; a workspace contains the cluster, ClusterGroup
// and selector scopes narrowed to it). It keeps a cluster owner from binding themselves, or
// a friend, to admin. Admin identities are decided before this is asked; a subject bound
// globally to a role granting everything may grant anything.
func (a *Authorizer) MayGrant(s Subject, roleName string, scope api.BindingScope) bool {
	want, ok := scopeOf(scope)
	if !ok {
		return false
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if _, off := a.disabled[s.User]; off {
		return false
	}
	if a.roles[roleName] == nil {
		return false
	}
	check := func(b *binding) bool {
		// A global binding granting every verb on every kind is an administrator's, who
		// may hand out anything.
		if b.scope == scopeGlobal && b.role.rules.star&verbAll == verbAll {
			return true
		}
		return a.grantsRole(b.role, roleName, 0) && covers(b, want)
	}
	for _, k := range append([]subjectKey{{name: s.User}}, groupKeys(s.Groups)...) {
		e := a.subjects[k]
		if e == nil {
			continue
		}
		for _, list := range [][]*binding{e.global, e.selectors, e.projects, e.keyed} {
			for _, b := range list {
				if check(b) {
					return true
				}
			}
		}
	}
	return false
}

// MayAny reports whether some binding of s grants verb on kind somewhere: a list the
// subject may not make at the scope asked is then answered by filtering, not refused.
func (a *Authorizer) MayAny(s Subject, verb, kind string) bool {
	bit := verbBit(verb)
	if bit == 0 || bit == verbAll {
		return false
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if _, off := a.disabled[s.User]; off {
		return false
	}
	for _, k := range append([]subjectKey{{name: s.User}}, groupKeys(s.Groups)...) {
		e := a.subjects[k]
		if e == nil {
			continue
		}
		for _, list := range [][]*binding{e.global, e.selectors, e.projects, e.keyed} {
			for _, b := range list {
				if b.role.rules.star&bit != 0 || b.role.rules.byKind[kind]&bit != 0 {
					return true
				}
				for _, n := range b.role.rules.named {
					if n.verbs&bit != 0 && (n.kind == "" || n.kind == kind) {
						return true
					}
				}
			}
		}
	}
	return false
}

func groupKeys(groups []string) []subjectKey {
	out := make([]subjectKey, len(groups))
	for i, g := range groups {
		out[i] = subjectKey{group: true, name: g}
	}
	return out
}

// grantsRole reports whether r is the role named want or inherits it. Inheritance has no
// cycles (refused when roles are written); depth bounds a corrupt index all the same.
func (a *Authorizer) grantsRole(r *role, want string, depth int) bool {
	if r == nil || depth > 64 {
		return false
	}
	if r.name == want {
		return true
	}
	for _, p := range r.spec.InheritFrom {
		if a.grantsRole(a.roles[p], want, depth+1) {
			return true
		}
	}
	return false
}

// wantScope is a binding scope in the index's terms, without interning anything.
type wantScope struct {
	scope     scopeKind
	workspace string
	target    string
	selKey    string
}

func scopeOf(sc api.BindingScope) (wantScope, bool) {
	switch {
	case sc.Global:
		return wantScope{scope: scopeGlobal}, true
	case sc.ClusterSelector != nil:
		sel, err := parseSelector(sc.ClusterSelector)
		if err != nil {
			return wantScope{}, false
		}
		return wantScope{scope: scopeSelector, workspace: sc.Workspace, selKey: sel.String()}, true
	case sc.ClusterGroup != "":
		return wantScope{scope: scopeGroup, workspace: cmp.Or(sc.Workspace, api.DefaultNamespace), target: sc.ClusterGroup}, true
	case sc.Cluster != "":
		return wantScope{scope: scopeCluster, workspace: cmp.Or(sc.Workspace, api.DefaultNamespace), target: sc.Cluster}, true
	case sc.Project != "":
		return wantScope{scope: scopeProject, target: sc.Project}, true
	case sc.Workspace != "":
		return wantScope{scope: scopeWorkspace, target: sc.Workspace}, true
	}
	return wantScope{}, false
}

// covers reports whether binding b's scope contains w.
func covers(b *binding, w wantScope) bool {
	switch b.scope {
	case scopeGlobal:
		return true
	case scopeWorkspace:
		if w.scope == scopeWorkspace {
			return w.target == b.target
		}
		return (w.scope == scopeCluster || w.scope == scopeGroup || w.scope == scopeSelector) && w.workspace == b.target
	case scopeSelector:
		return w.scope == scopeSelector && w.workspace == b.workspace && b.sel != nil && w.selKey == b.sel.key
	case scopeGroup, scopeCluster:
		return w.scope == b.scope && w.workspace == b.workspace && w.target == b.target
	case scopeProject:
		return w.scope == scopeProject && w.target == b.target
	}
	return false
}

// RoleInUse names (a few of) the bindings and roles referring to role name, "" when none
// do: such a role may not be deleted.
func (a *Authorizer) RoleInUse(name string) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	r, ok := a.roles[name]
	if !ok {
		return ""
	}
	return a.roleReferrers(r)
}

// ProjectInUse names (a few of) the bindings scoped to project name, "" when none are.
func (a *Authorizer) ProjectInUse(name string) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	p, ok := a.projects[name]
	if !ok || len(p.bindings) == 0 {
		return ""
	}
	names := make([]string, 0, len(p.bindings))
	for _, b := range p.bindings {
		names = append(names, "role binding "+b.name)
	}
	return fewNames(names)
}

// IsAdmin reports whether s is bound globally to a role granting every verb on every kind:
// such a subject may also use what only administrators may (metrics, profiles, the audit
// log, key rotation).
func (a *Authorizer) IsAdmin(s Subject) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if _, off := a.disabled[s.User]; off {
		return false
	}
	for _, k := range append([]subjectKey{{name: s.User}}, groupKeys(s.Groups)...) {
		if e := a.subjects[k]; e != nil {
			for _, b := range e.global {
				if b.role.rules.star&verbAll == verbAll {
					return true
				}
			}
		}
	}
	return false
}

// ClusterGroupInUse names (a few of) the bindings scoped to ClusterGroup name of workspace
// ws, "" when none are: changing such a group's selector changes what they grant.
func (a *Authorizer) ClusterGroupInUse(ws, name string) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	var names []string
	for _, b := range a.byScope[scopeTarget{scopeGroup, name}] {
		if b.workspace == ws {
			names = append(names, "role binding "+b.name)
		}
	}
	return fewNames(names)
}
