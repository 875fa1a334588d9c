package fleet

import (
	"context"
	"encoding/json"
	"maps"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
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

// TestLoadKeepsStoredState: after a load (a restart), clusters whose stored lastSeen is old
// keep their stored state for one offline period instead of all turning Offline at once.
func TestLoadKeepsStoredState(t *testing.T) {
	ctx := context.Background()
	st := seedClusters(t, 2) // stored Ready, last seen days ago
	obj, err := st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: "fleet-default", Name: seededName(1)})
	if err != nil {
		t.Fatal(err)
	}
	obj.Status = json.RawMessage(`{"state":"Offline","lastSeen":"2026-11-22T20:00:00Z"}`)
	if _, err := st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	f := New(st, Config{OfflineAfter: time.Minute})
	if _, err := f.load(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ready, offline := f.workspaces["fleet-default"].clusters[seededName(0)], f.workspaces["fleet-default"].clusters[seededName(1)]
	if got := f.clusterState(ready, now); got != api.StateReady {
		t.Errorf("a cluster stored Ready is %s just after the load, want Ready", got)
	}
	if got := f.clusterState(offline, now); got != "Offline" {
		t.Errorf("a cluster stored Offline is %s just after the load, want Offline", got)
	}
	if got := f.clusterState(ready, now.Add(2*time.Minute)); got != "Offline" {
		t.Errorf("a cluster silent for an offline period after the load is %s, want Offline", got)
	}
	f.Seen("fleet-default", seededName(1), now)
	if got := f.clusterState(offline, now); got != api.StateReady {
		t.Errorf("a cluster stored Offline that called again is %s, want Ready", got)
	}
}

// TestStoredStatusWrittenElsewhereIsCorrected: a Cluster status written by someone else (a
// leader before this one, whose write arrived late) that differs from the model's is
// written again, even when only its summary differs.
func TestStoredStatusWrittenElsewhereIsCorrected(t *testing.T) {
	ctx, _, st := runSeeded(t, 1, 50*time.Millisecond)
	key := store.Key{Kind: api.KindCluster, Namespace: "fleet-default", Name: seededName(0)}
	summaryOf := func() *api.Summary {
		obj, err := st.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		var s api.ClusterStatus
		json.Unmarshal(obj.Status, &s)
		return s.Summary
	}
	deadline := time.Now().Add(30 * time.Second)
	time.Sleep(200 * time.Millisecond) // its first status passes
	obj, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	obj.Status = json.RawMessage(`{"state":"Ready","summary":{"desiredReady":1,"outOfSync":1}}`)
	if _, err := st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	for s := summaryOf(); s != nil && s.OutOfSync != 0; s = summaryOf() {
		if time.Now().After(deadline) {
			t.Fatalf("a status written elsewhere was left as it is: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOwnStatusWritesAreNotRewritten: the watch's event of a Cluster status this model wrote
// does not mark the cluster dirty again. It did once, and as a polled cluster's status always
// differs from the last (its lastSeen moves), every write brought another: at a million
// clusters the status writer never caught up.
func TestOwnStatusWritesAreNotRewritten(t *testing.T) {
	ctx, f, st := runSeeded(t, 1, 1500*time.Millisecond)
	key := store.Key{Kind: api.KindCluster, Namespace: "fleet-default", Name: seededName(0)}
	version := func() string {
		obj, err := st.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return obj.Metadata.ResourceVersion
	}
	deadline := time.Now().Add(30 * time.Second)
	// The agent calls all along.
	seen := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			f.Seen("fleet-default", seededName(0), time.Now())
		}
	}
	seen(100 * time.Millisecond)
	// A status written elsewhere makes the model write its own, once.
	obj, err := st.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	obj.Status = json.RawMessage(`{"state":"Offline"}`)
	if _, err := st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	theirs := version()
	for version() == theirs {
		if time.Now().After(deadline) {
			t.Fatal("the model never wrote the cluster's status")
		}
		seen(20 * time.Millisecond)
	}
	seen(200 * time.Millisecond)
	before := version()
	// Passes come 1.5 s apart, as at a large fleet a pass over every dirty cluster takes
	// longer than its agent waits between calls: each pass would find lastSeen moved.
	seen(5 * time.Second)
	if after := version(); after != before {
		t.Errorf("the cluster's status was written again (version %s → %s) with nothing changed but lastSeen, within its resolution", before, after)
	}
}

// TestStatsFromKeptCounts: the metrics' clusters by state, taken from the dashboard's kept
// counts, agree with a pass over every cluster: after a load, after some clusters call, and
// after a new one registers.
func TestStatsFromKeptCounts(t *testing.T) {
	ctx, f, st := runSeeded(t, 40, 50*time.Millisecond)
	walk := func() map[string]int {
		now := time.Now()
		out := map[string]int{}
		f.mu.RLock()
		defer f.mu.RUnlock()
		for _, w := range f.workspaces {
			for _, c := range w.clusters {
				out[f.clusterState(c, now)]++
			}
		}
		return out
	}
	check := func(when string) {
		t.Helper()
		got, _, _, _ := f.Stats()
		if want := walk(); !maps.Equal(got, want) {
			t.Errorf("%s: Stats counts %v, the clusters are %v", when, got, want)
		}
	}
	check("after the load")
	for i := range 15 {
		f.Seen("fleet-default", seededName(i), time.Now())
	}
	check("after 15 clusters called")
	// A cluster registered since, which has not called: Pending.
	now := time.Now().UTC()
	if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Name: "new", Namespace: "fleet-default", UID: "0b5c3c1e-8f5e-4c1a-9d6b-2a7e4f0c9d99", CreationTimestamp: &now},
		Spec:     json.RawMessage(`{"clientID":"new"}`)}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); f.UIDOf("fleet-default", "new") == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the model never saw the new cluster")
		}
	}
	check("after a cluster registered")
	if got, _, _, _ := f.Stats(); got["Pending"] != 1 || got[api.StateReady] != 40 {
		t.Errorf("clusters by state %v, want 40 Ready and 1 Pending", got)
	}
}

// runSeeded runs a model over n seeded clusters, with status passes every interval, until
// the test ends; it returns once the model is loaded.
func runSeeded(t *testing.T, n int, interval time.Duration) (context.Context, *Fleet, *sqlite.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := seedClusters(t, n)
	f := New(st, Config{StatusInterval: interval})
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(30 * time.Second); !f.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the model never loaded")
		}
	}
	return ctx, f, st
}
