package sqlstore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
	"flotilla.dev/internal/testenv/pg"
)

type summaryStore interface {
	store.Store
	store.Summaries
	Close() error
}

// reopenable opens a store on one database as often as asked, and a raw connection to it.
type reopenable struct {
	name string
	at   func(t *testing.T) (open func() summaryStore, db *sql.DB)
}

var reopenables = []reopenable{
	{"sqlite", func(t *testing.T) (func() summaryStore, *sql.DB) {
		dir := t.TempDir()
		open := func() summaryStore {
			s, err := sqlite.Open(context.Background(), dir, sqlstore.Config{Summaries: storetest.Summaries, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s := open()
		s.Close()
		db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, sqlite.FileName)+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return open, db
	}},
	{"postgres", func(t *testing.T) (func() summaryStore, *sql.DB) {
		url := pg.Start(t).NewDatabase(t)
		open := func() summaryStore {
			s, err := postgres.Open(context.Background(), url, sqlstore.Config{Summaries: storetest.Summaries, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		db, err := sql.Open("pgx", url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return open, db
	}},
}

func scanSummaries(t *testing.T, s store.Summaries) []string {
	t.Helper()
	var got []string
	if _, err := s.ScanSummaries(testCtx(t), api.KindCluster, func(b []byte) error { got = append(got, string(b)); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	return got
}

func count(t *testing.T, db *sql.DB, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Summaries live in a table of their own, one row per summarised object; a scan still
// finds an object whose row is missing (restored from an older backup), from its document.
func TestSummariesTable(t *testing.T) {
	for _, b := range reopenables {
		t.Run(b.name, func(t *testing.T) {
			open, db := b.at(t)
			s := open()
			defer func() { s.Close() }()
			ctx := testCtx(t)
			a := storetest.Obj("ns", "a", map[string]string{"env": "dev"})
			for _, o := range []*api.Object{a, storetest.Obj("ns", "b", map[string]string{"env": "dev"}), storetest.Obj("ns", "gone", nil)} {
				if _, err := s.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			bundle := storetest.Obj("ns", "bundle", nil)
			bundle.Kind = api.KindBundle
			if _, err := s.Create(ctx, bundle); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Delete(ctx, store.Key{Kind: api.KindCluster, Namespace: "ns", Name: "gone"}, ""); err != nil {
				t.Fatal(err)
			}
			a.Metadata.Labels["env"] = "prod"
			if _, err := s.Update(ctx, a); err != nil {
				t.Fatal(err)
			}
			if n := count(t, db, `SELECT COUNT(*) FROM summaries`); n != 2 {
				t.Errorf("%d summary rows, want 2 (the bundle has no summarizer, the deleted cluster's went with it)", n)
			}
			if n := count(t, db, `SELECT COUNT(*) FROM objects WHERE summary IS NOT NULL`); n != 0 {
				t.Errorf("%d objects keep a summary in the objects table", n)
			}
			want := []string{"a|prod", "b|dev"}
			if got := scanSummaries(t, s); !slices.Equal(got, want) {
				t.Errorf("summaries = %q, want %q", got, want)
			}
			if _, err := db.Exec(`DELETE FROM summaries WHERE obj = (SELECT id FROM objects WHERE name = 'b')`); err != nil {
				t.Fatal(err)
			}
			if got := scanSummaries(t, s); !slices.Equal(got, want) {
				t.Errorf("summaries with one row missing = %q, want %q", got, want)
			}
		})
	}
}

// The migration moves summaries kept in the objects table into their own table.
func TestSummariesMigration(t *testing.T) {
	for _, b := range reopenables {
		t.Run(b.name, func(t *testing.T) {
			open, db := b.at(t)
			s := open()
			for _, n := range []string{"a", "b"} {
				if _, err := s.Create(testCtx(t), storetest.Obj("ns", n, map[string]string{"env": "dev"})); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			// Back to the schema before the summaries table, as an older version left it.
			var last int
			if err := db.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&last); err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{
				`UPDATE objects SET summary = summaries.summary FROM summaries WHERE summaries.obj = objects.id`,
				`DROP TABLE summaries`,
				`DELETE FROM schema_migrations WHERE version >= 5`,
			} {
				if _, err := db.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			if n := count(t, db, `SELECT COUNT(*) FROM objects WHERE summary IS NOT NULL`); n != 2 {
				t.Fatalf("setup: %d summaries in the objects table, want 2", n)
			}
			s = open()
			defer s.Close()
			if n := count(t, db, `SELECT COUNT(*) FROM summaries`); n != 2 {
				t.Errorf("%d summary rows after the migration, want 2", n)
			}
			if n := count(t, db, `SELECT COUNT(*) FROM objects WHERE summary IS NOT NULL`); n != 0 {
				t.Errorf("%d objects keep a summary in the objects table after the migration", n)
			}
			if got, want := scanSummaries(t, s), []string{"a|dev", "b|dev"}; !slices.Equal(got, want) {
				t.Errorf("summaries = %q, want %q", got, want)
			}
			if last < 5 {
				t.Errorf("the newest migration is %d, want the summaries table's (5) or later", last)
			}
		})
	}
}
