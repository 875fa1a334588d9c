package auth

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// The server's own keys (the cluster-credential signing key, the Secret encryption key) are
// never stored in the clear. The database holds them only wrapped (AES-256-GCM) by a
// key-encryption key (KEK) that lives outside it: a file with mode 0600, by default
// DATA_DIR/keys/kek, or a file or environment variable the operator gives. Read access to the
// database alone thus forges no credential and opens no Secret. Every replica on one
// PostgreSQL database must be given the same KEK.
//
// A key ring holds one active key, which signs or encrypts, and the keys it replaced, which
// still verify or decrypt for a grace period after they were retired.

const (
	// kindKeyRing is the stored, wrapped form of a key ring.
	kindKeyRing = "ServerKeyRing"
	// kindLegacyKey is how keys were stored before they were wrapped: in the clear.
	kindLegacyKey = "ServerKey"

	// KEKEnv names the environment variable that may hold the KEK (base64 of 32 bytes).
	KEKEnv = "FLOTILLA_KEY_ENCRYPTION_KEY"
	// KEKFileName is the generated KEK's file in DATA_DIR/keys.
	KEKFileName = "kek"
)

// Key is one version of a ring's key.
type Key struct {
	ID     string
	Secret []byte
	// Created is when the key was made; Retired when a newer key replaced it.
	Created time.Time
	Retired *time.Time
	// Migrated is set on a key that was moved out of the database's clear-text rows: things
	// made with it before then (credentials without a key ID or expiry) stay valid for a time.
	Migrated *time.Time
}

// KeysConfig says where the KEK comes from and how long retired keys stay valid.
type KeysConfig struct {
	Store store.Store
	// DataDir holds keys/kek when no KEK is given otherwise.
	DataDir string
	// KEKFile is a file holding the KEK (base64 of 32 bytes); KEK is the value itself (from
	// the environment). KEKFile wins.
	KEKFile string
	KEK     string
	// Grace is how long a retired key still verifies and decrypts.
	Grace  time.Duration
	Logger *slog.Logger
	Now    func() time.Time
}

// Keys opens the server's key rings.
type Keys struct {
	cfg   KeysConfig
	kek   cipher.AEAD
	kekID string
}

// KEKID fingerprints a KEK, so an error can say which one the database needs.
func KEKID(kek []byte) string {
	h := sha256.Sum256(append([]byte("flotilla-kek\x00"), kek...))
	return hex.EncodeToString(h[:8])
}

// ParseKEK decodes a KEK as given in a file or the environment.
func ParseKEK(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != 32 {
		return nil, errors.New("a key-encryption key must be 32 random bytes, base64-encoded (head -c 32 /dev/urandom | base64)")
	}
	return b, nil
}

// OpenKeys finds the KEK. With none given and none in the data directory it makes one there,
// unless the database already holds keys wrapped by a KEK: then it refuses, naming the KEK
// the database needs, rather than make keys that would not match.
func OpenKeys(ctx context.Context, cfg KeysConfig) (*Keys, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var kek []byte
	var err error
	switch {
	case cfg.KEKFile != "":
		if kek, err = readKEKFile(cfg.KEKFile, cfg.Logger); err != nil {
			return nil, err
		}
	case cfg.KEK != "":
		if kek, err = ParseKEK(cfg.KEK); err != nil {
			return nil, fmt.Errorf("%s: %w", KEKEnv, err)
		}
	default:
		path := filepath.Join(cfg.DataDir, "keys", KEKFileName)
		kek, err = readKEKFile(path, cfg.Logger)
		if errors.Is(err, os.ErrNotExist) {
			kek, err = newKEKFile(ctx, cfg, path)
		}
		if err != nil {
			return nil, err
		}
	}
	block, _ := aes.NewCipher(kek)
	aead, _ := cipher.NewGCM(block)
	return &Keys{cfg: cfg, kek: aead, kekID: KEKID(kek)}, nil
}

func readKEKFile(path string, log *slog.Logger) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading key-encryption key: %w", err)
		}
		return nil, fmt.Errorf("reading key-encryption key %s: %w", path, err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the key-encryption key file is readable by others; make it mode 0600", "file", path, "mode", fi.Mode().Perm().String())
	}
	kek, err := ParseKEK(string(raw))
	if err != nil {
		return nil, fmt.Errorf("key-encryption key %s: %w", path, err)
	}
	return kek, nil
}

