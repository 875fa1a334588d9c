package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// simAgent is a minimal stand-in for an agent: it reads desired state and reports states.
type simAgent struct {
	name, cred string
	c          *client.Client
	seq        int64
}

func (a *simAgent) desired(t *testing.T) map[string]api.DeploymentSpec {
	t.Helper()
	ds := waitDesired(t, a.c, func(*api.DesiredState) bool { return true })
	out := map[string]api.DeploymentSpec{}
	for _, d := range ds.Deployments {
		out[d.Bundle] = d
	}
	return out
}

// deployment waits until the cluster's desired state holds bundle (the server computes it
// after the Bundle is written, not with it) and returns its deployment.
func (a *simAgent) deployment(t *testing.T, bundle string) api.DeploymentSpec {
	t.Helper()
	ds := waitDesired(t, a.c, func(ds *api.DesiredState) bool {
		for _, d := range ds.Deployments {
			if d.Bundle == bundle {
				return true
			}
		}
		return false
	})
	for _, d := range ds.Deployments {
		if d.Bundle == bundle {
			return d
		}
	}
	return api.DeploymentSpec{}
}

func (a *simAgent) report(t *testing.T, bundle, id, state, msg string) {
	t.Helper()
	a.seq++
	if err := a.c.ReportStatus(ctxT(t), api.StatusReport{Seq: a.seq, Deployments: []api.DeploymentStatus{{Bundle: bundle, ID: id, State: state, Message: msg}}}); err != nil {
		t.Fatal(err)
	}
}

func registerN(t testing.TB, ts *testServer, labels []map[string]string) []*simAgent {
	tok := createToken(t, ts, "many", api.RegistrationTokenSpec{})
	var out []*simAgent
	for i, l := range labels {
		r, err := ts.agent(t, "").Register(ctxT(t), tok, api.RegisterRequest{ClientID: fmt.Sprintf("client-%d", i), Labels: l})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &simAgent{name: r.ClusterName, cred: r.Credential, c: ts.agent(t, r.Credential)})
	}
	return out
}

func putBundle(t *testing.T, ts *testServer, name string, spec map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(spec)
	if _, _, err := ts.admin.Apply(ctxT(t), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace}, Spec: raw}, false); err != nil {
		t.Fatal(err)
	}
}

func cm(v string) []map[string]string {
	return []map[string]string{{"name": "cm.yaml", "content": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {v: \"" + v + "\"}\n"}}
}

// eventually retries check until it returns "" (success) or time runs out.
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		if last = check(); last == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %s", what, last)
}

