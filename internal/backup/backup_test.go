package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/backup"
	"flotilla.dev/internal/pki"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/testenv/pg"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pg.StopShared()
	os.Exit(code)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return c
}

// testStore is what the tests use of either driver.
type testStore interface {
	store.Store
	store.Agents
	backup.Source
}

func openSQLite(t *testing.T, dir string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), dir, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openPG(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func cluster(name string, labels map[string]string) *api.Object {
	return &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace, Labels: labels},
		Spec:     []byte(`{"clientID":"` + name + `"}`)}
}

// fill writes objects (some updated, one deleted), content, deployment status and agent
// sequence numbers: a row in every table.
func fill(t *testing.T, s testStore) {
	t.Helper()
	c := ctx(t)
	for i := range 30 {
		if _, err := s.Create(c, cluster(fmt.Sprintf("c%02d", i), map[string]string{"env": []string{"prod", "dev"}[i%2]})); err != nil {
			t.Fatal(err)
		}
	}
	o, err := s.Get(c, store.Key{Kind: api.KindCluster, Namespace: api.DefaultNamespace, Name: "c03"})
	if err != nil {
		t.Fatal(err)
	}
	o.Metadata.Labels["tier"] = "gold"
	if _, err := s.Update(c, o); err != nil {
		t.Fatal(err)
	}
	// The newest object is deleted: its id stays only in history.
	if _, err := s.Delete(c, store.Key{Kind: api.KindCluster, Namespace: api.DefaultNamespace, Name: "c29"}, ""); err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000)
	if err := s.PutContent(c, "sha256:abc", blob); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStatus(c, "c01", 7, []store.DeploymentStatus{{Cluster: "c01", Bundle: "default/web", ID: "x1", State: "Ready", Message: "ünïcode ok"}}, nil); err != nil {
		t.Fatal(err)
	}
}

