//go:build !linux

package rbac

import "testing"

// loopCPU runs fn in b.Loop; thread CPU time is only measured on Linux.
func loopCPU(b *testing.B, fn func()) {
	for b.Loop() {
		fn()
	}
}
