package kube

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// startAttempts bounds the retries when a freshly picked port was taken.
const startAttempts = 3

// Etcd is an etcd server on loopback, shared by the API servers started on
// it; each keeps its data under its own key prefix.
type Etcd struct {
	// URL is the client URL, http://127.0.0.1:PORT.
	URL string

	proc *process

	mu       sync.Mutex
	prefixes map[string]bool // etcd prefixes in use, to refuse a duplicate
	clusters []*Cluster      // stopped before etcd itself
}

// StartEtcd starts an etcd with its data in a temporary directory and waits
// until it is healthy. It is stopped when t ends, after the API servers
// started on it.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	bin := filepath.Join(Binaries(t), "etcd")
	dir := t.TempDir()
	start := time.Now()
	var (
		e   *Etcd
		err error
	)
	for range startAttempts {
		e, err = startEtcd(bin, dir)
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		stopStart := time.Now()
		e.stop()
		t.Logf("etcd stopped in %s", time.Since(stopStart).Round(time.Millisecond))
		e.proc.logOnFailure(t)
	})
	t.Logf("etcd ready at %s in %s", e.URL, time.Since(start).Round(time.Millisecond))
	return e
}

func startEtcd(bin, dir string) (*Etcd, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	dataDir := filepath.Join(dir, "data-"+strconv.Itoa(clientPort))
	p, err := startProcess("etcd", bin, dir, true, []string{
		"--name=flotilla-test",
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=flotilla-test=" + peerURL,
		// The data is thrown away with the test; fsync only costs time.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	})
	if err != nil {
		return nil, err
	}
	e := &Etcd{URL: clientURL, proc: p, prefixes: map[string]bool{}}
	if err := waitFor(p, 30*time.Second, e.healthy); err != nil {
		p.stop()
		return nil, err
	}
	return e, nil
}

// healthy asks etcd's /health endpoint, which answers once it has a leader.
func (e *Etcd) healthy() error {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(e.URL + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /health: %s: %s", resp.Status, body)
	}
	return nil
}

// claim reserves an etcd prefix for c, failing if another cluster has it.
func (e *Etcd) claim(prefix string, c *Cluster) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.prefixes[prefix] {
		return fmt.Errorf("etcd prefix %s is already used by another cluster on %s", prefix, e.URL)
	}
	e.prefixes[prefix] = true
	e.clusters = append(e.clusters, c)
	return nil
}

// stop stops the API servers still running on etcd, then etcd: an API
// server that loses etcd spends its shutdown retrying.
func (e *Etcd) stop() {
	e.mu.Lock()
	clusters := e.clusters
	e.mu.Unlock()
	for _, c := range clusters {
		c.stop()
	}
	e.proc.stop()
}
