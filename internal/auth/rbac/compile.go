package rbac

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"

	"flotilla.dev/api"
)

// The names compiled objects carry on a cluster. They are part of Flotilla's interface: the
// proxy impersonates exactly these users and groups, and the agent prunes by OwnerLabel.
const (
	// ObjectPrefix starts the name of every RBAC object compiled from a role: the ClusterRole
	// "flotilla-<role>", and the ClusterRoleBinding or RoleBindings of that name.
	ObjectPrefix = "flotilla-"
	// UserPrefix and GroupPrefix make a Flotilla user or group a Kubernetes one:
	// "flotilla:user:alice", "flotilla:group:ops". Nothing else on a cluster can carry them.
	UserPrefix  = "flotilla:user:"
	GroupPrefix = "flotilla:group:"
	// GroupMemberUser is the user the proxy impersonates for a person whose access to a cluster
	// comes only through groups: the groups carry the grants, and ExtraUserKey carries who it
	// is for the cluster's audit log.
	GroupMemberUser = "flotilla:group-member"
	ExtraUserKey    = "flotilla-user"
	// ImpersonatorName names the ClusterRole and ClusterRoleBinding letting the agent's service
	// account impersonate the subjects bound on its cluster, and nobody else.
	ImpersonatorName = "flotilla-impersonator"
	// SharedSuffix ends the names of the ClusterRoleBindings (and the impersonator) made from
	// bindings that reach every cluster: "flotilla-admin:all". Those objects are the same on
	// every cluster and are computed once.
	SharedSuffix = ":all"
	// ProjectObjectName names the ResourceQuota and LimitRange of a project namespace.
	ProjectObjectName = "flotilla-project"
	// OwnerLabel (with value OwnerValue) marks every compiled object for pruning.
	OwnerLabel = "flotilla.dev/owner"
	OwnerValue = "access"
	// ProjectLabel names a project namespace's project.
	ProjectLabel = "flotilla.dev/project"
	// AgentNamespace and AgentServiceAccount are where the agent runs by default.
	AgentNamespace      = "flotilla-system"
	AgentServiceAccount = "flotilla-agent"
)

// Manifest is one Kubernetes object a cluster must hold, as JSON ready for server-side apply.
type Manifest struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Namespace  string          `json:"namespace,omitempty"`
	Name       string          `json:"name"`
	Object     json.RawMessage `json:"object"`
}

// NamespaceTemplate is applied by the agent to every namespace of its cluster matching
// Selector (a project's namespaceSelector); the objects' namespace is left for it to fill.
type NamespaceTemplate struct {
	Project  string             `json:"project"`
	Selector *api.LabelSelector `json:"selector"`
	Objects  []Manifest         `json:"objects"`
}

// Compiled is everything access-related a cluster must hold, sorted, with a digest that
// changes only when the content does.
type Compiled struct {
	Objects   []Manifest          `json:"objects"`
	Templates []NamespaceTemplate `json:"templates,omitempty"`
	// Conflicts are namespaces claimed by two projects on this cluster; the project first by
	// name keeps the namespace.
	Conflicts []string `json:"conflicts,omitempty"`
	Digest    string   `json:"digest"`
}

// CompileOptions says where the agent runs.
type CompileOptions struct {
	AgentNamespace, AgentServiceAccount string
}

// DefaultCompileOptions names the agent's default service account.
func DefaultCompileOptions() CompileOptions {
	return CompileOptions{AgentNamespace: AgentNamespace, AgentServiceAccount: AgentServiceAccount}
}

// subjects is a set of users and groups bound with one role.
type subjects map[subjectKey]struct{}

// everywhere reports whether b reaches every cluster whatever its name, workspace, labels
// or groups: such bindings make the shared layer.
func (b *binding) everywhere() bool {
	return b.scope == scopeGlobal || b.scope == scopeSelector && b.sel.key == "" && b.workspace == ""
}

