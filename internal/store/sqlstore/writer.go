package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

type opKind int

const (
	opCreate opKind = iota
	opUpdate
	opDelete
	opCompact
	opContent
	opStatus
	opDeleteStatus
)

// op is one write waiting for the writer.
type op struct {
	kind opKind
	obj  *api.Object
	key  store.Key
	rv   string
	rev  int64 // compaction target
	// Agent writes.
	digest  string
	data    []byte
	cluster string
	seq     int64
	rows    []store.DeploymentStatus
	removed []string
	ctx     context.Context
	done    chan opResult
}

type opResult struct {
	obj *api.Object
	err error
}

// errSQL marks a database failure (as opposed to a refused write) so the batch is undone.
type errSQL struct{ err error }

func (e errSQL) Error() string { return e.err.Error() }
func (e errSQL) Unwrap() error { return e.err }

func (s *Store) submit(ctx context.Context, o *op) (*api.Object, error) {
	o.ctx = ctx
	o.done = make(chan opResult, 1)
	select {
	case s.ops <- o:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.quit:
		return nil, store.ErrClosed
	}
	select {
	case r := <-o.done:
		return r.obj, r.err
	case <-ctx.Done():
		// The write may still commit; like any timed-out request its outcome is unknown to
		// this caller, who can read it back.
		return nil, ctx.Err()
	}
}

// Create stores a new object.
func (s *Store) Create(ctx context.Context, obj *api.Object) (out *api.Object, err error) {
	defer s.observe("create", time.Now(), err)
	return s.submit(ctx, &op{kind: opCreate, obj: obj, key: store.KeyOf(obj)})
}

// Update replaces an object at its resourceVersion.
func (s *Store) Update(ctx context.Context, obj *api.Object) (out *api.Object, err error) {
	defer s.observe("update", time.Now(), err)
	return s.submit(ctx, &op{kind: opUpdate, obj: obj, key: store.KeyOf(obj), rv: obj.Metadata.ResourceVersion})
}

// Delete removes an object.
func (s *Store) Delete(ctx context.Context, key store.Key, resourceVersion string) (out *api.Object, err error) {
	defer s.observe("delete", time.Now(), err)
	return s.submit(ctx, &op{kind: opDelete, key: key, rv: resourceVersion})
}

// writer is the only goroutine that writes. Batching many writes into one transaction is
// what makes a million inserts affordable on SQLite, and one lock round per batch is what
// keeps PostgreSQL replicas ordered cheaply.
func (s *Store) writer() {
	defer s.wg.Done()
	for {
		var first *op
		select {
		case first = <-s.ops:
		case <-s.quit:
			// Finish what was queued before the close.
			for {
				select {
				case o := <-s.ops:
					s.runBatch([]*op{o})
				default:
					return
				}
			}
		}
		batch := []*op{first}
	drain:
		for len(batch) < s.cfg.MaxBatch {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
			default:
				break drain
			}
		}
		s.runBatch(batch)
	}
}

func (s *Store) runBatch(batch []*op) {
	live := batch[:0]
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.done <- opResult{err: err}
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	results, last, err := s.commit(live)
	if err == nil {
		if s.cfg.ObserveBatch != nil {
			s.cfg.ObserveBatch(len(live))
		}
		for i, o := range live {
			o.done <- results[i]
		}
		if last > 0 {
			s.hub.nudge(last)
		}
		return
	}
	if len(live) > 1 {
		// Isolate the failure: one bad write must not fail its neighbours.
		for _, o := range live {
			s.runBatch([]*op{o})
		}
		return
	}
	o := live[0]
	if s.d.Retryable != nil && s.d.Retryable(err) && !errors.Is(err, errCommit) {
		// The database went away before anything was committed: wait for it and retry, so a
		// restart under the server costs latency, not accepted writes.
		s.log.Warn("store write failed, retrying", "driver", s.d.Name, "err", err)
		select {
		case <-time.After(250 * time.Millisecond):
			s.runBatch(live)
		case <-o.ctx.Done():
			o.done <- opResult{err: fmt.Errorf("writing %s: %w", o.key, err)}
		case <-s.quit:
			o.done <- opResult{err: fmt.Errorf("writing %s: %w", o.key, store.ErrClosed)}
		}
		return
	}
	o.done <- opResult{err: fmt.Errorf("writing %s: %w", o.key, err)}
}

var errCommit = errors.New("commit failed")

// txw is one write transaction with its prepared statements.
type txw struct {
	s     *Store
	ctx   context.Context
	tx    *sql.Tx
	stmts map[string]*sql.Stmt
	count map[string]int64
}

