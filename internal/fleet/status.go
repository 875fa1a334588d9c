package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// maxNonReady bounds the examples of non-ready deployments a summary lists.
const maxNonReady = 10

// maxClusterWrites bounds the Cluster status writes of one pass; statusWriters is how many
// run at once.
const (
	maxClusterWrites = 5000
	statusWriters    = 16
)

// writeStatusLoop writes rolled-up status to Bundles, Clusters and ClusterGroups. Rollups
// are kept incrementally in memory; this only writes the ones that changed.
func (f *Fleet) writeStatusLoop(ctx context.Context) {
	t := time.NewTicker(f.cfg.StatusInterval)
	defer t.Stop()
	lastSweep := time.Now()
	// A load leaves every rollup dirty; a replica that starts leading later marks them.
	wasLeading := f.leading()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f.ready.Load() {
			return // a reload starts a new loop
		}
		if lead := f.leading(); lead != wasLeading {
			if lead {
				f.markAllDirty()
			}
			wasLeading = lead
		}
		now := time.Now()
		if now.Sub(lastSweep) > f.sweepInterval() {
			f.sweep(now)
			lastSweep = now
		}
		start := time.Now()
		f.flush(ctx, now)
		if f.cfg.Observe != nil {
			f.cfg.Observe("fleet-status", time.Since(start), nil)
		}
	}
}

// Stats counts clusters, bundles and deployments by state, for metrics. The clusters come
// from the dashboard's kept counts (a state that changes with time alone moves at the next
// sweep), not a pass over the fleet: that was ~0.3 s of CPU under the read lock per scrape
// at 1M clusters.
func (f *Fleet) Stats() (clusters, bundles, deployments map[string]int, queue int) {
	clusters, bundles, deployments = map[string]int{}, map[string]int{}, map[string]int{}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for i, n := range f.agg.all.state {
		if n > 0 {
			clusters[stateSlots[i]] = n
		}
	}
	for _, w := range f.workspaces {
		for _, b := range w.bundles {
			state := api.StateReady
			switch {
			case b.rolling:
				state = "Rolling"
			case b.counts[api.StateReady] < b.desired:
				state = api.StateNotReady
			}
			bundles[state]++
			for s, n := range b.counts {
				deployments[s] += n
			}
		}
	}
	return clusters, bundles, deployments, len(f.dirtyBundles) + f.dirtyClusters.len() + len(f.dirtyGroups)
}

// sweepInterval is how often sweep runs: a tenth of the time after which a silent cluster
// is Offline, between 5 s and 2 min. A sweep visits every cluster under the model's write
// lock (~0.3 s at 1M clusters); every 5 s it took 15% of an idle 1M fleet's server CPU.
func (f *Fleet) sweepInterval() time.Duration {
	return min(max(f.offlineAfter()/10, 5*time.Second), 2*time.Minute)
}

// sweepChunk is how many clusters a sweep visits per hold of the model's write lock. A
// whole sweep of 1M clusters held it for ~0.3 s of CPU, and every poll, ping answer and
// proxied call waited meanwhile (a cold tunnel's first byte took 396 ms at 1M, 15–29 ms at
// 10,000 clusters).
const sweepChunk = 4096

// sweepYield, when set (tests), runs each time a sweep lets go of the lock.
var sweepYield func()

// sweep marks clusters whose state changed with time alone (gone offline, or due a lastSeen
// refresh). It lets go of the lock between chunks of clusters: each cluster is marked on its
// own, and the maps' iteration is defined when they change between two steps (a cluster
// removed meanwhile is not visited, one added may be or not: the next sweep has it). A load
// meanwhile (new maps, new clusters) ends the sweep.
func (f *Fleet) sweep(now time.Time) {
	res := f.seenResolution()
	f.mu.Lock()
	defer f.mu.Unlock()
	loaded := f.loadedAt.Load()
	// A project's total may have changed since its usage did: its status is computed again
	// (and written only if it differs).
	for p := range f.usage {
		f.dirtyProjects[p] = struct{}{}
	}
	n := 0
	for _, w := range f.workspaces {
		for _, c := range w.clusters {
			state := f.clusterState(c, now)
			if c.agg.g != nil && stateSlot(state) != c.agg.state {
				f.aggUpdate(w, c, now)
			}
			if seen := c.lastSeen(); codeOf(state) != c.state || (!seen.IsZero() && seen.Sub(c.storedSeenAt()) > res) {
				f.dirtyClusters.add(c)
			}
			if n++; n%sweepChunk == 0 {
				f.mu.Unlock()
				if sweepYield != nil {
					sweepYield()
				}
				f.mu.Lock()
				if f.loadedAt.Load() != loaded {
					return
				}
			}
		}
	}
}

// offlineAfter is how long a cluster may go unseen before it is Offline: OfflineAfter, or
// three poll (or ping) intervals when the budgets have stretched them further (at 1M
// clusters agents poll every ~500 s; they must not count as Offline between two polls).
func (f *Fleet) offlineAfter() time.Duration {
	return max(f.cfg.OfflineAfter, 3*f.seenInterval())
}

