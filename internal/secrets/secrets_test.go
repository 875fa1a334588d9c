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

	"flotilla.dev/api"
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
	k, err := Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	// A second replica (or a restart) reads the same key.
	k2, err := Open(ctx, st)
	if err != nil {
		t.Fatal(err)
	}

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
