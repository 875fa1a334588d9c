package apply

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/storage/driver"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// helmDriver is Helm's release storage: Secrets, as the helm CLI uses, so
// that `helm list -A` shows what the agent installed.
const helmDriver = "secret"

// applyHelm installs or upgrades d's Helm release. An up-to-date release
// (same chart, values, name and namespace, status deployed) is not touched,
// so its revision does not grow on every reconcile.
func (a *Applier) applyHelm(ctx context.Context, log *slog.Logger, d Deployment, old *inventory) (Result, error) {
	h := d.Helm
	name, ns := releaseName(d), releaseNamespace(d)
	log = log.With("release", ns+"/"+name)
	digest := helmDigest(&d)
	cfg, err := a.helmConfig(ns, log)
	if err != nil {
		return failed(old.hash(), err)
	}
	last, err := cfg.Releases.Last(name)
	if err != nil && !errors.Is(err, driver.ErrReleaseNotFound) {
		return failed(old.hash(), fmt.Errorf("reading helm release %s/%s: %w", ns, name, err))
	}
	inv := &inventory{ID: d.ID, Hash: d.hash(), KeepResources: d.KeepResources, HelmNamespace: ns, HelmRelease: name}
	upToDate := last != nil && last.Info != nil && last.Info.Status == release.StatusDeployed && last.Labels[labelHelmDigest] == digest
	if upToDate {
		inv.Objects = manifestRefs(last.Manifest, ns)
		if old == nil || old.Hash != inv.Hash || old.HelmRelease != name || old.HelmNamespace != ns {
			if err := a.writeInventory(ctx, inv); err != nil {
				return failed(old.hash(), err)
			}
		}
		res, err := a.helmStatus(ctx, d, inv)
		if err != nil || res.State != Modified || !d.CorrectDrift {
			return res, err
		}
		log.Info("correcting drift by upgrading helm release", "modified", res.Message)
	}

	// Remember the release before it exists, so that Remove finds it even
	// when the agent dies during the install.
	pending := *inv
	pending.Hash = old.hash()
	if err := a.writeInventory(ctx, &pending); err != nil {
		return failed(old.hash(), err)
	}
	if err := a.ensureNamespace(ctx, ns); err != nil {
		return failed(old.hash(), err)
	}
	timeout := time.Duration(h.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = 300 * time.Second
	}
	maxHistory := h.MaxHistory
	if maxHistory <= 0 {
		maxHistory = 10
	}
	labels := map[string]string{labelHelmDigest: digest}
	post := &labeler{label: LabelValue(d.ID), annotation: d.ID}
	values := h.Values
	if values == nil {
		values = map[string]any{}
	}
	if last != nil && last.Info != nil && last.Info.Status.IsPending() {
		// Only this agent changes its releases and it does so one at a
		// time, so a pending release was left by an agent that died
		// mid-operation. Helm would refuse every later upgrade.
		log.Warn("marking interrupted helm operation as failed", "status", last.Info.Status)
		last.SetStatus(release.StatusFailed, "interrupted: the agent stopped during the operation")
		if err := cfg.Releases.Update(last); err != nil {
			return failed(old.hash(), fmt.Errorf("resetting interrupted helm release %s/%s: %w", ns, name, err))
		}
	}

	var rel *release.Release
	if last == nil {
		install := action.NewInstall(cfg)
		install.ReleaseName, install.Namespace = name, ns
		install.CreateNamespace = true
		install.Timeout = timeout
		install.Atomic, install.Wait = h.Atomic, h.Atomic
		install.TakeOwnership = h.TakeOwnership
		install.Force = h.Force
		install.Labels = labels
		install.PostRenderer = post
		install.Description = "installed by " + a.fieldManager
		rel, err = install.RunWithContext(ctx, h.Chart, values)
	} else {
		upgrade := action.NewUpgrade(cfg)
		upgrade.Namespace = ns
		upgrade.Timeout = timeout
		upgrade.Atomic, upgrade.Wait = h.Atomic, h.Atomic
		upgrade.TakeOwnership = h.TakeOwnership
		upgrade.Force = h.Force || (upToDate && d.ForceDrift)
		upgrade.MaxHistory = maxHistory
		// The desired values are complete: values dropped from the bundle
		// must fall back to the chart's defaults, not linger.
		upgrade.ResetValues = true
		upgrade.Labels = labels
		upgrade.PostRenderer = post
		upgrade.Description = "upgraded by " + a.fieldManager
		rel, err = upgrade.RunWithContext(ctx, name, h.Chart, values)
	}
	if err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	log.Info("applied helm release", "revision", rel.Version, "hash", inv.Hash)
	if old != nil && old.HelmRelease != "" && (old.HelmRelease != name || old.HelmNamespace != ns) {
		if err := a.uninstallHelm(ctx, log, old.HelmNamespace, old.HelmRelease); err != nil {
			return failed(old.hash(), err)
		}
	}
	if old != nil && old.HelmRelease == "" && len(old.Objects) > 0 {
		// The bundle switched from raw manifests to Helm.
		if err := a.deleteObjects(ctx, log, d.ID, old.Objects); err != nil {
			return failed(old.hash(), err)
		}
	}
	inv.Objects = manifestRefs(rel.Manifest, ns)
	if err := a.writeInventory(ctx, inv); err != nil {
		return failed(old.hash(), err)
	}
	return a.helmStatus(ctx, d, inv)
}

