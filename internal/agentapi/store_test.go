package agentapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

func openTestStore(t testing.TB) store.Store {
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

// putLegacyKey stores a key as servers did before keys were wrapped: in the clear.
func putLegacyKey(t testing.TB, st store.Store, name string, secret []byte) {
	t.Helper()
	spec, _ := json.Marshal(map[string][]byte{"key": secret})
	if _, err := st.Create(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: "ServerKey"},
		Metadata: api.ObjectMeta{Namespace: auth.SystemNamespace, Name: name}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
}
