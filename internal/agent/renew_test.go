package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRenewsBeforeExpiry: a credential is renewed after two thirds of its life, stored, and
// used from then on.
func TestRenewsBeforeExpiry(t *testing.T) {
	f := newFakeServer(t)
	f.set(func(f *fakeServer) { f.expiresIn = 600 * time.Millisecond })
	dir := t.TempDir()
	startAgent(t, testConfig(t, f, dir), nil)
	waitFor(t, "a renewal", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.renewals >= 1 && f.tokensSeen[f.credential]
	})
	waitFor(t, "the renewed credential stored", func() bool {
		data, _ := os.ReadFile(filepath.Join(dir, credentialsFile))
		return strings.Contains(string(data), `"cred-`) && !strings.Contains(string(data), `"cred-1"`) && strings.Contains(string(data), "renewAfter")
	})
}

// TestRenewsWhenAsked: the server asks (it rotated its key), or answers that the credential
// expired: the agent renews and goes on, instead of stopping.
func TestRenewsWhenAsked(t *testing.T) {
	f := newFakeServer(t)
	ta := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "polls", func() bool { return len(f.snapshot().polls) > 2 })
	f.set(func(f *fakeServer) { f.askRenew = true })
	waitFor(t, "a renewal on request", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.renewals == 1 && f.tokensSeen["cred-2"]
	})
	// The credential expires while the agent was away: polls get 401 CredentialExpired.
	f.set(func(f *fakeServer) { f.expired, f.credential = f.credential, "not-yet-issued" })
	waitFor(t, "a renewal of the expired credential", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.renewals == 2 && f.tokensSeen["cred-3"]
	})
	if err := ta.wait(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("the agent stopped: %v", err)
	}
}

// TestRenewalRefusedStops: a credential the server will not renew stops the agent with
// ErrUnauthorized and the server's explanation.
func TestRenewalRefusedStops(t *testing.T) {
	f := newFakeServer(t)
	ta := startAgent(t, testConfig(t, f, t.TempDir()), nil)
	waitFor(t, "polls", func() bool { return len(f.snapshot().polls) > 2 })
	f.set(func(f *fakeServer) { f.expired, f.credential, f.refuseRenew = f.credential, "x", true })
	err := ta.wait(10 * time.Second)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "too long ago") {
		t.Fatalf("Run = %v; want ErrUnauthorized with the server's explanation", err)
	}
}
