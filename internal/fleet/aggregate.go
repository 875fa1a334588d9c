package fleet

import (
	"slices"
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
	byInv map[invDoc]int
	// deps counts deployments by state; depClusters the clusters with any in that state.
	deps, depClusters [len(states)]int
}

func newAggCounts() aggCounts { return aggCounts{byInv: map[invDoc]int{}} }

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
	inv    invDoc
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

// aggRebuild counts every cluster afresh (after a load), with order holding them all in
// list order. The caller holds the write lock. The clusters are counted in the order given,
// which a load makes the order they lie in memory: in list order each could be a cache miss
// (a fleet's names need not follow the order it registered in).
func (f *Fleet) aggRebuild(clusters []*Cluster, order *btree.BTreeG[*Cluster], now time.Time) {
	f.agg = newAggIndex()
	f.agg.order = order
	var w *workspace
	for _, c := range clusters {
		if w == nil || w.name != c.Namespace {
			w = f.workspaces[c.Namespace]
		}
		c.agg = aggIn{}
		f.aggUpdate(w, c, now)
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
	if q.CountLabel != "" {
		o.ByLabel = map[string]int{}
	}
	sum := f.sumCounts(q, func(g *aggGroup) {
		if q.CountLabel != "" {
			v, ok := g.labels[q.CountLabel]
			if !ok {
				v = "-"
			}
			o.ByLabel[v] += g.n
		}
	})
	o.Total = sum.n
	for i, s := range stateSlots {
		if sum.state[i] > 0 {
			o.ByState[s] = sum.state[i]
		}
	}
	invs := inventories{}
	for doc, n := range sum.byInv {
		inv := invs.get(invJSON(doc))
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

// sumCounts adds up the counts of the groups an indexed query selects, calling each (if
// given) with every one of them; the whole fleet's are kept as one. The caller holds the read
// lock.
func (f *Fleet) sumCounts(q ClusterQuery, each ...func(*aggGroup)) aggCounts {
	whole := q.Namespace == "" && (q.Selector == nil || q.Selector.Empty()) && q.View == nil
	if whole && len(each) == 0 {
		return f.agg.all
	}
	sum := newAggCounts()
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
		for _, fn := range each {
			fn(g)
		}
	}
	return sum
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

// countOf answers how many clusters q selects without a pass; ok is false when it cannot.
// From the counts: a query narrowed by workspace, selector and a view on labels, and by
// either one of State and Reason or any of KubernetesVersion, Architecture and AgentVersion.
// With a name prefix: by walking the prefix's range of the index. The caller holds the read
// lock.
func (f *Fleet) countOf(q ClusterQuery, now time.Time) (n int, ok bool) {
	if q.View != nil && !q.ViewByLabels {
		return 0, false
	}
	if q.NamePrefix != "" {
		match := f.matcher(q, now)
		f.walk(q, "", "", func(w *workspace, c *Cluster) bool {
			if match(w, c) {
				n++
			}
			return true
		})
		return n, true
	}
	base := q
	base.State, base.KubernetesVersion, base.Architecture, base.AgentVersion, base.Reason, base.CountLabel = "", "", "", "", "", ""
	byInv := q.KubernetesVersion != "" || q.Architecture != "" || q.AgentVersion != ""
	switch {
	case q.State != "" && q.Reason != "", (q.State != "" || q.Reason != "") && byInv:
		return 0, false
	case byInv:
		sum := f.sumCounts(base)
		invs := inventories{}
		for doc, k := range sum.byInv {
			inv := invs.get(invJSON(doc))
			if (q.KubernetesVersion == "" || orNone(inv.KubernetesVersion) == q.KubernetesVersion) &&
				(q.Architecture == "" || orNone(inv.Architecture) == q.Architecture) &&
				(q.AgentVersion == "" || orNone(inv.AgentVersion) == q.AgentVersion) {
				n += k
			}
		}
		return n, true
	}
	o := f.overviewFromCounts(base)
	switch {
	case q.State != "":
		return o.ByState[q.State], true
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
			inv := p.invs.get(invJSON(c.inventory))
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

// walk visits the clusters of q's workspace (or of all, in order) whose names start with q's
// prefix, in list order from after (or, with before set, backwards from before), while fn
// answers true. The caller holds the read lock.
func (f *Fleet) walk(q ClusterQuery, after, before string, fn func(w *workspace, c *Cluster) bool) {
	nss := []string{q.Namespace}
	if q.Namespace == "" {
		nss = nss[:0]
		for ns := range f.workspaces {
			nss = append(nss, ns)
		}
		slices.Sort(nss)
	}
	if before != "" {
		slices.Reverse(nss)
	}
	var lo, hi *Cluster
	if after != "" {
		lo = boundOf(after)
	}
	if before != "" {
		hi = boundOf(before)
	}
	for _, ns := range nss {
		w := f.workspaces[ns]
		if w == nil {
			continue
		}
		more := true
		in := func(c *Cluster) bool {
			if c.Namespace != ns || !strings.HasPrefix(c.Name, q.NamePrefix) {
				return false // past the workspace or the prefix: names with it are together
			}
			more = fn(w, c)
			return more
		}
		if before != "" {
			// The last name with the prefix sorts before the prefix and a byte above any in a
			// name.
			top := &Cluster{Namespace: ns, Name: q.NamePrefix + "\xff"}
			if keyLess(hi, top) {
				top = hi
			}
			f.agg.order.DescendLessOrEqual(top, func(c *Cluster) bool {
				if !keyLess(c, hi) {
					return true // the bound itself
				}
				return in(c)
			})
		} else {
			start := &Cluster{Namespace: ns, Name: q.NamePrefix}
			if lo != nil && keyLess(start, lo) {
				start = lo
			}
			f.agg.order.AscendGreaterOrEqual(start, func(c *Cluster) bool {
				if lo != nil && !keyLess(lo, c) {
					return true // the bound itself
				}
				return in(c)
			})
		}
		if !more {
			return
		}
	}
}

// listInOrder answers a page by walking the index from the page's key: it visits clusters
// until it has limit+1 that q selects, or as many as total says there are, so a page of a
// common filter costs about the page, one of a rare filter the clusters it skips. The caller
// holds the read lock.
func (f *Fleet) listInOrder(q ClusterQuery, after, before string, limit, total int, now time.Time) (cs []*Cluster, more, earlier bool) {
	if total == 0 {
		return nil, false, false
	}
	match := f.matcher(q, now)
	first := after == "" && before == ""
	f.walk(q, after, before, func(w *workspace, c *Cluster) bool {
		if !match(w, c) {
			return true
		}
		cs = append(cs, c)
		// From the start, no more than total can match: the walk stops there.
		return len(cs) <= limit && !(first && len(cs) >= total)
	})
	if before != "" {
		earlier, more = len(cs) > limit, true
		if earlier {
			cs = cs[:limit]
		}
		slices.Reverse(cs)
		return cs, more, earlier
	}
	more, earlier = len(cs) > limit, after != ""
	if more {
		cs = cs[:limit]
	}
	return cs, more, earlier
}
