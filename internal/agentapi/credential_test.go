package agentapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"flotilla.dev/internal/auth"
)

var testID = identity{Namespace: "fleet-default", Name: "edge-1", UID: "5f0c7e3a-8d1b-4c1e-9a7e-0b6f3c2d1e4f"}

// testKeys returns a keyRing over an in-memory ring, with a clock the test moves.
func testKeys(ttl, grace time.Duration) (*keyRing, *time.Time) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k := newKeyRing(CredentialConfig{Keys: auth.EphemeralRing("agent-credentials", time.Hour), TTL: ttl, Grace: grace})
	k.now = func() time.Time { return now }
	return k, &now
}

// signWith signs payload in the current format with key, as mint does.
func signWith(key []byte, payload string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(credentialPrefix + payload))
	return credentialPrefix + payload + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func TestCredential(t *testing.T) {
	ctx := context.Background()
	k, _ := testKeys(time.Hour, time.Hour)
	cred, exp := k.mint(testID)
	got, info, err := k.verify(ctx, cred)
	if err != nil || got != testID || !info.expires.Equal(exp) {
		t.Fatalf("verify(mint(id)) = %+v, %+v, %v; want %+v expiring %v", got, info, err, testID, exp)
	}

	key := k.ring.Active()
	kid := key.ID
	sign := func(raw string) string {
		return signWith(key.Secret, base64.RawURLEncoding.EncodeToString([]byte(raw)))
	}
	other, _ := testKeys(time.Hour, time.Hour)
	payload, _, _ := strings.Cut(strings.TrimPrefix(cred, credentialPrefix), ".")
	exps := "1893456000" // 2030
	for name, bad := range map[string]string{
		"empty":             "",
		"no prefix":         strings.TrimPrefix(cred, credentialPrefix),
		"no signature":      credentialPrefix + payload,
		"another key":       func() string { c, _ := other.mint(testID); return c }(),
		"payload changed":   credentialPrefix + base64.RawURLEncoding.EncodeToString([]byte(kid+"\x00"+exps+"\x00fleet-default\x00edge-2\x00"+testID.UID)) + "." + strings.SplitN(cred, ".", 3)[2],
		"signature changed": cred[:len(cred)-2] + "AA",
		"unknown key id":    sign("ffffffffffff\x00" + exps + "\x00fleet-default\x00edge-1\x00uid"),
		"four fields":       sign(kid + "\x00" + exps + "\x00fleet-default\x00edge-1"),
		"six fields":        sign(kid + "\x00" + exps + "\x00a\x00b\x00c\x00d"),
		"no name":           sign(kid + "\x00" + exps + "\x00fleet-default\x00\x00uid"),
		"no uid":            sign(kid + "\x00" + exps + "\x00fleet-default\x00edge-1\x00"),
		"bad expiry":        sign(kid + "\x00soon\x00fleet-default\x00edge-1\x00uid"),
		"empty payload":     sign(""),
		// The old format is accepted only from a key migrated out of the database.
		"legacy format": func() string {
			p := base64.RawURLEncoding.EncodeToString([]byte("fleet-default\x00edge-1\x00uid"))
			m := hmac.New(sha256.New, key.Secret)
			m.Write([]byte(p))
			return legacyPrefix + p + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
		}(),
		// A current credential with its prefix swapped for the old one.
		"downgraded": legacyPrefix + strings.TrimPrefix(cred, credentialPrefix),
	} {
		if got, _, err := k.verify(ctx, bad); err == nil {
			t.Errorf("%s: verify accepted %q as %+v", name, bad, got)
		}
	}
}

func TestCredentialExpiresAndRenews(t *testing.T) {
	ctx := context.Background()
	k, now := testKeys(time.Hour, 2*time.Hour)
	cred, _ := k.mint(testID)
	_, info, err := k.verify(ctx, cred)
	if err != nil || k.wantsRenewal(info) {
		t.Fatalf("a fresh credential: %v, wants renewal %v", err, k.wantsRenewal(info))
	}
	*now = now.Add(45 * time.Minute)
	if _, info, err = k.verify(ctx, cred); err != nil || !k.wantsRenewal(info) {
		t.Fatalf("past two thirds of its life: %v, wants renewal %v; want valid and due", err, k.wantsRenewal(info))
	}
	*now = now.Add(30 * time.Minute)
	id, info, err := k.verify(ctx, cred)
	if !errors.Is(err, errExpired) || id != testID || !k.renewable(info) {
		t.Fatalf("expired: %+v, %v, renewable %v; want errExpired with the identity, renewable", id, err, k.renewable(info))
	}
	*now = now.Add(2 * time.Hour)
	if _, info, err = k.verify(ctx, cred); !errors.Is(err, errExpired) || k.renewable(info) {
		t.Fatalf("expired past the grace: %v, renewable %v", err, k.renewable(info))
	}
}

