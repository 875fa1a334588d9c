package sqlite

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"flotilla.dev/internal/store/sqlstore"
)

// TestIdleReadersClosed: readers opened by a burst are closed once idle, and with them the
// page caches they filled (outside the Go heap, 8 MiB each).
func TestIdleReadersClosed(t *testing.T) {
	defer func(d time.Duration) { readerIdleTime = d }(readerIdleTime)
	readerIdleTime = 50 * time.Millisecond
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir(), sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Eight read transactions at once take all eight connections.
	var txs []*sql.Tx
	for range 8 {
		tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	if n := s.db.Stats().OpenConnections; n != 8 {
		t.Fatalf("%d readers open, want 8", n)
	}
	for _, tx := range txs {
		tx.Rollback()
	}
	// database/sql checks idle connections once a second at most. The store's own
	// background reads (the change poller) may keep one in use all along: it is never idle
	// for long enough, and that is the point.
	deadline := time.Now().Add(30 * time.Second)
	for st := s.db.Stats(); st.MaxIdleTimeClosed < 7 || st.OpenConnections > 1; st = s.db.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("readers still open after they were idle: %+v", s.db.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
