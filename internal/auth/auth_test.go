package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openStore(t testing.TB) store.Store {
	t.Helper()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = quiet
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// clock is a time the test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestHashAndNewToken(t *testing.T) {
	a, b := NewToken("flt_"), NewToken("flt_")
	if a == b || !strings.HasPrefix(a, "flt_") || len(a) != len("flt_")+48 {
		t.Errorf("NewToken: %q, %q; want distinct flt_ + 48 hex", a, b)
	}
	if ha := Hash(a); ha == Hash(b) || ha != Hash(a) || len(ha) != 64 || strings.Contains(Hash(a), a) {
		t.Errorf("Hash(%q) = %q", a, Hash(a))
	}
}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	a := NewAuthenticator(st)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.now = c.now
	if err := a.CreateToken(ctx, "secret-token-1", "alice", true, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.CreateToken(ctx, "short-token-2", "bob", false, time.Hour); err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate(ctx, "secret-token-1")
	if err != nil || id.User != "alice" || !id.Admin {
		t.Fatalf("Authenticate = %+v, %v", id, err)
	}
	for _, bad := range []string{"", "secret-token-2", "secret-token-1 ", "SECRET-TOKEN-1"} {
		if _, err := a.Authenticate(ctx, bad); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("Authenticate(%q) = %v, want ErrUnauthenticated", bad, err)
		}
	}
	// Only the hash is stored.
	res, _ := st.List(ctx, store.ListOptions{Kind: kindToken, Namespace: SystemNamespace})
	for _, raw := range res.Items {
		if strings.Contains(string(raw), "secret-token-1") || strings.Contains(string(raw), "short-token-2") {
			t.Errorf("a stored token holds its value: %s", raw)
		}
	}
	// Expiry: valid (and cached) before, refused after, though the cache's own TTL is longer.
	a.ttl = 10 * time.Hour
	if id, err := a.Authenticate(ctx, "short-token-2"); err != nil || id.Admin {
		t.Fatalf("bob before expiry: %+v, %v", id, err)
	}
	c.t = c.t.Add(time.Hour + time.Second)
	if _, err := a.Authenticate(ctx, "short-token-2"); !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("bob after expiry: %v, want expired", err)
	}
	if Authorize(id, "delete", "Cluster", "x") != nil || !errors.Is(Authorize(&Identity{User: "bob"}, "get", "Cluster", "x"), ErrForbidden) || Authorize(nil, "get", "Cluster", "x") == nil {
		t.Error("Authorize: admins may, others may not")
	}
}

func TestRevokeTakesEffectAtOnce(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	a := NewAuthenticator(st)
	for i, tok := range []string{"tok-a-0123456789", "tok-b-0123456789"} {
		if err := a.CreateToken(ctx, tok, []string{"alice", "ci"}[i], i == 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Authenticate(ctx, "tok-b-0123456789"); err != nil { // cached now
		t.Fatal(err)
	}
	list, err := a.ListTokens(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("ListTokens = %+v, %v", list, err)
	}
	var ci api.APIToken
	for _, tk := range list {
		if tk.User == "ci" {
			ci = tk
		}
		if raw, _ := json.Marshal(tk); strings.Contains(string(raw), Hash("tok-a-0123456789")) {
			t.Errorf("the list shows a whole hash: %s", raw)
		}
	}
	if ci.ID != Hash("tok-b-0123456789")[:tokenIDLen] || ci.Admin {
		t.Errorf("ci's token: %+v", ci)
	}
	for _, bad := range []string{"", "zz", "not-hex-at-all", strings.Repeat("0", tokenIDLen)} {
		if _, err := a.RevokeToken(ctx, bad); !errors.Is(err, ErrTokenNotFound) {
			t.Errorf("RevokeToken(%q) = %v, want ErrTokenNotFound", bad, err)
		}
	}
	if list, _ := a.ListTokens(ctx); len(list) != 2 {
		t.Errorf("a refused revocation changed the tokens: %d left", len(list))
	}
	if _, err := a.RevokeToken(ctx, ci.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(ctx, "tok-b-0123456789"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("a revoked (and cached) token: %v, want refused at once", err)
	}
	if _, err := a.Authenticate(ctx, "tok-a-0123456789"); err != nil {
		t.Errorf("the other token after a revocation: %v", err)
	}
}

// TestRevocationFromAnotherReplica: a replica whose cache holds a token drops it when the
// store's watch reports its deletion by another.
func TestRevocationFromAnotherReplica(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := openStore(t)
	one, two := NewAuthenticator(st), NewAuthenticator(st)
	if err := one.CreateToken(ctx, "shared-token-0123", "alice", true, 0); err != nil {
		t.Fatal(err)
	}
	go two.FollowRevocations(ctx, quiet)
	if _, err := two.Authenticate(ctx, "shared-token-0123"); err != nil {
		t.Fatal(err)
	}
	list, _ := one.ListTokens(ctx)
	if _, err := one.RevokeToken(ctx, list[0].ID); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := two.Authenticate(ctx, "shared-token-0123"); errors.Is(err, ErrUnauthenticated) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other replica still accepts the revoked token")
		}
	}
}

func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	a := NewAuthenticator(openStore(t))
	tok, err := a.Bootstrap(ctx, "")
	if err != nil || !strings.HasPrefix(tok, "flt_") {
		t.Fatalf("Bootstrap = %q, %v", tok, err)
	}
	if again, err := a.Bootstrap(ctx, ""); err != nil || again != "" {
		t.Errorf("second Bootstrap = %q, %v; want nothing new", again, err)
	}
	if id, err := a.Authenticate(ctx, tok); err != nil || !id.Admin {
		t.Errorf("the generated admin token: %+v, %v", id, err)
	}
}

