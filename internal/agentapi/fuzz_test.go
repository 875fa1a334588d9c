package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// FuzzStatusReport: decoding a status report body never panics; what it accepts is within
// every limit (no oversize, duplicate or unknown entry) and survives a round trip; what it
// refuses is a 4xx Status.
func FuzzStatusReport(f *testing.F) {
	for _, s := range []string{
		`{"seq":1}`,
		`{"seq":7,"time":"2026-11-30T10:00:00Z","inventory":{"kubernetesVersion":"v1.37.0","nodeCount":3,"architectures":["amd64"]},"deployments":[{"bundle":"fleet-default/app","id":"0123456789abcdef0123456789abcdef","state":"Ready"}],"removed":["fleet-default/old"]}`,
		`{"seq":2,"deployments":[{"bundle":"ns/a","id":"x","state":"ErrApplied","message":"boom"},{"bundle":"ns/a","id":"y","state":"Ready"}]}`,
		`{"seq":3,"deployments":[{"bundle":"ns/a","id":"x","state":"Pwned"}]}`,
		`{"seq":4,"removed":["ns/a","ns/a"]}`,
		`{"seq":5,"deployments":[{"bundle":"a/b/c","id":"x","state":"Ready"}],"removed":["/x","x/",""]}`,
		`{"seq":0}`, `{"seq":-1}`, `{"seq":1e3}`, `null`, `[]`, `{"seq":"1"}`, `{"seq":1,"seq":2}`,
		`{"seq":1,"deployments":null,"removed":null,"inventory":null}`,
		`{"seq":1,"deployments":[{"bundle":"ns/\u00e9","id":"\ud800","state":"Ready","message":"\u2026"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rep, err := decodeReport(body)
		if err != nil {
			var st *api.Status
			if !errors.As(err, &st) || st.Code < 400 || st.Code >= 500 || st.Message == "" {
				t.Fatalf("refused with %v, want a 4xx Status with a message", err)
			}
			return
		}
		if n := len(rep.Deployments) + len(rep.Removed); n > maxReportEntries {
			t.Fatalf("accepted %d entries", n)
		}
		if rep.Seq < 1 {
			t.Fatalf("accepted seq %d", rep.Seq)
		}
		seen := map[string]bool{}
		for _, d := range rep.Deployments {
			if seen[d.Bundle] || checkBundleKey(d.Bundle) != "" || !api.KnownState(d.State) || len(d.ID) > maxReportID || len(d.Message) > maxReportMessage {
				t.Fatalf("accepted entry %+v", d)
			}
			seen[d.Bundle] = true
		}
		clear(seen)
		for _, k := range rep.Removed {
			if seen[k] || checkBundleKey(k) != "" {
				t.Fatalf("accepted removal %q", k)
			}
			seen[k] = true
		}
		if rep.Inventory != nil {
			if raw, _ := json.Marshal(rep.Inventory); len(raw) > maxInventory {
				t.Fatalf("accepted an inventory of %d bytes", len(raw))
			}
		}
		// What is accepted reads back the same when the server or an agent encodes it.
		once, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeReport(once)
		if err != nil {
			t.Fatalf("an accepted report, encoded again, is refused: %v\n%s", err, once)
		}
		twice, _ := json.Marshal(again)
		if !bytes.Equal(once, twice) {
			t.Fatalf("round trip changed the report:\n%s\n%s", once, twice)
		}
	})
}

// FuzzRegisterBody: a registration body, whatever it holds, never panics the handler and,
// with a token the server does not know, is answered 4xx and changes nothing in the store.
func FuzzRegisterBody(f *testing.F) {
	for _, s := range []string{
		`{"clientID":"kube-system-uid"}`,
		`{"clientID":"kube-system-uid","labels":{"env":"prod","region":"eu"}}`,
		`{"clientID":"x","labels":{"bad key!":"v"}}`,
		`{"clientID":"x","labels":{"k":"` + strings.Repeat("v", 70) + `"}}`,
		`{"clientID":""}`, `{}`, `null`, `[]`, `{"clientID":1}`, `{"clientID":"x","clientID":"y"}`,
		`{"clientID":"\u0000\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, f.TempDir(), sqlstore.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Summaries: map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}})
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := New(ctx, st, fleet.New(st, fleet.Config{Logger: log}), log, testCredentials())
	if err != nil {
		f.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	before, err := st.Count(ctx)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, api.PathRegister, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer flotilla-reg-not-a-known-token")
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if rec.Code < 400 || rec.Code >= 500 {
			t.Fatalf("answered %d: %s", rec.Code, rec.Body)
		}
		var answer api.Status
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil || answer.Message == "" {
			t.Fatalf("answer %q is not a Status with a message", rec.Body)
		}
		after, err := st.Count(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k, n := range after {
			if before[k] != n {
				t.Fatalf("a refused registration changed the store: %v, was %v", after, before)
			}
		}
	})
}
