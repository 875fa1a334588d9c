package doorbell

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fleet is a fake fleet model: unit logic, no store behind it.
type fleet struct {
	mu       sync.Mutex
	versions map[string]int64 // UID → version
	names    map[string]string
	handles  map[string]*string // the names, as DoorbellLookup hands them out
	seen     int
	wanted   map[string]bool
	loading  bool // the model is not ready yet
}

func newFleet() *fleet {
	return &fleet{versions: map[string]int64{}, names: map[string]string{}, handles: map[string]*string{}, wanted: map[string]bool{}}
}

func (f *fleet) add(uid string, name string, v int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.versions[uid], f.names[uid], f.handles[uid] = v, name, &name
}

// DoorbellLookup allocates nothing, as the fleet model's does: the text on the stack, and
// a pointer for the handle.
func (f *fleet) DoorbellLookup(u UID, version int64) (Cluster, bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var text [36]byte
	uid := u.Append(text[:0])
	v, ok := f.versions[string(uid)]
	if !ok {
		return nil, false, false
	}
	name := f.handles[string(uid)]
	return name, v != version, true
}

func (f *fleet) DoorbellKnown(uid string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.versions[uid]
	return ok
}

func (f *fleet) DoorbellUID(key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for u, n := range f.names {
		if n == key {
			return u
		}
	}
	return ""
}

func (f *fleet) Seen(Cluster, time.Time) { f.mu.Lock(); f.seen++; f.mu.Unlock() }
func (f *fleet) Key(c Cluster) string    { return *c.(*string) }
func (f *fleet) Wanting() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.wanted {
		if w {
			return true
		}
	}
	return false
}
func (f *fleet) Ready() bool            { f.mu.Lock(); defer f.mu.Unlock(); return !f.loading }
func (f *fleet) IsWanted(c string) bool { f.mu.Lock(); defer f.mu.Unlock(); return f.wanted[c] }

const uidA = "0b5c3c1e-8f5e-4c1a-9d6b-2a7e4f0c9d11"

var secret = []byte("0123456789abcdef0123456789abcdef")

func startServer(t *testing.T, f *fleet, cfg Config) *Server {
	t.Helper()
	return startServerAt(t, "127.0.0.1:0", f, cfg)
}

