package fleet

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/resource"
)

// Rollouts. When a bundle changes, a cluster that ran the previous version keeps it (the
// pair is "held") until the rollout admits the cluster. Clusters are split into partitions —
// the bundle's own, in order, then automatic ones of autoPartitionSize — and admitted
// partition by partition while no more than maxUnavailable clusters are unavailable; a
// partition with more unavailable clusters than its own maxUnavailable counts as unavailable,
// and more than maxUnavailablePartitions of those stops the rollout, with the clusters at
// fault named in the bundle's status. Defaults are Fleet's.

// autoPartitionThreshold: below this many clusters, automatic partitioning makes one
// partition.
const autoPartitionThreshold = 200

type rolloutStatus struct {
	partitions []api.PartitionStatus
	stalled    string
}

// staged reports whether a change of b must roll out gradually. With Fleet's defaults
// (everything may be unavailable, no partitions) it is immediate.
func staged(b *bundleEntry) bool {
	rs := b.spec.RolloutStrategy
	if rs == nil {
		return false
	}
	if len(rs.Partitions) > 0 {
		return true
	}
	return rs.MaxUnavailable != nil && string(*rs.MaxUnavailable) != "100%"
}

// scaled resolves v (def if unset or malformed) against total: a count as is (at least 0), a
// percentage (taken from 0 to 100%) of total rounded up. Clamping a percentage first keeps
// a huge one from overflowing into a negative count.
func scaled(v *api.IntOrString, def string, total int) int {
	x := def
	if v != nil {
		x = string(*v)
	}
	n, ok := scale(x, total)
	if !ok {
		n, _ = scale(def, total)
	}
	return n
}

func scale(s string, total int) (int, bool) {
	total = max(total, 0)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, false
		}
		n = min(max(n, 0), 100)
		return (n*total + 99) / 100, true
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, false
	}
	return max(n, 0), true
}

type partition struct {
	name           string
	maxUnavailable int
	clusters       []*Cluster
}

// partitions splits the clusters b targets, in rollout order.
func (f *Fleet) partitions(w *workspace, b *bundleEntry) []*partition {
	rs := b.spec.RolloutStrategy
	var targeted []*Cluster
	for _, c := range w.clusters {
		if p := c.deps.get(b.name); p != nil && p.target >= 0 {
			targeted = append(targeted, c)
		}
	}
	sort.Slice(targeted, func(i, j int) bool { return targeted[i].Name < targeted[j].Name })
	var parts []*partition
	var rest []*Cluster
	if rs != nil && len(rs.Partitions) > 0 {
		type crit struct {
			p   *partition
			sel labels.Selector
			gs  labels.Selector
			def api.Partition
		}
		var crits []crit
		for i, pd := range rs.Partitions {
			name := pd.Name
			if name == "" {
				name = fmt.Sprintf("partition%d", i)
			}
			cr := crit{p: &partition{name: name}, def: pd}
			if pd.ClusterSelector != nil {
				cr.sel, _ = resource.Selector(pd.ClusterSelector)
			}
			if pd.ClusterGroupSelector != nil {
				cr.gs, _ = resource.Selector(pd.ClusterGroupSelector)
			}
			crits = append(crits, cr)
			parts = append(parts, cr.p)
		}
	next:
		for _, c := range targeted {
			view := f.clusterView(w, c)
			for _, cr := range crits {
				if matchPartition(cr.def, cr.sel, cr.gs, c, view) {
					cr.p.clusters = append(cr.p.clusters, c)
					continue next
				}
			}
			rest = append(rest, c)
		}
		for i, cr := range crits {
			parts[i].maxUnavailable = scaled(cr.def.MaxUnavailable, "10%", len(parts[i].clusters))
		}
	} else {
		rest = targeted
	}
	if len(rest) > 0 {
		size := len(rest)
		if len(rest) >= autoPartitionThreshold {
			var ps *api.IntOrString
			if rs != nil {
				ps = rs.AutoPartitionSize
			}
			size = max(1, scaled(ps, "25%", len(rest)))
		}
		for i := 0; i < len(rest); i += size {
			p := &partition{name: fmt.Sprintf("auto-partition-%d", i/size), clusters: rest[i:min(i+size, len(rest))]}
			p.maxUnavailable = scaled(nil, "10%", len(p.clusters))
			parts = append(parts, p)
		}
	}
	return parts
}

func matchPartition(d api.Partition, sel, gsel labels.Selector, c *Cluster, view bundle.Cluster) bool {
	if d.ClusterName == "" && sel == nil && d.ClusterGroup == "" && gsel == nil {
		return false
	}
	if d.ClusterName != "" && d.ClusterName != c.Name {
		return false
	}
	if sel != nil && !sel.Matches(labels.Set(c.Labels)) {
		return false
	}
	if d.ClusterGroup != "" || gsel != nil {
		ok := false
		for g, gl := range view.Groups {
			if (d.ClusterGroup == "" || d.ClusterGroup == g) && (gsel == nil || gsel.Matches(labels.Set(gl))) {
				ok = true
			}
		}
		return ok
	}
	return true
}

