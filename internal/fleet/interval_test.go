package fleet

import (
	"testing"
	"time"
)

type pingers struct {
	n  int
	iv time.Duration
}

func (p pingers) Len() int                    { return p.n }
func (p pingers) PingInterval() time.Duration { return p.iv }

// TestIntervalsWithDoorbell: clusters on the doorbell poll at the long interval and leave
// the poll budget to the others; a cluster counts as Offline only after three of the longer
// of the poll and ping intervals.
func TestIntervalsWithDoorbell(t *testing.T) {
	f := New(nil, Config{PollInterval: 10 * time.Second, PollBudget: 100, BellPollInterval: time.Hour, OfflineAfter: time.Minute})
	f.clusters.Store(10000)
	if got, want := f.Interval(), 100*time.Second; got != want {
		t.Fatalf("interval of 10,000 clusters at 100 polls/s: %v, want %v", got, want)
	}
	if got, want := f.offlineAfter(), 300*time.Second; got != want {
		t.Fatalf("offline after %v, want three intervals, %v", got, want)
	}
	f.SetDoorbell(pingers{n: 9000, iv: 40 * time.Second})
	// 1,000 clusters left polling, within 100 - 9,000/3,600 polls/s.
	left, budget := 1000.0, 97.5
	if got, want := f.Interval(), time.Duration(left/budget*float64(time.Second)); got != want {
		t.Fatalf("interval of the 1,000 not on the doorbell: %v, want %v", got, want)
	}
	if got := f.BellInterval(); got != time.Hour {
		t.Fatalf("doorbell poll interval %v, want an hour", got)
	}
	if got, want := f.offlineAfter(), 120*time.Second; got != want {
		t.Fatalf("offline after %v, want three ping intervals, %v", got, want)
	}
	now := time.Now()
	for _, uid := range []string{"a", "b", "c", "d"} {
		if d := f.BellPollAfter(uid, now); d < 6*time.Minute || d > 66*time.Minute {
			t.Errorf("cluster %s on the doorbell polls again in %v, want its phase within an hour", uid, d)
		}
		if d := f.PollAfter(uid, now); d > 12*time.Second {
			t.Errorf("cluster %s polls again in %v, want within one interval", uid, d)
		}
	}
	// More clusters than even the doorbell interval fits in the budget: it stretches.
	f.clusters.Store(1_000_000)
	if got, want := f.BellInterval(), 10000*time.Second; got != want {
		t.Fatalf("doorbell poll interval at 1M clusters and 100 polls/s: %v, want %v", got, want)
	}
}
