package doorbell

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// Keepalives, and every other datagram that is not a ping's size, are dropped by the
// socket's filter before the server reads them: they change nothing and cost no read. A
// ping that says its agent keeps alive is answered with both intervals; one that does not
// (an agent of an older version) with its delay alone.
func TestKeepAlives(t *testing.T) {
	f := newFleet()
	f.add(uidA, "ws/a", 42)
	s := startServer(t, f, Config{})
	p := newPeer(t, s)
	key := keyOf(uidA)

	for range 50 {
		p.send(KeepAlive)
	}
	p.send(make([]byte, Size+1))
	p.send(make([]byte, Size-1))
	now := uint64(time.Now().UnixNano())
	kp := Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: now, Value: 42, KeepAlive: true}
	p.send(kp.Append(nil, key))
	a := answer(t, p.recv(5*time.Second), key)
	if !a.KeepAlive || a.Kind != KindUnchanged {
		t.Fatalf("got %+v, want unchanged with the keepalive flag", a)
	}
	delay, keep := a.Delays()
	if delay < DefaultInterval/10-time.Millisecond || delay > DefaultInterval+DefaultInterval/10 {
		t.Errorf("come back in %v, want within one interval (%v)", delay, DefaultInterval)
	}
	if keep != s.KeepAliveInterval() || keep != DefaultInterval {
		t.Errorf("keepalive interval %v, want %v", keep, s.KeepAliveInterval())
	}
	if runtime.GOOS == "linux" {
		// The keepalives and the odd sizes went before the ping: had the filter let them
		// through, they would have been read (and refused) first.
		if got := s.Stats.Received.Load(); got != 1 {
			t.Errorf("the server read %d datagrams, want the ping alone", got)
		}
		if got := s.Stats.Refused.Load(); got != 0 {
			t.Errorf("%d datagrams refused: the filter let them through", got)
		}
	}
	if n := s.Len(); n != 1 {
		t.Errorf("%d clusters recorded, want 1", n)
	}

	// An older agent's ping: the value is the delay alone, in milliseconds.
	p.send(ping(uidA, key, now+1, 42))
	old := answer(t, p.recv(5*time.Second), key)
	if old.KeepAlive {
		t.Fatal("an answer to a ping without the keepalive flag carries it")
	}
	if d := time.Duration(old.Value) * time.Millisecond; d < DefaultInterval/10-time.Millisecond || d > DefaultInterval+DefaultInterval/10 {
		t.Errorf("come back in %v, want within one interval", d)
	}
}

// The keepalive interval stretches with the fleet within its own budget, and is never
// longer than the ping interval.
func TestKeepAliveBudget(t *testing.T) {
	for _, c := range []struct {
		keepBudget float64
		want       time.Duration
	}{{2, 2 * time.Second}, {0.25, 8 * time.Second}, {100, time.Second}} {
		s, p, now := fourPinging(t, Config{Interval: time.Second, Budget: 0.5, KeepAliveBudget: c.keepBudget}, true)
		if got := s.KeepAliveInterval(); got != c.want {
			t.Errorf("keepalive budget %v/s, 4 clusters: interval %v, want %v (pings every %v)", c.keepBudget, got, c.want, s.PingInterval())
		}
		p.send(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: now + 1, Value: 42, KeepAlive: true}.Append(nil, keyOf(uidA)))
		if _, keep := answer(t, p.recv(5*time.Second), keyOf(uidA)).Delays(); keep != c.want {
			t.Errorf("answer says keep alive every %v, want %v", keep, c.want)
		}
	}
}

// An agent's keeper offered keepalives marks its pings, takes the intervals an answer
// gives, and sends keepalives between its pings, as often as the answer said.
func TestKeeperKeepsAlive(t *testing.T) {
	k := &Keeper{Interval: time.Hour, KeepAlive: time.Hour, Version: func() int64 { return 42 }, Ring: func(Kind) {}, Timeout: time.Second}
	srv := runKeeper(t, k)
	key := keyOf(uidA)

	buf := make([]byte, 512)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	pp, err := Parse(buf[:n])
	if err != nil || pp.Kind != KindPing || !pp.KeepAlive {
		t.Fatalf("got %+v (%v), want a ping with the keepalive flag", pp, err)
	}
	// Ping again in an hour, keep alive every 50 ms.
	ans := Packet{Kind: KindUnchanged, Cluster: pp.Cluster, Counter: pp.Counter, KeepAlive: true, Value: packDelays(time.Hour, 50*time.Millisecond)}
	srv.WriteToUDPAddrPort(ans.Append(nil, key), from)
	keeps, pings := 0, 0
	deadline := time.Now().Add(600 * time.Millisecond)
	for time.Now().Before(deadline) {
		srv.SetReadDeadline(deadline)
		n, _, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		switch n {
		case len(KeepAlive):
			keeps++
		case Size:
			pings++
		}
	}
	if keeps < 5 || keeps > 15 {
		t.Errorf("%d keepalives in 600 ms at 50 ms, want ~12", keeps)
	}
	if pings != 0 {
		t.Errorf("%d pings before the hour the answer gave", pings)
	}
	if k.State() != StateOn {
		t.Errorf("state %q, want on", k.State())
	}
}

