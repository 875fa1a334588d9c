package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// SnapshotInfo describes a snapshot: where it was taken and as of which revision.
type SnapshotInfo struct {
	Driver   string
	Revision int64
	// Schema is the newest schema migration the store had applied.
	Schema int
}

// RowFunc returns a table's next row, or io.EOF after the last. Values are int64, float64,
// bool, string, []byte, time.Time or nil; the slice is the caller's to keep.
type RowFunc func() ([]any, error)

// TableFunc is called for each table of a snapshot, in name order.
type TableFunc func(name string, columns []string, next RowFunc) error

// migrationsTable is the schema's own bookkeeping: a restore target has its own.
const migrationsTable = "schema_migrations"

// Snapshot reads every table of the store in one read transaction, so the tables agree with
// each other and with info.Revision however the store is written meanwhile. head is called
// first, then table for each table.
func (s *Store) Snapshot(ctx context.Context, head func(SnapshotInfo) error, table TableFunc) error {
	tx, err := s.db.BeginTx(ctx, s.d.ReadTx)
	if err != nil {
		return fmt.Errorf("starting the snapshot: %w", err)
	}
	defer tx.Rollback()
	info := SnapshotInfo{Driver: s.d.Name}
	// SQLite takes a deferred transaction's snapshot at its first read: this one.
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'revision'`).Scan(&info.Revision); err != nil {
		return fmt.Errorf("snapshot: reading the revision: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM `+migrationsTable).Scan(&info.Schema); err != nil {
		return fmt.Errorf("snapshot: reading the schema version: %w", err)
	}
	tables, err := s.tables(ctx, tx)
	if err != nil {
		return err
	}
	if err := head(info); err != nil {
		return err
	}
	for _, t := range tables {
		if err := s.snapshotTable(ctx, tx, t, table); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) snapshotTable(ctx context.Context, tx *sql.Tx, t tableInfo, fn TableFunc) error {
	names := t.names()
	// Quoted: some column names (key, value, type) are keywords somewhere.
	rows, err := tx.QueryContext(ctx, `SELECT `+quoteAll(names)+` FROM `+quote(t.name))
	if err != nil {
		return fmt.Errorf("snapshot: reading %s: %w", t.name, err)
	}
	defer rows.Close()
	next := func() ([]any, error) {
		if !rows.Next() {
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("snapshot: reading %s: %w", t.name, err)
			}
			return nil, io.EOF
		}
		vals := make([]any, len(names))
		ptrs := make([]any, len(names))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("snapshot: reading %s: %w", t.name, err)
		}
		return vals, nil
	}
	if err := fn(t.name, names, next); err != nil {
		return err
	}
	return rows.Close()
}

type column struct {
	name string
	// binary: the column holds bytes (BLOB, BYTEA), which PostgreSQL will not take as text.
	binary bool
}

type tableInfo struct {
	name    string
	columns []column
}

func (t tableInfo) names() []string {
	out := make([]string, len(t.columns))
	for i, c := range t.columns {
		out[i] = c.name
	}
	return out
}

// tables lists the store's tables but the migrations' bookkeeping, in name order.
func (s *Store) tables(ctx context.Context, q querier) ([]tableInfo, error) {
	rows, err := q.QueryContext(ctx, s.d.TablesQuery)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing tables: %w", err)
		}
		if n != migrationsTable {
			names = append(names, n)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	slices.Sort(names)
	out := make([]tableInfo, 0, len(names))
	for _, n := range names {
		t := tableInfo{name: n}
		rows, err := q.QueryContext(ctx, s.q(s.d.ColumnsQuery), n)
		if err != nil {
			return nil, fmt.Errorf("listing the columns of %s: %w", n, err)
		}
		for rows.Next() {
			var c column
			var typ string
			if err := rows.Scan(&c.name, &typ); err != nil {
				rows.Close()
				return nil, fmt.Errorf("listing the columns of %s: %w", n, err)
			}
			typ = strings.ToLower(typ)
			c.binary = typ == "blob" || typ == "bytea"
			t.columns = append(t.columns, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("listing the columns of %s: %w", n, err)
		}
		out = append(out, t)
	}
	return out, nil
}

func quote(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quote(n)
	}
	return strings.Join(q, ", ")
}

// ErrNotEmpty is returned by Restore into a store that holds anything.
var ErrNotEmpty = errors.New("the target store is not empty")

// Empty reports whether the store holds nothing: revision 0 and no rows in any table but
// meta.
func (s *Store) Empty(ctx context.Context) (bool, error) {
	return s.empty(ctx, s.db)
}

