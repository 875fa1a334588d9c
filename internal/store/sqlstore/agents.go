package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

var _ store.Agents = (*Store)(nil)

// PutContent stores content by digest.
func (s *Store) PutContent(ctx context.Context, digest string, data []byte) (err error) {
	defer s.observe("put_content", time.Now(), &err)
	_, err = s.submit(ctx, &op{kind: opContent, key: store.Key{Kind: "content", Name: digest}, digest: digest, data: data})
	return err
}

// GetContent reads content by digest.
func (s *Store) GetContent(ctx context.Context, digest string) (data []byte, err error) {
	defer s.observe("get_content", time.Now(), &err)
	err = s.queryRow(ctx, `SELECT data FROM content WHERE digest = ?`, digest).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("content %s: %w", digest, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading content %s: %w", digest, err)
	}
	return data, nil
}

// PutStatus records one cluster's report; it returns once the report is committed, or
// store.ErrStale for a report older than the stored one (see store.Agents).
func (s *Store) PutStatus(ctx context.Context, cluster string, seq int64, rows []store.DeploymentStatus, removed []string) error {
	start := time.Now()
	_, err := s.submit(ctx, &op{kind: opStatus, key: store.Key{Kind: "status", Name: cluster}, cluster: cluster, seq: seq, rows: rows, removed: removed})
	// A stale report is old news, not a failed write.
	observed := err
	if errors.Is(err, store.ErrStale) {
		observed = nil
	}
	s.observe("put_status", start, &observed)
	return err
}

// DeleteClusterStatus forgets a cluster's rows.
func (s *Store) DeleteClusterStatus(ctx context.Context, cluster string) error {
	_, err := s.submit(ctx, &op{kind: opDeleteStatus, key: store.Key{Kind: "status", Name: cluster}, cluster: cluster})
	return err
}

