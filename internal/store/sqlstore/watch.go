package sqlstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// rawEvent is one row of the events table.
type rawEvent struct {
	rev       int64
	kind      string
	namespace string
	typ       int
	data      []byte
	prev      []byte
}

// hub reads new events once and hands them to every watcher. The writer nudges it after a
// commit; a ticker catches commits made by other server replicas on the same database.
type hub struct {
	s      *Store
	kick   chan struct{}
	latest atomic.Int64

	mu       sync.Mutex
	watchers map[*watcher]struct{}
	cursor   int64 // events up to here were handed out
}

func newHub(s *Store, rev int64) *hub {
	h := &hub{s: s, kick: make(chan struct{}, 1), watchers: map[*watcher]struct{}{}, cursor: rev}
	h.latest.Store(rev)
	return h
}

func (h *hub) nudge(rev int64) {
	if rev > h.latest.Load() {
		h.latest.Store(rev)
	}
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *hub) poll() {
	defer h.s.wg.Done()
	t := time.NewTicker(h.s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-h.kick:
		case <-t.C:
		case <-h.s.quit:
			h.mu.Lock()
			for w := range h.watchers {
				w.drop(store.ErrClosed)
			}
			h.watchers = nil
			h.mu.Unlock()
			return
		}
		if err := h.pass(); err != nil {
			h.s.log.Warn("reading store events", "err", err)
		}
	}
}

// pass hands out every event after the cursor.
func (h *hub) pass() error {
	// Read the revision before looking for watchers: when nobody listens the cursor jumps
	// to it, and only events committed before a watcher registered may be skipped so (the
	// watcher reads those itself). Reading it after the check would skip an event committed
	// in between, which neither would deliver.
	rev, err := h.s.Revision(context.Background())
	if err != nil {
		return err
	}
	h.mu.Lock()
	n := len(h.watchers)
	cursor := h.cursor
	if n == 0 {
		// Every revision up to the stored one is committed, because writers commit in
		// revision order.
		if rev > h.cursor {
			h.cursor = rev
		}
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	for {
		evs, err := h.s.readEvents(context.Background(), cursor, 1000)
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return nil
		}
		h.mu.Lock()
		for w := range h.watchers {
			for i := range evs {
				if !w.wants(&evs[i]) {
					continue
				}
				select {
				case w.inbox <- evs[i]:
				default:
					// A watcher that cannot keep up is dropped rather than allowed to hold
					// the others back or grow without bound; it resumes from its revision.
					w.drop(store.ErrBehind)
					delete(h.watchers, w)
				}
				if w.isDropped() {
					break
				}
			}
		}
		cursor = evs[len(evs)-1].rev
		h.cursor = cursor
		h.mu.Unlock()
		if len(evs) < 1000 {
			return nil
		}
	}
}

func (s *Store) readEvents(ctx context.Context, after int64, limit int) ([]rawEvent, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT rev, kind, namespace, type, data, prev FROM events WHERE rev > ? ORDER BY rev LIMIT ?`), after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading events after %d: %w", after, err)
	}
	defer rows.Close()
	var out []rawEvent
	for rows.Next() {
		var e rawEvent
		if err := rows.Scan(&e.rev, &e.kind, &e.namespace, &e.typ, &e.data, &e.prev); err != nil {
			return nil, fmt.Errorf("reading events after %d: %w", after, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

type watcher struct {
	opts    store.WatchOptions
	inbox   chan rawEvent
	dropped chan struct{}
	once    sync.Once
	err     error
}

func (w *watcher) wants(e *rawEvent) bool {
	return e.kind == w.opts.Kind && (w.opts.Namespace == "" || w.opts.Namespace == e.namespace)
}

func (w *watcher) drop(err error) {
	w.once.Do(func() {
		w.err = err
		close(w.dropped)
	})
}

func (w *watcher) isDropped() bool {
	select {
	case <-w.dropped:
		return true
	default:
		return false
	}
}

// convert turns a stored event into what this watcher sees: with a selector, objects
// entering or leaving the selection appear as added or deleted.
func (w *watcher) convert(e *rawEvent) (store.Event, bool) {
	ev := store.Event{Revision: e.rev, Object: e.data}
	sel := w.opts.Selector
	if sel == nil || sel.Empty() {
		switch e.typ {
		case evAdded:
			ev.Type = api.Added
		case evModified:
			ev.Type = api.Modified
		default:
			ev.Type = api.Deleted
		}
		return ev, true
	}
	now := e.typ != evDeleted && sel.Matches(labels.Set(labelsOf(e.data)))
	was := e.prev != nil && sel.Matches(labels.Set(labelsOf(e.prev)))
	switch {
	case now && was:
		ev.Type = api.Modified
	case now:
		ev.Type = api.Added
	case was:
		ev.Type = api.Deleted
	default:
		return ev, false
	}
	return ev, true
}

// Watch streams changes after opts.Revision.
func (s *Store) Watch(ctx context.Context, opts store.WatchOptions) (<-chan store.Event, error) {
	from := opts.Revision
	if from == 0 {
		rev, err := s.Revision(ctx)
		if err != nil {
			return nil, err
		}
		from = rev
	}
	compacted, err := s.compacted(ctx, s.db)
	if err != nil {
		return nil, err
	}
	if from < compacted {
		return nil, fmt.Errorf("watch from revision %d, history starts after %d: %w", from, compacted, store.ErrCompacted)
	}
	w := &watcher{opts: opts, inbox: make(chan rawEvent, s.cfg.WatchBuffer), dropped: make(chan struct{})}
	// Register before catching up from the table, so nothing committed in between is missed;
	// events seen twice are skipped by revision.
	s.hub.mu.Lock()
	if s.hub.watchers == nil {
		s.hub.mu.Unlock()
		return nil, store.ErrClosed
	}
	s.hub.watchers[w] = struct{}{}
	s.hub.mu.Unlock()
	s.hub.nudge(0)

	out := make(chan store.Event, 64)
	go func() {
		defer close(out)
		defer func() {
			s.hub.mu.Lock()
			delete(s.hub.watchers, w)
			s.hub.mu.Unlock()
		}()
		last := from
		send := func(e *rawEvent) bool {
			if e.rev <= last {
				return true
			}
			last = e.rev
			if !w.wants(e) {
				return true
			}
			ev, ok := w.convert(e)
			if !ok {
				return true
			}
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			evs, err := s.readEvents(ctx, last, 500)
			if err != nil {
				if ctx.Err() == nil {
					out <- store.Event{Err: err}
				}
				return
			}
			for i := range evs {
				if !send(&evs[i]) {
					return
				}
			}
			if len(evs) < 500 {
				break
			}
		}
		for {
			select {
			case e := <-w.inbox:
				if !send(&e) {
					return
				}
			case <-w.dropped:
				// Deliver what was queued before the drop, then say why it ended.
				for {
					select {
					case e := <-w.inbox:
						if !send(&e) {
							return
						}
						continue
					default:
					}
					break
				}
				select {
				case out <- store.Event{Revision: last, Err: fmt.Errorf("watch ended at revision %d: %w", last, w.err)}:
				case <-ctx.Done():
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
