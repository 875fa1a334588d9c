package bundle

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/provenance"
	repo "helm.sh/helm/v4/pkg/repo/v1"

	"flotilla.dev/api"
)

// chartRepo serves a real Helm chart repository on loopback: packaged charts and an index.yaml
// made with Helm's own packages. Charts hold one ConfigMap naming their version.
func chartRepo(t *testing.T, charts map[string][]string) (*httptest.Server, string) {
	t.Helper()
	dir := t.TempDir()
	idx := repo.NewIndexFile()
	for name, versions := range charts {
		for _, v := range versions {
			ch := &chart.Chart{
				Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: name, Version: v},
				Templates: []*common.File{{Name: "templates/cm.yaml", Data: []byte(
					"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Chart.Name }}\ndata:\n  version: {{ .Chart.Version | quote }}\n  color: {{ .Values.color | default \"none\" | quote }}\n")}},
			}
			p, err := chartutil.Save(ch, dir)
			if err != nil {
				t.Fatal(err)
			}
			digest, err := provenance.DigestFile(p)
			if err != nil {
				t.Fatal(err)
			}
			// Relative URLs, as `helm repo index` writes without --url.
			if err := idx.MustAdd(ch.Metadata, filepath.Base(p), "", digest); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := idx.WriteFile(filepath.Join(dir, "index.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.FileServer(http.Dir(dir)).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, dir
}

func renderedVersion(t *testing.T, src Source, c Cluster) string {
	t.Helper()
	targets, restrictions := CombineTargets([]api.BundleTarget{{Name: "all", ClusterSelector: &api.LabelSelector{}}}, src.Spec)
	tgt, ok := Match(targets, restrictions, c)
	if !ok {
		t.Fatalf("bundle %s does not target %s", src.Name, c.Name)
	}
	r, err := Render(context.Background(), src.Files, Merge(src.Spec.BundleDeploymentOptions, tgt), c, src.Name)
	if err != nil {
		t.Fatalf("Render(%s): %v", src.Name, err)
	}
	if len(r.Objects) != 1 || r.Helm == nil {
		t.Fatalf("Render(%s) = %d objects, release %v; want one ConfigMap from a release", src.Name, len(r.Objects), r.Helm)
	}
	data := r.Objects[0].Object["data"].(map[string]any)
	return data["version"].(string) + "/" + data["color"].(string)
}

func TestScanChartRepository(t *testing.T) {
	srv, _ := chartRepo(t, map[string][]string{
		"remote": {"1.2.0", "1.2.3", "1.3.0", "2.0.0"},
		"other":  {"0.1.0"},
	})
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"constrained/fleet.yaml": "helm:\n  repo: " + srv.URL + "\n  chart: remote\n  version: '~1.2.0'\n  values: {color: blue}\n" +
			"targetCustomizations:\n  - name: prod\n    clusterSelector: {matchLabels: {env: prod}}\n    helm:\n      version: 2.0.0\n",
		"latest/fleet.yaml": "helm:\n  repo: " + srv.URL + "/\n  chart: remote\n",
		"byurl/fleet.yaml":  "helm:\n  chart: " + srv.URL + "/remote-1.3.0.tgz\n",
		// A chart in the repository whose dependencies are not vendored.
		"deps/fleet.yaml": "helm:\n  chart: ./umbrella\n",
		"deps/umbrella/Chart.yaml": "apiVersion: v2\nname: umbrella\nversion: 0.1.0\ndependencies:\n" +
			"  - {name: other, version: ^0.1.0, repository: " + srv.URL + "}\n" +
			"  - {name: common, version: 0.0.1, repository: file://../../shared/common}\n",
		"shared/common/Chart.yaml":        "apiVersion: v2\nname: common\nversion: 0.0.1\n",
		"shared/common/templates/sa.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: common\n",
	})
	srcs, err := Scan(context.Background(), dir, ScanOptions{NamePrefix: "r", HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close() // from here on, everything comes from the bundle's content

	byName := map[string]Source{}
	for _, s := range srcs {
		byName[s.Name] = s
	}
	dev := Cluster{Name: "dev", Labels: map[string]string{"env": "dev"}}
	prod := Cluster{Name: "prod", Labels: map[string]string{"env": "prod"}}
	tests := []struct {
		bundle string
		c      Cluster
		want   string
	}{
		{"r-constrained", dev, "1.2.3/blue"},
		{"r-constrained", prod, "2.0.0/blue"},
		{"r-latest", dev, "2.0.0/none"},
		{"r-byurl", dev, "1.3.0/none"},
	}
	for _, tt := range tests {
		src, ok := byName[tt.bundle]
		if !ok {
			t.Fatalf("no bundle %s in %v", tt.bundle, srcs)
		}
		if got := renderedVersion(t, src, tt.c); got != tt.want {
			t.Errorf("%s on %s renders %s, want %s", tt.bundle, tt.c.Name, got, tt.want)
		}
	}
	// Dependencies were added to the umbrella chart at scan time.
	r, err := Render(context.Background(), byName["r-deps"].Files, byName["r-deps"].Spec.BundleDeploymentOptions, dev, "r-deps")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range r.Objects {
		names = append(names, o.GetKind()+"/"+o.GetName())
	}
	if want := "ServiceAccount/common ConfigMap/other"; strings.Join(names, " ") != want {
		t.Errorf("umbrella chart objects = %v, want %s", names, want)
	}

	// Each target's chart version has its own place in the content.
	var charts []string
	for _, n := range byName["r-constrained"].Files.Names() {
		if strings.HasSuffix(n, "/Chart.yaml") {
			charts = append(charts, n)
		}
	}
	if len(charts) != 2 || !strings.HasPrefix(charts[0], ".chart/") {
		t.Errorf("chart files = %v, want two under .chart/", charts)
	}
}

func TestScanChartRepositoryErrors(t *testing.T) {
	srv, repoDir := chartRepo(t, map[string][]string{"remote": {"1.0.0"}})
	// A second index whose digest does not match the archive.
	bad := repo.NewIndexFile()
	if err := bad.MustAdd(&chart.Metadata{APIVersion: "v2", Name: "remote", Version: "1.0.0"}, "remote-1.0.0.tgz", srv.URL, "sha256:0000"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(repoDir, "bad"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := bad.WriteFile(filepath.Join(repoDir, "bad", "index.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		fleet   string
		wantErr []string
	}{
		{"no matching version", "helm:\n  repo: " + srv.URL + "\n  chart: remote\n  version: '>=3'\n", []string{"fleet.yaml", "remote", ">=3", "no chart version found"}},
		{"no such chart", "helm:\n  repo: " + srv.URL + "\n  chart: nope\n", []string{"fleet.yaml", "nope", "no chart name found"}},
		{"not a repository", "helm:\n  repo: " + srv.URL + "/missing\n  chart: remote\n", []string{"fleet.yaml", "index.yaml", "404"}},
		{"digest mismatch", "helm:\n  repo: " + srv.URL + "/bad\n  chart: remote\n", []string{"fleet.yaml", "digest"}},
		{"bad chart URL", "helm:\n  chart: " + srv.URL + "/nothing.tgz\n", []string{"fleet.yaml", "nothing.tgz", "404"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"fleet.yaml": tt.fleet})
			_, err := Scan(context.Background(), dir, ScanOptions{NamePrefix: "r", HTTPClient: srv.Client()})
			if err == nil {
				t.Fatalf("Scan() succeeded, want an error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Scan() error = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}
