package fleet

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"testing"
	"time"

	"flotilla.dev/api"
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
		// Each cluster comes back at its own phase, a tenth of an interval to 1.1 away;
		// one that keeps its phase polls once an interval; the fleet's phases are spread
		// evenly over the interval.
		now := time.Date(2026, 11, 23, 1, 0, 0, 0, time.UTC)
		var buckets [10]int
		for i := range 10000 {
			uid := fmt.Sprintf("uid-%d", i)
			d := f.PollAfter(uid, now)
			if d < tc.want/10 || d >= tc.want*11/10 {
				t.Fatalf("PollAfter %v outside [%v, %v)", d, tc.want/10, tc.want*11/10)
			}
			if again := f.PollAfter(uid, now.Add(d)); again != tc.want {
				t.Fatalf("a cluster polling at its phase is told %v, want the interval %v", again, tc.want)
			}
			// Truncated to whole seconds, as agents are told, the phase holds.
			if again := f.PollAfter(uid, now.Add(d.Truncate(time.Second))); again < tc.want || again > tc.want+time.Second {
				t.Fatalf("a cluster polling up to a second early is told %v, want %v to %v", again, tc.want, tc.want+time.Second)
			}
			buckets[int((now.Add(d).UnixNano()%int64(tc.want))*10/int64(tc.want))]++
		}
		for i, n := range buckets {
			if n < 800 || n > 1200 {
				t.Errorf("%d clusters, budget %v/s: %d of 10,000 polls in tenth %d of the interval, want about 1,000", tc.clusters, tc.budget, n, i)
			}
		}
	}
}

func TestClusterSummaryRoundTrip(t *testing.T) {
	seen := time.Date(2026, 11, 22, 20, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		obj  *api.Object
		want *Cluster
	}{
		{"bare", &api.Object{Metadata: api.ObjectMeta{Namespace: "ns", Name: "c", UID: "u"}},
			&Cluster{Namespace: "ns", Name: "c", UID: "u"}},
		{"full", &api.Object{
			Metadata: api.ObjectMeta{Namespace: "fleet-default", Name: "c-1", UID: "u-1", Labels: map[string]string{"env": "prod", "arch": "arm64"}, Annotations: map[string]string{"note": "x"}},
			Spec:     json.RawMessage(`{"clientID":"kube-system-uid","paused":true,"templateValues":{"replicas":3}}`),
			Status:   json.RawMessage(`{"state":"Ready","lastSeen":"2026-11-22T20:00:00Z","inventory":{"nodeCount":3}}`)},
			&Cluster{Namespace: "fleet-default", Name: "c-1", UID: "u-1", ClientID: "kube-system-uid", Paused: true, more: &clusterMore{values: map[string]any{"replicas": float64(3)}},
				Labels: map[string]string{"env": "prod", "arch": "arm64"}, Annotations: map[string]string{"note": "x"},
				state: codeOf("Ready"), storedSeen: seen.UnixNano(), inventory: invOf([]byte(`{"nodeCount":3}`))}},
	} {
		got, err := decodeCluster(SummarizeCluster(tc.obj))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got.Namespace != tc.want.Namespace || got.Name != tc.want.Name || got.UID != tc.want.UID || got.ClientID != tc.want.ClientID ||
			got.Paused != tc.want.Paused || got.state != tc.want.state || !got.lastSeen().Equal(tc.want.storedSeenAt()) || got.storedSeen != tc.want.storedSeen ||
			!maps.Equal(got.Labels, tc.want.Labels) || !maps.Equal(got.Annotations, tc.want.Annotations) || got.inventory != tc.want.inventory ||
			!sameValues(got.Values(), tc.want.Values()) || got.statusHash != statusHash(tc.obj.Status) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
	for _, bad := range [][]byte{nil, {9}, {1, 200}, SummarizeCluster(&api.Object{})[:3]} {
		if _, err := decodeCluster(bad); err == nil {
			t.Errorf("decodeCluster(%v) accepted a malformed summary", bad)
		}
	}
}

func TestSeenResolution(t *testing.T) {
	for _, tc := range []struct {
		clusters int64
		want     time.Duration
	}{
		{100, time.Minute},             // small fleets: the configured resolution
		{3000, time.Minute},            // 3,000 / 50 per second = 60 s
		{1000000, 20000 * time.Second}, // a million: lastSeen stored every ~5.5 h, offline at once
	} {
		f := New(nil, Config{LastSeenResolution: time.Minute, LastSeenWriteBudget: 50})
		f.clusters.Store(tc.clusters)
		if got := f.seenResolution(); got != tc.want {
			t.Errorf("%d clusters: resolution %v, want %v", tc.clusters, got, tc.want)
		}
	}
}

// Clusters of a large fleet poll rarely (the poll budget stretches the interval); they must
// not count as Offline between two polls.
func TestOfflineAfterFollowsPollInterval(t *testing.T) {
	f := New(nil, Config{PollInterval: 15 * time.Second, PollBudget: 2000, OfflineAfter: 2 * time.Minute})
	now := time.Now()
	c := &Cluster{}
	c.seen.Store(now.Add(-5 * time.Minute).UnixNano())
	f.clusters.Store(1000)
	if got := f.sweepInterval(); got != 12*time.Second {
		t.Errorf("1,000 clusters: sweep every %v, want 12s (a tenth of 2m)", got)
	}
	if got := f.clusterState(c, now); got != "Offline" {
		t.Errorf("1,000 clusters, unseen for 5m: %s, want Offline", got)
	}
	f.clusters.Store(1000000) // interval 500 s
	if got := f.clusterState(c, now); got != api.StateReady {
		t.Errorf("1M clusters polling every 500 s, unseen for 5m: %s, want Ready", got)
	}
	if got := f.sweepInterval(); got != 2*time.Minute {
		t.Errorf("1M clusters: sweep every %v, want 2m (a tenth of 25m, at most 2m)", got)
	}
	c.seen.Store(now.Add(-26 * time.Minute).UnixNano())
	if got := f.clusterState(c, now); got != "Offline" {
		t.Errorf("1M clusters, unseen for 26m: %s, want Offline", got)
	}
}

// Stored summaries carry fnv1a sums, so it must stay hash/fnv's FNV-1a; on the poll path it
// must not allocate.
func TestFNV1a(t *testing.T) {
	for _, s := range []string{"", "a", "6f1c2b9e-0000-4000-8000-000000000042", `{"state":"Ready","summary":{"ready":3}}`} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got, want := fnv1a(s), h.Sum64(); got != want {
			t.Errorf("fnv1a(%q) = %x, hash/fnv says %x", s, got, want)
		}
		if got := fnv1a([]byte(s)); got != h.Sum64() {
			t.Errorf("fnv1a([]byte(%q)) = %x, hash/fnv says %x", s, got, h.Sum64())
		}
	}
	f := New(nil, Config{})
	now := time.Now()
	if n := testing.AllocsPerRun(100, func() { f.PollAfter("6f1c2b9e-0000-4000-8000-000000000042", now) }); n != 0 {
		t.Errorf("PollAfter allocates %v times per call", n)
	}
}

