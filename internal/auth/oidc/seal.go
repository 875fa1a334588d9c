package oidc

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"flotilla.dev/internal/auth"
)

// keyRing is what sealing needs of the server's key rings (auth.Ring): every replica of one
// database holds the same ring, so a login started on one replica finishes on any other.
type keyRing interface {
	Active() auth.Key
	Lookup(id string) (auth.Key, bool)
	// ReloadSoon reads the ring again, at most once a second: a key ID not known here may be
	// another replica's rotation.
	ReloadSoon(ctx context.Context) bool
}

// maxSealed bounds a sealed value accepted back: a state or code is a few hundred bytes.
const maxSealed = 4 << 10

// errUnsealed: a sealed value that is malformed, forged, sealed for another purpose, made
// with a key no longer valid, or expired. One error for all, so that it tells a prober nothing.
var errUnsealed = errors.New("unknown or expired")

// sealed is the plaintext of a sealed value.
type sealed[T any] struct {
	Expires int64 `json:"e"`
	Value   T     `json:"v"`
}

// seal encrypts and authenticates v until expires, for one purpose: KEYID.base64url(nonce ‖
// AES-256-GCM ciphertext), the purpose and key ID bound in as additional data. Login states
// and codes are sealed rather than kept in a table so that they hold on every replica and
// cost the server no memory however many logins are started.
func seal[T any](ring keyRing, purpose string, expires time.Time, v T) (string, error) {
	k := ring.Active()
	aead, err := gcm(k.Secret)
	if err != nil {
		return "", err
	}
	plain, err := json.Marshal(sealed[T]{Expires: expires.Unix(), Value: v})
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	rand.Read(nonce)
	out := aead.Seal(nonce, nonce, plain, aad(purpose, k.ID))
	return k.ID + "." + base64.RawURLEncoding.EncodeToString(out), nil
}

// unseal opens a value seal made for purpose, if it has not expired at now.
func unseal[T any](ctx context.Context, ring keyRing, purpose, s string, now time.Time) (T, error) {
	var zero T
	if len(s) > maxSealed {
		return zero, errUnsealed
	}
	id, body, ok := strings.Cut(s, ".")
	if !ok {
		return zero, errUnsealed
	}
	k, valid := ring.Lookup(id)
	if !valid && ring.ReloadSoon(ctx) {
		k, valid = ring.Lookup(id)
	}
	if !valid {
		return zero, errUnsealed
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return zero, errUnsealed
	}
	aead, err := gcm(k.Secret)
	if err != nil || len(raw) < aead.NonceSize() {
		return zero, errUnsealed
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], aad(purpose, k.ID))
	if err != nil {
		return zero, errUnsealed
	}
	var v sealed[T]
	if json.Unmarshal(plain, &v) != nil || !now.Before(time.Unix(v.Expires, 0)) {
		return zero, errUnsealed
	}
	return v.Value, nil
}

func gcm(secret []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(secret)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func aad(purpose, keyID string) []byte { return []byte("flotilla oidc " + purpose + " " + keyID) }

// randomString returns n random bytes, base64url without padding.
func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}
