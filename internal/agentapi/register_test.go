package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
)

// A registration creates a Cluster it does not find in the fleet model without reading it
// first; a Cluster that exists all the same (the model behind the store) still needs its
// credential to be registered again, and keeps its UID.
func TestRegisterExistingClusterTheModelMissesNeedsProof(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st := openTestStore(t).(*sqlite.Store)
	// A model that never follows the store: it knows no cluster.
	srv, err := New(ctx, st, fleet.New(st, fleet.Config{Logger: log}), log, testCredentials())
	if err != nil {
		t.Fatal(err)
	}
	token := createToken(t, st, "fleet-default", "t", api.RegistrationTokenSpec{})
	now := time.Now().UTC()
	spec, _ := json.Marshal(api.ClusterSpec{ClientID: "client-1"})
	existing, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: ClusterName("client-1"), UID: "uid-existing", CreationTimestamp: &now}, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	register := func(req api.RegisterRequest) *httptest.ResponseRecorder {
		body, _ := json.Marshal(req)
		r := httptest.NewRequest(http.MethodPost, api.PathRegister, bytes.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		srv.register(w, r)
		return w
	}
	if w := register(api.RegisterRequest{ClientID: "client-1"}); w.Code != http.StatusForbidden {
		t.Fatalf("registering an existing cluster without its credential: %d %s; want 403", w.Code, w.Body)
	}
	if w := register(api.RegisterRequest{ClientID: "client-2", ClusterName: ClusterName("client-1")}); w.Code != http.StatusBadRequest {
		t.Fatalf("asking for another cluster's derived name: %d %s; want 400", w.Code, w.Body)
	}
	cred := mintFor(srv, identity{Namespace: "fleet-default", Name: ClusterName("client-1"), UID: "uid-existing"})
	ctx2, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	// With its credential it passes the checks, then waits for the model (which never
	// learns it here) until the request ends.
	body, _ := json.Marshal(api.RegisterRequest{ClientID: "client-1", Credential: cred})
	r := httptest.NewRequestWithContext(ctx2, http.MethodPost, api.PathRegister, bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	srv.register(w, r)
	if w.Code == http.StatusForbidden || w.Code == http.StatusUnauthorized {
		t.Fatalf("registering an existing cluster with its credential: %d %s", w.Code, w.Body)
	}
	got, err := st.Get(ctx, store.KeyOf(existing))
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata.UID != "uid-existing" || got.Metadata.ResourceVersion != existing.Metadata.ResourceVersion {
		t.Errorf("the existing Cluster was changed: uid %s, resourceVersion %s (was %s)", got.Metadata.UID, got.Metadata.ResourceVersion, existing.Metadata.ResourceVersion)
	}
}
