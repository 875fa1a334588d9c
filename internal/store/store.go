// Package store owns Flotilla's persistent state: objects, the single revision that orders
// every write, history for watch and consistent pagination, and compaction. The Store interface
// is implemented by the SQLite and PostgreSQL drivers (subpackages), which share one SQL engine
// and pass one conformance suite (storetest).
//
// The server and its controllers import this package; the agent never does.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
)

// Key names one object.
type Key struct {
	Kind      string
	Namespace string
	Name      string
}

func (k Key) String() string {
	if k.Namespace == "" {
		return k.Kind + "/" + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// KeyOf returns the key of obj.
func KeyOf(obj *api.Object) Key {
	return Key{Kind: obj.Kind, Namespace: obj.Metadata.Namespace, Name: obj.Metadata.Name}
}

// Store is the persistent state. Every write gets a revision greater than any before it;
// the revision is the object's resourceVersion.
type Store interface {
	// Create stores a new object; ErrAlreadyExists if its key is taken.
	Create(ctx context.Context, obj *api.Object) (*api.Object, error)
	// Update replaces an object whose stored resourceVersion equals obj's (ErrConflict
	// otherwise, ErrNotFound if it is gone). An empty resourceVersion updates unconditionally.
	Update(ctx context.Context, obj *api.Object) (*api.Object, error)
	// Delete removes an object, if resourceVersion is non-empty only at that version, and
	// returns its last state.
	Delete(ctx context.Context, key Key, resourceVersion string) (*api.Object, error)
	Get(ctx context.Context, key Key) (*api.Object, error)
	// List returns one page of objects of a kind, in a stable order, as of one revision:
	// later pages (by Continue) show the state at the first page's revision.
	List(ctx context.Context, opts ListOptions) (*ListResult, error)
	// Watch streams changes after opts.Revision. The channel closes when ctx ends or the
	// watcher falls too far behind; the caller resumes from the last revision it saw.
	Watch(ctx context.Context, opts WatchOptions) (<-chan Event, error)
	// Revision is the newest committed revision.
	Revision(ctx context.Context) (int64, error)
	// Compact forgets history at and before rev: watches and continue tokens from there
	// fail with ErrCompacted.
	Compact(ctx context.Context, rev int64) error
	// Count returns the number of objects of each kind.
	Count(ctx context.Context) (map[string]int64, error)
	Close() error
}

// ListOptions selects a page of objects.
type ListOptions struct {
	Kind string
	// Namespace limits the list to one namespace; empty means all.
	Namespace string
	Selector  labels.Selector
	// Limit bounds the page size; 0 means everything.
	Limit    int
	Continue string
	// Items, when set, is handed the page's objects while they are read, in order and in
	// batches, from List's goroutine: a server can send them while the rest are read. They
	// stay in the ListResult's Items as well. It must not block: List holds a read
	// transaction meanwhile.
	Items func([]json.RawMessage)
}

// ListResult is one page of objects. Items are stored JSON, resourceVersion included, so a
// server can send them without decoding.
type ListResult struct {
	Items    []json.RawMessage
	Revision int64
	Continue string
	// Release, when set, hands the memory behind Items back for reuse by later lists. A
	// caller done with Items may call it once; Items must not be used after. Not calling it
	// leaves that memory to the collector.
	Release func()
}

// WatchOptions selects the changes to stream.
type WatchOptions struct {
	Kind      string
	Namespace string
	Selector  labels.Selector
	// Revision: stream changes after it; 0 means from now.
	Revision int64
}

// Event is one change. For a filtered watch, an object that stops matching the selector
// arrives as Deleted and one that starts matching as Added, as in Kubernetes.
type Event struct {
	Type     string // api.Added, api.Modified, api.Deleted
	Revision int64
	Object   json.RawMessage
	// Err is set on the last event when the watch ended for a reason the caller should
	// know (ErrCompacted, or the watcher fell behind).
	Err error
}

// Errors the drivers return, wrapped with context; test with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrConflict      = errors.New("conflict")
	// ErrCompacted: the requested revision's history is gone.
	ErrCompacted = errors.New("revision compacted")
	// ErrBehind: a watcher did not keep up and was dropped; resume from its last revision.
	ErrBehind = errors.New("watcher fell behind")
	ErrClosed = errors.New("store closed")
	// ErrInvalidContinue: a continue token that this store did not issue.
	ErrInvalidContinue = errors.New("invalid continue token")
	// ErrStale: a cluster's report older than the one stored (PutStatus); nothing of it
	// was written.
	ErrStale = errors.New("stale report")
)

// NotFound returns an ErrNotFound naming key.
func NotFound(key Key) error { return fmt.Errorf("%s: %w", key, ErrNotFound) }

// Decode decodes a stored object.
func Decode(data []byte) (*api.Object, error) {
	var o api.Object
	if err := json.Unmarshal(data, &o); err != nil {
		return nil, fmt.Errorf("decoding stored object: %w", err)
	}
	return &o, nil
}

// Summarizer turns an object into the compact bytes a component needs to load it fast; the
// store keeps them beside the object, written in the same transaction.
type Summarizer func(*api.Object) []byte

// Summaries streams the summaries of every object of a kind, as of one revision, which it
// returns. It is how a server loads a million clusters in seconds: no JSON documents are read
// or decoded.
type Summaries interface {
	// fn must not keep summary: its bytes are reused.
	ScanSummaries(ctx context.Context, kind string, fn func(summary []byte) error) (rev int64, err error)
}

// DeploymentStatus is one cluster's last reported state of one bundle: a compact row kept
// outside the object history, because agents report far more often than people edit.
type DeploymentStatus struct {
	// Cluster is the Cluster's UID.
	Cluster string
	// Bundle is "namespace/name".
	Bundle  string
	ID      string
	State   string
	Message string
}

// Agents is the part of the store behind the agent protocol: bundle content stored once by
// digest, and the compact status rows agents report.
type Agents interface {
	// PutContent stores content under its digest; storing it again is a no-op.
	PutContent(ctx context.Context, digest string, data []byte) error
	GetContent(ctx context.Context, digest string) ([]byte, error)
	// PutStatus records one report of a cluster: rows upserted, bundles removed, and the
	// report's sequence number. A report whose sequence is below the stored one (it was
	// delayed, and a newer report of the cluster, through this replica or another, was
	// stored first) writes no rows and returns ErrStale; the check and the write are one
	// step of the writers' order, so of two concurrent reports the older never overwrites
	// the newer. The stale report's cluster still takes the next status revision, so that
	// followers read its stored rows again. An equal sequence is the same report again and
	// is written.
	PutStatus(ctx context.Context, cluster string, seq int64, rows []DeploymentStatus, removed []string) error
	// DeleteClusterStatus forgets a deleted cluster's rows.
	DeleteClusterStatus(ctx context.Context, cluster string) error
	// ScanStatus streams every status row, and ScanSeqs every cluster's last sequence.
	ScanStatus(ctx context.Context, fn func(DeploymentStatus) error) error
	ScanSeqs(ctx context.Context, fn func(cluster string, seq int64) error) error
	// StatusRevision is the newest status revision: each committed PutStatus gives its
	// cluster the next one. Replicas sharing a database follow each other's reports by it.
	StatusRevision(ctx context.Context) (int64, error)
	// StatusChanges calls fn for at most limit clusters whose status was written after the
	// cursor, in commit order, each with its last sequence and all its rows; it returns
	// the cursor after the last one passed to fn.
	StatusChanges(ctx context.Context, after StatusCursor, limit int, fn func(cluster string, seq int64, rows []DeploymentStatus) error) (StatusCursor, error)
}

// StatusCursor is a position in the stream of status writes: one commit gives several
// clusters the same revision, so the cluster breaks the tie.
type StatusCursor struct {
	Rev     int64
	Cluster string
}
