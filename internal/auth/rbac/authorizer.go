package rbac

import (
	"fmt"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
)

// Subject is who asks: a user and the groups the request's identity carries.
type Subject struct {
	User   string
	Groups []string
}

// Cluster is what a decision or a compilation needs to know about a cluster.
type Cluster struct {
	Name string
	// Workspace is the cluster's namespace of Flotilla objects.
	Workspace string
	Labels    map[string]string
	// Groups are the names of the ClusterGroups (in the cluster's workspace) holding it.
	Groups []string
}

// Request is one thing a subject wants to do.
type Request struct {
	Verb      string // get, list, watch, create, update, delete
	Kind      string // a Flotilla kind: Cluster, GitRepo, …
	Namespace string // the object's workspace; "" for global kinds
	Name      string // "" for list, watch and create without a name
	// Cluster is the cluster the request is about: set for Cluster objects and for the
	// Kubernetes proxy, so that cluster- and project-scoped bindings can apply.
	Cluster *Cluster
	// Project is the project the request is about; for Project objects it defaults to Name.
	Project string
}

// Decision is the answer to one request. Reason explains it in words fit for an audit
// record or a 403 message; it is built only when asked for.
type Decision struct {
	Allowed bool
	// Binding and Role name what allowed the request.
	Binding, Role string

	user, verb, kind, name string
	disabled               bool
}

// Reason says why the request was allowed or denied.
func (d Decision) Reason() string {
	switch {
	case d.Allowed:
		return fmt.Sprintf("allowed by role binding %q (role %q)", d.Binding, d.Role)
	case d.disabled:
		return fmt.Sprintf("user %q is disabled", d.user)
	}
	obj := d.kind
	if d.name != "" {
		obj += " " + d.name
	}
	return fmt.Sprintf("user %q may not %s %s: no role binding of the user or their groups grants it", d.user, d.verb, obj)
}

type scopeKind uint8

const (
	scopeGlobal scopeKind = iota + 1
	scopeWorkspace
	scopeSelector
	scopeGroup
	scopeCluster
	scopeProject
)

func (s scopeKind) String() string {
	return [...]string{"", "global", "workspace", "clusterSelector", "clusterGroup", "cluster", "project"}[s]
}

type subjectKey struct {
	group bool
	name  string
}

func (k subjectKey) kind() string {
	if k.group {
		return api.SubjectGroup
	}
	return api.SubjectUser
}

// binding is a RoleBinding as the index keeps it: a few words, whatever it covers.
type binding struct {
	name      string
	subj      subjectKey
	role      *role
	scope     scopeKind
	workspace string // the workspace of a workspace scope, or the one narrowing a cluster scope
	target    string // the cluster, ClusterGroup or project named by the scope
	sel       *selector
}

// matchesCluster reports whether a cluster scope covers c.
func (b *binding) matchesCluster(c *Cluster) bool {
	if b.workspace != "" && b.workspace != c.Workspace {
		return false
	}
	switch b.scope {
	case scopeCluster:
		return b.target == c.Name
	case scopeGroup:
		return slices.Contains(c.Groups, b.target)
	case scopeSelector:
		return b.sel.sel.Matches(labels.Set(c.Labels))
	}
	return false
}

type role struct {
	name    string
	spec    api.RoleSpec
	builtin bool
	rules   ruleSet
	kube    []api.KubernetesPolicyRule // own and inherited, duplicates removed
	// bindings are the bindings naming this role (not those of roles inheriting it).
	bindings map[*binding]struct{}
}

type project struct {
	name  string
	spec  api.ProjectSpec
	sel   *selector // nil: no clusters
	nsSel labels.Selector
	// bindings are the bindings scoped to this project.
	bindings []*binding
}

func (p *project) matches(c *Cluster) bool {
	return p.sel != nil && p.sel.sel.Matches(labels.Set(c.Labels))
}

// subjectEntry holds the bindings of one user or group that are not found by a key.
type subjectEntry struct {
	global    []*binding
	selectors []*binding
	projects  []*binding
	keyed     []*binding // workspace, cluster and ClusterGroup scopes (also in byTarget)
	n         int
}

// targetKey finds a subject's workspace, cluster, ClusterGroup and project bindings by name.
type targetKey struct {
	subj   subjectKey
	scope  scopeKind
	target string
}

type scopeTarget struct {
	scope  scopeKind
	target string
}

// Authorizer is the index every authorisation decision and every cluster's compiled access
// objects come from. Its methods are safe for concurrent use; changes are incremental.
type Authorizer struct {
	// mu is taken for writing only through lock, which also drops the cached own layers.
	mu sync.RWMutex

	roles    map[string]*role
	projects map[string]*project
	bindings map[string]*binding
	disabled map[string]struct{}
	sels     selectors

	// By subject, for decisions.
	subjects map[subjectKey]*subjectEntry
	byTarget map[targetKey][]*binding

	// By scope, for compiling a cluster's objects.
	global      []*binding
	byScope     map[scopeTarget][]*binding // workspace, cluster and ClusterGroup scopes
	selBindings selIndex[*binding]
	selProjects selIndex[*project]

	// The shared layer of every cluster's compiled objects, computed once after a change.
	sharedMu   sync.Mutex
	shared     *layer
	sharedOpts CompileOptions

	// own caches clusters' own layers by what makes them (see ownLayer).
	own ownCache
}

// lock takes a.mu for writing, to change the index. The cached own layers are dropped: any
// change may change what their roles or projects compile to. (The shared layer is dropped
// only by changes that reach it: see invalidate.)
func (a *Authorizer) lock() {
	a.mu.Lock()
	a.own.clear()
}

