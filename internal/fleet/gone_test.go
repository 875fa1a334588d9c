package fleet

import (
	"context"
	"encoding/json"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// A cluster leaving the model — its Cluster deleted, or given to a rebuilt cluster under a
// new UID — is told to Gone (the server closes its tunnel); a change of anything else is not.
func TestGoneOnDeleteAndReplace(t *testing.T) {
	e := newReportEnv(t)
	var gone []string
	e.f.cfg.Gone = func(ns, name string) { gone = append(gone, ns+"/"+name) }
	ctx := context.Background()
	cur, err := e.st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: reportNS, Name: reportName})
	if err != nil {
		t.Fatal(err)
	}
	event := func(typ string, obj *api.Object) {
		raw, _ := json.Marshal(obj)
		e.f.apply(api.KindCluster, store.Event{Type: typ, Object: raw})
	}
	labelled := cur.DeepCopy()
	labelled.Metadata.Labels = map[string]string{"env": "prod"}
	event(api.Modified, labelled)
	if len(gone) != 0 {
		t.Fatalf("a label change: gone %v", gone)
	}
	replaced := labelled.DeepCopy()
	replaced.Metadata.UID = "uid-rebuilt"
	event(api.Modified, replaced)
	if len(gone) != 1 || gone[0] != reportNS+"/"+reportName {
		t.Fatalf("a replaced cluster: gone %v", gone)
	}
	if !e.f.Known(reportNS, reportName, "uid-rebuilt") || e.f.Known(reportNS, reportName, reportUID) {
		t.Error("the model does not hold the rebuilt cluster alone")
	}
	event(api.Deleted, replaced)
	if len(gone) != 2 {
		t.Fatalf("a deleted cluster: gone %v", gone)
	}
}