// startServerAt serves the doorbell on addr until the test ends.
func startServerAt(t *testing.T, addr string, f *fleet, cfg Config) *Server {
	t.Helper()
	cfg.Secret, cfg.Clusters, cfg.Tunnels = secret, f, f
	s, err := Listen(addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// peer is a raw UDP socket playing an agent, or an attacker.
type peer struct {
	t    *testing.T
	conn *net.UDPConn
	to   netip.AddrPort
}

func newPeer(t *testing.T, s *Server) *peer {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &peer{t: t, conn: c, to: s.Addr()}
}

func (p *peer) send(b []byte) {
	if _, err := p.conn.WriteToUDPAddrPort(b, p.to); err != nil {
		p.t.Fatal(err)
	}
}

// recv returns the next datagram, or nil after wait.
func (p *peer) recv(wait time.Duration) []byte {
	p.conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 512)
	n, _, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func ping(uid string, key []byte, counter uint64, version int64) []byte {
	u, _ := ParseUID(uid)
	return Packet{Kind: KindPing, Cluster: u, Counter: counter, Value: uint64(version)}.Append(nil, key)
}

func keyOf(uid string) []byte {
	u, _ := ParseUID(uid)
	return ClusterKey(secret, u)
}

func answer(t *testing.T, b []byte, key []byte) Packet {
	t.Helper()
	if b == nil {
		t.Fatal("no answer")
	}
	if len(b) != Size {
		t.Fatalf("answer of %d bytes, want %d", len(b), Size)
	}
	if err := Verify(b, key); err != nil {
		t.Fatal(err)
	}
	p, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUIDRoundTrip(t *testing.T) {
	u, err := ParseUID(uidA)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.String(); got != uidA {
		t.Errorf("got %s, want %s", got, uidA)
	}
	for _, bad := range []string{"", "x", uidA[:35], uidA + "0", "0b5c3c1e-8f5e-4c1a-9d6b-2a7e4f0c9dzz", "0b5c3c1e08f5e-4c1a-9d6b-2a7e4f0c9d11"} {
		if _, err := ParseUID(bad); err == nil {
			t.Errorf("ParseUID(%q) took it", bad)
		}
	}
}

func TestAnswers(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s := startServer(t, f, Config{})
	p := newPeer(t, s)
	key := keyOf(uidA)
	now := uint64(time.Now().UnixNano())

	p.send(ping(uidA, key, now, 42))
	a := answer(t, p.recv(5*time.Second), key)
	if a.Kind != KindUnchanged || a.Counter != now || a.Ring {
		t.Fatalf("got %+v, want unchanged echoing counter %d", a, now)
	}
	// Its next phase in the interval, at least a tenth of one away.
	if d := time.Duration(a.Value) * time.Millisecond; d < DefaultInterval/10-time.Millisecond || d > DefaultInterval+DefaultInterval/10 {
		t.Errorf("come back in %v, want within one interval (%v)", d, DefaultInterval)
	}

	p.send(ping(uidA, key, now+1, 41))
	if a := answer(t, p.recv(5*time.Second), key); a.Kind != KindChanged || a.Value != 0 {
		t.Errorf("stale version: got %+v, want changed, come now", a)
	}
	f.mu.Lock()
	f.wanted["ws/a"] = true
	f.mu.Unlock()
	p.send(ping(uidA, key, now+3, 42))
	if a := answer(t, p.recv(5*time.Second), key); a.Kind != KindTunnel {
		t.Errorf("tunnel wanted: got %+v, want tunnel", a)
	}
}

// TestHostile sends what an attacker can: each is dropped without an answer and changes
// nothing the server keeps.
func TestHostile(t *testing.T) {
	const uidB = "7d1e2f3a-0000-4000-8000-00000000000b"
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s := startServer(t, f, Config{})
	p := newPeer(t, s)
	key := keyOf(uidA)
	now := uint64(time.Now().UnixNano())
	valid := ping(uidA, key, now, 42)

	wrongKey := ping(uidA, keyOf(uidB), now, 42)
	flipped := bytes.Clone(valid)
	flipped[30] ^= 1
	oversize := append(bytes.Clone(valid), 0)
	unknown := ping(uidB, keyOf(uidB), now, 42)
	badVersion := bytes.Clone(valid)
	badVersion[0] = 2
	stale := ping(uidA, key, uint64(time.Now().Add(-time.Hour).UnixNano()), 42)
	answerKind := Packet{Kind: KindChanged, Cluster: mustUID(uidA), Counter: now}.Append(nil, key)
	for name, b := range map[string][]byte{
		"wrong key": wrongKey, "altered": flipped, "truncated": valid[:Size-1], "empty": {},
		"oversize": oversize, "unknown cluster": unknown, "other version": badVersion,
		"first counter an hour old": stale, "an answer sent back": answerKind,
	} {
		p.send(b)
		if got := p.recv(300 * time.Millisecond); got != nil {
			t.Errorf("%s: got an answer of %d bytes", name, len(got))
		}
	}
	if n := s.Len(); n != 0 {
		t.Fatalf("%d clusters recorded from hostile datagrams", n)
	}
	f.mu.Lock()
	seen := f.seen
	f.mu.Unlock()
	if seen != 0 {
		t.Fatalf("hostile datagrams marked a cluster seen")
	}

	// A valid ping, then the same one replayed, and an older one: only the first counts.
	p.send(valid)
	answer(t, p.recv(5*time.Second), key)
	p.send(valid)
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("a replayed ping was answered")
	}
	p.send(ping(uidA, key, now-1, 42))
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("an older counter was answered")
	}
	// A replay from elsewhere does not move where rings go.
	q := newPeer(t, s)
	q.send(valid)
	s.Ring(uidA)
	if got := p.recv(5 * time.Second); got == nil {
		t.Fatal("the ring did not go to the address of the last valid ping")
	}
	if got := q.recv(300 * time.Millisecond); got != nil {
		t.Error("the replaying address got a datagram")
	}

	// A deleted cluster: its pings, though signed, are not answered, and it is forgotten.
	f.mu.Lock()
	delete(f.versions, uidA)
	f.mu.Unlock()
	p.send(ping(uidA, key, now+10, 42))
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("a deleted cluster's ping was answered")
	}
	if n := s.Len(); n != 0 {
		t.Errorf("a deleted cluster is still recorded")
	}
}

