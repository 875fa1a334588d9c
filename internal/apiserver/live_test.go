package apiserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/store"
)

// tunnels is live status for unit tests: the clusters named are live.
type tunnels struct {
	live  map[string]string
	added atomic.Int64
}

func (l *tunnels) Live() bool               { return len(l.live) > 0 }
func (l *tunnels) Has(ns, name string) bool { return l.live[ns+"/"+name] != "" }
func (l *tunnels) Add(obj *api.Object) {
	l.added.Add(1)
	var st api.ClusterStatus
	json.Unmarshal(obj.Status, &st)
	st.Tunnel = l.live[obj.Metadata.Namespace+"/"+obj.Metadata.Name]
	obj.Status, _ = json.Marshal(st)
}

// Live status reaches every read (get, list, Table, watch) of the objects that have it, and
// leaves the others' stored bytes alone.
func TestLiveStatus(t *testing.T) {
	lt := &tunnels{live: map[string]string{"ws/a": "open"}}
	e := start(t, func(s *apiserver.Server) { s.SetLiveStatus(api.KindCluster, lt) })
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		o := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindCluster}, Metadata: api.ObjectMeta{Namespace: "ws", Name: name},
			Status: json.RawMessage(`{"state":"Ready"}`)}
		if _, err := e.st.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	path := "/apis/" + api.APIVersion + "/namespaces/ws/clusters"
	tunnelOf := func(body string) map[string]string {
		var l struct{ Items []api.Object }
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		out := map[string]string{}
		for _, it := range l.Items {
			var st api.ClusterStatus
			json.Unmarshal(it.Status, &st)
			out[it.Metadata.Name] = st.State + "/" + st.Tunnel
		}
		return out
	}

	code, _, body := e.raw(t, http.MethodGet, path, "", "", "")
	if got := tunnelOf(body); code != 200 || got["a"] != "Ready/open" || got["b"] != "Ready/" {
		t.Errorf("list: %d %v", code, got)
	}
	if lt.added.Load() != 1 {
		t.Errorf("live status was added %d times for one live object", lt.added.Load())
	}
	stored, err := e.st.Get(ctx, store.Key{Kind: api.KindCluster, Namespace: "ws", Name: "a"})
	if err != nil || strings.Contains(string(stored.Status), "tunnel") {
		t.Errorf("live status was stored: %s %v", stored.Status, err)
	}
	_, _, body = e.raw(t, http.MethodGet, path+"/a", "", "", "")
	if !strings.Contains(body, `"tunnel":"open"`) {
		t.Errorf("get: %s", body)
	}
	_, _, body = e.raw(t, http.MethodGet, path, "application/json;as=Table;v=v1;g=meta.k8s.io", "", "")
	if !strings.Contains(body, `"name":"TUNNEL"`) || !strings.Contains(body, `"open"`) {
		t.Errorf("table: %s", body)
	}

	// Nothing live: nothing is decoded or added.
	delete(lt.live, "ws/a")
	before := lt.added.Load()
	_, _, body = e.raw(t, http.MethodGet, path, "", "", "")
	if got := tunnelOf(body); got["a"] != "Ready/" || lt.added.Load() != before {
		t.Errorf("list with nothing live: %v, added %d", got, lt.added.Load()-before)
	}
}
