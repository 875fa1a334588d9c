package fleet

import (
	"cmp"
	"container/heap"
	"encoding/binary"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"
	"unsafe"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
)

// The dashboard's views of the model: aggregates and bounded pages computed from memory, so
// that no page reads the store's whole collection. Each is one pass over the clusters under
// the read lock (under a microsecond per cluster as measured in docs/benchmarks.md).

// Attention reasons: why a cluster needs a look. A cluster may have several.
const (
	ReasonOffline        = "Offline"
	ReasonNeverConnected = "NeverConnected"
	ReasonPaused         = "Paused"
	// ReasonDeployments + a deployment state (ErrApplied, Modified, …): at least one of the
	// cluster's deployments is in that state.
	ReasonDeployments = "Deployments"
)

// ClusterQuery selects clusters. Empty fields select everything.
type ClusterQuery struct {
	// View, when set, keeps only the clusters it matches (the caller's Flotilla RBAC).
	View func(rbac.Cluster) bool
	// ViewByLabels says View's answer depends only on a cluster's workspace and labels (no
	// binding names single clusters): it is then asked once per distinct label set.
	ViewByLabels bool
	// Namespace is one workspace.
	Namespace string
	// Selector matches labels.
	Selector labels.Selector
	// State is Ready, NotReady, Offline or Pending.
	State string
	// KubernetesVersion, Architecture and AgentVersion match the inventory exactly; "-"
	// matches clusters that reported none.
	KubernetesVersion, Architecture, AgentVersion string
	// NamePrefix matches the start of the name.
	NamePrefix string
	// Reason is an attention reason (see Reason*).
	Reason string
	// CountLabel, for Overview, also counts the clusters by the value of this label key.
	CountLabel string
}

// ClusterRow is one cluster as the dashboard lists it.
type ClusterRow struct {
	Namespace, Name string
	Labels          map[string]string
	State           string
	Paused          bool
	LastSeen        time.Time
	Inventory       api.ClusterInventory
	// Deployments counts the cluster's deployments by effective state.
	Deployments map[string]int
}

// Key is the row's position in the list order.
func (r ClusterRow) Key() string { return r.Namespace + "/" + r.Name }

// Overview counts the clusters a query selects.
type Overview struct {
	Total                      int
	ByState, ByVersion, ByArch map[string]int
	ByAgent                    map[string]int
	// ByLabel counts by the value of the query's CountLabel ("-": not set).
	ByLabel            map[string]int
	Attention          map[string]int
	DeploymentsByState map[string]int
	// Took is how long the pass took.
	Took time.Duration
}

// inventories parses each distinct inventory document once per pass: the model interns
// them, so most clusters share a few strings and the pointer is a cheap key.
type inventories map[strID]api.ClusterInventory

// strID identifies a string by where its bytes are: interned strings share them.
type strID struct {
	p *byte
	n int
}

func idOf(s string) strID { return strID{unsafe.StringData(s), len(s)} }

func (m inventories) get(s string) api.ClusterInventory {
	if s == "" {
		return api.ClusterInventory{}
	}
	p := idOf(s)
	if inv, ok := m[p]; ok {
		return inv
	}
	var inv api.ClusterInventory
	json.Unmarshal([]byte(s), &inv)
	if len(m) < 1<<16 {
		m[p] = inv
	}
	return inv
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// reasons appends c's attention reasons.
func (f *Fleet) reasons(out []string, c *Cluster, state string) []string {
	switch state {
	case "Offline":
		out = append(out, ReasonOffline)
	case "Pending":
		out = append(out, ReasonNeverConnected)
	}
	if c.Paused {
		out = append(out, ReasonPaused)
	}
	for i := 1; i < len(states); i++ {
		if c.counts[i] > 0 {
			out = append(out, ReasonDeployments+states[i])
		}
	}
	return out
}

// mapID identifies a label map: the model shares one map between clusters with the same
// labels (see sharedMap), so answers that depend only on labels are computed once per pass
// and map, not once per cluster.
func mapID(m map[string]string) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&m))
}

// pass is one walk over the model's clusters, with what it learns of shared label sets and
// inventories.
type pass struct {
	q    ClusterQuery
	now  time.Time
	invs inventories
	// sel and view cache the selector's and the view's answers per label map.
	sel  map[unsafe.Pointer]bool
	view map[[2]unsafe.Pointer]bool
}