// Pings captured before the server started (it forgot every counter), before the model was
// ready, and long enough ago for the server to have forgotten the cluster are refused; a
// counter far ahead of the clock is refused even after a held one, so the real agent's pings
// are not shut out by it.
func TestReplaysAcrossForgetting(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	key := keyOf(uidA)
	// Captured five minutes ago, within the replay window, but before this server started.
	captured := ping(uidA, key, uint64(time.Now().Add(-5*time.Minute).UnixNano()), 42)
	f.loading = true
	s := startServer(t, f, Config{})
	p := newPeer(t, s)
	p.send(captured)
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("a ping from before the start was answered while the model loads")
	}
	f.mu.Lock()
	f.loading = false
	f.mu.Unlock()
	p.send(captured)
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("a ping from before the start was answered")
	}
	now := uint64(time.Now().UnixNano())
	p.send(ping(uidA, key, now, 42))
	answer(t, p.recv(5*time.Second), key)
	p.send(ping(uidA, key, 1<<63-1, 42))
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("a counter far ahead of the clock was answered")
	}
	p.send(ping(uidA, key, now+1, 42))
	answer(t, p.recv(5*time.Second), key)
	if n := s.Len(); n != 1 {
		t.Fatalf("%d clusters recorded, want 1", n)
	}
	f.mu.Lock()
	seen := f.seen
	f.mu.Unlock()
	if seen != 2 {
		t.Errorf("the cluster marked seen %d times, want 2", seen)
	}
}

