package bundle

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// writeTree creates files (path → content) under dir.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"

func TestScanBundles(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"README.md":                   "not a bundle",
		"apps/web/fleet.yaml":         "labels: {app: web}\n",
		"apps/web/cm.yaml":            cm,
		"apps/web/.hidden/x.yaml":     cm,
		"apps/web/skipme.yaml":        cm,
		"apps/web/.fleetignore":       "# comment\nskipme.yaml\nignored-dir/*\n",
		"apps/web/ignored-dir/a":      "a",
		"apps/web/sub/b.yaml":         cm,
		"apps/web/sub/api/fleet.yaml": "name: api-custom\n",
		"apps/web/sub/api/cm.yaml":    cm,
		"loose/cm.yaml":               cm,
		"loose/deep/er/cm.yaml":       cm,
		"other/fleet.yml":             "defaultNamespace: other\n",
		"other/cm.json":               `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}`,
		"empty/nothing.txt":           "no yaml here",
	})
	tests := []struct {
		name  string
		paths []string
		want  map[string][]string // bundle name → files
	}{
		{"all", nil, map[string][]string{
			// loose/ holds YAML without a fleet.yaml, so the root is a raw bundle too.
			"repo":          {"README.md", "empty/nothing.txt", "loose/cm.yaml", "loose/deep/er/cm.yaml"},
			"repo-apps-web": {"cm.yaml", "sub/b.yaml"},
			"api-custom":    {"cm.yaml"},
			"repo-other":    {"cm.json"},
		}},
		{"a loose path", []string{"loose"}, map[string][]string{
			"repo-loose": {"cm.yaml", "deep/er/cm.yaml"},
		}},
		{"globs, leading slash and duplicates", []string{"/apps/*", "apps/web", "empty"}, map[string][]string{
			"repo-apps-web": {"cm.yaml", "sub/b.yaml"},
			"api-custom":    {"cm.yaml"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcs, err := Scan(context.Background(), dir, ScanOptions{Paths: tt.paths, NamePrefix: "repo"})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]string{}
			for _, s := range srcs {
				got[s.Name] = s.Files.Names()
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Scan() bundles = %v, want %v", got, tt.want)
			}
		})
	}
	srcs, err := Scan(context.Background(), dir, ScanOptions{Paths: []string{"apps/web"}, NamePrefix: "repo"})
	if err != nil {
		t.Fatal(err)
	}
	if srcs[0].Path != "apps/web" || srcs[0].Labels["app"] != "web" || srcs[1].Path != "apps/web/sub/api" {
		t.Errorf("Scan() = %+v", srcs)
	}
}

