package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"flotilla.dev/internal/store"
)

// continueToken lets the next page be read as of the first page's revision.
type continueToken struct {
	Rev   int64 `json:"r"`
	After int64 `json:"a"`
}

func encodeContinue(t continueToken) string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeContinue(s string) (continueToken, error) {
	var t continueToken
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(b, &t)
	}
	if err != nil || t.Rev <= 0 {
		return t, store.ErrInvalidContinue
	}
	return t, nil
}

type row struct {
	id   int64
	data []byte
}

// List returns one page of objects, ordered by their storage id, as of one revision.
//
// A page after the first is read at the first page's revision R without keeping old rows:
// objects unchanged since R come from the objects table, and the state at R of the objects
// changed since comes from the "before" image of their first event after R. That costs a scan
// of the events written since the first page, which is small while a client pages through.
func (s *Store) List(ctx context.Context, opts store.ListOptions) (res *store.ListResult, err error) {
	defer s.observe("list", time.Now(), &err)
	var tok continueToken
	if opts.Continue != "" {
		if tok, err = decodeContinue(opts.Continue); err != nil {
			return nil, err
		}
	}
	tx, err := s.db.BeginTx(ctx, s.d.ReadTx)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", opts.Kind, err)
	}
	defer tx.Rollback()

	var before []row
	if opts.Continue != "" {
		compacted, err := s.compacted(ctx, tx)
		if err != nil {
			return nil, err
		}
		if compacted > tok.Rev {
			return nil, fmt.Errorf("continue token from revision %d: %w (the list must be restarted)", tok.Rev, store.ErrCompacted)
		}
		if before, err = s.beforeImages(ctx, tx, opts, tok); err != nil {
			return nil, err
		}
	} else {
		if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'revision'`).Scan(&tok.Rev); err != nil {
			return nil, fmt.Errorf("listing %s: reading revision: %w", opts.Kind, err)
		}
	}

	if opts.Selector != nil {
		if _, selectable := opts.Selector.Requirements(); !selectable {
			// A selector of nothing (labels.Nothing) has no requirements to query by: read as
			// none, it would answer everything.
			return &store.ListResult{Revision: tok.Rev}, nil
		}
	}
	driver, err := s.pickDriver(ctx, tx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", opts.Kind, err)
	}
	q, args, post := s.listQuery(opts, tok.Rev, driver)
	limit := opts.Limit
	var current []row
	var a arena
	// The objects read so far go to opts.Items every listBatch rows, but for the one past
	// the limit, which only tells that another page follows. A continue page's objects
	// changed since its first page are merged in by id at the end, so its objects go all
	// at once.
	sent := 0
	defer func() {
		// Objects handed out may still be being written: their blocks are then left to
		// the collector, never reused under a reader.
		if err != nil && sent == 0 {
			a.release()
		}
	}()
	flush := func() {
		if opts.Items == nil || len(before) > 0 {
			return
		}
		n := len(current)
		if limit > 0 {
			n = min(n, limit)
		}
		if n > sent {
			items := make([]json.RawMessage, n-sent)
			for i, r := range current[sent:n] {
				items[i] = r.data
			}
			opts.Items(items)
			sent = n
		}
	}
	after := tok.After
	for {
		// One more than a page tells whether another page follows.
		want := 0
		if limit > 0 {
			want = limit + 1 - len(current)
		}
		read := 0
		err := s.queryRows(ctx, tx, q, args, after, want, &a, func(r row) {
			read++
			after = r.id
			if post == nil || post.Matches(labels.Set(labelsOf(r.data))) {
				current = append(current, r)
			}
			if read%listBatch == 0 {
				flush()
			}
		})
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", opts.Kind, err)
		}
		if want == 0 || read < want || len(current) > limit {
			break
		}
	}

	all := current
	if len(before) > 0 {
		all = append(all, before...)
		sort.Slice(all, func(i, j int) bool { return all[i].id < all[j].id })
	}
	res = &store.ListResult{Revision: tok.Rev}
	if limit > 0 && len(all) > limit {
		all = all[:limit]
		res.Continue = encodeContinue(continueToken{Rev: tok.Rev, After: all[len(all)-1].id})
	}
	res.Items = make([]json.RawMessage, len(all))
	for i, r := range all {
		res.Items[i] = r.data
	}
	if opts.Items != nil && len(before) > 0 && len(res.Items) > 0 {
		opts.Items(res.Items)
	} else {
		flush()
	}
	if len(a.pooled) > 0 {
		res.Release = a.release
	}
	return res, nil
}

// listBatch is how many rows a list reads between handing objects to ListOptions.Items.
const listBatch = 256

// queryRows runs a page query and hands each row to each, its object copied into a.
func (s *Store) queryRows(ctx context.Context, tx *sql.Tx, q string, args []any, after int64, limit int, a *arena, each func(row)) error {
	qargs := append([]any{after}, args...)
	if limit > 0 {
		q += " LIMIT ?"
		qargs = append(qargs, limit)
	}
	rows, err := tx.QueryContext(ctx, s.q(q), qargs...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r row
		var raw sql.RawBytes
		if err := rows.Scan(&r.id, &raw); err != nil {
			return err
		}
		r.data = a.copy(raw)
		each(r)
	}
	return rows.Err()
}

// arena holds a list's objects. They are copied out of the driver's buffer into shared
// blocks rather than one allocation each: a list of ten thousand costs a few dozen
// allocations, not ten thousand, and one copy of each object instead of two. A large list's
// blocks come from listBlocks and go back there when the caller releases the list: at a
// million clusters a list of ten thousand copies ~7 MB, and that garbage was most of the
// list's CPU, in collections that each mark the whole fleet model (docs/benchmarks.md).
type arena struct {
	cur    []byte
	total  int
	pooled []*[]byte
}

func (a *arena) copy(raw []byte) []byte {
	if len(a.cur)+len(raw) > cap(a.cur) {
		switch {
		case len(raw) > listArenaBlock:
			a.cur = make([]byte, 0, len(raw))
		case a.total >= listPoolFrom:
			b := listBlocks.Get().(*[]byte)
			a.pooled = append(a.pooled, b)
			a.cur = (*b)[:0]
		default:
			// Blocks grow with the list, so that a short list stays small.
			a.cur = make([]byte, 0, min(max(a.total, 4<<10), listArenaBlock))
		}
	}
	a.total += len(raw)
	start := len(a.cur)
	a.cur = append(a.cur, raw...)
	return a.cur[start:len(a.cur):len(a.cur)]
}

// release hands the pooled blocks back; the objects in them must no longer be used.
func (a *arena) release() {
	for _, b := range a.pooled {
		listBlocks.Put(b)
	}
	a.pooled, a.cur = nil, nil
}

const (
	// listArenaBlock bounds the blocks listed objects are copied into.
	listArenaBlock = 1 << 20
	// listPoolFrom is how much a list holds before its blocks come from the pool.
	listPoolFrom = 256 << 10
)

var listBlocks = sync.Pool{New: func() any {
	b := make([]byte, 0, listArenaBlock)
	return &b
}}

// listQuery builds the page query. Label requirements become SQL over the labels index: the
// first positive one drives the query (an index range over kind, key, value), the others are
// correlated EXISTS probes. Requirements SQL cannot express (gt, lt) are returned to be
// checked in Go. The query's first argument, prepended by the caller, is the id to start after.
func (s *Store) listQuery(opts store.ListOptions, rev int64, driver int) (string, []any, labels.Selector) {
	var reqs []labels.Requirement
	if opts.Selector != nil {
		reqs, _ = opts.Selector.Requirements()
	}
	var post []labels.Requirement
	for _, r := range reqs {
		switch r.Operator() {
		case selection.GreaterThan, selection.LessThan:
			post = append(post, r)
		}
	}
	var b strings.Builder
	var args []any
	if driver >= 0 {
		r := reqs[driver]
		b.WriteString(`SELECT o.id, o.data FROM labels d JOIN objects o ON o.id = d.obj WHERE d.obj > ? AND d.kind = ? AND d.key = ?`)
		args = append(args, opts.Kind, r.Key())
		if r.Operator() != selection.Exists {
			vals := r.ValuesUnsorted()
			b.WriteString(` AND d.value IN (` + placeholders(len(vals)) + `)`)
			for _, v := range vals {
				args = append(args, v)
			}
		}
	} else {
		b.WriteString(`SELECT o.id, o.data FROM objects o WHERE o.id > ? AND o.kind = ?`)
		args = append(args, opts.Kind)
	}
	b.WriteString(` AND o.rev <= ?`)
	args = append(args, rev)
	if opts.Namespace != "" {
		b.WriteString(` AND o.namespace = ?`)
		args = append(args, opts.Namespace)
	}
	for i, r := range reqs {
		if i == driver {
			continue
		}
		var neg bool
		var vals []string
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			vals = r.ValuesUnsorted()
		case selection.NotEquals, selection.NotIn:
			neg, vals = true, r.ValuesUnsorted()
		case selection.Exists:
		case selection.DoesNotExist:
			neg = true
		default:
			continue
		}
		if neg {
			b.WriteString(` AND NOT EXISTS (`)
		} else {
			b.WriteString(` AND EXISTS (`)
		}
		// With kind, key and value given this is a point lookup in the primary key
		// (kind, key, value, obj); without a value, labels_obj (obj, key, value) serves it.
		b.WriteString(`SELECT 1 FROM labels x WHERE x.kind = ? AND x.key = ?`)
		args = append(args, opts.Kind, r.Key())
		if len(vals) > 0 {
			b.WriteString(` AND x.value IN (` + placeholders(len(vals)) + `)`)
			for _, v := range vals {
				args = append(args, v)
			}
		}
		b.WriteString(` AND x.obj = o.id)`)
	}
	if driver >= 0 {
		b.WriteString(` ORDER BY d.obj`)
	} else {
		b.WriteString(` ORDER BY o.id`)
	}
	var postSel labels.Selector
	if len(post) > 0 {
		postSel = labels.NewSelector().Add(post...)
	}
	return b.String(), args, postSel
}

// driverProbe caps how many index entries pickDriver counts per requirement.
const driverProbe = 20000

func positive(r labels.Requirement) bool {
	switch r.Operator() {
	case selection.Equals, selection.DoubleEquals, selection.In, selection.Exists:
		return true
	}
	return false
}

// pickDriver chooses which label requirement drives the query: the one matching the fewest
// objects. Requirements come sorted by key, not by selectivity, so with more than one a
// capped count of each one's index entries decides (env=prod may match a third of the fleet,
// group=g1 a hundredth). It returns -1 when no requirement can drive.
func (s *Store) pickDriver(ctx context.Context, tx *sql.Tx, opts store.ListOptions) (int, error) {
	if opts.Selector == nil {
		return -1, nil
	}
	reqs, _ := opts.Selector.Requirements()
	var cands []int
	for i, r := range reqs {
		if positive(r) {
			cands = append(cands, i)
		}
	}
	switch len(cands) {
	case 0:
		return -1, nil
	case 1:
		return cands[0], nil
	}
	best, bestN := cands[0], int64(-1)
	for _, i := range cands {
		r := reqs[i]
		q := `SELECT COUNT(*) FROM (SELECT 1 FROM labels WHERE kind = ? AND key = ?`
		args := []any{opts.Kind, r.Key()}
		if r.Operator() != selection.Exists {
			vals := r.ValuesUnsorted()
			q += ` AND value IN (` + placeholders(len(vals)) + `)`
			for _, v := range vals {
				args = append(args, v)
			}
		}
		q += ` LIMIT ?) AS probe`
		args = append(args, driverProbe)
		var n int64
		if err := tx.QueryRowContext(ctx, s.q(q), args...).Scan(&n); err != nil {
			return -1, err
		}
		if bestN < 0 || n < bestN {
			best, bestN = i, n
		}
	}
	return best, nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// beforeImages returns the state at tok.Rev of objects changed since, that match opts and
// lie after the token's position.
func (s *Store) beforeImages(ctx context.Context, tx *sql.Tx, opts store.ListOptions, tok continueToken) ([]row, error) {
	q := `SELECT namespace, name, obj, type, prev FROM events WHERE rev > ? AND kind = ?`
	args := []any{tok.Rev, opts.Kind}
	if opts.Namespace != "" {
		q += ` AND namespace = ?`
		args = append(args, opts.Namespace)
	}
	q += ` ORDER BY rev`
	rows, err := tx.QueryContext(ctx, s.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("listing %s: reading history: %w", opts.Kind, err)
	}
	defer rows.Close()
	seen := map[[2]string]bool{}
	var out []row
	for rows.Next() {
		var ns, name string
		var id int64
		var typ int
		var prev []byte
		if err := rows.Scan(&ns, &name, &id, &typ, &prev); err != nil {
			return nil, fmt.Errorf("listing %s: reading history: %w", opts.Kind, err)
		}
		k := [2]string{ns, name}
		if seen[k] {
			continue
		}
		seen[k] = true
		// Created after the token's revision: it was not there.
		if typ == evAdded || prev == nil || id <= tok.After {
			continue
		}
		if opts.Selector != nil && !opts.Selector.Empty() && !opts.Selector.Matches(labels.Set(labelsOf(prev))) {
			continue
		}
		out = append(out, row{id: id, data: prev})
	}
	return out, rows.Err()
}