// dump reads every table through a snapshot.
func dump(t *testing.T, s backup.Source) (sqlstore.SnapshotInfo, map[string][][]any) {
	t.Helper()
	var info sqlstore.SnapshotInfo
	out := map[string][][]any{}
	err := s.Snapshot(ctx(t), func(i sqlstore.SnapshotInfo) error { info = i; return nil }, func(name string, cols []string, next sqlstore.RowFunc) error {
		rows := [][]any{}
		for {
			r, err := next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			for i, v := range r {
				// Compare values, not how a driver typed them.
				switch x := v.(type) {
				case []byte:
					r[i] = string(x)
				case int32:
					r[i] = int64(x)
				case int16:
					r[i] = int64(x)
				}
			}
			rows = append(rows, r)
		}
		out[name+"("+strings.Join(cols, ",")+")"] = rows
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := range out {
		sortRows(out[k])
	}
	return info, out
}

func sortRows(rows [][]any) {
	key := func(r []any) string { return fmt.Sprint(r...) }
	for i := 1; i < len(rows); i++ {
		for j := i; j > 0 && key(rows[j]) < key(rows[j-1]); j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
}

// dataDir makes a data directory's TLS files and KEK.
func dataDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.Ensure(filepath.Join(dir, "tls"), []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "kek"), []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeBackup(t *testing.T, s backup.Source, dir string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "b.flotilla")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Write(ctx(t), f, s, dir, true); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkRestored compares every table and file, and that the restored store goes on: its
// revision, a watch from the backup's revision, new objects.
func checkRestored(t *testing.T, src backup.Source, srcDir string, restored testStore, dstDir string) {
	t.Helper()
	wantInfo, want := dump(t, src)
	gotInfo, got := dump(t, restored)
	if !reflect.DeepEqual(got, want) {
		for k := range want {
			if !reflect.DeepEqual(got[k], want[k]) {
				t.Errorf("table %s differs:\n got %v\nwant %v", k, got[k], want[k])
			}
		}
		if len(got) != len(want) {
			t.Errorf("tables: got %d, want %d", len(got), len(want))
		}
	}
	if gotInfo.Revision != wantInfo.Revision || wantInfo.Revision == 0 {
		t.Errorf("revision %d, want %d", gotInfo.Revision, wantInfo.Revision)
	}
	for _, f := range []string{"tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key", "keys/kek"} {
		a, err := os.ReadFile(filepath.Join(srcDir, f))
		if err != nil {
			continue // not every layout has every file
		}
		b, err := os.ReadFile(filepath.Join(dstDir, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s not restored: %v", f, err)
		}
		sa, _ := os.Stat(filepath.Join(srcDir, f))
		sb, _ := os.Stat(filepath.Join(dstDir, f))
		if sb != nil && sb.Mode().Perm() != sa.Mode().Perm() {
			t.Errorf("%s mode %v, want %v", f, sb.Mode().Perm(), sa.Mode().Perm())
		}
	}
	c := ctx(t)
	rev, err := restored.Revision(c)
	if err != nil || rev != wantInfo.Revision {
		t.Fatalf("restored revision %d (%v), want %d", rev, err, wantInfo.Revision)
	}
	// History continues: a watch from before the last writes replays them, then sees new ones.
	w, err := restored.Watch(c, store.WatchOptions{Kind: api.KindCluster, Revision: rev - 2})
	if err != nil {
		t.Fatal(err)
	}
	created, err := restored.Create(c, cluster("new", nil))
	if err != nil {
		t.Fatalf("creating after the restore: %v", err)
	}
	if created.Metadata.ResourceVersion != fmt.Sprint(rev+1) {
		t.Errorf("first write after the restore got revision %s, want %d", created.Metadata.ResourceVersion, rev+1)
	}
	var seen []string
	for len(seen) < 3 {
		select {
		case ev, ok := <-w:
			if !ok {
				t.Fatalf("watch ended after %v", seen)
			}
			o, err := store.Decode(ev.Object)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, o.Metadata.Name)
		case <-time.After(30 * time.Second):
			t.Fatalf("watch saw only %v", seen)
		}
	}
	if seen[2] != "new" {
		t.Errorf("watch saw %v, want the two last writes then new", seen)
	}
	l, err := restored.List(c, store.ListOptions{Kind: api.KindCluster})
	if err != nil || len(l.Items) != 30 {
		t.Fatalf("list after restore: %d items, %v", len(l.Items), err)
	}
	// The new object took an id that no row of history names (the deleted c29's is there).
	_, after := dump(t, restored)
	var newID, maxHistory int64
	for k, rows := range after {
		switch {
		case strings.HasPrefix(k, "objects("):
			for _, r := range rows {
				if r[3] == "new" {
					newID = r[0].(int64)
				}
			}
		case strings.HasPrefix(k, "events("):
			for _, r := range rows {
				if r[3] != "new" {
					maxHistory = max(maxHistory, r[4].(int64))
				}
			}
		}
	}
	if newID <= maxHistory {
		t.Errorf("the new object got id %d; history names ids up to %d", newID, maxHistory)
	}
}

// A backup taken while the store is written is one consistent state: every table agrees
// with its revision.
func TestSnapshotConsistentUnderWrites(t *testing.T) {
	dir := t.TempDir()
	src := openSQLite(t, filepath.Join(dir, "src"))
	defer src.Close()
	fill(t, src)
	c, stop := context.WithCancel(ctx(t))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; c.Err() == nil; i++ {
			src.Create(c, cluster(fmt.Sprintf("w%05d", i), map[string]string{"w": "1"}))
		}
	}()
	time.Sleep(200 * time.Millisecond)
	path := writeBackup(t, src, dataDir(t))
	stop()
	<-done
	dst := filepath.Join(dir, "dst")
	if _, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst}); err != nil {
		t.Fatal(err)
	}
	restored := openSQLite(t, dst)
	defer restored.Close()
	info, tables := dump(t, restored)
	var objects, maxRev, maxEvent int64
	var counted int64
	for k, rows := range tables {
		switch {
		case strings.HasPrefix(k, "objects("):
			objects = int64(len(rows))
			for _, r := range rows {
				maxRev = max(maxRev, r[4].(int64))
			}
		case strings.HasPrefix(k, "events("):
			for _, r := range rows {
				maxEvent = max(maxEvent, r[0].(int64))
			}
		case strings.HasPrefix(k, "kind_counts("):
			for _, r := range rows {
				counted += r[1].(int64)
			}
		}
	}
	if objects <= 30 {
		t.Fatalf("only %d objects: the writes did not overlap the backup", objects)
	}
	if counted != objects || maxEvent != info.Revision || maxRev > info.Revision {
		t.Errorf("inconsistent backup: %d objects, kind_counts %d; revision %d, newest event %d, newest object %d", objects, counted, info.Revision, maxEvent, maxRev)
	}
}