func TestDelaysRoundTrip(t *testing.T) {
	for _, c := range [][2]time.Duration{{0, 0}, {time.Second, 25 * time.Second}, {7*time.Minute + 3*time.Millisecond, 100 * time.Second}, {-time.Second, 1000 * time.Hour * 24 * 60}} {
		p := Packet{KeepAlive: true, Value: packDelays(c[0], c[1])}
		d, k := p.Delays()
		wantD := max(c[0], 0)
		wantK := min(c[1], time.Duration(1<<32-1)*time.Millisecond)
		if d != wantD || k != wantK {
			t.Errorf("packDelays(%v, %v) reads back %v, %v", c[0], c[1], d, k)
		}
	}
	if d, k := (Packet{Value: 1500}).Delays(); d != 1500*time.Millisecond || k != 0 {
		t.Errorf("without the flag: %v, %v", d, k)
	}
}

// The filter works on the sockets a server listens on by default: IPv6, and dual-stack
// (":PORT", which takes IPv4 datagrams as mapped addresses).
func TestKeepAlivesIPv6(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the socket filter is Linux's")
	}
	for _, c := range []struct{ listen, from, to string }{{"[::1]:0", "[::1]:0", "::1"}, {"[::]:0", "127.0.0.1:0", "127.0.0.1"}} {
		t.Run(c.listen, func(t *testing.T) {
			probe, err := net.ListenPacket("udp", c.listen)
			if err != nil {
				t.Skipf("no IPv6 here: %v", err)
			}
			probe.Close()
			f := newFleet()
			f.add(uidA, "ws/a", 42)
			s := startServerAt(t, c.listen, f, Config{})
			conn, err := net.ListenPacket("udp", c.from)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(c.to), s.Addr().Port()))
			for range 20 {
				conn.WriteTo(KeepAlive, to)
			}
			key := keyOf(uidA)
			conn.WriteTo(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: uint64(time.Now().UnixNano()), Value: 42, KeepAlive: true}.Append(nil, key), to)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			answer(t, buf[:n], key)
			if got := s.Stats.Received.Load(); got != 1 {
				t.Errorf("the server read %d datagrams, want the ping alone", got)
			}
		})
	}
}

// runKeeper runs k (cluster uidA) for the test against a bare socket playing its server,
// which it returns: the test reads k's datagrams there and answers as it wishes.
func runKeeper(t *testing.T, k *Keeper) *net.UDPConn {
	t.Helper()
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	runKeeperTo(t, k, mustUID(uidA), srv.LocalAddr().(*net.UDPAddr).AddrPort())
	return srv
}

// runKeeperTo runs k, the keeper of cluster uid (signing with uidA's key), pinging server
// from a socket of its own, until the test ends.
func runKeeperTo(t *testing.T, k *Keeper, uid UID, server netip.AddrPort) {
	t.Helper()
	ep, err := NewEndpoint("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ep.Serve()
	t.Cleanup(func() { ep.Close() })
	k.Bell = ep.Add(uid, keyOf(uidA), server, k.Answer)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go k.Run(ctx)
}

// fourPinging starts a server of four clusters (uidA first) and pings it once for each, with
// the keepalive flag or without, so that its intervals stretch with them.
func fourPinging(t *testing.T, cfg Config, keepAlive bool) (s *Server, p *peer, now uint64) {
	t.Helper()
	uids := []string{uidA, "7d1e2f3a-0000-4000-8000-00000000000b", "7d1e2f3a-0000-4000-8000-00000000000c", "7d1e2f3a-0000-4000-8000-00000000000d"}
	f := newFleet()
	for i, u := range uids {
		f.add(u, "ws/"+strconv.Itoa(i), 42)
	}
	s = startServer(t, f, cfg)
	p = newPeer(t, s)
	now = uint64(time.Now().UnixNano())
	for _, u := range uids {
		p.send(Packet{Kind: KindPing, Cluster: mustUID(u), Counter: now, Value: 42, KeepAlive: keepAlive}.Append(nil, keyOf(u)))
		answer(t, p.recv(5*time.Second), keyOf(u))
	}
	return s, p, now
}
