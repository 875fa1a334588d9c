package fleet

import (
	"testing"
	"time"
)

func TestPollBudget(t *testing.T) {
	for _, tc := range []struct {
		clusters int64
		budget   float64
		want     time.Duration
	}{
		{10, 2000, 15 * time.Second},       // small fleets poll at the base interval
		{30000, 2000, 15 * time.Second},    // exactly at the budget
		{1000000, 2000, 500 * time.Second}, // a million clusters spread over 500 s
		{1000000, 10000, 100 * time.Second},
	} {
		f := New(nil, Config{PollInterval: 15 * time.Second, PollBudget: tc.budget})
		f.clusters.Store(tc.clusters)
		if got := f.Interval(); got != tc.want {
			t.Errorf("%d clusters, budget %v/s: interval %v, want %v", tc.clusters, tc.budget, got, tc.want)
		}
		for range 100 {
			if d := f.PollAfter(); d < tc.want*8/10 || d > tc.want*12/10 {
				t.Fatalf("PollAfter %v outside ±20%% of %v", d, tc.want)
			}
		}
	}
}