// loadGrace says whether c, not heard from since the model loaded, keeps the state it
// was stored with: the stored lastSeen is coarse (refreshed every seenResolution, hours at
// 1M clusters), so after a restart the whole fleet would turn Offline at the first sweep,
// and back as it called again, two status writes per cluster. Until one offline period
// after the load it is Offline only if it was stored Offline.
func (f *Fleet) loadGrace(c *Cluster, now time.Time) bool {
	l := f.loadedAt.Load()
	return l != 0 && c.seen.Load() < l && now.UnixNano()-l < int64(f.offlineAfter()) &&
		c.state != 0 && c.state != codeOffline && c.state != codePending
}

func (f *Fleet) clusterState(c *Cluster, now time.Time) string {
	switch {
	case c.seen.Load() == 0:
		return "Pending"
	case now.Sub(c.lastSeen()) > f.offlineAfter() && !f.loadGrace(c, now):
		return "Offline"
	}
	if c.counts.notReady() {
		return api.StateNotReady
	}
	return api.StateReady
}

func summary(counts map[string]int, desired int) *api.Summary {
	return &api.Summary{
		DesiredReady: desired, Ready: counts[api.StateReady], NotReady: counts[api.StateNotReady],
		Modified: counts[api.StateModified], WaitApplied: counts[api.StateWaitApplied], ErrApplied: counts[api.StateErrApplied],
		OutOfSync: counts[api.StateOutOfSync], Pending: counts[api.StatePending],
	}
}

type pendingWrite struct {
	key    store.Key
	status any
	// field, if set, is the one status field written; the rest belongs to another
	// controller and is kept.
	field string
	// stored is the hash of the stored status, if known: a whole status equal to it is
	// not written (nor read back).
	stored uint64
	// onDone records what was written, under the model's lock.
	onDone func()
	// statusOf, if set, computes the status from the stored object (its spec).
	statusOf func(obj *api.Object) (any, error)
	// cluster, for a whole Cluster status, is the cluster written: the hash of what is
	// written is its statusHash from before the write, so that the watch's event of this
	// write is known as its own. Taken for another's write, it would mark the cluster dirty
	// again; a status always differs from the last (its lastSeen moves with every poll and
	// ping), so every write would bring another, for ever.
	cluster *Cluster
}

// flush computes the changed rollups under the lock, then writes them without it.
func (f *Fleet) flush(ctx context.Context, now time.Time) {
	var writes []pendingWrite
	f.mu.Lock()
	for _, w := range f.workspaces {
		for _, b := range w.bundles {
			if b.rolling {
				f.rollout(w, b)
			}
		}
	}
	if !f.leading() {
		clear(f.dirtyBundles)
		clear(f.dirtyGroups)
		clear(f.dirtyProjects)
		writes = f.followerWrites()
		f.mu.Unlock()
		f.write(ctx, writes)
		return
	}
	repos := map[[2]string]bool{}
	for b := range f.dirtyBundles {
		if r := b.labels[LabelGitRepo]; r != "" {
			repos[[2]string{b.ns, r}] = true
		}
		s := summary(b.counts, b.desired)
		var examples []api.NonReadyResource
		for c := range b.notReady {
			p := c.deps.get(b.name)
			if p == nil {
				continue
			}
			examples = append(examples, api.NonReadyResource{Name: c.Name, State: p.effective(), Message: p.message})
			if len(examples) >= maxNonReady {
				break
			}
		}
		sort.Slice(examples, func(i, j int) bool { return examples[i].Name < examples[j].Name })
		s.NonReadyResources = examples
		st := api.BundleStatus{ObservedGeneration: b.generation, Summary: s, Partitions: b.rollout.partitions}
		ready := "True"
		msg := ""
		if b.err != "" {
			ready, msg = "False", b.err
		} else if b.rollout.stalled != "" {
			ready, msg = "False", b.rollout.stalled
		} else if s.Ready < s.DesiredReady {
			ready = "False"
			if len(examples) > 0 {
				msg = examples[0].State + ": " + examples[0].Name
				if examples[0].Message != "" {
					msg += ": " + examples[0].Message
				}
			}
		}
		st.Conditions = []api.Condition{{Type: "Ready", Status: ready, Message: msg}}
		writes = append(writes, pendingWrite{key: store.Key{Kind: api.KindBundle, Namespace: b.ns, Name: b.name}, status: st})
	}
	clear(f.dirtyBundles)
	// A GitRepo's summary adds up its bundles', with a few of their non-ready clusters.
	for r := range repos {
		w := f.workspaces[r[0]]
		if w == nil {
			continue
		}
		counts := map[string]int{}
		desired := 0
		var examples []api.NonReadyResource
		for _, b := range w.bundles {
			if b.labels[LabelGitRepo] != r[1] {
				continue
			}
			for st, n := range b.counts {
				counts[st] += n
			}
			desired += b.desired
			for c := range b.notReady {
				if len(examples) >= maxNonReady {
					break
				}
				if p := c.deps.get(b.name); p != nil {
					examples = append(examples, api.NonReadyResource{Name: b.name + "/" + c.Name, State: p.effective(), Message: p.message})
				}
			}
		}
		sum := summary(counts, desired)
		sort.Slice(examples, func(i, j int) bool { return examples[i].Name < examples[j].Name })
		sum.NonReadyResources = examples
		writes = append(writes, pendingWrite{key: store.Key{Kind: api.KindGitRepo, Namespace: r[0], Name: r[1]}, status: sum, field: "summary"})
	}
	n := 0
	// Bound a pass: the rest stay dirty for the next one, so bundle rollups never wait
	// behind a flood of cluster writes.
	for ; n < maxClusterWrites; n++ {
		c := f.dirtyClusters.pop()
		if c == nil {
			break
		}
		state := f.clusterState(c, now)
		counts, total := c.counts.asMap()
		s := summary(counts, total)
		var names []string
		for _, p := range c.deps {
			if e := p.effective(); e != "" && e != api.StateReady {
				names = append(names, p.bundle)
			}
		}
		sort.Strings(names)
		for _, n := range names[:min(len(names), maxNonReady)] {
			p := c.deps.get(n)
			s.NonReadyResources = append(s.NonReadyResources, api.NonReadyResource{Name: n, State: p.effective(), Message: p.message})
		}
		st := api.ClusterStatus{State: state, Summary: s}
		if cond := accessCondition(c); cond != nil {
			st.Conditions = append(st.Conditions, *cond)
		}
		if inv := invJSON(c.inventory); inv != "" {
			st.Inventory = &api.ClusterInventory{}
			json.Unmarshal([]byte(inv), st.Inventory)
		}
		seen := c.lastSeen()
		if !seen.IsZero() {
			t := seen.UTC().Truncate(time.Second)
			st.LastSeen = &t
		}
		writes = append(writes, pendingWrite{key: store.Key{Kind: api.KindCluster, Namespace: c.Namespace, Name: c.Name}, status: st, stored: c.statusHash,
			cluster: c, onDone: func() { c.state = codeOf(state); c.setStoredSeen(seen) }})
	}
	for ns := range f.dirtyGroups {
		w := f.workspaces[ns]
		if w == nil {
			continue
		}
		for _, g := range w.groups {
			var st api.ClusterGroupStatus
			for _, c := range w.clusters {
				if g.selector.Matches(labels.Set(c.Labels)) {
					st.ClusterCount++
					if f.clusterState(c, now) != api.StateReady {
						st.NonReadyClusterCount++
					}
				}
			}
			writes = append(writes, pendingWrite{key: store.Key{Kind: api.KindClusterGroup, Namespace: ns, Name: g.name}, status: st})
		}
	}
	clear(f.dirtyGroups)
	writes = append(writes, f.projectWrites(now)...)
	f.mu.Unlock()
	f.write(ctx, writes)
}

