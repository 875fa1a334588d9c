package bundle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
)

const (
	ociManifestType = "application/vnd.oci.image.manifest.v1+json"
	ociConfigType   = "application/vnd.cncf.helm.config.v1+json"
	ociChartType    = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
)

// ociRegistry is an in-memory OCI distribution registry serving only what Helm's registry client
// needs to pull a chart: the API check, manifests, blobs and the tag list.
type ociRegistry struct {
	mu        sync.Mutex
	blobs     map[string][]byte            // digest -> content
	manifests map[string]map[string]string // repository -> tag or digest -> manifest digest
	requests  []string                     // "METHOD path", in order
}

func ociDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// push stores a chart of the given name and version under repository:version, as `helm push`
// would: an OCI image manifest whose config is the chart's metadata and whose one layer is the
// packaged chart. The chart holds one ConfigMap naming its version, as chartRepo's.
func (r *ociRegistry) push(t *testing.T, repository, name, version string) {
	t.Helper()
	ch := &chart.Chart{
		Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: name, Version: version},
		Templates: []*common.File{{Name: "templates/cm.yaml", Data: []byte(
			"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Chart.Name }}\ndata:\n  version: {{ .Chart.Version | quote }}\n  color: {{ .Values.color | default \"none\" | quote }}\n")}},
	}
	p, err := chartutil.Save(ch, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	archive, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	config, err := json.Marshal(ch.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	desc := func(mediaType string, data []byte) map[string]any {
		return map[string]any{"mediaType": mediaType, "digest": ociDigest(data), "size": len(data)}
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     ociManifestType,
		"config":        desc(ociConfigType, config),
		"layers":        []any{desc(ociChartType, archive)},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range [][]byte{archive, config, manifest} {
		r.blobs[ociDigest(b)] = b
	}
	if r.manifests[repository] == nil {
		r.manifests[repository] = map[string]string{}
	}
	r.manifests[repository][version] = ociDigest(manifest)
	r.manifests[repository][ociDigest(manifest)] = ociDigest(manifest)
}

func (r *ociRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, req.Method+" "+req.URL.Path)
	notFound := func(code string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errors":[{"code":"` + code + `","message":"not found"}]}`))
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	p := req.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		notFound("NAME_UNKNOWN")
		return
	}
	serve := func(mediaType string, data []byte) {
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Docker-Content-Digest", ociDigest(data))
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		if req.Method == http.MethodGet {
			_, _ = w.Write(data)
		}
	}
	if repository, ok := strings.CutSuffix(rest, "/tags/list"); ok && req.Method == http.MethodGet {
		refs, ok := r.manifests[repository]
		if !ok {
			notFound("NAME_UNKNOWN")
			return
		}
		tags := []string{}
		for ref := range refs {
			if !strings.HasPrefix(ref, "sha256:") {
				tags = append(tags, ref)
			}
		}
		sort.Strings(tags)
		data, _ := json.Marshal(map[string]any{"name": repository, "tags": tags})
		serve("application/json", data)
		return
	}
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		d, ok := r.manifests[rest[:i]][rest[i+len("/manifests/"):]]
		if !ok {
			notFound("MANIFEST_UNKNOWN")
			return
		}
		serve(ociManifestType, r.blobs[d])
		return
	}
	if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		data, ok := r.blobs[rest[i+len("/blobs/"):]]
		if _, known := r.manifests[rest[:i]]; !ok || !known {
			notFound("BLOB_UNKNOWN")
			return
		}
		serve("application/octet-stream", data)
		return
	}
	notFound("NAME_UNKNOWN")
}

func (r *ociRegistry) sawRequest(want string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, got := range r.requests {
		if got == want {
			return true
		}
	}
	return false
}

// ociServer starts an ociRegistry on loopback, over plain HTTP, holding charts/demo 1.2.3 and
// 2.0.0, and returns it with its host:port.
func ociServer(t *testing.T) (*ociRegistry, *httptest.Server, string) {
	t.Helper()
	reg := &ociRegistry{blobs: map[string][]byte{}, manifests: map[string]map[string]string{}}
	for _, v := range []string{"1.2.3", "2.0.0"} {
		reg.push(t, "charts/demo", "demo", v)
	}
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	return reg, srv, strings.TrimPrefix(srv.URL, "http://")
}

func TestScanOCIChart(t *testing.T) {
	reg, srv, host := ociServer(t)
	ref := "oci://" + host + "/charts/demo"
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"constrained/fleet.yaml": "helm:\n  chart: " + ref + "\n  version: '~1.2.0'\n  values: {color: blue}\n",
		"exact/fleet.yaml":       "helm:\n  chart: " + ref + "\n  version: 2.0.0\n  values: {color: red}\n",
	})
	srcs, err := Scan(context.Background(), dir, ScanOptions{NamePrefix: "o", HTTPClient: srv.Client(), RegistryPlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if !reg.sawRequest("GET /v2/charts/demo/tags/list") {
		t.Errorf("the version constraint was not resolved against the tag list; requests: %v", reg.requests)
	}
	srv.Close() // from here on, everything comes from the bundle's content

	byName := map[string]Source{}
	for _, s := range srcs {
		byName[s.Name] = s
	}
	dev := Cluster{Name: "dev", Labels: map[string]string{"env": "dev"}}
	for _, tt := range []struct{ bundle, version, want string }{
		{"o-constrained", "1.2.3", "1.2.3/blue"},
		{"o-exact", "2.0.0", "2.0.0/red"},
	} {
		src, ok := byName[tt.bundle]
		if !ok {
			t.Fatalf("no bundle %s in %v", tt.bundle, srcs)
		}
		// The content holds the chart pulled from the registry, and only that version.
		var charts []string
		for _, n := range src.Files.Names() {
			if strings.HasSuffix(n, "/Chart.yaml") {
				charts = append(charts, n)
			}
		}
		if len(charts) != 1 || !strings.HasPrefix(charts[0], ".chart/") {
			t.Fatalf("%s chart files = %v, want one under .chart/", tt.bundle, charts)
		}
		md, err := loader.LoadFiles([]*archive.BufferedFile{{Name: "Chart.yaml", Data: src.Files[charts[0]]}})
		if err != nil {
			t.Fatalf("%s: %s: %v", tt.bundle, charts[0], err)
		}
		if md.Metadata.Name != "demo" || md.Metadata.Version != tt.version {
			t.Errorf("%s holds chart %s %s, want demo %s", tt.bundle, md.Metadata.Name, md.Metadata.Version, tt.version)
		}
		if got := renderedVersion(t, src, dev); got != tt.want {
			t.Errorf("%s renders %s, want %s", tt.bundle, got, tt.want)
		}
	}
}

func TestScanOCIChartErrors(t *testing.T) {
	_, srv, host := ociServer(t)
	ref := "oci://" + host + "/charts/demo"
	tests := []struct {
		name    string
		fleet   string
		wantErr []string
	}{
		{"no such version", "helm:\n  chart: " + ref + "\n  version: 9.9.9\n", []string{"fleet.yaml", ref + ":9.9.9", "not found"}},
		{"no matching version", "helm:\n  chart: " + ref + "\n  version: '>=3'\n", []string{"fleet.yaml", ref, ">=3"}},
		{"no such chart", "helm:\n  chart: oci://" + host + "/charts/nope\n  version: '^1'\n", []string{"fleet.yaml", "oci://" + host + "/charts/nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"fleet.yaml": tt.fleet})
			_, err := Scan(context.Background(), dir, ScanOptions{NamePrefix: "o", HTTPClient: srv.Client(), RegistryPlainHTTP: true})
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
