package sim

import (
	"math"
	"strings"
	"testing"
)

func TestParseLabelSpec(t *testing.T) {
	tests := []struct {
		spec    string
		keys    string
		wantErr string
	}{
		{spec: "", keys: ""},
		{spec: "env=prod", keys: "env"},
		{spec: "env=prod:50,dev:50;region=eu,us,ap", keys: "env,region"},
		{spec: " env = prod ; group=@100 ", keys: "env,group"},
		{spec: "example.com/tier=a:0,b", keys: "example.com/tier"},
		{spec: "env", wantErr: "want key=value"},
		{spec: "env=", wantErr: "want key=value"},
		{spec: "=prod", wantErr: "want key=value"},
		{spec: "env=prod:x", wantErr: "not a whole number"},
		{spec: "env=prod:0", wantErr: "every weight is zero"},
		{spec: "env=a;env=b", wantErr: "appears twice"},
		{spec: "bad key=a", wantErr: "label key"},
		{spec: "env=not valid", wantErr: "not a valid label value"},
		{spec: "group=@0", wantErr: "block size"},
	}
	for _, tt := range tests {
		ls, err := ParseLabelSpec(tt.spec)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseLabelSpec(%q) error = %v, want one containing %q", tt.spec, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseLabelSpec(%q): %v", tt.spec, err)
			continue
		}
		if got := strings.Join(ls.Keys(), ","); got != tt.keys {
			t.Errorf("ParseLabelSpec(%q) keys = %q, want %q", tt.spec, got, tt.keys)
		}
	}
}

func TestLabelsDistribution(t *testing.T) {
	ls, err := ParseLabelSpec("env=prod:80,dev:20;region=eu,us,ap;group=@1000;never=x:0,y")
	if err != nil {
		t.Fatal(err)
	}
	const n = 30000
	counts := map[string]int{}
	for i := range n {
		l := ls.Labels(i)
		counts["env="+l["env"]]++
		counts["region="+l["region"]]++
		counts["group="+l["group"]]++
		counts["never="+l["never"]]++
		if again := ls.Labels(i); again["env"] != l["env"] || again["region"] != l["region"] {
			t.Fatalf("cluster %d: labels %v then %v; want the same every time", i, l, again)
		}
	}
	near := func(label string, want float64) {
		t.Helper()
		if got := float64(counts[label]) / n; math.Abs(got-want) > 0.02 {
			t.Errorf("%s on %.3f of the clusters, want about %.3f", label, got, want)
		}
	}
	near("env=prod", 0.8)
	near("env=dev", 0.2)
	near("region=eu", 1.0/3)
	near("region=ap", 1.0/3)
	near("never=y", 1)
	for _, g := range []string{"group=b0", "group=b29"} {
		if counts[g] != 1000 {
			t.Errorf("%s holds %d clusters, want exactly 1000", g, counts[g])
		}
	}
	// The env and region draws must be independent, or every prod cluster is in one region.
	both := 0
	for i := range n {
		if l := ls.Labels(i); l["env"] == "prod" && l["region"] == "eu" {
			both++
		}
	}
	if got := float64(both) / n; math.Abs(got-0.8/3) > 0.02 {
		t.Errorf("env=prod,region=eu on %.3f of the clusters, want about %.3f", got, 0.8/3)
	}
}
