package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"helm.sh/helm/v4/pkg/chart/common"
	chartvalues "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle/helmtpl"
)

// Rendered is what one cluster receives from a bundle.
type Rendered struct {
	// Objects are every object the cluster receives, namespaces resolved, in install order
	// (Helm's order of kinds, then by API version, namespace and name). For a Helm bundle they
	// are the release's manifest.
	Objects []*unstructured.Unstructured
	// Helm is set for a Helm bundle, which the agent installs as a release.
	Helm *HelmRelease
}

// HelmRelease is a Helm bundle ready to install with the Helm SDK. It is also the release's
// post-renderer (helm's postrender.PostRenderer): install with PostRenderer set to it so that the
// cluster gets exactly Rendered.Objects (Kustomize over the chart's output, namespaces).
type HelmRelease struct {
	ReleaseName string
	// Namespace is the release's namespace: the bundle's namespace, else its defaultNamespace,
	// else "default".
	Namespace string
	// Chart is the loaded chart, in the type Helm v4's SDK installs.
	Chart *chart.Chart
	// Values are the bundle's values, merged and templated for the cluster. ValuesFrom are still
	// to be read from the cluster and merged over them.
	Values     map[string]any
	ValuesFrom []api.ValuesFrom

	Force                bool
	TakeOwnership        bool
	Atomic               bool
	WaitForJobs          bool
	DisableDNS           bool
	SkipSchemaValidation bool
	MaxHistory           int
	Timeout              time.Duration

	// Hooks are the chart's hook objects, which Helm creates around install and upgrade but which
	// are not part of the release's manifest.
	Hooks []*unstructured.Unstructured

	post postRenderer
}

// Run post-renders Helm's output as Flotilla does (see HelmRelease), within DefaultBudget: Helm
// calls it without a context.
func (r *HelmRelease) Run(rendered *bytes.Buffer) (*bytes.Buffer, error) {
	m, _, stop := startMeter(context.Background())
	defer stop()
	out, err := r.run(m, rendered)
	return out, m.result(err)
}

func (r *HelmRelease) run(m *meter, rendered *bytes.Buffer) (*bytes.Buffer, error) {
	objs, err := parseObjects(m, "helm output", rendered.Bytes(), false)
	if err != nil {
		return nil, err
	}
	objs, err = r.post.process(m, objs)
	if err != nil {
		return nil, err
	}
	b, err := encodeObjects(objs)
	if err != nil {
		return nil, err
	}
	return bytes.NewBuffer(b), nil
}

// postRenderer is what happens to objects after they are generated, for every kind of bundle.
type postRenderer struct {
	files        Files
	kustomizeDir string // "" when there is no kustomization
	opts         api.BundleDeploymentOptions
	crds         []*unstructured.Unstructured // of the chart's crds/ directories
}

func (p postRenderer) process(m *meter, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	if p.kustomizeDir != "" {
		var err error
		objs, err = kustomize(m, p.files, p.kustomizeDir, objs)
		if err != nil {
			return nil, err
		}
	}
	if err := setNamespaces(objs, p.opts, p.crds...); err != nil {
		return nil, err
	}
	sortObjects(objs)
	return objs, nil
}

// Render produces what cluster c receives from a bundle with content files and options opts
// (the bundle's options merged with its target's, see Merge). It templates Helm values for c
// (see TemplateValues), so opts must not be templated already. releaseName is used unless
// helm.releaseName is set, normally the bundle's name.
//
// Like Fleet, Render picks the bundle's style from its content: a Helm chart if helm.chart (or,
// without it, a Chart.yaml at the root) names one, else Kustomize if kustomize.dir (or the root)
// holds a kustomization, else raw YAML with yaml.overlays applied. A kustomization also
// post-processes a chart's output.
//
// Render runs within ctx's Budget (see WithBudget; DefaultBudget without one) and stops when
// ctx is cancelled: an overrun is a *BudgetError, which wraps ErrBudgetExceeded.
func Render(ctx context.Context, files Files, opts api.BundleDeploymentOptions, c Cluster, releaseName string) (r *Rendered, err error) {
	m, ctx, stop := startMeter(ctx)
	defer stop()
	// Content comes from repositories' authors: a renderer's panic on it must fail this render,
	// not the server or agent that runs it.
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("rendering bundle: internal error on this content: %v", p)
		}
	}()
	r, err = render(ctx, m, files, opts, c, releaseName)
	if err != nil {
		return nil, m.result(err)
	}
	return r, nil
}

