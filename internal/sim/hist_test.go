package sim

import (
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<20; v += 1 + v/50 {
		b := bucketOf(v)
		if b < prev {
			t.Fatalf("bucketOf(%d) = %d, below bucketOf of a smaller value (%d)", v, b, prev)
		}
		if up := bucketUpper(b); up < v {
			t.Fatalf("bucketUpper(bucketOf(%d)) = %d, below the value", v, up)
		}
		if b > 0 && bucketUpper(b-1) >= v {
			t.Fatalf("value %d also fits bucket %d below its own (%d)", v, b-1, b)
		}
		prev = b
	}
	if b := bucketOf(int64(time.Hour)); b >= len(histogram{}.counts) {
		t.Fatalf("an hour falls outside the histogram (bucket %d)", b)
	}
}

func TestQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 500 * time.Microsecond},
		{0.9, 900 * time.Microsecond},
		{0.99, 990 * time.Microsecond},
		{1, 1000 * time.Microsecond},
	}
	for _, tt := range tests {
		got := h.quantile(tt.q)
		if got < tt.want || float64(got) > float64(tt.want)*1.07 {
			t.Errorf("quantile(%v) = %v, want %v (within 7%% above)", tt.q, got, tt.want)
		}
	}
	if s := h.summary(); s.Count != 1000 || s.Max.Duration() != time.Millisecond {
		t.Errorf("summary = %+v, want count 1000 and max 1ms", s)
	}
	h.reset()
	if got := h.quantile(0.5); got != 0 {
		t.Errorf("after reset quantile(0.5) = %v, want 0", got)
	}
}
