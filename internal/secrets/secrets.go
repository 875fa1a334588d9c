// Package secrets keeps the values of Secret objects encrypted at rest and out of every API
// response. It seals a Secret's data with AES-256-GCM under a server key kept in the store
// (shared by every replica, like the agent credential key), redacts values in what the API
// returns, and decrypts them for the server's own controllers (git and Helm credentials,
// webhook secrets). Only the server imports it.
package secrets

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"strings"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// Keeper seals, redacts and opens Secret values. It implements the API server's hooks for
// the Secret kind, including its response filter.
type Keeper struct {
	st   store.Store
	aead cipher.AEAD
}

// sealedPrefix versions the sealed format: "v1:" + base64(nonce || ciphertext).
const sealedPrefix = "v1:"

// Open loads the server's secret key from st, creating it on first start.
func Open(ctx context.Context, st store.Store) (*Keeper, error) {
	key, err := auth.ServerKey(ctx, st, "secret-encryption")
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secret key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secret key: %w", err)
	}
	return &Keeper{st: st, aead: aead}, nil
}

// Secret is a Secret's type and decrypted values.
type Secret struct {
	Type string
	Data map[string][]byte
}

// Get reads and decrypts the Secret namespace/name. Errors name the secret, never a value.
func (k *Keeper) Get(ctx context.Context, namespace, name string) (*Secret, error) {
	obj, err := k.st.Get(ctx, store.Key{Kind: api.KindSecret, Namespace: namespace, Name: name})
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
	}
	var spec api.SecretSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
	}
	data, err := k.open(obj.Metadata, spec.Sealed)
	if err != nil {
		return nil, err
	}
	return &Secret{Type: spec.Type, Data: data}, nil
}

func aad(m api.ObjectMeta) []byte { return []byte(m.Namespace + "/" + m.Name) }

func (k *Keeper) seal(m api.ObjectMeta, data map[string][]byte) (string, error) {
	plain, err := json.Marshal(data)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, k.aead.NonceSize())
	rand.Read(nonce)
	// The object's name is bound to its ciphertext, so sealed values cannot be moved to
	// another Secret.
	out := k.aead.Seal(nonce, nonce, plain, aad(m))
	return sealedPrefix + base64.StdEncoding.EncodeToString(out), nil
}

func (k *Keeper) open(m api.ObjectMeta, sealed string) (map[string][]byte, error) {
	data := map[string][]byte{}
	if sealed == "" {
		return data, nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sealed, sealedPrefix))
	if err != nil || !strings.HasPrefix(sealed, sealedPrefix) || len(raw) < k.aead.NonceSize() {
		return nil, fmt.Errorf("secret %s/%s: sealed data is malformed", m.Namespace, m.Name)
	}
	n := k.aead.NonceSize()
	plain, err := k.aead.Open(nil, raw[:n], raw[n:], aad(m))
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: cannot decrypt its data with this server's key", m.Namespace, m.Name)
	}
	if err := json.Unmarshal(plain, &data); err != nil {
		return nil, fmt.Errorf("secret %s/%s: decrypted data is malformed", m.Namespace, m.Name)
	}
	return data, nil
}

// sealObject replaces obj's data and stringData with sealed values and redacted keys. A
// value given as api.SecretRedacted keeps the one stored in old.
func (k *Keeper) sealObject(obj, old *api.Object) error {
	var spec api.SecretSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return err
	}
	var (
		oldData map[string][]byte
		oldSpec api.SecretSpec
	)
	if old != nil {
		if err := json.Unmarshal(old.Spec, &oldSpec); err != nil {
			return err
		}
		var err error
		if oldData, err = k.open(old.Metadata, oldSpec.Sealed); err != nil {
			return err
		}
	}
	data := map[string][]byte{}
	for key, v := range spec.Data {
		if v == api.SecretRedacted {
			prev, ok := oldData[key]
			if !ok {
				return resource.Invalid(obj.Kind, obj.Metadata.Name, []api.StatusCause{{Field: "spec.data." + key,
					Message: api.SecretRedactedRefused}})
			}
			data[key] = prev
			continue
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return resource.Invalid(obj.Kind, obj.Metadata.Name, []api.StatusCause{{Field: "spec.data." + key, Message: "must be base64-encoded"}})
		}
		data[key] = b
	}
	for key, v := range spec.StringData {
		data[key] = []byte(v)
	}
	sealed := oldSpec.Sealed
	if old == nil || oldSpec.Type != spec.Type || !maps.EqualFunc(data, oldData, bytes.Equal) {
		var err error
		if sealed, err = k.seal(obj.Metadata, data); err != nil {
			return err
		}
	}
	spec.Data = redacted(data)
	spec.StringData = nil
	spec.Sealed = sealed
	raw, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	obj.Spec = raw
	return nil
}

func redacted[V any](m map[string]V) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for key := range m {
		out[key] = api.SecretRedacted
	}
	return out
}

// BeforeCreate seals the new Secret's values.
func (k *Keeper) BeforeCreate(_ context.Context, obj *api.Object, _ bool) error {
	return k.sealObject(obj, nil)
}

// AfterCreate does nothing: the response is filtered like every other.
func (k *Keeper) AfterCreate(context.Context, *api.Object) error { return nil }

// BeforeUpdate seals the updated values, keeping stored ones sent back redacted.
func (k *Keeper) BeforeUpdate(_ context.Context, old, obj *api.Object, _ bool) error {
	return k.sealObject(obj, old)
}

// FilterResponse shows a Secret's keys with their values redacted, and nothing sealed.
func (k *Keeper) FilterResponse(obj *api.Object) {
	var spec api.SecretSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		obj.Spec = nil
		return
	}
	keys := redacted(spec.Data)
	for key := range spec.StringData {
		if keys == nil {
			keys = map[string]string{}
		}
		keys[key] = api.SecretRedacted
	}
	obj.Spec, _ = json.Marshal(api.SecretSpec{Type: spec.Type, Data: keys})
}