func (s *Store) empty(ctx context.Context, q querier) (bool, error) {
	var rev int64
	if err := q.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'revision'`).Scan(&rev); err != nil {
		return false, fmt.Errorf("reading the revision: %w", err)
	}
	if rev != 0 {
		return false, nil
	}
	tables, err := s.tables(ctx, q)
	if err != nil {
		return false, err
	}
	for _, t := range tables {
		if t.name == "meta" {
			continue
		}
		var one int
		err := q.QueryRowContext(ctx, `SELECT 1 FROM `+quote(t.name)+` LIMIT 1`).Scan(&one)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return false, fmt.Errorf("reading %s: %w", t.name, err)
		}
	}
	return true, nil
}

// SourceFunc hands Restore the tables to write, calling table for each.
type SourceFunc func(table TableFunc) error

// restoreBatch bounds the rows of one INSERT (SQLite allows 32766 parameters, PostgreSQL
// 65535).
const restoreBatch = 256

// Restore writes a snapshot's tables into this store, which must be empty (ErrNotEmpty),
// all in one transaction: it is written whole or not at all. Every table and column of the
// snapshot must exist here; tables or columns only this store has (a newer schema) keep
// their defaults. Open the store for nothing else meanwhile, and reopen it afterwards: the
// watch machinery started at revision 0.
//
// bumpRevision > 0 moves the revision that far ahead and marks all history before it
// compacted (as etcd's snapshot restore --bump-revision --mark-compacted does): a backup is
// older than what its clients saw, and revisions they hold from after it must never be
// taken by new writes, nor a watch resumed from one be answered from the wrong history.
func (s *Store) Restore(ctx context.Context, src SourceFunc, bumpRevision int64) error {
	if bumpRevision < 0 {
		return fmt.Errorf("restore: a negative revision bump %d", bumpRevision)
	}
	// One connection: a bulk load runs on it inside the transaction.
	conn, err := s.writeDB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("starting the restore: %w", err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("starting the restore: %w", err)
	}
	defer tx.Rollback()
	empty, err := s.empty(ctx, tx)
	if err != nil {
		return err
	}
	if !empty {
		return ErrNotEmpty
	}
	tables, err := s.tables(ctx, tx)
	if err != nil {
		return err
	}
	byName := map[string]tableInfo{}
	for _, t := range tables {
		byName[t.name] = t
	}
	seen := map[string]bool{}
	err = src(func(name string, cols []string, next RowFunc) error {
		t, ok := byName[name]
		if !ok {
			return fmt.Errorf("table %s is not in this store's schema (a backup of a newer version?)", name)
		}
		if seen[name] {
			return fmt.Errorf("table %s appears twice", name)
		}
		seen[name] = true
		binary := make([]bool, len(cols))
		for i, c := range cols {
			j := slices.IndexFunc(t.columns, func(tc column) bool { return tc.name == c })
			if j < 0 {
				return fmt.Errorf("column %s.%s is not in this store's schema (a backup of a newer version?)", name, c)
			}
			binary[i] = t.columns[j].binary
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+quote(name)); err != nil {
			return fmt.Errorf("restoring %s: %w", name, err)
		}
		if s.d.CopyRows == nil {
			return s.insertRows(ctx, tx, name, cols, binary, next)
		}
		rows := func() ([]any, error) {
			row, err := next()
			if errors.Is(err, io.EOF) {
				return nil, nil
			}
			if err != nil {
				return nil, err
			}
			return convertRow(name, row, binary)
		}
		return conn.Raw(func(dc any) error {
			if err := s.d.CopyRows(ctx, dc, name, cols, rows); err != nil {
				return fmt.Errorf("restoring %s: %w", name, err)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if err := s.restoreSequence(ctx, tx); err != nil {
		return err
	}
	if bumpRevision > 0 {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE meta SET value = value + ? WHERE name = 'revision'`), bumpRevision); err != nil {
			return fmt.Errorf("restore: moving the revision: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE meta SET value = (SELECT value FROM meta WHERE name = 'revision') WHERE name = 'compacted'`); err != nil {
			return fmt.Errorf("restore: marking history compacted: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing the restore: %w", err)
	}
	return nil
}

func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, table string, cols []string, binary []bool, next RowFunc) error {
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	prefix := `INSERT INTO ` + quote(table) + ` (` + quoteAll(cols) + `) VALUES `
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	args := make([]any, 0, restoreBatch*len(cols))
	flush := func() error {
		n := len(args) / len(cols)
		if n == 0 {
			return nil
		}
		var err error
		if n == restoreBatch {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, s.q(prefix+strings.TrimSuffix(strings.Repeat(one+", ", n), ", "))); err != nil {
					return fmt.Errorf("restoring %s: %w", table, err)
				}
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, s.q(prefix+strings.TrimSuffix(strings.Repeat(one+", ", n), ", ")), args...)
		}
		if err != nil {
			return fmt.Errorf("restoring %s: %w", table, err)
		}
		args = args[:0]
		return nil
	}
	for {
		row, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if row, err = convertRow(table, row, binary); err != nil {
			return err
		}
		args = append(args, row...)
		if len(args) == restoreBatch*len(cols) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// convertRow checks a row's width and gives each value the type its column takes.
func convertRow(table string, row []any, binary []bool) ([]any, error) {
	if len(row) != len(binary) {
		return nil, fmt.Errorf("restoring %s: a row of %d values for %d columns", table, len(row), len(binary))
	}
	for i, v := range row {
		// A value read as text from one database may be bytes in the other's column.
		switch x := v.(type) {
		case string:
			if binary[i] {
				row[i] = []byte(x)
			}
		case []byte:
			if !binary[i] {
				row[i] = string(x)
			}
		}
	}
	return row, nil
}

// restoreSequence makes new objects' ids follow every id the restored history names (an
// object deleted since still has its id in events and must not lend it to a new one).
func (s *Store) restoreSequence(ctx context.Context, tx *sql.Tx) error {
	var next int64
	err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(m), 0) FROM (SELECT MAX(id) AS m FROM objects UNION ALL SELECT MAX(obj) AS m FROM events) AS ids`).Scan(&next)
	if err != nil {
		return fmt.Errorf("restoring the object id sequence: %w", err)
	}
	if next == 0 || s.d.SetObjectSequence == nil {
		return nil
	}
	for _, stmt := range s.d.SetObjectSequence(next) {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("restoring the object id sequence: %w", err)
		}
	}
	return nil
}