// write makes the writes of a pass.
func (f *Fleet) write(ctx context.Context, writes []pendingWrite) {
	// Several writers at once, so the store's batching writer groups them into few
	// transactions.
	work := make(chan pendingWrite)
	var wg sync.WaitGroup
	for range min(statusWriters, len(writes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pw := range work {
				if err := f.writeStatus(ctx, pw); err != nil {
					if ctx.Err() == nil && !errors.Is(err, store.ErrNotFound) {
						f.log.Warn("writing status", "object", pw.key.String(), "err", err)
					}
					continue
				}
				if pw.onDone != nil {
					f.mu.Lock()
					pw.onDone()
					f.mu.Unlock()
				}
			}
		}()
	}
	for _, pw := range writes {
		work <- pw
	}
	close(work)
	wg.Wait()
}

// writeStatus replaces an object's status, or one field of it, if it differs. A whole
// status whose hash matches the stored one's is not read back at all.
func (f *Fleet) writeStatus(ctx context.Context, pw pendingWrite) error {
	key, field := pw.key, pw.field
	value, err := json.Marshal(pw.status)
	if err != nil {
		return err
	}
	if field == "" && pw.statusOf == nil && pw.stored != 0 && statusHash(value) == pw.stored {
		return nil
	}
	for attempt := 0; attempt < 3; attempt++ {
		obj, err := f.st.Get(ctx, key)
		if err != nil {
			return err
		}
		raw := value
		if pw.statusOf != nil {
			st, err := pw.statusOf(obj)
			if err != nil {
				return err
			}
			if raw, err = json.Marshal(st); err != nil {
				return err
			}
		}
		if field != "" {
			m := map[string]json.RawMessage{}
			if len(obj.Status) > 0 {
				json.Unmarshal(obj.Status, &m)
			}
			m[field] = value
			raw, _ = json.Marshal(m)
		}
		if string(obj.Status) == string(raw) {
			return nil
		}
		obj.Status = raw
		own := pw.cluster != nil // set only for a whole Cluster status
		if own {
			f.mu.Lock()
			pw.cluster.statusHash = statusHash(raw)
			f.mu.Unlock()
		}
		_, err = f.st.Update(ctx, obj)
		if err != nil && own {
			// Not written: what is stored is unknown again, so the next pass reads it
			// rather than skip a status that only this write would have stored.
			f.mu.Lock()
			pw.cluster.statusHash = 0
			f.mu.Unlock()
		}
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return store.ErrConflict
}
