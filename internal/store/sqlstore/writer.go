package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/bits"
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
	// keepStatus: an update that keeps what the server owns of the stored object (see
	// UpdateSpec).
	keepStatus bool
	// base, with keepStatus: the object as the caller read it; the update is refused as a
	// conflict unless the stored spec, labels, annotations and managedFields are still its.
	base *api.Object
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
	defer s.observe("create", time.Now(), &err)
	return s.submit(ctx, &op{kind: opCreate, obj: obj, key: store.KeyOf(obj)})
}

// Update replaces an object at its resourceVersion.
func (s *Store) Update(ctx context.Context, obj *api.Object) (out *api.Object, err error) {
	defer s.observe("update", time.Now(), &err)
	return s.submit(ctx, &op{kind: opUpdate, obj: obj, key: store.KeyOf(obj), rv: obj.Metadata.ResourceVersion})
}

// UpdateSpec replaces obj's spec, labels and annotations whatever the stored
// resourceVersion, in one step of the writer: the stored status, UID and creation time are
// kept as they are at that moment, and the generation grows if the spec changed. An
// unconditional update therefore never loses to a status write, or to any write, made
// after its caller read the object.
func (s *Store) UpdateSpec(ctx context.Context, obj *api.Object) (out *api.Object, err error) {
	defer s.observe("update", time.Now(), &err)
	return s.submit(ctx, &op{kind: opUpdate, obj: obj, key: store.KeyOf(obj), keepStatus: true})
}

// UpdateSpecFrom is UpdateSpec for a change computed from base (a patch): it is refused with
// store.ErrConflict if what a user writes of the object (spec, labels, annotations,
// managedFields) changed since base was read, and not for writes of its status.
func (s *Store) UpdateSpecFrom(ctx context.Context, obj, base *api.Object) (out *api.Object, err error) {
	defer s.observe("update", time.Now(), &err)
	return s.submit(ctx, &op{kind: opUpdate, obj: obj, key: store.KeyOf(obj), keepStatus: true, base: base})
}

