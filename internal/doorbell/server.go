package doorbell

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/time/rate"
)

// Clusters is what the server needs of the fleet model.
type Clusters interface {
	// DoorbellLookup returns the cluster with uid and whether its desired state differs
	// from version; ok is false for a cluster the model does not know (never registered,
	// deleted, or not loaded yet). It allocates nothing: every ping makes one.
	DoorbellLookup(uid UID, version int64) (c Cluster, changed, ok bool)
	// DoorbellKnown says whether the model knows the cluster with uid (cheaply: it is asked
	// before every ring).
	DoorbellKnown(uid string) bool
	// DoorbellUID returns the UID of the cluster "namespace/name" ("" if unknown).
	DoorbellUID(key string) string
	// Seen records that the agent of a cluster DoorbellLookup returned called.
	Seen(c Cluster, now time.Time)
	// Key names a cluster DoorbellLookup returned, as "namespace/name".
	Key(c Cluster) string
	// Ready says the model is loaded; until then every ping is answered KindLater.
	Ready() bool
}

// Cluster is the fleet model's handle on one cluster, opaque to the doorbell, which holds
// it only while it answers one ping. Asked for, it is named with Clusters.Key: a ping needs
// no name unless a tunnel is wanted.
type Cluster any

// Tunnels says whether the server wants a cluster's tunnel.
type Tunnels interface {
	IsWanted(cluster string) bool
	// Wanting says whether any tunnel is wanted at all, so that a ping is named and looked
	// up only then.
	Wanting() bool
}

// Defaults.
const (
	// DefaultInterval is how often an agent pings: well under the 30 s after which many
	// NATs forget a UDP flow.
	DefaultInterval = 25 * time.Second
	// DefaultRingRate bounds rings and "changed, come now" answers per second: each sends
	// an agent to the HTTPS API at once, so it is the rate at which a change may pull the
	// fleet in.
	DefaultRingRate = 5000
	// DefaultSourceRate bounds datagrams per second taken from one source address (an IPv4
	// address or an IPv6 /64): room for ~25,000 agents behind one NAT at the largest fleet's
	// ping interval, while one sender cannot take more than a sliver of the server.
	DefaultSourceRate = 1000
	// DefaultBudget bounds the pings per second the fleet may send: a fleet larger than
	// Interval × Budget is told to ping less often (500 s at 1M clusters), as HTTPS polls are
	// stretched to the poll budget. Each ping is read, checked and answered (~17-25 µs of
	// the server's CPU, docs/benchmarks.md); between pings, keepalives hold NATs open.
	DefaultBudget = 2000
	// DefaultKeepAliveBudget bounds the keepalives per second the fleet may send: a fleet
	// larger than Interval × KeepAliveBudget keeps alive less often (100 s at 1M). A
	// keepalive costs the server only the kernel's receive path: the socket's filter drops it.
	DefaultKeepAliveBudget = 10000
	// defaultBatch is how many datagrams one system call reads or writes.
	defaultBatch = 64
	// DefaultRingRetry is how long a ring to an agent that acknowledges rings may go
	// unacknowledged before it is sent again; each further try waits twice as long, up to
	// maxRingTries in all.
	DefaultRingRetry = 3 * time.Second
	// DefaultReplayWindow: a cluster the server holds no counter for (it restarted) may
	// ping with a counter at most this far from the server's clock, so an old datagram
	// replayed after a restart is refused.
	DefaultReplayWindow = 10 * time.Minute
)

