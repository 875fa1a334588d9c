package fleet

import (
	"context"
	"encoding/json"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/testenv/pg"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pg.StopShared()
	os.Exit(code)
}

// eventually polls cond for up to a minute: a bound for a hung test, not a measured figure.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two models on one real PostgreSQL database, as two server replicas: A leads, B does not.
// A report made through B reaches A's model and the rollup A writes; the lastSeen and
// inventory only B knows reach the stored Cluster and A's model; a long poll held on B wakes
// for a change written through A; and B never writes rollups while A leads, until A stops.
func TestReplicasFollowEachOther(t *testing.T) {
	url := pg.Start(t).NewDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *postgres.Store {
		st, err := postgres.Open(ctx, url, sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: SummarizeCluster}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	sa, sb := open(), open()
	now := time.Now().UTC()
	if _, err := sa.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: reportName, UID: reportUID, CreationTimestamp: &now}, Spec: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	bundleObj, err := sa.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: "app", UID: "uid-app", Generation: 1, CreationTimestamp: &now},
		Spec:     json.RawMessage(`{"contentHash":"sha256:0123","targets":[{"clusterName":"` + reportName + `"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	var aLeads, bLeads atomic.Bool
	aLeads.Store(true)
	cfg := Config{StatusInterval: 50 * time.Millisecond, Replicated: true}
	cfgA, cfgB := cfg, cfg
	cfgA.Leading = aLeads.Load
	cfgB.Leading = bLeads.Load
	fa, fb := New(sa, cfgA), New(sb, cfgB)
	go fa.Run(ctx)
	go fb.Run(ctx)
	eventually(t, "both models loaded", func() bool { return fa.Ready() && fb.Ready() })

	ds, rev, err := fb.Desired(reportNS, reportName, reportUID, 0)
	if err != nil || ds == nil || len(ds.Deployments) != 1 {
		t.Fatalf("desired state on B: %+v, %v", ds, err)
	}
	id := ds.Deployments[0].ID
	rep := &api.StatusReport{Seq: 1, Inventory: &api.ClusterInventory{KubernetesVersion: "v1.37.2"},
		Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/app", ID: id, State: api.StateReady}}}
	if _, err := fb.Report(ctx, reportNS, reportName, reportUID, rep, time.Now()); err != nil {
		t.Fatal(err)
	}
	reportedOnA := func() string {
		fa.mu.RLock()
		defer fa.mu.RUnlock()
		if c := fa.byUID[reportUID]; c != nil {
			if p := c.deps.get("app"); p != nil {
				return p.reportedID + " " + p.state.String()
			}
		}
		return ""
	}
	eventually(t, "A's model to take the report made through B", func() bool { return reportedOnA() == id+" "+api.StateReady })
	eventually(t, "the leader's rollup to count the report made through B", func() bool {
		obj, err := sa.Get(ctx, store.Key{Kind: api.KindBundle, Namespace: reportNS, Name: "app"})
		if err != nil {
			return false
		}
		var st api.BundleStatus
		json.Unmarshal(obj.Status, &st)
		return st.Summary != nil && st.Summary.Ready == 1
	})
	eventually(t, "B's lastSeen and inventory in the stored Cluster and A's model", func() bool {
		obj, err := sa.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: reportNS, Name: reportName})
		if err != nil {
			return false
		}
		var st api.ClusterStatus
		json.Unmarshal(obj.Status, &st)
		return st.LastSeen != nil && st.Inventory != nil && st.Inventory.KubernetesVersion == "v1.37.2" && !fa.LastSeen(reportNS, reportName).IsZero()
	})

	// A long poll held on B wakes for a change written through A.
	woke := make(chan bool, 1)
	go func() { woke <- fb.Wait(ctx, reportNS, reportName, rev, time.Minute) }()
	time.Sleep(100 * time.Millisecond)
	bundleObj.Spec = json.RawMessage(`{"contentHash":"sha256:4567","targets":[{"clusterName":"` + reportName + `"}]}`)
	bundleObj.Metadata.Generation = 2
	bundleObj.Metadata.ResourceVersion = ""
	if _, err := sa.Update(ctx, bundleObj); err != nil {
		t.Fatal(err)
	}
	select {
	case changed := <-woke:
		if !changed {
			t.Fatal("the long poll on B ended without the change made through A")
		}
	case <-time.After(time.Minute):
		t.Fatal("the long poll on B did not wake")
	}
	// B woke from its own stream; A follows the store too, not necessarily first.
	eventually(t, "both replicas to hold the new desired state", func() bool {
		da, _, _ := fa.Desired(reportNS, reportName, reportUID, 0)
		db, _, _ := fb.Desired(reportNS, reportName, reportUID, 0)
		return da != nil && db != nil && da.Revision == db.Revision && da.Deployments[0].ContentHash == "sha256:4567"
	})

	// The follower writes no rollup: B's report of the new version is counted only once
	// A leads no more and B takes over.
	ds, _, _ = fb.Desired(reportNS, reportName, reportUID, 0)
	aLeads.Store(false) // A stays up but stops writing, like a deposed leader
	rep2 := &api.StatusReport{Seq: 2, Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/app", ID: ds.Deployments[0].ID, State: api.StateNotReady, Message: "rolling"}}}
	if _, err := fb.Report(ctx, reportNS, reportName, reportUID, rep2, time.Now()); err != nil {
		t.Fatal(err)
	}
	notReady := func() bool {
		obj, err := sa.Get(ctx, store.Key{Kind: api.KindBundle, Namespace: reportNS, Name: "app"})
		if err != nil {
			return false
		}
		var st api.BundleStatus
		json.Unmarshal(obj.Status, &st)
		return st.Summary != nil && st.Summary.NotReady == 1
	}
	time.Sleep(500 * time.Millisecond) // ten status passes of B as a follower
	if notReady() {
		t.Fatal("a replica that does not lead wrote a rollup")
	}
	bLeads.Store(true)
	eventually(t, "B, now leading, to write the rollup", notReady)
}

// A report stored through another replica that this model has not read when it stores the
// cluster's next report itself is still taken: the stream then shows the cluster at the
// sequence this model already has, and its rows hold both reports. The model here follows
// no stream on its own, so the test reads it at exactly that point.
func TestReplicaTakesReportStoredBeforeItsOwn(t *testing.T) {
	ctx, st, f, ids := twoBundleReplica(t)
	// Report 5 through another replica: bundle one is Ready.
	if err := st.PutStatus(ctx, reportUID, 5, []store.DeploymentStatus{{Cluster: reportUID, Bundle: reportNS + "/one", ID: ids[reportNS+"/one"], State: api.StateReady}}, nil); err != nil {
		t.Fatal(err)
	}
	// Report 6 through this one, before it read report 5: bundle two is Ready.
	rep := &api.StatusReport{Seq: 6, Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/two", ID: ids[reportNS+"/two"], State: api.StateReady}}}
	if _, err := f.Report(ctx, reportNS, reportName, reportUID, rep, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.mu.RLock()
	from := f.statusFrom
	f.mu.RUnlock()
	if _, err := st.StatusChanges(ctx, from, 1000, f.takeStoredStatus); err != nil {
		t.Fatal(err)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := f.byUID[reportUID]
	for _, b := range []string{"one", "two"} {
		if p := c.deps.get(b); p == nil || p.state != readyState {
			t.Errorf("bundle %s on the cluster: %+v, want Ready from the stored reports", b, p)
		}
	}
}

// A report that reaches the store after a newer one of its cluster stored through another
// replica (it was delayed here) is acknowledged as old news, and the model takes the newer
// stored rows, not its own: here the follower passed over the newer write while the old
// report was being stored, as it does for a cluster with a report in flight.
func TestReplicaStaleReportTakesStoredRows(t *testing.T) {
	ctx, st, f, ids := twoBundleReplica(t)
	one, two := reportNS+"/one", reportNS+"/two"
	f.mu.RLock()
	from := f.statusFrom
	c := f.byUID[reportUID]
	f.mu.RUnlock()
	// Report 5 through this replica: both bundles NotReady.
	rep := &api.StatusReport{Seq: 5, Deployments: []api.DeploymentStatus{{Bundle: one, ID: ids[one], State: api.StateNotReady}, {Bundle: two, ID: ids[two], State: api.StateNotReady}}}
	if res, err := f.Report(ctx, reportNS, reportName, reportUID, rep, time.Now()); err != nil || !res.Fresh {
		t.Fatalf("report 5: %+v, %v", res, err)
	}
	// Report 7 through another replica: both Ready. This model's follower passes over it
	// while report 6 is being stored here.
	if err := st.PutStatus(ctx, reportUID, 7, []store.DeploymentStatus{{Cluster: reportUID, Bundle: one, ID: ids[one], State: api.StateReady}, {Cluster: reportUID, Bundle: two, ID: ids[two], State: api.StateReady}}, nil); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.reporting[c] = make(chan struct{})
	f.mu.Unlock()
	if _, err := st.StatusChanges(ctx, from, 1000, f.takeStoredStatus); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	delete(f.reporting, c)
	f.mu.Unlock()
	// Report 6, delayed: bundle one Modified, two removed.
	rep = &api.StatusReport{Seq: 6, Deployments: []api.DeploymentStatus{{Bundle: one, ID: ids[one], State: api.StateModified}}, Removed: []string{two}}
	res, err := f.Report(ctx, reportNS, reportName, reportUID, rep, time.Now())
	if err != nil || res.Fresh {
		t.Errorf("report 6, older than the stored 7: %+v, %v; want accepted, not fresh", res, err)
	}
	stored := map[string]string{}
	if err := st.ScanStatus(ctx, func(r store.DeploymentStatus) error { stored[r.Bundle] = r.State; return nil }); err != nil {
		t.Fatal(err)
	}
	if stored[one] != api.StateReady || stored[two] != api.StateReady {
		t.Errorf("stored rows %v, want report 7's", stored)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, b := range []string{"one", "two"} {
		if p := c.deps.get(b); p == nil || p.state != readyState {
			t.Errorf("bundle %s on the cluster: %+v, want Ready from the stored report 7", b, p)
		}
	}
	if c.seq != 7 {
		t.Errorf("the model has the cluster at report %d, want 7", c.seq)
	}
}

// twoBundleReplica is a model on a fresh PostgreSQL database holding one cluster targeted by
// bundles "one" and "two", loaded, with the IDs of the cluster's two deployments by bundle.
func twoBundleReplica(t *testing.T) (context.Context, *postgres.Store, *Fleet, map[string]string) {
	t.Helper()
	url := pg.Start(t).NewDatabase(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := postgres.Open(ctx, url, sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: SummarizeCluster}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: reportName, UID: reportUID, CreationTimestamp: &now}, Spec: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"one", "two"} {
		if _, err := st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Namespace: reportNS, Name: name, UID: "uid-" + name, Generation: 1, CreationTimestamp: &now},
			Spec:     json.RawMessage(`{"contentHash":"sha256:0123","targets":[{"clusterName":"` + reportName + `"}]}`)}); err != nil {
			t.Fatal(err)
		}
	}
	f := New(st, Config{StatusInterval: 50 * time.Millisecond})
	go f.Run(ctx)
	eventually(t, "the model loaded", f.Ready)
	ds, _, err := f.Desired(reportNS, reportName, reportUID, 0)
	if err != nil || ds == nil || len(ds.Deployments) != 2 {
		t.Fatalf("desired state: %+v, %v", ds, err)
	}
	ids := map[string]string{}
	for _, d := range ds.Deployments {
		ids[d.Bundle] = d.ID
	}
	return ctx, st, f, ids
}
