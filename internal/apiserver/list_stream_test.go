package apiserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/store"
)

// failAfterFirst is a store whose lists fail once their first objects were handed out.
type failAfterFirst struct {
	store.Store
}

func (f failAfterFirst) List(ctx context.Context, opts store.ListOptions) (*store.ListResult, error) {
	res, err := f.Store.List(ctx, opts)
	if err != nil || len(res.Items) == 0 {
		return res, err
	}
	return nil, errors.New("disk gone")
}

// ignoresItems is a store that hands nothing over while it reads.
type ignoresItems struct {
	store.Store
}

func (f ignoresItems) List(ctx context.Context, opts store.ListOptions) (*store.ListResult, error) {
	opts.Items = nil
	return f.Store.List(ctx, opts)
}

// panics is a store whose lists panic.
type panics struct {
	store.Store
}

func (panics) List(context.Context, store.ListOptions) (*store.ListResult, error) {
	panic("boom")
}

// A list answer is streamed with its metadata last, and one that fails after its first
// objects went out is cut off, never ended as if whole: the client sees an error, not a
// shorter list.
func TestListStreamedAndCutOffOnFailure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := range 600 {
		o := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
			Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: fmt.Sprintf("c%03d", i), Labels: map[string]string{"n": fmt.Sprint(i)}}}
		if _, err := e.st.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	get := func(url string) (int, []byte, error) {
		req, _ := http.NewRequest(http.MethodGet, url+base+"/namespaces/fleet-default/clusters", nil)
		req.Header.Set("Authorization", "Bearer "+e.token)
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	// The same API over another store.
	serve := func(s store.Store) string {
		mux := http.NewServeMux()
		apiserver.New(s, e.auth, slog.New(slog.DiscardHandler)).Register(mux)
		hs := httptest.NewServer(mux)
		t.Cleanup(hs.Close)
		return hs.URL
	}
	st := e.st

	code, body, err := get(e.url)
	if err != nil || code != http.StatusOK {
		t.Fatalf("list: %d %v", code, err)
	}
	var list struct {
		Kind     string            `json:"kind"`
		Items    []json.RawMessage `json:"items"`
		Metadata api.ListMeta      `json:"metadata"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("the list does not decode: %v", err)
	}
	if len(list.Items) != 600 || list.Kind != "ClusterList" || list.Metadata.ResourceVersion == "" {
		t.Fatalf("%s of %d items, resourceVersion %q", list.Kind, len(list.Items), list.Metadata.ResourceVersion)
	}

	// A store that does not hand objects over while it reads still has them all written.
	code, body, err = get(serve(ignoresItems{st}))
	if err != nil || code != http.StatusOK {
		t.Fatalf("list from a store ignoring Items: %d %v", code, err)
	}
	if err := json.Unmarshal(body, &list); err != nil || len(list.Items) != 600 {
		t.Fatalf("list from a store ignoring Items: %d items (%v)", len(list.Items), err)
	}
	// A store that panics fails the list, not the server: the next list is answered.
	url := serve(panics{st})
	if code, _, err := get(url); err == nil && code == http.StatusOK {
		t.Fatal("a list whose store panicked was answered 200")
	}
	if code, _, err := get(url); err == nil && code == http.StatusOK {
		t.Fatal("a second list whose store panicked was answered 200")
	}

	code, body, err = get(serve(failAfterFirst{st}))
	if err == nil {
		t.Fatalf("a list that failed midway was answered %d with %d bytes and no error", code, len(body))
	}
	if code != http.StatusOK || !strings.Contains(string(body), `"items":[`) {
		t.Fatalf("the list failed before its answer began: %d %q", code, body)
	}
}
