package tunnel

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// A cluster's tunnel state follows what happens to it: none, requested, open, kept.
func TestState(t *testing.T) {
	e := newEnv(t, Config{Idle: time.Hour})
	a := e.agent(t, "a", time.Hour, http.NotFoundHandler())
	if e.reg.Active() || e.reg.State("ns/a") != "" {
		t.Fatalf("before anything: active %v, state %q", e.reg.Active(), e.reg.State("ns/a"))
	}
	awaited := make(chan error, 1)
	go func() { awaited <- e.reg.Await(context.Background(), "ns/a", time.Minute) }()
	tok := e.tokenFor(t, "ns/a")
	if s := e.reg.State("ns/a"); s != StateRequested || !e.reg.Active() {
		t.Fatalf("asked for: state %q, active %v", s, e.reg.Active())
	}
	a.Want(tok)
	if err := <-awaited; err != nil {
		t.Fatal(err)
	}
	if s := e.reg.State("ns/a"); s != StateOpen {
		t.Fatalf("open: state %q", s)
	}
	e.reg.Keep("ns/a")
	if s := e.reg.State("ns/a"); s != StateKept {
		t.Fatalf("kept: state %q", s)
	}
	if s := e.reg.State("ns/b"); s != "" {
		t.Fatalf("another cluster: state %q", s)
	}
}

// Tunnels asked for and never opened are forgotten once their tokens expire: the registry
// does not keep one for every cluster anyone ever asked for. Asked for 4×minSweep clusters
// whose tokens expire as fast as they are asked for, it never holds more than 2×minSweep
// (a sweep runs each time the map doubles; how many a given sweep finds expired depends on
// the machine's speed, so the bound is checked, not one sweep's result).
func TestExpiredWantsAreSwept(t *testing.T) {
	e := newEnv(t, Config{TokenTTL: time.Millisecond})
	most := 0
	for i := range 4 * minSweep {
		if i%(minSweep/4) == 0 {
			time.Sleep(2 * time.Millisecond) // what was asked for before has expired
		}
		e.reg.Await(context.Background(), fmt.Sprintf("ns/c-%d", i), time.Nanosecond)
		e.reg.mu.Lock()
		most = max(most, len(e.reg.wanted))
		e.reg.mu.Unlock()
	}
	if most > 2*minSweep {
		t.Errorf("%d wanted tunnels held at once while %d expired, want at most %d", most, 4*minSweep, 2*minSweep)
	}
}

// Closing a cluster's tunnel (its Cluster was deleted or replaced) ends it at once, and the
// cluster's old agent sees it end.
func TestCloseEndsTheTunnel(t *testing.T) {
	e := newEnv(t, Config{Idle: time.Hour})
	a := e.agent(t, "a", time.Hour, http.NotFoundHandler())
	awaited := make(chan error, 1)
	go func() { awaited <- e.reg.Await(context.Background(), "ns/a", time.Minute) }()
	a.Want(e.tokenFor(t, "ns/a"))
	if err := <-awaited; err != nil {
		t.Fatal(err)
	}
	e.reg.mu.Lock()
	tun := e.reg.open["ns/a"]
	e.reg.mu.Unlock()
	e.reg.Close("ns/a")
	if s := e.reg.State("ns/a"); s != "" || e.reg.Open() != 0 {
		t.Fatalf("after Close: state %q, %d open", s, e.reg.Open())
	}
	if _, err := e.reg.Dial(context.Background(), "ns/a"); err == nil {
		t.Fatal("a closed tunnel was dialled")
	}
	eventually(t, "the tunnel's session closed", tun.sess.IsClosed)
}

// Wanting says whether any tunnel is wanted, for the doorbell to name a pinging cluster only
// then: true while a token is live, false once every token has expired, even before a sweep
// forgets them.
func TestWanting(t *testing.T) {
	// Long enough that a loaded machine checks before the token expires.
	e := newEnv(t, Config{TokenTTL: 500 * time.Millisecond})
	if e.reg.Wanting() {
		t.Fatal("wanting with nothing asked for")
	}
	e.reg.Await(context.Background(), "ns/a", time.Nanosecond)
	if !e.reg.Wanting() || !e.reg.IsWanted("ns/a") {
		t.Fatal("not wanting right after a tunnel was asked for")
	}
	time.Sleep(600 * time.Millisecond)
	e.reg.mu.Lock()
	held := len(e.reg.wanted)
	e.reg.mu.Unlock()
	if e.reg.Wanting() || held != 1 {
		t.Errorf("wanting %v with %d expired want held; want false with it still held", e.reg.Wanting(), held)
	}
}
