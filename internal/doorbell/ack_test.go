package doorbell

import (
	"context"
	"testing"
	"time"
)

// A ring to an agent that acknowledges rings is sent again while unacknowledged, at most
// maxRingTries times in all; an acknowledgement stops it and is answered without comparing
// versions; an agent that does not acknowledge (an older one) is rung once.
func TestRingRetry(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	const retryAfter = 100 * time.Millisecond
	s := startServer(t, f, Config{RingRetry: retryAfter})
	p := newPeer(t, s)
	key := keyOf(uidA)
	now := uint64(time.Now().UnixNano())
	modern := func(counter uint64, version int64, rung bool) []byte {
		return Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: counter, Value: uint64(version), KeepAlive: true, Acks: true, Rung: rung}.Append(nil, key)
	}
	rings := func(wait time.Duration) int {
		n := 0
		for {
			b := p.recv(wait)
			if b == nil {
				return n
			}
			if r := answer(t, b, key); !r.Ring || r.Kind != KindChanged {
				t.Fatalf("got %+v, want a ring", r)
			}
			n++
		}
	}

	// Unacknowledged: the ring and two more, then no more.
	p.send(modern(now, 42, false))
	answer(t, p.recv(5*time.Second), key)
	s.Ring(uidA)
	if n := rings(4 * retryAfter * maxRingTries); n != maxRingTries {
		t.Fatalf("%d rings unacknowledged, want %d", n, maxRingTries)
	}
	if n := s.Stats.Resent.Load(); n != maxRingTries-1 {
		t.Errorf("%d rings counted resent, want %d", n, maxRingTries-1)
	}

	// Acknowledged at once: one ring; the acknowledgement, at the old version, is answered
	// "unchanged" (the ring already sent the agent to the API).
	s.Stats.Resent.Store(0)
	f.mu.Lock()
	f.versions[uidA] = 43
	f.mu.Unlock()
	s.Ring(uidA)
	if r := answer(t, p.recv(5*time.Second), key); !r.Ring || r.Kind != KindChanged {
		t.Fatalf("got %+v, want a ring", r)
	}
	p.send(modern(now+1, 42, true))
	if a := answer(t, p.recv(5*time.Second), key); a.Ring || a.Kind != KindUnchanged {
		t.Fatalf("the acknowledgement was answered %+v, want unchanged", a)
	}
	if n := rings(4 * retryAfter * maxRingTries); n != 0 {
		t.Errorf("%d rings after the acknowledgement", n)
	}

	// An ordinary ping at the old version still hears "changed".
	p.send(modern(now+2, 42, false))
	if a := answer(t, p.recv(5*time.Second), key); a.Kind != KindChanged {
		t.Errorf("a stale ping was answered %v, want changed", a.Kind)
	}

	// An older agent (no FlagAcks): rung once.
	s.Stats.Resent.Store(0)
	p.send(ping(uidA, key, now+3, 43))
	answer(t, p.recv(5*time.Second), key)
	s.Ring(uidA)
	if n := rings(4 * retryAfter * maxRingTries); n != 1 {
		t.Errorf("an agent that does not acknowledge was rung %d times, want once", n)
	}
	if n := s.Stats.Resent.Load(); n != 0 {
		t.Errorf("%d resent to an agent that does not acknowledge", n)
	}
}

// A tunnel's ring is sent again only while the tunnel is still wanted.
func TestTunnelRingRetry(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	const retryAfter = 150 * time.Millisecond
	s := startServer(t, f, Config{RingRetry: retryAfter})
	p := newPeer(t, s)
	key := keyOf(uidA)
	p.send(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: uint64(time.Now().UnixNano()), Value: 42, KeepAlive: true, Acks: true}.Append(nil, key))
	answer(t, p.recv(5*time.Second), key)
	f.mu.Lock()
	f.wanted["ws/a"] = true
	f.mu.Unlock()
	s.RingTunnel("ws/a")
	if r := answer(t, p.recv(5*time.Second), key); !r.Ring || r.Kind != KindTunnel {
		t.Fatalf("got %+v, want a tunnel's ring", r)
	}
	if r := answer(t, p.recv(5*time.Second), key); !r.Ring || r.Kind != KindTunnel {
		t.Fatalf("got %+v, want the tunnel's ring again", r)
	}
	// The tunnel came up: no third ring.
	f.mu.Lock()
	f.wanted["ws/a"] = false
	f.mu.Unlock()
	if b := p.recv(6 * retryAfter); b != nil {
		t.Errorf("rung again once the tunnel was no longer wanted: %+v", answer(t, b, key))
	}
}

// An agent's keeper acknowledges the rings it takes, so the server sends each once.
func TestKeeperAcks(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	const retryAfter = 100 * time.Millisecond
	s := startServer(t, f, Config{RingRetry: retryAfter})
	ep, err := NewEndpoint("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ep.Serve()
	t.Cleanup(func() { ep.Close() })
	rings := make(chan Kind, 10)
	k := &Keeper{Interval: time.Hour, KeepAlive: time.Hour, Version: func() int64 { return 42 }, Ring: func(k Kind) { rings <- k }, Timeout: time.Second}
	k.Bell = ep.Add(mustUID(uidA), keyOf(uidA), s.Addr(), k.Answer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go k.Run(ctx)
	waitFor(t, func() bool { return k.State() == StateOn })
	for range 3 {
		s.Ring(uidA)
		if got := <-rings; got != KindChanged {
			t.Fatalf("got %v, want changed", got)
		}
		time.Sleep(4 * retryAfter)
	}
	if n, rung := s.Stats.Resent.Load(), s.Stats.Rung.Load(); n != 0 || rung != 3 {
		t.Errorf("%d rings sent, %d of them again; want 3, none again", rung, n)
	}
	select {
	case k := <-rings:
		t.Errorf("a ring taken twice (%v)", k)
	default:
	}
}