// A doorbell ping finds its cluster by the UID's text in bytes, without allocating (every
// ping makes one), and marks the very cluster it found seen.
func TestDoorbellLookup(t *testing.T) {
	f := New(nil, Config{})
	const uid = "6f1c2b9e-0000-4000-8000-000000000042"
	c := &Cluster{Namespace: "fleet-default", Name: "edge", UID: uid}
	c.desiredRev.Store(7)
	f.ws(c.Namespace).clusters[c.Name] = c
	f.byUID[uid] = c
	text := []byte(uid)
	if got, changed, ok := f.DoorbellLookup(text, 7); !ok || got != c || changed {
		t.Errorf("at its version: %p, changed %v, ok %v; want the cluster, unchanged", got, changed, ok)
	}
	if _, changed, ok := f.DoorbellLookup(text, 6); !ok || !changed {
		t.Errorf("at an older version: changed %v, ok %v; want changed", changed, ok)
	}
	if got, _, ok := f.DoorbellLookup([]byte("6f1c2b9e-0000-4000-8000-000000000043"), 7); ok || got != nil {
		t.Errorf("an unknown UID: %p, ok %v; want none", got, ok)
	}
	if n := testing.AllocsPerRun(100, func() { f.DoorbellLookup(text, 7) }); n != 0 {
		t.Errorf("a look-up allocates %v times; want none", n)
	}
	now := time.Unix(1_800_000_000, 0)
	f.SeenCluster(c, now)
	if got := f.LastSeen(c.Namespace, c.Name); !got.Equal(now) {
		t.Errorf("seen at %v after SeenCluster(%v)", got, now)
	}
	f.Seen(c.Namespace, c.Name, now.Add(time.Second))
	if got := f.LastSeen(c.Namespace, c.Name); !got.Equal(now.Add(time.Second)) {
		t.Errorf("seen at %v after Seen(%v)", got, now.Add(time.Second))
	}
}
