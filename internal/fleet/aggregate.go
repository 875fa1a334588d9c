package fleet

import (
	"strings"
	"time"
	"unsafe"

	"github.com/google/btree"

	"flotilla.dev/api"
)

// The dashboard's counts, kept as the model changes rather than counted per page: one
// aggregate for the whole fleet and one per group of clusters that share a workspace and a
// label set (the model shares one label map between such clusters). An overview of the
// whole fleet then costs the number of distinct inventories, one narrowed by labels (a
// selector, or a user's bindings on labels) the number of groups, whatever the number of
// clusters. Each cluster remembers what it added (aggIn) so that a change moves exactly that.
//
// The cluster list keeps its clusters in a B-tree in (namespace, name) order, so that a page
// is a seek and a walk (keyset pagination), not a pass over the fleet.
//
// A cluster's state depends on time (Offline after a silence): the sweep, which already
// visits every cluster for that, moves it; a poll that ends a silence (under the read lock)
// is counted at the cluster's next report or sweep.

// stateSlots are the cluster states the counts distinguish, in their order.
var stateSlots = [...]string{api.StateReady, api.StateNotReady, "Offline", "Pending"}

func stateSlot(s string) uint8 {
	for i, st := range stateSlots {
		if st == s {
			return uint8(i)
		}
	}
	return 0
}

// aggCounts are the counts of a set of clusters.
type aggCounts struct {
	n, paused int
	state     [len(stateSlots)]int
	// byInv counts the clusters by inventory document (interned: a fleet has few).
	byInv map[string]int
	// deps counts deployments by state; depClusters the clusters with any in that state.
	deps, depClusters [len(states)]int
}

func newAggCounts() aggCounts { return aggCounts{byInv: map[string]int{}} }

// aggGroup is the counts of the clusters of one workspace with one shared label map.
type aggGroup struct {
	w      *workspace
	labels map[string]string
	aggCounts
}

type aggKey struct {
	w      *workspace
	labels unsafe.Pointer
}

// aggIn is what a cluster added to the counts.
type aggIn struct {
	g      *aggGroup
	inv    string
	state  uint8
	paused bool
	// mask has bit i set when the cluster had deployments in states[i].
	mask uint8
}

// aggIndex is the model's counts and order.
type aggIndex struct {
	all    aggCounts
	groups map[aggKey]*aggGroup
	order  *btree.BTreeG[*Cluster]
}

func newAggIndex() aggIndex {
	return aggIndex{all: newAggCounts(), groups: map[aggKey]*aggGroup{}, order: btree.NewG(32, keyLess)}
}

func (a *aggCounts) add(in aggIn, counts *stateCounts, d int) {
	a.n += d
	if in.paused {
		a.paused += d
	}
	a.state[in.state] += d
	if a.byInv[in.inv] += d; a.byInv[in.inv] == 0 {
		delete(a.byInv, in.inv)
	}
	for i := range states {
		if in.mask&(1<<i) != 0 {
			a.depClusters[i] += d
		}
		a.deps[i] += d * int(counts[i])
	}
}

func maskOf(counts *stateCounts) uint8 {
	var m uint8
	for i, n := range counts {
		if n > 0 {
			m |= 1 << i
		}
	}
	return m
}

// aggUpdate counts c as it is now, in place of what it added before. The caller holds the
// write lock.
func (f *Fleet) aggUpdate(w *workspace, c *Cluster, now time.Time) {
	in := aggIn{inv: c.inventory, state: stateSlot(f.clusterState(c, now)), paused: c.Paused, mask: maskOf(&c.counts)}
	k := aggKey{w, mapID(c.Labels)}
	if old := c.agg.g; old != nil && (aggKey{old.w, mapID(old.labels)} == k) {
		in.g = old
		if c.agg == in {
			return
		}
	}
	if in.g != nil {
		// The same group: taken out and counted again, never emptied and dropped meanwhile.
		in.g.add(c.agg, &c.counts, -1)
		f.agg.all.add(c.agg, &c.counts, -1)
		c.agg = aggIn{}
	} else {
		f.aggRemove(c)
	}
	if in.g == nil {
		in.g = f.agg.groups[k]
		if in.g == nil {
			in.g = &aggGroup{w: w, labels: c.Labels, aggCounts: newAggCounts()}
			f.agg.groups[k] = in.g
		}
	}
	in.g.add(in, &c.counts, 1)
	f.agg.all.add(in, &c.counts, 1)
	c.agg = in
}