// Config configures a Server.
type Config struct {
	// Secret is the server secret cluster keys are derived from (ClusterKey), when Secrets
	// is nil.
	Secret []byte
	// Secrets, when set, returns the server's doorbell secrets, newest first: the first
	// derives the keys agents fetch and signs; the others (rotated out, within their grace)
	// still verify pings, whose answers then carry FlagRekey.
	Secrets func() [][]byte
	// Budget bounds the pings per second of the fleet (0: DefaultBudget).
	Budget float64
	// KeepAliveBudget bounds the keepalives per second of the fleet (0:
	// DefaultKeepAliveBudget).
	KeepAliveBudget float64
	// Interval is how often agents are told to ping (0: DefaultInterval).
	Interval time.Duration
	// RingRate bounds rings plus "changed, come now" answers per second (0: DefaultRingRate).
	RingRate float64
	// SourceRate bounds datagrams per second from one source address (0: DefaultSourceRate).
	SourceRate float64
	// ReplayWindow bounds a first counter's distance from the clock (0: DefaultReplayWindow).
	ReplayWindow time.Duration
	// RingRetry is how long a ring may go unacknowledged before it is sent again (0:
	// DefaultRingRetry).
	RingRetry time.Duration
	Clusters  Clusters
	// Tunnels, if set, makes pings of a cluster whose tunnel is wanted answer KindTunnel.
	Tunnels Tunnels
	Logger  *slog.Logger
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Stats counts datagrams by outcome.
type Stats struct {
	Received, Answered, Rung atomic.Int64
	// Resent counts rings sent again because the first went unacknowledged.
	Resent atomic.Int64
	// Spared counts polls over HTTPS that found a ring queued for their cluster, or sent
	// and unacknowledged: it was then not sent, or not sent again (a ring on its last try
	// would not have been resent anyway, and counts too).
	Spared atomic.Int64
	// Reads counts the reader's system calls, each a batch of datagrams.
	Reads atomic.Int64
	// Refused counts datagrams dropped as malformed, unsigned, replayed or of an unknown
	// cluster; Limited those dropped by the per-source limit.
	Refused, Limited atomic.Int64
}

// entry is all the server keeps per cluster: its last counter and where its last valid
// datagram came from. 40 bytes and no pointer, in a table by UID (see table): at a million
// clusters the table is the server's largest after the fleet model, and memory without
// pointers is never scanned by the collector. (A netip.AddrPort holds a pointer, for its
// zone, and made the map of entries 167 bytes a cluster against 134.) The rare address with
// a zone (an IPv6 link-local source) keeps its zone in Server.zones.
type entry struct {
	counter uint64
	ip      [16]byte // of the address; see addr
	seen    uint32   // unix seconds
	secret  uint32   // secretTag of the secret the cluster's key derives from
	port    uint16
	family  uint8 // 0: no address; 4 or 6
	zoned   bool  // the address has a zone, held in Server.zones
	pending bool  // queued for a ring
	acks    bool  // its agent acknowledges rings (FlagAcks)
	rung    bool  // rung, and no ping since: the ring may have been lost
}

// setAddr stores a in e, and its zone, if it has one, in zones.
func (e *entry) setAddr(u UID, a netip.AddrPort, zones map[UID]string) {
	ip := a.Addr()
	e.ip, e.port, e.family = ip.As16(), a.Port(), 6
	if ip.Is4() {
		e.family = 4
	}
	if z := ip.Zone(); z != "" {
		zones[u] = z
		e.zoned = true
	} else if e.zoned {
		delete(zones, u)
		e.zoned = false
	}
}

// addr is the address setAddr stored (invalid if none); zones is read for a zoned one.
func (e *entry) addr(u UID, zones map[UID]string) netip.AddrPort {
	var ip netip.Addr
	switch e.family {
	case 4:
		ip = netip.AddrFrom16(e.ip).Unmap()
	case 6:
		ip = netip.AddrFrom16(e.ip)
		if e.zoned {
			ip = ip.WithZone(zones[u])
		}
	default:
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, e.port)
}

// retry is a ring to check on: sent again at at (unix nanoseconds) if the cluster has not
// pinged since. cluster names it for a tunnel's ring, which is sent again only while the
// tunnel is still wanted.
type retry struct {
	at      int64
	u       UID
	kind    Kind
	tries   uint8
	cluster string
}

// maxRingTries bounds how often one ring is sent: the first and two more.
const maxRingTries = 3

// maxRetries bounds the rings awaiting acknowledgement; beyond it a ring is sent once, and a
// lost one waits for the cluster's next ping, as for agents that do not acknowledge.
const maxRetries = 1 << 20

// retryHeap orders retries by when they are due.
type retryHeap []retry

func (h retryHeap) Len() int           { return len(h) }
func (h retryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h retryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *retryHeap) Push(x any)        { *h = append(*h, x.(retry)) }
func (h *retryHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = retry{}
	*h = old[:len(old)-1]
	return r
}

// secretTag names a secret in an entry: its first bytes (secrets are random).
func secretTag(secret []byte) uint32 {
	return uint32(secret[0])<<24 | uint32(secret[1])<<16 | uint32(secret[2])<<8 | uint32(secret[3])
}

// Server answers pings and rings agents.
type Server struct {
	cfg   Config
	log   *slog.Logger
	conn  *net.UDPConn
	Stats Stats

	mu      sync.Mutex
	entries table
	zones   map[UID]string // the zones of the entries' zoned addresses (entry.zoned)
	count   atomic.Int64   // len(entries), read without the lock
	queue   []UID          // clusters to ring because their state changed
	urgent  []string       // clusters ("namespace/name") whose tunnel is wanted
	all     bool           // ring every cluster with an address
	retries retryHeap      // rings awaiting acknowledgement
	wake    chan struct{}

	sources *sourceLimiter

	ringLim *rate.Limiter
	ringCtr atomic.Uint64
	// batch is how many datagrams a read takes at most (defaultBatch). coalesce, when set, is
	// how long the reader waits after a batch that did not fill, as a network card moderates
	// its interrupts; it is 0 but in tests: measured at 10,000 datagrams/s (TestServeCPU),
	// 2 ms gathered ~28 datagrams a read but cost more CPU in wake-ups than it saved, while
	// batches formed on their own (~5 a read while answers are written) saved ~7%.
	batch    int
	coalesce time.Duration
	// started is when this server began: a first counter from before it (less a clock
	// allowance) may be a ping captured before a restart, which forgot every counter.
	started time.Time
}

// clockSkew is how far behind the server's an agent's clock may be and its first ping after
// a restart still count; a ping captured that long before the restart may be replayed once.
const clockSkew = time.Minute

// maxUrgent bounds the queue of tunnel rings; a tunnel wanted beyond it waits for the
// agent's next ping, which is answered KindTunnel.
const maxUrgent = 10000

// Listen opens the UDP socket; Serve answers on it.
func Listen(addr string, cfg Config) (*Server, error) {
	if cfg.Secrets == nil {
		one := [][]byte{cfg.Secret}
		cfg.Secrets = func() [][]byte { return one }
	}
	if secs := cfg.Secrets(); len(secs) == 0 || len(secs[0]) < 16 {
		return nil, errors.New("doorbell: the server secret is missing or too short")
	}
	if cfg.Clusters == nil {
		return nil, errors.New("doorbell: no fleet model to answer from")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.RingRate <= 0 {
		cfg.RingRate = DefaultRingRate
	}
	if cfg.SourceRate <= 0 {
		cfg.SourceRate = DefaultSourceRate
	}
	if cfg.Budget <= 0 {
		cfg.Budget = DefaultBudget
	}
	if cfg.KeepAliveBudget <= 0 {
		cfg.KeepAliveBudget = DefaultKeepAliveBudget
	}
	if cfg.ReplayWindow <= 0 {
		cfg.ReplayWindow = DefaultReplayWindow
	}
	if cfg.RingRetry <= 0 {
		cfg.RingRetry = DefaultRingRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("doorbell address %s: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("doorbell: listening on udp %s: %w", addr, err)
	}
	// A burst of pings (a fleet after a restart) waits in the socket rather than being lost.
	conn.SetReadBuffer(4 << 20)
	conn.SetWriteBuffer(4 << 20)
	if err := dropOtherSizes(conn); err != nil {
		// Keepalives then reach the reader, which refuses them by their size.
		cfg.Logger.Warn("doorbell: no socket filter, keepalives are dropped after they are read", "err", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, conn: conn, entries: newTable(), zones: map[UID]string{}, wake: make(chan struct{}, 1),
		sources: newSourceLimiter(cfg.SourceRate), ringLim: rate.NewLimiter(rate.Limit(cfg.RingRate), max(1, int(cfg.RingRate/10)))}
	s.batch = defaultBatch
	s.ringCtr.Store(uint64(cfg.Now().UnixNano()))
	s.started = cfg.Now()
	return s, nil
}

// Addr is the socket's address.
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Port is the socket's port, which agents are told.
func (s *Server) Port() int { return int(s.Addr().Port()) }

// Interval is how often agents ping at first; PingInterval how often they are told to.
func (s *Server) Interval() time.Duration { return s.cfg.Interval }

// PingInterval is the mean time between one agent's pings: the interval, stretched so that
// the clusters pinging stay within the budget.
func (s *Server) PingInterval() time.Duration {
	d := s.cfg.Interval
	if n := float64(s.count.Load()); n/s.cfg.Budget > d.Seconds() {
		d = time.Duration(n / s.cfg.Budget * float64(time.Second))
	}
	return d
}

// KeepAliveInterval is the mean time between one agent's keepalives: the interval, stretched
// so that the fleet's keepalives stay within their budget, and never longer than the ping
// interval (a ping keeps the path open too).
func (s *Server) KeepAliveInterval() time.Duration {
	return min(s.keepAliveInterval(), s.PingInterval())
}

// keepAliveInterval is the interval stretched within the keepalive budget.
func (s *Server) keepAliveInterval() time.Duration {
	d := s.cfg.Interval
	if n := float64(s.count.Load()); s.cfg.KeepAliveBudget > 0 && n/s.cfg.KeepAliveBudget > d.Seconds() {
		d = time.Duration(n / s.cfg.KeepAliveBudget * float64(time.Second))
	}
	return d
}

// Polled is told that the cluster with uid polls over HTTPS, before its desired state is
// read: the answer brings every change made before it, so a change's ring still queued for
// the cluster is not sent, and a ring sent and not yet acknowledged is not sent again.
// (A change rings after it is made, so one made after this call rings anew.) Without it a
// cluster that polled during a rollout, at its interval or after registering, was rung
// later all the same, and polled again for nothing.
//
// It reports whether the cluster pings: its last valid ping came within three ping
// intervals. Such a cluster hears of changes from the doorbell and need poll HTTPS only
// rarely.
func (s *Server) Polled(uid string) bool {
	u, err := ParseUID(uid)
	if err != nil {
		return false
	}
	cut := uint32(s.cfg.Now().Add(-3 * s.PingInterval()).Unix())
	s.mu.Lock()
	e, ok := s.entries.get(u)
	if ok && (e.pending || e.rung) {
		e.pending, e.rung = false, false
		s.entries.set(u, e)
		s.Stats.Spared.Add(1)
	}
	s.mu.Unlock()
	return ok && e.seen >= cut
}

// Key is the key of the cluster with uid, which its agent gets over HTTPS.
func (s *Server) Key(uid UID) []byte { return ClusterKey(s.cfg.Secrets()[0], uid) }

// Serve answers pings and sends rings until ctx ends, then closes the socket.
func (s *Server) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		s.conn.Close()
	}()
	go s.ringer(ctx)
	go s.sweeper(ctx)
	// recvmmsg and sendmmsg through x/net: one system call for a batch of datagrams each way.
	// The ipv4 and ipv6 packages share the batch calls; the family only names the socket's.
	var pc interface {
		ReadBatch([]ipv4.Message, int) (int, error)
		WriteBatch([]ipv4.Message, int) (int, error)
	} = ipv4.NewPacketConn(s.conn)
	if s.Addr().Addr().Is6() {
		pc = ipv6.NewPacketConn(s.conn)
	}
	in := make([]ipv4.Message, s.batch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 2*Size)} // a larger datagram reads as too long, not as a cut one
	}
	out := make([]ipv4.Message, s.batch)
	for i := range out {
		out[i].Buffers = [][]byte{nil}
	}
	answers := make([]byte, s.batch*Size)
	for {
		n, err := pc.ReadBatch(in, 0)
		s.Stats.Reads.Add(1)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		k := 0
		for _, m := range in[:n] {
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			reply := s.handle(m.Buffers[0][:m.N], from.AddrPort(), answers[k*Size:k*Size:(k+1)*Size])
			if len(reply) == 0 {
				continue
			}
			out[k].Buffers[0], out[k].Addr = reply, from
			k++
		}
		for sent := 0; sent < k; {
			w, err := pc.WriteBatch(out[sent:k], 0)
			s.Stats.Answered.Add(int64(w))
			sent += w
			if err != nil || w == 0 {
				sent++ // this answer's address refused it: the others still go
			}
		}
		if n < len(in) && s.coalesce > 0 {
			time.Sleep(s.coalesce)
		}
	}
}

