package api

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestIntOrString(t *testing.T) {
	tests := []struct {
		in       string
		want     IntOrString
		out      string
		total    int
		scaledUp int
		scaled   int
	}{
		{`3`, "3", `3`, 10, 3, 3},
		{`"3"`, "3", `3`, 10, 3, 3},
		{`"25%"`, "25%", `"25%"`, 10, 3, 2},
		{`"100%"`, "100%", `"100%"`, 7, 7, 7},
	}
	for _, tt := range tests {
		var v IntOrString
		if err := json.Unmarshal([]byte(tt.in), &v); err != nil {
			t.Fatalf("Unmarshal(%s): %v", tt.in, err)
		}
		if v != tt.want {
			t.Errorf("Unmarshal(%s) = %q, want %q", tt.in, v, tt.want)
		}
		b, err := json.Marshal(v)
		if err != nil || string(b) != tt.out {
			t.Errorf("Marshal(%q) = %s, %v; want %s", v, b, err, tt.out)
		}
		if got, err := v.Scaled(tt.total, true); err != nil || got != tt.scaledUp {
			t.Errorf("%q.Scaled(%d, up) = %d, %v; want %d", v, tt.total, got, err, tt.scaledUp)
		}
		if got, err := v.Scaled(tt.total, false); err != nil || got != tt.scaled {
			t.Errorf("%q.Scaled(%d, down) = %d, %v; want %d", v, tt.total, got, err, tt.scaled)
		}
	}
	for _, bad := range []string{`"x%"`, `"abc"`} {
		var v IntOrString
		_ = json.Unmarshal([]byte(bad), &v)
		if _, err := v.Scaled(10, true); err == nil {
			t.Errorf("%s.Scaled succeeded", bad)
		}
	}
	if err := json.Unmarshal([]byte(`true`), new(IntOrString)); err == nil {
		t.Error("Unmarshal(true) succeeded")
	}
}

// A Fleet BundleTarget decodes with its options promoted to the target's level, as in Fleet.
func TestBundleTargetJSON(t *testing.T) {
	in := `{"name":"prod","clusterSelector":{"matchLabels":{"env":"prod"}},"namespace":"ns","helm":{"values":{"a":1}},"doNotDeploy":true}`
	var bt BundleTarget
	if err := json.Unmarshal([]byte(in), &bt); err != nil {
		t.Fatal(err)
	}
	want := BundleTarget{
		Name:                    "prod",
		ClusterSelector:         &LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
		DoNotDeploy:             true,
		BundleDeploymentOptions: BundleDeploymentOptions{TargetNamespace: "ns", Helm: &HelmOptions{Values: map[string]any{"a": 1.0}}},
	}
	if !reflect.DeepEqual(bt, want) {
		t.Errorf("decoded %+v, want %+v", bt, want)
	}
	out, err := json.Marshal(bt)
	if err != nil {
		t.Fatal(err)
	}
	var back BundleTarget
	if err := json.Unmarshal(out, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Errorf("round trip = %s", out)
	}
}
