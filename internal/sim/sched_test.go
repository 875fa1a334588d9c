package sim

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

func TestSchedulerOrder(t *testing.T) {
	s := newScheduler(func() int64 { return 0 }, 0)
	want := rand.Perm(1000)
	for id, at := range want {
		s.push(int64(at), int32(id))
	}
	last := int64(-1)
	for range want {
		w, _, ok := s.pop(1 << 40)
		if !ok {
			t.Fatal("heap ran empty early")
		}
		if w.at < last {
			t.Fatalf("popped %d after %d", w.at, last)
		}
		if int64(want[w.id]) != w.at {
			t.Fatalf("id %d came with time %d, pushed with %d", w.id, w.at, want[w.id])
		}
		last = w.at
	}
	if _, wait, ok := s.pop(0); ok || wait != -1 {
		t.Fatalf("empty heap: pop = %v, %v; want nothing and -1", ok, wait)
	}
	s.push(50, 1)
	if _, wait, ok := s.pop(20); ok || wait != 30 {
		t.Fatalf("pop before due = %v, %v; want not yet and 30ns", ok, wait)
	}
}

func TestSchedulerRun(t *testing.T) {
	epoch := time.Now()
	now := func() int64 { return int64(time.Since(epoch)) }
	s := newScheduler(now, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan int32)
	var lag histogram
	go s.run(ctx, out, &lag)
	// A later wake-up first, then an earlier one: the dispatcher must not sleep through it.
	s.push(now()+int64(time.Hour), 1)
	s.push(now()+int64(20*time.Millisecond), 2)
	var got atomic.Int32
	select {
	case id := <-out:
		got.Store(id)
	case <-time.After(5 * time.Second):
		t.Fatal("nothing dispatched")
	}
	if got.Load() != 2 {
		t.Fatalf("dispatched %d first, want 2", got.Load())
	}
	if d := time.Since(epoch); d < 20*time.Millisecond {
		t.Fatalf("dispatched after %v, before it was due", d)
	}
	cancel()
	for range out {
	}
}
