package fleet

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// WaitKnown returns as the model learns the cluster from its watch event (long before its
// recheck would notice), and reports a cluster the model never learns as unknown.
func TestWaitKnown(t *testing.T) {
	e := newReportEnv(t)
	ctx := context.Background()
	if !e.f.WaitKnown(ctx, reportNS, reportName, reportUID, time.Second) {
		t.Fatal("a loaded cluster is not known")
	}
	got := make(chan bool, 1)
	go func() { got <- e.f.WaitKnown(ctx, reportNS, "edge-new", "uid-new", time.Minute) }()
	select {
	case <-got:
		t.Fatal("WaitKnown returned before the cluster was added")
	case <-time.After(20 * time.Millisecond):
	}
	raw, _ := json.Marshal(&api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster},
		Metadata: api.ObjectMeta{Namespace: reportNS, Name: "edge-new", UID: "uid-new"}, Spec: json.RawMessage(`{}`)})
	e.f.apply(api.KindCluster, store.Event{Type: api.Added, Object: raw})
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("WaitKnown reported an added cluster unknown")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitKnown did not return once the cluster was added")
	}
	if e.f.WaitKnown(ctx, reportNS, "edge-new", "uid-other", 10*time.Millisecond) {
		t.Error("a cluster of that name with another UID is reported known")
	}
	e.f.known.mu.Lock()
	left := len(e.f.known.m)
	e.f.known.mu.Unlock()
	if left != 0 {
		t.Errorf("%d waiters left behind", left)
	}
}