func (p *pass) selected(c *Cluster) bool {
	if p.q.Selector == nil || p.q.Selector.Empty() {
		return true
	}
	id := mapID(c.Labels)
	if ok, known := p.sel[id]; known && id != nil {
		return ok
	}
	ok := p.q.Selector.Matches(labels.Set(c.Labels))
	if len(p.sel) < 1<<16 {
		p.sel[id] = ok
	}
	return ok
}

func (p *pass) visible(f *Fleet, w *workspace, c *Cluster) bool {
	if p.q.View == nil {
		return true
	}
	if !p.q.ViewByLabels {
		return p.q.View(f.rbacCluster(w, c))
	}
	k := [2]unsafe.Pointer{unsafe.Pointer(w), mapID(c.Labels)}
	if ok, known := p.view[k]; known {
		return ok
	}
	ok := p.q.View(f.rbacCluster(w, c))
	if len(p.view) < 1<<16 {
		p.view[k] = ok
	}
	return ok
}

// each calls fn for every cluster q selects, under the read lock.
func (f *Fleet) each(q ClusterQuery, fn func(w *workspace, c *Cluster, state string)) {
	p := &pass{q: q, now: time.Now(), invs: inventories{}, sel: map[unsafe.Pointer]bool{}, view: map[[2]unsafe.Pointer]bool{}}
	byInv := q.KubernetesVersion != "" || q.Architecture != "" || q.AgentVersion != ""
	var rs []string
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, w := range f.workspaces {
		if q.Namespace != "" && w.name != q.Namespace {
			continue
		}
		for _, c := range w.clusters {
			if q.NamePrefix != "" && !strings.HasPrefix(c.Name, q.NamePrefix) {
				continue
			}
			if !p.selected(c) {
				continue
			}
			state := f.clusterState(c, p.now)
			if q.State != "" && state != q.State {
				continue
			}
			if byInv {
				inv := p.invs.get(invJSON(c.inventory))
				if (q.KubernetesVersion != "" && orNone(inv.KubernetesVersion) != q.KubernetesVersion) ||
					(q.Architecture != "" && orNone(inv.Architecture) != q.Architecture) ||
					(q.AgentVersion != "" && orNone(inv.AgentVersion) != q.AgentVersion) {
					continue
				}
			}
			if q.Reason != "" {
				rs = f.reasons(rs[:0], c, state)
				found := false
				for _, r := range rs {
					found = found || r == q.Reason
				}
				if !found {
					continue
				}
			}
			if !p.visible(f, w, c) {
				continue
			}
			fn(w, c, state)
		}
	}
}

// Overview counts the clusters q selects by state, Kubernetes version, architecture, agent
// version and attention reason, and their deployments by state. A query narrowed by
// workspace, selector and a view on labels only is read from the counts the model keeps
// (aggregate.go); others are one pass.
func (f *Fleet) Overview(q ClusterQuery) Overview {
	if !indexed(q) {
		return f.overviewByPass(q)
	}
	start := time.Now()
	f.mu.RLock()
	o := f.overviewFromCounts(q)
	f.mu.RUnlock()
	o.Took = time.Since(start)
	return o
}

// overviewByPass is Overview counted in one pass over the clusters.
func (f *Fleet) overviewByPass(q ClusterQuery) Overview {
	start := time.Now()
	o := Overview{ByState: map[string]int{}, ByVersion: map[string]int{}, ByArch: map[string]int{}, ByAgent: map[string]int{},
		Attention: map[string]int{}, DeploymentsByState: map[string]int{}}
	// Counted per shared inventory document and in arrays while passing; spread into the
	// maps at the end (a string-keyed map update per cluster and figure cost more than the
	// rest of the pass).
	byInv := map[strID]int{}
	invOf := map[strID]string{}
	byLabels := map[unsafe.Pointer]int{}
	labelsOf := map[unsafe.Pointer]map[string]string{}
	var byState [4]int
	var offline, never, paused int
	var depClusters, deps [len(states)]int
	f.each(q, func(_ *workspace, c *Cluster, state string) {
		o.Total++
		switch state {
		case api.StateReady:
			byState[0]++
		case api.StateNotReady:
			byState[1]++
		case "Offline":
			byState[2]++
			offline++
		case "Pending":
			byState[3]++
			never++
		}
		if c.Paused {
			paused++
		}
		doc := invJSON(c.inventory)
		id := idOf(doc)
		if byInv[id]++; byInv[id] == 1 {
			invOf[id] = doc
		}
		if q.CountLabel != "" {
			lid := mapID(c.Labels)
			if byLabels[lid]++; byLabels[lid] == 1 {
				labelsOf[lid] = c.Labels
			}
		}
		for i, n := range c.counts {
			if n > 0 {
				deps[i] += int(n)
				depClusters[i]++
			}
		}
	})
	for i, s := range []string{api.StateReady, api.StateNotReady, "Offline", "Pending"} {
		if byState[i] > 0 {
			o.ByState[s] = byState[i]
		}
	}
	invs := inventories{}
	for id, n := range byInv {
		inv := invs.get(invOf[id])
		o.ByVersion[orNone(inv.KubernetesVersion)] += n
		o.ByArch[orNone(inv.Architecture)] += n
		o.ByAgent[orNone(inv.AgentVersion)] += n
	}
	if q.CountLabel != "" {
		o.ByLabel = map[string]int{}
		for id, n := range byLabels {
			v, ok := labelsOf[id][q.CountLabel]
			if !ok {
				v = "-"
			}
			o.ByLabel[v] += n
		}
	}
	for r, n := range map[string]int{ReasonOffline: offline, ReasonNeverConnected: never, ReasonPaused: paused} {
		if n > 0 {
			o.Attention[r] = n
		}
	}
	for i, s := range states {
		if deps[i] > 0 {
			o.DeploymentsByState[s] = deps[i]
		}
		if i > 0 && depClusters[i] > 0 {
			o.Attention[ReasonDeployments+s] = depClusters[i]
		}
	}
	o.Took = time.Since(start)
	return o
}

