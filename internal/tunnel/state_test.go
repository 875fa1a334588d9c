package tunnel

import (
	"context"
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