func newKEKFile(ctx context.Context, cfg KeysConfig, path string) ([]byte, error) {
	res, err := cfg.Store.List(ctx, store.ListOptions{Kind: kindKeyRing, Namespace: SystemNamespace, Limit: 1})
	if err != nil {
		return nil, fmt.Errorf("looking for stored keys: %w", err)
	}
	if len(res.Items) > 0 {
		var ring struct {
			Spec ringSpec `json:"spec"`
		}
		json.Unmarshal(res.Items[0], &ring)
		return nil, fmt.Errorf("the database holds keys wrapped by key-encryption key %s, and this server has none: "+
			"give it the same key with --key-encryption-key-file or %s (another replica keeps it in DATA_DIR/keys/%s)",
			ring.Spec.KEK, KEKEnv, KEKFileName)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the key directory: %w", err)
	}
	// O_EXCL: two servers on one data directory must not each make one.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return readKEKFile(path, cfg.Logger)
	}
	if err != nil {
		return nil, fmt.Errorf("creating the key-encryption key: %w", err)
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(kek) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("writing the key-encryption key: %w", err)
	}
	cfg.Logger.Info("created the key-encryption key; keep it with backups of the database, and give every replica the same one", "file", path, "id", KEKID(kek))
	return kek, nil
}

// ringSpec is a stored key ring: its keys wrapped by the KEK named.
type ringSpec struct {
	KEK  string      `json:"kek"`
	Keys []storedKey `json:"keys"`
}

type storedKey struct {
	ID       string     `json:"id"`
	Wrapped  string     `json:"wrapped"`
	Created  time.Time  `json:"created"`
	Retired  *time.Time `json:"retired,omitempty"`
	Migrated *time.Time `json:"migrated,omitempty"`
}

// Ring is one named key ring, loaded in memory; Reload picks up another replica's rotation.
type Ring struct {
	name  string
	keys  *Keys // nil for an ephemeral ring
	grace time.Duration
	now   func() time.Time

	state atomic.Pointer[ringState]
	// mu serialises reloads and rotations of this process.
	mu         sync.Mutex
	lastReload atomic.Int64
}

type ringState struct {
	rv   string
	keys []Key // the active key first
}

func (k *Keys) ringKey(name string) store.Key {
	return store.Key{Kind: kindKeyRing, Namespace: SystemNamespace, Name: name}
}

func (k *Keys) wrapAAD(ring, id string) []byte { return []byte("flotilla key " + ring + "/" + id) }

func (k *Keys) wrap(ring string, key Key) storedKey {
	nonce := make([]byte, k.kek.NonceSize())
	rand.Read(nonce)
	ct := k.kek.Seal(nonce, nonce, key.Secret, k.wrapAAD(ring, key.ID))
	return storedKey{ID: key.ID, Wrapped: base64.StdEncoding.EncodeToString(ct), Created: key.Created, Retired: key.Retired, Migrated: key.Migrated}
}

func (k *Keys) unwrap(ring string, spec ringSpec) ([]Key, error) {
	if spec.KEK != k.kekID {
		return nil, fmt.Errorf("key ring %s is wrapped by key-encryption key %s, not this server's %s: give every replica the same key-encryption key", ring, spec.KEK, k.kekID)
	}
	out := make([]Key, 0, len(spec.Keys))
	for _, sk := range spec.Keys {
		raw, err := base64.StdEncoding.DecodeString(sk.Wrapped)
		n := k.kek.NonceSize()
		if err != nil || len(raw) < n {
			return nil, fmt.Errorf("key ring %s: key %s is malformed", ring, sk.ID)
		}
		secret, err := k.kek.Open(nil, raw[:n], raw[n:], k.wrapAAD(ring, sk.ID))
		if err != nil || len(secret) != 32 {
			return nil, fmt.Errorf("key ring %s: key %s does not unwrap with key-encryption key %s", ring, sk.ID, k.kekID)
		}
		out = append(out, Key{ID: sk.ID, Secret: secret, Created: sk.Created, Retired: sk.Retired, Migrated: sk.Migrated})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("key ring %s holds no key", ring)
	}
	return out, nil
}

func newKey(now time.Time) Key {
	id := make([]byte, 6)
	secret := make([]byte, 32)
	rand.Read(id)
	rand.Read(secret)
	return Key{ID: hex.EncodeToString(id), Secret: secret, Created: now.UTC().Truncate(time.Second)}
}

