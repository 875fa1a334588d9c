package agentapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash"
	"strings"
	"sync"

	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
)

// Cluster credentials are not stored at all: a credential is the cluster's identity (namespace,
// name, UID) signed with a server key, so checking one costs an HMAC and a lookup in the fleet
// model, never a database read, and deleting the Cluster revokes it (its UID is gone).

const credentialPrefix = "fc."

type identity struct {
	Namespace string `json:"n"`
	Name      string `json:"c"`
	UID       string `json:"u"`
}

// keyRing holds the signing key, shared by every server replica through the store.
type keyRing struct {
	key []byte
	// macs keeps keyed HMAC states for reuse: every agent request checks one, and a new
	// one is three allocations the collector must then clean up.
	macs sync.Pool
}

func loadKey(ctx context.Context, st store.Store) (*keyRing, error) {
	k, err := auth.ServerKey(ctx, st, "agent-credentials")
	if err != nil {
		return nil, err
	}
	return &keyRing{key: k}, nil
}

func (k *keyRing) mac(payload string) string {
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(k.sum(payload, sum[:0]))
}

// sum appends payload's HMAC to b.
func (k *keyRing) sum(payload string, b []byte) []byte {
	m, _ := k.macs.Get().(hash.Hash)
	if m == nil {
		m = hmac.New(sha256.New, k.key)
	}
	m.Reset()
	m.Write([]byte(payload))
	b = m.Sum(b)
	k.macs.Put(m)
	return b
}

// mint signs id. The payload is namespace, name and UID separated by NUL bytes, which no
// Kubernetes name or UID contains: every agent request decodes it, and JSON took most of
// the time of checking a credential. Credentials minted with a JSON payload stay valid.
func (k *keyRing) mint(id identity) string {
	raw := id.Namespace + "\x00" + id.Name + "\x00" + id.UID
	payload := base64.RawURLEncoding.EncodeToString([]byte(raw))
	return credentialPrefix + payload + "." + k.mac(payload)
}

var errBadCredential = errors.New("invalid cluster credential")

func (k *keyRing) verify(token string) (identity, error) {
	var id identity
	rest, ok := strings.CutPrefix(token, credentialPrefix)
	if !ok {
		return id, errBadCredential
	}
	payload, sig, ok := strings.Cut(rest, ".")
	var got, want [sha256.Size]byte
	if !ok || base64.RawURLEncoding.DecodedLen(len(sig)) != sha256.Size {
		return id, errBadCredential
	}
	if n, err := base64.RawURLEncoding.Decode(got[:], []byte(sig)); err != nil || n != sha256.Size || !hmac.Equal(got[:], k.sum(payload, want[:0])) {
		return id, errBadCredential
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || len(raw) == 0 {
		return id, errBadCredential
	}
	if raw[0] == '{' {
		err = json.Unmarshal(raw, &id)
	} else {
		// One string for the three parts: they share it (this runs on every agent request).
		ns, rest, ok1 := strings.Cut(string(raw), "\x00")
		name, uid, ok2 := strings.Cut(rest, "\x00")
		if !ok1 || !ok2 || strings.Contains(uid, "\x00") {
			err = errBadCredential
		}
		id = identity{Namespace: ns, Name: name, UID: uid}
	}
	if err != nil || id.Name == "" || id.UID == "" {
		return identity{}, errBadCredential
	}
	return id, nil
}
