package client_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// A poll asks for the archives sent with the state, and an agent reads at most
// MaxDesiredBytes of a desired state and MaxContentBytes of an archive: a server (or
// whoever answers in its place) cannot make an edge agent hold without bound.
func TestAgentReadsBounded(t *testing.T) {
	const digest = "sha256:0123"
	var size int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case api.PathDesired:
			if r.URL.Query().Get("inline") != "1" {
				http.Error(w, "no inline=1", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"revision":1,"deployments":[{"bundle":"ns/`)
			io.Copy(w, io.LimitReader(repeat('a'), size))
			io.WriteString(w, `"}]}`)
		case api.PathContent + digest:
			io.Copy(w, io.LimitReader(repeat('z'), size))
		}
	}))
	defer srv.Close()
	c, err := client.New(client.Config{Server: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	size = 1000
	if ds, _, _, err := c.Desired(ctx, 0); err != nil || len(ds.Deployments) != 1 {
		t.Fatalf("a small desired state: %+v, %v", ds, err)
	}
	if data, err := c.Content(ctx, digest); err != nil || len(data) != 1000 {
		t.Fatalf("a small archive: %d bytes, %v", len(data), err)
	}
	size = api.MaxDesiredBytes
	if _, _, _, err := c.Desired(ctx, 0); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("a desired state over %d bytes: %v, want an error", api.MaxDesiredBytes, err)
	}
	size = api.MaxContentBytes + 1
	if _, err := c.Content(ctx, digest); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("an archive over %d bytes: %v, want an error", api.MaxContentBytes, err)
	}
}

// repeat is an endless reader of b.
func repeat(b byte) io.Reader {
	return &repeater{buf: bytes.Repeat([]byte{b}, 32<<10)}
}

type repeater struct{ buf []byte }

func (r *repeater) Read(p []byte) (int, error) { return copy(p, r.buf), nil }