// rollout admits held clusters as far as the strategy allows. It runs after a bundle
// changes and whenever status arrives (on the status tick).
func (f *Fleet) rollout(w *workspace, b *bundleEntry) {
	parts := f.partitions(w, b)
	total := 0
	unavailable := 0
	for _, p := range parts {
		total += len(p.clusters)
		for _, c := range p.clusters {
			if !c.deps.get(b.name).available() {
				unavailable++
			}
		}
	}
	var rs api.RolloutStrategy
	if b.spec.RolloutStrategy != nil {
		rs = *b.spec.RolloutStrategy
	}
	maxUnavailable := max(1, scaled(rs.MaxUnavailable, "100%", total))
	maxUnavailableParts := scaled(rs.MaxUnavailablePartitions, "0", len(parts))
	st := rolloutStatus{}
	unavailableParts := 0
	stop := false
	held := 0
	for _, p := range parts {
		ps := api.PartitionStatus{Name: p.name, Count: len(p.clusters), MaxUnavailable: p.maxUnavailable}
		for _, c := range p.clusters {
			pr := c.deps.get(b.name)
			if pr.held != nil && !stop && unavailable < maxUnavailable {
				old := pr.effective()
				wasAvailable := pr.available()
				pr.held = nil
				f.recount(b, c, old, pr.effective())
				f.bump(c)
				if wasAvailable && !pr.available() {
					unavailable++
				}
			}
			if pr.held != nil {
				held++
			}
			if pr.available() {
				ps.Ready++
			} else {
				ps.Unavailable++
			}
		}
		st.partitions = append(st.partitions, ps)
		if stop {
			continue
		}
		partHeld := false
		for _, c := range p.clusters {
			if c.deps.get(b.name).held != nil {
				partHeld = true
				break
			}
		}
		if ps.Unavailable > p.maxUnavailable {
			unavailableParts++
		}
		// The next partition starts only when this one is fully admitted and the number of
		// unavailable partitions is within bounds.
		if partHeld {
			stop = true
		} else if unavailableParts > maxUnavailableParts && held+countHeldAfter(parts, p, b) > 0 {
			stop = true
			st.stalled = stallMessage(b, p, ps, unavailableParts, maxUnavailableParts)
		}
	}
	if held == 0 {
		b.rolling = false
	}
	b.rollout = st
	f.dirtyBundles[b] = struct{}{}
}

func countHeldAfter(parts []*partition, after *partition, b *bundleEntry) int {
	n := 0
	seen := false
	for _, p := range parts {
		if seen {
			for _, c := range p.clusters {
				if c.deps.get(b.name).held != nil {
					n++
				}
			}
		}
		if p == after {
			seen = true
		}
	}
	return n
}

func stallMessage(b *bundleEntry, p *partition, ps api.PartitionStatus, n, allowed int) string {
	var bad []string
	for _, c := range p.clusters {
		pr := c.deps.get(b.name)
		if !pr.available() {
			s := c.Name + " (" + pr.effective()
			if pr.message != "" {
				s += ": " + pr.message
			}
			bad = append(bad, s+")")
		}
		if len(bad) == 5 {
			break
		}
	}
	return fmt.Sprintf("rollout waiting: partition %s has %d unavailable clusters (at most %d allowed) and %d partitions are unavailable (at most %d): %s",
		p.name, ps.Unavailable, p.maxUnavailable, n, allowed, strings.Join(bad, ", "))
}

// blocked says why b's first deployment on c waits for its dependencies, or "".
func (f *Fleet) blocked(w *workspace, b *bundleEntry, c *Cluster) string {
	for _, dep := range b.spec.DependsOn {
		accepted := dep.AcceptedStates
		if len(accepted) == 0 {
			accepted = []string{api.StateReady}
		}
		var names []string
		if dep.Name != "" {
			names = append(names, dep.Name)
		}
		if dep.Selector != nil {
			sel, err := resource.Selector(dep.Selector)
			if err != nil {
				return "invalid dependsOn selector"
			}
			for n, d := range w.bundles {
				if n != b.name && sel.Matches(labels.Set(d.labels)) {
					names = append(names, n)
				}
			}
		}
		for _, n := range names {
			p := c.deps.get(n)
			if p == nil || !slices.Contains(accepted, p.effective()) {
				return "waiting for dependency " + n
			}
		}
	}
	return ""
}

// dependents re-offers c its bundles that depend on name: their readiness may have changed.
func (f *Fleet) dependents(w *workspace, c *Cluster, name string) {
	for _, b := range w.bundles {
		if len(b.spec.DependsOn) == 0 {
			continue
		}
		if p := c.deps.get(b.name); p == nil || p.target < 0 || p.reportedID != "" {
			continue
		}
		for _, dep := range b.spec.DependsOn {
			if dep.Name == name || dep.Selector != nil {
				f.bump(c)
				return
			}
		}
	}
}
