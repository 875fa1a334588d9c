package rbac

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"flotilla.dev/api"
)

// lookupRole reads a role's spec; callers hold a.mu.
func (a *Authorizer) lookupRole(name string) (api.RoleSpec, bool) {
	r, ok := a.roles[name]
	if !ok {
		return api.RoleSpec{}, false
	}
	return r.spec, true
}

func (a *Authorizer) projectExists(name string) bool { _, ok := a.projects[name]; return ok }

// ValidateRole checks a Role as PutRole would, changing nothing.
func (a *Authorizer) ValidateRole(name string, spec api.RoleSpec) error {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.checkRole(name, spec)
}

func (a *Authorizer) checkRole(name string, spec api.RoleSpec) error {
	if r, ok := a.roles[name]; ok && r.builtin {
		return &InvalidError{Kind: api.KindRole, Name: name, Causes: []api.StatusCause{{Field: "metadata.name", Message: fmt.Sprintf("role %q is built in and cannot be changed", name)}}}
	}
	if err := validateRole(name, spec, a.lookupRole); err != nil {
		return err
	}
	if r, ok := a.roles[name]; ok && r.spec.Context != spec.Context {
		if refs := a.roleReferrers(r); refs != "" {
			return &InvalidError{Kind: api.KindRole, Name: name, Causes: []api.StatusCause{{Field: "spec.context", Message: fmt.Sprintf("the context cannot change while the role is used by %s", refs)}}}
		}
	}
	return nil
}

// PutRole adds or replaces a role and returns the clusters whose compiled objects change.
func (a *Authorizer) PutRole(name string, spec api.RoleSpec) (Coverage, error) {
	a.lock()
	defer a.mu.Unlock()
	if err := a.checkRole(name, spec); err != nil {
		return Coverage{}, err
	}
	r, ok := a.roles[name]
	if !ok {
		r = &role{name: name, bindings: map[*binding]struct{}{}}
		a.roles[name] = r
	}
	r.spec = cloneRole(spec)
	affected := a.dependents(name)
	for _, d := range affected {
		a.flatten(d)
	}
	a.invalidate()
	return a.roleCoverage(affected), nil
}

// DeleteRole removes a role no binding or role refers to.
func (a *Authorizer) DeleteRole(name string) error {
	a.lock()
	defer a.mu.Unlock()
	r, ok := a.roles[name]
	switch {
	case !ok:
		return fmt.Errorf("role %q not found", name)
	case r.builtin:
		return fmt.Errorf("role %q is built in and cannot be deleted", name)
	}
	if refs := a.roleReferrers(r); refs != "" {
		return fmt.Errorf("role %q is still used by %s; delete or change those first", name, refs)
	}
	delete(a.roles, name)
	return nil
}

// roleReferrers describes (a few of) the bindings and roles that
// refer to r; "" when none do.
func (a *Authorizer) roleReferrers(r *role) string {
	var names []string
	for b := range r.bindings {
		names = append(names, "role binding "+b.name)
	}
	for _, o := range a.roles {
		if slices.Contains(o.spec.InheritFrom, r.name) {
			names = append(names, "role "+o.name)
		}
	}
	return fewNames(names)
}

// fewNames lists a few of names, sorted, for an error message; "" when there are none.
func fewNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	if len(names) > 5 {
		return fmt.Sprintf("%s and %d more", strings.Join(names[:5], ", "), len(names)-5)
	}
	return strings.Join(names, ", ")
}

// dependents returns the role name and every role inheriting it, directly or not.
func (a *Authorizer) dependents(name string) []*role {
	out := []*role{a.roles[name]}
	seen := map[string]bool{name: true}
	for i := 0; i < len(out); i++ {
		for _, o := range a.roles {
			if !seen[o.name] && slices.Contains(o.spec.InheritFrom, out[i].name) {
				seen[o.name] = true
				out = append(out, o)
			}
		}
	}
	return out
}

// flatten recomputes r's rules from its own and its ancestors'.
func (a *Authorizer) flatten(r *role) {
	r.rules = ruleSet{}
	r.kube = nil
	seenKube := map[string]bool{}
	seen := map[string]bool{}
	var walk func(x *role)
	walk = func(x *role) {
		if x == nil || seen[x.name] {
			return
		}
		seen[x.name] = true
		for _, rule := range x.spec.Rules {
			r.rules.add(rule)
		}
		for _, k := range x.spec.KubernetesRules {
			key := fmt.Sprint(k)
			if !seenKube[key] {
				seenKube[key] = true
				r.kube = append(r.kube, k)
			}
		}
		for _, p := range x.spec.InheritFrom {
			walk(a.roles[p])
		}
	}
	walk(r)
}

// ValidateBinding checks a RoleBinding as PutBinding would, changing nothing.
func (a *Authorizer) ValidateBinding(name string, spec api.RoleBindingSpec) error {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return validateBinding(name, spec, a.lookupRole, a.projectExists)
}

