package cli

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestRenderGolden runs `flotilla render` on the bundle package's example repositories for
// clusters of different labels, names and groups, and compares what it prints with
// testdata/render-<case>.golden. Run with -update to rewrite them.
func TestRenderGolden(t *testing.T) {
	repos := filepath.Join("..", "bundle", "testdata")
	tests := []struct {
		name string
		args []string
	}{
		{"rawyaml-dev", []string{"rawyaml", "-l", "env=dev"}},
		{"overlays-prod", []string{"overlays", "-l", "env=prod,region=eu"}},
		{"overlays-dev", []string{"overlays", "-l", "env=dev"}},
		{"kustomize-prod", []string{"kustomize", "-l", "env=prod", "-l", "region=us"}},
		{"kustomize-qa", []string{"kustomize", "-l", "env=qa"}},
		{"helm-prod", []string{"helm", "--cluster-name", "prod-eu", "-l", "env=prod,region=eu"}},
		{"helm-dev-templated", []string{"helm", "--cluster-name", "dev-1", "-l", "env=dev,greeting=hi", "-n", "edge-workspace"}},
		{"multichart-prod", []string{"multichart", "-l", "env=prod"}},
		{"targets-by-group", []string{"targets", "--cluster-name", "edge-7", "--cluster-group", "edge", "-l", "env=dev"}},
		{"targets-by-name", []string{"targets", "--cluster-name", "prod-us", "-l", "env=prod,region=us"}},
		{"targets-unnamed-prod", []string{"targets", "-l", "env=prod,region=us"}},
		{"targets-do-not-deploy", []string{"targets", "--cluster-name", "qa-1", "-l", "env=qa"}},
		{"namespace", []string{"namespace", "-l", "env=prod"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"render", filepath.Join(repos, tt.args[0])}, tt.args[1:]...)
			var out, errOut bytes.Buffer
			root := NewRoot(strings.NewReader(""), &out, &errOut)
			root.SetArgs(args)
			if err := root.ExecuteContext(context.Background()); err != nil {
				t.Fatalf("flotilla %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
			}
			golden := filepath.Join("testdata", "render-"+tt.name+".golden")
			if *update {
				os.MkdirAll("testdata", 0o755)
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("reading golden file (run with -update to create it): %v", err)
			}
			if got := out.String(); got != string(want) {
				t.Errorf("flotilla %s differs from %s (run with -update to accept)\ngot:\n%s", strings.Join(args, " "), golden, got)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no dir", []string{"render"}, "accepts 1 arg"},
		{"bad labels", []string{"render", ".", "-l", "env"}, `invalid -l "env"`},
		{"missing dir", []string{"render", "does-not-exist"}, "does-not-exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := NewRoot(strings.NewReader(""), &out, &errOut)
			root.SetArgs(tt.args)
			err := root.ExecuteContext(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("flotilla %s: got error %v, want one containing %q", strings.Join(tt.args, " "), err, tt.want)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q on error", out.String())
			}
		})
	}
}
