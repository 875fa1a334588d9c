package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// BenchmarkLoad times loading the fleet model from a store of FLOTILLA_LOAD_CLUSTERS
// clusters (default 20,000) with three labels each, one bundle and every cluster's report
// of it (seedFleet).
//
//	FLOTILLA_LOAD_CLUSTERS=100000 go test -run XXX -bench Load -benchtime 3x ./internal/fleet/
func BenchmarkLoad(b *testing.B) {
	n := envCount("FLOTILLA_LOAD_CLUSTERS", 20000)
	ctx := context.Background()
	st := seedFleet(b, n)
	b.ResetTimer()
	for range b.N {
		f := New(st, Config{})
		start, cpu := time.Now(), cpuTime()
		if _, err := f.load(ctx); err != nil {
			b.Fatal(err)
		}
		// On a shared machine the CPU time (collector included) varies less than the wall time.
		b.ReportMetric(float64(time.Since(start).Microseconds())/float64(n), "µs/cluster")
		b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(n), "cpu-µs/cluster")
	}
}

// A load restores what agents reported (read alongside the clusters) and keeps one copy of
// what clusters share.
func TestLoadRestoresReports(t *testing.T) {
	ctx := context.Background()
	const n = 300
	st := seedClusters(t, n)
	for i := range n {
		if i%3 == 0 {
			continue
		}
		rows := []store.DeploymentStatus{{Bundle: "fleet-default/gone", ID: "id-1", State: api.StateReady}}
		if i%3 == 2 {
			rows = append(rows, store.DeploymentStatus{Bundle: "fleet-default/other", ID: "id-2", State: "ErrApplied", Message: "boom " + strconv.Itoa(i)})
		}
		if err := st.PutStatus(ctx, seededUID(i), int64(i+1), rows, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Rows of a cluster that no longer exists are ignored.
	if err := st.PutStatus(ctx, "no-such-cluster", 9, []store.DeploymentStatus{{Bundle: "fleet-default/gone", ID: "x", State: api.StateReady}}, nil); err != nil {
		t.Fatal(err)
	}
	f := New(st, Config{})
	if _, err := f.load(ctx); err != nil {
		t.Fatal(err)
	}
	if len(f.byUID) != n || len(f.workspaces["fleet-default"].clusters) != n {
		t.Fatalf("loaded %d clusters (%d in fleet-default), want %d", len(f.byUID), len(f.workspaces["fleet-default"].clusters), n)
	}
	labelMaps := map[uintptr]bool{}
	for i := range n {
		c := f.byUID[seededUID(i)]
		if c == nil || c.Name != seededName(i) || c.ClientID != fmt.Sprintf("%036d", i) || f.workspaces["fleet-default"].clusters[c.Name] != c {
			t.Fatalf("cluster %d: %+v", i, c)
		}
		labelMaps[reflect.ValueOf(c.Labels).Pointer()] = true
		wantDeps := 1 + i%3/2
		if i%3 == 0 {
			wantDeps = 0
		}
		if len(c.deps) != wantDeps {
			t.Fatalf("cluster %d: %d pairs, want %d", i, len(c.deps), wantDeps)
		}
		if wantDeps == 0 {
			continue
		}
		if p := c.deps.get("gone"); p == nil || p.reportedID != "id-1" || p.state.String() != api.StateReady || p.target != -1 {
			t.Fatalf("cluster %d: pair of gone: %+v", i, p)
		}
		if wantDeps == 2 {
			if p := c.deps.get("other"); p == nil || p.state.String() != "ErrApplied" || p.message != "boom "+strconv.Itoa(i) {
				t.Fatalf("cluster %d: pair of other: %+v", i, p)
			}
		}
	}
	// seedClusters gives 2 × 3 × 1 label combinations.
	if len(labelMaps) != 6 {
		t.Errorf("%d distinct label maps for 6 distinct label sets", len(labelMaps))
	}
}

// A load does not read the report sequences: the store keeps each cluster's reports in
// order. After a load, a report older than the stored one changes neither the store nor
// the model; the stored one sent again is the same rows; a newer one is taken.
func TestLoadKeepsReportOrder(t *testing.T) {
	ctx := context.Background()
	st := seedFleet(t, 3)
	f := New(st, Config{})
	if _, err := f.load(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.RLock()
	id := f.workspaces["fleet-default"].bundles["app"].targets[0].id
	f.mu.RUnlock()
	// seedFleet stored report 1 of each cluster (app Ready); cluster 0 then sent report 5.
	uid := seededUID(0)
	report := func(seq int64, state string) ReportResult {
		t.Helper()
		rep := &api.StatusReport{Seq: seq, Deployments: []api.DeploymentStatus{{Bundle: "fleet-default/app", ID: id, State: state}}}
		res, err := f.Report(ctx, "fleet-default", seededName(0), uid, rep, time.Now())
		if err != nil || len(res.Refused) > 0 {
			t.Fatalf("report %d: %+v, %v", seq, res, err)
		}
		return res
	}
	storedState := func() string {
		t.Helper()
		var state string
		if err := st.ScanStatus(ctx, func(r store.DeploymentStatus) error {
			if r.Cluster == uid {
				state = r.State
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return state
	}
	modelState := func() string {
		f.mu.RLock()
		defer f.mu.RUnlock()
		return f.byUID[uid].deps.get("app").state.String()
	}
	if err := st.PutStatus(ctx, uid, 5, []store.DeploymentStatus{{Bundle: "fleet-default/app", ID: id, State: api.StateNotReady}}, nil); err != nil {
		t.Fatal(err)
	}
	f = New(st, Config{})
	if _, err := f.load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := modelState(); got != api.StateNotReady {
		t.Fatalf("loaded %s, want report 5's NotReady", got)
	}
	// Report 4, delayed: older than the stored 5.
	if res := report(4, api.StateReady); res.Fresh {
		t.Errorf("report 4 after stored 5 taken as fresh")
	}
	if s, m := storedState(), modelState(); s != api.StateNotReady || m != api.StateNotReady {
		t.Errorf("after stale report 4: stored %s, model %s; want NotReady in both", s, m)
	}
	// Report 5 again (its acknowledgement was lost): the same rows.
	report(5, api.StateNotReady)
	if s, m := storedState(), modelState(); s != api.StateNotReady || m != api.StateNotReady {
		t.Errorf("after report 5 again: stored %s, model %s; want NotReady in both", s, m)
	}
	// Report 6: taken.
	if res := report(6, api.StateReady); !res.Fresh {
		t.Errorf("report 6 not taken as fresh")
	}
	if s, m := storedState(), modelState(); s != api.StateReady || m != api.StateReady {
		t.Errorf("after report 6: stored %s, model %s; want Ready in both", s, m)
	}
}

// countingStore counts the objects read one by one.
type countingStore struct {
	Store
	gets atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, key store.Key) (*api.Object, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, key)
}

// After a load every cluster's rollup is recomputed; those already stored are neither
// written nor read back.
func TestLoadDoesNotRewriteStoredStatus(t *testing.T) {
	ctx := context.Background()
	const n = 200
	st := seedClusters(t, n)
	now := time.Now()
	first := &countingStore{Store: st}
	// With bundles a load leaves every cluster's rollup to write; here there are none.
	loadDirty := func(f *Fleet) {
		t.Helper()
		if _, err := f.load(ctx); err != nil {
			t.Fatal(err)
		}
		for _, c := range f.byUID {
			f.dirtyClusters.add(c)
		}
	}
	f := New(first, Config{})
	loadDirty(f)
	f.flush(ctx, now)
	if got := first.gets.Load(); got != n {
		t.Fatalf("first flush read %d clusters, want all %d (their seeded status differs)", got, n)
	}
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One cluster's status is changed behind the model's back.
	obj, err := st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: "fleet-default", Name: seededName(7)})
	if err != nil {
		t.Fatal(err)
	}
	obj.Status = json.RawMessage(`{"state":"Modified"}`)
	if _, err := st.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}

	again := &countingStore{Store: st}
	f = New(again, Config{})
	loadDirty(f)
	f.flush(ctx, now)
	if got := again.gets.Load(); got != 1 {
		t.Errorf("flush after a reload read %d clusters, want only the 1 changed behind its back", got)
	}
	if after, _ := st.Revision(ctx); after != rev+2 {
		t.Errorf("store revision %d after the reload's flush, want %d (the outside change and its repair)", after, rev+2)
	}
	if obj, err = st.Get(ctx, store.KeyOf(obj)); err != nil || strings.Contains(string(obj.Status), "Modified") {
		t.Errorf("the changed status was not repaired: %s %v", obj.Status, err)
	}
}

// The load's raised collector percent outlasts the load until its garbage is collected, so
// that requests served meanwhile do not pay for that collection in assists (a restart at 1M
// answered its first request in 0.6–0.8 s, not 10 ms, with the percent back down), and it is
// lowered again after.
func TestLoadPercentRestoredAfterCollection(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	_, f, _ := runSeeded(t, 200, time.Hour)
	if !f.Ready() {
		t.Fatal("not ready")
	}
	sample := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		metrics.Read(sample)
		if p := sample[0].Value.Uint64(); p == 100 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the collector's percent is %d after the load, want 100 again", p)
		}
	}
}
