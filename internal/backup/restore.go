package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// Target is where a backup is restored: a fresh data directory, with its SQLite database
// unless DB names a PostgreSQL database.
type Target struct {
	// DataDir receives tls/ and keys/ (and flotilla.db when DB is empty). It may be empty only
	// with DB, and then the backup's files are not written.
	DataDir string
	// DB is a PostgreSQL URL; empty means SQLite in DataDir.
	DB string
	// BumpRevision moves the restored store's revision this far ahead of the backup's and
	// marks the history before it compacted (see sqlstore.Store.Restore). A restore of an
	// older state wants DefaultBump; a migration, which loses nothing, none.
	BumpRevision int64
	Logger       *slog.Logger
}

// DefaultBump is more revisions than a server writes in months (at 50,000 writes a second,
// 231 days), and leaves room for thousands of restores below 2^53, where JavaScript
// clients still read a revision exactly.
const DefaultBump int64 = 1_000_000_000_000

// restorable is a freshly opened store of either driver.
type restorable interface {
	Empty(ctx context.Context) (bool, error)
	Restore(ctx context.Context, src sqlstore.SourceFunc, bumpRevision int64) error
	Close() error
}

// Restore checks the backup at path whole, then writes it into t: the database in one
// transaction, then the files. Nothing is written if the file is damaged, truncated, not a
// backup or of another format version, or if the target holds anything (a database with
// objects, a data directory with a database or with files the backup would overwrite).
func Restore(ctx context.Context, path string, t Target) (*File, error) {
	bf, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer bf.Close()
	if t.DataDir == "" && t.DB == "" {
		return nil, errors.New("restore: no target: give a data directory, and a PostgreSQL URL for PostgreSQL")
	}
	if t.Logger == nil {
		t.Logger = slog.New(slog.DiscardHandler)
	}
	known := len(sqlite.Dialect.Migrations)
	if t.DB != "" {
		known = len(postgres.Dialect.Migrations)
	}
	if bf.Header.Schema > known {
		return nil, fmt.Errorf("restore: the backup's store schema is version %d; this flotilla knows up to %d: restore with the version that made it", bf.Header.Schema, known)
	}
	var write []string
	if t.DataDir != "" {
		write = slices.Clone(bf.Files)
		if t.DB == "" {
			write = append(write, sqlite.FileName)
		}
		for _, p := range write {
			if _, err := os.Lstat(filepath.Join(t.DataDir, filepath.FromSlash(p))); !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("restore: %s already has %s: restore into a fresh data directory", t.DataDir, p)
			}
		}
	}
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = t.Logger
	var st restorable
	// undo removes what opening a SQLite store created, should the restore fail.
	undo := func() {}
	if t.DB == "" {
		_, dirErr := os.Stat(t.DataDir)
		s, err := sqlite.Open(ctx, t.DataDir, cfg)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		st = s
		undo = func() {
			for _, f := range []string{sqlite.FileName, sqlite.FileName + "-wal", sqlite.FileName + "-shm", "flotilla.lock"} {
				os.Remove(filepath.Join(t.DataDir, f))
			}
			if errors.Is(dirErr, os.ErrNotExist) {
				os.Remove(t.DataDir)
			}
		}
	} else {
		s, err := postgres.Open(ctx, t.DB, cfg)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		st = s
	}
	err = st.Restore(ctx, func(table sqlstore.TableFunc) error { return bf.walk(table, nil) }, t.BumpRevision)
	if cerr := st.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		undo()
		if errors.Is(err, sqlstore.ErrNotEmpty) {
			return nil, errors.New("restore: the target database already holds a flotilla store: restore into an empty database")
		}
		return nil, fmt.Errorf("restore: %w", err)
	}
	if t.DataDir == "" {
		return bf, nil
	}
	err = bf.walk(func(string, []string, sqlstore.RowFunc) error { return nil }, func(p string, mode os.FileMode, data []byte) error {
		return writeFile(filepath.Join(t.DataDir, filepath.FromSlash(p)), mode, data)
	})
	if err != nil {
		return nil, fmt.Errorf("restore: the database is restored, but writing the data directory's files failed: %w", err)
	}
	return bf, nil
}

// writeFile writes a file that must not exist yet, never more open than mode allows (a key
// is 0600 from its first byte).
func writeFile(path string, mode os.FileMode, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode&0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Migrate moves the embedded (SQLite) installation in fromDir into the empty PostgreSQL
// database at toURL, through a backup file in tmpDir (removed afterwards: it holds the KEK).
// The data directory's tls/ and keys/ are copied to dataDir when it is given; otherwise the
// PostgreSQL server is started with --data-dir fromDir. The SQLite store must not be in use:
// its lock file refuses while a server holds it.
func Migrate(ctx context.Context, fromDir, toURL, dataDir, tmpDir string, log *slog.Logger) (*File, error) {
	if toURL == "" {
		return nil, errors.New("migrate: no PostgreSQL URL")
	}
	if _, err := os.Stat(filepath.Join(fromDir, sqlite.FileName)); err != nil {
		return nil, fmt.Errorf("migrate: %s holds no flotilla database: %w", fromDir, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = log
	src, err := sqlite.Open(ctx, fromDir, cfg)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	tmp, err := os.CreateTemp(tmpDir, "flotilla-migrate-*.backup")
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = Write(ctx, tmp, src, fromDir, true)
	src.Close()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	return Restore(ctx, tmp.Name(), Target{DataDir: dataDir, DB: toURL, Logger: log})
}
