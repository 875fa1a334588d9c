package server

import (
	"encoding/json"

	"flotilla.dev/api"
	"flotilla.dev/internal/tunnel"
)

// clusterTunnels adds each cluster's tunnel state to the Cluster objects the API serves.
type clusterTunnels struct{ t *tunnel.Server }

func (c clusterTunnels) Live() bool { return c.t.Active() }

func (c clusterTunnels) Has(ns, name string) bool { return c.t.State(ns+"/"+name) != "" }

func (c clusterTunnels) Add(obj *api.Object) {
	var st map[string]any
	if len(obj.Status) > 0 && json.Unmarshal(obj.Status, &st) != nil {
		return
	}
	if st == nil {
		st = map[string]any{}
	}
	st["tunnel"] = c.t.State(obj.Metadata.Namespace + "/" + obj.Metadata.Name)
	if raw, err := json.Marshal(st); err == nil {
		obj.Status = raw
	}
}
