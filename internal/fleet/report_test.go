package fleet

import (
	"context"
	"encoding/json"
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
		return p.reportedID, p.state
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
	fresh, err := e.f.Report(context.Background(), reportNS, reportName, reportUID, rep, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !fresh {
		t.Error("the resend of a report whose write failed was taken as a duplicate")
	}
	e.restart()
	if id, state := e.reported("app"); id != "id-2" || state != api.StateReady {
		t.Errorf("after a restart the model holds %s %s, want the acknowledged id-2 Ready", id, state)
	}
	if dup, err := e.f.Report(context.Background(), reportNS, reportName, reportUID, rep, time.Now()); err != nil || dup {
		t.Errorf("a resend after the restart: fresh %v, err %v; want a duplicate", dup, err)
	}
}
