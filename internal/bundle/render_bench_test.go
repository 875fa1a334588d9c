package bundle

import (
	"context"
	"io/fs"
	"os"
	"testing"

	"flotilla.dev/api"
)

// BenchmarkRenderChart renders the chart `helm create` makes (testdata/bench/web: Helm
// v4.3.1's scaffold, a typical application chart) with its ingress and autoscaler on, as the
// server renders a Helm bundle for one cluster.
func BenchmarkRenderChart(b *testing.B) {
	files := Files{}
	root := "testdata/bench/web"
	err := fs.WalkDir(os.DirFS(root), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(root + "/" + p)
		files[p] = data
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	opts := api.BundleDeploymentOptions{Helm: &api.HelmOptions{Values: map[string]any{
		"ingress":     map[string]any{"enabled": true},
		"autoscaling": map[string]any{"enabled": true},
	}}}
	c := Cluster{Name: "prod-eu", Labels: map[string]string{"env": "prod"}}
	b.ReportAllocs()
	for b.Loop() {
		r, err := Render(context.Background(), files, opts, c, "web")
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Objects) != 5 {
			b.Fatalf("got %d objects, want 5", len(r.Objects))
		}
	}
}
