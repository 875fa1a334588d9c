package users

import (
	"context"
	"runtime"
	"testing"
)

// BenchmarkHashDefault is one login's cost with the default parameters. It also reports the
// CPU time the process spent per verification, since on a shared machine wall time measures
// the other tenants too.
func BenchmarkHashDefault(b *testing.B) {
	h := NewHasher(DefaultParams(), 1)
	enc, _ := h.Hash(context.Background(), "a password here")
	runtime.GC()
	start := processCPU()
	n := 0
	for b.Loop() {
		if ok, _ := h.Verify(context.Background(), enc, "a password here"); !ok {
			b.Fatal("no match")
		}
		n++
	}
	if c := processCPU() - start; c > 0 {
		b.ReportMetric(float64(c.Nanoseconds())/float64(n), "cpu-ns/op")
	}
}
