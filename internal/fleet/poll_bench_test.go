package fleet

import (
	"context"
	"testing"
	"time"
)

// BenchmarkPoll times what the model does for one unchanged agent poll (the cluster known,
// seen, its desired state unchanged, its next poll time) against a fleet of
// FLOTILLA_POLL_CLUSTERS clusters (default 20,000), each poll for a different cluster as
// a fleet's polls are. At a million clusters the lookups miss the CPU's caches.
//
//	FLOTILLA_POLL_CLUSTERS=1000000 go test -run XXX -bench Poll ./internal/fleet/
func BenchmarkPoll(b *testing.B) {
	n := envCount("FLOTILLA_POLL_CLUSTERS", 20000)
	f := New(seedClusters(b, n), Config{})
	if _, err := f.load(context.Background()); err != nil {
		b.Fatal(err)
	}
	type poll struct {
		name, uid string
		rev       int64
	}
	polls := make([]poll, n)
	for i := range polls {
		p := poll{name: seededName(i), uid: seededUID(i)}
		_, rev, err := f.Desired("fleet-default", p.name, p.uid, -1)
		if err != nil {
			b.Fatal(err)
		}
		p.rev = rev
		polls[i] = p
	}
	// Visit clusters in a scattered order, as polls arrive.
	step := n/2 + 1
	for gcd(step, n) != 1 {
		step++
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i = (i + step) % n
		p := polls[i]
		if !f.Known("fleet-default", p.name, p.uid) {
			b.Fatalf("cluster %s unknown", p.name)
		}
		f.Seen("fleet-default", p.name, now)
		if ds, _, err := f.Desired("fleet-default", p.name, p.uid, p.rev); err != nil || ds != nil {
			b.Fatalf("poll answered %+v, %v; want unchanged", ds, err)
		}
		f.PollAfter(p.uid, now)
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
