package sim

import (
	"context"
	"sync"
	"time"
)

// scheduler holds each simulated cluster's next wake-up in a min-heap and hands due
// clusters to workers. A cluster is in the heap at most once: only the worker that runs it
// puts it back, so one cluster never runs on two workers at a time.
type scheduler struct {
	mu   sync.Mutex
	heap []wake
	// kick wakes the dispatcher when an earlier wake-up arrives.
	kick chan struct{}
	now  func() int64
	// pos is each cluster's index in the heap (-1: not in it: running, or held in a long
	// poll) and rungAt when a doorbell ring asked for it (0: not); both only with rings on.
	pos    []int32
	rungAt []int64
}

type wake struct {
	at int64 // nanoseconds since the simulator's epoch
	id int32
}

func newScheduler(now func() int64, capacity int) *scheduler {
	return &scheduler{heap: make([]wake, 0, capacity), kick: make(chan struct{}, 1), now: now}
}

// enableRings lets ring move n clusters' wake-ups earlier.
func (s *scheduler) enableRings(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pos, s.rungAt = make([]int32, n), make([]int64, n)
	for i := range s.pos {
		s.pos[i] = -1
	}
	for i, w := range s.heap {
		s.pos[w.id] = int32(i)
	}
}

func (s *scheduler) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	if s.pos != nil {
		s.pos[s.heap[i].id], s.pos[s.heap[j].id] = int32(i), int32(j)
	}
}

// up moves heap entry i towards the root; it reports whether it got there.
func (s *scheduler) up(i int) bool {
	for i > 0 {
		p := (i - 1) / 2
		if s.heap[p].at <= s.heap[i].at {
			break
		}
		s.swap(p, i)
		i = p
	}
	return i == 0
}

// push schedules id at at (earlier when a ring asked for it meanwhile).
func (s *scheduler) push(at int64, id int32) {
	s.mu.Lock()
	if s.rungAt != nil && s.rungAt[id] != 0 {
		at = min(at, s.rungAt[id])
	}
	s.heap = append(s.heap, wake{at, id})
	i := len(s.heap) - 1
	if s.pos != nil {
		s.pos[id] = int32(i)
	}
	top := s.up(i)
	s.mu.Unlock()
	if top {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// pop removes the earliest wake-up if it is due; otherwise it says how long until one is
// (or -1 when the heap is empty).
func (s *scheduler) pop(now int64) (wake, time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.heap) == 0 {
		return wake{}, -1, false
	}
	top := s.heap[0]
	if top.at > now {
		return wake{}, time.Duration(top.at - now), false
	}
	last := len(s.heap) - 1
	s.swap(0, last)
	s.heap = s.heap[:last]
	if s.pos != nil {
		s.pos[top.id] = -1
	}
	i := 0
	for {
		l := 2*i + 1
		if l >= last {
			break
		}
		m := l
		if r := l + 1; r < last && s.heap[r].at < s.heap[l].at {
			m = r
		}
		if s.heap[i].at <= s.heap[m].at {
			break
		}
		s.swap(i, m)
		i = m
	}
	return top, 0, true
}

// ring asks for cluster id to run at at (a doorbell ring): its wake-up moves earlier if it
// waits in the heap; otherwise (it is running) its next push does.
func (s *scheduler) ring(id int32, at int64) {
	s.mu.Lock()
	if r := s.rungAt[id]; r == 0 || at < r {
		s.rungAt[id] = at
	}
	top := false
	if i := s.pos[id]; i >= 0 && s.heap[i].at > at {
		s.heap[i].at = at
		top = s.up(int(i))
	}
	s.mu.Unlock()
	if top {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// rung reports (once) whether a ring due by now asked for cluster id.
func (s *scheduler) rung(id int32, now int64) bool {
	if s.rungAt == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.rungAt[id]; r != 0 && r <= now {
		s.rungAt[id] = 0
		return true
	}
	return false
}

// run hands due clusters to out until ctx ends, then closes out. lag records how late each
// was handed over: when workers cannot keep up, the simulator, not the server, is the limit.
func (s *scheduler) run(ctx context.Context, out chan<- int32, lag *histogram) {
	defer close(out)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w, wait, ok := s.pop(s.now())
		if !ok {
			if wait < 0 {
				wait = time.Hour
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
			case <-timer.C:
			}
			continue
		}
		select {
		case out <- w.id:
			lag.record(time.Duration(s.now() - w.at))
		case <-ctx.Done():
			return
		}
	}
}
