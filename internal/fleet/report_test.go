package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
)

// reportEnv is a fleet model over a real SQLite store in dir, holding cluster "c-1" (UID
// "uid-1") of fleet-default and bundle "app", which targets it.
type reportEnv struct {
	t   *testing.T
	dir string
	st  *sqlite.Store
	f   *Fleet
}

const (
	reportNS   = "fleet-default"
	reportName = "c-1"
	reportUID  = "uid-1"
)

func newReportEnv(t *testing.T) *reportEnv {
	t.Helper()
	e := &reportEnv{t: t, dir: t.TempDir()}
	e.open()
	ctx := context.Background()
	now := time.Now().UTC()
	if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: reportName, UID: reportUID, CreationTimestamp: &now}, Spec: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: "app", UID: "uid-app", Generation: 1, CreationTimestamp: &now},
		Spec:     json.RawMessage(`{"contentHash":"sha256:0123","targets":[{"clusterName":"` + reportName + `"}]}`)}); err != nil {
		t.Fatal(err)
	}
	e.load()
	return e
}

func (e *reportEnv) open() {
	e.t.Helper()
	st, err := sqlite.Open(context.Background(), e.dir, sqlstore.Config{Summaries: map[string]store.Summarizer{api.KindCluster: SummarizeCluster}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.st = st
	e.t.Cleanup(func() { st.Close() })
}

func (e *reportEnv) load() {
	e.t.Helper()
	e.f = New(e.st, Config{})
	if _, err := e.f.load(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// restart closes the store and loads a new model from the same file.
func (e *reportEnv) restart() {
	e.t.Helper()
	if err := e.st.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
	e.load()
}

// reported is the state the model holds of bundle name on the cluster ("" for none).
func (e *reportEnv) reported(name string) (id, state string) {
	e.f.mu.RLock()
	defer e.f.mu.RUnlock()
	c := e.f.workspaces[reportNS].cluster(reportName, reportUID)
	if p := c.deps.get(name); p != nil {
		return p.reportedID, p.state.String()
	}
	return "", ""
}

// A report whose write failed is not taken as seen: its resend (same sequence number) is
// stored, and a restart shows it.
func TestReportFailedWriteThenRetry(t *testing.T) {
	e := newReportEnv(t)
	first := &api.StatusReport{Seq: 1, Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/app", ID: "id-1", State: api.StateNotReady}}}
	if _, err := e.f.Report(context.Background(), reportNS, reportName, reportUID, first, time.Now()); err != nil {
		t.Fatal(err)
	}
	rep := &api.StatusReport{Seq: 2, Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/app", ID: "id-2", State: api.StateReady}}}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.f.Report(cancelled, reportNS, reportName, reportUID, rep, time.Now()); err == nil {
		t.Fatal("a report with a cancelled request was acknowledged")
	}
	if id, state := e.reported("app"); id != "id-1" || state != api.StateNotReady {
		t.Errorf("after a failed write the model holds %s %s, want the stored id-1 NotReady", id, state)
	}
	res, err := e.f.Report(context.Background(), reportNS, reportName, reportUID, rep, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Fresh {
		t.Error("the resend of a report whose write failed was taken as a duplicate")
	}
	e.restart()
	if id, state := e.reported("app"); id != "id-2" || state != api.StateReady {
		t.Errorf("after a restart the model holds %s %s, want the acknowledged id-2 Ready", id, state)
	}
	// A load does not read report sequences (the store orders reports): the resend is
	// written again, the same rows.
	if _, err := e.f.Report(context.Background(), reportNS, reportName, reportUID, rep, time.Now()); err != nil {
		t.Errorf("a resend after the restart: %v", err)
	}
	if r := e.rows()[reportNS+"/app"]; r.ID != "id-2" || r.State != api.StateReady {
		t.Errorf("after the resend the store holds %+v, want id-2 Ready", r)
	}
	if id, state := e.reported("app"); id != "id-2" || state != api.StateReady {
		t.Errorf("after the resend the model holds %s %s, want id-2 Ready", id, state)
	}
}

// rows returns the stored status rows of the cluster, by bundle.
func (e *reportEnv) rows() map[string]store.DeploymentStatus {
	e.t.Helper()
	out := map[string]store.DeploymentStatus{}
	if err := e.st.ScanStatus(context.Background(), func(r store.DeploymentStatus) error {
		if r.Cluster == reportUID {
			out[r.Bundle] = r
		}
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// A cluster's status is stored only for the bundles that target it: a credential cannot add
// a row per name it makes up.
func TestReportOnlyTargetedBundles(t *testing.T) {
	e := newReportEnv(t)
	ctx := context.Background()
	rep := &api.StatusReport{Seq: 1, Deployments: []api.DeploymentStatus{
		{Bundle: reportNS + "/app", ID: "id-1", State: api.StateReady},
		{Bundle: reportNS + "/no-such-bundle", ID: "x", State: api.StateReady},
		{Bundle: "other-ns/app", ID: "x", State: api.StateReady},
	}, Removed: []string{reportNS + "/never-had-it"}}
	res, err := e.f.Report(ctx, reportNS, reportName, reportUID, rep, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Refused) != 2 || res.Refused[0].Field != "deployments[1].bundle" || res.Refused[1].Field != "deployments[2].bundle" {
		t.Errorf("refused %+v, want deployments[1] and deployments[2]", res.Refused)
	}
	rows := e.rows()
	if len(rows) != 1 || rows[reportNS+"/app"].ID != "id-1" {
		t.Errorf("stored %+v, want only fleet-default/app", rows)
	}
	// Many reports of made-up bundles store nothing and grow no model state.
	for seq := int64(2); seq < 50; seq++ {
		rep := &api.StatusReport{Seq: seq}
		for i := range 20 {
			rep.Deployments = append(rep.Deployments, api.DeploymentStatus{Bundle: fmt.Sprintf("%s/made-up-%d-%d", reportNS, seq, i), ID: "x", State: api.StateReady})
		}
		res, err := e.f.Report(ctx, reportNS, reportName, reportUID, rep, time.Now())
		if err != nil || len(res.Refused) != 20 {
			t.Fatalf("report %d: %d refused, err %v; want all 20 refused", seq, len(res.Refused), err)
		}
	}
	if rows := e.rows(); len(rows) != 1 {
		t.Errorf("after 48 reports of made-up bundles the store holds %d rows of the cluster, want 1", len(rows))
	}
	e.f.mu.RLock()
	n := len(e.f.workspaces[reportNS].cluster(reportName, reportUID).deps)
	e.f.mu.RUnlock()
	if n != 1 {
		t.Errorf("the model holds %d pairs of the cluster, want 1", n)
	}
	// A bundle the cluster ran keeps its status after its targets change, until the agent
	// reports it removed.
	if _, err := e.st.Update(ctx, bundleObj(t, e, `{"contentHash":"sha256:0123","targets":[{"clusterName":"someone-else"}]}`)); err != nil {
		t.Fatal(err)
	}
	e.load()
	res, err = e.f.Report(ctx, reportNS, reportName, reportUID, &api.StatusReport{Seq: 100, Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/app", ID: "id-1", State: api.StateModified}}}, time.Now())
	if err != nil || len(res.Refused) != 0 {
		t.Fatalf("a report of a bundle the cluster still runs: refused %+v, err %v", res.Refused, err)
	}
	if _, err := e.f.Report(ctx, reportNS, reportName, reportUID, &api.StatusReport{Seq: 101, Removed: []string{reportNS + "/app"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if rows := e.rows(); len(rows) != 0 {
		t.Errorf("after the removal the store holds %+v, want nothing", rows)
	}
	res, err = e.f.Report(ctx, reportNS, reportName, reportUID, &api.StatusReport{Seq: 102, Deployments: []api.DeploymentStatus{{Bundle: reportNS + "/app", ID: "id-1", State: api.StateReady}}}, time.Now())
	if err != nil || len(res.Refused) != 1 {
		t.Errorf("a report of a removed bundle that no longer targets the cluster: refused %+v, err %v; want it refused", res.Refused, err)
	}
}

func bundleObj(t *testing.T, e *reportEnv, spec string) *api.Object {
	t.Helper()
	obj, err := e.st.Get(context.Background(), store.Key{Kind: api.KindBundle, Namespace: reportNS, Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	obj.Spec = json.RawMessage(spec)
	return obj
}

// Unapplied names the content of deployments the cluster has not reported applied: all of
// them before its first report, none once it reports the deployment's ID, and the content
// again when its report names another ID.
func TestUnapplied(t *testing.T) {
	e := newReportEnv(t)
	ds, _, err := e.f.Desired(reportNS, reportName, reportUID, 0)
	if err != nil || len(ds.Deployments) != 1 {
		t.Fatalf("desired state %+v, %v; want one deployment", ds, err)
	}
	dep := ds.Deployments[0]
	if got := e.f.Unapplied(reportNS, reportName, reportUID, ds, 8, nil); len(got) != 1 || got[0] != "sha256:0123" {
		t.Errorf("before any report: %v, want [sha256:0123]", got)
	}
	// Paused before the cluster reported on it: its agent is about to fetch the content to
	// check the deployment, so it is listed.
	paused := dep
	paused.Paused = true
	if got := e.f.Unapplied(reportNS, reportName, reportUID, &api.DesiredState{Deployments: []api.DeploymentSpec{paused}}, 8, nil); len(got) != 1 {
		t.Errorf("a paused deployment not reported on yet: %v, want [sha256:0123]", got)
	}
	if got := e.f.Unapplied(reportNS, reportName, "uid-other", ds, 8, nil); len(got) != 0 {
		t.Errorf("for a cluster of another UID: %v, want none", got)
	}
	report := func(seq int64, id string) {
		t.Helper()
		rep := &api.StatusReport{Seq: seq, Deployments: []api.DeploymentStatus{{Bundle: dep.Bundle, ID: id, State: api.StateReady}}}
		if _, err := e.f.Report(context.Background(), reportNS, reportName, reportUID, rep, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	report(1, dep.ID)
	if got := e.f.Unapplied(reportNS, reportName, reportUID, ds, 8, nil); len(got) != 0 {
		t.Errorf("after the deployment was reported applied: %v, want none", got)
	}
	report(2, "an-older-id")
	if got := e.f.Unapplied(reportNS, reportName, reportUID, ds, 8, []string{"kept"}); len(got) != 2 || got[0] != "kept" || got[1] != "sha256:0123" {
		t.Errorf("after another ID was reported: %v, want [kept sha256:0123]", got)
	}
	// The same content named twice is listed once.
	two := &api.DesiredState{Deployments: []api.DeploymentSpec{dep, dep}}
	if got := e.f.Unapplied(reportNS, reportName, reportUID, two, 8, nil); len(got) != 1 {
		t.Errorf("one archive named twice: %v, want it once", got)
	}
	// Once reported on, a paused deployment reports the ID it last applied, never the
	// paused one: it is left out, or its content would be sent in every answer.
	if got := e.f.Unapplied(reportNS, reportName, reportUID, &api.DesiredState{Deployments: []api.DeploymentSpec{paused}}, 8, nil); len(got) != 0 {
		t.Errorf("a paused deployment: %v, want none", got)
	}
	// At most max digests, however many deployments are unapplied.
	many := &api.DesiredState{}
	for i := range 40 {
		d := dep
		d.Bundle, d.ContentHash = fmt.Sprintf("%s/b%d", reportNS, i), fmt.Sprintf("sha256:%04d", i)
		many.Deployments = append(many.Deployments, d)
	}
	if got := e.f.Unapplied(reportNS, reportName, reportUID, many, 5, []string{"kept"}); len(got) != 6 || got[5] != "sha256:0004" {
		t.Errorf("40 unapplied deployments, at most 5: %v, want kept and the first 5", got)
	}
}

// A cluster of many bundles (its pairs looked up by a map): what it reported applied is left
// out, the rest listed in the state's order.
func TestUnappliedManyBundles(t *testing.T) {
	e := newReportEnv(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for i := range 20 {
		if _, err := e.st.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Namespace: reportNS, Name: fmt.Sprintf("b%02d", i), Generation: 1, CreationTimestamp: &now},
			Spec:     json.RawMessage(fmt.Sprintf(`{"contentHash":"sha256:%04d","targets":[{"clusterName":%q}]}`, i, reportName))}); err != nil {
			t.Fatal(err)
		}
	}
	e.load()
	ds, _, err := e.f.Desired(reportNS, reportName, reportUID, 0)
	if err != nil || len(ds.Deployments) != 21 {
		t.Fatalf("desired state of %d deployments, %v; want 21", len(ds.Deployments), err)
	}
	var rep api.StatusReport
	rep.Seq = 1
	var want []string
	for i, d := range ds.Deployments {
		if i%2 == 0 {
			rep.Deployments = append(rep.Deployments, api.DeploymentStatus{Bundle: d.Bundle, ID: d.ID, State: api.StateReady})
		} else {
			want = append(want, d.ContentHash)
		}
	}
	if _, err := e.f.Report(ctx, reportNS, reportName, reportUID, &rep, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := e.f.Unapplied(reportNS, reportName, reportUID, ds, 100, nil); !slices.Equal(got, want) {
		t.Errorf("unapplied %v, want %v", got, want)
	}
}
