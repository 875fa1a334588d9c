package doorbell

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// FuzzHandle feeds the server's datagram handling arbitrary bytes: it must never panic,
// never answer with more bytes than it got, and record a cluster only for a datagram
// signed with that cluster's key.
func FuzzHandle(f *testing.F) {
	key := keyOf(uidA)
	now := time.Unix(1_800_000_000, 0)
	f.Add(ping(uidA, key, uint64(now.UnixNano()), 42))
	f.Add(ping(uidA, key, uint64(now.UnixNano()), 41))
	f.Add([]byte{WireVersion, byte(KindPing)})
	f.Add(make([]byte, Size))
	f.Add(Packet{Kind: KindChanged, Cluster: mustUID(uidA)}.Append(nil, key))
	f.Add(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: uint64(now.UnixNano()), Value: 41, KeepAlive: true, Acks: true}.Append(nil, key))
	f.Add(Packet{Kind: KindPing, Cluster: mustUID(uidA), Counter: uint64(now.UnixNano()), Value: 41, KeepAlive: true, Acks: true, Rung: true}.Append(nil, key))
	f.Add(KeepAlive)
	fl := newFleet()
	fl.add(uidA, "ws/a", 42)
	s := socketless(fl, now)
	from := netip.MustParseAddrPort("127.0.0.1:4000")
	f.Fuzz(func(t *testing.T, b []byte) {
		p, perr := Parse(b)
		if perr == nil {
			// What parses encodes back to the same bytes but for the tag.
			again := p.Append(nil, key)
			if string(again[:tagOffset]) != string(b[:tagOffset]) {
				t.Fatalf("round trip changed %x into %x", b[:tagOffset], again[:tagOffset])
			}
		}
		before := s.entries.len()
		out := s.handle(b, from, nil)
		if len(out) > len(b) {
			t.Fatalf("answered %d bytes to %d", len(out), len(b))
		}
		signed := perr == nil && Verify(b, ClusterKey(secret, p.Cluster)) == nil
		if len(out) > 0 && !signed {
			t.Fatalf("answered an unsigned datagram %x", b)
		}
		if s.entries.len() != before && !signed {
			t.Fatalf("recorded a cluster for an unsigned datagram %x", b)
		}
	})
}

// socketless is a server with no socket, for calling handle directly: its clock stopped at
// now, no ring or per-source limit.
func socketless(fl *fleet, now time.Time) *Server {
	s := &Server{cfg: Config{Secrets: func() [][]byte { return [][]byte{secret} }, Budget: DefaultBudget, KeepAliveBudget: DefaultKeepAliveBudget, Clusters: fl, Interval: DefaultInterval, ReplayWindow: DefaultReplayWindow, Now: func() time.Time { return now }},
		entries: newTable(), zones: map[UID]string{}, wake: make(chan struct{}, 1), sources: newSourceLimiter(1e9)}
	s.ringLim = rate.NewLimiter(rate.Inf, 1)
	return s
}
