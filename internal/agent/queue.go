package agent

import (
	"maps"
	"slices"
	"sync"
	"time"

	"flotilla.dev/api"
)

const statusFile = "status.json"

// statusQueue holds the status the server has not acknowledged yet, on disk, so that
// nothing reported while offline is lost to a restart. It keeps only the latest state per
// bundle: the server wants to know how things are, not every step they took.
//
// Reports are numbered by Seq, which grows across restarts (the next number is stored
// before a report is sent), so that the server can ignore a report it has seen.
type statusQueue struct {
	mu  sync.Mutex
	dir *stateDir
	q   queueState
	now func() time.Time
}

type queueState struct {
	NextSeq int64 `json:"nextSeq"`
	// Pending is the latest unsent state of each bundle whose state changed.
	Pending map[string]api.DeploymentStatus `json:"pending,omitempty"`
	// Removed are bundles removed from the cluster and not yet reported so.
	Removed []string `json:"removed,omitempty"`
	// Reported is the last acknowledged state of each bundle, so that a restarted agent
	// does not report again what the server already knows.
	Reported map[string]api.DeploymentStatus `json:"reported,omitempty"`
	// Inventory is a changed inventory not yet reported.
	Inventory *api.ClusterInventory `json:"inventory,omitempty"`
	// Access is a changed access report not yet sent; ReportedAccess the last one the
	// server acknowledged, sent again with heartbeats (the server keeps usage in memory).
	Access         *api.AccessReport `json:"access,omitempty"`
	ReportedAccess *api.AccessReport `json:"reportedAccess,omitempty"`
}

// openQueue loads the queue from dir. A new queue starts its sequence at the current time
// in microseconds rather than 1: a cluster whose state directory was wiped and that
// registers again then still numbers its reports above those the server saw before.
func openQueue(dir *stateDir, now func() time.Time) (*statusQueue, error) {
	q := &statusQueue{dir: dir, now: now}
	if _, err := dir.readJSON(statusFile, &q.q); err != nil {
		return nil, err
	}
	if q.q.NextSeq <= 0 {
		q.q.NextSeq = max(1, now().UnixMicro())
	}
	if q.q.Pending == nil {
		q.q.Pending = map[string]api.DeploymentStatus{}
	}
	if q.q.Reported == nil {
		q.q.Reported = map[string]api.DeploymentStatus{}
	}
	return q, nil
}

// persist writes the queue; the caller holds mu. A failed write is retried with the next
// change: the queue in memory stays right, only a crash would lose it.
func (q *statusQueue) persist() error {
	return q.dir.writeJSON(statusFile, &q.q)
}

// put records a deployment's state and reports whether it is news to the server.
func (q *statusQueue) put(st api.DeploymentStatus) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if p, ok := q.q.Pending[st.Bundle]; ok {
		if p == st {
			return false, nil
		}
	} else if r, ok := q.q.Reported[st.Bundle]; ok && r == st && !slices.Contains(q.q.Removed, st.Bundle) {
		return false, nil
	}
	q.q.Pending[st.Bundle] = st
	q.q.Removed = slices.DeleteFunc(q.q.Removed, func(b string) bool { return b == st.Bundle })
	return true, q.persist()
}

// remove records that a bundle was removed from the cluster.
func (q *statusQueue) remove(bundleID string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.q.Pending, bundleID)
	delete(q.q.Reported, bundleID)
	if !slices.Contains(q.q.Removed, bundleID) {
		q.q.Removed = append(q.q.Removed, bundleID)
	}
	return q.persist()
}

// setInventory records an inventory to report.
func (q *statusQueue) setInventory(inv *api.ClusterInventory) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.q.Inventory = inv
	return q.persist()
}

// setAccess records an access report and reports whether it is news to the server.
func (q *statusQueue) setAccess(rep *api.AccessReport) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if sameAccess(q.q.Access, rep) || q.q.Access == nil && sameAccess(q.q.ReportedAccess, rep) {
		return false, nil
	}
	q.q.Access = rep
	return true, q.persist()
}

// known returns the bundles whose state the server was told or is about to be told.
func (q *statusQueue) known() map[string]api.DeploymentStatus {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := maps.Clone(q.q.Reported)
	maps.Copy(out, q.q.Pending)
	return out
}

// next returns the report to send, numbered with a fresh Seq, or false when there is
// nothing to send. With heartbeat it always returns a report, carrying inv when nothing
// newer is queued. Every call takes a new Seq, even for the same content: a report the
// server may or may not have received is followed by one it will not ignore.
func (q *statusQueue) next(heartbeat bool, inv *api.ClusterInventory) (api.StatusReport, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.q.Pending) == 0 && len(q.q.Removed) == 0 && q.q.Inventory == nil && q.q.Access == nil && !heartbeat {
		return api.StatusReport{}, false, nil
	}
	rep := api.StatusReport{Seq: q.q.NextSeq, Time: q.now().UTC().Truncate(time.Second), Inventory: q.q.Inventory}
	if heartbeat && rep.Inventory == nil {
		rep.Inventory = inv
	}
	rep.Access = q.q.Access
	if heartbeat && rep.Access == nil {
		rep.Access = q.q.ReportedAccess
	}
	for _, b := range slices.Sorted(maps.Keys(q.q.Pending)) {
		rep.Deployments = append(rep.Deployments, q.q.Pending[b])
	}
	rep.Removed = slices.Clone(q.q.Removed)
	q.q.NextSeq++
	// The number must be on disk before it is on the wire.
	if err := q.persist(); err != nil {
		return api.StatusReport{}, false, err
	}
	return rep, true, nil
}

// ack records that the server accepted rep. What changed since rep was taken stays queued.
func (q *statusQueue) ack(rep api.StatusReport) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, st := range rep.Deployments {
		if q.q.Pending[st.Bundle] == st {
			delete(q.q.Pending, st.Bundle)
			q.q.Reported[st.Bundle] = st
		}
	}
	for _, b := range rep.Removed {
		if _, readded := q.q.Pending[b]; !readded {
			q.q.Removed = slices.DeleteFunc(q.q.Removed, func(r string) bool { return r == b })
		}
	}
	if rep.Inventory != nil && q.q.Inventory == rep.Inventory {
		q.q.Inventory = nil
	}
	if rep.Access != nil && q.q.Access == rep.Access {
		q.q.ReportedAccess, q.q.Access = rep.Access, nil
	}
	return q.persist()
}

// empty reports whether nothing waits to be sent.
func (q *statusQueue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.q.Pending) == 0 && len(q.q.Removed) == 0 && q.q.Inventory == nil && q.q.Access == nil
}
