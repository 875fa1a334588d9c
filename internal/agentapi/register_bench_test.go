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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// BenchmarkRegister drives the register handler as a fleet registering at once does: many
// requests in flight (the simulator's 128), each a new cluster presenting the same token,
// against a SQLite store configured as the server configures it, with the fleet model
// following the store (a registration is answered once the model knows the cluster).
//
//	go test ./internal/agentapi -run '^$' -bench BenchmarkRegister -benchtime 20000x -cpuprofile cpu.out
func BenchmarkRegister(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := sqlstore.DefaultConfig()
	cfg.Logger = log
	cfg.Summaries = map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}
	var batches atomic.Int64
	cfg.ObserveBatch = func(int) { batches.Add(1) }
	st, err := sqlite.Open(ctx, b.TempDir(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	f := fleet.New(st, fleet.Config{Logger: log})
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for !f.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	srv, err := New(ctx, st, f, log, testCredentials())
	if err != nil {
		b.Fatal(err)
	}
	go srv.Run(ctx)
	token := createToken(b, st, "fleet-default", "bench", api.RegistrationTokenSpec{})
	inv := api.ClusterInventory{KubernetesVersion: "v1.37.0+k3s1", NodeCount: 1, Architecture: "amd64"}
	var next atomic.Int64
	run := fmt.Sprint(time.Now().UnixNano())
	b.SetParallelism(64) // 128 in flight on 2 cores
	b.ReportAllocs()
	b.ResetTimer()
	batches.Store(0)
	cpu0 := cpuTime()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			body, _ := json.Marshal(api.RegisterRequest{ClientID: fmt.Sprintf("%s-%07d", run, i),
				Labels: map[string]string{"env": "prod", "region": fmt.Sprintf("r%d", i%8)}, Inventory: &inv})
			r := httptest.NewRequest(http.MethodPost, api.PathRegister, bytes.NewReader(body))
			r.Header.Set("Authorization", "Bearer "+token)
			w := httptest.NewRecorder()
			srv.register(w, r)
			if w.Code != http.StatusOK {
				b.Errorf("register: %d %s", w.Code, w.Body.String())
				return
			}
		}
	})
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "registrations/s")
	// The process's CPU: the handler, the store's writer, the fleet model following it.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/registration")
	b.ReportMetric(float64(b.N)/float64(max(batches.Load(), 1)), "registrations/commit")
}

// createToken stores a RegistrationToken as the API does (through its hooks) and returns
// the token's value.
func createToken(tb testing.TB, st store.Store, ns, name string, spec api.RegistrationTokenSpec) string {
	tb.Helper()
	ctx := context.Background()
	h := NewTokenHooks(st)
	raw, _ := json.Marshal(spec)
	now := time.Now().UTC()
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Namespace: ns, Name: name, UID: "uid-" + name, CreationTimestamp: &now}, Spec: raw}
	if err := h.BeforeCreate(ctx, obj, false); err != nil {
		tb.Fatal(err)
	}
	out, err := st.Create(ctx, obj)
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.AfterCreate(ctx, out); err != nil {
		tb.Fatal(err)
	}
	var ts api.RegistrationTokenStatus
	json.Unmarshal(out.Status, &ts)
	return ts.Token
}

// cpuTime is the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