func mustUID(s string) UID {
	u, err := ParseUID(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestRings(t *testing.T) {
	const uidB = "7d1e2f3a-0000-4000-8000-00000000000b"
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	f.add(uidB, "ws/b", 42)
	s := startServer(t, f, Config{})
	p := newPeer(t, s)
	key := keyOf(uidA)
	now := uint64(time.Now().UnixNano())

	// No ping yet: no address, no ring.
	s.Ring(uidA)
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Fatal("a cluster that never pinged was rung")
	}
	p.send(ping(uidA, key, now, 42))
	answer(t, p.recv(5*time.Second), key)

	s.Ring(uidA)
	r := answer(t, p.recv(5*time.Second), key)
	if !r.Ring || r.Kind != KindChanged {
		t.Errorf("got %+v, want a changed ring", r)
	}
	s.RingTunnel("ws/a")
	if r := answer(t, p.recv(5*time.Second), key); !r.Ring || r.Kind != KindTunnel {
		t.Errorf("got %+v, want a tunnel ring", r)
	}
	s.RingAll()
	if r := answer(t, p.recv(5*time.Second), key); !r.Ring || r.Kind != KindChanged {
		t.Errorf("got %+v, want a changed ring", r)
	}
	if got := p.recv(300 * time.Millisecond); got != nil {
		t.Error("a second datagram; B never pinged and must not be rung")
	}
}

// TestRingBudget: rings beyond the budget wait; with a budget of 20 per second, 30 rings
// take longer than the first 10 do.
func TestRingBudget(t *testing.T) {
	f := newFleet()
	s := startServer(t, f, Config{RingRate: 20})
	p := newPeer(t, s)
	now := uint64(time.Now().UnixNano())
	var uids []string
	for i := range 30 {
		u := UID{byte(i), 1}
		uid := u.String()
		uids = append(uids, uid)
		f.add(uid, "ws/c", 1)
		p.send(ping(uid, keyOf(uid), now, 1))
		answer(t, p.recv(5*time.Second), keyOf(uid))
	}
	start := time.Now()
	for _, u := range uids {
		s.Ring(u)
	}
	var first, all time.Duration
	for i := range 30 {
		if p.recv(10*time.Second) == nil {
			t.Fatalf("only %d of 30 rings came", i)
		}
		if i == 1 {
			first = time.Since(start)
		}
	}
	all = time.Since(start)
	if all < 5*first {
		t.Errorf("30 rings took %v, the first two %v: not paced", all, first)
	}
}

func TestSourceLimit(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s := startServer(t, f, Config{SourceRate: 5})
	p := newPeer(t, s)
	key := keyOf(uidA)
	now := uint64(time.Now().UnixNano())
	for i := range 50 {
		p.send(ping(uidA, key, now+uint64(i), 42))
	}
	got := 0
	for p.recv(300*time.Millisecond) != nil {
		got++
	}
	if got == 0 || got > 15 {
		t.Errorf("%d of 50 pings answered at 5 per second (burst 10)", got)
	}
	if s.Stats.Limited.Load() == 0 {
		t.Error("nothing counted as limited")
	}
}

// TestKeeper runs an agent's keeper against a server: on, rung, and blocked when the
// server does not answer.
func TestKeeper(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s := startServer(t, f, Config{})
	rings := make(chan Kind, 10)
	k := &Keeper{Interval: time.Hour, Version: func() int64 { return 42 }, Ring: func(k Kind) { rings <- k }, Timeout: 200 * time.Millisecond}
	runKeeperTo(t, k, mustUID(uidA), s.Addr())
	waitFor(t, func() bool { return k.State() == StateOn })
	s.Ring(uidA)
	if got := <-rings; got != KindChanged {
		t.Errorf("got %v, want changed", got)
	}

	// A server that never answers: a socket nobody reads.
	hole, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	k2 := &Keeper{Interval: 100 * time.Millisecond, Version: func() int64 { return 42 }, Ring: func(Kind) {}, Timeout: 100 * time.Millisecond}
	runKeeperTo(t, k2, UID{9}, hole.LocalAddr().(*net.UDPAddr).AddrPort())
	waitFor(t, func() bool { return k2.State() == StateBlocked })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met in 10s")
}

// An agent's bell takes rings whose counter is the server's clock and refuses one captured
// before it started (an hour-old counter, as a replay of an old ring would carry).
func TestBellRefusesOldRings(t *testing.T) {
	ep, err := NewEndpoint("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ep.Serve()
	t.Cleanup(func() { ep.Close() })
	server, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	got := make(chan Packet, 4)
	ep.Add(mustUID(uidA), keyOf(uidA), server.LocalAddr().(*net.UDPAddr).AddrPort(), func(p Packet) { got <- p })
	to := ep.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, c := range []struct {
		at   time.Time
		want bool
	}{{time.Now().Add(-time.Hour), false}, {time.Now(), true}} {
		ring := Packet{Kind: KindChanged, Ring: true, Cluster: mustUID(uidA), Counter: uint64(c.at.UnixNano())}.Append(nil, keyOf(uidA))
		if _, err := server.WriteToUDPAddrPort(ring, to); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			if !c.want {
				t.Error("a ring with an hour-old counter was taken")
			}
		case <-time.After(300 * time.Millisecond):
			if c.want {
				t.Error("a ring with the clock's counter was not taken")
			}
		}
	}
}

// TestSourceLimitCountsAddresses: a sender's ports share its address's budget; another
// address has its own.
func TestSourceLimitCountsAddresses(t *testing.T) {
	const uidB = "7d1e2f3a-0000-4000-8000-00000000000b"
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	f.add(uidB, "ws/b", 42)
	s := startServer(t, f, Config{SourceRate: 5})
	p1, p2 := newPeer(t, s), newPeer(t, s)
	now := uint64(time.Now().UnixNano())
	for i := range 25 {
		p1.send(ping(uidA, keyOf(uidA), now+uint64(i), 42))
		p2.send(ping(uidB, keyOf(uidB), now+uint64(i), 42))
	}
	got := 0
	for _, p := range []*peer{p1, p2} {
		for p.recv(300*time.Millisecond) != nil {
			got++
		}
	}
	if got == 0 || got > 15 {
		t.Errorf("%d of 50 pings from two ports of one address answered at 5 per second (burst 10)", got)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Skipf("no second loopback address: %v", err)
	}
	defer c.Close()
	other := &peer{t: t, conn: c, to: s.Addr()}
	other.send(ping(uidA, keyOf(uidA), now+100, 42))
	answer(t, other.recv(5*time.Second), keyOf(uidA))
}

func TestSource(t *testing.T) {
	same := [][2]string{
		{"192.0.2.1", "::ffff:192.0.2.1"},
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"},
	}
	for _, c := range same {
		if source(netip.MustParseAddr(c[0])) != source(netip.MustParseAddr(c[1])) {
			t.Errorf("%s and %s are different sources, want one", c[0], c[1])
		}
	}
	differ := [][2]string{
		{"192.0.2.1", "192.0.2.2"},
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
	}
	for _, c := range differ {
		if source(netip.MustParseAddr(c[0])) == source(netip.MustParseAddr(c[1])) {
			t.Errorf("%s and %s are one source, want two", c[0], c[1])
		}
	}
}

// TestRotatedSecret: after the server's secrets rotate, an agent's old key is still
// answered (and rung) in it, with FlagRekey, until the old secret is dropped; the key it
// fetches is the new one's.
func TestRotatedSecret(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	oldSec := []byte("old-secret-0123456789abcdef012345")
	newSec := []byte("new-secret-0123456789abcdef012345")
	var mu sync.Mutex
	secrets := [][]byte{oldSec}
	s := startServer(t, f, Config{Secrets: func() [][]byte { mu.Lock(); defer mu.Unlock(); return secrets }})
	u, _ := ParseUID(uidA)
	oldKey, newKey := ClusterKey(oldSec, u), ClusterKey(newSec, u)
	if !bytes.Equal(s.Key(u), oldKey) {
		t.Fatal("the key handed out is not the only secret's")
	}
	p := newPeer(t, s)
	now := uint64(time.Now().UnixNano())
	p.send(ping(uidA, oldKey, now, 42))
	if a := answer(t, p.recv(5*time.Second), oldKey); a.Rekey {
		t.Fatal("rekey asked before any rotation")
	}

	mu.Lock()
	secrets = [][]byte{newSec, oldSec}
	mu.Unlock()
	if !bytes.Equal(s.Key(u), newKey) {
		t.Fatal("after the rotation the key handed out is not the new secret's")
	}
	p.send(ping(uidA, oldKey, now+1, 42))
	if a := answer(t, p.recv(5*time.Second), oldKey); !a.Rekey || a.Kind != KindUnchanged {
		t.Fatalf("old key after a rotation: got %+v, want unchanged with rekey", a)
	}
	s.Ring(uidA)
	if r := answer(t, p.recv(5*time.Second), oldKey); !r.Ring || !r.Rekey {
		t.Fatalf("ring to a cluster on its old key: got %+v, want a ring with rekey, in the old key", r)
	}
	p.send(ping(uidA, newKey, now+2, 42))
	if a := answer(t, p.recv(5*time.Second), newKey); a.Rekey {
		t.Fatal("rekey asked of the new key")
	}

	mu.Lock()
	secrets = [][]byte{newSec}
	mu.Unlock()
	p.send(ping(uidA, oldKey, now+3, 42))
	if b := p.recv(500 * time.Millisecond); b != nil {
		t.Fatal("a ping in a dropped secret's key was answered")
	}
}

// TestPingBudget: with more clusters pinging than the interval and the budget allow, each
// is told to ping less often, at its own phase; the server says which clusters ping.
func TestPingBudget(t *testing.T) {
	uids := []string{uidA, "7d1e2f3a-0000-4000-8000-00000000000b", "7d1e2f3a-0000-4000-8000-00000000000c", "7d1e2f3a-0000-4000-8000-00000000000d"}
	f := newFleet()
	for i, u := range uids {
		f.add(u, "ws/"+strconv.Itoa(i), 42)
	}
	s := startServer(t, f, Config{Interval: time.Second, Budget: 0.5})
	if s.Polled(uidA) {
		t.Fatal("pinging before any ping")
	}
	p := newPeer(t, s)
	now := uint64(time.Now().UnixNano())
	for _, u := range uids {
		p.send(ping(u, keyOf(u), now, 42))
		answer(t, p.recv(5*time.Second), keyOf(u))
	}
	if got, want := s.PingInterval(), 8*time.Second; got != want {
		t.Fatalf("ping interval %v with 4 clusters at 0.5/s, want %v", got, want)
	}
	// An agent that keeps alive between pings (an older one pings as often as keepalives go).
	p.send(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: now + 1, Value: 42, KeepAlive: true}.Append(nil, keyOf(uidA)))
	a := answer(t, p.recv(5*time.Second), keyOf(uidA))
	if d, _ := a.Delays(); d < 800*time.Millisecond-time.Millisecond || d > 8800*time.Millisecond {
		t.Errorf("come back in %v, want its phase within the stretched interval (8 s)", d)
	}
	if !s.Polled(uidA) || s.Polled("7d1e2f3a-0000-4000-8000-0000000000ff") || s.Polled("not a uid") {
		t.Error("Polled does not tell the clusters that ping from the others")
	}
}

