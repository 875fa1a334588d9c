package server_test

import (
	"testing"

	"flotilla.dev/api"
)

// BenchmarkUnchangedPoll times the poll most of a fleet makes most of the time, over a real
// server's TLS and HTTP/2: allocations here are what the server's collector pays for at
// idle (client and server share the process, so compare runs, not absolute figures).
// Profile the server's side with -memprofile and pprof's -focus=flotilla.dev.
func BenchmarkUnchangedPoll(b *testing.B) {
	ts := start(b, b.TempDir())
	a := registerN(b, ts, []map[string]string{{"env": "prod"}})[0]
	ds := waitDesired(b, a.c, func(*api.DesiredState) bool { return true })
	ctx := ctxT(b)
	b.ReportAllocs()
	for b.Loop() {
		got, _, _, err := a.c.Desired(ctx, ds.Revision)
		if err != nil || got != nil {
			b.Fatalf("poll answered %+v, %v; want unchanged", got, err)
		}
	}
}
