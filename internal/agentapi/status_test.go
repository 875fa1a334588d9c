package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// agentEnv is the agent API over a real SQLite store holding cluster "edge-1" of
// fleet-default and bundle "app", which targets it, with the fleet model running.
type agentEnv struct {
	t    *testing.T
	st   *sqlite.Store
	srv  *Server
	url  string
	cred string
}

const (
	envNS  = "fleet-default"
	envUID = "5f0c7e3a-8d1b-4c1e-9a7e-0b6f3c2d1e4f"
)

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := sqlite.Open(ctx, t.TempDir(), sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	for _, obj := range []*api.Object{
		{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
			Metadata: api.ObjectMeta{Namespace: envNS, Name: "edge-1", UID: envUID, CreationTimestamp: &now}, Spec: json.RawMessage(`{}`)},
		{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Namespace: envNS, Name: "app", UID: "uid-app", Generation: 1, CreationTimestamp: &now},
			Spec:     json.RawMessage(`{"contentHash":"sha256:0123","targets":[{"clusterName":"edge-1"}]}`)},
	} {
		if _, err := st.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	f := fleet.New(st, fleet.Config{Logger: log})
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for !f.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	srv, err := New(ctx, st, f, log, testCredentials())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &agentEnv{t: t, st: st, srv: srv, url: hs.URL, cred: mintFor(srv, identity{Namespace: envNS, Name: "edge-1", UID: envUID})}
}

// post sends a status report body; it returns the answer's code and Status (if a failure).
func (e *agentEnv) post(body []byte) (int, *api.Status) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url+api.PathStatus, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.cred)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, nil
	}
	var st api.Status
	json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, &st
}

func (e *agentEnv) rows() int {
	e.t.Helper()
	n := 0
	if err := e.st.ScanStatus(context.Background(), func(store.DeploymentStatus) error { n++; return nil }); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func report(seq int64, deps ...api.DeploymentStatus) []byte {
	b, _ := json.Marshal(api.StatusReport{Seq: seq, Deployments: deps})
	return b
}

func dep(bundle, state, msg string) api.DeploymentStatus {
	return api.DeploymentStatus{Bundle: bundle, ID: "id-1", State: state, Message: msg}
}

// What a cluster credential can make the server store is bounded: reports are refused with
// a 4xx naming what is wrong, and a refused entry stores nothing.
func TestStatusReportLimits(t *testing.T) {
	e := newAgentEnv(t)
	if code, st := e.post(report(1, dep(envNS+"/app", api.StateReady, ""))); code != http.StatusOK {
		t.Fatalf("a valid report: %d %+v", code, st)
	}
	many := func(n int) []api.DeploymentStatus {
		var d []api.DeploymentStatus
		for i := range n {
			d = append(d, dep(fmt.Sprintf("%s/b-%d", envNS, i), api.StateReady, ""))
		}
		return d
	}
	seq := int64(1)
	for _, tc := range []struct {
		name     string
		body     func(seq int64) []byte
		code     int
		contains string
	}{
		{"not targeted", func(seq int64) []byte {
			return report(seq, dep(envNS+"/app", api.StateReady, ""), dep(envNS+"/made-up", api.StateReady, ""))
		}, 422, "bundle fleet-default/made-up does not target cluster fleet-default/edge-1"},
		{"other namespace", func(seq int64) []byte { return report(seq, dep("kube-system/app", api.StateReady, "")) }, 422, "is not a bundle of namespace fleet-default"},
		{"too many entries", func(seq int64) []byte { return report(seq, many(maxReportEntries+1)...) }, 413, "at most 1000 are accepted"},
		{"duplicate", func(seq int64) []byte {
			return report(seq, dep(envNS+"/app", api.StateReady, ""), dep(envNS+"/app", api.StateNotReady, ""))
		}, 422, "reported twice"},
		{"unknown state", func(seq int64) []byte { return report(seq, dep(envNS+"/app", "Pwned", "")) }, 422, "unknown state"},
		{"long message", func(seq int64) []byte {
			return report(seq, dep(envNS+"/app", api.StateErrApplied, strings.Repeat("x", maxReportMessage+1)))
		}, 422, "deployments[0].message: is 4097 bytes"},
		{"malformed key", func(seq int64) []byte { return report(seq, dep("app", api.StateReady, "")) }, 422, "is not a bundle's namespace/name"},
		{"oversize body", func(seq int64) []byte {
			return report(seq, dep(envNS+"/app", api.StateReady, strings.Repeat("x", maxReport)))
		}, 413, "exceeds 1048576 bytes"},
		{"malformed", func(seq int64) []byte { return []byte(`{"seq":`) }, 400, "malformed status report"},
	} {
		seq++
		code, st := e.post(tc.body(seq))
		if code != tc.code || st == nil || !strings.Contains(st.Message, tc.contains) {
			t.Errorf("%s: %d %+v, want %d with %q", tc.name, code, st, tc.code, tc.contains)
		}
		if n := e.rows(); n != 1 {
			t.Errorf("%s: %d status rows stored, want 1", tc.name, n)
		}
	}
	// The attack as found: reports of ~1 MB naming made-up bundles grew the database by a
	// row per name. Each is now refused whole (too many entries) or entry by entry.
	for i := range 30 {
		seq++
		deps := many(1000)
		for j := range deps {
			deps[j].Bundle = fmt.Sprintf("%s/made-up-%d-%d", envNS, i, j)
			deps[j].Message = strings.Repeat("m", 900)
		}
		if code, _ := e.post(report(seq, deps...)); code != 422 {
			t.Fatalf("report %d of made-up bundles: %d, want 422", i, code)
		}
	}
	if n := e.rows(); n != 1 {
		t.Errorf("after 30 reports of made-up bundles: %d status rows, want 1", n)
	}
}

// testCredentials is a credential configuration whose keys live only in memory.
func testCredentials() CredentialConfig {
	return CredentialConfig{Keys: auth.EphemeralRing("agent-credentials", time.Hour), TTL: time.Hour, Grace: time.Hour}
}

func mintFor(srv *Server, id identity) string {
	cred, _ := srv.keys.mint(id)
	return cred
}