// handle takes one datagram and returns the answer to send back, or nothing. Checks run
// cheapest first; nothing is recorded for a datagram that fails one.
func (s *Server) handle(b []byte, from netip.AddrPort, out []byte) []byte {
	s.Stats.Received.Add(1)
	now := s.cfg.Now()
	if len(b) != Size {
		// Only without the socket filter (keepalives then reach the reader): refused before
		// the per-source limit, which keepalives must not use up.
		s.Stats.Refused.Add(1)
		return nil
	}
	if !s.sources.allow(from, now) {
		s.Stats.Limited.Add(1)
		return nil
	}
	p, err := Parse(b)
	if err != nil || p.Kind != KindPing || p.Ring {
		s.Stats.Refused.Add(1)
		return nil
	}
	// The newest secret first: after a rotation agents keep their old key until told.
	var k [keySize]byte
	key := k[:]
	secrets := s.cfg.Secrets()
	used := -1
	for i, sec := range secrets {
		if k = clusterKey(sec, p.Cluster); Verify(b, key) == nil {
			used = i
			break
		}
	}
	if used < 0 {
		s.Stats.Refused.Add(1)
		return nil
	}
	answer := Packet{Cluster: p.Cluster, Counter: p.Counter, Rekey: used > 0, KeepAlive: p.KeepAlive}
	// delay becomes the answer's value, with the keepalive interval beside it for an agent
	// that keeps alive.
	var delay time.Duration
	reply := func() []byte {
		if answer.KeepAlive {
			answer.Value = packDelays(delay, s.KeepAliveInterval())
		} else {
			answer.Value = uint64(delay / time.Millisecond)
		}
		return answer.Append(out, key)
	}
	if !s.cfg.Clusters.Ready() {
		if !s.fresh(p.Counter, now) {
			s.Stats.Refused.Add(1)
			return nil
		}
		answer.Kind, delay = KindLater, 2*time.Second
		return reply()
	}
	cl, changed, ok := s.cfg.Clusters.DoorbellLookup(p.Cluster, int64(p.Value))
	if !ok {
		s.Stats.Refused.Add(1)
		s.forget(p.Cluster)
		return nil
	}
	s.mu.Lock()
	e, had := s.entries.get(p.Cluster)
	// A counter ahead of the clock is refused even after a held one: taken, it would refuse
	// the real agent's pings (a key's holder pinning the counter near 2^64).
	if had && (p.Counter <= e.counter || s.ahead(p.Counter, now)) || !had && !s.fresh(p.Counter, now) {
		s.mu.Unlock()
		s.Stats.Refused.Add(1)
		return nil
	}
	// A ring still queued for it is spent on this answer instead (pending is cleared), but
	// for an acknowledgement, whose answer does not compare versions: a change made after
	// the ring it acknowledges is still rung. A ring sent is acknowledged by any ping after
	// it (rung is cleared): an acknowledging ping says it was taken, another's answer says
	// "changed" if the agent is behind.
	ne := entry{counter: p.Counter, seen: uint32(now.Unix()), secret: secretTag(secrets[used]), acks: p.Acks,
		pending: had && e.pending && p.Rung, zoned: had && e.zoned}
	ne.setAddr(p.Cluster, from, s.zones)
	s.entries.set(p.Cluster, ne)
	if !had {
		s.count.Store(int64(s.entries.len()))
	}
	s.mu.Unlock()
	s.cfg.Clusters.Seen(cl, now)

	switch {
	case s.cfg.Tunnels != nil && s.cfg.Tunnels.Wanting() && s.cfg.Tunnels.IsWanted(s.cfg.Clusters.Key(cl)):
		answer.Kind = KindTunnel
	case changed && !p.Rung:
		// Rings and these answers take from one budget, so a fleet pinging at once after
		// a change is spread over it.
		answer.Kind = KindChanged
		r := s.ringLim.ReserveN(now, 1)
		delay = max(r.DelayFrom(now), 0)
	default:
		answer.Kind = KindUnchanged
		// An agent that sends no keepalives (older than them) keeps its NATs open with its
		// pings alone: it pings as often as keepalives go.
		iv := s.PingInterval()
		if !p.KeepAlive {
			iv = s.keepAliveInterval()
		}
		delay = s.next(p.Cluster, now, iv)
	}
	return reply()
}

