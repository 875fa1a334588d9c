package doorbell

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is the agents' side: one UDP socket that the doorbells of one cluster (an
// agent) or of many (the simulator, whose agents cannot have a socket each) share. Answers
// and rings are told apart by the cluster they name.
type Endpoint struct {
	conn  *net.UDPConn
	mu    sync.RWMutex
	bells map[UID]*Bell
}

// NewEndpoint opens a socket on an ephemeral port of the given local address ("" for any).
func NewEndpoint(local string) (*Endpoint, error) {
	var la *net.UDPAddr
	if local != "" {
		var err error
		if la, err = net.ResolveUDPAddr("udp", local); err != nil {
			return nil, err
		}
	}
	conn, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	return &Endpoint{conn: conn, bells: map[UID]*Bell{}}, nil
}

// Close closes the socket; Serve returns.
func (e *Endpoint) Close() error { return e.conn.Close() }

// Serve reads answers and rings until the socket is closed, handing each valid one to its
// cluster's bell.
func (e *Endpoint) Serve() error {
	buf := make([]byte, 2*Size)
	for {
		n, from, err := e.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		p, err := Parse(buf[:n])
		if err != nil || p.Kind == KindPing {
			continue
		}
		e.mu.RLock()
		b := e.bells[p.Cluster]
		e.mu.RUnlock()
		if b != nil {
			b.take(buf[:n], p, from)
		}
	}
}

// Bell is one cluster's doorbell.
type Bell struct {
	ep     *Endpoint
	uid    UID
	key    []byte
	server netip.AddrPort
	// onAnswer is told of every valid answer and ring.
	onAnswer func(Packet)

	// keepAlive marks pings with FlagKeepAlive and FlagAcks: the server (one that offers
	// keepalives) takes keepalives between them, and acknowledgements of its rings.
	keepAlive atomic.Bool

	mu       sync.Mutex
	counter  uint64 // last counter sent
	answered bool   // the last ping was answered
	ringCtr  uint64 // last ring counter taken
}

// Add makes the bell of cluster uid, with its key, ringing server; onAnswer is told of
// every valid answer and ring (from the endpoint's reading goroutine: it must not block).
func (e *Endpoint) Add(uid UID, key []byte, server netip.AddrPort, onAnswer func(Packet)) *Bell {
	// Ring counters are the server's clock: one captured before this start and replayed is
	// refused, as the server refuses old pings.
	b := &Bell{ep: e, uid: uid, key: key, server: server, onAnswer: onAnswer,
		ringCtr: uint64(time.Now().Add(-DefaultReplayWindow).UnixNano())}
	e.mu.Lock()
	e.bells[uid] = b
	e.mu.Unlock()
	return b
}

// Remove stops handing b its answers.
func (b *Bell) Remove() {
	b.ep.mu.Lock()
	if b.ep.bells[b.uid] == b {
		delete(b.ep.bells, b.uid)
	}
	b.ep.mu.Unlock()
}

// Ping sends "my desired version is version". The counter is the clock in nanoseconds, or
// one more than the last when the clock stands still or went back, so it grows across
// restarts of the agent as long as its clock does.
func (b *Bell) Ping(version int64) error { return b.ping(version, false) }

// Ack sends a ping that acknowledges a ring just taken (FlagRung), so that the server does
// not ring again; to a server that does not take acknowledgements, nothing.
func (b *Bell) Ack(version int64) error {
	if !b.keepAlive.Load() {
		return nil
	}
	return b.ping(version, true)
}

func (b *Bell) ping(version int64, rung bool) error {
	b.mu.Lock()
	c := uint64(time.Now().UnixNano())
	if c <= b.counter {
		c = b.counter + 1
	}
	b.counter, b.answered = c, false
	b.mu.Unlock()
	modern := b.keepAlive.Load()
	p := Packet{Kind: KindPing, Cluster: b.uid, Counter: c, Value: uint64(version), KeepAlive: modern, Acks: modern, Rung: rung}
	var buf [Size]byte
	_, err := b.ep.conn.WriteToUDPAddrPort(p.Append(buf[:0], b.key), b.server)
	return err
}

// SendKeepAlive sends a keepalive: it keeps the path open, and the server drops it unread.
func (b *Bell) SendKeepAlive() error {
	_, err := b.ep.conn.WriteToUDPAddrPort(KeepAlive, b.server)
	return err
}

// take checks a datagram for this bell: signed with its key, from its server, and either
// the answer to its last ping or a ring newer than the last.
func (b *Bell) take(raw []byte, p Packet, from netip.AddrPort) {
	if from != b.server && !(from.Addr().Unmap() == b.server.Addr().Unmap() && from.Port() == b.server.Port()) {
		return
	}
	if Verify(raw, b.key) != nil {
		return
	}
	b.mu.Lock()
	ok := false
	if p.Ring {
		if p.Counter > b.ringCtr {
			b.ringCtr, ok = p.Counter, true
		}
	} else if p.Counter == b.counter && !b.answered {
		b.answered, ok = true, true
	}
	b.mu.Unlock()
	if ok && b.onAnswer != nil {
		b.onAnswer(p)
	}
}

// States of a Keeper, as the agent reports them.
const (
	StateOff     = "off"
	StateOn      = "on"
	StateBlocked = "blocked"
)

