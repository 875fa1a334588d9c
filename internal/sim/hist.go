package sim

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram records durations lock-free in log-linear buckets: 16 per power of two, so a
// percentile is exact to within 1/16 (6%), from nanoseconds to hours, in 8 KB.
type histogram struct {
	counts [64 * 16]atomic.Uint64
	n      atomic.Uint64
	max    atomic.Int64
}

func bucketOf(v int64) int {
	if v < 16 {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - 5
	return (e+1)*16 + int((v>>e)&15)
}

// bucketUpper is the largest value bucket b holds.
func bucketUpper(b int) int64 {
	if b < 16 {
		return int64(b)
	}
	e := b/16 - 1
	return (int64(16+b%16+1) << e) - 1
}

func (h *histogram) record(d time.Duration) {
	v := int64(d)
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// reset forgets what was recorded (not atomically with concurrent records, which is fine
// for starting a new phase).
func (h *histogram) reset() {
	for i := range h.counts {
		h.counts[i].Store(0)
	}
	h.n.Store(0)
	h.max.Store(0)
}

// quantile returns the upper bound of the bucket holding quantile q (0..1), capped at the
// largest value seen.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n-1)) + 1
	var seen uint64
	for b := range h.counts {
		seen += h.counts[b].Load()
		if seen >= rank {
			return time.Duration(min(bucketUpper(b), h.max.Load()))
		}
	}
	return time.Duration(h.max.Load())
}

// Latency summarises a histogram.
type Latency struct {
	Count uint64  `json:"count"`
	P50   Seconds `json:"p50"`
	P90   Seconds `json:"p90"`
	P99   Seconds `json:"p99"`
	Max   Seconds `json:"max"`
}

func (h *histogram) summary() Latency {
	return Latency{Count: h.n.Load(), P50: seconds(h.quantile(.5)), P90: seconds(h.quantile(.9)),
		P99: seconds(h.quantile(.99)), Max: seconds(time.Duration(h.max.Load()))}
}
