package bundle

import (
	"strings"
	"testing"

	"flotilla.dev/api"
)

func TestTemplateValues(t *testing.T) {
	c := Cluster{
		Name: "c1", Namespace: "fleet-default",
		Labels:         map[string]string{"env": "prod", "region": "eu"},
		Annotations:    map[string]string{"owner": "ops"},
		TemplateValues: map[string]any{"size": "large"},
	}
	tests := []struct {
		name    string
		helm    *api.HelmOptions
		want    string // JSON of the resulting values
		wantErr string
	}{
		{"no helm", nil, "null", ""},
		{"cluster fields", &api.HelmOptions{Values: map[string]any{
			"name": "${ .ClusterName }", "ns": "${ .ClusterNamespace }", "env": "${ .ClusterLabels.env }",
			"owner": "${ .ClusterAnnotations.owner }", "size": "${ .ClusterValues.size }",
			"nested": map[string]any{"list": []any{map[string]any{"r": "${ .ClusterLabels.region | upper }"}}},
		}}, `{"env":"prod","name":"c1","nested":{"list":[{"r":"EU"}]},"ns":"fleet-default","owner":"ops","size":"large"}`, ""},
		{"label prefix", &api.HelmOptions{Values: map[string]any{
			"r": "global.fleet.clusterLabels.region", "missing": "global.fleet.clusterLabels.nope",
		}}, `{"missing":"","r":"eu"}`, ""},
		{"sprig with default", &api.HelmOptions{Values: map[string]any{
			"tier": `${ get .ClusterLabels "tier" | default "standard" }`,
		}}, `{"tier":"standard"}`, ""},
		{"templateValues become top-level values", &api.HelmOptions{
			Values:         map[string]any{"keep": true},
			TemplateValues: map[string]string{"replicas": `${ if eq .ClusterLabels.env "prod" }3${ else }1${ end }`, "obj": "a: ${ .ClusterName }"},
		}, `{"keep":true,"obj":{"a":"c1"},"replicas":3}`, ""},
		{"disablePreProcess keeps templates", &api.HelmOptions{DisablePreProcess: true, Values: map[string]any{"n": "${ .ClusterName }"}}, `{"n":"${ .ClusterName }"}`, ""},
		{"missing key is an error", &api.HelmOptions{Values: map[string]any{"x": "${ .Nope }"}}, "", "rendering template"},
		{"env is not available", &api.HelmOptions{Values: map[string]any{"x": `${ env "HOME" }`}}, "", `function "env" not defined`},
		{"bad template", &api.HelmOptions{Values: map[string]any{"x": "${ .ClusterName "}}, "", "parsing template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := api.BundleDeploymentOptions{Helm: tt.helm}
			before := mustJSON(t, opts)
			got, err := TemplateValues(opts, c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("TemplateValues() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var values any
			if got.Helm != nil {
				values = got.Helm.Values
			}
			if g := mustJSON(t, values); g != tt.want {
				t.Errorf("values = %s, want %s", g, tt.want)
			}
			if after := mustJSON(t, opts); after != before {
				t.Errorf("TemplateValues modified its input")
			}
		})
	}
}