// aggTouch counts c again if it is counted (a cluster being added or removed is not).
func (f *Fleet) aggTouch(c *Cluster) {
	if c.agg.g != nil {
		f.aggUpdate(c.agg.g.w, c, time.Now())
	}
}

// aggRemove takes what c added out of the counts. The caller holds the write lock.
func (f *Fleet) aggRemove(c *Cluster) {
	g := c.agg.g
	if g == nil {
		return
	}
	g.add(c.agg, &c.counts, -1)
	f.agg.all.add(c.agg, &c.counts, -1)
	if g.n == 0 {
		delete(f.agg.groups, aggKey{g.w, mapID(g.labels)})
	}
	c.agg = aggIn{}
}

// aggRecount follows a change of one deployment's state on c (recount): the deployment
// counts move at once; the cluster's state and masks with aggUpdate.
func (f *Fleet) aggRecount(c *Cluster, old, now string) {
	if g := c.agg.g; g != nil {
		for _, s := range [2]string{old, now} {
			if i := stateIndex(s); i >= 0 {
				d := 1
				if s == old {
					d = -1
				}
				g.deps[i] += d
				f.agg.all.deps[i] += d
			}
		}
	}
}

// aggRebuild counts every cluster afresh (after a load). The caller holds the write lock.
func (f *Fleet) aggRebuild(now time.Time) {
	f.agg = newAggIndex()
	for _, w := range f.workspaces {
		for _, c := range w.clusters {
			c.agg = aggIn{}
			f.agg.order.ReplaceOrInsert(c)
			f.aggUpdate(w, c, now)
		}
	}
}

// indexed says whether an overview of q can be read from the counts: q narrows the fleet by
// workspace, selector and a view on labels only.
func indexed(q ClusterQuery) bool {
	return (q.View == nil || q.ViewByLabels) && q.State == "" && q.KubernetesVersion == "" && q.Architecture == "" &&
		q.AgentVersion == "" && q.NamePrefix == "" && q.Reason == ""
}

// overviewFromCounts answers Overview for an indexed query. The caller holds the read lock.
func (f *Fleet) overviewFromCounts(q ClusterQuery) Overview {
	o := Overview{ByState: map[string]int{}, ByVersion: map[string]int{}, ByArch: map[string]int{}, ByAgent: map[string]int{},
		Attention: map[string]int{}, DeploymentsByState: map[string]int{}}
	sum := newAggCounts()
	whole := q.Namespace == "" && (q.Selector == nil || q.Selector.Empty()) && q.View == nil
	if q.CountLabel != "" {
		o.ByLabel = map[string]int{}
	}
	if whole && q.CountLabel == "" {
		sum = f.agg.all
	} else {
		p := &pass{q: q, sel: map[unsafe.Pointer]bool{}, view: map[[2]unsafe.Pointer]bool{}}
		for _, g := range f.agg.groups {
			if q.Namespace != "" && g.w.name != q.Namespace {
				continue
			}
			c := &Cluster{Namespace: g.w.name, Labels: g.labels}
			if !whole && (!p.selected(c) || !p.visible(f, g.w, c)) {
				continue
			}
			sum.plus(&g.aggCounts)
			if q.CountLabel != "" {
				v, ok := g.labels[q.CountLabel]
				if !ok {
					v = "-"
				}
				o.ByLabel[v] += g.n
			}
		}
	}
	o.Total = sum.n
	for i, s := range stateSlots {
		if sum.state[i] > 0 {
			o.ByState[s] = sum.state[i]
		}
	}
	invs := inventories{}
	for doc, n := range sum.byInv {
		inv := invs.get(doc)
		o.ByVersion[orNone(inv.KubernetesVersion)] += n
		o.ByArch[orNone(inv.Architecture)] += n
		o.ByAgent[orNone(inv.AgentVersion)] += n
	}
	for r, n := range map[string]int{ReasonOffline: sum.state[2], ReasonNeverConnected: sum.state[3], ReasonPaused: sum.paused} {
		if n > 0 {
			o.Attention[r] = n
		}
	}
	for i, s := range states {
		if sum.deps[i] > 0 {
			o.DeploymentsByState[s] = sum.deps[i]
		}
		if i > 0 && sum.depClusters[i] > 0 {
			o.Attention[ReasonDeployments+s] = sum.depClusters[i]
		}
	}
	return o
}

func (a *aggCounts) plus(b *aggCounts) {
	a.n += b.n
	a.paused += b.paused
	for i := range a.state {
		a.state[i] += b.state[i]
	}
	for k, v := range b.byInv {
		a.byInv[k] += v
	}
	for i := range a.deps {
		a.deps[i] += b.deps[i]
		a.depClusters[i] += b.depClusters[i]
	}
}