func TestStagedRollout(t *testing.T) {
	ts := start(t, t.TempDir())
	agents := registerN(t, ts, []map[string]string{{"ring": "canary"}, {"ring": "main"}, {"ring": "main"}, {"ring": "main"}})
	strategy := map[string]any{"maxUnavailable": 1, "partitions": []map[string]any{
		{"name": "canary", "clusterSelector": map[string]any{"matchLabels": map[string]string{"ring": "canary"}}},
		{"name": "main", "clusterSelector": map[string]any{"matchLabels": map[string]string{"ring": "main"}}, "maxUnavailable": 1},
	}}
	all := []map[string]any{{"clusterSelector": map[string]any{}}}
	putBundle(t, ts, "app", map[string]any{"resources": cm("1"), "targets": all, "rolloutStrategy": strategy})
	const key = "fleet-default/app"
	v1 := map[string]string{}
	eventually(t, "v1 everywhere", func() string {
		for _, a := range agents {
			d, ok := a.desired(t)[key]
			if !ok {
				return a.name + " has no deployment"
			}
			v1[a.name] = d.ID
		}
		return ""
	})
	for _, a := range agents {
		a.report(t, key, v1[a.name], api.StateReady, "")
	}
	waitBundle(t, ts, "app", func(s *api.Summary) bool { return s.Ready == 4 })

	// v2: only the canary gets it first.
	putBundle(t, ts, "app", map[string]any{"resources": cm("2"), "targets": all, "rolloutStrategy": strategy})
	canary, main := agents[0], agents[1:]
	var v2 string
	eventually(t, "canary first", func() string {
		d := canary.desired(t)[key]
		if d.ID == v1[canary.name] {
			return "canary still on v1"
		}
		v2 = d.ID
		for _, a := range main {
			if a.desired(t)[key].ID != v1[a.name] {
				return a.name + " updated before the canary was ready"
			}
		}
		return ""
	})
	// The canary fails: the rollout waits and says why.
	canary.report(t, key, v2, api.StateErrApplied, "ConfigMap app: admission webhook denied")
	eventually(t, "rollout waits on the failing canary", func() string {
		o, _ := ts.admin.Get(ctxT(t), api.KindBundle, api.DefaultNamespace, "app")
		var st api.BundleStatus
		json.Unmarshal(o.Status, &st)
		if len(st.Conditions) == 0 || !strings.Contains(st.Conditions[0].Message, canary.name) || !strings.Contains(st.Conditions[0].Message, "admission webhook denied") {
			return fmt.Sprintf("conditions %+v", st.Conditions)
		}
		if len(st.Partitions) != 2 || st.Partitions[0].Name != "canary" {
			return fmt.Sprintf("partitions %+v", st.Partitions)
		}
		return ""
	})
	time.Sleep(300 * time.Millisecond)
	for _, a := range main {
		if a.desired(t)[key].ID != v1[a.name] {
			t.Fatalf("%s updated while the canary fails", a.name)
		}
	}
	// The canary recovers: main updates one cluster at a time (maxUnavailable 1).
	canary.report(t, key, v2, api.StateReady, "")
	updated := map[string]bool{}
	for round := 0; round < len(main); round++ {
		eventually(t, "next main cluster", func() string {
			var fresh []string
			for _, a := range main {
				if !updated[a.name] && a.desired(t)[key].ID != v1[a.name] {
					fresh = append(fresh, a.name)
				}
			}
			if len(fresh) != 1 {
				return fmt.Sprintf("%d clusters newly updated at once (%v), want 1", len(fresh), fresh)
			}
			for _, a := range main {
				if a.name == fresh[0] {
					updated[a.name] = true
					a.report(t, key, a.desired(t)[key].ID, api.StateReady, "")
				}
			}
			return ""
		})
	}
	waitBundle(t, ts, "app", func(s *api.Summary) bool { return s.Ready == 4 && s.OutOfSync == 0 })
}

func TestDependsOn(t *testing.T) {
	ts := start(t, t.TempDir())
	a := registerN(t, ts, []map[string]string{{"env": "prod"}})[0]
	all := []map[string]any{{"clusterSelector": map[string]any{}}}
	putBundle(t, ts, "db", map[string]any{"resources": cm("db"), "targets": all})
	putBundle(t, ts, "app", map[string]any{"resources": cm("app"), "targets": all, "dependsOn": []map[string]string{{"name": "db"}}})
	eventually(t, "db offered, app held", func() string {
		d := a.desired(t)
		var names []string
		for k := range d {
			names = append(names, k)
		}
		sort.Strings(names)
		if fmt.Sprint(names) != "[fleet-default/db]" {
			return fmt.Sprint(names)
		}
		return ""
	})
	db := a.desired(t)["fleet-default/db"]
	a.report(t, db.Bundle, db.ID, api.StateNotReady, "")
	time.Sleep(200 * time.Millisecond)
	if _, ok := a.desired(t)["fleet-default/app"]; ok {
		t.Fatal("app offered while db is not ready")
	}
	a.report(t, db.Bundle, db.ID, api.StateReady, "")
	eventually(t, "app offered once db is ready", func() string {
		if _, ok := a.desired(t)["fleet-default/app"]; !ok {
			return "app still held"
		}
		return ""
	})
}

