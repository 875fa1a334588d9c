package doorbell

import (
	"net/netip"
	"testing"
	"time"
)

// A ring to an agent that acknowledges rings is sent again while unacknowledged, at most
// maxRingTries times in all; an acknowledgement stops it and is answered without comparing
// versions; an agent that does not acknowledge (an older one) is rung once.
func TestRingRetry(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	const retryAfter = 300 * time.Millisecond
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
	const retryAfter = 300 * time.Millisecond
	s := startServer(t, f, Config{RingRetry: retryAfter})
	rings := make(chan Kind, 10)
	k := &Keeper{Interval: time.Hour, KeepAlive: time.Hour, Version: func() int64 { return 42 }, Ring: func(k Kind) { rings <- k }, Timeout: time.Second}
	runKeeperTo(t, k, mustUID(uidA), s.Addr())
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

// An acknowledgement is answered without comparing versions, so it must not spend a ring
// queued for a change made after the ring it acknowledges; an ordinary ping does, as its
// answer says "changed".
func TestAckKeepsQueuedChange(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	// Listened but not served: no ringer sends the queued ring meanwhile.
	s, err := Listen("127.0.0.1:0", Config{Secret: secret, Clusters: f})
	if err != nil {
		t.Fatal(err)
	}
	defer s.conn.Close()
	key := keyOf(uidA)
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	now := uint64(time.Now().UnixNano())
	send := func(counter uint64, version int64, rung bool) Packet {
		t.Helper()
		b := s.handle(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: counter, Value: uint64(version), KeepAlive: true, Acks: true, Rung: rung}.Append(nil, key), from, nil)
		return answer(t, b, key)
	}
	pending := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		e, _ := s.entries.get(mustUID(uidA))
		return e.pending
	}
	send(now, 42, false)
	f.mu.Lock()
	f.versions[uidA] = 43
	f.mu.Unlock()
	s.Ring(uidA)
	if a := send(now+1, 42, true); a.Kind != KindUnchanged {
		t.Fatalf("an acknowledgement was answered %v, want unchanged", a.Kind)
	}
	if !pending() {
		t.Fatal("an acknowledgement spent the ring queued for a later change")
	}
	if a := send(now+2, 42, false); a.Kind != KindChanged {
		t.Fatalf("a stale ping was answered %v, want changed", a.Kind)
	}
	if pending() {
		t.Error("a ping answered \"changed\" left its ring queued")
	}
}

// An agent older than keepalives keeps its NATs open with pings alone: it is told to ping
// as often as keepalives go, not at the (longer) ping interval.
func TestOlderAgentPingsAtKeepAliveInterval(t *testing.T) {
	s, p, now := fourPinging(t, Config{Interval: time.Second, Budget: 0.25, KeepAliveBudget: 2}, false)
	if s.PingInterval() != 16*time.Second || s.KeepAliveInterval() != 2*time.Second {
		t.Fatalf("intervals %v and %v, want 16 s and 2 s", s.PingInterval(), s.KeepAliveInterval())
	}
	for i := range 20 {
		p.send(ping(uidA, keyOf(uidA), now+1+uint64(i), 42))
		if d := time.Duration(answer(t, p.recv(5*time.Second), keyOf(uidA)).Value) * time.Millisecond; d > 2200*time.Millisecond {
			t.Fatalf("an older agent told to come back in %v, past the keepalive interval (2 s)", d)
		}
	}
}

// A keeper offered keepalives by one server may ping another of an older version (a replica
// not yet upgraded), which refuses the new flags: its retry goes without them, is answered,
// and no keepalives follow while the answers lack the flag.
func TestKeeperFallsBackForOlderServer(t *testing.T) {
	k := &Keeper{Interval: time.Hour, KeepAlive: 50 * time.Millisecond, Version: func() int64 { return 42 }, Ring: func(Kind) {}, Timeout: 200 * time.Millisecond}
	srv := runKeeper(t, k)
	key := keyOf(uidA)
	// The older server: it answers only pings whose flags it knows (none of the new ones).
	buf := make([]byte, 512)
	flagged, keeps := 0, 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		srv.SetReadDeadline(deadline)
		n, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if n == len(KeepAlive) {
			keeps++
			continue
		}
		p, err := Parse(buf[:n])
		if err != nil || p.Kind != KindPing {
			continue
		}
		if p.KeepAlive || p.Acks || p.Rung {
			flagged++
			continue
		}
		ans := Packet{Kind: KindUnchanged, Cluster: p.Cluster, Counter: p.Counter, Value: uint64(time.Hour / time.Millisecond)}
		srv.WriteToUDPAddrPort(ans.Append(nil, key), from)
		deadline = time.Now().Add(500 * time.Millisecond) // long enough for keepalives to show
	}
	if k.State() != StateOn {
		t.Fatalf("state %q after %d flagged pings, want on", k.State(), flagged)
	}
	if keeps != 0 {
		t.Errorf("%d keepalives sent to a server that does not take them", keeps)
	}
}

