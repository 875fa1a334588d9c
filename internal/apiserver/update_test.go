package apiserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// An update without a resourceVersion must not fail because the server writes status to
// the same object meanwhile: under a stream of status writes, no unconditional update
// answers 409, and none loses the status or the spec written.
func TestUnconditionalUpdateUnderStatusWrites(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := sqlite.Open(ctx, t.TempDir(), sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := auth.NewAuthenticator(st)
	const token = "test-admin-token"
	if err := a.CreateToken(ctx, token, "admin", true, 0); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	apiserver.New(st, a, log).Register(mux)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	url := hs.URL + "/apis/" + api.Group + "/" + api.Version + "/namespaces/fleet-default/clustergroups/g"
	put := func(spec string) (int, string) {
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"name": "g"}, "spec": json.RawMessage(spec)})
		req, _ := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(msg)
	}
	// A merge patch (kubectl patch, kubectl apply of a change) is unconditional too.
	patch := func(spec string) (int, string) {
		body, _ := json.Marshal(map[string]any{"spec": json.RawMessage(spec)})
		req, _ := http.NewRequest(http.MethodPatch, url, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/merge-patch+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(msg)
	}
	spec := func(i int) string { return fmt.Sprintf(`{"selector":{"matchLabels":{"n":"v%d"}}}`, i) }
	if code, msg := put(spec(0)); code != http.StatusCreated {
		t.Fatalf("creating: %d %s", code, msg)
	}

	// Status writers as the fleet model's: read, set status, write at that version.
	key := store.Key{Kind: api.KindClusterGroup, Namespace: "fleet-default", Name: "g"}
	var statusWrites atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				obj, err := st.Get(ctx, key)
				if err != nil {
					return
				}
				obj.Status = json.RawMessage(fmt.Sprintf(`{"clusterCount":%d,"nonReadyClusterCount":%d}`, i, w))
				if _, err := st.Update(ctx, obj); err == nil {
					statusWrites.Add(1)
				} else if !errors.Is(err, store.ErrConflict) && ctx.Err() == nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	const updates = 200
	conflicts := 0
	var updaters sync.WaitGroup
	var mu sync.Mutex
	for u := range 2 {
		updaters.Add(1)
		go func() {
			defer updaters.Done()
			for i := u; i < updates; i += 2 {
				// Let a status write land between two updates, as the model's would.
				for n := statusWrites.Load(); statusWrites.Load() == n; {
					time.Sleep(time.Millisecond)
				}
				write := put
				if u == 1 {
					write = patch
				}
				code, msg := write(spec(i + 1))
				if code == http.StatusConflict {
					mu.Lock()
					conflicts++
					mu.Unlock()
				} else if code != http.StatusOK {
					t.Errorf("update %d: %d %s", i, code, msg)
				}
			}
		}()
	}
	updaters.Wait()
	cancel()
	wg.Wait()
	t.Logf("%d unconditional updates and patches beside %d status writes", updates, statusWrites.Load())
	if conflicts > 0 {
		t.Errorf("%d of %d unconditional updates and patches answered 409 Conflict", conflicts, updates)
	}
	obj, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(obj.Status) == 0 {
		t.Error("the stored status was lost")
	}
	if want := int64(updates + 1); conflicts == 0 && obj.Metadata.Generation != want {
		t.Errorf("generation %d after %d spec changes, want %d", obj.Metadata.Generation, updates, want)
	}
}