// ClusterPage is one page of clusters in (namespace, name) order.
type ClusterPage struct {
	Rows []ClusterRow
	// Total is how many clusters the query selected when the page was made.
	Total int
	// More: clusters follow the page (after Next), or precede it (before Prev).
	More, Earlier bool
}

// keyHeap keeps the limit best keys seen: a max-heap when collecting the first ones after a
// key, a min-heap for the last ones before it.
type keyHeap struct {
	cs   []*Cluster
	less func(a, b *Cluster) bool
}

func (h *keyHeap) Len() int           { return len(h.cs) }
func (h *keyHeap) Less(i, j int) bool { return h.less(h.cs[j], h.cs[i]) } // worst on top
func (h *keyHeap) Swap(i, j int)      { h.cs[i], h.cs[j] = h.cs[j], h.cs[i] }
func (h *keyHeap) Push(x any)         { h.cs = append(h.cs, x.(*Cluster)) }
func (h *keyHeap) Pop() any {
	c := h.cs[len(h.cs)-1]
	h.cs = h.cs[:len(h.cs)-1]
	return c
}

// keyCmp orders clusters as keyLess does.
func keyCmp(a, b *Cluster) int {
	if a.Namespace != b.Namespace {
		return strings.Compare(a.Namespace, b.Namespace)
	}
	return strings.Compare(a.Name, b.Name)
}

func keyLess(a, b *Cluster) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// sortByKey sorts cs as keyCmp orders them. At a load a million clusters sorted by keyCmp
// took 1.6 s: each of the ~20 million comparisons reads two clusters and their names through
// pointers, cache misses all. Here each cluster is sorted by a key held in the slice, its
// namespace's rank and its name's first 8 bytes, and names are compared only where those are
// equal. (Zero bytes after a short name order it before every longer name it begins.)
func sortByKey(cs []*Cluster) {
	type sortKey struct {
		ns     int
		prefix uint64
		c      *Cluster
	}
	rank := map[string]int{}
	for _, c := range cs {
		rank[c.Namespace] = 0
	}
	nss := slices.Sorted(maps.Keys(rank))
	for i, ns := range nss {
		rank[ns] = i
	}
	keys := make([]sortKey, len(cs))
	var ns string
	r := 0
	for i, c := range cs {
		if c.Namespace != ns {
			ns, r = c.Namespace, rank[c.Namespace]
		}
		var b [8]byte
		copy(b[:], c.Name)
		keys[i] = sortKey{r, binary.BigEndian.Uint64(b[:]), c}
	}
	slices.SortFunc(keys, func(a, b sortKey) int {
		if a.ns != b.ns {
			return cmp.Compare(a.ns, b.ns)
		}
		if a.prefix != b.prefix {
			return cmp.Compare(a.prefix, b.prefix)
		}
		return strings.Compare(a.c.Name, b.c.Name)
	})
	for i := range keys {
		cs[i] = keys[i].c
	}
}

// boundOf makes a cluster of a key NAMESPACE/NAME, to compare others with.
func boundOf(key string) *Cluster {
	ns, name, _ := strings.Cut(key, "/")
	return &Cluster{Namespace: ns, Name: name}
}