// fresh says whether a first counter (the server holds none for the cluster) is a time
// near the server's clock: agents count in nanoseconds of their clock.
// A counter from before the server started (less clockSkew) is refused too: the server held
// the cluster's last counter then, and has forgotten it.
func (s *Server) fresh(counter uint64, now time.Time) bool {
	c := time.Unix(0, int64(counter))
	return !s.ahead(counter, now) && c.After(now.Add(-s.cfg.ReplayWindow)) && c.After(s.started.Add(-clockSkew))
}

// ahead says whether a counter is further ahead of the server's clock than the window allows.
func (s *Server) ahead(counter uint64, now time.Time) bool {
	return counter >= 1<<63 || !time.Unix(0, int64(counter)).Before(now.Add(s.cfg.ReplayWindow))
}

// next is how long from now a cluster should ping again. Each cluster has its own phase in
// the ping interval (a hash of its UID) and is sent to its next phase at least a tenth of
// an interval away: a fleet that pinged all at once (a server restart) is spread evenly by
// the next round, where random jitter would leave it bunched, over the budget.
//
// Phases fall on slots (see slot), so that pings arrive a few hundred at a time rather than
// one by one: a lone datagram costs the server a wake-up, a read and a write of its own,
// ~45-60 µs of CPU at 2,000 pings/s where the same pings in 100 ms slots cost ~10 µs each
// (TestServeCPU, docs/benchmarks.md).
func (s *Server) next(u UID, now time.Time, d time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write(u[:])
	phase := time.Duration(h.Sum64() % uint64(d))
	if sl := s.slot(d); sl > 0 {
		phase -= phase % sl
	}
	next := (phase - time.Duration(now.UnixNano()%int64(d)) + d) % d
	if next < d/10 {
		next += d
	}
	return next
}

