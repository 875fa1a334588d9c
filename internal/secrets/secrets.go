// Package secrets keeps the values of Secret objects encrypted at rest and out of every API
// response. It seals a Secret's data with AES-256-GCM under the server's Secret key (an
// auth.Ring: stored only wrapped by the key-encryption key, shared by every replica),
// redacts values in what the API returns, and decrypts them for the server's own
// controllers (git and Helm credentials, webhook secrets). When the key is rotated, Secrets
// are sealed again under the new key in the background. Only the server imports it.
package secrets

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// Keeper seals, redacts and opens Secret values. It implements the API server's hooks for
// the Secret kind, including its response filter.
type Keeper struct {
	st   store.Store
	ring *auth.Ring
	// aeads keeps one cipher per key ID. Copied on write; read without a lock.
	aeads atomic.Pointer[map[string]cipher.AEAD]
	mu    sync.Mutex
	// rotated wakes the re-encryption loop.
	rotated chan struct{}
}

// The sealed format: "v2:" + key ID + ":" + base64(nonce || ciphertext). "v1:" + base64(…)
// is the format from before keys rotated: it opens with a key migrated out of the database.
const (
	sealedPrefix   = "v2:"
	sealedPrefixV1 = "v1:"
)

// New returns a Keeper that seals with ring's active key and opens with any of its keys
// still in their grace period.
func New(st store.Store, ring *auth.Ring) *Keeper {
	return &Keeper{st: st, ring: ring, rotated: make(chan struct{}, 1)}
}

// Open returns a Keeper whose key lives only in memory: for tests and tools that keep no
// Secret beyond their run. The server uses New with its stored key ring.
func Open(_ context.Context, st store.Store) (*Keeper, error) {
	return New(st, auth.EphemeralRing("secret-encryption", 24*time.Hour)), nil
}