// layer is one part of a cluster's objects: the shared layer (bindings reaching every
// cluster, the same bytes everywhere, computed once) or the cluster's own.
type layer struct {
	objects   []Manifest
	templates []NamespaceTemplate
	conflicts []string
	digest    string
}

// Compile computes the access objects cluster c must hold: the shared layer, computed once
// after each change and cached, and c's own layer, from only the bindings whose scope can
// reach c: c's workspace, c's name and groups by key, the selector bindings bucketed under
// one of c's labels, and the projects picking c. The digest is a digest of the two layers'
// digests, so a change to the shared layer re-versions every cluster at the cost of one
// hash each.
func (a *Authorizer) Compile(c Cluster, opts CompileOptions) Compiled {
	a.mu.RLock()
	defer a.mu.RUnlock()
	shared := a.sharedLayer(opts)
	own := a.ownLayer(&c, opts)

	// The layers are cached and shared: the caller gets its own slices.
	out := Compiled{Templates: slices.Clone(own.templates), Conflicts: slices.Clone(own.conflicts)}
	out.Objects = make([]Manifest, 0, len(shared.objects)+len(own.objects))
	out.Objects = append(out.Objects, shared.objects...)
	out.Objects = append(out.Objects, own.objects...)
	sortManifests(out.Objects)
	// A role bound in both layers has its ClusterRole in both, with the same content.
	out.Objects = slices.CompactFunc(out.Objects, func(x, y Manifest) bool {
		return x.Kind == y.Kind && x.Namespace == y.Namespace && x.Name == y.Name
	})
	out.Digest = combine(shared.digest, own.digest)
	return out
}

// Digest returns Compile(c, opts).Digest.
func (a *Authorizer) Digest(c Cluster, opts CompileOptions) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return combine(a.sharedLayer(opts).digest, a.ownLayer(&c, opts).digest)
}

// SharedDigest and OwnDigest are the two halves of a cluster's digest, for a fleet that keeps
// each cluster's own digest (recomputed only when a change's coverage includes the cluster)
// and, when the shared layer changes, re-versions every cluster with CombineDigests alone.
func (a *Authorizer) SharedDigest(opts CompileOptions) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.sharedLayer(opts).digest
}

// OwnDigest is the digest of the objects only c's own bindings and projects make.
func (a *Authorizer) OwnDigest(c Cluster, opts CompileOptions) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.ownLayer(&c, opts).digest
}

// CombineDigests returns the digest of a cluster from its two halves: Compile's Digest.
func CombineDigests(shared, own string) string { return combine(shared, own) }

func combine(shared, own string) string {
	// One allocation: this runs for every cluster when the shared layer changes.
	var sum [sha256.Size]byte
	var in [256]byte
	if len(shared)+1+len(own) <= len(in) {
		n := copy(in[:], shared)
		in[n] = '\n'
		n += 1 + copy(in[n+1:], own)
		sum = sha256.Sum256(in[:n])
	} else {
		sum = sha256.Sum256([]byte(shared + "\n" + own))
	}
	var out [7 + 2*sha256.Size]byte
	copy(out[:], "sha256:")
	hex.Encode(out[7:], sum[:])
	return string(out[:])
}

// sharedLayer returns the cached shared layer, computing it after a change. Callers hold
// a.mu for reading; the cache has its own lock.
func (a *Authorizer) sharedLayer(opts CompileOptions) *layer {
	a.sharedMu.Lock()
	defer a.sharedMu.Unlock()
	if a.shared != nil && a.sharedOpts == opts {
		return a.shared
	}
	wide := roleSubjects{}
	for _, b := range a.global {
		wide.add(b)
	}
	a.selBindings.each(nil, func(b *binding) {
		if b.everywhere() {
			wide.add(b)
		}
	})
	l := build(wide, nil, SharedSuffix, opts)
	a.shared, a.sharedOpts = &l, opts
	return a.shared
}

// invalidate drops the cached shared layer; callers hold a.mu for writing.
func (a *Authorizer) invalidate() {
	a.sharedMu.Lock()
	a.shared = nil
	a.sharedMu.Unlock()
}

