package agent

import (
	"math/rand/v2"
	"time"
)

// backoff computes retry delays: exponential from min to max, with jitter so that a fleet
// cut off at once does not come back at once. Each delay is drawn from [d/2, d].
type backoff struct {
	min, max time.Duration
	failures int
	// rand returns a number in [0, 1); rand.Float64 unless a test sets it.
	rand func() float64
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, rand: rand.Float64}
}

// next records a failure and returns the delay before the next attempt.
func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.failures && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	b.failures++
	half := d / 2
	return half + time.Duration(b.rand()*float64(d-half))
}

// reset starts again from min after a success.
func (b *backoff) reset() { b.failures = 0 }