// ScanStatus streams every status row.
func (s *Store) ScanStatus(ctx context.Context, fn func(store.DeploymentStatus) error) error {
	rows, err := s.db.QueryContext(ctx, `SELECT cluster, bundle, id, state, message FROM deployment_status`)
	if err != nil {
		return fmt.Errorf("scanning status: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r store.DeploymentStatus
		if err := rows.Scan(&r.Cluster, &r.Bundle, &r.ID, &r.State, &r.Message); err != nil {
			return fmt.Errorf("scanning status: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ScanSeqs streams every cluster's last report sequence.
func (s *Store) ScanSeqs(ctx context.Context, fn func(string, int64) error) error {
	rows, err := s.db.QueryContext(ctx, `SELECT cluster, seq FROM agent_seq`)
	if err != nil {
		return fmt.Errorf("scanning report sequences: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c string
		var n int64
		if err := rows.Scan(&c, &n); err != nil {
			return err
		}
		if err := fn(c, n); err != nil {
			return err
		}
	}
	return rows.Err()
}

// StatusRevision returns the newest status revision.
func (s *Store) StatusRevision(ctx context.Context) (int64, error) {
	var rev int64
	if err := s.queryRow(ctx, `SELECT value FROM meta WHERE name = 'status_revision'`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("reading status revision: %w", err)
	}
	return rev, nil
}

// StatusChanges streams the clusters whose status was written after the cursor. It reads
// the changed clusters, then their rows, in one read transaction, so a cluster's rows are
// those of a committed write at least as new as its revision.
func (s *Store) StatusChanges(ctx context.Context, after store.StatusCursor, limit int, fn func(string, int64, []store.DeploymentStatus) error) (next store.StatusCursor, err error) {
	defer s.observe("status_changes", time.Now(), &err)
	next = after
	if limit <= 0 {
		limit = 1000
	}
	tx, err := s.db.BeginTx(ctx, s.d.ReadTx)
	if err != nil {
		return next, fmt.Errorf("reading status changes: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, s.q(`SELECT cluster, seq, srev FROM agent_seq WHERE srev > ? OR (srev = ? AND cluster > ?) ORDER BY srev, cluster LIMIT ?`),
		after.Rev, after.Rev, after.Cluster, limit)
	if err != nil {
		return next, fmt.Errorf("reading status changes: %w", err)
	}
	type changed struct {
		cluster string
		seq     int64
		rows    []store.DeploymentStatus
	}
	var cs []changed
	idx := map[string]int{}
	for rows.Next() {
		var c changed
		if err := rows.Scan(&c.cluster, &c.seq, &next.Rev); err != nil {
			rows.Close()
			return after, fmt.Errorf("reading status changes: %w", err)
		}
		next.Cluster = c.cluster
		idx[c.cluster] = len(cs)
		cs = append(cs, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return after, fmt.Errorf("reading status changes: %w", err)
	}
	if len(cs) == 0 {
		return after, nil
	}
	// The rows of the changed clusters, by chunks of IN lists (a bounded statement each).
	err = chunks(len(cs), 1, func(lo, hi int) error {
		args := make([]any, 0, hi-lo)
		for _, c := range cs[lo:hi] {
			args = append(args, c.cluster)
		}
		q := `SELECT cluster, bundle, id, state, message FROM deployment_status WHERE cluster IN (?` + strings.Repeat(`, ?`, hi-lo-1) + `)`
		rs, err := tx.QueryContext(ctx, s.q(q), args...)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var r store.DeploymentStatus
			if err := rs.Scan(&r.Cluster, &r.Bundle, &r.ID, &r.State, &r.Message); err != nil {
				return err
			}
			c := &cs[idx[r.Cluster]]
			c.rows = append(c.rows, r)
		}
		return rs.Err()
	})
	if err != nil {
		return after, fmt.Errorf("reading status changes: %w", err)
	}
	for _, c := range cs {
		if err := fn(c.cluster, c.seq, c.rows); err != nil {
			return after, err
		}
	}
	return next, nil
}

var _ store.Summaries = (*Store)(nil)

func (s *Store) summary(obj *api.Object) []byte {
	if fn := s.cfg.Summaries[obj.Kind]; fn != nil {
		return fn(obj)
	}
	return nil
}

// ScanSummaries streams every object's summary of a kind at one revision. Summaries have a
// table of their own, so a scan reads a few hundred bytes per object rather than the whole
// objects table with its documents (gigabytes at a million clusters). Objects that have no
// summary row (restored from a backup taken before summaries had a table, or written before
// their kind had a summarizer) are summarised from their documents on the way.
func (s *Store) ScanSummaries(ctx context.Context, kind string, fn func([]byte) error) (rev int64, err error) {
	defer s.observe("scan_summaries", time.Now(), &err)
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("scanning %s: %w", kind, err)
	}
	defer conn.Close()
	if s.d.BulkRead != "" {
		if _, err := conn.ExecContext(ctx, s.d.BulkRead); err != nil {
			return 0, fmt.Errorf("scanning %s: %w", kind, err)
		}
		defer func() {
			if _, err := conn.ExecContext(context.Background(), s.d.BulkReadDone); err != nil {
				// The connection must not go back to the pool in bulk-read mode.
				conn.Raw(func(any) error { return driver.ErrBadConn })
			}
		}()
	}
	tx, err := conn.BeginTx(ctx, s.d.ReadTx)
	if err != nil {
		return 0, fmt.Errorf("scanning %s: %w", kind, err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'revision'`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("scanning %s: %w", kind, err)
	}
	// The kind being scanned is most of the table in a large fleet (clusters).
	n, err := scanRows(ctx, tx, s.q(`SELECT summary FROM summaries `+s.d.SeqScan+` WHERE kind = ?`), kind, fn)
	if err != nil {
		return 0, fmt.Errorf("scanning %s: %w", kind, err)
	}
	var want int64
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COALESCE(MAX(n), 0) FROM kind_counts WHERE kind = ?`), kind).Scan(&want); err != nil {
		return 0, fmt.Errorf("scanning %s: %w", kind, err)
	}
	if n >= want {
		return rev, nil
	}
	// Some objects have no summary row: read their documents.
	_, err = scanRows(ctx, tx, s.q(`SELECT data FROM objects o WHERE kind = ? AND NOT EXISTS (SELECT 1 FROM summaries m WHERE m.obj = o.id)`), kind, func(data []byte) error {
		obj, err := store.Decode(data)
		if err != nil {
			return err
		}
		return fn(s.summary(obj))
	})
	if err != nil {
		return 0, fmt.Errorf("scanning %s: %w", kind, err)
	}
	return rev, nil
}

// scanRows calls fn with the one column of each row the query returns, and counts them. fn
// must not keep its bytes.
func scanRows(ctx context.Context, tx *sql.Tx, query, arg string, fn func([]byte) error) (n int64, err error) {
	rows, err := tx.QueryContext(ctx, query, arg)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var b sql.RawBytes
		if err := rows.Scan(&b); err != nil {
			return n, err
		}
		n++
		if err := fn(b); err != nil {
			return n, err
		}
	}
	return n, rows.Err()
}
