package sqlstore_test

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/store/storetest"
)

// Compaction forgets a long history in steps, each its own transaction, so that other writes
// are not held behind it; together the steps forget exactly what one would.
func TestCompactInSteps(t *testing.T) {
	defer sqlstore.SetCompactStep(8)()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			var batches atomic.Int64
			s, db := b.open(t, sqlstore.Config{ObserveBatch: func(int) { batches.Add(1) }})
			ctx := testCtx(t)
			var revs []int64
			for i := range 50 {
				o, err := s.Create(ctx, storetest.Obj("ns", fmt.Sprintf("c%d", i), nil))
				if err != nil {
					t.Fatal(err)
				}
				rv, _ := strconv.ParseInt(o.Metadata.ResourceVersion, 10, 64)
				revs = append(revs, rv)
			}
			target := revs[39]
			before := batches.Load()
			if err := s.Compact(ctx, target); err != nil {
				t.Fatal(err)
			}
			if n := batches.Load() - before; n < 5 {
				t.Errorf("compacting %d revisions took %d transactions, want at least 5 (steps of 8)", target, n)
			}
			if n := count(t, db, fmt.Sprintf(`SELECT COUNT(*) FROM events WHERE rev <= %d`, target)); n != 0 {
				t.Errorf("%d events at or before %d remain", n, target)
			}
			if n := count(t, db, fmt.Sprintf(`SELECT COUNT(*) FROM events WHERE rev > %d`, target)); n != 10 {
				t.Errorf("%d events after %d remain, want 10", n, target)
			}
			if n := count(t, db, `SELECT value FROM meta WHERE name = 'compacted'`); int64(n) != target {
				t.Errorf("compacted at %d, want %d", n, target)
			}
			// An older target changes nothing.
			if err := s.Compact(ctx, revs[5]); err != nil {
				t.Fatal(err)
			}
			if n := count(t, db, `SELECT value FROM meta WHERE name = 'compacted'`); int64(n) != target {
				t.Errorf("compacted at %d after an older target, want %d", n, target)
			}
		})
	}
}
