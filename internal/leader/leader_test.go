package leader_test

import (
	"context"
	"database/sql"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/internal/leader"
	"flotilla.dev/internal/testenv/pg"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pg.StopShared()
	os.Exit(code)
}

// waitFor polls cond for up to a minute: a generous bound, not a measured threshold.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leaders(es []*leader.Elector) (n int, which int) {
	which = -1
	for i, e := range es {
		if e.Leading() {
			n++
			which = i
		}
	}
	return n, which
}

// Three electors on one database: exactly one leads; when the leader's database session is
// ended (as when its process is killed) another takes over, and the work run under Lead
// moves with it.
func TestOneLeaderAndFailover(t *testing.T) {
	url := pg.Start(t).NewDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var es []*leader.Elector
	var running [3]atomic.Int32
	for i := range 3 {
		e := leader.NewPostgres(leader.Config{URL: url, Retry: 50 * time.Millisecond, Check: 50 * time.Millisecond})
		es = append(es, e)
		go e.Run(ctx)
		go e.Lead(ctx, func(lctx context.Context) {
			running[i].Add(1)
			<-lctx.Done()
			running[i].Add(-1)
		})
	}
	waitFor(t, "a leader", func() bool { n, _ := leaders(es); return n == 1 })
	_, first := leaders(es)
	waitFor(t, "the leader's work to start", func() bool { return running[first].Load() == 1 })
	// No second leader appears while the first holds the lock.
	time.Sleep(300 * time.Millisecond)
	if n, _ := leaders(es); n != 1 {
		t.Fatalf("got %d leaders, want 1", n)
	}

	// End the leader's session from the database side, as a killed process's would end.
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ended int
	if err := db.QueryRow(`SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted`).Scan(&ended); err != nil {
		t.Fatal(err)
	}
	if ended != 1 {
		t.Fatalf("ended %d sessions holding the lock, want 1", ended)
	}
	waitFor(t, "the old leader to step down and its work to stop", func() bool { return !es[first].Leading() && running[first].Load() == 0 })
	waitFor(t, "one leader again", func() bool { n, _ := leaders(es); return n == 1 })
	_, second := leaders(es)
	waitFor(t, "the new leader's work to start", func() bool { return running[second].Load() == 1 })
	if n, _ := leaders(es); n != 1 {
		t.Fatalf("got %d leaders after failover, want 1", n)
	}
}

func TestAlwaysLeads(t *testing.T) {
	e := leader.Always()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go e.Lead(ctx, func(lctx context.Context) { close(ran); <-lctx.Done() })
	<-ran
	if !e.Leading() {
		t.Fatal("Always does not lead")
	}
	cancel()
}
