package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
)

// The counts the model keeps as it changes are those a pass over it counts: after clusters
// are added, relabelled, paused, report deployments in every state and new inventories, and
// are deleted, every overview read from the counts equals the one counted by a pass, and the
// list's pages from the ordered index hold what a pass selects. (The store is a real SQLite
// file; the changes reach the model as the store's events do.)
func TestCountsFollowChanges(t *testing.T) {
	e := newReportEnv(t)
	ctx := context.Background()
	f := e.f
	// A bundle for the production clusters, besides "app" for c-1.
	now := time.Now().UTC()
	b, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: "web", UID: "uid-web", Generation: 1, CreationTimestamp: &now},
		Spec:     json.RawMessage(`{"contentHash":"sha256:0456","targets":[{"clusterSelector":{"matchLabels":{"env":"prod"}}}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	event := func(typ string, obj *api.Object) {
		raw, _ := json.Marshal(obj)
		f.apply(obj.Kind, store.Event{Type: typ, Object: raw})
	}
	event(api.Added, b)
	rng := rand.New(rand.NewPCG(1, 2))
	objs := map[string]*api.Object{}
	envs, regions := []string{"prod", "dev"}, []string{"eu", "us"}
	invs := []string{`{"kubernetesVersion":"v1.37.0","architecture":"arm64","agentVersion":"v1"}`,
		`{"kubernetesVersion":"v1.36.2","architecture":"amd64","agentVersion":"v2"}`}
	depStates := []string{api.StateReady, api.StateReady, api.StateErrApplied, api.StateModified, api.StateNotReady}
	seq := map[string]int64{}
	check := func(step string) {
		t.Helper()
		eu := func(c rbac.Cluster) bool { return c.Labels["region"] == "eu" }
		for _, q := range []ClusterQuery{{}, {CountLabel: "env"}, {Namespace: "ops"}, {Selector: labels.SelectorFromSet(labels.Set{"env": "prod"})},
			{View: eu, ViewByLabels: true, CountLabel: "region"}} {
			f.mu.RLock()
			got := f.overviewFromCounts(q)
			f.mu.RUnlock()
			want := f.overviewByPass(q)
			got.Took, want.Took = 0, 0
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s, query %+v:\ncounts %+v\npass   %+v", step, q, got, want)
			}
		}
		for _, q := range []ClusterQuery{{}, {State: api.StateNotReady}, {Reason: ReasonDeployments + api.StateErrApplied}, {Namespace: "ops"},
			{Architecture: "amd64", Selector: labels.SelectorFromSet(labels.Set{"region": "us"})}, {NamePrefix: "c-1"},
			{KubernetesVersion: "v1.37.0", Architecture: "arm64", View: eu, ViewByLabels: true}} {
			for _, at := range [][2]string{{"", ""}, {"fleet-default/c-2", ""}, {"", "ops/c-3"}} {
				fast := f.ListClusters(q, at[0], at[1], 3)
				slow := f.listByPass(q, at[0], at[1], 3)
				if fast.Total != slow.Total || !slices.Equal(rowKeys(fast.Rows), rowKeys(slow.Rows)) || (at[1] == "" && fast.More != slow.More) {
					t.Fatalf("%s, list %+v from %q: index %d %v more %v, pass %d %v more %v", step, q, at, fast.Total, rowKeys(fast.Rows), fast.More,
						slow.Total, rowKeys(slow.Rows), slow.More)
				}
			}
		}
	}
	check("loaded")
	for i := range 300 {
		name := fmt.Sprintf("c-%d", rng.IntN(40)+2)
		ns := []string{reportNS, "ops"}[rng.IntN(2)]
		key := ns + "/" + name
		obj := objs[key]
		switch op := rng.IntN(10); {
		case obj == nil:
			uid := fmt.Sprintf("uid-%s-%d", key, i)
			o, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
				Metadata: api.ObjectMeta{Namespace: ns, Name: name, UID: uid, CreationTimestamp: &now,
					Labels: map[string]string{"env": envs[rng.IntN(2)], "region": regions[rng.IntN(2)]}}, Spec: json.RawMessage(`{}`)})
			if err != nil {
				t.Fatal(err)
			}
			objs[key] = o
			event(api.Added, o)
		case op < 2: // relabel or pause
			o := *obj
			o.Metadata.Labels = map[string]string{"env": envs[rng.IntN(2)], "region": regions[rng.IntN(2)]}
			o.Spec = json.RawMessage(fmt.Sprintf(`{"paused":%v}`, rng.IntN(2) == 0))
			u, err := e.st.Update(ctx, &o)
			if err != nil {
				t.Fatal(err)
			}
			objs[key] = u
			event(api.Modified, u)
		case op < 3:
			if _, err := e.st.Delete(ctx, store.Key{Kind: api.KindCluster, Namespace: ns, Name: name}, ""); err != nil {
				t.Fatal(err)
			}
			delete(objs, key)
			event(api.Deleted, obj)
		case op < 6: // a report
			seq[obj.Metadata.UID]++
			var inv api.ClusterInventory
			json.Unmarshal([]byte(invs[rng.IntN(2)]), &inv)
			rep := &api.StatusReport{Seq: seq[obj.Metadata.UID], Inventory: &inv}
			if obj.Metadata.Labels["env"] == "prod" && ns == reportNS {
				rep.Deployments = []api.DeploymentStatus{{Bundle: reportNS + "/web", ID: "x", State: depStates[rng.IntN(len(depStates))]}}
			}
			// Some reports are from long ago: the cluster is Offline until it calls again.
			at := time.Now()
			if rng.IntN(4) == 0 {
				at = at.Add(-time.Hour)
			}
			if _, err := f.Report(ctx, ns, name, obj.Metadata.UID, rep, at); err != nil {
				t.Fatal(err)
			}
		default: // a poll
			f.Seen(ns, name, time.Now())
		}
		check(fmt.Sprintf("step %d", i))
	}
	f.mu.RLock()
	n := f.agg.order.Len()
	f.mu.RUnlock()
	if n != len(objs)+1 {
		t.Errorf("the index holds %d clusters, the model %d", n, len(objs)+1)
	}
	// A load counts what it read afresh, in its own order.
	e.load()
	f = e.f
	check("reloaded")
	if n := f.agg.order.Len(); n != len(objs)+1 {
		t.Errorf("after a reload the index holds %d clusters, the store %d", n, len(objs)+1)
	}
}