func (a *Authorizer) ownLayer(c *Cluster, opts CompileOptions) layer {
	wide := roleSubjects{}
	for _, b := range a.byScope[scopeTarget{scopeWorkspace, c.Workspace}] {
		wide.add(b)
	}
	for _, b := range a.byScope[scopeTarget{scopeCluster, c.Name}] {
		if b.matchesCluster(c) {
			wide.add(b)
		}
	}
	for _, g := range c.Groups {
		for _, b := range a.byScope[scopeTarget{scopeGroup, g}] {
			if b.matchesCluster(c) {
				wide.add(b)
			}
		}
	}
	a.selBindings.each(c.Labels, func(b *binding) {
		if !b.everywhere() && (b.workspace == "" || b.workspace == c.Workspace) {
			wide.add(b)
		}
	})
	var projects []*project
	a.selProjects.each(c.Labels, func(p *project) { projects = append(projects, p) })
	slices.SortFunc(projects, func(x, y *project) int { return cmp.Compare(x.name, y.name) })
	// The layer is a function of these bindings and projects alone, and most clusters share
	// theirs with many others (one selector's bindings, one project): it is built once per
	// set, not once per cluster (building marshals every object; ~70 µs a cluster).
	key := ownKey(wide, projects, opts)
	if l, ok := a.own.get(key); ok {
		return *l
	}
	l := build(wide, projects, "", opts)
	a.own.put(key, &l)
	return l
}

// ownKey names what build makes a cluster's own layer from: each role (by name: its content
// is fixed until the index changes, which empties the cache) with its subjects, the projects
// (by name, likewise) and the options. Every part is length-prefixed, so no name can make two
// different inputs one key.
func ownKey(wide roleSubjects, projects []*project, opts CompileOptions) string {
	var k []byte
	str := func(b []byte, s string) []byte { return append(binary.AppendUvarint(b, uint64(len(s))), s...) }
	k = str(str(k, opts.AgentNamespace), opts.AgentServiceAccount)
	roles := make([]string, 0, len(wide))
	var subs []string
	for r, ss := range wide {
		subs = subs[:0]
		for s := range ss {
			kind := "u"
			if s.group {
				kind = "g"
			}
			subs = append(subs, string(str([]byte(kind), s.name)))
		}
		slices.Sort(subs)
		e := str(nil, r.name)
		for _, s := range subs {
			e = str(e, s)
		}
		roles = append(roles, string(e))
	}
	slices.Sort(roles)
	k = binary.AppendUvarint(k, uint64(len(roles)))
	for _, r := range roles {
		k = str(k, r)
	}
	k = binary.AppendUvarint(k, uint64(len(projects)))
	for _, p := range projects {
		k = str(k, p.name)
	}
	return string(k)
}

// ownCache holds built own layers by ownKey. Its size is bounded: a fleet whose clusters each
// have bindings of their own has as many sets as clusters, and gains nothing from it.
type ownCache struct {
	mu sync.Mutex
	m  map[string]*layer
}

const ownCacheMax = 1024

func (c *ownCache) get(k string) (*layer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.m[k]
	return l, ok
}

func (c *ownCache) put(k string, l *layer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= ownCacheMax {
		c.m = map[string]*layer{}
	}
	c.m[k] = l
}

func (c *ownCache) clear() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}

// roleSubjects collects, per role pushing rules downstream, the subjects bound with it.
type roleSubjects map[*role]subjects

func (rs roleSubjects) add(b *binding) {
	if len(b.role.kube) == 0 {
		return
	}
	if rs[b.role] == nil {
		rs[b.role] = subjects{}
	}
	rs[b.role][b.subj] = struct{}{}
}

