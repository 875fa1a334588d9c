package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"time"

	"github.com/google/btree"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/gcpace"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// Run loads the model and keeps it current until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	collected := make(chan struct{})
	close(collected)
	for {
		// The load's percent is kept until its garbage is collected (below). A reload waits
		// for the last load's collection: its restore of the percent would otherwise
		// interleave with this load's raising it, and could leave the percent raised.
		<-collected
		restoreGC := gcpace.AtLeast(loadGCPercent)
		if counts, err := f.st.Count(ctx); err == nil {
			// Room for all the load allocates: no collection while it builds.
			restoreRoom := gcpace.Room(uint64(counts[api.KindCluster]) * loadBytesPerCluster)
			restorePercent := restoreGC
			restoreGC = func() { restoreRoom(); restorePercent() }
		}
		rev, err := f.load(ctx)
		if err != nil {
			restoreGC()
			if ctx.Err() != nil {
				return nil
			}
			f.log.Error("loading the fleet model", "err", err)
			select {
			case <-time.After(2 * time.Second):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		f.ready.Store(true)
		// The load's garbage (more than the model it built) would otherwise stay resident
		// until the runtime's scavenger returns it, slowly; this collects it and gives it
		// back now. Its collection would come soon anyway: the heap grew tenfold since the
		// last one. It runs under the load's percent: at the usual one the heap is far past
		// its goal, and every request served meanwhile would pay for the collection in
		// assists (at 1M the first request after a restart took 0.6-0.8 s, where it takes
		// 10 ms so).
		c := make(chan struct{})
		collected = c
		go func() {
			defer close(c)
			debug.FreeOSMemory()
			restoreGC()
		}()
		go f.writeStatusLoop(ctx)
		fctx, stopStatus := context.WithCancel(ctx)
		statusDone := make(chan struct{})
		go func() {
			defer close(statusDone)
			if f.cfg.Replicated {
				f.followStatus(fctx)
			}
		}()
		err = f.follow(ctx, rev)
		stopStatus()
		<-statusDone
		if ctx.Err() != nil {
			return nil
		}
		// History we needed was compacted away: start over from a fresh load.
		f.log.Warn("fleet model lost its watch; reloading", "err", err)
		f.ready.Store(false)
	}
}

// scan streams every object of a kind at one revision.
func (f *Fleet) scan(ctx context.Context, kind string, rev *int64, fn func(json.RawMessage) error) error {
	opts := store.ListOptions{Kind: kind, Limit: 5000}
	for {
		res, err := f.st.List(ctx, opts)
		if err != nil {
			return fmt.Errorf("listing %s: %w", kind, err)
		}
		if *rev == 0 {
			*rev = res.Revision
		}
		for _, it := range res.Items {
			if err := fn(it); err != nil {
				return err
			}
		}
		if res.Continue == "" {
			return nil
		}
		opts.Continue = res.Continue
	}
}

func (f *Fleet) load(ctx context.Context) (int64, error) {
	start := time.Now()
	// A load allocates ~2.5 times what it keeps, all of it while the live heap grows from
	// nothing: at the usual GOGC the collector ran ten times at 200k clusters, marking the
	// growing model in each, a fifth to a third of the load's CPU. A higher GOGC meanwhile
	// lets it run two or three times (the heap still bounded by a multiple of what is live);
	// the garbage is given back after the load (Run). Run raises it already, and holds it
	// past the load; this is for callers of load alone (tests, benchmarks).
	defer gcpace.AtLeast(loadGCPercent)()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loadedAt.Store(start.UnixNano())
	f.workspaces = map[string]*workspace{}
	f.byUID = map[string]*Cluster{}
	// Clusters of a model before this one (a reload) are written no more: the clusters
	// loaded are marked as they are targeted, or by the sweep when their state changed.
	f.dirtyClusters.clear()
	// Deployment statuses are read on a second connection while the clusters are: at a
	// million clusters each scan takes seconds, and readers of either store do not block
	// each other. The rows are joined to their clusters afterwards.
	//
	// Report sequences are not read: the store keeps a cluster's reports in order itself
	// (PutStatus refuses one older than the stored one), so a model that does not know a
	// cluster's sequence only lets a resent report be written again, the same rows, where
	// it would have dropped it. Reading them cost a scan and a join of a million rows, a
	// fifth of a restart's CPU.
	type statusRow struct {
		uid, bundle, id, state, message string
	}
	var statuses chunked[statusRow]
	// Reports stored after this are read again by the status follower: taking one twice
	// is harmless, missing one is not.
	statusRev, err := f.st.StatusRevision(ctx)
	if err != nil {
		return 0, err
	}
	var side errgroup.Group
	side.Go(func() error {
		return f.st.ScanStatus(ctx, func(r store.DeploymentStatus) error {
			if _, bname, ok := splitKey(r.Bundle); ok {
				statuses.add(statusRow{r.Cluster, bname, r.ID, r.State, r.Message})
			}
			return nil
		})
	})
	// An early return still waits for the scan, which appends to this call's slice.
	defer side.Wait()
	var loaded []*Cluster
	if counts, err := f.st.Count(ctx); err == nil {
		// Growing a map of a million entries step by step costs seconds of rehashing.
		f.byUID = make(map[string]*Cluster, counts[api.KindCluster])
		loaded = make([]*Cluster, 0, counts[api.KindCluster])
	}
	// The map of UIDs and the count of each workspace's clusters are made on the other core,
	// in batches, while the clusters are read: the status scan there ends first, and the
	// inserts (each a cache miss in a map of a million) were a sixth of the reading.
	batches := make(chan []*Cluster, 256)
	perNS := map[string]int{}
	indexed := make(chan struct{})
	go func() {
		defer close(indexed)
		for b := range batches {
			for _, c := range b {
				f.byUID[c.UID] = c
				perNS[c.Namespace]++
			}
		}
	}()
	batch := make([]*Cluster, 0, loadBatch)
	flushed := false
	flush := func() {
		if !flushed {
			flushed = true
			batches <- batch
			close(batches)
			<-indexed
		}
	}
	// An early return still waits for the index, which writes the model's map.
	defer flush()
	// Clusters from their summaries, at one revision; groups and bundles are listed after
	// it, and the watch starts from the oldest of the three revisions. Clusters are
	// gathered first so that each workspace's map is made at its final size.
	rev, err := f.st.ScanSummaries(ctx, api.KindCluster, func(sum []byte) error {
		c, err := decodeCluster(sum)
		if err != nil {
			return fmt.Errorf("loading clusters: %w", err)
		}
		loaded = append(loaded, c)
		if batch = append(batch, c); len(batch) == loadBatch {
			batches <- batch
			batch = make([]*Cluster, 0, loadBatch)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	flush()
	n := len(loaded)
	wsOf := make(map[string]*workspace, len(perNS))
	for ns, k := range perNS {
		w := f.ws(ns)
		w.clusters = make(map[string]*Cluster, k)
		wsOf[ns] = w
	}
	scanned := time.Now()
	// The workspaces' maps and the list order are built on the other core while the rest
	// loads, which reads neither. The order from the clusters sorted: a B-tree insert then
	// follows the same path as the one before, where a million inserts in map order cost
	// seconds of cache misses and string comparisons.
	sorted := slices.Clone(loaded)
	orderc := make(chan *btree.BTreeG[*Cluster], 1)
	go func() {
		for _, c := range sorted {
			wsOf[c.Namespace].clusters[c.Name] = c
		}
		sortByKey(sorted)
		order := btree.NewG(32, keyLess)
		for _, c := range sorted {
			order.ReplaceOrInsert(c)
		}
		orderc <- order
	}()
	order := (*btree.BTreeG[*Cluster])(nil)
	defer func() {
		if order == nil {
			<-orderc
		}
	}()
	grev := rev
	if err := f.scan(ctx, api.KindClusterGroup, &grev, func(raw json.RawMessage) error {
		obj, err := store.Decode(raw)
		if err != nil {
			return err
		}
		f.putGroup(obj)
		return nil
	}); err != nil {
		return 0, err
	}
	brev := rev
	nb := 0
	if err := f.scan(ctx, api.KindBundle, &brev, func(raw json.RawMessage) error {
		obj, err := store.Decode(raw)
		if err != nil {
			return err
		}
		b, err := compileBundle(obj)
		if err != nil {
			f.log.Warn("skipping bundle", "err", err)
			return nil
		}
		f.ws(b.ns).bundles[b.name] = b
		nb++
		return nil
	}); err != nil {
		return 0, err
	}
	if err := side.Wait(); err != nil {
		return 0, err
	}
	waited := time.Now()
	// The join: each row is a lookup in the map of a million UIDs and a cluster, both cache
	// misses, ~0.5 s at a million. It interns strings, which only this goroutine may.
	statuses.each(func(r *statusRow) {
		if c := f.byUID[r.uid]; c != nil {
			c.addDep(internString(r.bundle), pair{target: -1, reportedID: internString(r.id), state: depStateOf(r.state), message: r.message})
		}
	})
	statuses = chunked[statusRow]{}
	f.statusFrom = store.StatusCursor{Rev: statusRev}
	// Versions are digests of the desired state, computed at each cluster's first poll
	// after the load: an agent whose state did not change while the server was down is
	// answered "unchanged", one whose state did (a bundle deleted meanwhile) gets it anew.
	f.loadRev = rev
	// In the order they were read, which is the order they lie in memory: in map order each
	// cluster would be a cache miss.
	var w *workspace
	for _, c := range loaded {
		if w == nil || w.name != c.Namespace {
			w = f.workspaces[c.Namespace]
		}
		c.desiredRev.Store(0)
		// Reported pairs of bundles that no longer exist count nowhere.
		for _, b := range w.bundles {
			t, id := f.match(w, b, c)
			f.setPair(b, c, t, id, nil)
		}
	}
	f.clusters.Store(int64(len(f.byUID)))
	targeted := time.Now()
	order = <-orderc
	f.aggRebuild(loaded, order, time.Now())
	loaded = nil
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	f.log.Info("fleet model loaded", "clusters", n, "bundles", nb, "revision", rev, "took", ms(time.Since(start)),
		"clusters_read", ms(scanned.Sub(start)), "status_wait", ms(waited.Sub(scanned)), "targets", ms(targeted.Sub(waited)), "counts", ms(time.Since(targeted)))
	return min(rev, grev, brev), nil
}

// loadBatch is how many clusters a load reads before handing them to be indexed.
const loadBatch = 4096

// loadGCPercent is the GOGC of a load.
const loadGCPercent = 800

// loadBytesPerCluster is about what a load allocates per cluster, garbage included: the
// model keeps ~750 bytes of each, and reading makes ~2.5 times that.
const loadBytesPerCluster = 3 << 10

// chunked is a list grown in fixed chunks: a million rows appended to one slice would
// copy it ~20 times and leave twice its size as garbage.
type chunked[T any] struct {
	chunks [][]T
}

func (c *chunked[T]) add(v T) {
	if n := len(c.chunks); n == 0 || len(c.chunks[n-1]) == cap(c.chunks[n-1]) {
		c.chunks = append(c.chunks, make([]T, 0, 4096))
	}
	last := &c.chunks[len(c.chunks)-1]
	*last = append(*last, v)
}

func (c *chunked[T]) each(fn func(*T)) {
	for _, ch := range c.chunks {
		for i := range ch {
			fn(&ch[i])
		}
	}
}

// intern shares label strings between clusters: a million clusters mostly carry the same
// few keys and values. Only the loader and the watch goroutines (under the model's lock)
// use the table.
var internTable = map[string]string{}

func internBytes(b []byte) string {
	if s, ok := internTable[string(b)]; ok {
		return s
	}
	return internString(string(b))
}

// internString is internBytes for a string the caller already has, without copying it.
func internString(s string) string {
	if c, ok := internTable[s]; ok {
		return c
	}
	if len(internTable) < 1<<20 {
		internTable[s] = s
	}
	return s
}

func intern(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	out := make(map[string]string, len(l))
	for k, v := range l {
		if s, ok := internTable[k]; ok {
			k = s
		} else {
			internTable[k] = k
		}
		if s, ok := internTable[v]; ok {
			v = s
		} else if len(internTable) < 1<<20 {
			internTable[v] = v
		}
		out[k] = v
	}
	return out
}

func (f *Fleet) putGroup(obj *api.Object) {
	var spec api.ClusterGroupSpec
	json.Unmarshal(obj.Spec, &spec)
	sel, err := resource.Selector(spec.Selector)
	if err != nil {
		sel = labels.Nothing()
	}
	f.ws(obj.Metadata.Namespace).groups[obj.Metadata.Name] = &group{name: obj.Metadata.Name, labels: obj.Metadata.Labels, selector: sel}
}

// follow applies watch events from rev on, for the three kinds the model holds.
func (f *Fleet) follow(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	for _, kind := range []string{api.KindCluster, api.KindClusterGroup, api.KindBundle} {
		go func() {
			from := rev
			for {
				ch, err := f.st.Watch(ctx, store.WatchOptions{Kind: kind, Revision: from})
				if err != nil {
					errc <- err
					return
				}
				for ev := range ch {
					if ev.Err != nil {
						if errors.Is(ev.Err, store.ErrCompacted) {
							errc <- ev.Err
							return
						}
						break // fell behind: resume from the last revision applied
					}
					f.apply(kind, ev)
					from = ev.Revision
				}
				if ctx.Err() != nil {
					errc <- nil
					return
				}
			}
		}()
	}
	return <-errc
}

func (f *Fleet) apply(kind string, ev store.Event) {
	obj, err := store.Decode(ev.Object)
	if err != nil {
		f.log.Warn("undecodable watch event", "kind", kind, "err", err)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.ws(obj.Metadata.Namespace)
	switch kind {
	case api.KindCluster:
		f.applyCluster(w, ev, obj)
	case api.KindClusterGroup:
		var before labels.Selector = labels.Nothing()
		if g := w.groups[obj.Metadata.Name]; g != nil {
			before = g.selector
		}
		if ev.Type == api.Deleted {
			delete(w.groups, obj.Metadata.Name)
		} else {
			f.putGroup(obj)
		}
		// Membership may have changed: retarget what depends on groups.
		for _, c := range w.clusters {
			changed := false
			for _, b := range w.bundles {
				if !b.usesGroups {
					continue
				}
				t, id := f.match(w, b, c)
				if f.setPair(b, c, t, id, nil) {
					changed = true
				}
			}
			if g := w.groups[obj.Metadata.Name]; f.access != nil && (g != nil && g.selector.Matches(labels.Set(c.Labels))) != before.Matches(labels.Set(c.Labels)) {
				// Bindings scoped to the group now reach the cluster, or no longer do.
				changed = true
			}
			if changed {
				f.bump(c)
			}
		}
		f.dirtyGroups[w.name] = struct{}{}
	case api.KindBundle:
		f.applyBundle(w, ev, obj)
	}
}

func (f *Fleet) applyCluster(w *workspace, ev store.Event, obj *api.Object) {
	name := obj.Metadata.Name
	c := w.clusters[name]
	if ev.Type == api.Deleted {
		if c == nil || c.UID != obj.Metadata.UID {
			return
		}
		f.forgetCluster(w, c)
		return
	}
	if c != nil && c.UID != obj.Metadata.UID {
		// The Cluster was given to a rebuilt cluster (a new UID): the old one is gone, with
		// what it reported, as if deleted, and the new one starts afresh below.
		f.forgetCluster(w, c)
		c = nil
	}
	var spec api.ClusterSpec
	json.Unmarshal(obj.Spec, &spec)
	isNew := c == nil || c.UID != obj.Metadata.UID
	if isNew {
		c = &Cluster{Namespace: w.name}
		c.setIDs(name, obj.Metadata.UID, spec.ClientID)
		w.clusters[c.Name] = c
		f.byUID[c.UID] = c
		f.agg.order.ReplaceOrInsert(c)
		f.clusters.Store(int64(len(f.byUID)))
		var st struct {
			State     string          `json:"state"`
			Inventory json.RawMessage `json:"inventory"`
		}
		json.Unmarshal(obj.Status, &st)
		c.inventory = invOf(st.Inventory)
		c.storedInv = c.inventory
		c.state = codeOf(st.State)
		f.dirtyClusters.add(c)
		f.known.wake(c.UID)
	}
	if h := statusHash(obj.Status); h != c.statusHash {
		c.statusHash = h
		if !isNew {
			// Another wrote it (a leader before this one whose write arrives late; this
			// model's own writes record their hash first): compared again with what the
			// model would write. A write skipped because the hash it knew matched would
			// otherwise leave it wrong for good.
			f.dirtyClusters.add(c)
		}
	}
	if !isNew {
		f.learnStatus(c, obj.Status)
	}
	if !isNew && maps.Equal(c.Labels, obj.Metadata.Labels) && maps.Equal(c.Annotations, obj.Metadata.Annotations) && c.Paused == spec.Paused && sameValues(c.Values(), spec.TemplateValues) {
		// A status write, or a spec change that does not affect targeting.
		f.setClientID(w, c, spec.ClientID)
		f.aggUpdate(w, c, time.Now())
		return
	}
	c.Labels = sharedMap(obj.Metadata.Labels)
	c.Annotations = sharedMap(obj.Metadata.Annotations)
	f.setClientID(w, c, spec.ClientID)
	c.Paused = spec.Paused
	c.setValues(spec.TemplateValues)
	if c.more != nil {
		c.more.tmplHash = "" // the labels may have changed
	}
	f.retarget(w, c, true)
	f.aggUpdate(w, c, time.Now())
	f.dirtyGroups[w.name] = struct{}{}
}

// forgetCluster removes c from the model, its deployments from its bundles' counts, and its
// stored status rows.
func (f *Fleet) forgetCluster(w *workspace, c *Cluster) {
	f.aggRemove(c)
	f.agg.order.Delete(c)
	for _, p := range c.deps {
		if b := w.bundles[p.bundle]; b != nil {
			f.recount(b, c, p.effective(), "")
		}
	}
	delete(w.clusters, c.Name)
	delete(f.byUID, c.UID)
	f.forgetUsage(c)
	f.clusters.Store(int64(len(f.byUID)))
	f.dirtyClusters.remove(c)
	f.dirtyGroups[w.name] = struct{}{}
	if f.cfg.Gone != nil {
		f.cfg.Gone(w.name, c.Name)
	}
	go func(uid string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := f.st.DeleteClusterStatus(ctx, uid); err != nil {
			f.log.Warn("deleting status of a deleted cluster", "uid", uid, "err", err)
		}
	}(c.UID)
}

// setClientID changes a cluster's client ID (a re-registration), keeping its IDs in one
// allocation.
func (f *Fleet) setClientID(w *workspace, c *Cluster, id string) {
	if c.ClientID == id {
		return
	}
	c.setIDs(c.Name, c.UID, id)
	// Storing again replaces the maps' keys, which still point at the old strings.
	w.clusters[c.Name] = c
	f.byUID[c.UID] = c
}

func (f *Fleet) applyBundle(w *workspace, ev store.Event, obj *api.Object) {
	old := w.bundles[obj.Metadata.Name]
	if ev.Type == api.Deleted {
		if old == nil {
			return
		}
		for _, c := range w.clusters {
			if f.setPair(old, c, -1, "", nil) {
				f.bump(c)
			}
		}
		delete(w.bundles, old.name)
		delete(f.dirtyBundles, old)
		return
	}
	if old != nil && old.generation == obj.Metadata.Generation && maps.Equal(old.labels, obj.Metadata.Labels) {
		old.rv = obj.Metadata.ResourceVersion
		return // our own status write
	}
	b, err := compileBundle(obj)
	if err != nil {
		f.log.Warn("bundle not usable", "bundle", obj.Metadata.Namespace+"/"+obj.Metadata.Name, "err", err)
		return
	}
	var prev *bundleEntry
	if old != nil {
		// Carry the rollups over; setPair below moves each pair to the new targets.
		b.counts, b.desired, b.notReady = old.counts, old.desired, old.notReady
		if staged(b) {
			prev = old
		}
	}
	w.bundles[b.name] = b
	f.dirtyBundles[b] = struct{}{}
	for _, c := range w.clusters {
		t, id := f.match(w, b, c)
		if f.setPair(b, c, t, id, prev) {
			f.bump(c)
		}
	}
	if b.rolling {
		f.rollout(w, b)
	}
}

func sameValues(a, b map[string]any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