// Keeper is an agent's doorbell loop: it pings at the interval the server says, tells the
// agent of changes and wanted tunnels, and says whether the doorbell works.
type Keeper struct {
	// Bell is the cluster's bell; its answers must go to Answer.
	Bell *Bell
	// Interval is how often to ping unless the server says otherwise.
	Interval time.Duration
	// KeepAlive, when set (the server takes keepalives), is how often to send a keepalive
	// between pings unless the server says otherwise; answers then say both intervals.
	KeepAlive time.Duration
	// Version returns the desired version the agent holds.
	Version func() int64
	// Ring is called when the server says the state changed (after the delay it asked
	// for) or a tunnel is wanted.
	Ring func(Kind)
	// OnState is called when State changes.
	OnState func(string)
	// Rekey, if set, is called once when the server says the bell's key is rotated out:
	// the agent should fetch its new key (and replace this keeper).
	Rekey func()
	// Timeout is how long an answer may take (0: 2s); after Tries unanswered pings in a row
	// (0: 3) the doorbell is blocked and the agent relies on HTTPS alone.
	Timeout time.Duration
	Tries   int

	answers chan Packet
	state   atomic.Value
	once    sync.Once
	rekeyed bool
}

func (k *Keeper) init() {
	k.once.Do(func() {
		k.answers = make(chan Packet, 8)
		if k.Timeout <= 0 {
			k.Timeout = 2 * time.Second
		}
		if k.Tries <= 0 {
			k.Tries = 3
		}
		k.state.Store(StateOff)
	})
}

// Answer hands the keeper an answer or ring of its bell (the bell's onAnswer).
func (k *Keeper) Answer(p Packet) {
	k.init()
	select {
	case k.answers <- p:
	default:
	}
}

// State is "on" while pings are answered, "blocked" when they are not (UDP filtered, the
// server's doorbell off), "off" before the first answer.
func (k *Keeper) State() string {
	k.init()
	return k.state.Load().(string)
}

func (k *Keeper) setState(s string) {
	if old := k.state.Swap(s); old != s && k.OnState != nil {
		k.OnState(s)
	}
}

// Run pings until ctx ends.
func (k *Keeper) Run(ctx context.Context) {
	k.init()
	misses := 0
	// modern: the last answer carried FlagKeepAlive, so the server takes keepalives (none
	// before a first answer says so).
	modern := false
	retry := false
	var ringAt <-chan time.Time
	for {
		// Each ping but a retry goes with the new flags when the server offered them. A
		// retry goes with the other choice than the ping it follows: a server of an older
		// version (one replica not yet upgraded, or a rollback) refuses pings with flags it
		// does not know, and answers those without.
		switch {
		case k.KeepAlive <= 0:
			k.Bell.keepAlive.Store(false)
		case retry:
			k.Bell.keepAlive.Store(!k.Bell.keepAlive.Load())
		default:
			k.Bell.keepAlive.Store(true)
		}
		k.Bell.Ping(k.Version())
		next := jitter(k.Interval)
		timeout := time.NewTimer(k.Timeout)
		answered := false
	wait:
		for {
			select {
			case <-ctx.Done():
				timeout.Stop()
				return
			case <-ringAt:
				ringAt = nil
				k.Ring(KindChanged)
			case <-timeout.C:
				break wait
			case p := <-k.answers:
				k.rekey(p)
				if !p.Ring {
					answered = true
					misses = 0
					k.setState(StateOn)
					modern = p.KeepAlive
				}
				delay, keepAlive := p.Delays()
				delay = min(delay, time.Hour)
				if keepAlive > 0 && k.KeepAlive > 0 {
					k.KeepAlive = min(keepAlive, time.Hour)
				}
				switch p.Kind {
				case KindUnchanged, KindLater:
					if !p.Ring && delay > 0 {
						next = delay
					}
				case KindChanged:
					if delay == 0 {
						k.Ring(KindChanged)
					} else if ringAt == nil {
						ringAt = time.After(delay)
					}
				case KindTunnel:
					k.Ring(KindTunnel)
				}
				if !p.Ring {
					break wait
				}
				// A ring meanwhile: acknowledged by a new ping, whose answer is awaited
				// instead.
				k.ack(p)
			}
		}
		timeout.Stop()
		retry = !answered
		if !answered {
			if misses++; misses >= k.Tries {
				k.setState(StateBlocked)
			} else {
				// Unanswered: try again soon, the datagram may have been lost.
				next = k.Timeout
			}
		}
		// Wait for the next ping, taking rings and sending keepalives meanwhile.
		t := time.NewTimer(next)
		var keep <-chan time.Time
		var kt *time.Timer
		if modern && k.KeepAlive > 0 && k.KeepAlive < next {
			kt = time.NewTimer(jitter(k.KeepAlive))
			keep = kt.C
		}
	sleep:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				if kt != nil {
					kt.Stop()
				}
				return
			case <-keep:
				k.Bell.SendKeepAlive()
				kt.Reset(jitter(k.KeepAlive))
			case <-t.C:
				if kt != nil {
					kt.Stop()
				}
				break sleep
			case <-ringAt:
				ringAt = nil
				k.Ring(KindChanged)
			case p := <-k.answers:
				k.rekey(p)
				if !p.Ring {
					continue // a late answer, or an acknowledgement's
				}
				switch p.Kind {
				case KindChanged:
					k.Ring(KindChanged)
				case KindTunnel:
					k.Ring(KindTunnel)
				}
				k.ack(p)
			}
		}
	}
}

// ack acknowledges a ring saying "changed" or "tunnel wanted", so that the server does not
// send it again.
func (k *Keeper) ack(p Packet) {
	if p.Ring && (p.Kind == KindChanged || p.Kind == KindTunnel) {
		k.Bell.Ack(k.Version())
	}
}

// rekey tells the agent, once, of an answer asking it to fetch its new key.
func (k *Keeper) rekey(p Packet) {
	if p.Rekey && !k.rekeyed && k.Rekey != nil {
		k.rekeyed = true
		k.Rekey()
	}
}

// jitter spreads d by ±10%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultInterval
	}
	return d - d/10 + rand.N(d/5+1)
}