// build makes a layer's objects; suffix tells the shared layer's bindings from a cluster's
// own ("flotilla-admin:all" beside "flotilla-admin"). ':' never appears in a role's name, so
// the two cannot collide.
func build(wide roleSubjects, projects []*project, suffix string, opts CompileOptions) layer {
	var out layer
	everyone := subjects{}
	clusterRoles := map[*role]bool{}
	for r, subs := range wide {
		clusterRoles[r] = true
		out.objects = append(out.objects, manifest("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", ObjectPrefix+r.name+suffix, nil, map[string]any{
			"roleRef":  roleRef(r),
			"subjects": subjectList(subs),
		}))
		maps.Copy(everyone, subs)
	}
	claimed := map[string]string{}
	for _, p := range projects {
		perRole := map[*role]subjects{}
		for _, b := range p.bindings {
			if len(b.role.kube) == 0 {
				continue
			}
			if perRole[b.role] == nil {
				perRole[b.role] = subjects{}
			}
			perRole[b.role][b.subj] = struct{}{}
		}
		nsObjects := func(ns string, quota *api.ResourceQuotaSpec) []Manifest {
			var objs []Manifest
			if quota != nil {
				objs = append(objs, manifest("v1", "ResourceQuota", ns, ProjectObjectName, projectLabels(p), map[string]any{"hard": quota.Hard}))
			}
			if d := p.spec.ContainerDefaults; d != nil {
				item := map[string]any{"type": "Container"}
				for k, v := range map[string]map[string]string{"default": d.Default, "defaultRequest": d.DefaultRequest, "max": d.Max, "min": d.Min} {
					if len(v) > 0 {
						item[k] = v
					}
				}
				objs = append(objs, manifest("v1", "LimitRange", ns, ProjectObjectName, projectLabels(p), map[string]any{"limits": []any{item}}))
			}
			for r, subs := range perRole {
				objs = append(objs, manifest("rbac.authorization.k8s.io/v1", "RoleBinding", ns, ObjectPrefix+r.name, projectLabels(p), map[string]any{
					"roleRef":  roleRef(r),
					"subjects": subjectList(subs),
				}))
			}
			return objs
		}
		for r, subs := range perRole {
			clusterRoles[r] = true
			maps.Copy(everyone, subs)
		}
		for _, ns := range p.spec.Namespaces {
			if owner, ok := claimed[ns.Name]; ok {
				out.conflicts = append(out.conflicts, fmt.Sprintf("namespace %q is claimed by projects %q and %q; %q keeps it", ns.Name, owner, p.name, owner))
				continue
			}
			claimed[ns.Name] = p.name
			out.objects = append(out.objects, manifest("v1", "Namespace", "", ns.Name, projectLabels(p), nil))
			q := p.spec.NamespaceQuota
			if ns.Quota != nil {
				q = ns.Quota
			}
			out.objects = append(out.objects, nsObjects(ns.Name, q)...)
		}
		if p.spec.NamespaceSelector != nil {
			objs := nsObjects("", p.spec.NamespaceQuota)
			sortManifests(objs)
			out.templates = append(out.templates, NamespaceTemplate{Project: p.name, Selector: cloneSelector(p.spec.NamespaceSelector), Objects: objs})
		}
	}
	for r := range clusterRoles {
		out.objects = append(out.objects, manifest("rbac.authorization.k8s.io/v1", "ClusterRole", "", ObjectPrefix+r.name, nil, map[string]any{"rules": kubeRules(r.kube)}))
	}
	out.objects = append(out.objects, impersonator(everyone, suffix, opts)...)
	sortManifests(out.objects)
	out.digest = digest(&out)
	return out
}

