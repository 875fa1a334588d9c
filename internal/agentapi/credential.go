package agentapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
)

// Cluster credentials are not stored at all: a credential is the cluster's identity (namespace,
// name, UID) and an expiry, signed with the server's credential key, so checking one costs an
// HMAC and a lookup in the fleet model, never a database read, and deleting the Cluster
// revokes it (its UID is gone). It names the key that signed it, so that the key can be
// rotated: a retired key still verifies for the ring's grace period, and agents renew their
// credential (PathRenew) before it expires or when told its key was rotated.

// credentialPrefix marks the signed, expiring format: "fc2." payload "." HMAC, where payload
// is base64url(keyID NUL expiry NUL namespace NUL name NUL uid) and the HMAC covers the
// prefix too, so no credential of one format is a valid one of the other.
const credentialPrefix = "fc2."

// legacyPrefix is the format before keys rotated and credentials expired: no key ID, no
// expiry. Such credentials verify only with a key that was migrated from the database, and
// only for a TTL after the migration; agents are asked to renew them at once.
const legacyPrefix = "fc."

// CredentialConfig says how cluster credentials are signed and how long they last.
type CredentialConfig struct {
	// Keys signs credentials; its retired keys still verify for its grace period.
	Keys *auth.Ring
	// TTL is how long a credential is valid; agents renew after two thirds of it.
	TTL time.Duration
	// Grace is how long after expiry a credential may still be renewed, or prove a
	// re-registration's right to its cluster.
	Grace time.Duration
}

// Defaults for CredentialConfig.
const (
	DefaultCredentialTTL   = 30 * 24 * time.Hour
	DefaultCredentialGrace = 30 * 24 * time.Hour
)

type identity struct {
	Namespace string `json:"n"`
	Name      string `json:"c"`
	UID       string `json:"u"`
}

// credInfo is what a verified credential says besides the identity.
type credInfo struct {
	keyID   string
	expires time.Time
	legacy  bool
}

// keyRing signs and verifies credentials with the keys of an auth.Ring.
type keyRing struct {
	ring       *auth.Ring
	ttl, grace time.Duration
	now        func() time.Time
	// signers keeps, per key ID, the key and a pool of keyed HMAC states: every agent
	// request checks one, and a new one is three allocations the collector must then clean
	// up. Copied on write; read without a lock.
	signers atomic.Pointer[map[string]*signer]
	mu      sync.Mutex
}

type signer struct {
	key  auth.Key
	macs sync.Pool
}

func newKeyRing(cfg CredentialConfig) *keyRing {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultCredentialTTL
	}
	if cfg.Grace < 0 {
		cfg.Grace = 0
	}
	if cfg.Keys == nil {
		cfg.Keys = auth.EphemeralRing("agent-credentials", cfg.TTL+cfg.Grace)
	}
	return &keyRing{ring: cfg.Keys, ttl: cfg.TTL, grace: cfg.Grace, now: time.Now}
}

// signer returns the signer for key, keeping one per key ID.
func (k *keyRing) signer(key auth.Key) *signer {
	if m := k.signers.Load(); m != nil {
		if s := (*m)[key.ID]; s != nil {
			return s
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.signers.Load()
	next := map[string]*signer{}
	if old != nil {
		if s := (*old)[key.ID]; s != nil {
			return s
		}
		for id, s := range *old {
			if _, ok := k.ring.Lookup(id); ok {
				next[id] = s
			}
		}
	}
	s := &signer{key: key}
	next[key.ID] = s
	k.signers.Store(&next)
	return s
}

// sum appends the HMAC of prefix+payload to b.
func (s *signer) sum(prefix, payload string, b []byte) []byte {
	m, _ := s.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, s.key.Secret)
	}
	m.Reset()
	m.Write([]byte(prefix))
	m.Write([]byte(payload))
	b = m.Sum(b)
	s.macs.Put(m)
	return b
}

func (s *signer) mac(prefix, payload string) string {
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(s.sum(prefix, payload, sum[:0]))
}

