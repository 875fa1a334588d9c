// Package sqlstore is the SQL engine behind both store drivers. One writer goroutine batches
// writes into transactions; a revision counter row orders every write (for PostgreSQL its row
// lock also orders commits across server replicas, so readers always see a prefix of history);
// an events table keeps recent history for watch and for consistent pagination; a poller turns
// new events into watch notifications.
//
// Drivers (store/sqlite, store/postgres) supply a Dialect: schema migrations, placeholder style
// and how to recognise errors worth retrying.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// Dialect is what differs between SQL databases.
type Dialect struct {
	Name string
	// Migrations are applied in order, once each, inside a transaction.
	Migrations []string
	// Numbered placeholders ($1, $2…) instead of ?.
	Numbered bool
	// ReadTx starts the transaction a consistent multi-query read runs in.
	ReadTx *sql.TxOptions
	// Retryable reports errors that a reconnect can cure (a restarted database).
	Retryable func(error) bool
	// IsUniqueViolation reports a unique-constraint error.
	IsUniqueViolation func(error) bool
	// SeqScan follows a table name in a query that reads most of the table, to read it in
	// storage order rather than through an index and a lookup per row.
	SeqScan string
	// BulkRead and BulkReadDone, if set, are run on the connection of a scan that reads most
	// of the database (the fleet model's load) before and after it.
	BulkRead, BulkReadDone string
	// TablesQuery lists the names of the store's tables; ColumnsQuery lists one table's
	// columns (name, declared type) in order, its parameter the table's name. Snapshots and
	// restores read them.
	TablesQuery, ColumnsQuery string
	// SetObjectSequence returns the statements that make the next object id follow last
	// (after a restore wrote ids explicitly).
	SetObjectSequence func(last int64) []string
	// KeepWriteStatements: the writer has a connection of its own that lasts (SQLite), and
	// keeps the statements it runs prepared on it, instead of preparing them again in every
	// transaction; runs of rows are then written in pieces of a few fixed sizes, so that few
	// statements are kept. Not for PostgreSQL, where each piece is a round trip.
	KeepWriteStatements bool
	// Notify, if set, is run in every write transaction that changes objects or status:
	// a statement that tells other replicas of the commit (PostgreSQL: NOTIFY), whose
	// driver then calls Store.Notify.
	Notify string
	// CopyRows, if set, bulk-loads rows (nil after the last) into table on driverConn (what
	// sql.Conn.Raw hands over), inside the transaction open on it: a restore uses it instead
	// of INSERTs.
	CopyRows func(ctx context.Context, driverConn any, table string, columns []string, next func() ([]any, error)) error
}

// Config tunes the engine.
type Config struct {
	// MaxBatch bounds how many writes share one transaction.
	MaxBatch int
	// PollInterval is how often the event poller looks for writes by other processes.
	PollInterval time.Duration
	// WatchBuffer is how many events a watcher may lag before it is dropped.
	WatchBuffer int
	Logger      *slog.Logger
	// Observe, if set, is told how long each store operation took.
	Observe func(op string, d time.Duration, err error)
	// ObserveBatch, if set, is told how many writes each committed transaction held.
	ObserveBatch func(n int)
	// Summaries, per kind, make the compact summaries ScanSummaries streams.
	Summaries map[string]store.Summarizer
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxBatch: 1000, PollInterval: time.Second, WatchBuffer: 4096, Logger: slog.Default()}
}

// Store implements store.Store over database/sql.
type Store struct {
	db      *sql.DB // readers
	writeDB *sql.DB // the writer's connection(s); may be db
	d       Dialect
	cfg     Config
	log     *slog.Logger

	ops    chan *op
	quit   chan struct{}
	wg     sync.WaitGroup
	closed sync.Once

	hub *hub

	wakeMu sync.Mutex
	wakeCh chan struct{} // closed at the next commit seen

	// wstmts are the writer's kept statements by query (Dialect.KeepWriteStatements),
	// prepared on writeDB; only the writer goroutine uses them.
	wstmts map[string]*sql.Stmt

	// stmts caches prepared reads by query: SQLite's driver prepares an unprepared query
	// on every call, which was most of the cost of reading one object.
	stmts sync.Map // query → *sql.Stmt
}

var _ store.Store = (*Store)(nil)

