package sqlite

import (
	"context"
	"testing"

	"flotilla.dev/internal/store/sqlstore"
)

// An acknowledged write must survive a power loss: by default every connection, the
// writer's above all, syncs the log at each commit (synchronous=FULL, 2). NORMAL (1) is
// there only when asked for.
func TestSynchronousMode(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode string
		want int
	}{{"", 2}, {"full", 2}, {"normal", 1}} {
		s, err := OpenWith(ctx, t.TempDir(), sqlstore.Config{}, Options{Synchronous: tc.mode})
		if err != nil {
			t.Fatalf("mode %q: %v", tc.mode, err)
		}
		var w, r int
		if err := s.writeDB.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&w); err != nil {
			t.Fatal(err)
		}
		if err := s.db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&r); err != nil {
			t.Fatal(err)
		}
		if w != tc.want || r != tc.want {
			t.Errorf("mode %q: synchronous is %d on the writer and %d on readers, want %d", tc.mode, w, r, tc.want)
		}
		s.Close()
	}
	if _, err := OpenWith(ctx, t.TempDir(), sqlstore.Config{}, Options{Synchronous: "off"}); err == nil {
		t.Error("synchronous=off was accepted")
	}
}
