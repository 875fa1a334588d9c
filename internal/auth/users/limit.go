package users

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// LimiterConfig sets the login rate limits: a token bucket per user name and one per source
// address. Every attempt takes a token from both; an attempt finding either empty is refused
// before any password is checked.
type LimiterConfig struct {
	// UserBurst attempts at once for one user name, then one per UserEvery.
	UserBurst int
	UserEvery time.Duration
	// SourceBurst attempts at once from one source, then one per SourceEvery.
	SourceBurst int
	SourceEvery time.Duration
	// MaxKeys bounds each table's entries (user names, sources), so that a flood of made-up
	// names or addresses costs bounded memory.
	MaxKeys int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultLimiterConfig allows 10 attempts for a user name, then one every 30 s (120 an
// hour), and 30 from one source, then one every 2 s.
func DefaultLimiterConfig() LimiterConfig {
	return LimiterConfig{UserBurst: 10, UserEvery: 30 * time.Second, SourceBurst: 30, SourceEvery: 2 * time.Second, MaxKeys: 100_000}
}

// RateLimitError refuses an attempt; it says the same whether or not the user exists.
type RateLimitError struct{ RetryAfter time.Duration }

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("too many login attempts; try again in %s", e.RetryAfter.Round(time.Second))
}

// Limiter is the login rate limiter. It is safe for concurrent use.
type Limiter struct {
	cfg LimiterConfig

	mu      sync.Mutex
	users   buckets
	sources buckets
}

// NewLimiter returns a Limiter with cfg.
func NewLimiter(cfg LimiterConfig) *Limiter {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Limiter{cfg: cfg,
		users:   buckets{m: map[string]*bucket{}, burst: float64(cfg.UserBurst), every: cfg.UserEvery, max: cfg.MaxKeys},
		sources: buckets{m: map[string]*bucket{}, burst: float64(cfg.SourceBurst), every: cfg.SourceEvery, max: cfg.MaxKeys},
	}
}

// Allow takes a token for user and source, or returns a *RateLimitError and takes none.
func (l *Limiter) Allow(user, source string) error {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	u, s := l.users.get(user, now), l.sources.get(source, now)
	wait := max(l.users.wait(u), l.sources.wait(s))
	if wait > 0 {
		return &RateLimitError{RetryAfter: wait}
	}
	u.tokens--
	s.tokens--
	return nil
}

type bucket struct {
	tokens float64
	last   time.Time
}

type buckets struct {
	m     map[string]*bucket
	burst float64
	every time.Duration
	max   int
}

// get returns key's bucket refilled to now.
func (bs *buckets) get(key string, now time.Time) *bucket {
	b := bs.m[key]
	if b == nil {
		if len(bs.m) >= bs.max {
			bs.evict(now)
		}
		b = &bucket{tokens: bs.burst, last: now}
		bs.m[key] = b
		return b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(bs.burst, b.tokens+float64(el)/float64(bs.every))
		b.last = now
	}
	return b
}

// wait is how long until b holds a token.
func (bs *buckets) wait(b *bucket) time.Duration {
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(bs.every))
}

// evict makes room: buckets full again carry no memory of attempts and go first; if none is,
// one arbitrary bucket goes (a flood of keys can then reset someone's limit, which is the
// price of bounded memory; the other table still limits them).
func (bs *buckets) evict(now time.Time) {
	for k, b := range bs.m {
		if b.tokens+float64(now.Sub(b.last))/float64(bs.every) >= bs.burst {
			delete(bs.m, k)
		}
	}
	for k := range bs.m {
		if len(bs.m) < bs.max {
			return
		}
		delete(bs.m, k)
	}
}

// ErrInvalidCredentials is every failed login's answer: unknown user, wrong password,
// disabled user and provider users alike, so that it reveals nothing.
var ErrInvalidCredentials = errors.New("invalid user name or password")

// Account is what Login needs to know about a local user.
type Account struct {
	PasswordHash string
	Disabled     bool
}

// Login checks local users' credentials under the rate limits.
type Login struct {
	Hasher  *Hasher
	Limiter *Limiter
	// Lookup finds a local user; found is false when there is none (or it is not local).
	Lookup func(ctx context.Context, name string) (acct Account, found bool, err error)
}

// Check returns nil when password is name's, ErrInvalidCredentials when it is not (or the
// user does not exist or is disabled), a *RateLimitError when attempts come too fast, or
// another error when the check could not be made. rehash is true when the stored hash uses
// old parameters and the caller should store a new one.
func (l *Login) Check(ctx context.Context, name, password, source string) (rehash bool, err error) {
	if err := l.Limiter.Allow(name, source); err != nil {
		return false, err
	}
	acct, found, err := l.Lookup(ctx, name)
	if err != nil {
		return false, fmt.Errorf("looking up the user: %w", err)
	}
	if !found {
		l.Hasher.VerifyNobody(ctx, password)
		return false, ErrInvalidCredentials
	}
	ok, err := l.Hasher.Verify(ctx, acct.PasswordHash, password)
	switch {
	case err != nil:
		return false, fmt.Errorf("checking the stored password hash: %w", err)
	case !ok || acct.Disabled:
		return false, ErrInvalidCredentials
	}
	return l.Hasher.NeedsRehash(acct.PasswordHash), nil
}