// PutBinding adds or replaces a role binding and returns the clusters whose compiled objects
// change (those the old and the new binding cover).
func (a *Authorizer) PutBinding(name string, spec api.RoleBindingSpec) (Coverage, error) {
	a.lock()
	defer a.mu.Unlock()
	if err := validateBinding(name, spec, a.lookupRole, a.projectExists); err != nil {
		return Coverage{}, err
	}
	var cov Coverage
	if old := a.bindings[name]; old != nil {
		cov.add(a.bindingSet(old))
		a.unindex(old)
	}
	b, err := a.newBinding(name, spec)
	if err != nil {
		return Coverage{}, err // validated above; only a selector that parsed once and not twice
	}
	a.index(b)
	cov.add(a.bindingSet(b))
	return cov, nil
}

// DeleteBinding removes a role binding and returns the clusters whose compiled objects change.
func (a *Authorizer) DeleteBinding(name string) (Coverage, error) {
	a.lock()
	defer a.mu.Unlock()
	b := a.bindings[name]
	if b == nil {
		return Coverage{}, fmt.Errorf("role binding %q not found", name)
	}
	var cov Coverage
	cov.add(a.bindingSet(b))
	a.unindex(b)
	return cov, nil
}

// BindingsOf returns the names of the bindings naming a user or group, sorted: what to
// delete with a deleted user. It reads only that subject's bindings.
func (a *Authorizer) BindingsOf(kind, name string) []string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	e := a.subjects[subjectKey{group: kind == api.SubjectGroup, name: name}]
	if e == nil || kind != api.SubjectUser && kind != api.SubjectGroup {
		return nil
	}
	var out []string
	for _, l := range [][]*binding{e.global, e.selectors, e.projects, e.keyed} {
		for _, b := range l {
			out = append(out, b.name)
		}
	}
	slices.Sort(out)
	return out
}

func (a *Authorizer) newBinding(name string, spec api.RoleBindingSpec) (*binding, error) {
	sc := spec.Scope
	b := &binding{name: name, subj: subjectKey{group: spec.Subject.Kind == api.SubjectGroup, name: spec.Subject.Name}, role: a.roles[spec.RoleRef], workspace: sc.Workspace}
	switch {
	case sc.Global:
		b.scope = scopeGlobal
	case sc.ClusterSelector != nil:
		b.scope = scopeSelector
		s, err := a.sels.get(sc.ClusterSelector)
		if err != nil {
			return nil, err
		}
		b.sel = s
	case sc.ClusterGroup != "":
		b.scope, b.target = scopeGroup, sc.ClusterGroup
		b.workspace = cmp.Or(b.workspace, api.DefaultNamespace)
	case sc.Cluster != "":
		b.scope, b.target = scopeCluster, sc.Cluster
		b.workspace = cmp.Or(b.workspace, api.DefaultNamespace)
	case sc.Project != "":
		b.scope, b.target = scopeProject, sc.Project
	default:
		b.scope, b.target, b.workspace = scopeWorkspace, sc.Workspace, ""
	}
	return b, nil
}

func (a *Authorizer) index(b *binding) {
	if b.everywhere() {
		a.invalidate()
	}
	a.bindings[b.name] = b
	b.role.bindings[b] = struct{}{}
	e := a.subjects[b.subj]
	if e == nil {
		e = &subjectEntry{}
		a.subjects[b.subj] = e
	}
	e.n++
	switch b.scope {
	case scopeGlobal:
		e.global = append(e.global, b)
		a.global = append(a.global, b)
	case scopeSelector:
		e.selectors = append(e.selectors, b)
		a.selBindings.add(b.sel, b)
	case scopeProject:
		e.projects = append(e.projects, b)
		p := a.projects[b.target]
		p.bindings = append(p.bindings, b)
	}
	if b.scope != scopeGlobal && b.scope != scopeSelector {
		k := targetKey{b.subj, b.scope, b.target}
		a.byTarget[k] = append(a.byTarget[k], b)
	}
	if b.scope == scopeWorkspace || b.scope == scopeCluster || b.scope == scopeGroup {
		k := scopeTarget{b.scope, b.target}
		a.byScope[k] = append(a.byScope[k], b)
		e.keyed = append(e.keyed, b)
	}
}