// BenchmarkPing times the server's answer to one valid ping over loopback UDP, system calls
// of both sides included (the agent's side is a raw socket).
func BenchmarkPing(b *testing.B) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s, err := Listen("127.0.0.1:0", Config{Secret: secret, Clusters: f, SourceRate: 1e9})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Serve(ctx)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	key := keyOf(uidA)
	now := uint64(time.Now().UnixNano())
	buf := make([]byte, 512)
	b.ReportAllocs()
	for i := range b.N {
		if _, err := c.WriteToUDPAddrPort(ping(uidA, key, now+uint64(i), 42), s.Addr()); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandle times the server's work on one valid ping, without the system calls.
func BenchmarkHandle(b *testing.B) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s, err := Listen("127.0.0.1:0", Config{Secret: secret, Clusters: f, SourceRate: 1e9})
	if err != nil {
		b.Fatal(err)
	}
	defer s.conn.Close()
	key := keyOf(uidA)
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	now := uint64(time.Now().UnixNano())
	out := make([]byte, 0, Size)
	b.ReportAllocs()
	for i := range b.N {
		if len(s.handle(ping(uidA, key, now+uint64(i), 42), from, out)) == 0 {
			b.Fatal("not answered")
		}
	}
}

// TestMAC: the HMAC written out agrees with crypto/hmac, for keys and messages of every
// length around a block.
func TestMAC(t *testing.T) {
	for n := range 80 {
		for _, m := range []int{0, 36, 37, 64, 65, 100} {
			key := bytes.Repeat([]byte{byte(n + 1)}, n)
			msg := bytes.Repeat([]byte{byte(m + 7)}, m)
			h := hmac.New(sha256.New, key)
			h.Write(msg)
			if got, want := hmacSHA256(key, msg), h.Sum(nil); !bytes.Equal(got[:], want) {
				t.Fatalf("key of %d bytes, message of %d: %x, crypto/hmac %x", n, m, got, want)
			}
		}
	}
}