// mint signs id with the active key, valid for the TTL from now.
func (k *keyRing) mint(id identity) (string, time.Time) {
	key := k.ring.Active()
	exp := k.now().Add(k.ttl).UTC().Truncate(time.Second)
	raw := key.ID + "\x00" + strconv.FormatInt(exp.Unix(), 10) + "\x00" + id.Namespace + "\x00" + id.Name + "\x00" + id.UID
	payload := base64.RawURLEncoding.EncodeToString([]byte(raw))
	return credentialPrefix + payload + "." + k.signer(key).mac(credentialPrefix, payload), exp
}

// b64 decodes strictly: a credential has one encoding, so no altered string verifies.
var b64 = base64.RawURLEncoding.Strict()

var (
	errBadCredential = errors.New("invalid cluster credential")
	errExpired       = errors.New("cluster credential expired")
)

// verify checks token's signature and expiry. An expired credential with a good signature
// returns its identity with errExpired, for renewal.
func (k *keyRing) verify(ctx context.Context, token string) (identity, credInfo, error) {
	if rest, ok := strings.CutPrefix(token, credentialPrefix); ok {
		return k.verifyV2(ctx, rest)
	}
	if rest, ok := strings.CutPrefix(token, legacyPrefix); ok {
		return k.verifyLegacy(rest)
	}
	return identity{}, credInfo{}, errBadCredential
}

func splitSigned(rest string) (payload string, sig [sha256.Size]byte, ok bool) {
	payload, s, ok := strings.Cut(rest, ".")
	if !ok || b64.DecodedLen(len(s)) != sha256.Size {
		return "", sig, false
	}
	if n, err := b64.Decode(sig[:], []byte(s)); err != nil || n != sha256.Size {
		return "", sig, false
	}
	return payload, sig, true
}

func (k *keyRing) verifyV2(ctx context.Context, rest string) (identity, credInfo, error) {
	var info credInfo
	payload, sig, ok := splitSigned(rest)
	if !ok {
		return identity{}, info, errBadCredential
	}
	raw, err := b64.DecodeString(payload)
	if err != nil {
		return identity{}, info, errBadCredential
	}
	// One string for the parts: they share it (this runs on every agent request).
	s := string(raw)
	kid, s, ok1 := strings.Cut(s, "\x00")
	exp, s, ok2 := strings.Cut(s, "\x00")
	ns, s, ok3 := strings.Cut(s, "\x00")
	name, uid, ok4 := strings.Cut(s, "\x00")
	if !ok1 || !ok2 || !ok3 || !ok4 || strings.Contains(uid, "\x00") || name == "" || uid == "" {
		return identity{}, info, errBadCredential
	}
	key, ok := k.ring.Lookup(kid)
	if !ok && k.ring.ReloadSoon(ctx) {
		// Another replica may have rotated the key.
		key, ok = k.ring.Lookup(kid)
	}
	if !ok {
		return identity{}, info, errBadCredential
	}
	var want [sha256.Size]byte
	if !hmac.Equal(sig[:], k.signer(key).sum(credentialPrefix, payload, want[:0])) {
		return identity{}, info, errBadCredential
	}
	secs, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		return identity{}, info, errBadCredential
	}
	info = credInfo{keyID: kid, expires: time.Unix(secs, 0)}
	id := identity{Namespace: ns, Name: name, UID: uid}
	if !k.now().Before(info.expires) {
		return id, info, errExpired
	}
	return id, info, nil
}

func (k *keyRing) verifyLegacy(rest string) (identity, credInfo, error) {
	var id identity
	info := credInfo{legacy: true}
	payload, sig, ok := splitSigned(rest)
	if !ok {
		return id, info, errBadCredential
	}
	var signedBy *auth.Key
	for _, key := range k.ring.Valid() {
		var want [sha256.Size]byte
		if key.Migrated != nil && hmac.Equal(sig[:], k.signer(key).sum("", payload, want[:0])) {
			signedBy = &key
			break
		}
	}
	if signedBy == nil {
		return id, info, errBadCredential
	}
	raw, err := b64.DecodeString(payload)
	if err != nil || len(raw) == 0 {
		return id, info, errBadCredential
	}
	if raw[0] == '{' {
		err = json.Unmarshal(raw, &id)
	} else {
		ns, rest, ok1 := strings.Cut(string(raw), "\x00")
		name, uid, ok2 := strings.Cut(rest, "\x00")
		if !ok1 || !ok2 || strings.Contains(uid, "\x00") {
			err = errBadCredential
		}
		id = identity{Namespace: ns, Name: name, UID: uid}
	}
	if err != nil || id.Name == "" || id.UID == "" {
		return identity{}, info, errBadCredential
	}
	info.keyID = signedBy.ID
	info.expires = signedBy.Migrated.Add(k.ttl)
	if !k.now().Before(info.expires) {
		return id, info, errExpired
	}
	return id, info, nil
}

