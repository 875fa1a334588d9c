package client_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// closedURL is the URL of a loopback port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

// With several replicas' URLs, a call skips one that cannot be reached and later calls
// stay on the one that answered; an agent's poll that fails moves its next poll along.
func TestServersFailOver(t *testing.T) {
	var calls atomic.Int32
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path == api.PathDesired {
			w.Header().Set(api.HeaderRevision, "7")
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{}`))
	}))
	defer live.Close()
	dead := closedURL(t)
	c, err := client.New(client.Config{Server: dead + ", " + live.URL + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Server(); got != dead {
		t.Fatalf("first server = %s, want %s", got, dead)
	}
	ctx := context.Background()
	if _, err := c.Do(ctx, http.MethodPost, "/anything", map[string]string{"a": "b"}, nil); err != nil {
		t.Fatalf("a call with one replica down: %v", err)
	}
	if got := c.Server(); got != live.URL {
		t.Errorf("after failing over, server = %s, want %s", got, live.URL)
	}

	// An agent's long poll fails on the dead replica and the next goes to the live one.
	poller, _ := client.New(client.Config{Server: dead + "," + live.URL})
	if _, _, _, err := poller.Desired(ctx, 7); err == nil {
		t.Fatal("a poll of an unreachable replica succeeded")
	}
	if _, rev, _, err := poller.Desired(ctx, 7); err != nil || rev != 7 {
		t.Fatalf("the poll after failing over: rev %d, %v", rev, err)
	}
	if calls.Load() != 2 {
		t.Errorf("the live replica got %d calls, want 2", calls.Load())
	}
}

func TestServersRefusesBadLists(t *testing.T) {
	for _, list := range []string{"", "https://a:1,", "https://a:1,ftp://b", strings.Repeat("https://a:1,", 16) + "https://a:1"} {
		if _, err := client.Servers(list); err == nil {
			t.Errorf("Servers(%.40q) accepted", list)
		}
		if _, err := client.New(client.Config{Server: list}); err == nil {
			t.Errorf("New with %.40q accepted", list)
		}
	}
}
