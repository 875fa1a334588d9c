package agentapi

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"flotilla.dev/api"
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
type keyRing struct{ key []byte }

var keyName = store.Key{Kind: "ServerKey", Namespace: auth.SystemNamespace, Name: "agent-credentials"}

func loadKey(ctx context.Context, st store.Store) (*keyRing, error) {
	for attempt := 0; attempt < 3; attempt++ {
		obj, err := st.Get(ctx, keyName)
		if err == nil {
			var spec struct {
				Key []byte `json:"key"`
			}
			if err := json.Unmarshal(obj.Spec, &spec); err != nil || len(spec.Key) < 32 {
				return nil, errors.New("stored agent credential key is unreadable")
			}
			return &keyRing{key: spec.Key}, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("reading agent credential key: %w", err)
		}
		k := make([]byte, 32)
		rand.Read(k)
		spec, _ := json.Marshal(map[string][]byte{"key": k})
		_, err = st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: keyName.Kind},
			Metadata: api.ObjectMeta{Namespace: keyName.Namespace, Name: keyName.Name}, Spec: spec})
		if err != nil && !errors.Is(err, store.ErrAlreadyExists) {
			return nil, fmt.Errorf("creating agent credential key: %w", err)
		}
	}
	return nil, errors.New("agent credential key: gave up")
}

func (k *keyRing) mac(payload string) string {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (k *keyRing) mint(id identity) string {
	raw, _ := json.Marshal(id)
	payload := base64.RawURLEncoding.EncodeToString(raw)
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
	if !ok || !hmac.Equal([]byte(sig), []byte(k.mac(payload))) {
		return id, errBadCredential
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || json.Unmarshal(raw, &id) != nil || id.Name == "" || id.UID == "" {
		return id, errBadCredential
	}
	return id, nil
}