// TestHandleAllocations: answering a ping allocates nothing, with a fleet model that
// allocates nothing either: at a million clusters' pings, garbage is what the collector
// costs.
func TestHandleAllocations(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s, err := Listen("127.0.0.1:0", Config{Secret: secret, Clusters: f, SourceRate: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	defer s.conn.Close()
	key := keyOf(uidA)
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	now := uint64(time.Now().UnixNano())
	pings := make([][]byte, 200)
	for i := range pings {
		pings[i] = ping(uidA, key, now+uint64(i), 42)
	}
	out := make([]byte, 0, Size)
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		if len(s.handle(pings[i], from, out)) == 0 {
			t.Fatal("not answered")
		}
		i++
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per answered ping, want none", allocs)
	}
}

// TestBatchAnswersGoHome: datagrams read and answered in one batch each get their own answer
// at their own address, from IPv4 and IPv6 senders alike on a dual-stack socket.
func TestBatchAnswersGoHome(t *testing.T) {
	f := newFleet()
	const n = 40
	uids := make([]string, n)
	for i := range uids {
		uids[i] = cpuUID(i).String()
		f.add(uids[i], "ws/c"+strconv.Itoa(i), 7)
	}
	s, err := Listen("[::]:0", Config{Secret: secret, Clusters: f, Tunnels: f})
	if err != nil {
		t.Skipf("no dual-stack socket here: %v", err)
	}
	s.coalesce = 50 * time.Millisecond // the pings below gather into batches
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	peers := make([]*peer, n)
	for i := range peers {
		host, to := net.IPv4(127, 0, 0, 1), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.Addr().Port())
		if i%2 == 1 {
			host, to = net.IPv6loopback, netip.AddrPortFrom(netip.IPv6Loopback(), s.Addr().Port())
		}
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: host})
		if err != nil {
			t.Skipf("no %v here: %v", host, err)
		}
		defer c.Close()
		peers[i] = &peer{t: t, conn: c, to: to}
	}
	now := uint64(time.Now().UnixNano())
	// The first ping wakes the reader; the rest wait out its coalescing and come in batches.
	for round := range 3 {
		for i, p := range peers {
			p.send(ping(uids[i], keyOf(uids[i]), now+uint64(round), 7))
		}
		for i, p := range peers {
			b := p.recv(5 * time.Second)
			if b == nil {
				t.Fatalf("round %d, peer %d (%v): no answer; stats %d received %d answered %d refused %d limited", round, i, p.to, s.Stats.Received.Load(), s.Stats.Answered.Load(), s.Stats.Refused.Load(), s.Stats.Limited.Load())
			}
			a := answer(t, b, keyOf(uids[i]))
			if a.Kind != KindUnchanged || a.Counter != now+uint64(round) || a.Cluster.String() != uids[i] {
				t.Fatalf("round %d, peer %d: answer %+v", round, i, a)
			}
		}
	}
	if reads, recv := s.Stats.Reads.Load(), s.Stats.Received.Load(); recv != 3*n || reads*4 > recv {
		t.Errorf("%d datagrams in %d reads: not batched", recv, reads)
	}
}