// A bootstrap token stays in the server's file or environment across restarts: once revoked,
// it must not come back at the next start.
func TestRevokedBootstrapTokenStaysRevoked(t *testing.T) {
	ctx := context.Background()
	a := NewAuthenticator(openStore(t))
	const given = "flt_given-bootstrap-token-0123456789"
	for range 2 { // a restart with the token still configured accepts it as before
		if tok, err := a.Bootstrap(ctx, given); err != nil || tok != "" {
			t.Fatalf("Bootstrap(given) = %q, %v", tok, err)
		}
		if id, err := a.Authenticate(ctx, given); err != nil || !id.Admin {
			t.Fatalf("the given bootstrap token: %+v, %v", id, err)
		}
	}
	list, err := a.ListTokens(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListTokens = %+v, %v", list, err)
	}
	if _, err := a.RevokeToken(ctx, list[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Bootstrap(ctx, given); !errors.Is(err, ErrBootstrapRevoked) {
		t.Errorf("Bootstrap after revocation = %v, want ErrBootstrapRevoked", err)
	}
	if _, err := a.Authenticate(ctx, given); err == nil {
		t.Error("the revoked bootstrap token authenticates again after a restart")
	}
}

func openKeys(t testing.TB, st store.Store, dir string, c *clock) *Keys {
	t.Helper()
	k, err := OpenKeys(context.Background(), KeysConfig{Store: st, DataDir: dir, Grace: time.Hour, Logger: quiet, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyRingStoredWrapped(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	dir := t.TempDir()
	c := &clock{t: time.Now()}
	ring, err := openKeys(t, st, dir, c).Ring(ctx, "agent-credentials")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "keys", KEKFileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file: %v, %v; want mode 0600", fi, err)
	}
	obj, err := st.Get(ctx, store.Key{Kind: kindKeyRing, Namespace: SystemNamespace, Name: "agent-credentials"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(obj.Spec), string(ring.Active().Secret)) || strings.Contains(string(obj.Spec), b64(ring.Active().Secret)) {
		t.Error("the stored ring holds the key in the clear")
	}
	// The same KEK (a restart, a replica given it) reads the same key.
	again, err := openKeys(t, st, dir, c).Ring(ctx, "agent-credentials")
	if err != nil || again.Active().ID != ring.Active().ID || string(again.Active().Secret) != string(ring.Active().Secret) {
		t.Fatalf("reopened ring: %+v, %v", again.Active(), err)
	}
	// Another KEK is refused with a message naming both.
	other := KEKFileName + ".other"
	os.WriteFile(filepath.Join(dir, other), []byte(b64([]byte(strings.Repeat("k", 32)))), 0o600)
	k2, err := OpenKeys(ctx, KeysConfig{Store: st, KEKFile: filepath.Join(dir, other), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Ring(ctx, "agent-credentials"); err == nil || !strings.Contains(err.Error(), "same key-encryption key") {
		t.Errorf("another KEK: %v", err)
	}
	// A malformed KEK is refused with the way to make one.
	for _, bad := range []string{"", "short", b64([]byte("sixteen bytes!!!"))} {
		if _, err := OpenKeys(ctx, KeysConfig{Store: st, KEK: bad + "x", Logger: quiet}); err == nil || !strings.Contains(err.Error(), "32 random bytes") {
			t.Errorf("KEK %q: %v", bad, err)
		}
	}
}

func TestKeyRotationAndGrace(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	keys := openKeys(t, st, dir, c)
	ring, err := keys.Ring(ctx, "secret-encryption")
	if err != nil {
		t.Fatal(err)
	}
	// A replica that follows the store.
	replica, err := openKeys(t, st, dir, c).Ring(ctx, "secret-encryption")
	if err != nil {
		t.Fatal(err)
	}
	old := ring.Active()
	next, err := ring.Rotate(ctx)
	if err != nil || next.ID == old.ID || ring.Active().ID != next.ID {
		t.Fatalf("Rotate = %+v, %v", next, err)
	}
	if k, ok := ring.Lookup(old.ID); !ok || string(k.Secret) != string(old.Secret) {
		t.Error("the retired key does not verify within the grace period")
	}
	if !replica.ReloadSoon(ctx) || replica.Active().ID != next.ID {
		t.Errorf("replica after reload: active %s, want %s", replica.Active().ID, next.ID)
	}
	c.t = c.t.Add(time.Hour + time.Second)
	if _, ok := ring.Lookup(old.ID); ok {
		t.Error("the retired key still verifies after the grace period")
	}
	if len(ring.Valid()) != 1 {
		t.Errorf("%d valid keys after the grace, want 1", len(ring.Valid()))
	}
	if err := ring.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	obj, _ := st.Get(ctx, store.Key{Kind: kindKeyRing, Namespace: SystemNamespace, Name: "secret-encryption"})
	var spec ringSpec
	json.Unmarshal(obj.Spec, &spec)
	if len(spec.Keys) != 1 || spec.Keys[0].ID != next.ID {
		t.Errorf("stored keys after pruning: %+v; want only %s", spec.Keys, next.ID)
	}
}

func TestLegacyKeyMovesOut(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	spec, _ := json.Marshal(map[string][]byte{"key": secret})
	if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kindLegacyKey},
		Metadata: api.ObjectMeta{Namespace: SystemNamespace, Name: "agent-credentials"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now()}
	ring, err := openKeys(t, st, t.TempDir(), c).Ring(ctx, "agent-credentials")
	if err != nil {
		t.Fatal(err)
	}
	// The clear-text key is in every backup made before: it must not stay the active key.
	if k := ring.Active(); string(k.Secret) == string(secret) || k.Retired != nil {
		t.Errorf("active key after the move: %+v; want a new key", k)
	}
	var kept bool
	for _, k := range ring.Valid() {
		kept = kept || string(k.Secret) == string(secret) && k.Migrated != nil && k.Retired != nil
	}
	if !kept {
		t.Errorf("the old key is not kept, retired and marked migrated, for what it made: %+v", ring.Valid())
	}
	if _, err := st.Get(ctx, store.Key{Kind: kindLegacyKey, Namespace: SystemNamespace, Name: "agent-credentials"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the clear-text row after the move: %v, want gone", err)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// LimitGrace only shortens a ring's grace: a rotated-out key stops opening once it passed.
func TestLimitGrace(t *testing.T) {
	r := EphemeralRing("short", time.Hour)
	old := r.Active()
	r.LimitGrace(2 * time.Hour)
	r.LimitGrace(0)
	if r.Grace() != time.Hour {
		t.Fatalf("grace %v after lengthening, want 1h", r.Grace())
	}
	r.LimitGrace(time.Minute)
	if _, err := r.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup(old.ID); !ok {
		t.Error("the retired key does not open within the grace")
	}
	r.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if _, ok := r.Lookup(old.ID); ok {
		t.Error("the retired key still opens after a minute's grace")
	}
}

// slowStore counts Get calls, which take a while.
type slowStore struct {
	store.Store
	gets atomic.Int64
	slow atomic.Bool
}

func (s *slowStore) Get(ctx context.Context, k store.Key) (*api.Object, error) {
	s.gets.Add(1)
	if s.slow.Load() {
		time.Sleep(50 * time.Millisecond)
	}
	return s.Store.Get(ctx, k)
}

// Many requests naming another replica's new key at once cost one read of the store, and
// every one of them finds the key after it (not only the one that read).
func TestReloadSoonReadsOnceForMany(t *testing.T) {
	ctx := context.Background()
	st := &slowStore{Store: openStore(t)}
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	ring, err := openKeys(t, st, dir, c).Ring(ctx, "oidc-login")
	if err != nil {
		t.Fatal(err)
	}
	other, err := openKeys(t, st, dir, c).Ring(ctx, "oidc-login")
	if err != nil {
		t.Fatal(err)
	}
	next, err := other.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(time.Minute)
	st.slow.Store(true)
	before := st.gets.Load()
	var wg sync.WaitGroup
	var found atomic.Int64
	start := make(chan struct{})
	for range 20 {
		wg.Go(func() {
			<-start
			if _, ok := ring.Lookup(next.ID); ok || ring.ReloadSoon(ctx) {
				if _, ok := ring.Lookup(next.ID); ok {
					found.Add(1)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if n := st.gets.Load() - before; n != 1 {
		t.Errorf("%d reads of the store for 20 requests at once, want 1", n)
	}
	if n := found.Load(); n != 20 {
		t.Errorf("%d of 20 requests found the new key", n)
	}
}