// helmStatus checks the objects of d's release as rendered in its manifest.
func (a *Applier) helmStatus(ctx context.Context, d Deployment, inv *inventory) (Result, error) {
	name, ns := releaseName(d), releaseNamespace(d)
	cfg, err := a.helmConfig(ns, a.log.With("deployment", d.ID))
	if err != nil {
		return Result{}, err
	}
	rel, err := cfg.Releases.Last(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return Result{State: Modified, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: missing", ns, name)}, nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("reading helm release %s/%s: %w", ns, name, err)
	}
	switch st := rel.Info.Status; {
	case st == release.StatusFailed:
		return Result{State: ErrApplied, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: %s: %s", ns, name, st, shorten(rel.Info.Description, 512))}, nil
	case st != release.StatusDeployed:
		return Result{State: NotReady, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: %s", ns, name, st)}, nil
	case rel.Labels[labelHelmDigest] != helmDigest(&d):
		return Result{State: OutOfSync, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: revision %d was not made by this agent from the desired chart and values", ns, name, rel.Version)}, nil
	}
	objs, err := manifestObjects(rel.Manifest)
	if err != nil {
		return Result{}, fmt.Errorf("helm release %s/%s: %w", ns, name, err)
	}
	// Check the objects as Helm applied them; a.prepare gives them the
	// release namespace, as Helm does.
	sub := Deployment{ID: d.ID, Objects: objs, DefaultNamespace: ns}
	items, err := a.prepare(ctx, sub)
	if err != nil {
		return Result{}, err
	}
	return a.status(ctx, d, items, inv.Hash)
}

// uninstallHelm uninstalls a release; a missing one is already uninstalled.
func (a *Applier) uninstallHelm(ctx context.Context, log *slog.Logger, ns, name string) error {
	cfg, err := a.helmConfig(ns, log)
	if err != nil {
		return err
	}
	if _, err := cfg.Releases.Last(name); errors.Is(err, driver.ErrReleaseNotFound) {
		return nil
	}
	u := action.NewUninstall(cfg)
	u.Timeout = 5 * time.Minute
	if dl, ok := ctx.Deadline(); ok {
		u.Timeout = time.Until(dl)
	}
	if _, err := u.Run(name); err != nil && !errors.Is(err, driver.ErrReleaseNotFound) {
		return fmt.Errorf("uninstalling helm release %s/%s: %w", ns, name, err)
	}
	log.Info("uninstalled helm release", "release", ns+"/"+name)
	return nil
}

func (a *Applier) helmConfig(ns string, log *slog.Logger) (*action.Configuration, error) {
	cfg := new(action.Configuration)
	debug := func(format string, v ...any) { log.Debug(fmt.Sprintf(format, v...), "component", "helm") }
	if err := cfg.Init(&restGetter{a: a, namespace: ns}, ns, helmDriver, debug); err != nil {
		return nil, fmt.Errorf("setting up helm for namespace %s: %w", ns, err)
	}
	return cfg, nil
}

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
// dependencies), the values, and where it goes. It is stored as a release
// label to recognise an up-to-date release without rendering anything.
func helmDigest(d *Deployment) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	_ = enc.Encode([]string{releaseName(*d), releaseNamespace(*d), d.ID})
	var walk func(c *chart.Chart)
	walk = func(c *chart.Chart) {
		_ = enc.Encode(c.Metadata)
		_ = enc.Encode(c.Lock)
		_ = enc.Encode(c.Values)
		_ = enc.Encode(c.Schema)
		for _, files := range [][]*chart.File{c.Templates, c.Files} {
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

// manifestRefs lists a release's objects for the inventory, which Watch uses
// to know the kinds to watch. Namespaces are not resolved here: the
// inventory of a Helm deployment is never used for deleting.
func manifestRefs(manifest, ns string) []objectRef {
	objs, _ := manifestObjects(manifest)
	refs := make([]objectRef, 0, len(objs))
	for _, o := range objs {
		r := refOf(o)
		if r.Namespace == "" {
			r.Namespace = ns
		}
		refs = append(refs, r)
	}
	return refs
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

// restGetter hands Helm the Applier's clients, so that Helm shares its
// discovery cache and REST mapper instead of building its own per call.
type restGetter struct {
	a         *Applier
	namespace string
}

func (g *restGetter) ToRESTConfig() (*rest.Config, error) {
	return rest.CopyConfig(g.a.restConfig), nil
}
func (g *restGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	return g.a.discovery, nil
}
func (g *restGetter) ToRESTMapper() (meta.RESTMapper, error) { return g.a.mapper, nil }

// ToRawKubeConfigLoader only serves the namespace: Helm's kube client asks
// it for the default namespace of the objects it creates.
func (g *restGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return clientcmd.NewDefaultClientConfig(*clientcmdapi.NewConfig(), &clientcmd.ConfigOverrides{Context: clientcmdapi.Context{Namespace: g.namespace}})
}