// slot is the step of the pings' phases in an interval d: long enough that pings arrive
// together, short enough that a slot's pings (at most the budget's share of a slot) fit in
// the socket's buffer many times over, and at most a twentieth of the interval. 0: none.
func (s *Server) slot(d time.Duration) time.Duration {
	sl := time.Duration(float64(time.Second) * maxSlotPings / max(s.cfg.Budget, 1))
	return min(max(sl, time.Millisecond), maxSlot, d/20)
}

// A slot is at most maxSlot long and holds at most ~maxSlotPings of the budget's pings.
const (
	maxSlot      = 100 * time.Millisecond
	maxSlotPings = 512
)

// nextRing is a ring's counter: the clock in nanoseconds, or one past the last if the clock
// has not moved on. Agents refuse a ring counter not above their last, or far behind their
// clock (a ring captured before they restarted); a counter of the clock tells them nothing
// of when the server started or how many others it rang.
func (s *Server) nextRing() uint64 {
	now := uint64(s.cfg.Now().UnixNano())
	for {
		last := s.ringCtr.Load()
		n := max(now, last+1)
		if s.ringCtr.CompareAndSwap(last, n) {
			return n
		}
	}
}

func (s *Server) forget(u UID) {
	s.mu.Lock()
	e, _ := s.entries.get(u)
	s.drop(u, e)
	s.count.Store(int64(s.entries.len()))
	s.mu.Unlock()
}

