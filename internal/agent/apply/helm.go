package apply

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/kube"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// releaseNamespace is where d's release lives: the chart's namespace, else
// the deployment's default namespace, else "default".
func releaseNamespace(d Deployment) string {
	switch {
	case d.Helm.Namespace != "":
		return d.Helm.Namespace
	case d.DefaultNamespace != "":
		return d.DefaultNamespace
	}
	return "default"
}

// releaseName is the Helm release name, derived from the deployment ID when
// the bundle names none: Helm release names are DNS labels of at most 53
// characters.
func releaseName(d Deployment) string {
	if d.Helm.ReleaseName != "" {
		return d.Helm.ReleaseName
	}
	var b strings.Builder
	for _, r := range strings.ToLower(d.ID) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) <= 53 && name == strings.ToLower(d.ID) {
		return name
	}
	sum := sha256.Sum256([]byte(d.ID))
	if len(name) > 44 {
		name = strings.TrimRight(name[:44], "-")
	}
	return name + "-" + hex.EncodeToString(sum[:])[:8]
}

// helmDigest identifies what a release is made from: the chart (with its
// dependencies), the values, the render key and options, and where it goes. It is stored as a release
// label to recognise an up-to-date release without rendering anything.
func helmDigest(d *Deployment) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	_ = enc.Encode([]string{releaseName(*d), releaseNamespace(*d), d.ID})
	var walk func(c *chartv2.Chart)
	walk = func(c *chartv2.Chart) {
		_ = enc.Encode(c.Metadata)
		_ = enc.Encode(c.Lock)
		_ = enc.Encode(c.Values)
		_ = enc.Encode(c.Schema)
		for _, files := range [][]*common.File{c.Templates, c.Files} {
			for _, f := range files {
				_ = enc.Encode(f.Name)
				h.Write(f.Data)
			}
		}
		deps := c.Dependencies()
		sort.Slice(deps, func(i, j int) bool { return deps[i].Name() < deps[j].Name() })
		for _, dep := range deps {
			walk(dep)
		}
	}
	walk(d.Helm.Chart)
	_ = enc.Encode(d.Helm.Values)
	_ = enc.Encode([]any{d.Helm.RenderKey, d.Helm.DisableDNS, d.Helm.SkipSchemaValidation})
	// Label values are limited to 63 characters.
	return hex.EncodeToString(h.Sum(nil))[:40]
}

// manifestObjects decodes a release manifest into its objects.
func manifestObjects(manifest string) ([]*unstructured.Unstructured, error) {
	docs := releaseutil.SplitManifests(manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	var out []*unstructured.Unstructured
	for _, k := range keys {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(docs[k]), &obj); err != nil {
			return nil, fmt.Errorf("decoding manifest: %w", err)
		}
		if len(obj) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
	return out, nil
}

// labeler is a Helm post-renderer that stamps every rendered object with the
// deployment's label and annotation, as for raw bundles, so that Watch sees
// changes to them.
type labeler struct{ label, annotation string }

func (l *labeler) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	objs, err := manifestObjects(in.String())
	if err != nil {
		return nil, err
	}
	out := new(bytes.Buffer)
	for _, o := range objs {
		stamp(o, l.label, l.annotation)
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", refOf(o), err)
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	return out, nil
}

// postRenderer runs the bundle's post-renderer (its Kustomize and namespace rules), then
// stamps every object with the deployment's label and annotation, as for raw bundles, so
// that Watch sees changes to them. Helm runs it on the manifest and the hooks.
type postRenderer struct {
	next              PostRenderer
	label, annotation string
}

func (p *postRenderer) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	out := in
	if p.next != nil {
		var err error
		if out, err = p.next.Run(in); err != nil {
			return nil, fmt.Errorf("post-rendering: %w", err)
		}
	}
	return (&labeler{label: p.label, annotation: p.annotation}).Run(out)
}

// fieldManagerMu guards Helm's field manager, a variable of its kube package.
var fieldManagerMu sync.Mutex

// helmConfig is Helm's action configuration for releases in namespace ns: the Secret
// storage driver (Helm's default, what the helm CLI reads) and Helm's kube client on the
// Applier's REST config. Helm applies with the agent's field manager, so that drift
// detection and drift correction (server-side applies of the same objects) see the same
// owner of the same fields.
func (a *Applier) helmConfig(_ context.Context, ns string) (*action.Configuration, error) {
	fieldManagerMu.Lock()
	kube.ManagedFieldsManager = a.fieldManager
	fieldManagerMu.Unlock()
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(a.log.Handler()))
	if err := cfg.Init(&restGetter{a: a, namespace: ns}, ns, "secret"); err != nil {
		return nil, fmt.Errorf("helm configuration for namespace %s: %w", ns, err)
	}
	if kc, ok := cfg.KubeClient.(*kube.Client); ok {
		kc.Namespace = ns
	}
	return cfg, nil
}

// restGetter hands Helm the Applier's clients instead of a kubeconfig file.
type restGetter struct {
	a         *Applier
	namespace string
}

var _ genericclioptions.RESTClientGetter = (*restGetter)(nil)