// Ring loads the named ring, creating it on first use. A key still kept in the clear in the
// database (as servers before wrapped keys stored it) becomes the ring's first key and its
// clear-text row is deleted.
func (k *Keys) Ring(ctx context.Context, name string) (*Ring, error) {
	r := &Ring{name: name, keys: k, grace: k.cfg.Grace, now: k.cfg.Now}
	legacyKey := store.Key{Kind: kindLegacyKey, Namespace: SystemNamespace, Name: name}
	for attempt := 0; attempt < 3; attempt++ {
		obj, err := k.cfg.Store.Get(ctx, k.ringKey(name))
		if err == nil {
			if err := r.set(obj); err != nil {
				return nil, err
			}
			// A start that stopped between storing the ring and deleting the old row.
			if _, err := k.cfg.Store.Delete(ctx, legacyKey, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("removing the clear-text key %s from the database: %w", name, err)
			}
			return r, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("reading key ring %s: %w", name, err)
		}
		now := k.cfg.Now()
		key := newKey(now)
		stored := []storedKey{k.wrap(name, key)}
		var migrated *Key
		old, err := k.cfg.Store.Get(ctx, legacyKey)
		switch {
		case err == nil:
			var spec struct {
				Key []byte `json:"key"`
			}
			if err := json.Unmarshal(old.Spec, &spec); err != nil || len(spec.Key) != 32 {
				return nil, fmt.Errorf("the clear-text key %s in the database is unreadable", name)
			}
			// The clear-text key is in every backup and copy of the database made so far:
			// it is retired at once (it still verifies and opens what it made for the grace
			// period) and a new key, never written in the clear, becomes the active one.
			m := now.UTC().Truncate(time.Second)
			migrated = &Key{ID: newKey(now).ID, Secret: spec.Key, Created: m, Retired: &m, Migrated: &m}
			stored = append(stored, k.wrap(name, *migrated))
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("reading key %s: %w", name, err)
		}
		raw, _ := json.Marshal(ringSpec{KEK: k.kekID, Keys: stored})
		_, err = k.cfg.Store.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kindKeyRing},
			Metadata: api.ObjectMeta{Namespace: SystemNamespace, Name: name}, Spec: raw})
		if err != nil && !errors.Is(err, store.ErrAlreadyExists) {
			return nil, fmt.Errorf("storing key ring %s: %w", name, err)
		}
		if err == nil && migrated != nil {
			k.cfg.Logger.Info("retired the key kept in the clear in the database and made a new one, stored wrapped by the key-encryption key", "key", name, "grace", k.cfg.Grace)
		}
		// Read it back (another replica may have made it first) and drop the old row.
	}
	return nil, fmt.Errorf("key ring %s: gave up", name)
}

func (r *Ring) set(obj *api.Object) error {
	var spec ringSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return fmt.Errorf("key ring %s is unreadable: %w", r.name, err)
	}
	keys, err := r.keys.unwrap(r.name, spec)
	if err != nil {
		return err
	}
	r.state.Store(&ringState{rv: obj.Metadata.ResourceVersion, keys: keys})
	return nil
}

// EphemeralRing returns a ring whose keys live only in memory: for tests and tools that keep
// nothing. Rotated-out keys stay valid for grace.
func EphemeralRing(name string, grace time.Duration) *Ring {
	r := &Ring{name: name, now: time.Now, grace: grace}
	r.state.Store(&ringState{keys: []Key{newKey(time.Now())}})
	return r
}

// Name is the ring's name.
func (r *Ring) Name() string { return r.name }

// Active returns the key that signs and encrypts.
func (r *Ring) Active() Key { return r.state.Load().keys[0] }

// Lookup returns the key with id if it still verifies: active, or retired less than the
// grace period ago.
func (r *Ring) Lookup(id string) (Key, bool) {
	for _, k := range r.state.Load().keys {
		if k.ID == id {
			return k, r.valid(k, r.now())
		}
	}
	return Key{}, false
}

// Valid returns every key that still verifies, the active one first.
func (r *Ring) Valid() []Key {
	now := r.now()
	var out []Key
	for _, k := range r.state.Load().keys {
		if r.valid(k, now) {
			out = append(out, k)
		}
	}
	return out
}

func (r *Ring) valid(k Key, now time.Time) bool {
	return k.Retired == nil || now.Before(k.Retired.Add(r.grace))
}

// Grace is how long a retired key stays valid.
func (r *Ring) Grace() time.Duration { return r.grace }

// LimitGrace shortens the ring's grace to d, for a ring whose sealed values live minutes
// (OIDC login states): a rotated-out key then stops opening them minutes later, not after
// the credentials' grace. Call it before the ring is used.
func (r *Ring) LimitGrace(d time.Duration) {
	if d > 0 && d < r.grace {
		r.grace = d
	}
}

// Reload reads the ring again if it changed in the store (another replica rotated it).
func (r *Ring) Reload(ctx context.Context) error {
	if r.keys == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refreshLocked(ctx)
}