func render(ctx context.Context, m *meter, files Files, opts api.BundleDeploymentOptions, c Cluster, releaseName string) (*Rendered, error) {
	opts, err := templateValues(m, opts, c)
	if err != nil {
		return nil, err
	}
	if opts.Helm != nil && opts.Helm.ReleaseName != "" {
		releaseName = opts.Helm.ReleaseName
	}
	if releaseName == "" {
		return nil, errors.New("rendering bundle: no release name")
	}
	kdir, err := kustomizeDir(files, opts)
	if err != nil {
		return nil, err
	}
	post := postRenderer{files: files, kustomizeDir: kdir, opts: opts}

	if dir, ok := chartDir(files, opts); ok {
		return renderChart(ctx, m, files, dir, opts, releaseName, post)
	}
	if kdir != "" {
		objs, err := post.process(m, nil)
		if err != nil {
			return nil, err
		}
		return &Rendered{Objects: objs}, nil
	}
	objs, err := rawObjects(ctx, m, files, opts, releaseName)
	if err != nil {
		return nil, err
	}
	if objs, err = post.process(m, objs); err != nil {
		return nil, err
	}
	return &Rendered{Objects: objs}, nil
}

// releaseNamespace is where Fleet installs a bundle's release.
func releaseNamespace(opts api.BundleDeploymentOptions) string {
	switch {
	case opts.TargetNamespace != "":
		return opts.TargetNamespace
	case opts.DefaultNamespace != "":
		return opts.DefaultNamespace
	}
	return "default"
}

// chartPrefix is where Scan puts charts that are not part of the bundle's own directory: under
// ".chart/<sha256 of chart:repo:version>/", Fleet's layout, so each target's chart version keeps
// its own place.
func chartPrefix(h *api.HelmOptions) string {
	sum := sha256.Sum256([]byte(h.Chart + ":" + h.Repo + ":" + h.Version))
	return fmt.Sprintf(".chart/%x/", sum)
}

// chartDir finds the directory of the bundle's chart in files, as Fleet's style detection does.
func chartDir(files Files, opts api.BundleDeploymentOptions) (string, bool) {
	if opts.Helm == nil || (opts.Helm.Chart == "" && opts.Helm.Repo == "") {
		if _, ok := files["Chart.yaml"]; ok {
			return "", true
		}
		return "", false
	}
	if local := cleanRel(opts.Helm.Chart); opts.Helm.Repo == "" && local != "" {
		if _, ok := files[path.Join(local, "Chart.yaml")]; ok {
			return local, true
		}
	}
	prefix := chartPrefix(opts.Helm)
	var found []string
	for name := range files {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		if rest == "Chart.yaml" {
			return strings.TrimSuffix(prefix, "/"), true
		}
		if d, f := path.Split(rest); f == "Chart.yaml" && d != "" && !strings.Contains(strings.TrimSuffix(d, "/"), "/") {
			found = append(found, prefix+strings.TrimSuffix(d, "/"))
		}
	}
	if len(found) > 0 {
		slices.Sort(found)
		return found[0], true
	}
	return "", false
}

// cleanRel cleans a bundle-relative path from a fleet.yaml ("./chart/" → "chart"); "" if it
// leaves the bundle or names its root.
func cleanRel(p string) string {
	p = path.Clean("/" + strings.TrimPrefix(p, "./"))
	p = strings.TrimPrefix(p, "/")
	if p == "" || p == "." {
		return ""
	}
	return p
}

func filesUnder(files Files, dir string) []*archive.BufferedFile {
	var out []*archive.BufferedFile
	prefix := ""
	if dir != "" {
		prefix = dir + "/"
	}
	for _, name := range files.Names() {
		if rest, ok := strings.CutPrefix(name, prefix); ok {
			out = append(out, &archive.BufferedFile{Name: rest, Data: files[name]})
		}
	}
	return out
}

