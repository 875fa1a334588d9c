package users

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testParams are cheap, so that tests do not spend 19 MiB and tens of ms per hash.
var testParams = Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}

func TestHashVerify(t *testing.T) {
	ctx := context.Background()
	h := NewHasher(testParams, 2)
	enc, err := h.Hash(ctx, "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("encoded hash %q", enc)
	}
	if again, _ := h.Hash(ctx, "correct horse battery"); again == enc {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	for _, tt := range []struct {
		pw   string
		want bool
	}{{"correct horse battery", true}, {"correct horse batterY", false}, {"", false}, {strings.Repeat("x", MaxPasswordBytes+1), false}} {
		ok, err := h.Verify(ctx, enc, tt.pw)
		if err != nil || ok != tt.want {
			t.Errorf("Verify(%.20q) = %v, %v; want %v", tt.pw, ok, err, tt.want)
		}
	}
	if _, err := h.Hash(ctx, strings.Repeat("x", MaxPasswordBytes+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("hashing an overlong password: %v", err)
	}
	if h.NeedsRehash(enc) {
		t.Fatal("a fresh hash needs rehashing")
	}
	if !NewHasher(DefaultParams(), 1).NeedsRehash(enc) {
		t.Fatal("a hash with other parameters does not need rehashing")
	}
}

func TestVerifyMalformed(t *testing.T) {
	ctx := context.Background()
	h := NewHasher(testParams, 1)
	good, _ := h.Hash(ctx, "some password!")
	parts := strings.Split(good, "$")
	salt, key := parts[4], parts[5]
	for _, enc := range []string{
		"",
		"plain",
		"$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"$argon2id$v=18$m=64,t=1,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=4194304,t=1,p=1$" + salt + "$" + key, // 4 GiB
		"$argon2id$v=19$m=64,t=1000,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=0,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=1,p=0$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=1,p=255$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=1,p=1,x=1$" + salt + "$" + key,
		"$argon2id$v=19$m=64,t=1,p=1$" + salt + "$",
		"$argon2id$v=19$m=64,t=1,p=1$$" + key,
		"$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key + "=",
		"$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key + "$",
	} {
		if ok, err := h.Verify(ctx, enc, "some password!"); ok || !errors.Is(err, ErrMalformedHash) {
			t.Errorf("Verify(%q) = %v, %v; want ErrMalformedHash", enc, ok, err)
		}
	}
}

func TestHashWaitsForASlot(t *testing.T) {
	h := NewHasher(testParams, 1)
	h.sem <- struct{}{} // the only slot is taken
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Hash(ctx, "some password!"); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the context's error", err)
	}
	<-h.sem
}

func TestCheckPassword(t *testing.T) {
	tests := []struct {
		user, pw string
		want     error
	}{
		{"alice", "a long enough one", nil},
		{"alice", "twelve chars", nil},
		{"alice", "short", ErrTooShort},
		{"alice", "elevenchars", ErrTooShort},
		{"alice", "ééééééééééé", ErrTooShort}, // 11 characters, 22 bytes
		{"alice", "éééééééééééé", nil},
		{"alice", strings.Repeat("x", 1025), ErrTooLong},
		{"alice", "bad utf8 \xff\xfe here", ErrNotUTF8},
		{"alice", "with a\nnewline inside", ErrControlChars},
		{"alice.anderson", "Alice.Anderson", ErrIsUserName},
		{"alice", "Password1234", ErrCommon},
		{"alice", "QWERTYUIOP123", ErrCommon},
		{"alice", "correcthorsebatterystaple", ErrCommon},
	}
	for _, tt := range tests {
		if got := CheckPassword(tt.user, tt.pw); !errors.Is(got, tt.want) {
			t.Errorf("CheckPassword(%q, %.30q) = %v, want %v", tt.user, tt.pw, got, tt.want)
		}
	}
	if len(common) < 80 {
		t.Fatalf("only %d common passwords loaded", len(common))
	}
	for pw := range common {
		if n := len([]rune(pw)); n < MinPasswordLength {
			t.Errorf("common password %q is shorter than the minimum; it can never match", pw)
		}
	}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time            { return c.t }
func (c *clock) advance(d time.Duration)   { c.t = c.t.Add(d) }
func newClock() *clock                     { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func allowed(l *Limiter, u, s string) bool { return l.Allow(u, s) == nil }

func TestLimiterPerUser(t *testing.T) {
	c := newClock()
	l := NewLimiter(LimiterConfig{UserBurst: 3, UserEvery: 10 * time.Second, SourceBurst: 100, SourceEvery: time.Second, MaxKeys: 100, Now: c.now})
	for i := range 3 {
		if !allowed(l, "alice", "10.0.0.1") {
			t.Fatalf("attempt %d refused within the burst", i+1)
		}
	}
	err := l.Allow("alice", "10.0.0.2") // another source does not help
	var rl *RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter != 10*time.Second {
		t.Fatalf("got %v, want a rate limit error with 10s to wait", err)
	}
	if err.Error() != "too many login attempts; try again in 10s" {
		t.Fatalf("message %q", err)
	}
	if !allowed(l, "bob", "10.0.0.1") {
		t.Fatal("another user is limited too")
	}
	c.advance(9 * time.Second)
	if allowed(l, "alice", "10.0.0.1") {
		t.Fatal("allowed before a token came back")
	}
	c.advance(time.Second)
	if !allowed(l, "alice", "10.0.0.1") {
		t.Fatal("refused after a token came back")
	}
	if allowed(l, "alice", "10.0.0.1") {
		t.Fatal("one token allowed two attempts")
	}
	c.advance(time.Hour)
	for i := range 3 {
		if !allowed(l, "alice", "10.0.0.1") {
			t.Fatalf("after an hour, attempt %d refused: the bucket did not refill to its burst", i+1)
		}
	}
	if allowed(l, "alice", "10.0.0.1") {
		t.Fatal("the bucket refilled beyond its burst")
	}
}

func TestLimiterPerSource(t *testing.T) {
	c := newClock()
	l := NewLimiter(LimiterConfig{UserBurst: 100, UserEvery: time.Second, SourceBurst: 2, SourceEvery: time.Minute, MaxKeys: 100, Now: c.now})
	if !allowed(l, "a", "s") || !allowed(l, "b", "s") {
		t.Fatal("refused within the source's burst")
	}
	// A spray over user names from one source is stopped, and a refused attempt costs the
	// user's bucket nothing.
	if allowed(l, "c", "s") {
		t.Fatal("third attempt from one source allowed")
	}
	if !allowed(l, "c", "other") {
		t.Fatal("a refusal by source took a token from the user")
	}
}

func TestLimiterBoundedKeys(t *testing.T) {
	c := newClock()
	l := NewLimiter(LimiterConfig{UserBurst: 1, UserEvery: time.Minute, SourceBurst: 1000, SourceEvery: time.Millisecond, MaxKeys: 10, Now: c.now})
	for i := range 1000 {
		l.Allow(strings.Repeat("u", i%50+1), "s")
		if len(l.users.m) > 10 || len(l.sources.m) > 10 {
			t.Fatalf("after %d attempts: %d users, %d sources held; want at most 10", i+1, len(l.users.m), len(l.sources.m))
		}
	}
	// Buckets full again go first: a limited user stays limited.
	l = NewLimiter(LimiterConfig{UserBurst: 5, UserEvery: 10 * time.Minute, SourceBurst: 1000, SourceEvery: time.Millisecond, MaxKeys: 3, Now: c.now})
	l.Allow("a", "s")
	c.advance(time.Hour) // a's bucket is full again
	for range 5 {
		l.Allow("victim", "s")
	}
	l.Allow("b", "s")
	l.Allow("c", "s") // the table is full: one must go
	if _, ok := l.users.m["a"]; ok {
		t.Fatal("a full bucket was kept")
	}
	if _, ok := l.users.m["victim"]; !ok {
		t.Fatal("the limited user's bucket was evicted while a full one was there")
	}
	if l.Allow("victim", "s") == nil {
		t.Fatal("the limited user is no longer limited")
	}
}

func TestLoginCheck(t *testing.T) {
	ctx := context.Background()
	h := NewHasher(testParams, 2)
	enc, _ := h.Hash(ctx, "alice's password")
	old, _ := NewHasher(Params{Memory: 32, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 1).Hash(ctx, "carol's password")
	var lookups atomic.Int32
	accounts := map[string]Account{
		"alice": {PasswordHash: enc},
		"bob":   {PasswordHash: enc, Disabled: true},
		"carol": {PasswordHash: old},
		"dave":  {PasswordHash: "garbage"},
	}
	c := newClock()
	login := &Login{
		Hasher:  h,
		Limiter: NewLimiter(LimiterConfig{UserBurst: 3, UserEvery: time.Minute, SourceBurst: 100, SourceEvery: time.Second, MaxKeys: 100, Now: c.now}),
		Lookup: func(_ context.Context, name string) (Account, bool, error) {
			lookups.Add(1)
			a, ok := accounts[name]
			return a, ok, nil
		},
	}
	tests := []struct {
		name, pw   string
		wantErr    error
		wantRehash bool
	}{
		{"alice", "alice's password", nil, false},
		{"alice", "wrong password!", ErrInvalidCredentials, false},
		{"nobody", "alice's password", ErrInvalidCredentials, false},
		{"bob", "alice's password", ErrInvalidCredentials, false},
		{"carol", "carol's password", nil, true},
		{"dave", "anything at all", ErrMalformedHash, false},
	}
	for _, tt := range tests {
		rehash, err := login.Check(ctx, tt.name, tt.pw, "10.0.0.1")
		if !errors.Is(err, tt.wantErr) || rehash != tt.wantRehash {
			t.Errorf("%s: got %v, %v; want %v, %v", tt.name, rehash, err, tt.wantErr, tt.wantRehash)
		}
	}
	// Known and unknown users are limited alike, and say the same.
	var known, unknown error
	for range 5 {
		_, known = login.Check(ctx, "alice", "guess guess guess", "10.0.0.9")
		_, unknown = login.Check(ctx, "nobody", "guess guess guess", "10.0.0.9")
	}
	if known == nil || unknown == nil || known.Error() != unknown.Error() {
		t.Fatalf("limited known user: %v; unknown user: %v; want the same rate limit error", known, unknown)
	}
	n := lookups.Load()
	login.Check(ctx, "alice", "alice's password", "10.0.0.9")
	if lookups.Load() != n {
		t.Fatal("a limited attempt looked the user up")
	}
}
