package fleet

import (
	"context"
	"encoding/json"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// Several server replicas may share one PostgreSQL database, each with its own model, each
// serving a share of the agents. Objects reach every model through the store's watch;
// agents' reports through the stream of status writes (followStatus); when an agent was last
// seen and its inventory through the Cluster's stored status, which the replica that served
// the agent writes (followerWrites) and the others learn (learnStatus). Rollouts admit
// clusters in every model alike, in a fixed order from the same reported states, so an
// agent hears the same desired state from any replica once they have caught up; only the
// leader writes rolled-up status.

// changeNotifier is a store that says when a commit was seen (its own or another
// replica's), so followers need not wait for their next tick.
type changeNotifier interface {
	Changes() <-chan struct{}
}

// statusFollowInterval is how often the status follower looks for other replicas' reports
// when the store does not wake it (a lost notification, or SQLite).
const statusFollowInterval = time.Second

// followStatus takes into the model the reports other replicas stored, until ctx ends.
func (f *Fleet) followStatus(ctx context.Context) {
	f.mu.RLock()
	cur := f.statusFrom
	f.mu.RUnlock()
	notifier, _ := f.st.(changeNotifier)
	t := time.NewTicker(statusFollowInterval)
	defer t.Stop()
	for {
		var woken <-chan struct{}
		if notifier != nil {
			woken = notifier.Changes()
		}
		for {
			next, err := f.st.StatusChanges(ctx, cur, 1000, f.takeStoredStatus)
			if err != nil {
				if ctx.Err() == nil {
					f.log.Warn("following reports stored by other replicas", "err", err)
				}
				break
			}
			if next == cur {
				break
			}
			cur = next
		}
		select {
		case <-ctx.Done():
			return
		case <-woken:
		case <-t.C:
		}
	}
}

// takeStoredStatus applies one cluster's stored rows unless the model took a newer report
// (its own, stored after this read): the rows are the cluster's whole reported state, so a
// bundle the model has a report for and the rows lack was removed. Rows of the report the
// model took last are applied again: they also hold what an earlier report made through
// another replica stored, which this model may not have read before its own write.
func (f *Fleet) takeStoredStatus(uid string, seq int64, rows []store.DeploymentStatus) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.byUID[uid]
	if c == nil || seq < c.seq {
		// Unknown (its Cluster arrives by watch, and the load reads its rows), or older
		// than what the model has.
		return nil
	}
	if f.reporting[c] != nil {
		// A report of it is being stored here now and will be taken after, and these rows
		// with it (takeHeld): if that report turns out older than these, they are the
		// model's only news of the newer one, whose write this follower has passed.
		if h, ok := f.held[c]; !ok || seq >= h.seq {
			f.held[c] = storedStatus{seq: seq, rows: rows}
		}
		return nil
	}
	f.takeStored(c, seq, rows)
	return nil
}

// storedStatus is one cluster's stored report state, as StatusChanges passes it.
type storedStatus struct {
	seq  int64
	rows []store.DeploymentStatus
}

// takeHeld applies the stored rows the follower passed over while a report of c was being
// stored here, unless the model has since taken a newer report. The caller holds the lock.
func (f *Fleet) takeHeld(c *Cluster) {
	h, ok := f.held[c]
	if !ok {
		return
	}
	delete(f.held, c)
	if h.seq >= c.seq {
		f.takeStored(c, h.seq, h.rows)
	}
}

// takeStored applies a cluster's stored rows, its whole reported state. The caller holds
// the lock.
func (f *Fleet) takeStored(c *Cluster, seq int64, rows []store.DeploymentStatus) {
	have := map[string]bool{}
	for _, r := range rows {
		have[r.Bundle] = true
	}
	var removed []string
	for _, p := range c.deps {
		if key := c.Namespace + "/" + p.bundle; p.reportedID != "" && !have[key] {
			removed = append(removed, key)
		}
	}
	f.applyReport(c, seq, nil, rows, removed)
}

// learnStatus takes from a Cluster's stored status what another replica wrote there: when
// its agent was last seen (the latest of the two wins) and its inventory.
func (f *Fleet) learnStatus(c *Cluster, status json.RawMessage) {
	if len(status) == 0 {
		return
	}
	var st struct {
		State     string          `json:"state"`
		LastSeen  *time.Time      `json:"lastSeen"`
		Inventory json.RawMessage `json:"inventory"`
	}
	if json.Unmarshal(status, &st) != nil {
		return
	}
	if st.LastSeen != nil {
		if n := st.LastSeen.UnixNano(); n > c.seen.Load() {
			c.seen.Store(n)
		}
		if st.LastSeen.After(c.storedSeenAt()) {
			c.setStoredSeen(*st.LastSeen)
		}
	}
	if st.State != "" {
		c.state = codeOf(st.State)
	}
	if inv := invOf(st.Inventory); inv != (invDoc{}) && inv != c.storedInv {
		c.storedInv, c.inventory = inv, inv
	}
}

// followerWrites takes the dirty clusters of a replica that does not lead and returns the
// writes of what only it knows: a newer lastSeen (refreshed often enough that the leader
// never takes a live cluster for Offline) and a new inventory. Everything else dirty is the
// leader's to write. The caller holds the lock.
func (f *Fleet) followerWrites() []pendingWrite {
	res := min(f.seenResolution(), f.offlineAfter()/3)
	var writes []pendingWrite
	// Each marked cluster once: those put back below are not taken again in this pass.
	for range f.dirtyClusters.len() {
		c := f.dirtyClusters.pop()
		seen := c.lastSeen()
		inv := c.inventory
		newSeen := !seen.IsZero() && seen.Sub(c.storedSeenAt()) > res
		newInv := inv != (invDoc{}) && inv != c.storedInv
		if !newSeen && !newInv {
			continue
		}
		if len(writes) >= maxClusterWrites {
			// The rest wait for the next pass.
			f.dirtyClusters.add(c)
			continue
		}
		writes = append(writes, pendingWrite{
			key: store.Key{Kind: api.KindCluster, Namespace: c.Namespace, Name: c.Name},
			statusOf: func(obj *api.Object) (any, error) {
				m := map[string]json.RawMessage{}
				if len(obj.Status) > 0 {
					if err := json.Unmarshal(obj.Status, &m); err != nil {
						return nil, err
					}
				}
				if newSeen {
					var stored struct {
						LastSeen *time.Time `json:"lastSeen"`
					}
					json.Unmarshal(obj.Status, &stored)
					if stored.LastSeen == nil || stored.LastSeen.Before(seen.Truncate(time.Second)) {
						m["lastSeen"], _ = json.Marshal(seen.UTC().Truncate(time.Second))
					}
				}
				if newInv {
					m["inventory"] = json.RawMessage(invJSON(inv))
				}
				return m, nil
			},
			onDone: func() {
				if newSeen {
					c.setStoredSeen(seen)
				}
				if newInv {
					c.storedInv = inv
				}
			},
		})
	}
	return writes
}

// markAllDirty makes a replica that starts leading write every rollup once: the previous
// leader may have died before writing its last changes. Writes equal to what is stored
// are skipped.
func (f *Fleet) markAllDirty() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.workspaces {
		for _, b := range w.bundles {
			f.dirtyBundles[b] = struct{}{}
		}
		for _, c := range w.clusters {
			f.dirtyClusters.add(c)
		}
		f.dirtyGroups[w.name] = struct{}{}
	}
	for p := range f.usage {
		f.dirtyProjects[p] = struct{}{}
	}
}

func (f *Fleet) leading() bool {
	return f.cfg.Leading == nil || f.cfg.Leading()
}