// renewable reports whether an expired credential may still be renewed.
func (k *keyRing) renewable(info credInfo) bool {
	return k.now().Before(info.expires.Add(k.grace))
}

// wantsRenewal reports whether the agent should renew a valid credential now: it is past two
// thirds of its life, in the legacy format, or signed by a key that is no longer active.
func (k *keyRing) wantsRenewal(info credInfo) bool {
	return info.legacy || info.keyID != k.ring.Active().ID || k.now().After(info.expires.Add(-k.ttl/3))
}

// authenticate checks a request's cluster credential. It answers the failure itself:
// 401 CredentialExpired for an expired one (the agent renews it), 401 Unauthorized for
// anything else. A valid credential due for renewal gets HeaderRenewCredential.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (identity, bool) {
	id, info, err := s.keys.verify(r.Context(), auth.BearerToken(r))
	switch {
	case errors.Is(err, errExpired):
		msg := fmt.Sprintf("Unauthorized: the cluster credential expired at %s", info.expires.UTC().Format(time.RFC3339))
		if s.keys.renewable(info) {
			w.Header().Set(api.HeaderRenewCredential, "1")
			msg += fmt.Sprintf("; renew it (POST %s) before %s", api.PathRenew, info.expires.Add(s.keys.grace).UTC().Format(time.RFC3339))
		} else {
			msg += "; it is too old to renew: register the cluster again with a registration token bound to it (flotilla token create --cluster NAME)"
		}
		fail(w, http.StatusUnauthorized, api.ReasonCredentialExpired, msg)
		return id, false
	case err != nil:
		fail(w, http.StatusUnauthorized, api.ReasonUnauthorized, "Unauthorized: invalid cluster credential")
		return id, false
	}
	if s.keys.wantsRenewal(info) {
		w.Header().Set(api.HeaderRenewCredential, "1")
	}
	return id, true
}

// renew exchanges a cluster credential, valid or expired within the grace period, for a
// fresh one, if its cluster still exists.
func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	id, info, err := s.keys.verify(r.Context(), auth.BearerToken(r))
	if errors.Is(err, errExpired) && !s.keys.renewable(info) {
		fail(w, http.StatusUnauthorized, api.ReasonCredentialExpired, fmt.Sprintf(
			"the cluster credential expired at %s, longer ago than the renewal grace (%s): register the cluster again with a registration token bound to it (flotilla token create --cluster %s)",
			info.expires.UTC().Format(time.RFC3339), s.keys.grace, id.Name))
		return
	}
	if err != nil && !errors.Is(err, errExpired) {
		fail(w, http.StatusUnauthorized, api.ReasonUnauthorized, "Unauthorized: invalid cluster credential")
		return
	}
	if !s.fleet.Known(id.Namespace, id.Name, id.UID) {
		obj, err := s.st.Get(r.Context(), store.Key{Kind: api.KindCluster, Namespace: id.Namespace, Name: id.Name})
		switch {
		case err == nil && obj.Metadata.UID == id.UID:
		case err == nil || errors.Is(err, store.ErrNotFound):
			fail(w, http.StatusUnauthorized, api.ReasonClusterDeleted, fmt.Sprintf("cluster %s/%s was deleted from the server; its credential is revoked", id.Namespace, id.Name))
			return
		default:
			fail(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "store unavailable")
			return
		}
	}
	cred, exp := s.keys.mint(id)
	s.Metrics.AgentRequest("renew", "renewed")
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.RegisterResponse{Namespace: id.Namespace, ClusterName: id.Name, Credential: cred, Expires: &exp})
}