// ListClusters answers the page of at most limit clusters q selects that follow the key after
// (or, with before set, precede the key before) in (namespace, name) order. It keeps only
// limit clusters while it passes over all of them: the cost is one pass, not a sort.
func (f *Fleet) ListClusters(q ClusterQuery, after, before string, limit int) ClusterPage {
	limit = min(max(limit, 1), 500)
	now := time.Now()
	f.mu.RLock()
	if total, ok := f.countOf(q, now); ok {
		// The total from the counts, the page from a walk of the ordered index.
		cs, more, earlier := f.listInOrder(q, after, before, limit, total, now)
		p := ClusterPage{Total: total, More: more, Earlier: earlier}
		p.Rows = f.rows(cs, now)
		f.mu.RUnlock()
		return p
	}
	f.mu.RUnlock()
	return f.listByPass(q, after, before, limit)
}

// rows are the clusters as the list shows them. The caller holds the read lock.
func (f *Fleet) rows(cs []*Cluster, now time.Time) []ClusterRow {
	invs := inventories{}
	rows := make([]ClusterRow, 0, len(cs))
	for _, c := range cs {
		r := ClusterRow{Namespace: c.Namespace, Name: c.Name, Labels: c.Labels, State: f.clusterState(c, now), Paused: c.Paused,
			LastSeen: c.lastSeen(), Inventory: invs.get(invJSON(c.inventory))}
		r.Deployments, _ = c.counts.asMap()
		rows = append(rows, r)
	}
	return rows
}

// listByPass is ListClusters in one pass over the clusters, keeping the best limit.
func (f *Fleet) listByPass(q ClusterQuery, after, before string, limit int) ClusterPage {
	h := &keyHeap{less: keyLess}
	if before != "" {
		h.less = func(a, b *Cluster) bool { return keyLess(b, a) }
	}
	var p ClusterPage
	var rows []ClusterRow
	matched := 0
	// The bounds as clusters, compared without making a key per cluster.
	var lo, hi *Cluster
	if after != "" {
		lo = boundOf(after)
	}
	if before != "" {
		hi = boundOf(before)
	}
	f.each(q, func(_ *workspace, c *Cluster, _ string) {
		p.Total++
		switch {
		case hi != nil && !keyLess(c, hi):
			p.More = true
			return
		case hi == nil && lo != nil && !keyLess(lo, c):
			p.Earlier = true
			return
		}
		matched++
		if h.Len() < limit {
			heap.Push(h, c)
		} else if h.less(c, h.cs[0]) {
			h.cs[0] = c
			heap.Fix(h, 0)
		}
	})
	if before != "" {
		p.Earlier = matched > limit
	} else {
		p.More = matched > limit
	}
	// The rows are read under the lock again: the clusters' fields change under it.
	now := time.Now()
	invs := inventories{}
	f.mu.RLock()
	for _, c := range h.cs {
		r := ClusterRow{Namespace: c.Namespace, Name: c.Name, Labels: c.Labels, State: f.clusterState(c, now), Paused: c.Paused,
			LastSeen: c.lastSeen(), Inventory: invs.get(invJSON(c.inventory))}
		r.Deployments, _ = c.counts.asMap()
		rows = append(rows, r)
	}
	f.mu.RUnlock()
	sortRows(rows)
	p.Rows = rows
	return p
}

func sortRows(rows []ClusterRow) {
	for i := 1; i < len(rows); i++ {
		for j := i; j > 0 && rows[j].Key() < rows[j-1].Key(); j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
}

// DeploymentRow is one bundle's deployment on a cluster.
type DeploymentRow struct {
	Bundle, State, Message string
	// Held: a rollout keeps the cluster on an older version for now.
	Held bool
}

// ClusterDeployments answers the deployments of one cluster and whether its agent tunnel is
// kept open; ok is false when the model has no such cluster.
func (f *Fleet) ClusterDeployments(ns, name string) (rows []DeploymentRow, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w := f.workspaces[ns]
	if w == nil || w.clusters[name] == nil {
		return nil, false
	}
	c := w.clusters[name]
	for _, p := range c.deps {
		if p.target < 0 && p.reportedID == "" {
			continue
		}
		st := p.effective()
		if st == "" {
			st = "NotTargeted"
		}
		rows = append(rows, DeploymentRow{Bundle: p.bundle, State: st, Message: p.message, Held: p.held != nil})
	}
	return rows, true
}
