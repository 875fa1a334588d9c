// Package sqlite is the embedded store driver: one SQLite file in the server's data
// directory, in WAL mode, written by one batching writer. It is the default, so a server
// needs nothing but its own binary and a directory.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	sqlite3 "modernc.org/sqlite"

	"flotilla.dev/internal/store/sqlstore"
)

// FileName is the database file inside the data directory.
const FileName = "flotilla.db"

var schema = []string{`
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE objects (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	kind TEXT NOT NULL,
	namespace TEXT NOT NULL,
	name TEXT NOT NULL,
	rev INTEGER NOT NULL,
	data BLOB NOT NULL,
	UNIQUE (kind, namespace, name)
);
CREATE INDEX objects_kind_ns ON objects (kind, namespace, id);
CREATE TABLE labels (
	kind TEXT NOT NULL,
	key TEXT NOT NULL,
	value TEXT NOT NULL,
	obj INTEGER NOT NULL,
	PRIMARY KEY (kind, key, value, obj)
) WITHOUT ROWID;
CREATE INDEX labels_obj ON labels (obj, key, value);
CREATE TABLE events (
	rev INTEGER PRIMARY KEY,
	kind TEXT NOT NULL,
	namespace TEXT NOT NULL,
	name TEXT NOT NULL,
	obj INTEGER NOT NULL,
	type INTEGER NOT NULL,
	data BLOB NOT NULL,
	prev BLOB
);
CREATE TABLE kind_counts (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
`, `
CREATE TABLE content (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE deployment_status (
	cluster TEXT NOT NULL,
	bundle TEXT NOT NULL,
	id TEXT NOT NULL,
	state TEXT NOT NULL,
	message TEXT NOT NULL,
	PRIMARY KEY (cluster, bundle)
) WITHOUT ROWID;
CREATE TABLE agent_seq (cluster TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
`, `
ALTER TABLE objects ADD COLUMN summary BLOB;
`, `
ALTER TABLE agent_seq ADD COLUMN srev INTEGER NOT NULL DEFAULT 0;
CREATE INDEX agent_seq_srev ON agent_seq (srev, cluster);
INSERT INTO meta (name, value) VALUES ('status_revision', 0);
`, `
CREATE TABLE summaries (obj INTEGER PRIMARY KEY, kind TEXT NOT NULL, summary BLOB NOT NULL);
INSERT INTO summaries (obj, kind, summary) SELECT id, kind, summary FROM objects WHERE summary IS NOT NULL;
UPDATE objects SET summary = NULL WHERE summary IS NOT NULL;
`}

// Dialect is SQLite's SQL dialect.
var Dialect = sqlstore.Dialect{
	Name:       "sqlite",
	Migrations: schema,
	Retryable: func(err error) bool {
		var se *sqlite3.Error
		// SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock.
		return errors.As(err, &se) && (se.Code()&0xff == 5 || se.Code()&0xff == 6)
	},
	IsUniqueViolation: func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
	},
	SeqScan: "NOT INDEXED",
	// The writer has its own connection (writeDB, one connection).
	KeepWriteStatements: true,
	// The model's load reads the clusters table whole: through a memory map it is read
	// without a system call and a copy per page. The map is dropped after it, so the file
	// does not stay in the server's resident memory.
	BulkRead:     "PRAGMA mmap_size = 68719476736",
	BulkReadDone: "PRAGMA mmap_size = 0",
	TablesQuery:  `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`,
	ColumnsQuery: `SELECT name, type FROM pragma_table_info(?) ORDER BY cid`,
	SetObjectSequence: func(last int64) []string {
		return []string{`DELETE FROM sqlite_sequence WHERE name = 'objects'`,
			fmt.Sprintf(`INSERT INTO sqlite_sequence (name, seq) VALUES ('objects', %d)`, last)}
	},
}

// Store is the SQLite store; Close also releases the data directory.
type Store struct {
	*sqlstore.Store
	db, writeDB *sql.DB
	lock        *os.File
}

// Synchronous modes (SQLite's PRAGMA synchronous).
const (
	// SyncFull syncs the write-ahead log to disk at every commit: a write acknowledged is
	// on disk, and survives a power loss or a kernel crash. The default.
	SyncFull = "FULL"
	// SyncNormal syncs the log only at checkpoints: a process crash loses nothing, but a
	// power loss or kernel crash can lose the last commits before a checkpoint, writes
	// that were already acknowledged (including agent reports, which agents then no
	// longer resend). The database stays consistent either way.
	SyncNormal = "NORMAL"
)

// readerIdleTime is how long a reading connection, and its page cache, outlives its use.
var readerIdleTime = time.Minute

// Options are the SQLite driver's own settings.
type Options struct {
	// Synchronous is SyncFull (default when empty) or SyncNormal.
	Synchronous string
}

// Open opens (creating if needed) the store in dir with the default options.
func Open(ctx context.Context, dir string, cfg sqlstore.Config) (*Store, error) {
	return OpenWith(ctx, dir, cfg, Options{})
}

// OpenWith opens (creating if needed) the store in dir. Only one process may hold a data
// directory at a time: SQLite's locking cannot order revisions across processes the way
// the writer does within one.
func OpenWith(ctx context.Context, dir string, cfg sqlstore.Config, opts Options) (*Store, error) {
	mode := strings.ToUpper(opts.Synchronous)
	switch mode {
	case "":
		mode = SyncFull
	case SyncFull, SyncNormal:
	default:
		return nil, fmt.Errorf("sqlite synchronous mode %q: want %s or %s", opts.Synchronous, strings.ToLower(SyncFull), strings.ToLower(SyncNormal))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "flotilla.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("data directory %s is in use by another flotilla process: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	// Page caches are per connection and live outside the Go heap: 32 MiB for the writer,
	// 8 MiB for each reader (the OS page cache holds the rest). No mmap, so that a full scan
	// at start does not leave the whole file in the server's resident memory. With FULL,
	// each commit costs one fsync of the log; the writer batches writes into transactions,
	// so a burst of writes pays one per batch, not one per write.
	dsn := func(cacheKiB int) string {
		pragmas := url.Values{}
		for _, p := range []string{"journal_mode(WAL)", "synchronous(" + mode + ")", "busy_timeout(10000)", fmt.Sprintf("cache_size(-%d)", cacheKiB), "temp_store(MEMORY)", "mmap_size(0)"} {
			pragmas.Add("_pragma", p)
		}
		return "file:" + path + "?" + pragmas.Encode()
	}
	writeDB, err := sql.Open("sqlite", dsn(32<<10)+"&_txlock=immediate")
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	writeDB.SetMaxOpenConns(1)
	db, err := sql.Open("sqlite", dsn(8<<10))
	if err != nil {
		writeDB.Close()
		lock.Close()
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	// Each reader's cache fills to its 8 MiB and stays while the connection lives. A busy
	// minute opens all eight; closing those idle for a minute gives the 64 MiB back to a
	// quiet server and keeps the ones in steady use warm.
	db.SetConnMaxIdleTime(readerIdleTime)
	s, err := sqlstore.Open(ctx, db, writeDB, Dialect, cfg)
	if err != nil {
		db.Close()
		writeDB.Close()
		lock.Close()
		return nil, fmt.Errorf("opening sqlite store in %s: %w", dir, err)
	}
	return &Store{Store: s, db: db, writeDB: writeDB, lock: lock}, nil
}

// Close stops the store and closes the database.
func (s *Store) Close() error {
	err := s.Store.Close()
	err = errors.Join(err, s.db.Close(), s.writeDB.Close())
	s.lock.Close()
	return err
}