// Delete removes an object.
func (s *Store) Delete(ctx context.Context, key store.Key, resourceVersion string) (out *api.Object, err error) {
	defer s.observe("delete", time.Now(), &err)
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
	if len(live) > 1 && !errors.Is(err, errCommit) {
		// Isolate the failure: one bad write must not fail its neighbours. Not after a
		// failed COMMIT, which may have committed all the same (a connection lost before
		// the answer): running the batch again would refuse its own writes as conflicts.
		for _, o := range live {
			s.runBatch([]*op{o})
		}
		return
	}
	o := live[0]
	retryable := s.d.Retryable != nil && s.d.Retryable(err)
	if failpointsOn && failpointRetryable(err) {
		retryable = true
	}
	if retryable && !errors.Is(err, errCommit) {
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
	// keep are the queries prepared in this transaction to be kept once it ends.
	keep []string
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

func (w *txw) query(query string, args ...any) (*sql.Rows, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	rs, err := st.QueryContext(w.ctx, args...)
	if err != nil {
		return nil, errSQL{err}
	}
	return rs, nil
}

func (w *txw) stmt(query string) (*sql.Stmt, error) {
	if st, ok := w.stmts[query]; ok {
		return st, nil
	}
	if kept := w.s.wstmts[query]; kept != nil {
		// Prepared on the writer's one connection: used as it is, not prepared again.
		st := w.tx.StmtContext(w.ctx, kept)
		w.stmts[query] = st
		return st, nil
	}
	st, err := w.tx.PrepareContext(w.ctx, w.s.q(query))
	if err != nil {
		return nil, errSQL{err}
	}
	w.stmts[query] = st
	if w.s.d.KeepWriteStatements && len(w.s.wstmts) < maxKeptStatements {
		w.keep = append(w.keep, query)
	}
	return st, nil
}

// maxKeptStatements bounds the writer's kept statements.
const maxKeptStatements = 200

// keepStatements prepares, once a transaction ended and the writer's connection is free,
// the statements it prepared, to be kept.
func (s *Store) keepStatements(queries []string) {
	for _, q := range queries {
		if s.wstmts[q] != nil {
			continue
		}
		st, err := s.writeDB.PrepareContext(context.Background(), s.q(q))
		if err != nil {
			continue // prepared in each transaction, as without keeping
		}
		s.wstmts[q] = st
	}
}

// chunks is chunks for a run of rows in this transaction: with kept statements, in pieces
// of a power of two rows, so that every run size uses a few statements already prepared.
func (w *txw) chunks(n, perRow int, fn func(lo, hi int) error) error {
	if !w.s.d.KeepWriteStatements {
		return chunks(n, perRow, fn)
	}
	size := maxParams / perRow
	for lo := 0; lo < n; {
		m := min(size, n-lo)
		if m < size {
			m = 1 << (bits.Len(uint(m)) - 1)
		}
		if err := fn(lo, lo+m); err != nil {
			return err
		}
		lo += m
	}
	return nil
}

// commit runs a batch in one transaction. Refused writes (conflicts, missing objects) are
// per-op results; a database error undoes the batch.
func (s *Store) commit(batch []*op) ([]opResult, int64, error) {
	ctx := context.Background()
	if failpointsOn {
		if err := failpoint("begin", batch); err != nil {
			return nil, 0, err
		}
	}
	tx, err := s.writeDB.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, err
	}
	w := &txw{s: s, ctx: ctx, tx: tx, stmts: map[string]*sql.Stmt{}, count: map[string]int64{}}
	defer func() {
		for _, st := range w.stmts {
			st.Close()
		}
		if len(w.keep) > 0 {
			tx.Rollback() // ended already (ErrTxDone) on every path; the connection must be free
			s.keepStatements(w.keep)
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
	if failpointsOn {
		if err := failpoint("mid", batch); err != nil {
			tx.Rollback()
			return nil, 0, err
		}
	}
	results := make([]opResult, len(batch))
	for i := 0; i < len(batch); {
		// A run of consecutive creates, or of agent reports, is written with a few multi-row
		// statements: on PostgreSQL each statement is a round trip to the server.
		o, j := batch[i], i+1
		var err error
		switch o.kind {
		case opCreate:
			for j < len(batch) && batch[j].kind == opCreate {
				j++
			}
			err = w.create(batch[i:j], next, results[i:j])
		case opStatus:
			for j < len(batch) && batch[j].kind == opStatus {
				j++
			}
			err = w.status(batch[i:j], results[i:j])
		default:
			r := &results[i]
			switch o.kind {
			case opUpdate:
				r.obj, r.err = w.update(o.obj, o.rv, o.keepStatus, o.base, next)
			case opDelete:
				r.obj, r.err = w.delete(o.key, o.rv, next)
			case opCompact:
				r.err = w.compact(o.rev)
			case opContent:
				_, r.err = w.exec(`INSERT INTO content (digest, size, data) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING`, o.digest, len(o.data), o.data)
			case opDeleteStatus:
				if _, r.err = w.exec(`DELETE FROM deployment_status WHERE cluster = ?`, o.cluster); r.err == nil {
					_, r.err = w.exec(`DELETE FROM agent_seq WHERE cluster = ?`, o.cluster)
				}
			}
			err = r.err
		}
		var se errSQL
		if errors.As(err, &se) {
			tx.Rollback()
			return nil, 0, se.err
		}
		for ; i < j; i++ {
			if batch[i].revisioned() {
				if results[i].err == nil {
					last = next
				}
				next++
			}
		}
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
	if s.d.Notify != "" && (n > 0 || hasStatus(batch)) {
		// Delivered at commit, to every replica listening: their watchers and status
		// followers wake at once instead of at their next poll.
		if _, err := w.exec(s.d.Notify); err != nil {
			tx.Rollback()
			return nil, 0, err
		}
	}
	if failpointsOn {
		if err := failpoint("commit", batch); err != nil {
			tx.Rollback()
			return nil, 0, fmt.Errorf("%w: %w", errCommit, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errCommit, err)
	}
	s.wake()
	if failpointsOn {
		if err := failpoint("committed", batch); err != nil {
			return nil, 0, fmt.Errorf("%w: %w", errCommit, err)
		}
	}
	return results, last, nil
}

// create writes a run of creates, which take revisions rev, rev+1, … in order: one
// multi-row statement per table (per chunk of rows). A create whose key exists, or is taken
// by an earlier create of the run, is refused with ErrAlreadyExists, as it would be one by
// one.
func (w *txw) create(ops []*op, rev int64, results []opResult) error {
	type newRow struct {
		i         int // in ops
		key       store.Key
		data, sum []byte
		id        int64
		inserted  bool
	}
	rows := make([]newRow, 0, len(ops))
	byKey := make(map[store.Key]int, len(ops)) // index in rows
	for i, o := range ops {
		key := store.KeyOf(o.obj)
		if _, taken := byKey[key]; taken {
			results[i].err = fmt.Errorf("%s: %w", key, store.ErrAlreadyExists)
			continue
		}
		out := *o.obj
		out.Metadata.ResourceVersion = strconv.FormatInt(rev+int64(i), 10)
		data, err := json.Marshal(&out)
		if err != nil {
			results[i].err = fmt.Errorf("encoding %s: %w", key, err)
			continue
		}
		results[i].obj = &out
		byKey[key] = len(rows)
		rows = append(rows, newRow{i: i, key: key, data: data, sum: w.s.summary(&out)})
	}

	err := w.chunks(len(rows), 5, func(lo, hi int) error {
		args := make([]any, 0, 5*(hi-lo))
		for _, r := range rows[lo:hi] {
			args = append(args, r.key.Kind, r.key.Namespace, r.key.Name, rev+int64(r.i), r.data)
		}
		rs, err := w.query(multiRow(`INSERT INTO objects (kind, namespace, name, rev, data) VALUES `, `(?, ?, ?, ?, ?)`, hi-lo,
			` ON CONFLICT (kind, namespace, name) DO NOTHING RETURNING id, kind, namespace, name`), args...)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var id int64
			var k store.Key
			if err := rs.Scan(&id, &k.Kind, &k.Namespace, &k.Name); err != nil {
				return errSQL{err}
			}
			n, ok := byKey[k]
			if !ok || n < lo || n >= hi || rows[n].inserted {
				return errSQL{fmt.Errorf("creating objects: the database returned %s, which was not inserted", k)}
			}
			rows[n].id, rows[n].inserted = id, true
		}
		if err := rs.Err(); err != nil {
			return errSQL{err}
		}
		return nil
	})
	if err != nil {
		return err
	}

	type labelRow struct {
		kind, key, value string
		id               int64
	}
	var labels []labelRow
	done := rows[:0]
	for _, r := range rows {
		if !r.inserted {
			results[r.i] = opResult{err: fmt.Errorf("%s: %w", r.key, store.ErrAlreadyExists)}
			continue
		}
		for k, v := range results[r.i].obj.Metadata.Labels {
			labels = append(labels, labelRow{r.key.Kind, k, v, r.id})
		}
		done = append(done, r)
	}
	rows = done
	var sums []newRow
	for _, r := range rows {
		if r.sum != nil {
			sums = append(sums, r)
		}
	}
	err = w.chunks(len(sums), 3, func(lo, hi int) error {
		args := make([]any, 0, 3*(hi-lo))
		for _, r := range sums[lo:hi] {
			args = append(args, r.id, r.key.Kind, r.sum)
		}
		_, err := w.exec(multiRow(`INSERT INTO summaries (obj, kind, summary) VALUES `, `(?, ?, ?)`, hi-lo, ``), args...)
		return err
	})
	if err != nil {
		return err
	}
	err = w.chunks(len(labels), 4, func(lo, hi int) error {
		args := make([]any, 0, 4*(hi-lo))
		for _, l := range labels[lo:hi] {
			args = append(args, l.kind, l.key, l.value, l.id)
		}
		_, err := w.exec(multiRow(`INSERT INTO labels (kind, key, value, obj) VALUES `, `(?, ?, ?, ?)`, hi-lo, ``), args...)
		return err
	})
	if err != nil {
		return err
	}
	err = w.chunks(len(rows), 7, func(lo, hi int) error {
		args := make([]any, 0, 7*(hi-lo))
		for _, r := range rows[lo:hi] {
			args = append(args, rev+int64(r.i), r.key.Kind, r.key.Namespace, r.key.Name, r.id, evAdded, r.data)
		}
		_, err := w.exec(multiRow(`INSERT INTO events (rev, kind, namespace, name, obj, type, data, prev) VALUES `, `(?, ?, ?, ?, ?, ?, ?, NULL)`, hi-lo, ``), args...)
		return err
	})
	if err != nil {
		return err
	}
	for _, r := range rows {
		w.count[r.key.Kind]++
	}
	return nil
}

// maxParams bounds the bind parameters of one statement: PostgreSQL takes up to 65,535,
// SQLite (modernc.org/sqlite) up to 32,766.
const maxParams = 30000

// chunks splits n rows of perRow parameters each into runs [lo, hi) that fit one statement.
func chunks(n, perRow int, fn func(lo, hi int) error) error {
	size := maxParams / perRow
	for lo := 0; lo < n; lo += size {
		if err := fn(lo, min(lo+size, n)); err != nil {
			return err
		}
	}
	return nil
}

// multiRow returns head, n copies of group separated by commas, then tail.
func multiRow(head, group string, n int, tail string) string {
	var b strings.Builder
	b.Grow(len(head) + n*(len(group)+2) + len(tail))
	b.WriteString(head)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(group)
	}
	b.WriteString(tail)
	return b.String()
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

func (w *txw) update(obj *api.Object, rv string, keepStatus bool, base *api.Object, rev int64) (*api.Object, error) {
	key := store.KeyOf(obj)
	id, oldRev, oldData, err := w.current(key)
	if err != nil {
		return nil, err
	}
	if err := checkRV(key, rv, oldRev); err != nil {
		return nil, err
	}
	out := *obj
	if keepStatus {
		stored, err := store.Decode(oldData)
		if err != nil {
			return nil, err
		}
		if base != nil && !store.SameContent(stored, base) {
			return nil, fmt.Errorf("%s: changed since it was read: %w", key, store.ErrConflict)
		}
		out.Metadata.UID, out.Metadata.CreationTimestamp, out.Status = stored.Metadata.UID, stored.Metadata.CreationTimestamp, stored.Status
		out.Metadata.Generation = stored.Metadata.Generation
		if !store.SameJSON(stored.Spec, out.Spec) {
			out.Metadata.Generation++
		}
	}
	out.Metadata.ResourceVersion = strconv.FormatInt(rev, 10)
	data, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", key, err)
	}
	if _, err := w.exec(`UPDATE objects SET rev = ?, data = ? WHERE id = ?`, rev, data, id); err != nil {
		return nil, err
	}
	if sum := w.s.summary(&out); sum != nil {
		if _, err := w.exec(`INSERT INTO summaries (obj, kind, summary) VALUES (?, ?, ?) ON CONFLICT (obj) DO UPDATE SET summary = excluded.summary`, id, key.Kind, sum); err != nil {
			return nil, err
		}
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
	// Whatever the summarizers now: a summary of a kind summarised once must not outlive it.
	if _, err := w.exec(`DELETE FROM summaries WHERE obj = ?`, id); err != nil {
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

func hasStatus(batch []*op) bool {
	for _, o := range batch {
		if o.kind == opStatus {
			return true
		}
	}
	return false
}

// status writes a run of agent reports as if one after another: each (cluster, bundle)
// takes its last write in the run (a row, or a removal after it in the same report), each
// cluster its largest sequence. A report whose sequence is below its cluster's stored one,
// or below an earlier report's in the run, is stale: its rows are not written and its
// result is store.ErrStale. Rows go in one multi-row upsert, which in PostgreSQL may not
// touch a row twice; removals, which are rare, one by one.
func (w *txw) status(ops []*op, results []opResult) error {
	// Every cluster written gets the next status revision, which other replicas follow
	// (StatusChanges). The counter row's lock orders these transactions across replicas,
	// so status revisions commit in order and a reader never skips one committed late. It
	// is taken before the stored sequences are read: a writer holding it sees every
	// earlier writer's sequences (each statement of a READ COMMITTED transaction reads
	// what was committed when it started), so two replicas cannot both find their report
	// the newest.
	var srev int64
	row, err := w.queryRow(`UPDATE meta SET value = value + 1 WHERE name = 'status_revision' RETURNING value`)
	if err != nil {
		return err
	}
	if err := row.Scan(&srev); err != nil {
		return errSQL{err}
	}
	var clusters []string
	seen := map[string]bool{}
	for _, o := range ops {
		if !seen[o.cluster] {
			seen[o.cluster] = true
			clusters = append(clusters, o.cluster)
		}
	}
	// stored: each cluster's sequence, as stored and then as the run leaves it.
	stored, err := w.seqs(clusters)
	if err != nil {
		return err
	}

	type key struct{ cluster, bundle string }
	last := map[key]*store.DeploymentStatus{} // nil: removed
	var keys []key                            // in order of first write
	set := func(k key, r *store.DeploymentStatus) {
		if _, ok := last[k]; !ok {
			keys = append(keys, k)
		}
		last[k] = r
	}
	for i, o := range ops {
		cur, ok := stored[o.cluster]
		if ok && o.seq < cur {
			results[i].err = fmt.Errorf("report %d of cluster %s, which has %d stored: %w", o.seq, o.cluster, cur, store.ErrStale)
			continue
		}
		if !ok || o.seq > cur {
			stored[o.cluster] = o.seq
		}
		for j := range o.rows {
			set(key{o.cluster, o.rows[j].Bundle}, &o.rows[j])
		}
		for _, b := range o.removed {
			set(key{o.cluster, b}, nil)
		}
	}
	var up []key
	for _, k := range keys {
		if last[k] != nil {
			up = append(up, k)
		} else if _, err := w.exec(`DELETE FROM deployment_status WHERE cluster = ? AND bundle = ?`, k.cluster, k.bundle); err != nil {
			return err
		}
	}
	err = chunks(len(up), 5, func(lo, hi int) error {
		args := make([]any, 0, 5*(hi-lo))
		for _, k := range up[lo:hi] {
			r := last[k]
			args = append(args, k.cluster, k.bundle, r.ID, r.State, r.Message)
		}
		_, err := w.exec(multiRow(`INSERT INTO deployment_status (cluster, bundle, id, state, message) VALUES `, `(?, ?, ?, ?, ?)`, hi-lo,
			` ON CONFLICT (cluster, bundle) DO UPDATE SET id = excluded.id, state = excluded.state, message = excluded.message`), args...)
		return err
	})
	if err != nil {
		return err
	}
	// A cluster whose reports were all stale keeps its sequence but still takes the new
	// status revision: a follower that passed over the newer write (its own replica was
	// storing this report then) reads the cluster's rows again.
	return chunks(len(clusters), 3, func(lo, hi int) error {
		args := make([]any, 0, 3*(hi-lo))
		for _, c := range clusters[lo:hi] {
			args = append(args, c, stored[c], srev)
		}
		_, err := w.exec(multiRow(`INSERT INTO agent_seq (cluster, seq, srev) VALUES `, `(?, ?, ?)`, hi-lo,
			` ON CONFLICT (cluster) DO UPDATE SET srev = excluded.srev, seq = CASE WHEN agent_seq.seq < excluded.seq THEN excluded.seq ELSE agent_seq.seq END`), args...)
		return err
	})
}

// seqs reads the stored sequences of clusters; a cluster with none is absent.
func (w *txw) seqs(clusters []string) (map[string]int64, error) {
	out := make(map[string]int64, len(clusters))
	err := chunks(len(clusters), 1, func(lo, hi int) error {
		args := make([]any, 0, hi-lo)
		for _, c := range clusters[lo:hi] {
			args = append(args, c)
		}
		rs, err := w.query(multiRow(`SELECT cluster, seq FROM agent_seq WHERE cluster IN (`, `?`, hi-lo, `)`), args...)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var c string
			var n int64
			if err := rs.Scan(&c, &n); err != nil {
				return errSQL{err}
			}
			out[c] = n
		}
		if err := rs.Err(); err != nil {
			return errSQL{err}
		}
		return nil
	})
	return out, err
}

// Event types as stored.
const (
	evAdded    = 1
	evModified = 2
	evDeleted  = 3
)