func TestRoundTripSQLite(t *testing.T) {
	srcDir := dataDir(t)
	src := openSQLite(t, srcDir)
	defer src.Close()
	fill(t, src)
	path := writeBackup(t, src, srcDir)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	bf, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst})
	if err != nil {
		t.Fatal(err)
	}
	if bf.Header.Driver != "sqlite" || !bf.Header.KEKIncluded || len(bf.Files) != 5 {
		t.Errorf("header %+v files %v", bf.Header, bf.Files)
	}
	restored := openSQLite(t, dst)
	defer restored.Close()
	checkRestored(t, src, srcDir, restored, dst)
	t.Logf("backup of %d bytes", info.Size())

	// A restore of an older state moves the revision on and marks older history compacted.
	bumped := filepath.Join(t.TempDir(), "bumped")
	if _, err := backup.Restore(ctx(t), path, backup.Target{DataDir: bumped, BumpRevision: backup.DefaultBump}); err != nil {
		t.Fatal(err)
	}
	b := openSQLite(t, bumped)
	defer b.Close()
	rev, _ := src.Revision(ctx(t))
	if got, err := b.Revision(ctx(t)); err != nil || got != rev+backup.DefaultBump {
		t.Fatalf("bumped revision %d (%v), want %d", got, err, rev+backup.DefaultBump)
	}
	if _, err := b.Watch(ctx(t), store.WatchOptions{Kind: api.KindCluster, Revision: rev + 5}); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("a watch from a revision of the lost history: %v, want ErrCompacted", err)
	}
	w, err := b.Watch(ctx(t), store.WatchOptions{Kind: api.KindCluster, Revision: rev + backup.DefaultBump})
	if err != nil {
		t.Fatal(err)
	}
	o, err := b.Create(ctx(t), cluster("after", nil))
	if err != nil || o.Metadata.ResourceVersion != fmt.Sprint(rev+backup.DefaultBump+1) {
		t.Fatalf("first write after a bumped restore: %v %v", o, err)
	}
	select {
	case ev := <-w:
		if ev.Revision != rev+backup.DefaultBump+1 {
			t.Errorf("watch saw revision %d", ev.Revision)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the watch from the bumped revision saw nothing")
	}

	// A second restore into the same directory is refused: it has a database now.
	_, err = backup.Restore(ctx(t), path, backup.Target{DataDir: dst})
	if err == nil || !strings.Contains(err.Error(), "fresh data directory") {
		t.Errorf("restore into a used directory: %v", err)
	}
}

