package bundle

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// The fleet of clusters every golden case is rendered for.
var goldenClusters = []Cluster{
	{Name: "dev-1", Labels: map[string]string{"env": "dev", "region": "eu", "greeting": "hi"}},
	{Name: "prod-eu", Labels: map[string]string{"env": "prod", "region": "eu"}},
	{Name: "prod-us", Labels: map[string]string{"env": "prod", "region": "us"}},
	{Name: "qa-1", Labels: map[string]string{"env": "qa"}},
	{Name: "edge-7", Labels: map[string]string{"env": "dev"}, Groups: map[string]map[string]string{"edge": {"tier": "edge"}}},
}

// TestGolden renders every testdata/<case>/ repository for every cluster and compares the result
// with testdata/<case>.golden. Run with -update to rewrite them.
func TestGolden(t *testing.T) {
	for _, name := range []string{"rawyaml", "overlays", "kustomize", "helm", "multichart", "targets", "namespace"} {
		t.Run(name, func(t *testing.T) {
			var got bytes.Buffer
			for _, c := range goldenClusters {
				fmt.Fprintf(&got, "### cluster %s %s %s\n", c.Name, labelString(c.Labels), strings.Join(slices.Sorted(maps.Keys(c.Groups)), ","))
				if err := RenderDir(context.Background(), filepath.Join("testdata", name), c, &got); err != nil {
					t.Fatalf("RenderDir for %s: %v", c.Name, err)
				}
			}
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("reading golden file (run with -update to create it): %v", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("output differs from %s (run with -update to accept):\n%s", golden, lineDiff(string(want), got.String()))
			}
		})
	}
}

func labelString(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// lineDiff shows the first lines where want and got differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 20; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want: %q\n  got:  %q\n", i+1, wl, gl)
			shown++
		}
	}
	return b.String()
}