// drop deletes u's entry e, and its zone; s.mu is held.
func (s *Server) drop(u UID, e entry) {
	s.entries.del(u)
	if e.zoned {
		delete(s.zones, u)
	}
}

// Ring asks for a ring to the cluster with uid, whose desired state changed. It never
// blocks (the fleet model calls it under its lock); a cluster whose agent never pinged has
// no address and is not rung.
func (s *Server) Ring(uid string) {
	u, err := ParseUID(uid)
	if err != nil {
		return
	}
	s.mu.Lock()
	e, ok := s.entries.get(u)
	if ok && !e.pending && e.family != 0 {
		e.pending = true
		s.entries.set(u, e)
		s.queue = append(s.queue, u)
	}
	s.mu.Unlock()
	s.poke()
}

// RingAll asks for a ring to every cluster (a change covering the whole fleet). The walk
// over the clusters is the ringer's, not the caller's.
func (s *Server) RingAll() {
	s.mu.Lock()
	s.all = true
	s.mu.Unlock()
	s.poke()
}

// RingTunnel asks for a ring, ahead of rings for changes, to a cluster ("namespace/name")
// whose tunnel is wanted. It never blocks.
func (s *Server) RingTunnel(cluster string) {
	s.mu.Lock()
	if len(s.urgent) < maxUrgent {
		s.urgent = append(s.urgent, cluster)
	}
	s.mu.Unlock()
	s.poke()
}

