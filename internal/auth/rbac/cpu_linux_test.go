package rbac

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// loopCPU runs fn in b.Loop on one locked thread and reports that thread's CPU time per
// operation: on a shared machine, wall time per operation measures the other tenants too.
func loopCPU(b *testing.B, fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &before)
	n := 0
	for b.Loop() {
		fn()
		n++
	}
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &after)
	cpu := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
	b.ReportMetric(float64(cpu)/float64(n), "cpu-ns/op")
}