func TestRoundTripPostgres(t *testing.T) {
	srv := pg.Start(t)
	srcDir := dataDir(t)

	t.Run("sqlite to postgres", func(t *testing.T) {
		src := openSQLite(t, filepath.Join(t.TempDir(), "src"))
		defer src.Close()
		fill(t, src)
		path := writeBackup(t, src, srcDir)
		url := srv.NewDatabase(t)
		dst := t.TempDir()
		if _, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst, DB: url}); err != nil {
			t.Fatal(err)
		}
		restored := openPG(t, url)
		defer restored.Close()
		checkRestored(t, src, srcDir, restored, dst)
		// A database that holds a store is refused, and left as it is.
		_, before := dump(t, restored)
		_, err := backup.Restore(ctx(t), path, backup.Target{DataDir: t.TempDir(), DB: url})
		if err == nil || !strings.Contains(err.Error(), "already holds") {
			t.Errorf("restore into a used database: %v", err)
		}
		if _, after := dump(t, restored); !reflect.DeepEqual(before, after) {
			t.Error("a refused restore changed the database")
		}
	})

	t.Run("postgres to sqlite", func(t *testing.T) {
		src := openPG(t, srv.NewDatabase(t))
		defer src.Close()
		fill(t, src)
		path := writeBackup(t, src, srcDir)
		dst := filepath.Join(t.TempDir(), "restored")
		bf, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst})
		if err != nil {
			t.Fatal(err)
		}
		if bf.Header.Driver != "postgres" {
			t.Errorf("driver %q", bf.Header.Driver)
		}
		restored := openSQLite(t, dst)
		defer restored.Close()
		checkRestored(t, src, srcDir, restored, dst)
	})

	t.Run("migrate", func(t *testing.T) {
		from := dataDir(t)
		src := openSQLite(t, from)
		fill(t, src)
		url := srv.NewDatabase(t)
		// Refused while a process holds the data directory.
		if _, err := backup.Migrate(ctx(t), from, url, "", t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("migrate while the store is open: %v", err)
		}
		_, want := dump(t, src)
		src.Close()
		dst := t.TempDir()
		if _, err := backup.Migrate(ctx(t), from, url, dst, t.TempDir(), nil); err != nil {
			t.Fatal(err)
		}
		restored := openPG(t, url)
		defer restored.Close()
		if _, got := dump(t, restored); !reflect.DeepEqual(got, want) {
			t.Error("migrated tables differ")
		}
		kek, _ := os.ReadFile(filepath.Join(dst, "keys", "kek"))
		if want, _ := os.ReadFile(filepath.Join(from, "keys", "kek")); !bytes.Equal(kek, want) {
			t.Error("the KEK was not copied")
		}
	})
}

// A damaged, truncated, foreign or future file is refused with a clear error, and nothing
// is written: the target directory stays absent.
func TestRefusesBadFiles(t *testing.T) {
	srcDir := dataDir(t)
	src := openSQLite(t, filepath.Join(t.TempDir(), "src"))
	defer src.Close()
	fill(t, src)
	good, err := os.ReadFile(writeBackup(t, src, srcDir))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x10
		return b
	}
	cases := map[string]struct {
		data []byte
		want string
	}{
		"a changed byte in the body":    {flip(len(good) / 2), "checksum does not match"},
		"a changed byte in the trailer": {flip(len(good) - 1), "checksum does not match"},
		"truncated":                     {good[:len(good)*2/3], "checksum does not match"},
		"truncated to the magic":        {good[:len(backup.Magic)+10], "truncated"},
		"empty":                         {nil, "does not start with"},
		"foreign":                       {[]byte("PK\x03\x04 this is a zip file, not a backup at all................................"), "does not start with"},
		"a gzip file":                   {append([]byte{0x1f, 0x8b}, good[2:]...), "does not start with"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad")
			if err := os.WriteFile(path, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(t.TempDir(), "target")
			_, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst})
			if err == nil || !errors.Is(err, backup.ErrFormat) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a format error saying %q", err, c.want)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the target directory was created: %v", err)
			}
		})
	}
}

// A file of another format version, with a valid checksum, is refused by its version.
func TestRefusesOtherVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v2")
	if err := os.WriteFile(path, backup.ForgeForTest(`{"format":2,"driver":"sqlite"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "target")
	_, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst})
	if err == nil || !strings.Contains(err.Error(), "format version 2") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the target directory was created: %v", err)
	}
}

// A file naming a path outside tls/ and keys/kek is refused before anything is written.
func TestRefusesEscapingFile(t *testing.T) {
	for _, p := range []string{"../evil", "tls/../../evil", "/etc/passwd", "flotilla.db", "keys/other", "tls/sub/x"} {
		path := filepath.Join(t.TempDir(), "evil")
		if err := os.WriteFile(path, backup.ForgeFileForTest(p), 0o600); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "target")
		if _, err := backup.Restore(ctx(t), path, backup.Target{DataDir: dst}); err == nil || !errors.Is(err, backup.ErrFormat) {
			t.Errorf("%s: got %v", p, err)
		}
		if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the target directory was created", p)
		}
	}
}