func (s *Server) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// ringer sends the queued rings: tunnels first, then rings due again, then changes, within
// the ring budget (a tunnel's ring goes at once).
func (s *Server) ringer(ctx context.Context) {
	buf := make([]byte, 0, Size)
	for {
		s.mu.Lock()
		if s.all {
			s.all = false
			for u, e := range s.entries.all() {
				if !e.pending && e.family != 0 {
					e.pending = true
					s.entries.set(u, e)
					s.queue = append(s.queue, u)
				}
			}
		}
		now := s.cfg.Now().UnixNano()
		var u UID
		var cluster string
		var again retry
		var have, passed bool
		switch {
		case len(s.urgent) > 0:
			cluster, s.urgent = s.urgent[0], s.urgent[1:]
			have = true
		case len(s.retries) > 0 && s.retries[0].at <= now:
			again = heap.Pop(&s.retries).(retry)
			have = true
		case len(s.queue) > 0:
			u, s.queue = s.queue[0], s.queue[1:]
			if len(s.queue) == 0 {
				s.queue = nil // let a drained million-entry queue go
			}
			// A ring no longer due (the cluster pinged or polled since it was queued)
			// takes nothing from the ring budget: it is passed over here.
			e, ok := s.entries.get(u)
			have, passed = true, !ok || !e.pending
		}
		wait := time.Duration(-1)
		if !have && len(s.retries) > 0 {
			wait = time.Duration(s.retries[0].at - now)
		}
		s.mu.Unlock()
		if passed {
			continue
		}
		if !have {
			var due <-chan time.Time
			var t *time.Timer
			if wait >= 0 {
				t = time.NewTimer(wait)
				due = t.C
			}
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			case <-due:
			}
			if t != nil {
				t.Stop()
			}
			continue
		}
		switch {
		case again.tries > 0:
			// Most rings are acknowledged: only one still unacknowledged takes from the
			// ring budget.
			if !s.unacknowledged(again.u) {
				continue
			}
			if again.kind != KindTunnel {
				if err := s.ringLim.Wait(ctx); err != nil {
					return
				}
			}
			s.ring(again.u, again.kind, again.cluster, again.tries, buf)
		case cluster != "":
			s.ringTunnel(cluster, buf)
		default:
			if err := s.ringLim.Wait(ctx); err != nil {
				return
			}
			s.ring(u, KindChanged, "", 0, buf)
		}
	}
}

// unacknowledged says whether the cluster was rung and has not pinged since.
func (s *Server) unacknowledged(u UID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, _ := s.entries.get(u)
	return e.rung
}

