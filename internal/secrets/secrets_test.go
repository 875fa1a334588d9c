package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

func openStore(t *testing.T) store.Store {
	t.Helper()
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// openKeeper opens a Keeper with the server's stored keys, the KEK in dir.
func openKeeper(t testing.TB, st store.Store, dir string) *Keeper {
	t.Helper()
	keys, err := auth.OpenKeys(context.Background(), auth.KeysConfig{Store: st, DataDir: dir, Grace: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keys.Ring(context.Background(), "secret-encryption")
	if err != nil {
		t.Fatal(err)
	}
	return New(st, ring)
}

func secretObject(name string, spec api.SecretSpec) *api.Object {
	raw, _ := json.Marshal(spec)
	return &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
		Metadata: api.ObjectMeta{Name: name, Namespace: "ns"}, Spec: raw}
}

func specOf(t *testing.T, o *api.Object) api.SecretSpec {
	t.Helper()
	var s api.SecretSpec
	if err := json.Unmarshal(o.Spec, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealOpenRedact(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	dir := t.TempDir()
	k := openKeeper(t, st, dir)
	// A second replica (or a restart) reads the same key.
	k2 := openKeeper(t, st, dir)

	obj := secretObject("git", api.SecretSpec{Type: api.SecretTypeBasicAuth, Data: map[string]string{"username": "ZGVwbG95"}, StringData: map[string]string{"password": "pw-123456"}})
	if err := k.BeforeCreate(ctx, obj, false); err != nil {
		t.Fatal(err)
	}
	stored := specOf(t, obj)
	if strings.Contains(string(obj.Spec), "pw-123456") || strings.Contains(string(obj.Spec), "ZGVwbG95") || !strings.HasPrefix(stored.Sealed, sealedPrefix) {
		t.Fatalf("stored spec %s: want values sealed", obj.Spec)
	}
	if stored.Data["password"] != api.SecretRedacted || stored.StringData != nil {
		t.Errorf("stored data %v: want keys with redacted values, no stringData", stored.Data)
	}
	if _, err := st.Create(ctx, obj); err != nil {
		t.Fatal(err)
	}
	got, err := k2.Get(ctx, "ns", "git")
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != api.SecretTypeBasicAuth || string(got.Data["username"]) != "deploy" || string(got.Data["password"]) != "pw-123456" {
		t.Errorf("Get = %+v", got)
	}

	// The response filter drops the sealed data.
	resp := obj.DeepCopy()
	k.FilterResponse(resp)
	if rs := specOf(t, resp); rs.Sealed != "" || rs.Data["username"] != api.SecretRedacted || len(rs.Data) != 2 {
		t.Errorf("filtered %s", resp.Spec)
	}

	// Updating with redacted values keeps them, and reuses the sealed bytes when nothing
	// changed (so re-applying reports "unchanged").
	upd := secretObject("git", api.SecretSpec{Type: api.SecretTypeBasicAuth, Data: map[string]string{"username": api.SecretRedacted, "password": api.SecretRedacted}})
	if err := k.BeforeUpdate(ctx, obj, upd, false); err != nil {
		t.Fatal(err)
	}
	if specOf(t, upd).Sealed != stored.Sealed {
		t.Error("an unchanged secret was sealed again")
	}
	upd = secretObject("git", api.SecretSpec{Type: api.SecretTypeBasicAuth, Data: map[string]string{"username": api.SecretRedacted}, StringData: map[string]string{"password": "new-pw-789"}})
	if err := k.BeforeUpdate(ctx, obj, upd, false); err != nil {
		t.Fatal(err)
	}
	data, err := k.open(upd.Metadata, specOf(t, upd).Sealed)
	if err != nil || string(data["username"]) != "deploy" || string(data["password"]) != "new-pw-789" {
		t.Errorf("after update: %q, %v", data, err)
	}

	// Sealed data is bound to its Secret's name: copied to another, it does not open.
	moved := obj.DeepCopy()
	moved.Metadata.Name = "other"
	if _, err := st.Create(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Get(ctx, "ns", "other"); err == nil || !strings.Contains(err.Error(), "cannot decrypt") {
		t.Errorf("moved sealed data: %v", err)
	}
	if _, err := k.Get(ctx, "ns", "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing secret: %v", err)
	}
}

// TestRotationReencrypts: after a rotation, Secrets sealed under the old key still open,
// and Reencrypt seals them under the new one; a second run has nothing to do.
func TestRotationReencrypts(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	k := openKeeper(t, st, t.TempDir())
	for _, name := range []string{"a", "b", "c"} {
		obj := secretObject(name, api.SecretSpec{StringData: map[string]string{"v": "value-" + name}})
		if err := k.BeforeCreate(ctx, obj, false); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	old := k.ring.Active().ID
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := k.Get(ctx, "ns", "b"); err != nil || string(got.Data["v"]) != "value-b" {
		t.Fatalf("a Secret of the old key after rotation: %+v, %v", got, err)
	}
	n, err := k.Reencrypt(ctx)
	if err != nil || n != 3 {
		t.Fatalf("Reencrypt = %d, %v; want 3", n, err)
	}
	for _, name := range []string{"a", "b", "c"} {
		o, _ := st.Get(ctx, store.Key{Kind: api.KindSecret, Namespace: "ns", Name: name})
		if id := sealedKey(specOf(t, o).Sealed); id == old || id != k.ring.Active().ID {
			t.Errorf("secret %s sealed with key %s; want the new %s", name, id, k.ring.Active().ID)
		}
		if got, err := k.Get(ctx, "ns", name); err != nil || string(got.Data["v"]) != "value-"+name {
			t.Errorf("secret %s after re-encryption: %+v, %v", name, got, err)
		}
	}
	if n, err := k.Reencrypt(ctx); err != nil || n != 0 {
		t.Errorf("second Reencrypt = %d, %v; want 0", n, err)
	}
}

// FuzzSealOpen: opening what was sealed gives it back; a sealed value changed in any byte, or
// sealed for another Secret, never opens; garbage never panics and never opens.
func FuzzSealOpen(f *testing.F) {
	k, _ := Open(context.Background(), nil)
	f.Add([]byte("hunter2"), "git", 0, byte(1), "v2:abc:AAAA")
	f.Add([]byte{}, "x", 5, byte(0x80), "v1:"+strings.Repeat("A", 40))
	f.Add([]byte("\x00\xff binary"), "a-b.c", 30, byte(0xff), "")
	f.Add([]byte(strings.Repeat("long ", 200)), "n", -3, byte(4), "v2:"+k.ring.Active().ID+":not base64!")
	f.Fuzz(func(t *testing.T, plain []byte, name string, pos int, flip byte, garbage string) {
		m := api.ObjectMeta{Namespace: "ns", Name: name}
		sealed := k.sealBytes(m, plain)
		got, err := k.openBytes(m, sealed)
		if err != nil || string(got) != string(plain) {
			t.Fatalf("open(seal(%q)) = %q, %v", plain, got, err)
		}
		if _, err := k.openBytes(api.ObjectMeta{Namespace: "ns", Name: name + "x"}, sealed); err == nil {
			t.Fatalf("sealed data opened for another Secret")
		}
		if pos < 0 {
			pos = -pos
		}
		if flip != 0 {
			b := []byte(sealed)
			b[pos%len(b)] ^= flip
			if out, err := k.openBytes(m, string(b)); err == nil {
				t.Fatalf("tampered %q (byte %d ^ %#x) opened as %q", b, pos%len(b), flip, out)
			}
		}
		if garbage != sealed {
			if out, err := k.openBytes(m, garbage); err == nil {
				t.Fatalf("garbage %q opened as %q", garbage, out)
			}
			k.open(m, garbage)
		}
	})
}