func (k *Keeper) aead(key auth.Key) cipher.AEAD {
	if m := k.aeads.Load(); m != nil {
		if a := (*m)[key.ID]; a != nil {
			return a
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	next := map[string]cipher.AEAD{}
	if old := k.aeads.Load(); old != nil {
		for id, a := range *old {
			if _, ok := k.ring.Lookup(id); ok {
				next[id] = a
			}
		}
	}
	block, _ := aes.NewCipher(key.Secret) // keys are 32 bytes: AES-256
	a, _ := cipher.NewGCM(block)
	next[key.ID] = a
	k.aeads.Store(&next)
	return a
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
	return k.sealBytes(m, plain), nil
}

func (k *Keeper) sealBytes(m api.ObjectMeta, plain []byte) string {
	key := k.ring.Active()
	a := k.aead(key)
	nonce := make([]byte, a.NonceSize())
	rand.Read(nonce)
	// The object's name is bound to its ciphertext, so sealed values cannot be moved to
	// another Secret.
	out := a.Seal(nonce, nonce, plain, aad(m))
	return sealedPrefix + key.ID + ":" + base64.StdEncoding.EncodeToString(out)
}

// sealedKey returns the ID of the key sealed was made with ("" for the old format).
func sealedKey(sealed string) string {
	rest, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, ":")
	return id
}

func (k *Keeper) openBytes(m api.ObjectMeta, sealed string) ([]byte, error) {
	malformed := fmt.Errorf("secret %s/%s: sealed data is malformed", m.Namespace, m.Name)
	var keys []auth.Key
	var body string
	if rest, ok := strings.CutPrefix(sealed, sealedPrefix); ok {
		id, b, ok := strings.Cut(rest, ":")
		if !ok {
			return nil, malformed
		}
		key, ok := k.ring.Lookup(id)
		if !ok && k.ring.ReloadSoon(context.Background()) {
			key, ok = k.ring.Lookup(id)
		}
		if !ok {
			return nil, fmt.Errorf("secret %s/%s: sealed with key %s, which this server no longer has (retired longer ago than the grace period)", m.Namespace, m.Name, id)
		}
		keys, body = []auth.Key{key}, b
	} else if b, ok := strings.CutPrefix(sealed, sealedPrefixV1); ok {
		keys, body = k.ring.Valid(), b
	} else {
		return nil, malformed
	}
	// Strict: a sealed value has one encoding, so no altered string opens.
	raw, err := base64.StdEncoding.Strict().DecodeString(body)
	if err != nil {
		return nil, malformed
	}
	for _, key := range keys {
		a := k.aead(key)
		n := a.NonceSize()
		if len(raw) < n+a.Overhead() {
			return nil, malformed
		}
		if plain, err := a.Open(nil, raw[:n], raw[n:], aad(m)); err == nil {
			return plain, nil
		}
	}
	return nil, fmt.Errorf("secret %s/%s: cannot decrypt its data with this server's keys", m.Namespace, m.Name)
}

func (k *Keeper) open(m api.ObjectMeta, sealed string) (map[string][]byte, error) {
	data := map[string][]byte{}
	if sealed == "" {
		return data, nil
	}
	plain, err := k.openBytes(m, sealed)
	if err != nil {
		return nil, err
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
	if old == nil || oldSpec.Type != spec.Type || !maps.EqualFunc(data, oldData, bytes.Equal) || sealedKey(sealed) != k.ring.Active().ID {
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

// Rotate makes a new Secret key and wakes the re-encryption of every Secret under it. The
// old key still opens Secrets until they are all sealed again (and for the grace period).
func (k *Keeper) Rotate(ctx context.Context) (auth.Key, error) {
	key, err := k.ring.Rotate(ctx)
	if err != nil {
		return auth.Key{}, err
	}
	select {
	case k.rotated <- struct{}{}:
	default:
	}
	return key, nil
}

// Reencrypt seals every Secret not sealed under the active key again under it, and returns
// how many it changed. A Secret changed meanwhile is read again; one that cannot be opened is
// left as it is and reported.
func (k *Keeper) Reencrypt(ctx context.Context) (int, error) {
	active := k.ring.Active().ID
	changed := 0
	var errs []error
	opts := store.ListOptions{Kind: api.KindSecret, Limit: 500}
	for {
		res, err := k.st.List(ctx, opts)
		if err != nil {
			return changed, fmt.Errorf("listing secrets: %w", err)
		}
		for _, raw := range res.Items {
			obj, err := store.Decode(raw)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			var spec api.SecretSpec
			if json.Unmarshal(obj.Spec, &spec) != nil || spec.Sealed == "" || sealedKey(spec.Sealed) == active {
				continue
			}
			done, err := k.reseal(ctx, store.KeyOf(obj), active)
			if err != nil {
				errs = append(errs, err)
			}
			if done {
				changed++
			}
		}
		if res.Continue == "" {
			return changed, errors.Join(errs...)
		}
		opts.Continue = res.Continue
	}
}

// reseal seals one Secret again under the active key, retrying on concurrent changes.
func (k *Keeper) reseal(ctx context.Context, key store.Key, active string) (bool, error) {
	for attempt := 0; attempt < 5; attempt++ {
		obj, err := k.st.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		var spec api.SecretSpec
		if err := json.Unmarshal(obj.Spec, &spec); err != nil {
			return false, fmt.Errorf("secret %s/%s: %w", key.Namespace, key.Name, err)
		}
		if spec.Sealed == "" || sealedKey(spec.Sealed) == active {
			return false, nil
		}
		plain, err := k.openBytes(obj.Metadata, spec.Sealed)
		if err != nil {
			return false, err
		}
		spec.Sealed = k.sealBytes(obj.Metadata, plain)
		obj.Spec, _ = json.Marshal(spec)
		_, err = k.st.Update(ctx, obj)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return err == nil, err
	}
	return false, fmt.Errorf("secret %s/%s: changed too often to re-encrypt; will try again", key.Namespace, key.Name)
}

// Run re-encrypts Secrets at start and after every rotation, and follows rotations made by
// other replicas, until ctx ends.
func (k *Keeper) Run(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	last := ""
	for {
		if active := k.ring.Active().ID; active != last {
			n, err := k.Reencrypt(ctx)
			if n > 0 {
				log.Info("re-encrypted secrets under the new key", "secrets", n, "key", active)
			}
			if err != nil && ctx.Err() == nil {
				log.Warn("re-encrypting secrets", "err", err)
			} else {
				last = active
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-k.rotated:
		case <-t.C:
			if err := k.ring.Reload(ctx); err != nil && ctx.Err() == nil {
				log.Warn("reloading the secret key", "err", err)
			}
			// Keys are dropped only once no Secret needs them.
			if last != k.ring.Active().ID {
				continue
			}
			if err := k.ring.Prune(ctx); err != nil && ctx.Err() == nil {
				log.Warn("dropping expired secret keys", "err", err)
			}
		}
	}
}