// impersonator lets the agent's service account impersonate exactly the bound subjects. An
// impersonation rule without resourceNames would allow every user, so none is written when
// there is nobody to name.
func impersonator(subs subjects, suffix string, opts CompileOptions) []Manifest {
	var users, groups []string
	for s := range subs {
		if s.group {
			groups = append(groups, GroupPrefix+s.name)
		} else {
			users = append(users, UserPrefix+s.name)
		}
	}
	if len(groups) > 0 {
		users = append(users, GroupMemberUser)
	}
	if len(users) == 0 {
		return nil
	}
	slices.Sort(users)
	slices.Sort(groups)
	rules := []any{map[string]any{"apiGroups": []string{""}, "resources": []string{"users"}, "verbs": []string{"impersonate"}, "resourceNames": users}}
	if len(groups) > 0 {
		rules = append(rules, map[string]any{"apiGroups": []string{""}, "resources": []string{"groups"}, "verbs": []string{"impersonate"}, "resourceNames": groups})
	}
	// The extra only names the person for the cluster's audit log; RBAC grants nothing on it.
	rules = append(rules, map[string]any{"apiGroups": []string{"authentication.k8s.io"}, "resources": []string{"userextras/" + ExtraUserKey}, "verbs": []string{"impersonate"}})
	return []Manifest{
		manifest("rbac.authorization.k8s.io/v1", "ClusterRole", "", ImpersonatorName+suffix, nil, map[string]any{"rules": rules}),
		manifest("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", ImpersonatorName+suffix, nil, map[string]any{
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ImpersonatorName + suffix},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "namespace": opts.AgentNamespace, "name": opts.AgentServiceAccount}},
		}),
	}
}

func projectLabels(p *project) map[string]string { return map[string]string{ProjectLabel: p.name} }

func roleRef(r *role) map[string]any {
	return map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ObjectPrefix + r.name}
}

func subjectList(subs subjects) []any {
	keys := slices.SortedFunc(maps.Keys(subs), func(x, y subjectKey) int {
		if x.group != y.group {
			if x.group {
				return 1
			}
			return -1
		}
		return cmp.Compare(x.name, y.name)
	})
	out := make([]any, len(keys))
	for i, k := range keys {
		name := UserPrefix + k.name
		if k.group {
			name = GroupPrefix + k.name
		}
		out[i] = map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": k.kind(), "name": name}
	}
	return out
}

func kubeRules(rules []api.KubernetesPolicyRule) []any {
	out := make([]any, len(rules))
	for i, r := range rules {
		m := map[string]any{"verbs": r.Verbs}
		if len(r.NonResourceURLs) > 0 {
			m["nonResourceURLs"] = r.NonResourceURLs
		} else {
			m["apiGroups"] = r.APIGroups
			m["resources"] = r.Resources
		}
		if len(r.ResourceNames) > 0 {
			m["resourceNames"] = r.ResourceNames
		}
		out[i] = m
	}
	return out
}

// manifest builds an object: metadata with the owner label, then body's fields at the top
// level (rules, subjects, spec, …). encoding/json sorts map keys, so the bytes are stable.
func manifest(apiVersion, kind, ns, name string, extraLabels map[string]string, body map[string]any) Manifest {
	lbls := map[string]string{OwnerLabel: OwnerValue}
	maps.Copy(lbls, extraLabels)
	meta := map[string]any{"name": name, "labels": lbls}
	if ns != "" {
		meta["namespace"] = ns
	}
	obj := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": meta}
	switch kind {
	case "ResourceQuota", "LimitRange":
		obj["spec"] = body
	default:
		maps.Copy(obj, body)
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		panic(fmt.Sprintf("rbac: marshalling %s %s: %v", kind, name, err)) // only strings and maps
	}
	return Manifest{APIVersion: apiVersion, Kind: kind, Namespace: ns, Name: name, Object: raw}
}

var kindOrder = map[string]int{"Namespace": 0, "ClusterRole": 1, "ClusterRoleBinding": 2, "ResourceQuota": 3, "LimitRange": 4, "RoleBinding": 5}

// sortManifests orders objects so that what others refer to comes first.
func sortManifests(m []Manifest) {
	slices.SortFunc(m, func(x, y Manifest) int {
		return cmp.Or(cmp.Compare(kindOrder[x.Kind], kindOrder[y.Kind]), cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
}

func digest(c *layer) string {
	h := sha256.New()
	for _, m := range c.objects {
		h.Write(m.Object)
		h.Write([]byte{'\n'})
	}
	for _, t := range c.templates {
		raw, _ := json.Marshal(t)
		h.Write(raw)
		h.Write([]byte{'\n'})
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