// TestSourceLimitZeroKey: the source whose key is all zeros (::/64, holding ::1) starts with a
// full bucket like any other; it once started empty, the key of an unused slot.
func TestSourceLimitZeroKey(t *testing.T) {
	l := newSourceLimiter(10)
	now := time.Now()
	for i := range 20 {
		if !l.allow(netip.MustParseAddrPort("[::1]:4000"), now) {
			t.Fatalf("datagram %d from ::1 limited within the burst of 20", i)
		}
	}
	if l.allow(netip.MustParseAddrPort("[::1]:4000"), now) {
		t.Error("::1 not limited past its burst")
	}
}

// TestEntryAddress: an entry gives back the address it was given, IPv4, IPv6 and IPv6 with a
// zone alike; a zone lives in the side table only while the cluster's address has one; and
// the entry holds no pointer, so the collector never scans the table of a million.
func TestEntryAddress(t *testing.T) {
	u := mustUID(uidA)
	zones := map[UID]string{}
	var e entry
	if e.addr(u, zones).IsValid() {
		t.Fatal("an entry never given an address has one")
	}
	for _, a := range []string{"192.0.2.7:4000", "[2001:db8::7]:4001", "[fe80::1%eth0]:4002", "[::ffff:192.0.2.8]:4003", "10.0.0.1:65535"} {
		want := netip.MustParseAddrPort(a)
		e.setAddr(u, want, zones)
		if got := e.addr(u, zones); got != want {
			t.Errorf("%s came back as %s", want, got)
		}
		if _, has := zones[u]; has != (want.Addr().Zone() != "") {
			t.Errorf("after %s the zone table holds %v", want, zones)
		}
	}
	typ := reflect.TypeFor[entry]()
	for i := range typ.NumField() {
		switch k := typ.Field(i).Type.Kind(); k {
		case reflect.Bool, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Array:
		default:
			t.Errorf("entry.%s is a %s: the table would be scanned by the collector", typ.Field(i).Name, k)
		}
	}
}

