package agent

import (
	"testing"
	"time"
)

// Heartbeats slow down with the server's poll interval, never below HeartbeatInterval.
func TestHeartbeatInterval(t *testing.T) {
	a := &agent{cfg: Config{HeartbeatInterval: 10 * time.Minute}}
	for _, tc := range []struct{ pollAfter, want time.Duration }{
		{0, 10 * time.Minute},                   // no poll answered yet
		{15 * time.Second, 10 * time.Minute},    // a small fleet
		{75 * time.Second, 10 * time.Minute},    // eight intervals are exactly 10m
		{500 * time.Second, 4000 * time.Second}, // 1M clusters within a 2,000/s budget
	} {
		a.pollAfter.Store(int64(tc.pollAfter))
		if got := a.heartbeatInterval(); got != tc.want {
			t.Errorf("poll-after %v: heartbeat every %v, want %v", tc.pollAfter, got, tc.want)
		}
	}
}