func TestScanErrors(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret.yaml")
	if err := os.WriteFile(outside, []byte(cm), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		files   map[string]string
		link    [2]string // symlink name → target, if set
		paths   []string
		limits  Limits
		wantErr []string
		tooBig  bool
	}{
		{name: "unknown field", files: map[string]string{"fleet.yaml": "helm:\n  chart: x\n  valuez: {}\n"},
			wantErr: []string{"fleet.yaml", `unknown field "helm.valuez"`}},
		{name: "unknown top-level field", files: map[string]string{"app/fleet.yaml": "defaultNamespce: x\n"},
			wantErr: []string{"app/fleet.yaml", `unknown field "defaultNamespce"`}},
		{name: "wrong type", files: map[string]string{"fleet.yaml": "helm:\n  values: [1, 2]\n"},
			wantErr: []string{"fleet.yaml", "helm.values", "array"}},
		{name: "wrong type in a target", files: map[string]string{"fleet.yaml": "targetCustomizations:\n  - doNotDeploy: maybe\n"},
			wantErr: []string{"fleet.yaml", "doNotDeploy"}},
		{name: "duplicate key", files: map[string]string{"fleet.yaml": "namespace: a\nnamespace: b\n"},
			wantErr: []string{"fleet.yaml", "namespace"}},
		{name: "invalid YAML", files: map[string]string{"fleet.yaml": "helm: [\n"},
			wantErr: []string{"fleet.yaml", "invalid YAML"}},
		{name: "invalid selector", files: map[string]string{"fleet.yaml": "targetCustomizations:\n  - clusterSelector:\n      matchExpressions: [{key: env, operator: Near}]\n"},
			wantErr: []string{"fleet.yaml", "targetCustomizations[0].clusterSelector"}},
		{name: "dependsOn naming nothing", files: map[string]string{"fleet.yaml": "dependsOn: [{}]\n"},
			wantErr: []string{"fleet.yaml", "dependsOn[0]"}},
		{name: "bad name", files: map[string]string{"fleet.yaml": "name: Not_Valid\n"},
			wantErr: []string{"fleet.yaml", "Not_Valid"}},
		{name: "bad release name", files: map[string]string{"fleet.yaml": "helm: {releaseName: UPPER}\n"},
			wantErr: []string{"fleet.yaml", "releaseName"}},
		{name: "two bundles, one name", files: map[string]string{"a/fleet.yaml": "name: same\n", "b/fleet.yaml": "name: same\n"},
			wantErr: []string{"both named same"}},
		{name: "symlink out of the repository", files: map[string]string{"fleet.yaml": ""}, link: [2]string{"evil.yaml", outside},
			wantErr: []string{"evil.yaml", "outside the repository"}},
		{name: "values file out of the repository", files: map[string]string{"app/fleet.yaml": "helm:\n  valuesFiles: [../../../../../../../../" + strings.TrimPrefix(outside, "/") + "]\n"},
			wantErr: []string{"app/fleet.yaml", "valuesFiles", "outside the repository"}},
		{name: "missing values file", files: map[string]string{"fleet.yaml": "helm:\n  valuesFiles: [nope.yaml]\n"},
			wantErr: []string{"fleet.yaml", "nope.yaml", "no such file"}},
		{name: "invalid values file", files: map[string]string{"fleet.yaml": "helm:\n  valuesFiles: [v.yaml]\n", "v.yaml": "[not a map"},
			wantErr: []string{"v.yaml", "invalid values file"}},
		{name: "chart out of the repository", files: map[string]string{"fleet.yaml": "helm:\n  chart: ../../../../../../../../etc\n"},
			wantErr: []string{"fleet.yaml", "helm.chart", "outside the repository"}},
		{name: "missing chart", files: map[string]string{"fleet.yaml": "helm:\n  chart: ./nochart\n"},
			wantErr: []string{"fleet.yaml", "helm.chart ./nochart", "no such file"}},
		{name: "path out of the repository", files: map[string]string{"cm.yaml": cm}, paths: []string{"../x"},
			wantErr: []string{"leaves the repository"}},
		{name: "no bundle", files: map[string]string{"README.md": "hi"},
			wantErr: []string{"no bundle found"}},
		{name: "file too big", files: map[string]string{"cm.yaml": cm, "big.yaml": strings.Repeat("x", 100)}, limits: Limits{MaxFileBytes: 99},
			wantErr: []string{"big.yaml", "over 99 bytes"}, tooBig: true},
		{name: "too many bytes", files: map[string]string{"a.yaml": cm, "b.yaml": cm}, limits: Limits{MaxBytes: int64(len(cm)) + 1},
			wantErr: []string{"b.yaml", "bytes in all"}, tooBig: true},
		{name: "too many files", files: map[string]string{"a.yaml": cm, "b.yaml": cm, "c.yaml": cm}, limits: Limits{MaxFiles: 2},
			wantErr: []string{"c.yaml", "more than 2 files"}, tooBig: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			if tt.link[0] != "" {
				if err := os.Symlink(tt.link[1], filepath.Join(dir, tt.link[0])); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Scan(context.Background(), dir, ScanOptions{Paths: tt.paths, NamePrefix: "repo", Limits: tt.limits})
			if err == nil {
				t.Fatalf("Scan() succeeded, want an error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Scan() error = %q, want it to contain %q", err, w)
				}
			}
			if tt.tooBig && !errors.Is(err, ErrTooLarge) {
				t.Errorf("Scan() error %v does not wrap ErrTooLarge", err)
			}
		})
	}
}