// A cluster that polls over HTTPS while its ring is queued, or sent and unacknowledged, is
// not rung (again): the poll's answer brings the change. A change made after the poll rings.
func TestPolledSparesRing(t *testing.T) {
	const uidB = "7d1e2f3a-0000-4000-8000-00000000000b"
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	f.add(uidB, "ws/b", 42)
	// One ring a second: A's ring takes the one token there is, and B's waits about a
	// second for the next, ample time for B to poll first; A's resend is due a second
	// after its ring.
	const retryAfter = time.Second
	s := startServer(t, f, Config{RingRate: 1, RingRetry: retryAfter})
	p := newPeer(t, s)
	now := uint64(time.Now().UnixNano())
	for _, u := range []string{uidA, uidB} {
		p.send(Packet{Kind: KindPing, Cluster: mustUID(u), Counter: now, Value: 42, KeepAlive: true, Acks: true}.Append(nil, keyOf(u)))
		answer(t, p.recv(5*time.Second), keyOf(u))
	}
	s.Ring(uidA)
	s.Ring(uidB)
	if !s.Polled(uidB) {
		t.Error("Polled says B, which pings, does not")
	}
	r := answer(t, p.recv(5*time.Second), keyOf(uidA))
	if !r.Ring || r.Cluster != mustUID(uidA) {
		t.Fatalf("got %+v, want A's ring", r)
	}
	// A polls instead of acknowledging, before its resend is due.
	s.Polled(uidA)
	if b := p.recv(3 * retryAfter); b != nil {
		r, _ := Parse(b)
		t.Fatalf("rang %v after both polled, want nothing", r.Cluster)
	}
	if n, m := s.Stats.Spared.Load(), s.Stats.Resent.Load(); n != 2 || m != 0 {
		t.Errorf("%d rings spared and %d resent, want 2 and 0", n, m)
	}
	// A poll with nothing queued spares nothing; a change after it rings.
	s.Polled(uidB)
	s.Ring(uidB)
	if r := answer(t, p.recv(5*time.Second), keyOf(uidB)); !r.Ring || r.Cluster != mustUID(uidB) {
		t.Fatalf("got %+v, want B's ring for the change after its poll", r)
	}
	if n := s.Stats.Spared.Load(); n != 2 {
		t.Errorf("%d rings spared, want 2", n)
	}
	if s.Polled("not a uid") || s.Polled("7d1e2f3a-0000-4000-8000-0000000000ff") {
		t.Error("Polled says an unknown cluster pings")
	}
}

// A ring passed over (the cluster pinged or polled since it was queued) takes nothing from
// the ring budget: with one ring a second, rings queued behind a thousand spared ones go at
// once.
func TestSparedRingsTakeNoBudget(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s := startServer(t, f, Config{RingRate: 1})
	p := newPeer(t, s)
	p.send(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: uint64(time.Now().UnixNano()), Value: 42, KeepAlive: true, Acks: true}.Append(nil, keyOf(uidA)))
	answer(t, p.recv(5*time.Second), keyOf(uidA))
	// A thousand entries of clusters that pinged, their rings queued and then spared.
	s.mu.Lock()
	for i := range 1000 {
		u := UID{0xee, byte(i >> 8), byte(i)}
		e, _ := s.entries.get(mustUID(uidA))
		e.pending = false
		s.entries.set(u, e)
		s.queue = append(s.queue, u)
	}
	s.mu.Unlock()
	s.Ring(uidA)
	// The burst is one ring: had each spared ring taken a token, A's would come in ~1,000 s.
	if r := answer(t, p.recv(20*time.Second), keyOf(uidA)); !r.Ring {
		t.Fatalf("got %+v, want A's ring", r)
	}
}