// prepared returns query prepared on the reader pool (each connection prepares it when it
// first runs it).
func (s *Store) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, s.q(query))
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// queryRow runs a cached prepared read that returns one row.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := s.prepared(ctx, query)
	if err != nil {
		// A row carrying the error: database/sql has no constructor for one, so run the
		// query unprepared and let it report.
		return s.db.QueryRowContext(ctx, s.q(query), args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// Open runs migrations and starts the writer and the event poller. writeDB may equal db; for
// SQLite it is a separate single-connection pool so the writer never waits for a reader's
// connection.
func Open(ctx context.Context, db, writeDB *sql.DB, d Dialect, cfg Config) (*Store, error) {
	def := DefaultConfig()
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = def.MaxBatch
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = def.PollInterval
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = def.WatchBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	s := &Store{db: db, writeDB: writeDB, d: d, cfg: cfg, log: cfg.Logger,
		ops: make(chan *op, 4*cfg.MaxBatch), quit: make(chan struct{}), wstmts: map[string]*sql.Stmt{}}
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	rev, err := s.Revision(ctx)
	if err != nil {
		return nil, err
	}
	s.hub = newHub(s, rev)
	s.wg.Add(2)
	go s.writer()
	go s.hub.poll()
	return s, nil
}

func (s *Store) q(query string) string {
	if !s.d.Numbered {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.writeDB.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return fmt.Errorf("creating migrations table: %w", err)
	}
	for i, m := range s.d.Migrations {
		v := i + 1
		tx, err := s.writeDB.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), v).Scan(&n); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if n > 0 {
			tx.Rollback()
			continue
		}
		if _, err := tx.ExecContext(ctx, m); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version) VALUES (?)`), v); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			// Another replica may have applied it at the same moment.
			if s.d.IsUniqueViolation(err) {
				continue
			}
			return fmt.Errorf("migration %d: %w", v, err)
		}
		s.log.Info("applied schema migration", "driver", s.d.Name, "version", v)
	}
	return nil
}

// Changes returns a channel closed at the next commit this store sees: its own, or one by
// another replica that its driver was told of (Notify). Status followers wait on it.
func (s *Store) Changes() <-chan struct{} {
	s.wakeMu.Lock()
	defer s.wakeMu.Unlock()
	if s.wakeCh == nil {
		s.wakeCh = make(chan struct{})
	}
	return s.wakeCh
}

func (s *Store) wake() {
	s.wakeMu.Lock()
	if s.wakeCh != nil {
		close(s.wakeCh)
		s.wakeCh = nil
	}
	s.wakeMu.Unlock()
}

// Notify tells the store that another replica committed: watchers and Changes wake now
// rather than at the next poll.
func (s *Store) Notify() {
	s.hub.nudge(0)
	s.wake()
}

// Close stops the writer (after it finishes queued writes) and the poller.
func (s *Store) Close() error {
	s.closed.Do(func() { close(s.quit) })
	s.wg.Wait()
	for q, st := range s.wstmts { // the writer has stopped
		st.Close()
		delete(s.wstmts, q)
	}
	s.stmts.Range(func(q, st any) bool {
		st.(*sql.Stmt).Close()
		s.stmts.Delete(q)
		return true
	})
	return nil
}

// observe reports an operation; err points at the operation's named result, so that a
// deferred call sees the error it returns.
func (s *Store) observe(op string, start time.Time, err *error) {
	if s.cfg.Observe != nil {
		s.cfg.Observe(op, time.Since(start), *err)
	}
}

// Revision returns the newest committed revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.queryRow(ctx, `SELECT value FROM meta WHERE name = 'revision'`).Scan(&rev)
	if err != nil {
		return 0, fmt.Errorf("reading revision: %w", err)
	}
	return rev, nil
}

func (s *Store) compacted(ctx context.Context, q querier) (int64, error) {
	var rev int64
	if err := q.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'compacted'`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("reading compacted revision: %w", err)
	}
	return rev, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Get returns one object.
func (s *Store) Get(ctx context.Context, key store.Key) (obj *api.Object, err error) {
	defer s.observe("get", time.Now(), &err)
	var data []byte
	err = s.queryRow(ctx, `SELECT data FROM objects WHERE kind = ? AND namespace = ? AND name = ?`,
		key.Kind, key.Namespace, key.Name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.NotFound(key)
	}
	if err != nil {
		return nil, fmt.Errorf("getting %s: %w", key, err)
	}
	return store.Decode(data)
}

// Count returns the number of objects per kind.
func (s *Store) Count(ctx context.Context) (map[string]int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT kind, n FROM kind_counts`)
	if err != nil {
		return nil, fmt.Errorf("counting objects: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return nil, fmt.Errorf("counting objects: %w", err)
		}
		out[k] = n
	}
	return out, rows.Err()
}

// compactStep bounds the revisions one compaction transaction forgets. The writer is single:
// a window's history at a million clusters (a registration wave's hundreds of thousands of
// events, or a status wave's documents) deleted at once held every other write for 10–20 s.
var compactStep int64 = 4096

// Compact forgets history at and before rev, in steps of compactStep revisions, each its own
// write, so that other writes go between them.
func (s *Store) Compact(ctx context.Context, rev int64) (err error) {
	defer s.observe("compact", time.Now(), &err)
	from, err := s.compacted(ctx, s.db)
	if err != nil {
		return err
	}
	// From the oldest history left, so that a marker far behind it costs no empty steps.
	var oldest int64
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MIN(rev), 0) FROM events`).Scan(&oldest); err != nil {
		return fmt.Errorf("compacting: %w", err)
	}
	from = max(from, oldest-1)
	for {
		to := min(from+compactStep, rev)
		if _, err := s.submit(ctx, &op{kind: opCompact, rev: to}); err != nil {
			return err
		}
		if to >= rev {
			return nil
		}
		from = to
	}
}

func labelsOf(data []byte) map[string]string {
	var o struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(data, &o)
	return o.Metadata.Labels
}
