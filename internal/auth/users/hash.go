// Package users owns local users' passwords: hashing with argon2id, the password policy, and
// the login rate limiter. It stores nothing; the caller keeps the encoded hash apart from the
// User object the API serves.
package users

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Params are argon2id's cost parameters.
type Params struct {
	// Memory in KiB.
	Memory  uint32
	Time    uint32
	Threads uint8
	SaltLen int
	KeyLen  uint32
}

// DefaultParams are OWASP's first argon2id recommendation (19 MiB, 2 passes, 1 lane): about
// 30–50 ms of one core per hash on a 2-core server, so that with MaxConcurrent 2 a login
// flood costs at most both cores and 38 MiB, and each guess costs an attacker as much.
func DefaultParams() Params {
	return Params{Memory: 19 * 1024, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32}
}

// Bounds on the parameters a stored hash may carry: a hash is input too, and one naming 4 GiB
// of memory must not be obeyed.
const (
	maxMemory  = 256 * 1024
	maxTime    = 16
	maxThreads = 8
	maxKeyLen  = 128
	// MaxPasswordBytes bounds what is hashed at all.
	MaxPasswordBytes = 1024
)

// DefaultMaxConcurrent is how many hashes run at once by default: the cores of a 2-core
// server. More logins wait for a slot rather than take memory and CPU from everything else.
const DefaultMaxConcurrent = 2

// ErrMalformedHash is a stored hash that cannot be read, or names parameters out of bounds.
var ErrMalformedHash = errors.New("malformed password hash")

// Hasher hashes and verifies passwords, at most MaxConcurrent at a time.
type Hasher struct {
	params Params
	sem    chan struct{}
	dummy  string
}

// NewHasher returns a Hasher with params, running at most maxConcurrent hashes at once (the
// rest wait, or give up with their context).
func NewHasher(params Params, maxConcurrent int) *Hasher {
	if maxConcurrent < 1 {
		maxConcurrent = 1
	}
	h := &Hasher{params: params, sem: make(chan struct{}, maxConcurrent)}
	h.dummy = encode(params, make([]byte, params.SaltLen), make([]byte, params.KeyLen))
	return h
}

func (h *Hasher) acquire(ctx context.Context) error {
	select {
	case h.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting to hash a password: %w", ctx.Err())
	}
}

func (h *Hasher) release() { <-h.sem }

// Hash returns the encoded argon2id hash of password in the PHC string format
// ($argon2id$v=19$m=…,t=…,p=…$salt$key).
func (h *Hasher) Hash(ctx context.Context, password string) (string, error) {
	if len(password) > MaxPasswordBytes {
		return "", ErrTooLong
	}
	salt := make([]byte, h.params.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("reading a salt: %w", err)
	}
	if err := h.acquire(ctx); err != nil {
		return "", err
	}
	defer h.release()
	p := h.params
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	return encode(p, salt, key), nil
}

// Verify reports whether password matches encoded, comparing in constant time.
func (h *Hasher) Verify(ctx context.Context, encoded, password string) (bool, error) {
	p, salt, key, err := decode(encoded)
	if err != nil {
		return false, err
	}
	if len(password) > MaxPasswordBytes {
		return false, nil
	}
	if err := h.acquire(ctx); err != nil {
		return false, err
	}
	defer h.release()
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1, nil
}

// VerifyNobody spends what Verify would on a hash with the current parameters, for a login
// naming no user, so that timing does not tell which users exist.
func (h *Hasher) VerifyNobody(ctx context.Context, password string) {
	_, _ = h.Verify(ctx, h.dummy, password)
}

// NeedsRehash reports whether encoded was made with other parameters than h's, so that the
// caller can rehash at the next successful login.
func (h *Hasher) NeedsRehash(encoded string) bool {
	p, salt, key, err := decode(encoded)
	return err != nil || p.Memory != h.params.Memory || p.Time != h.params.Time || p.Threads != h.params.Threads ||
		len(salt) != h.params.SaltLen || uint32(len(key)) != h.params.KeyLen
}

var b64 = base64.RawStdEncoding

func encode(p Params, salt, key []byte) string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

func decode(encoded string) (Params, []byte, []byte, error) {
	var p Params
	// Base64 decoding skips CR and LF even in strict mode: a stored hash has one spelling.
	if strings.ContainsAny(encoded, "\r\n") {
		return p, nil, nil, ErrMalformedHash
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return p, nil, nil, ErrMalformedHash
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version || parts[2] != fmt.Sprintf("v=%d", v) {
		return p, nil, nil, ErrMalformedHash
	}
	var threads uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &threads); err != nil ||
		parts[3] != fmt.Sprintf("m=%d,t=%d,p=%d", p.Memory, p.Time, threads) {
		return p, nil, nil, ErrMalformedHash
	}
	if p.Memory < 8*threads || p.Memory > maxMemory || p.Time < 1 || p.Time > maxTime || threads < 1 || threads > maxThreads {
		return p, nil, nil, fmt.Errorf("%w: parameters out of bounds", ErrMalformedHash)
	}
	p.Threads = uint8(threads)
	salt, err := b64.Strict().DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return p, nil, nil, ErrMalformedHash
	}
	key, err := b64.Strict().DecodeString(parts[5])
	if err != nil || len(key) < 16 || len(key) > maxKeyLen {
		return p, nil, nil, ErrMalformedHash
	}
	p.SaltLen, p.KeyLen = len(salt), uint32(len(key))
	return p, salt, key, nil
}
