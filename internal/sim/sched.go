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
}

type wake struct {
	at int64 // nanoseconds since the simulator's epoch
	id int32
}

func newScheduler(now func() int64, capacity int) *scheduler {
	return &scheduler{heap: make([]wake, 0, capacity), kick: make(chan struct{}, 1), now: now}
}

// push schedules id at at.
func (s *scheduler) push(at int64, id int32) {
	s.mu.Lock()
	s.heap = append(s.heap, wake{at, id})
	i := len(s.heap) - 1
	for i > 0 {
		p := (i - 1) / 2
		if s.heap[p].at <= s.heap[i].at {
			break
		}
		s.heap[p], s.heap[i] = s.heap[i], s.heap[p]
		i = p
	}
	top := i == 0
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
	s.heap[0] = s.heap[last]
	s.heap = s.heap[:last]
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
		s.heap[i], s.heap[m] = s.heap[m], s.heap[i]
		i = m
	}
	return top, 0, true
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