func (a *Authorizer) unindex(b *binding) {
	if b.everywhere() {
		a.invalidate()
	}
	delete(a.bindings, b.name)
	delete(b.role.bindings, b)
	e := a.subjects[b.subj]
	e.n--
	switch b.scope {
	case scopeGlobal:
		e.global = deleteItem(e.global, b)
		a.global = deleteItem(a.global, b)
	case scopeSelector:
		e.selectors = deleteItem(e.selectors, b)
		a.selBindings.remove(b.sel, b)
		a.sels.release(b.sel)
	case scopeProject:
		e.projects = deleteItem(e.projects, b)
		p := a.projects[b.target]
		p.bindings = deleteItem(p.bindings, b)
	}
	if e.n == 0 {
		delete(a.subjects, b.subj)
	}
	if b.scope != scopeGlobal && b.scope != scopeSelector {
		k := targetKey{b.subj, b.scope, b.target}
		if l := deleteItem(a.byTarget[k], b); l == nil {
			delete(a.byTarget, k)
		} else {
			a.byTarget[k] = l
		}
	}
	if b.scope == scopeWorkspace || b.scope == scopeCluster || b.scope == scopeGroup {
		e.keyed = deleteItem(e.keyed, b)
		k := scopeTarget{b.scope, b.target}
		if l := deleteItem(a.byScope[k], b); l == nil {
			delete(a.byScope, k)
		} else {
			a.byScope[k] = l
		}
	}
}

// ValidateProject checks a Project as PutProject would, changing nothing.
func (a *Authorizer) ValidateProject(name string, spec api.ProjectSpec) error {
	return validateProject(name, spec)
}

// PutProject adds or replaces a project and returns the clusters whose compiled objects
// change (those the old and the new selector pick).
func (a *Authorizer) PutProject(name string, spec api.ProjectSpec) (Coverage, error) {
	if err := validateProject(name, spec); err != nil {
		return Coverage{}, err
	}
	nsSel, _ := parseSelector(spec.NamespaceSelector)
	a.lock()
	defer a.mu.Unlock()
	var cov Coverage
	p := a.projects[name]
	if p == nil {
		p = &project{name: name}
		a.projects[name] = p
	} else if p.sel != nil {
		cov.add(selectorSet("", p.sel))
		a.selProjects.remove(p.sel, p)
		a.sels.release(p.sel)
		p.sel = nil
	}
	p.spec, p.nsSel = spec, nsSel
	if spec.ClusterSelector != nil {
		s, err := a.sels.get(spec.ClusterSelector)
		if err != nil {
			return Coverage{}, err
		}
		p.sel = s
		a.selProjects.add(s, p)
		cov.add(selectorSet("", s))
	}
	return cov, nil
}

// DeleteProject removes a project no binding is scoped to.
func (a *Authorizer) DeleteProject(name string) (Coverage, error) {
	a.lock()
	defer a.mu.Unlock()
	p := a.projects[name]
	if p == nil {
		return Coverage{}, fmt.Errorf("project %q not found", name)
	}
	if len(p.bindings) > 0 {
		names := make([]string, len(p.bindings))
		for i, b := range p.bindings {
			names[i] = b.name
		}
		slices.Sort(names)
		return Coverage{}, fmt.Errorf("project %q still has role bindings (%s); delete them first", name, strings.Join(names, ", "))
	}
	var cov Coverage
	if p.sel != nil {
		cov.add(selectorSet("", p.sel))
		a.selProjects.remove(p.sel, p)
		a.sels.release(p.sel)
	}
	delete(a.projects, name)
	return cov, nil
}

// Load fills the index from stored objects in any order: roles first (as a set, so that
// a role may inherit one loaded after it), then projects, then bindings. Objects that do not
// validate are skipped and reported together; the rest are loaded.
func (a *Authorizer) Load(roles map[string]api.RoleSpec, projects map[string]api.ProjectSpec, bindings map[string]api.RoleBindingSpec) error {
	var errs []error
	a.lock()
	pending := map[string]api.RoleSpec{}
	for n, s := range roles {
		pending[n] = s
	}
	lookup := func(n string) (api.RoleSpec, bool) {
		if s, ok := pending[n]; ok {
			return s, true
		}
		return a.lookupRole(n)
	}
	// Drop invalid roles until the rest is consistent (a role inheriting a dropped one is
	// dropped in a later pass).
	for changed := true; changed; {
		changed = false
		for _, n := range sortedKeys(pending) {
			err := validateRole(n, pending[n], lookup)
			if r, ok := a.roles[n]; ok && r.builtin {
				err = fmt.Errorf("role %q is built in and cannot be changed", n)
			}
			if err != nil {
				errs = append(errs, err)
				delete(pending, n)
				changed = true
			}
		}
	}
	for n, s := range pending {
		r := a.roles[n]
		if r == nil {
			r = &role{name: n, bindings: map[*binding]struct{}{}}
			a.roles[n] = r
		}
		r.spec = cloneRole(s)
	}
	for _, r := range a.roles {
		a.flatten(r)
	}
	a.invalidate()
	a.mu.Unlock()
	for _, n := range sortedKeys(projects) {
		if _, err := a.PutProject(n, projects[n]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range sortedKeys(bindings) {
		if _, err := a.PutBinding(n, bindings[n]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func cloneRole(s api.RoleSpec) api.RoleSpec {
	s.Rules = slices.Clone(s.Rules)
	s.KubernetesRules = slices.Clone(s.KubernetesRules)
	s.InheritFrom = slices.Clone(s.InheritFrom)
	return s
}
