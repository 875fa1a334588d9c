package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/internal/backup"
)

// newBackupCmd fetches a backup from a running server.
func newBackupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a backup of a running server's whole state to FILE (admins only)",
		Long: `Ask the running server for a consistent online backup: every object, bundle content,
deployment status, the server's keys (sealed by the key-encryption key), its CA and serving
certificate, and the key-encryption key itself when it lives in the data directory. The file
is written 0600: it holds secrets, keep it like the server's data directory.

The backup arrives in FILE.tmp and is renamed to FILE only once it is whole and its checksum
matches. Restore it with 'flotilla restore'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			path := args[0]
			tmp := path + ".tmp"
			f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			defer os.Remove(tmp) // after the rename, nothing is there to remove
			start := time.Now()
			body, err := c.Backup(cmd.Context())
			if err != nil {
				f.Close()
				return err
			}
			_, err = io.Copy(f, body)
			body.Close()
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("receiving the backup: %w", err)
			}
			bf, err := backup.Open(tmp)
			if err != nil {
				return fmt.Errorf("the server's backup is not whole (did the server stop or fail? see its log): %w", err)
			}
			bf.Close()
			if err := os.Rename(tmp, path); err != nil {
				return err
			}
			st, _ := os.Stat(path)
			fmt.Fprintf(g.out, "backup of revision %d (%s, %d tables, %d rows, %d files) written to %s: %d bytes in %s\n",
				bf.Header.Revision, bf.Header.Driver, bf.Tables, bf.Rows, len(bf.Files), path, st.Size(), time.Since(start).Round(time.Millisecond))
			if !bf.Header.KEKIncluded {
				fmt.Fprintln(g.out, "the key-encryption key is not in the backup (the server was given it): a restored server needs the same --kek-file or FLOTILLA_KEY_ENCRYPTION_KEY")
			}
			return nil
		},
	}
}

// newRestoreCmd writes a backup into a fresh data directory or database.
func newRestoreCmd(g *globals) *cobra.Command {
	var t backup.Target
	cmd := &cobra.Command{
		Use:   "restore FILE --data-dir DIR [--db postgres://…]",
		Short: "Restore a backup into a fresh data directory or PostgreSQL database",
		Long: `Restore a backup made by 'flotilla backup' for a new server: start it with the same
--data-dir (and --db) and the same address, and the fleet's agents go on without registering
again.

The file is checked whole first (checksum, format version): a damaged, truncated or foreign file
is refused and nothing is written. The target must be fresh: a data directory without a database
or TLS files, and, with --db, a database without a Flotilla store in it. The database is written
in one transaction. The data directory receives tls/ and keys/ (and, without --db, the SQLite
database).

The restored store's revision is moved --bump-revision ahead of the backup's, and older history
is marked compacted: agents and watchers that saw revisions written after the backup (and lost
with the old server) then start again from the restored state instead of taking a new write
for one they already saw.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if t.DataDir == "" {
				return errors.New("--data-dir is required: it receives the CA, certificates and keys (and the SQLite database without --db)")
			}
			start := time.Now()
			bf, err := backup.Restore(cmd.Context(), args[0], t)
			if err != nil {
				return err
			}
			where := filepath.Join(t.DataDir, "flotilla.db")
			if t.DB != "" {
				where = "the PostgreSQL database"
			}
			fmt.Fprintf(g.out, "restored revision %d as revision %d (%d tables, %d rows) into %s and %d files into %s in %s\n",
				bf.Header.Revision, bf.Header.Revision+t.BumpRevision, bf.Tables, bf.Rows, where, len(bf.Files), t.DataDir, time.Since(start).Round(time.Millisecond))
			if !bf.Header.KEKIncluded {
				fmt.Fprintln(g.out, "the key-encryption key was not in the backup: start the server with the original's --kek-file or FLOTILLA_KEY_ENCRYPTION_KEY")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&t.DataDir, "data-dir", "", "the new server's data directory (must not hold a database or TLS files)")
	f.StringVar(&t.DB, "db", "", "PostgreSQL URL of an empty database to restore into (default: SQLite in --data-dir)")
	f.Int64Var(&t.BumpRevision, "bump-revision", backup.DefaultBump, "move the revision this far past the backup's (more than the old server can have written since)")
	return cmd
}

// newMigrateCmd moves an embedded installation to PostgreSQL.
func newMigrateCmd(g *globals) *cobra.Command {
	var from, to, dataDir string
	cmd := &cobra.Command{
		Use:   "migrate --from DATA_DIR --to postgres://…",
		Short: "Move an embedded (SQLite) installation to PostgreSQL",
		Long: `Copy the SQLite store in DATA_DIR into an empty PostgreSQL database, with every revision,
object, content, status and key as it was. Stop the server first: its lock on DATA_DIR refuses
the migration while it runs. Then start the server with --db and the same address and data
directory (or --data-dir DIR, which receives a copy of DATA_DIR's tls/ and keys/): the fleet's
agents go on against it unchanged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" || to == "" {
				return errors.New("--from and --to are required")
			}
			start := time.Now()
			bf, err := backup.Migrate(cmd.Context(), from, to, dataDir, "", nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "migrated revision %d (%d tables, %d rows) to PostgreSQL in %s\n", bf.Header.Revision, bf.Tables, bf.Rows, time.Since(start).Round(time.Millisecond))
			if dataDir != "" {
				fmt.Fprintf(g.out, "start the server with --db URL --data-dir %s\n", dataDir)
			} else {
				fmt.Fprintf(g.out, "start the server with --db URL --data-dir %s (its tls/ and keys/ stay in use)\n", from)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the embedded server's data directory")
	f.StringVar(&to, "to", "", "PostgreSQL URL of an empty database")
	f.StringVar(&dataDir, "data-dir", "", "a fresh data directory to copy tls/ and keys/ into (default: keep using --from's)")
	return cmd
}
