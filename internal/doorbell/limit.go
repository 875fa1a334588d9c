package doorbell

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// sourceLimiter bounds datagrams per source in a fixed table of token buckets. A source is
// an IPv4 address or an IPv6 /64, whatever the port: a sender choosing its ports, or the
// addresses of its own /64 (a host or site is given one), is still one source.
// Hand-written rather than a map of golang.org/x/time/rate limiters: sources are whatever
// addresses a sender forges, and a map keyed by them would grow with the forgery. Here two
// sources that hash to one slot share a bucket until one of them is quiet, and memory never
// grows.
type sourceLimiter struct {
	rate  float64 // tokens per second
	burst float64
	seed  maphash.Seed
	mu    [sourceShards]sync.Mutex
	slots [sourceShards][sourceSlots / sourceShards]bucket
}

const (
	sourceSlots  = 1 << 14
	sourceShards = 16
)

type bucket struct {
	src    [16]byte
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

func newSourceLimiter(perSecond float64) *sourceLimiter {
	return &sourceLimiter{rate: perSecond, burst: max(2*perSecond, 4), seed: maphash.MakeSeed()}
}

// allow takes a token from addr's bucket.
func (l *sourceLimiter) allow(addr netip.AddrPort, now time.Time) bool {
	src := source(addr.Addr())
	var h maphash.Hash
	h.SetSeed(l.seed)
	h.Write(src[:])
	sum := h.Sum64()
	shard := sum % sourceShards
	slot := (sum / sourceShards) % (sourceSlots / sourceShards)
	t := now.UnixNano()
	l.mu[shard].Lock()
	defer l.mu[shard].Unlock()
	b := &l.slots[shard][slot]
	// A new source (or one sharing the slot) starts with what the slot holds, refilled:
	// taking a full bucket would let a forger reset a busy source's limit. An unused slot is
	// full; it is told by its time, as its zero key is a source too (::/64, with ::1).
	b.src = src
	if b.last == 0 {
		b.tokens = l.burst
	} else {
		b.tokens = min(l.burst, b.tokens+float64(t-b.last)/1e9*l.rate)
	}
	b.last = t
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// source is the limiter's key for an address: the IPv4 address (mapped or not), or an IPv6
// address's /64.
func source(a netip.Addr) [16]byte {
	a = a.Unmap()
	b := a.As16()
	if a.Is6() {
		clear(b[8:])
	}
	return b
}
