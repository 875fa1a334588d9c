package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	"helm.sh/helm/v4/pkg/registry"
	repo "helm.sh/helm/v4/pkg/repo/v1"
	"sigs.k8s.io/yaml"
)

const ociScheme = "oci://"

// chartFetcher downloads charts from chart repositories, OCI registries and URLs, at scan time,
// so that agents never reach them.
type chartFetcher struct {
	client    *http.Client
	plainHTTP bool
	maxBytes  int64
	indexes   map[string]*repo.IndexFile
	charts    map[string][]*archive.BufferedFile
}

func newChartFetcher(client *http.Client, plainHTTP bool, maxBytes int64) *chartFetcher {
	if client == nil {
		client = http.DefaultClient
	}
	return &chartFetcher{client: client, plainHTTP: plainHTTP, maxBytes: maxBytes, indexes: map[string]*repo.IndexFile{}, charts: map[string][]*archive.BufferedFile{}}
}

// isRemoteChart reports whether a helm.chart/helm.repo pair names a chart outside the repository.
func isRemoteChart(chartRef, repoURL string) bool {
	return repoURL != "" || strings.HasPrefix(chartRef, ociScheme) || strings.Contains(chartRef, "://")
}

// fetch returns the files of the chart (names relative to the chart's root) and its name.
func (f *chartFetcher) fetch(ctx context.Context, chartRef, repoURL, version string) (string, []*archive.BufferedFile, error) {
	key := chartRef + "\x00" + repoURL + "\x00" + version
	name := path.Base(strings.TrimSuffix(chartRef, "/"))
	if files, ok := f.charts[key]; ok {
		return name, files, nil
	}
	var (
		data []byte
		err  error
	)
	switch {
	case strings.HasPrefix(repoURL, ociScheme):
		data, err = f.pullOCI(ctx, strings.TrimSuffix(repoURL, "/")+"/"+chartRef, version)
	case repoURL != "":
		data, err = f.fromRepo(ctx, repoURL, chartRef, version)
	case strings.HasPrefix(chartRef, ociScheme):
		data, err = f.pullOCI(ctx, chartRef, version)
	case strings.HasPrefix(chartRef, "https://") || strings.HasPrefix(chartRef, "http://"):
		data, err = f.get(ctx, chartRef)
		name = strings.TrimSuffix(strings.TrimSuffix(name, ".tgz"), ".tar.gz")
	default:
		err = fmt.Errorf("unsupported chart location %q", chartRef)
	}
	if err != nil {
		return "", nil, err
	}
	files, err := archive.LoadArchiveFiles(bytes.NewReader(data))
	if err != nil {
		return "", nil, fmt.Errorf("reading chart archive of %s: %w", chartRef, err)
	}
	f.charts[key] = files
	return name, files, nil
}

// fromRepo picks the newest version of chartName matching the version constraint (any version
// when empty) in the repository's index.yaml and downloads it, checking its digest.
func (f *chartFetcher) fromRepo(ctx context.Context, repoURL, chartName, version string) ([]byte, error) {
	idx, err := f.index(ctx, repoURL)
	if err != nil {
		return nil, err
	}
	cv, err := idx.Get(chartName, version)
	if err != nil {
		return nil, fmt.Errorf("chart %s version %q in %s: %w", chartName, version, repoURL, err)
	}
	if len(cv.URLs) == 0 {
		return nil, fmt.Errorf("chart %s %s in %s has no URL", chartName, cv.Version, repoURL)
	}
	u, err := repo.ResolveReferenceURL(repoURL, cv.URLs[0])
	if err != nil {
		return nil, fmt.Errorf("chart %s %s in %s: %w", chartName, cv.Version, repoURL, err)
	}
	data, err := f.get(ctx, u)
	if err != nil {
		return nil, err
	}
	if cv.Digest != "" {
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != cv.Digest {
			return nil, fmt.Errorf("chart %s %s from %s: digest %s, index says %s", chartName, cv.Version, u, got, cv.Digest)
		}
	}
	return data, nil
}

func (f *chartFetcher) index(ctx context.Context, repoURL string) (*repo.IndexFile, error) {
	if idx, ok := f.indexes[repoURL]; ok {
		return idx, nil
	}
	u, err := url.JoinPath(repoURL, "index.yaml")
	if err != nil {
		return nil, fmt.Errorf("helm repo %q: %w", repoURL, err)
	}
	data, err := f.get(ctx, u)
	if err != nil {
		return nil, err
	}
	idx := &repo.IndexFile{}
	if err := yaml.Unmarshal(data, idx); err != nil {
		return nil, fmt.Errorf("helm repo index %s: %w", u, err)
	}
	if idx.APIVersion == "" {
		return nil, fmt.Errorf("helm repo index %s: no apiVersion, not a chart repository index", u)
	}
	idx.SortEntries()
	f.indexes[repoURL] = idx
	return idx, nil
}

func (f *chartFetcher) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching %s: %s", u, resp.Status)
	}
	r := io.Reader(resp.Body)
	if f.maxBytes > 0 {
		r = io.LimitReader(resp.Body, f.maxBytes+1)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", u, err)
	}
	if f.maxBytes > 0 && int64(len(data)) > f.maxBytes {
		return nil, fmt.Errorf("fetching %s: %w: over %d bytes", u, ErrTooLarge, f.maxBytes)
	}
	return data, nil
}

// pullOCI pulls a chart from an OCI registry. A version that is not an exact semver version is
// a constraint, resolved against the repository's tags as Fleet does.
func (f *chartFetcher) pullOCI(ctx context.Context, ref, version string) ([]byte, error) {
	opts := []registry.ClientOption{registry.ClientOptHTTPClient(f.client), registry.ClientOptWriter(io.Discard)}
	if f.plainHTTP {
		opts = append(opts, registry.ClientOptPlainHTTP())
	}
	c, err := registry.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("oci registry client: %w", err)
	}
	ref = strings.TrimPrefix(ref, ociScheme)
	if _, err := semver.StrictNewVersion(version); err != nil {
		tag, err := ociTag(c, ref, version)
		if err != nil {
			return nil, err
		}
		version = tag
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res, err := c.Pull(ref+":"+version, registry.PullOptWithChart(true))
	if err != nil {
		return nil, fmt.Errorf("pulling %s%s:%s: %w", ociScheme, ref, version, err)
	}
	if res.Chart == nil || len(res.Chart.Data) == 0 {
		return nil, fmt.Errorf("pulling %s%s:%s: no chart layer", ociScheme, ref, version)
	}
	return res.Chart.Data, nil
}

func ociTag(c *registry.Client, ref, version string) (string, error) {
	constraint := "*"
	if version != "" {
		constraint = version
	}
	cons, err := semver.NewConstraint(constraint)
	if err != nil {
		return "", fmt.Errorf("chart version %q: %w", version, err)
	}
	tags, err := c.Tags(ref)
	if err != nil {
		return "", fmt.Errorf("listing tags of %s%s: %w", ociScheme, ref, err)
	}
	for _, t := range tags { // newest first
		v, err := semver.NewVersion(t)
		if err == nil && cons.Check(v) {
			return t, nil
		}
	}
	return "", errors.New("no tag of " + ociScheme + ref + " matches version " + constraint)
}