// TestZonedPing: a ping from a zoned address records the zone, and forgetting the cluster
// drops it.
func TestZonedPing(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	fl := newFleet()
	fl.add(uidA, "ws/a", 42)
	s := socketless(fl, now)
	from := netip.MustParseAddrPort("[fe80::2%eth1]:4000")
	if out := s.handle(ping(uidA, keyOf(uidA), uint64(now.UnixNano()), 42), from, nil); len(out) == 0 {
		t.Fatal("no answer to a zoned ping")
	}
	u := mustUID(uidA)
	if e, _ := s.entries.get(u); e.addr(u, s.zones) != from {
		t.Fatalf("recorded %s, want %s", e.addr(u, s.zones), from)
	}
	s.forget(u)
	if len(s.zones) != 0 {
		t.Fatalf("zones after forgetting: %v", s.zones)
	}
}

// TestPingSlots: the phases a server gives fall on its slots, so that a fleet's pings arrive
// together, and every slot gets about its share of the fleet; each next ping is still
// between a tenth of an interval and 1.1 intervals away.
func TestPingSlots(t *testing.T) {
	s := &Server{cfg: Config{Budget: DefaultBudget}}
	const d = 500 * time.Second
	sl := s.slot(d)
	if sl != maxSlot {
		t.Fatalf("slot %v at the default budget, want %v", sl, maxSlot)
	}
	if got := (&Server{cfg: Config{Budget: 1e6}}).slot(d); got != time.Millisecond {
		t.Errorf("slot %v at a budget of 1M pings/s, want 1ms (a slot's pings must fit the socket's buffer)", got)
	}
	if got := s.slot(time.Second); got != 50*time.Millisecond {
		t.Errorf("slot %v in a 1 s interval, want a twentieth of it", got)
	}
	const n = 200000
	perSlot := map[int64]int{}
	now := time.Unix(1_800_000_000, 123_456_789)
	for i := range n {
		u := cpuUID(i)
		at := now.Add(time.Duration(i) * 7 * time.Millisecond) // answered at different times
		next := s.next(u, at, d)
		if next < d/10 || next >= d+d/10 {
			t.Fatalf("next ping in %v, want within [%v, %v)", next, d/10, d+d/10)
		}
		phase := at.Add(next).UnixNano() % int64(d)
		if phase%int64(sl) != 0 {
			t.Fatalf("ping at phase %v, not on a %v slot", time.Duration(phase), sl)
		}
		perSlot[phase/int64(sl)]++
	}
	// 5,000 slots, 40 pings each on average: none far above.
	most := 0
	for _, k := range perSlot {
		most = max(most, k)
	}
	if slots := int(d / sl); len(perSlot) < slots*9/10 || most > 3*n/slots {
		t.Errorf("%d of %d slots used, the fullest holding %d pings of %d", len(perSlot), slots, most, n)
	}
}
