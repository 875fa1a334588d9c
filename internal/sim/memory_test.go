package sim

import (
	"runtime"
	"strings"
	"testing"
)

// TestMemoryPerCluster keeps the simulator's own cost per cluster in check: a registered
// cluster running one bundle, with its credential, its place in the scheduler and its
// deployment, must stay well under a kilobyte so that a million fit in a few hundred MB.
func TestMemoryPerCluster(t *testing.T) {
	const n = 100000
	before := heapInUse()
	clusters := make([]cluster, n)
	sched := newScheduler(func() int64 { return 0 }, n)
	bundle, id, digest := intern("fleet-default/bench"), intern(strings.Repeat("a", 32)), intern("sha256:"+strings.Repeat("b", 64))
	for i := range clusters {
		c := &clusters[i]
		// A real credential's size: "fc." + base64 of {"n","c","u"} + "." + base64 of an HMAC.
		c.cred = "fc." + strings.Repeat("x", 110) + "." + strings.Repeat("y", 43)
		c.deps = append(c.deps, deployment{bundle: bundle, id: id, digest: digest, state: stReady, acked: stReady})
		c.since, c.seq, c.nextPoll = 100, 200, 300
		sched.push(int64(i), int32(i))
	}
	per := float64(heapInUse()-before) / n
	runtime.KeepAlive(clusters)
	runtime.KeepAlive(sched)
	t.Logf("%.0f bytes of heap per simulated cluster", per)
	if per > 600 {
		t.Errorf("%.0f bytes per simulated cluster, want under 600", per)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
