package oidc

import (
	"container/list"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync"
	"time"
)

// errBusy: the table of logins in progress is full of live entries.
var errBusy = errors.New("too many logins in progress; try again in a minute")

// pending holds short-lived, single-use entries under random keys (login states, one-time
// codes). It is bounded in size and age: entries all live for the same ttl, so the oldest is
// always first to expire and is dropped in O(1); when the table is full of live entries a new
// one is refused rather than evicting another's login.
type pending[T any] struct {
	mu    sync.Mutex
	ttl   time.Duration
	max   int
	now   func() time.Time
	byKey map[string]*list.Element
	order *list.List // of *entry[T], oldest first
}

type entry[T any] struct {
	key     string
	expires time.Time
	val     T
}

func newPending[T any](max int, ttl time.Duration, now func() time.Time) *pending[T] {
	return &pending[T]{ttl: ttl, max: max, now: now, byKey: map[string]*list.Element{}, order: list.New()}
}

// put stores v under a new random key and returns the key.
func (p *pending[T]) put(v T) (string, error) {
	key := randomString(32)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.expireLocked(now)
	if len(p.byKey) >= p.max {
		return "", errBusy
	}
	p.byKey[key] = p.order.PushBack(&entry[T]{key: key, expires: now.Add(p.ttl), val: v})
	return key, nil
}

// take removes and returns the entry under key, if it exists and has not expired. Whatever
// the caller does next, the key cannot be used again.
func (p *pending[T]) take(key string) (T, bool) {
	var zero T
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.expireLocked(now)
	el, ok := p.byKey[key]
	if !ok {
		return zero, false
	}
	delete(p.byKey, key)
	e := p.order.Remove(el).(*entry[T])
	return e.val, true
}

func (p *pending[T]) expireLocked(now time.Time) {
	for el := p.order.Front(); el != nil; el = p.order.Front() {
		e := el.Value.(*entry[T])
		if now.Before(e.expires) {
			return
		}
		delete(p.byKey, e.key)
		p.order.Remove(el)
	}
}

func (p *pending[T]) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byKey)
}

// randomString returns n random bytes, base64url without padding.
func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}