func renderChart(ctx context.Context, m *meter, files Files, dir string, opts api.BundleDeploymentOptions, releaseName string, post postRenderer) (*Rendered, error) {
	where := dir
	if where == "" {
		where = "bundle root"
	}
	ch, err := loader.LoadFiles(filesUnder(files, dir))
	if err != nil {
		return nil, fmt.Errorf("loading chart %s: %w", where, err)
	}
	for _, crd := range ch.CRDObjects() {
		objs, err := parseObjects(m, crd.Filename, crd.File.Data, true)
		if err != nil {
			return nil, err
		}
		post.crds = append(post.crds, objs...)
	}
	h := opts.Helm
	if h == nil {
		h = &api.HelmOptions{}
	}
	rel := &HelmRelease{
		ReleaseName:          releaseName,
		Namespace:            releaseNamespace(opts),
		Chart:                ch,
		Values:               h.Values,
		ValuesFrom:           h.ValuesFrom,
		Force:                h.Force || (opts.CorrectDrift != nil && opts.CorrectDrift.Force),
		TakeOwnership:        h.TakeOwnership,
		Atomic:               h.Atomic,
		WaitForJobs:          h.WaitForJobs,
		DisableDNS:           h.DisableDNS,
		SkipSchemaValidation: h.SkipSchemaValidation,
		MaxHistory:           h.MaxHistory,
		Timeout:              time.Duration(h.TimeoutSeconds) * time.Second,
		post:                 post,
	}
	manifest, hooks, err := helmTemplate(ctx, m, rel, true)
	if err != nil {
		return nil, fmt.Errorf("rendering chart %s (%s): %w", where, ch.Name(), err)
	}
	objs, err := parseObjects(m, "chart "+ch.Name(), []byte(manifest), false)
	if err != nil {
		return nil, err
	}
	sortObjects(objs)
	rel.Hooks = hooks
	return &Rendered{Objects: objs, Helm: rel}, nil
}

// helmTemplate renders rel's chart as `helm template --include-crds` does (no cluster),
// post-rendered by rel when postRender is set, with Helm v4's chart and values packages. It
// renders with a copy of Helm v4's engine that keeps to m's budget (package helmtpl) rather than
// Helm's action package, whose engine nothing can stop once a template runs.
func helmTemplate(ctx context.Context, m *meter, rel *HelmRelease, postRender bool) (string, []*unstructured.Unstructured, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	ch := rel.Chart
	if err := chartutil.ValidateReleaseName(rel.ReleaseName); err != nil {
		return "", nil, fmt.Errorf("release name %q: %w", rel.ReleaseName, err)
	}
	if ch.Metadata != nil && ch.Metadata.Type != "" && ch.Metadata.Type != "application" {
		return "", nil, fmt.Errorf("%s charts are not installable", ch.Metadata.Type)
	}
	caps := common.DefaultCapabilities.Copy()
	if ch.Metadata != nil && ch.Metadata.KubeVersion != "" && !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, caps.KubeVersion.String()) {
		return "", nil, fmt.Errorf("chart requires kubeVersion %s, incompatible with Kubernetes %s", ch.Metadata.KubeVersion, caps.KubeVersion.String())
	}
	vals, _ := copyValue(rel.Values).(map[string]any)
	if vals == nil {
		vals = map[string]any{}
	}
	if err := chartutil.ProcessDependencies(ch, vals); err != nil {
		return "", nil, err
	}
	opts := common.ReleaseOptions{Name: rel.ReleaseName, Namespace: rel.Namespace, Revision: 1, IsInstall: true}
	values, err := chartvalues.ToRenderValuesWithSchemaValidation(ch, vals, opts, caps, rel.SkipSchemaValidation)
	if err != nil {
		return "", nil, err
	}
	e := helmtpl.Engine{EnableDNS: !rel.DisableDNS, Meter: m}
	files, err := e.Render(ch, values)
	if err != nil {
		return "", nil, m.result(err)
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", nil, err
	}
	var b bytes.Buffer
	for _, crd := range ch.CRDObjects() {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", crd.Filename, crd.File.Data)
	}
	for _, mf := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", mf.Name, mf.Content)
	}
	manifest := b.String()
	if postRender {
		out, err := rel.run(m, &b)
		if err != nil {
			return "", nil, fmt.Errorf("post-rendering: %w", err)
		}
		manifest = out.String()
	}
	var hookObjs []*unstructured.Unstructured
	for _, h := range hooks {
		objs, err := parseObjects(m, h.Path, []byte(h.Manifest), false)
		if err != nil {
			return "", nil, err
		}
		if err := setNamespaces(objs, rel.post.opts, rel.post.crds...); err != nil {
			return "", nil, err
		}
		hookObjs = append(hookObjs, objs...)
	}
	return manifest, hookObjs, nil
}
