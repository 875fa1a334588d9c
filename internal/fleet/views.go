package fleet

import (
	"container/heap"
	"encoding/json"
	"strings"
	"time"
	"unsafe"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
)

// The dashboard's views of the model: aggregates and bounded pages computed from memory, so
// that no page reads the store's whole collection. Each is one pass over the clusters under
// the read lock (a few tens of nanoseconds per cluster; see docs/benchmarks.md).

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
	Attention                  map[string]int
	DeploymentsByState         map[string]int
	Took                       time.Duration
	Revision                   int64
}

// inventories parses each distinct inventory document once per pass: the model interns
// them, so most clusters share a few strings and the pointer is a cheap key.
type inventories map[*byte]api.ClusterInventory

func (m inventories) get(s string) api.ClusterInventory {
	if s == "" {
		return api.ClusterInventory{}
	}
	p := unsafe.StringData(s)
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

// each calls fn for every cluster q selects, under the read lock.
func (f *Fleet) each(q ClusterQuery, fn func(w *workspace, c *Cluster, state string, inv api.ClusterInventory)) {
	now := time.Now()
	invs := inventories{}
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
			if q.Selector != nil && !q.Selector.Empty() && !q.Selector.Matches(labels.Set(c.Labels)) {
				continue
			}
			state := f.clusterState(c, now)
			if q.State != "" && state != q.State {
				continue
			}
			inv := invs.get(c.inventory)
			if (q.KubernetesVersion != "" && orNone(inv.KubernetesVersion) != q.KubernetesVersion) ||
				(q.Architecture != "" && orNone(inv.Architecture) != q.Architecture) ||
				(q.AgentVersion != "" && orNone(inv.AgentVersion) != q.AgentVersion) {
				continue
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
			if q.View != nil && !q.View(f.rbacCluster(w, c)) {
				continue
			}
			fn(w, c, state, inv)
		}
	}
}

// Overview counts the clusters q selects by state, Kubernetes version, architecture, agent
// version and attention reason, and their deployments by state.
func (f *Fleet) Overview(q ClusterQuery) Overview {
	start := time.Now()
	o := Overview{ByState: map[string]int{}, ByVersion: map[string]int{}, ByArch: map[string]int{}, ByAgent: map[string]int{},
		Attention: map[string]int{}, DeploymentsByState: map[string]int{}}
	var rs []string
	f.each(q, func(_ *workspace, c *Cluster, state string, inv api.ClusterInventory) {
		o.Total++
		o.ByState[state]++
		o.ByVersion[orNone(inv.KubernetesVersion)]++
		o.ByArch[orNone(inv.Architecture)]++
		o.ByAgent[orNone(inv.AgentVersion)]++
		rs = f.reasons(rs[:0], c, state)
		for _, r := range rs {
			o.Attention[r]++
		}
		for i, n := range c.counts {
			if n > 0 {
				o.DeploymentsByState[states[i]] += int(n)
			}
		}
	})
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

func keyLess(a, b *Cluster) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

func keyOf(c *Cluster) string { return c.Namespace + "/" + c.Name }

// ListClusters answers the page of at most limit clusters q selects that follow the key after
// (or, with before set, precede the key before) in (namespace, name) order. It keeps only
// limit clusters while it passes over all of them: the cost is one pass, not a sort.
func (f *Fleet) ListClusters(q ClusterQuery, after, before string, limit int) ClusterPage {
	limit = min(max(limit, 1), 500)
	h := &keyHeap{less: keyLess}
	if before != "" {
		h.less = func(a, b *Cluster) bool { return keyLess(b, a) }
	}
	var p ClusterPage
	var rows []ClusterRow
	matched := 0
	f.each(q, func(_ *workspace, c *Cluster, _ string, _ api.ClusterInventory) {
		p.Total++
		k := keyOf(c)
		switch {
		case before != "" && k >= before:
			p.More = true
			return
		case before == "" && after != "" && k <= after:
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
			LastSeen: c.lastSeen(), Inventory: invs.get(c.inventory)}
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
