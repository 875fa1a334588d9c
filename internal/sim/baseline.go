package sim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/internal/pki"
)

// BaselineResult is the bare-HTTPS reference: how fast this machine serves a trivial
// handler over the same kind of connections the simulator uses, client and server in one
// process. The figures of a run are reported as ratios to it.
type BaselineResult struct {
	Duration       Seconds `json:"duration"`
	Requests       uint64  `json:"requests"`
	RequestsPerSec float64 `json:"requestsPerSec"`
	// CPUPerRequest is the CPU time, client and server together, per request.
	CPUPerRequest Seconds `json:"cpuPerRequest"`
	Latency       Latency `json:"latency"`
}

// Baseline starts a TLS HTTP/2 server with a trivial handler on loopback, with a CA and
// certificate made like the server's, and sends it requests from workers over conns
// connections for d.
func Baseline(ctx context.Context, conns, workers int, d time.Duration) (*BaselineResult, error) {
	dir, err := os.MkdirTemp("", "flotilla-sim-baseline-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b, err := pki.Ensure(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("baseline certificates: %w", err)
	}
	cert := b.Cert
	if ca, err := pki.DER(b.CAPEM); err == nil {
		cert.Certificate = append(cert.Certificate[:1:1], ca)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok\n")
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
		ErrorLog:  slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug),
	}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()

	trs, err := newTransports(nil, b.Checksum, conns)
	if err != nil {
		return nil, err
	}
	defer closeTransports(trs)
	url := "https://" + ln.Addr().String() + "/v1/agent/desired?since=1"
	// A header of the size of a cluster credential, so that the request is the same size.
	auth := "Bearer fc." + strings.Repeat("x", 150)
	get := func(ctx context.Context, w int, _ uint64) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", auth)
		resp, err := trs[w%len(trs)].RoundTrip(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	// Warm up: open every connection before measuring.
	for w := range conns {
		if err := get(ctx, w, 0); err != nil {
			return nil, fmt.Errorf("baseline request: %w", err)
		}
	}
	var lat histogram
	cpu0 := processCPU()
	res := hammer(ctx, workers, d, &lat, get)
	cpu := processCPU() - cpu0
	if res.errors > 0 && res.ok == 0 {
		return nil, fmt.Errorf("baseline: every request failed: %v", res.firstErr)
	}
	out := &BaselineResult{Duration: seconds(res.took), Requests: res.ok, RequestsPerSec: float64(res.ok) / res.took.Seconds(), Latency: lat.summary()}
	if res.ok > 0 {
		out.CPUPerRequest = seconds(cpu / time.Duration(res.ok))
	}
	return out, nil
}

type hammerResult struct {
	ok, errors uint64
	took       time.Duration
	firstErr   error
}

// hammer calls do from workers goroutines, as fast as they complete, for d.
func hammer(ctx context.Context, workers int, d time.Duration, lat *histogram, do func(ctx context.Context, worker int, n uint64) error) hammerResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ok, bad, seq atomic.Uint64
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t := time.Now()
				err := do(ctx, w, seq.Add(1))
				// A call cut off by the deadline is neither a success nor an error; one that
				// completed counts even if the deadline passed meanwhile (took includes it),
				// so that what the caller counted in do agrees with ok.
				if err != nil && ctx.Err() != nil {
					return
				}
				if err != nil {
					bad.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				lat.record(time.Since(t))
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return hammerResult{ok: ok.Load(), errors: bad.Load(), took: time.Since(start), firstErr: firstErr}
}
