package bundle

import (
	"context"
	"testing"

	"flotilla.dev/api"
)

// TestRenderHelmV4Engine: charts render with Helm v4's template functions (mustToJson and the
// duration helpers are new in v4), as `helm template` of Helm v4 renders them.
func TestRenderHelmV4Engine(t *testing.T) {
	files := hostileChart(`apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Chart.Name }}-{{ .Release.Name }}
data:
  json: {{ mustToJson .Values.obj | quote }}
  seconds: {{ durationSeconds "1m30s" | quote }}
`)
	opts := api.BundleDeploymentOptions{Helm: &api.HelmOptions{Values: map[string]any{"obj": map[string]any{"a": 1}}}}
	r, err := Render(context.Background(), files, opts, Cluster{Name: "c"}, "rel")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Objects) != 1 || r.Helm == nil || r.Helm.Chart.Name() != "hostile" {
		t.Fatalf("got %d objects, release %+v", len(r.Objects), r.Helm)
	}
	o := r.Objects[0]
	data, _ := o.Object["data"].(map[string]any)
	if o.GetName() != "hostile-rel" || data["json"] != `{"a":1}` || data["seconds"] != "90" {
		t.Errorf("rendered %s with data %v", o.GetName(), data)
	}
}
