package server_test

import (
	"net/http"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// Desired-state versions are digests of the state: after a restart an agent whose state
// did not change is answered "unchanged" (a million agents are not sent their state again),
// while one whose state changed while the server was down learns it.
func TestVersionsSurviveRestart(t *testing.T) {
	ts := start(t, t.TempDir())
	agents := registerN(t, ts, []map[string]string{{"env": "prod"}, {"env": "dev"}})
	prod, dev := agents[0], agents[1]
	putBundle(t, ts, "web", map[string]any{"resources": cm("1"), "targets": []map[string]any{{"clusterSelector": map[string]any{"matchLabels": map[string]string{"env": "prod"}}}}})
	putBundle(t, ts, "db", map[string]any{"resources": cm("1"), "targets": []map[string]any{{"clusterSelector": map[string]any{"matchLabels": map[string]string{"env": "dev"}}}}})
	one := func(ds *api.DesiredState) bool { return len(ds.Deployments) == 1 }
	prodDS, devDS := waitDesired(t, prod.c, one), waitDesired(t, dev.c, one)
	if prodDS.Revision <= 0 || devDS.Revision <= 0 {
		t.Fatalf("versions %d and %d, want positive", prodDS.Revision, devDS.Revision)
	}
	if ds, rev, _, err := prod.c.Desired(ctxT(t), prodDS.Revision); err != nil || ds != nil || rev != prodDS.Revision {
		t.Fatalf("unchanged poll answered %+v, %d, %v", ds, rev, err)
	}

	ts.stop()
	ts = start(t, ts.dir)
	// Changed while the server was down, as far as the dev cluster knows: a new db.
	putBundle(t, ts, "db", map[string]any{"resources": cm("2"), "targets": []map[string]any{{"clusterSelector": map[string]any{"matchLabels": map[string]string{"env": "dev"}}}}})
	prod.c, dev.c = ts.agent(t, prod.cred), ts.agent(t, dev.cred)

	if ds, rev, _, err := prod.c.Desired(ctxT(t), prodDS.Revision); err != nil || ds != nil || rev != prodDS.Revision {
		t.Errorf("after a restart, the unchanged cluster's poll answered %+v, version %d, %v; want unchanged at %d", ds, rev, err, prodDS.Revision)
	}
	got := waitDesired(t, dev.c, func(ds *api.DesiredState) bool { return ds.Deployments[0].ID != devDS.Deployments[0].ID })
	if ds, _, _, err := dev.c.Desired(ctxT(t), devDS.Revision); err != nil || ds == nil || ds.Revision != got.Revision || got.Revision == devDS.Revision {
		t.Errorf("the changed cluster polling with its old version %d: %+v, %v; want the new state at a new version", devDS.Revision, ds, err)
	}
	// A first poll (version 0) always gets the state.
	if ds, _, _, err := prod.c.Desired(ctxT(t), 0); err != nil || ds == nil || ds.Revision != prodDS.Revision {
		t.Errorf("first poll: %+v, %v; want the state at version %d", ds, err, prodDS.Revision)
	}

	// A long poll at the unchanged version is held, not answered "unchanged" at once because
	// the restart left the version to be computed, so it hears of a change made meanwhile.
	ts.stop()
	ts = start(t, ts.dir)
	prod.c = ts.agent(t, prod.cred)
	got = nil
	done := make(chan *api.DesiredState, 1)
	go func() {
		for {
			// The model may still be loading after the restart: that is answered 503, and
			// agents poll again.
			ds, _, _, err := prod.c.WaitDesired(ctxT(t), prodDS.Revision, 50*time.Second)
			if client.Code(err) == http.StatusServiceUnavailable {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Errorf("long poll after a restart: %v", err)
			}
			done <- ds
			return
		}
	}()
	time.Sleep(200 * time.Millisecond)
	putBundle(t, ts, "web", map[string]any{"resources": cm("2"), "targets": []map[string]any{{"clusterSelector": map[string]any{"matchLabels": map[string]string{"env": "prod"}}}}})
	select {
	case got = <-done:
		if got == nil || len(got.Deployments) != 1 || got.Deployments[0].ID == prodDS.Deployments[0].ID {
			t.Errorf("long poll after a restart answered %+v; want held until web changed, then the new state", got)
		}
	case <-time.After(20 * time.Second):
		t.Error("a long poll after a restart did not hear of the change")
	}
}