func (w *txw) exec(query string, args ...any) (sql.Result, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	r, err := st.ExecContext(w.ctx, args...)
	if err != nil {
		return nil, errSQL{err}
	}
	return r, nil
}

func (w *txw) queryRow(query string, args ...any) (*sql.Row, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.QueryRowContext(w.ctx, args...), nil
}

func (w *txw) stmt(query string) (*sql.Stmt, error) {
	if st, ok := w.stmts[query]; ok {
		return st, nil
	}
	st, err := w.tx.PrepareContext(w.ctx, w.s.q(query))
	if err != nil {
		return nil, errSQL{err}
	}
	w.stmts[query] = st
	return st, nil
}

// commit runs a batch in one transaction. Refused writes (conflicts, missing objects) are
// per-op results; a database error undoes the batch.
func (s *Store) commit(batch []*op) ([]opResult, int64, error) {
	ctx := context.Background()
	tx, err := s.writeDB.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, err
	}
	w := &txw{s: s, ctx: ctx, tx: tx, stmts: map[string]*sql.Stmt{}, count: map[string]int64{}}
	defer func() {
		for _, st := range w.stmts {
			st.Close()
		}
	}()
	n := 0
	for _, o := range batch {
		if o.revisioned() {
			n++
		}
	}
	var next, last int64
	if n > 0 {
		row, err := w.queryRow(`UPDATE meta SET value = value + ? WHERE name = 'revision' RETURNING value`, n)
		if err != nil {
			tx.Rollback()
			return nil, 0, err
		}
		var end int64
		if err := row.Scan(&end); err != nil {
			tx.Rollback()
			return nil, 0, err
		}
		next = end - int64(n) + 1
	}
	results := make([]opResult, len(batch))
	for i, o := range batch {
		var r opResult
		switch o.kind {
		case opCreate:
			r.obj, r.err = w.create(o.obj, next)
		case opUpdate:
			r.obj, r.err = w.update(o.obj, o.rv, next)
		case opDelete:
			r.obj, r.err = w.delete(o.key, o.rv, next)
		case opCompact:
			r.err = w.compact(o.rev)
		case opContent:
			_, r.err = w.exec(`INSERT INTO content (digest, size, data) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING`, o.digest, len(o.data), o.data)
		case opStatus:
			r.err = w.status(o)
		case opDeleteStatus:
			if _, r.err = w.exec(`DELETE FROM deployment_status WHERE cluster = ?`, o.cluster); r.err == nil {
				_, r.err = w.exec(`DELETE FROM agent_seq WHERE cluster = ?`, o.cluster)
			}
		}
		var se errSQL
		if errors.As(r.err, &se) {
			tx.Rollback()
			return nil, 0, se.err
		}
		if o.revisioned() {
			if r.err == nil {
				last = next
			}
			next++
		}
		results[i] = r
	}
	for kind, d := range w.count {
		if d == 0 {
			continue
		}
		if _, err := w.exec(`INSERT INTO kind_counts (kind, n) VALUES (?, ?) ON CONFLICT (kind) DO UPDATE SET n = kind_counts.n + excluded.n`, kind, d); err != nil {
			tx.Rollback()
			return nil, 0, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errCommit, err)
	}
	return results, last, nil
}

func (w *txw) create(obj *api.Object, rev int64) (*api.Object, error) {
	key := store.KeyOf(obj)
	out := *obj
	out.Metadata.ResourceVersion = strconv.FormatInt(rev, 10)
	data, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", key, err)
	}
	row, err := w.queryRow(`INSERT INTO objects (kind, namespace, name, rev, data, summary) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO NOTHING RETURNING id`,
		key.Kind, key.Namespace, key.Name, rev, data, w.s.summary(&out))
	if err != nil {
		return nil, err
	}
	var id int64
	if err := row.Scan(&id); errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", key, store.ErrAlreadyExists)
	} else if err != nil {
		return nil, errSQL{err}
	}
	if err := w.insertLabels(key.Kind, id, out.Metadata.Labels); err != nil {
		return nil, err
	}
	if _, err := w.exec(`INSERT INTO events (rev, kind, namespace, name, obj, type, data, prev) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)`,
		rev, key.Kind, key.Namespace, key.Name, id, evAdded, data); err != nil {
		return nil, err
	}
	w.count[key.Kind]++
	return &out, nil
}

// current reads the stored row for key inside the transaction.
func (w *txw) current(key store.Key) (id, rev int64, data []byte, err error) {
	row, err := w.queryRow(`SELECT id, rev, data FROM objects WHERE kind = ? AND namespace = ? AND name = ?`, key.Kind, key.Namespace, key.Name)
	if err != nil {
		return 0, 0, nil, err
	}
	if err := row.Scan(&id, &rev, &data); errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil, store.NotFound(key)
	} else if err != nil {
		return 0, 0, nil, errSQL{err}
	}
	return id, rev, data, nil
}