// countOf answers how many clusters an indexed query with at most one of State,
// KubernetesVersion, Architecture, AgentVersion and Reason selects, from the counts; ok is
// false for other queries. The caller holds the read lock.
func (f *Fleet) countOf(q ClusterQuery) (n int, ok bool) {
	base := q
	base.State, base.KubernetesVersion, base.Architecture, base.AgentVersion, base.Reason, base.CountLabel = "", "", "", "", "", ""
	if !indexed(base) {
		return 0, false
	}
	set := 0
	for _, v := range []string{q.State, q.KubernetesVersion, q.Architecture, q.AgentVersion, q.Reason} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		return 0, false
	}
	o := f.overviewFromCounts(base)
	switch {
	case q.State != "":
		return o.ByState[q.State], true
	case q.KubernetesVersion != "":
		return o.ByVersion[q.KubernetesVersion], true
	case q.Architecture != "":
		return o.ByArch[q.Architecture], true
	case q.AgentVersion != "":
		return o.ByAgent[q.AgentVersion], true
	case q.Reason != "":
		return o.Attention[q.Reason], true
	}
	return o.Total, true
}

// matcher answers whether a cluster is one q selects, as each does, for walks in order.
func (f *Fleet) matcher(q ClusterQuery, now time.Time) func(w *workspace, c *Cluster) bool {
	p := &pass{q: q, now: now, invs: inventories{}, sel: map[unsafe.Pointer]bool{}, view: map[[2]unsafe.Pointer]bool{}}
	byInv := q.KubernetesVersion != "" || q.Architecture != "" || q.AgentVersion != ""
	var rs []string
	return func(w *workspace, c *Cluster) bool {
		if (q.Namespace != "" && c.Namespace != q.Namespace) || (q.NamePrefix != "" && !strings.HasPrefix(c.Name, q.NamePrefix)) || !p.selected(c) {
			return false
		}
		state := f.clusterState(c, now)
		if q.State != "" && state != q.State {
			return false
		}
		if byInv {
			inv := p.invs.get(c.inventory)
			if (q.KubernetesVersion != "" && orNone(inv.KubernetesVersion) != q.KubernetesVersion) ||
				(q.Architecture != "" && orNone(inv.Architecture) != q.Architecture) ||
				(q.AgentVersion != "" && orNone(inv.AgentVersion) != q.AgentVersion) {
				return false
			}
		}
		if q.Reason != "" {
			rs = f.reasons(rs[:0], c, state)
			found := false
			for _, r := range rs {
				found = found || r == q.Reason
			}
			if !found {
				return false
			}
		}
		return p.visible(f, w, c)
	}
}

// listInOrder answers a page by walking the B-tree from the page's key: it visits the clusters
// from there until it has limit+1 that q selects, so a page of a common filter costs about
// the page, one of a rare filter the clusters it skips. The caller holds the read lock.
func (f *Fleet) listInOrder(q ClusterQuery, after, before string, limit int, now time.Time) (cs []*Cluster, more, earlier bool) {
	match := f.matcher(q, now)
	visit := func(c *Cluster) bool {
		w := f.workspaces[c.Namespace]
		if w == nil || !match(w, c) {
			return true
		}
		cs = append(cs, c)
		return len(cs) <= limit
	}
	start := &Cluster{Namespace: q.Namespace, Name: q.NamePrefix}
	switch {
	case before != "":
		f.agg.order.DescendLessOrEqual(boundOf(before), func(c *Cluster) bool {
			if !keyLess(c, boundOf(before)) {
				return true // the bound itself
			}
			return visit(c)
		})
		earlier = len(cs) > limit
		more = true
		if earlier {
			cs = cs[:limit]
		}
		for i, j := 0, len(cs)-1; i < j; i, j = i+1, j-1 {
			cs[i], cs[j] = cs[j], cs[i]
		}
	default:
		if after != "" {
			if b := boundOf(after); keyLess(start, b) {
				start = b
			}
		}
		f.agg.order.AscendGreaterOrEqual(start, func(c *Cluster) bool {
			if after != "" && !keyLess(boundOf(after), c) {
				return true
			}
			if q.Namespace != "" && c.Namespace != q.Namespace {
				return false // past the workspace
			}
			return visit(c)
		})
		more = len(cs) > limit
		earlier = after != ""
		if more {
			cs = cs[:limit]
		}
	}
	return cs, more, earlier
}