func TestScanFollowsSymlinksInside(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"shared/cm.yaml": cm, "app/fleet.yaml": ""})
	if err := os.Symlink("../shared", filepath.Join(dir, "app", "common")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../shared/cm.yaml", filepath.Join(dir, "app", "cm.yaml")); err != nil {
		t.Fatal(err)
	}
	srcs, err := Scan(context.Background(), dir, ScanOptions{Paths: []string{"app"}, NamePrefix: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := srcs[0].Files.Names(), []string{"cm.yaml", "common/cm.yaml"}; !reflect.DeepEqual(got, want) {
		t.Errorf("files = %v, want %v", got, want)
	}
}

func TestRenderErrors(t *testing.T) {
	chart := map[string]string{
		"fleet.yaml":              "helm:\n  chart: chart\n",
		"chart/Chart.yaml":        "apiVersion: v2\nname: broken\nversion: 0.1.0\n",
		"chart/templates/cm.yaml": "{{ fail \"the chart refuses\" }}\n",
	}
	tests := []struct {
		name    string
		files   map[string]string
		wantErr []string
	}{
		{"chart fails to render", chart, []string{"bundle repo", "chart chart (broken)", "the chart refuses"}},
		{"chart template missing value", map[string]string{
			"fleet.yaml":              "helm:\n  chart: chart\n",
			"chart/Chart.yaml":        "apiVersion: v2\nname: broken\nversion: 0.1.0\n",
			"chart/templates/cm.yaml": "{{ .Values.a.b }}\n",
		}, []string{"chart chart (broken)", "nil pointer"}},
		{"chart output is not YAML", map[string]string{
			"Chart.yaml":        "apiVersion: v2\nname: c\nversion: 0.1.0\n",
			"templates/cm.yaml": "kind: [\n",
		}, []string{"bundle root", "yaml"}},
		{"invalid Chart.yaml", map[string]string{
			"fleet.yaml":       "helm:\n  chart: chart\n",
			"chart/Chart.yaml": "name: nover\n",
		}, []string{"loading chart chart"}},
		{"kustomize error", map[string]string{
			"kustomization.yaml": "resources: [missing.yaml]\n",
		}, []string{"kustomize kustomization.yaml", "missing.yaml"}},
		{"kustomize dir without kustomization", map[string]string{
			"fleet.yaml": "kustomize: {dir: nowhere}\n", "cm.yaml": cm,
		}, []string{"kustomize.dir nowhere", "no kustomization.yaml"}},
		{"kustomize load restriction", map[string]string{
			"fleet.yaml": "kustomize: {dir: k}\n", "k/kustomization.yaml": "resources: [../cm.yaml]\n", "cm.yaml": cm,
		}, []string{"kustomize k/kustomization.yaml"}},
		{"kustomize remote base", map[string]string{
			"kustomization.yaml": "resources:\n  - github.com/example/repo//base?ref=v1\n",
		}, []string{"kustomize kustomization.yaml", "remote resource", "github.com/example/repo"}},
		{"cluster-scoped object with namespace", map[string]string{
			"fleet.yaml": "namespace: locked\n", "ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n",
		}, []string{"cluster-scoped Namespace team", "namespace locked", "defaultNamespace"}},
		{"invalid manifest", map[string]string{"cm.yaml": "apiVersion: v1\nkind: [\n"}, []string{"cm.yaml"}},
		{"overlay patch without base", map[string]string{
			"fleet.yaml": "yaml: {overlays: [o]}\n", "cm.yaml": cm, "overlays/o/nope_patch.yaml": "data: {}\n",
		}, []string{`overlay "o"`, "overlays/o/nope_patch.yaml", "no file nope.yaml"}},
		{"overlay patch naming no object", map[string]string{
			"fleet.yaml": "yaml: {overlays: [o]}\n", "cm.yaml": cm + "---\n" + cm, "overlays/o/cm_patch.yaml": "kind: Secret\n",
		}, []string{`overlay "o"`, "names none"}},
		{"invalid JSON patch", map[string]string{
			"fleet.yaml": "yaml: {overlays: [o]}\n", "cm.yaml": cm, "overlays/o/cm_patch.yaml": "- op: frobnicate\n  path: /x\n",
		}, []string{`overlay "o"`, "cm.yaml"}},
		{"missing template key", map[string]string{
			"fleet.yaml": "helm:\n  values: {a: '${ .ClusterLabels.nope.deeper }'}\n", "cm.yaml": cm,
		}, []string{"helm values", "rendering template"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			writeTree(t, dir, tt.files)
			err := RenderDir(context.Background(), dir, Cluster{Name: "c"}, io.Discard)
			if err == nil {
				t.Fatalf("RenderDir() succeeded, want an error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("RenderDir() error = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestRenderFromPackedContent(t *testing.T) {
	// What the agent does: content travels as an archive and renders the same.
	ctx := context.Background()
	srcs, err := Scan(ctx, filepath.Join("testdata", "helm"), ScanOptions{NamePrefix: "helm"})
	if err != nil {
		t.Fatal(err)
	}
	data, _, err := Pack(srcs[0].Files)
	if err != nil {
		t.Fatal(err)
	}
	files, err := Unpack(data, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	c := Cluster{Name: "c", Labels: map[string]string{"env": "prod"}}
	targets, restrictions := CombineTargets([]api.BundleTarget{{Name: "all", ClusterSelector: &api.LabelSelector{}}}, srcs[0].Spec)
	tgt, ok := Match(targets, restrictions, c)
	if !ok || tgt.Name != "prod" {
		t.Fatalf("Match() = %v, %v; want the prod customization", tgt, ok)
	}
	r, err := Render(ctx, files, Merge(srcs[0].Spec.BundleDeploymentOptions, tgt), c, srcs[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	if r.Helm == nil {
		t.Fatal("no Helm release for a chart bundle")
	}
	if r.Helm.ReleaseName != "agent" || r.Helm.Namespace != "monitoring" || r.Helm.Chart.Name() != "agent" {
		t.Errorf("release = %s in %s of chart %s, want agent in monitoring of chart agent", r.Helm.ReleaseName, r.Helm.Namespace, r.Helm.Chart.Name())
	}
	if got := r.Helm.Values["replicas"]; got != 3.0 {
		t.Errorf("values.replicas = %v, want 3", got)
	}
	if got := r.Helm.Values["env"]; got != "prod" {
		t.Errorf("values.env = %v, want the templated cluster label", got)
	}
	var kinds []string
	for _, o := range r.Objects {
		kinds = append(kinds, o.GetKind())
	}
	if want := []string{"CustomResourceDefinition", "Deployment"}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("objects = %v, want %v", kinds, want)
	}
	if len(r.Helm.Hooks) != 1 || r.Helm.Hooks[0].GetName() != "agent-migrate" {
		t.Errorf("hooks = %v, want the migrate job", r.Helm.Hooks)
	}
	// The release is its own post-renderer: running it over the manifest changes nothing more.
	b, err := encodeObjects(r.Objects)
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.Helm.Run(bytes.NewBuffer(b))
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(b) {
		t.Errorf("post-rendering the rendered manifest changed it:\n%s\nwas\n%s", out, b)
	}
}