func (g *restGetter) ToRESTConfig() (*rest.Config, error) {
	return rest.CopyConfig(g.a.restConfig), nil
}

func (g *restGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	return g.a.discovery, nil
}

func (g *restGetter) ToRESTMapper() (meta.RESTMapper, error) { return g.a.mapper, nil }

func (g *restGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return &clientConfig{g: g}
}

// clientConfig is the kubeconfig Helm's kube client asks for: only the REST config and
// the release's namespace.
type clientConfig struct{ g *restGetter }

func (c *clientConfig) RawConfig() (clientcmdapi.Config, error) { return clientcmdapi.Config{}, nil }
func (c *clientConfig) ClientConfig() (*rest.Config, error)     { return c.g.ToRESTConfig() }
func (c *clientConfig) Namespace() (string, bool, error)        { return c.g.namespace, false, nil }
func (c *clientConfig) ConfigAccess() clientcmd.ConfigAccess {
	return clientcmd.NewDefaultPathOptions()
}

// dryRunManifest renders d's chart without the cluster, to learn which objects it makes.
func (a *Applier) dryRunManifest(ctx context.Context, d Deployment, ch *chartv2.Chart, isUpgrade bool) (string, error) {
	// A client-only install replaces the configuration's client and storage: its own.
	cfg, err := a.helmConfig(ctx, releaseNamespace(d))
	if err != nil {
		return "", err
	}
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace = releaseName(d), releaseNamespace(d)
	in.DryRunStrategy, in.IsUpgrade = action.DryRunClient, isUpgrade
	in.EnableDNS, in.SkipSchemaValidation = false, d.Helm.SkipSchemaValidation
	in.PostRenderer = &postRenderer{next: d.Helm.PostRenderer, label: LabelValue(d.ID), annotation: d.ID}
	vals, _ := copyValue(d.Helm.Values).(map[string]any)
	res, err := in.RunWithContext(ctx, ch, vals)
	if err != nil {
		return "", fmt.Errorf("rendering: %w", err)
	}
	rel, err := toV1(res)
	if err != nil {
		return "", err
	}
	return rel.Manifest, nil
}

// helmItems turns a release manifest into items: Helm's ownership marks added (as Helm adds
// them to what it applies, not to the manifest), namespaces defaulted to the release's.
func (a *Applier) helmItems(ctx context.Context, d Deployment, manifest, name, ns string) ([]item, error) {
	objs, err := manifestObjects(manifest)
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		l := o.GetLabels()
		if l == nil {
			l = map[string]string{}
		}
		l[labelManagedBy] = "Helm"
		o.SetLabels(l)
		an := o.GetAnnotations()
		if an == nil {
			an = map[string]string{}
		}
		an[annotationReleaseName], an[annotationReleaseNamespace] = name, ns
		o.SetAnnotations(an)
	}
	return a.prepare(ctx, Deployment{ID: d.ID, Objects: objs, DefaultNamespace: ns})
}

// checkOwnership reports whether existing objects without Helm's marks of this release
// are all the deployment's own (its previous inventory, or its label: applied as raw
// manifests before the bundle became a chart), so that the release may adopt them. It
// refuses, as Helm does, an object that belongs to neither, naming it.
func (a *Applier) checkOwnership(ctx context.Context, d Deployment, items []item, old *inventory, name, ns string) (bool, error) {
	label := LabelValue(d.ID)
	adopt := false
	for _, it := range items {
		m, err := a.mapping(it.obj.GroupVersionKind())
		if err != nil {
			if meta.IsNoMatchError(err) {
				continue // a kind not served yet has no objects yet
			}
			return false, err
		}
		live, err := a.resource(m, it.ref.Namespace).Get(ctx, it.ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("reading %s: %w", it.ref, err)
		}
		an := live.GetAnnotations()
		if live.GetLabels()[labelManagedBy] == "Helm" && an[annotationReleaseName] == name && an[annotationReleaseNamespace] == ns {
			continue
		}
		if live.GetLabels()[LabelBundleID] == label || old != nil && slices.ContainsFunc(old.Objects, it.ref.sameObject) {
			adopt = true
			continue
		}
		return false, fmt.Errorf("%s exists and is not part of this release (no %s=Helm label and %s=%s, %s=%s annotations); set helm.takeOwnership to adopt it",
			it.ref, labelManagedBy, annotationReleaseName, name, annotationReleaseNamespace, ns)
	}
	return adopt, nil
}

// nonReady reads the objects back and lists those not ready yet.
func (a *Applier) nonReady(ctx context.Context, items []item) ([]ObjectStatus, error) {
	var out []ObjectStatus
	for _, it := range items {
		m, err := a.mapping(it.obj.GroupVersionKind())
		if err != nil {
			return nil, err
		}
		live, err := a.resource(m, it.ref.Namespace).Get(ctx, it.ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			out = append(out, ObjectStatus{APIVersion: it.ref.APIVersion, Kind: it.ref.Kind, Namespace: it.ref.Namespace, Name: it.ref.Name, Missing: true, Message: "missing"})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", it.ref, err)
		}
		if st := readiness(live); st != nil {
			out = append(out, *st)
		}
	}
	return out, nil
}
