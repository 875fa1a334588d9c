package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"testing"
	"time"
)

// BenchmarkIdleTunnels opens b.N idle tunnels, both ends in this process, and reports the
// heap and goroutines each costs (both ends together: an upper bound for the server's share).
func BenchmarkIdleTunnels(b *testing.B) {
	e := newEnv(b, Config{Max: b.N + 1, Logger: slog.New(slog.DiscardHandler)})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("c%d", i)
		a := NewAgent(AgentConfig{Server: e.srv.URL, HTTPClient: e.srv.Client(), Credential: func() string { return "cred-" + name },
			Target: http.NotFoundHandler(), Idle: -1, Logger: slog.New(slog.DiscardHandler)})
		go a.Run(ctx)
		go e.reg.Await(ctx, "ns/"+name, time.Minute)
		for {
			if tok, _, release := e.reg.Wanted("ns/" + name); tok != "" {
				a.Want(tok)
				break
			} else {
				release()
			}
			time.Sleep(time.Millisecond)
		}
	}
	for e.reg.Open() < b.N {
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/float64(b.N), "heap-B/tunnel")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/float64(b.N), "goroutines/tunnel")
}