func TestLongPollComesEarly(t *testing.T) {
	ts := start(t, t.TempDir())
	a := registerN(t, ts, []map[string]string{{"env": "prod"}})[0]
	ds := waitDesired(t, a.c, func(*api.DesiredState) bool { return true })
	got := make(chan *api.DesiredState, 1)
	go func() {
		// Far longer than the test waits: only a change can end it early.
		st, _, _, _ := a.c.WaitDesired(ctxT(t), ds.Revision, 50*time.Second)
		got <- st
	}()
	time.Sleep(200 * time.Millisecond)
	putBundle(t, ts, "late", map[string]any{"resources": cm("x"), "targets": []map[string]any{{"clusterSelector": map[string]any{}}}})
	select {
	case st := <-got:
		if st == nil || len(st.Deployments) != 1 {
			t.Fatalf("long poll answered %+v, want the new deployment", st)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a waiting agent was not told of its new desired state")
	}
}

func TestAgentMetrics(t *testing.T) {
	ts := start(t, t.TempDir())
	a := registerN(t, ts, []map[string]string{{"env": "prod"}})[0]
	// Status is accepted only for a bundle that targets the cluster.
	putBundle(t, ts, "app", map[string]any{"resources": cm("x"), "targets": []map[string]any{{"clusterSelector": map[string]any{}}}})
	ds := waitDesired(t, a.c, func(ds *api.DesiredState) bool { return len(ds.Deployments) == 1 })
	for range 3 {
		a.c.Desired(ctxT(t), ds.Revision)
	}
	a.report(t, "fleet-default/app", ds.Deployments[0].ID, api.StateReady, "")
	wants := []string{
		`flotilla_agent_requests_total{answer="not_modified",call="desired"} 3`,
		`flotilla_agent_requests_total{answer="changed",call="desired"}`,
		`flotilla_agent_requests_total{answer="accepted",call="status"} 1`,
		`flotilla_clusters{state="Ready"} 1`,
		`flotilla_store_batch_size_count`,
		`flotilla_controller_reconcile_duration_seconds_count{controller="fleet-status",result="ok"}`,
		`flotilla_controller_queue_depth{controller="fleet-status"}`,
		`flotilla_http_request_duration_seconds_count{method="GET",route="GET /v1/agent/desired"}`,
	}
	eventually(t, "metrics", func() string {
		raw := metricsText(t, ts)
		for _, want := range wants {
			if !strings.Contains(raw, want) {
				return "metrics lack " + want
			}
		}
		return ""
	})
}

func metricsText(t *testing.T, ts *testServer) string {
	t.Helper()
	tc, _ := client.TLSConfig(nil, ts.checksum, false)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	req, _ := http.NewRequest("GET", ts.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestGitRepoRollup(t *testing.T) {
	ts := start(t, t.TempDir())
	agents := registerN(t, ts, []map[string]string{{"env": "prod"}, {"env": "prod"}})
	// Two bundles as the GitRepo controller would make them, and the GitRepo itself with a
	// status field of its own that the rollup must keep.
	gr := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindGitRepo},
		Metadata: api.ObjectMeta{Name: "apps", Namespace: api.DefaultNamespace}, Spec: json.RawMessage(`{"repo":"https://git.example.com/apps.git"}`)}
	if _, err := ts.admin.Create(ctxT(t), gr); err != nil {
		t.Fatal(err)
	}
	// The GitRepo controller writes this status too (its fetch of the fake URL fails), so
	// the write is retried at the status it races with, as a controller would.
	for attempt := 0; ; attempt++ {
		o, _ := ts.admin.Get(ctxT(t), api.KindGitRepo, api.DefaultNamespace, "apps")
		o.Status = json.RawMessage(`{"commit":"abc123"}`)
		_, err := ts.admin.UpdateStatus(ctxT(t), o)
		if err == nil {
			break
		}
		if !client.IsConflict(err) || attempt == 20 {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"apps-one", "apps-two"} {
		raw, _ := json.Marshal(map[string]any{"resources": cm(name), "targets": []map[string]any{{"clusterSelector": map[string]any{}}}})
		if _, _, err := ts.admin.Apply(ctxT(t), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace, Labels: map[string]string{"flotilla.dev/gitrepo": "apps"}}, Spec: raw}, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range agents {
		// Both bundles reach a cluster's desired state on the fleet controller's own time:
		// report only once both are there, or a report races the fan-out and is never sent.
		ds := waitDesired(t, a.c, func(ds *api.DesiredState) bool { return len(ds.Deployments) == 2 })
		for _, d := range ds.Deployments {
			k := d.Bundle
			state := api.StateReady
			if a == agents[1] && k == "fleet-default/apps-two" {
				state = api.StateErrApplied
			}
			a.report(t, k, d.ID, state, "boom")
		}
	}
	eventually(t, "GitRepo summary", func() string {
		o, _ := ts.admin.Get(ctxT(t), api.KindGitRepo, api.DefaultNamespace, "apps")
		var st api.GitRepoStatus
		json.Unmarshal(o.Status, &st)
		s := st.Summary
		if st.Commit != "abc123" {
			return "the rollup dropped the controller's commit field"
		}
		if s == nil || s.DesiredReady != 4 || s.Ready != 3 || s.ErrApplied != 1 || len(s.NonReadyResources) != 1 ||
			s.NonReadyResources[0].Name != "apps-two/"+agents[1].name {
			return fmt.Sprintf("summary %+v", s)
		}
		return ""
	})
}