// ringTunnel rings a cluster named "namespace/name"; it is asked for by name, from under
// the tunnel registry's lock, so the name is resolved here, holding no lock.
func (s *Server) ringTunnel(cluster string, buf []byte) {
	if u, err := ParseUID(s.cfg.Clusters.DoorbellUID(cluster)); err == nil {
		s.ring(u, KindTunnel, cluster, 0, buf)
	}
}

// ring sends a ring to the address the cluster's last valid datagram came from; tries is
// how often it was sent before. A change's ring is skipped when the cluster pinged since it
// was queued (it was answered), and any ring is not sent again once the cluster pinged
// since (acknowledging it, or hearing "changed" in the answer) or, for a tunnel's, once the
// tunnel is no longer wanted. Rings to agents that acknowledge them are checked on later.
func (s *Server) ring(u UID, kind Kind, cluster string, tries uint8, buf []byte) {
	if tries > 0 && kind == KindTunnel && (s.cfg.Tunnels == nil || !s.cfg.Tunnels.IsWanted(cluster)) {
		return
	}
	now := s.cfg.Now()
	s.mu.Lock()
	e, ok := s.entries.get(u)
	to := e.addr(u, s.zones)
	due := ok && to.IsValid() && (tries == 0 && (kind == KindTunnel || e.pending) || tries > 0 && e.rung)
	if ok {
		if tries == 0 {
			e.pending = false
		}
		// Marked before the ring goes, so that an acknowledgement cannot come before it.
		e.rung = due && e.acks || e.rung && !due
		s.entries.set(u, e)
	}
	if due && e.acks && tries+1 < maxRingTries && len(s.retries) < maxRetries {
		heap.Push(&s.retries, retry{at: now.Add(s.cfg.RingRetry << tries).UnixNano(), u: u, kind: kind, tries: tries + 1, cluster: cluster})
	}
	s.mu.Unlock()
	if !due {
		return
	}
	if !s.cfg.Clusters.DoorbellKnown(u.String()) {
		s.forget(u)
		return
	}
	// Signed with the key the agent last pinged with, which it holds.
	secrets := s.cfg.Secrets()
	sec := secrets[0]
	for _, c := range secrets {
		if secretTag(c) == e.secret {
			sec = c
			break
		}
	}
	p := Packet{Kind: kind, Ring: true, Rekey: secretTag(sec) != secretTag(secrets[0]), Cluster: u, Counter: s.nextRing()}
	if _, err := s.conn.WriteToUDPAddrPort(p.Append(buf[:0], ClusterKey(sec, u)), to); err == nil {
		s.Stats.Rung.Add(1)
		if tries > 0 {
			s.Stats.Resent.Add(1)
		}
	}
}

// sweeper forgets clusters not heard from for many intervals, so that the table holds the
// clusters whose agents ping, not every cluster that ever did.
func (s *Server) sweeper(ctx context.Context) {
	t := time.NewTicker(4 * s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Forgotten only once its last counter is past the replay window: a ping of it
		// replayed later is then refused as stale, not taken as a first one.
		iv := s.PingInterval()
		cut := uint32(s.cfg.Now().Add(-max(10*iv, s.cfg.ReplayWindow) - iv).Unix())
		s.mu.Lock()
		for u, e := range s.entries.all() {
			if e.seen < cut && !e.pending {
				s.drop(u, e)
			}
		}
		s.count.Store(int64(s.entries.len()))
		s.mu.Unlock()
	}
}

// Len is the number of clusters whose agents ping.
func (s *Server) Len() int { return int(s.count.Load()) }

// dropOtherSizes attaches a socket filter that drops, in the kernel, every datagram whose
// length is not a ping's: keepalives (which exist only to pass NATs on the way), and
// anything else no ping can be, are never queued to the socket nor wake its reader.
// Classic BPF on the UDP socket sees the datagram from its UDP header on, so the length it
// loads is the header's 8 bytes and the payload.
func dropOtherSizes(conn *net.UDPConn) error {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: udpHeader + Size, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: 1 << 16},
	})
	if err != nil {
		return err
	}
	if conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil {
		return ipv6.NewPacketConn(conn).SetBPF(prog)
	}
	return ipv4.NewPacketConn(conn).SetBPF(prog)
}

const udpHeader = 8