func TestCredentialKeyRotation(t *testing.T) {
	ctx := context.Background()
	ring := auth.EphemeralRing("agent-credentials", time.Hour)
	k := newKeyRing(CredentialConfig{Keys: ring, TTL: time.Hour, Grace: time.Hour})
	old, _ := k.mint(testID)
	if _, err := ring.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	// The old key still verifies (the ring's grace), and asks for renewal.
	_, info, err := k.verify(ctx, old)
	if err != nil || !k.wantsRenewal(info) {
		t.Fatalf("a credential of the rotated key: %v, wants renewal %v; want valid and due", err, k.wantsRenewal(info))
	}
	fresh, _ := k.mint(testID)
	if _, info, err := k.verify(ctx, fresh); err != nil || k.wantsRenewal(info) || info.keyID != ring.Active().ID {
		t.Fatalf("a credential of the new key: %+v, %v", info, err)
	}
}

// TestLegacyCredential: credentials minted before keys moved out of the database carry no
// key ID and no expiry. They verify with the migrated key for a TTL after the migration.
func TestLegacyCredential(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	putLegacyKey(t, st, "agent-credentials", secret)
	keys, err := auth.OpenKeys(ctx, auth.KeysConfig{Store: st, DataDir: t.TempDir(), Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keys.Ring(ctx, "agent-credentials")
	if err != nil {
		t.Fatal(err)
	}
	k := newKeyRing(CredentialConfig{Keys: ring, TTL: time.Hour, Grace: time.Hour})
	legacy := func(raw []byte) string {
		p := base64.RawURLEncoding.EncodeToString(raw)
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(p))
		return legacyPrefix + p + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	js, _ := json.Marshal(testID)
	for _, cred := range []string{legacy([]byte(testID.Namespace + "\x00" + testID.Name + "\x00" + testID.UID)), legacy(js)} {
		got, info, err := k.verify(ctx, cred)
		if err != nil || got != testID || !k.wantsRenewal(info) {
			t.Errorf("legacy credential: %+v, %v, wants renewal %v; want %+v, due", got, err, k.wantsRenewal(info), testID)
		}
	}
	k.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, _, err := k.verify(ctx, legacy(js)); !errors.Is(err, errExpired) {
		t.Errorf("legacy credential a TTL after the migration: %v, want expired", err)
	}
}

func BenchmarkVerify(b *testing.B) {
	k, _ := testKeys(time.Hour, time.Hour)
	k.now = time.Now
	cred, _ := k.mint(testID)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := k.verify(ctx, cred); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzVerifyCredential: whatever is presented, verify never panics, accepts nothing the
// server did not sign, and a credential changed in any byte does not verify.
func FuzzVerifyCredential(f *testing.F) {
	k, _ := testKeys(time.Hour, time.Hour)
	valid, _ := k.mint(testID)
	f.Add(valid, 0, byte(0))
	f.Add(valid, len(valid)-1, byte(1))
	f.Add(valid, 10, byte(0x80))
	f.Add("fc.e30.AAAA", 0, byte(0))
	f.Add("fc2..", 3, byte(2))
	f.Add("", 0, byte(0))
	f.Add(credentialPrefix+"AAECAwQFBgcICQ."+strings.Repeat("A", 43), 5, byte(4))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, s string, pos int, flip byte) {
		// Arbitrary input: nothing but what mint signed with this ring's key verifies.
		if id, _, err := k.verify(ctx, s); err == nil && s != valid {
			t.Fatalf("forged credential %q verified as %+v", s, id)
		}
		// The valid credential with one byte changed, or cut short, never verifies.
		if pos < 0 {
			pos = -pos
		}
		pos %= len(valid)
		if flip != 0 {
			b := []byte(valid)
			b[pos] ^= flip
			if _, _, err := k.verify(ctx, string(b)); err == nil {
				t.Fatalf("credential with byte %d flipped by %#x verified: %q", pos, flip, b)
			}
		}
		if _, _, err := k.verify(ctx, valid[:pos]); err == nil {
			t.Fatalf("credential cut to %d bytes verified", pos)
		}
		if id, _, err := k.verify(ctx, valid); err != nil || id != testID {
			t.Fatalf("the valid credential: %+v, %v", id, err)
		}
	})
}