// refreshLocked is Reload with r.mu held.
func (r *Ring) refreshLocked(ctx context.Context) error {
	// Marked once read: callers that came while it was read wait for it (ReloadSoon).
	obj, err := r.keys.cfg.Store.Get(ctx, r.keys.ringKey(r.name))
	r.lastReload.Store(r.now().UnixNano())
	if err != nil {
		return fmt.Errorf("reading key ring %s: %w", r.name, err)
	}
	if obj.Metadata.ResourceVersion == r.state.Load().rv {
		return nil
	}
	return r.set(obj)
}

// ReloadSoon reloads the ring unless it was reloaded less than a second ago: for a caller
// that met a key ID it does not know, which may be a rotation by another replica or junk.
// Callers arriving together (many requests naming one unknown key) wait for one reload and
// look again; they do not each read the store.
func (r *Ring) ReloadSoon(ctx context.Context) bool {
	if r.keys == nil || r.now().UnixNano()-r.lastReload.Load() < int64(time.Second) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.now().UnixNano()-r.lastReload.Load() < int64(time.Second) {
		return true // reloaded while this caller waited
	}
	return r.refreshLocked(ctx) == nil
}

// Rotate makes a new active key. The previous one is retired: it still verifies and decrypts
// for the grace period. Keys retired longer ago than that are dropped.
func (r *Ring) Rotate(ctx context.Context) (Key, error) {
	if r.keys == nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.rotateIn(nil)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for attempt := 0; attempt < 5; attempt++ {
		obj, err := r.keys.cfg.Store.Get(ctx, r.keys.ringKey(r.name))
		if err != nil {
			return Key{}, fmt.Errorf("reading key ring %s: %w", r.name, err)
		}
		if err := r.set(obj); err != nil {
			return Key{}, err
		}
		key, err := r.rotateIn(obj)
		if err != nil {
			return Key{}, err
		}
		_, err = r.keys.cfg.Store.Update(ctx, obj)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Key{}, fmt.Errorf("storing key ring %s: %w", r.name, err)
		}
		if err := r.reloadLocked(ctx); err != nil {
			return Key{}, err
		}
		return key, nil
	}
	return Key{}, fmt.Errorf("rotating key ring %s: too many concurrent changes; try again", r.name)
}

func (r *Ring) reloadLocked(ctx context.Context) error {
	obj, err := r.keys.cfg.Store.Get(ctx, r.keys.ringKey(r.name))
	if err != nil {
		return fmt.Errorf("reading key ring %s: %w", r.name, err)
	}
	return r.set(obj)
}

// rotateIn computes the rotated ring from the loaded state; with obj, it writes it into
// obj's spec, else straight into memory.
func (r *Ring) rotateIn(obj *api.Object) (Key, error) {
	now := r.now()
	key := newKey(now)
	keys := []Key{key}
	for _, k := range r.state.Load().keys {
		if k.Retired == nil {
			t := now.UTC().Truncate(time.Second)
			k.Retired = &t
		}
		if r.valid(k, now) {
			keys = append(keys, k)
		}
	}
	if obj == nil {
		r.state.Store(&ringState{keys: keys})
		return key, nil
	}
	spec := ringSpec{KEK: r.keys.kekID}
	for _, k := range keys {
		spec.Keys = append(spec.Keys, r.keys.wrap(r.name, k))
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return Key{}, err
	}
	obj.Spec = raw
	return key, nil
}

// Prune drops keys retired longer ago than the grace period from the store.
func (r *Ring) Prune(ctx context.Context) error {
	if r.keys == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	st := r.state.Load()
	if !slices.ContainsFunc(st.keys, func(k Key) bool { return !r.valid(k, now) }) {
		return nil
	}
	obj, err := r.keys.cfg.Store.Get(ctx, r.keys.ringKey(r.name))
	if err != nil {
		return fmt.Errorf("reading key ring %s: %w", r.name, err)
	}
	if err := r.set(obj); err != nil {
		return err
	}
	spec := ringSpec{KEK: r.keys.kekID}
	for _, k := range r.state.Load().keys {
		if r.valid(k, now) {
			spec.Keys = append(spec.Keys, r.keys.wrap(r.name, k))
		}
	}
	obj.Spec, _ = json.Marshal(spec)
	if _, err := r.keys.cfg.Store.Update(ctx, obj); err != nil && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("storing key ring %s: %w", r.name, err)
	}
	return r.reloadLocked(ctx)
}

// Follow reloads the ring every interval and prunes keys past their grace, until ctx ends.
func (r *Ring) Follow(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if r.keys == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.Reload(ctx); err != nil && ctx.Err() == nil {
			log.Warn("reloading keys", "ring", r.name, "err", err)
			continue
		}
		if err := r.Prune(ctx); err != nil && ctx.Err() == nil {
			log.Warn("dropping expired keys", "ring", r.name, "err", err)
		}
	}
}