// New returns an Authorizer holding the built-in roles and nothing else.
func New() *Authorizer {
	a := &Authorizer{
		roles:    map[string]*role{},
		projects: map[string]*project{},
		bindings: map[string]*binding{},
		disabled: map[string]struct{}{},
		sels:     selectors{},
		subjects: map[subjectKey]*subjectEntry{},
		byTarget: map[targetKey][]*binding{},
		byScope:  map[scopeTarget][]*binding{},
	}
	for name, spec := range Builtin() {
		a.roles[name] = &role{name: name, spec: spec, builtin: true, bindings: map[*binding]struct{}{}}
	}
	for _, r := range a.roles {
		a.flatten(r)
	}
	return a
}

// SetUserDisabled records whether a user is disabled; a disabled user is denied everything,
// whatever their bindings say.
func (a *Authorizer) SetUserDisabled(user string, disabled bool) {
	a.lock()
	defer a.mu.Unlock()
	if disabled {
		a.disabled[user] = struct{}{}
	} else {
		delete(a.disabled, user)
	}
}

// Decide answers whether s may do r. It reads only the subject's own bindings (by user and
// by each group), found by key where the request names a workspace, cluster, ClusterGroup or
// project, and allocates nothing.
func (a *Authorizer) Decide(s Subject, r Request) Decision {
	d := Decision{user: s.User, verb: r.Verb, kind: r.Kind, name: r.Name}
	bit := verbBit(r.Verb)
	if bit == 0 || bit == verbAll || r.Kind == "" {
		return d
	}
	if r.Project == "" && r.Kind == api.KindProject {
		r.Project = r.Name
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if _, off := a.disabled[s.User]; off {
		d.disabled = true
		return d
	}
	if b := a.find(subjectKey{name: s.User}, bit, &r); b != nil {
		return allow(d, b)
	}
	for _, g := range s.Groups {
		if b := a.find(subjectKey{group: true, name: g}, bit, &r); b != nil {
			return allow(d, b)
		}
	}
	return d
}

func allow(d Decision, b *binding) Decision {
	d.Allowed, d.Binding, d.Role = true, b.name, b.role.name
	return d
}

// find returns a binding of subj that grants r, or nil.
func (a *Authorizer) find(subj subjectKey, bit uint8, r *Request) *binding {
	e := a.subjects[subj]
	if e == nil {
		return nil
	}
	grants := func(b *binding) bool { return b.role.rules.allows(bit, r.Kind, r.Name) }
	for _, b := range e.global {
		if grants(b) {
			return b
		}
	}
	if r.Namespace != "" {
		if b := a.findKeyed(subj, scopeWorkspace, r.Namespace, grants); b != nil {
			return b
		}
	}
	if r.Project != "" {
		if b := a.findKeyed(subj, scopeProject, r.Project, grants); b != nil {
			return b
		}
	}
	c := r.Cluster
	if c == nil {
		return nil
	}
	if c.Workspace != "" && c.Workspace != r.Namespace {
		if b := a.findKeyed(subj, scopeWorkspace, c.Workspace, grants); b != nil {
			return b
		}
	}
	inCluster := func(b *binding) bool { return b.matchesCluster(c) && grants(b) }
	if b := a.findKeyed(subj, scopeCluster, c.Name, inCluster); b != nil {
		return b
	}
	for _, g := range c.Groups {
		if b := a.findKeyed(subj, scopeGroup, g, inCluster); b != nil {
			return b
		}
	}
	for _, b := range e.selectors {
		if grants(b) && b.matchesCluster(c) {
			return b
		}
	}
	for _, b := range e.projects {
		if grants(b) && a.projects[b.target].matches(c) {
			return b
		}
	}
	return nil
}

func (a *Authorizer) findKeyed(subj subjectKey, scope scopeKind, target string, ok func(*binding) bool) *binding {
	for _, b := range a.byTarget[targetKey{subj, scope, target}] {
		if ok(b) {
			return b
		}
	}
	return nil
}

// Impersonation returns the Kubernetes user and groups the proxy sets for s on cluster c:
// the user as UserPrefix+name when the user is bound there, else GroupMemberUser when one of
// their groups is; groups are only those bound there, since the cluster lets the agent
// impersonate no others. ok is false when nothing of s is bound on c.
func (a *Authorizer) Impersonation(s Subject, c Cluster) (user string, groups []string, ok bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if _, off := a.disabled[s.User]; off {
		return "", nil, false
	}
	for _, g := range s.Groups {
		if a.boundOn(subjectKey{group: true, name: g}, &c) {
			groups = append(groups, GroupPrefix+g)
		}
	}
	switch {
	case a.boundOn(subjectKey{name: s.User}, &c):
		user = UserPrefix + s.User
	case len(groups) > 0:
		user = GroupMemberUser
	default:
		return "", nil, false
	}
	return user, groups, true
}

// boundOn reports whether subj has a binding pushing rules to c.
func (a *Authorizer) boundOn(subj subjectKey, c *Cluster) bool {
	e := a.subjects[subj]
	if e == nil {
		return false
	}
	for _, b := range e.global {
		if len(b.role.kube) > 0 {
			return true
		}
	}
	for _, b := range e.keyed {
		if len(b.role.kube) == 0 {
			continue
		}
		if b.scope == scopeWorkspace && b.target == c.Workspace || b.scope != scopeWorkspace && b.matchesCluster(c) {
			return true
		}
	}
	for _, b := range e.selectors {
		if len(b.role.kube) > 0 && b.matchesCluster(c) {
			return true
		}
	}
	for _, b := range e.projects {
		if len(b.role.kube) > 0 && a.projects[b.target].matches(c) {
			return true
		}
	}
	return false
}