func checkRV(key store.Key, want string, have int64) error {
	if want != "" && want != strconv.FormatInt(have, 10) {
		return fmt.Errorf("%s: resourceVersion %s is stale, the stored object is at %d: %w", key, want, have, store.ErrConflict)
	}
	return nil
}

func (w *txw) update(obj *api.Object, rv string, rev int64) (*api.Object, error) {
	key := store.KeyOf(obj)
	id, oldRev, oldData, err := w.current(key)
	if err != nil {
		return nil, err
	}
	if err := checkRV(key, rv, oldRev); err != nil {
		return nil, err
	}
	out := *obj
	out.Metadata.ResourceVersion = strconv.FormatInt(rev, 10)
	data, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", key, err)
	}
	if _, err := w.exec(`UPDATE objects SET rev = ?, data = ?, summary = ? WHERE id = ?`, rev, data, w.s.summary(&out), id); err != nil {
		return nil, err
	}
	if old := labelsOf(oldData); !maps.Equal(old, out.Metadata.Labels) {
		if _, err := w.exec(`DELETE FROM labels WHERE obj = ?`, id); err != nil {
			return nil, err
		}
		if err := w.insertLabels(key.Kind, id, out.Metadata.Labels); err != nil {
			return nil, err
		}
	}
	if _, err := w.exec(`INSERT INTO events (rev, kind, namespace, name, obj, type, data, prev) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		rev, key.Kind, key.Namespace, key.Name, id, evModified, data, oldData); err != nil {
		return nil, err
	}
	return &out, nil
}

func (w *txw) delete(key store.Key, rv string, rev int64) (*api.Object, error) {
	id, oldRev, oldData, err := w.current(key)
	if err != nil {
		return nil, err
	}
	if err := checkRV(key, rv, oldRev); err != nil {
		return nil, err
	}
	last, err := store.Decode(oldData)
	if err != nil {
		return nil, err
	}
	// Like Kubernetes, the deletion event carries the revision of the delete.
	last.Metadata.ResourceVersion = strconv.FormatInt(rev, 10)
	data, err := json.Marshal(last)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", key, err)
	}
	if _, err := w.exec(`DELETE FROM objects WHERE id = ?`, id); err != nil {
		return nil, err
	}
	if _, err := w.exec(`DELETE FROM labels WHERE obj = ?`, id); err != nil {
		return nil, err
	}
	// prev holds the state before this revision; for a delete that is the stored object.
	if _, err := w.exec(`INSERT INTO events (rev, kind, namespace, name, obj, type, data, prev) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		rev, key.Kind, key.Namespace, key.Name, id, evDeleted, data, oldData); err != nil {
		return nil, err
	}
	w.count[key.Kind]--
	return last, nil
}

func (w *txw) insertLabels(kind string, id int64, l map[string]string) error {
	if len(l) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO labels (kind, key, value, obj) VALUES `)
	args := make([]any, 0, 4*len(l))
	i := 0
	for k, v := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?)")
		args = append(args, kind, k, v, id)
		i++
	}
	_, err := w.exec(b.String(), args...)
	return err
}

func (w *txw) compact(rev int64) error {
	if _, err := w.exec(`DELETE FROM events WHERE rev <= ?`, rev); err != nil {
		return err
	}
	_, err := w.exec(`UPDATE meta SET value = ? WHERE name = 'compacted' AND value < ?`, rev, rev)
	return err
}

func (o *op) revisioned() bool { return o.kind <= opDelete }

func (w *txw) status(o *op) error {
	for _, r := range o.rows {
		if _, err := w.exec(`INSERT INTO deployment_status (cluster, bundle, id, state, message) VALUES (?, ?, ?, ?, ?) ON CONFLICT (cluster, bundle) DO UPDATE SET id = excluded.id, state = excluded.state, message = excluded.message`,
			o.cluster, r.Bundle, r.ID, r.State, r.Message); err != nil {
			return err
		}
	}
	for _, b := range o.removed {
		if _, err := w.exec(`DELETE FROM deployment_status WHERE cluster = ? AND bundle = ?`, o.cluster, b); err != nil {
			return err
		}
	}
	if o.seq > 0 {
		if _, err := w.exec(`INSERT INTO agent_seq (cluster, seq) VALUES (?, ?) ON CONFLICT (cluster) DO UPDATE SET seq = excluded.seq WHERE agent_seq.seq < excluded.seq`, o.cluster, o.seq); err != nil {
			return err
		}
	}
	return nil
}

// Event types as stored.
const (
	evAdded    = 1
	evModified = 2
	evDeleted  = 3
)
