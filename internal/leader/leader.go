// Package leader elects the one replica of `flotilla server` that runs the work which must
// run once per fleet (git polling and sync, rollout status, the offline sweep, compaction).
// On PostgreSQL the leader is the replica holding a session advisory lock on a connection of
// its own: the database releases the lock the moment that session ends, so a replica killed
// outright is replaced within one retry interval, and PostgreSQL never grants the lock twice.
// The embedded SQLite store serves one process, which always leads.
//
// The server's composition root imports this package; controllers only see a context that
// ends when leadership is lost (Lead).
package leader

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultKey is the advisory lock key of `flotilla server` ("flotilla" in ASCII, truncated);
// every replica on one database must use the same.
const DefaultKey int64 = 0x666c6f74696c6c61

// Config tunes a PostgreSQL election.
type Config struct {
	// URL is the PostgreSQL URL of the store's database.
	URL string
	// Key is the advisory lock key; 0 means DefaultKey.
	Key int64
	// Retry is how often a follower tries for the lock; it bounds failover time after the
	// leader's session ends (0: 1s).
	Retry time.Duration
	// Check is how often the leader checks that its session is alive; a dead session means
	// the lock is gone, and the leader steps down (0: 1s).
	Check  time.Duration
	Logger *slog.Logger
}

// Elector tracks whether this replica leads.
type Elector struct {
	cfg Config
	// always: no election (a single-process store).
	always bool

	mu      sync.Mutex
	leading bool
	changed chan struct{} // closed and replaced at every change of leading
	since   time.Time
}

// Always returns an Elector that leads from the start: for the embedded SQLite store, which
// one process owns.
func Always() *Elector {
	return &Elector{always: true, leading: true, changed: make(chan struct{}), since: time.Now()}
}

// NewPostgres returns an Elector that campaigns through an advisory lock once Run starts.
func NewPostgres(cfg Config) *Elector {
	if cfg.Key == 0 {
		cfg.Key = DefaultKey
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.Check <= 0 {
		cfg.Check = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Elector{cfg: cfg, changed: make(chan struct{})}
}

// Leading reports whether this replica leads now.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// state returns whether this replica leads and a channel closed at the next change.
func (e *Elector) state() (bool, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading, e.changed
}

func (e *Elector) set(v bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leading == v {
		return
	}
	e.leading = v
	if v {
		e.since = time.Now()
	}
	close(e.changed)
	e.changed = make(chan struct{})
}

// Run campaigns until ctx ends, then gives up the lock. It returns at once for Always.
func (e *Elector) Run(ctx context.Context) {
	if e.always {
		return
	}
	defer e.set(false)
	for ctx.Err() == nil {
		err := e.session(ctx)
		e.set(false)
		if ctx.Err() != nil {
			return
		}
		e.cfg.Logger.Warn("leader election session ended; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(e.cfg.Retry):
		}
	}
}

// session holds one connection: it tries for the lock until it gets it, then keeps
// checking the session while it leads. It returns when the connection fails or ctx ends.
func (e *Elector) session(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, e.cfg.URL)
	cancel()
	if err != nil {
		// pgx's connect errors name host and user, not the password.
		return fmt.Errorf("connecting for leader election: %w", err)
	}
	defer func() {
		// Closing the session releases the lock; unlocking first only makes it prompt on
		// a connection pooler that keeps server sessions.
		uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, e.cfg.Key)
		conn.Close(uctx)
	}()
	for {
		var got bool
		qctx, cancel := context.WithTimeout(ctx, e.cfg.Check+5*time.Second)
		err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock($1)`, e.cfg.Key).Scan(&got)
		cancel()
		if err != nil {
			return fmt.Errorf("trying the leader lock: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(e.cfg.Retry):
		}
	}
	e.cfg.Logger.Info("leading: this replica runs git sync, rollout status, the offline sweep and compaction")
	e.set(true)
	t := time.NewTicker(e.cfg.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		// The lock lives as long as the session: a session that no longer answers may have
		// been ended by the server, and another replica may hold the lock already.
		qctx, cancel := context.WithTimeout(ctx, e.cfg.Check)
		err := conn.Ping(qctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("leader session lost: %w", err)
		}
	}
}

// Lead runs fn with a context that ends when this replica stops leading, each time it
// starts leading, until ctx ends; it returns once fn has returned.
func (e *Elector) Lead(ctx context.Context, fn func(ctx context.Context)) {
	for {
		leading, changed := e.state()
		if !leading {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				continue
			}
		}
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			fn(lctx)
		}()
		for leading && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-changed:
				leading, changed = e.state()
			}
		}
		cancel()
		<-done
		if ctx.Err() != nil {
			return
		}
	}
}

// Wait blocks until this replica leads or ctx ends.
func (e *Elector) Wait(ctx context.Context) error {
	for {
		leading, changed := e.state()
		if leading {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
