package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/releaseutil"
	helmtime "helm.sh/helm/v3/pkg/time"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
)

// Helm's marks of ownership on the objects of a release: `helm upgrade` refuses to touch an
// object without them, and Flotilla refuses to adopt one without them unless TakeOwnership.
const (
	labelManagedBy             = "app.kubernetes.io/managed-by"
	annotationReleaseName      = "meta.helm.sh/release-name"
	annotationReleaseNamespace = "meta.helm.sh/release-namespace"
)

// defaultHelmTimeout bounds hooks and waits when the bundle sets no timeout.
const defaultHelmTimeout = 300 * time.Second

// applyRelease installs or upgrades d's Helm release. The chart is rendered with Helm's
// engine and the objects are applied with the engine's server-side apply, exactly as for a
// raw bundle (same drift detection, labels, inventory and pruning); what makes it a Helm
// release is the revision history written beside it (see helmstore.go) and Helm's hooks.
//
// A release whose latest revision is deployed and was made from the same chart, values and
// render key is not rendered again: Apply then only checks it and corrects drift in place,
// without a new revision.
func (a *Applier) applyRelease(ctx context.Context, log *slog.Logger, d Deployment, old *inventory) (Result, error) {
	name, ns := releaseName(d), releaseNamespace(d)
	log = log.With("release", ns+"/"+name)
	store := a.releases(ns)
	inv := &inventory{ID: d.ID, Hash: d.hash(), KeepResources: d.KeepResources, HelmNamespace: ns, HelmRelease: name}
	hist, err := store.history(ctx, name)
	if err != nil {
		return failed(old.hash(), err)
	}
	digest := helmDigest(&d)
	if l := last(hist); l != nil && l.Status == release.StatusDeployed && l.Digest == digest {
		return a.keepRelease(ctx, log, d, store, l, inv, old)
	}
	return a.upgradeRelease(ctx, log, d, store, hist, digest, inv, old)
}

// keepRelease checks an up-to-date release, finishes what an interrupted run left (the
// inventory, objects of an older version), and corrects drift when d asks for it.
func (a *Applier) keepRelease(ctx context.Context, log *slog.Logger, d Deployment, store releaseStore, rev *revision, inv, old *inventory) (Result, error) {
	items, err := a.releaseItems(ctx, d, store, rev)
	if err != nil {
		return failed(old.hash(), err)
	}
	inv.Objects = refsOf(items)
	if old == nil || old.Hash != inv.Hash || old.HelmRelease != inv.HelmRelease || old.HelmNamespace != inv.HelmNamespace || !slices.Equal(old.Objects, inv.Objects) {
		if err := a.writeInventory(ctx, inv); err != nil {
			return failed(old.hash(), err)
		}
		if err := a.deleteObjects(ctx, log, d.ID, staleRefs(old, inv.Objects)); err != nil {
			return failed(old.hash(), err)
		}
	}
	sub := d
	sub.Objects, sub.DefaultNamespace = nil, inv.HelmNamespace
	sub.ForceDrift = d.ForceDrift || d.Helm.Force
	return a.keepApplied(ctx, log, sub, items, inv)
}

// upgradeRelease renders d's chart into a new revision and applies it (an install when the
// release has no history), running the chart's hooks around it.
func (a *Applier) upgradeRelease(ctx context.Context, log *slog.Logger, d Deployment, store releaseStore, hist []revision, digest string, inv, old *inventory) (Result, error) {
	h := d.Helm
	name, ns := inv.HelmRelease, inv.HelmNamespace
	timeout := helmTimeout(h)
	lastRev := last(hist)
	if lastRev != nil && (lastRev.Status.IsPending() || lastRev.Status == release.StatusUninstalling) {
		// Only this agent changes its releases, one operation at a time, so a pending
		// revision was left by an agent that stopped mid-operation. Helm would refuse
		// every later upgrade; mark it failed and carry on from it.
		log.Warn("marking interrupted helm operation as failed", "revision", lastRev.Version, "status", lastRev.Status)
		if err := store.setStatus(ctx, name, lastRev.Version, release.StatusFailed, "interrupted: the agent stopped during the operation"); err != nil {
			return failed(old.hash(), err)
		}
		lastRev.Status = release.StatusFailed
	}
	// Like `helm upgrade`, start from the deployed revision, else from the latest (failed
	// or superseded) one.
	var current *release.Release
	var err error
	if dep := lastDeployed(hist); dep != nil {
		current, err = store.get(ctx, name, dep.Version)
	} else if lastRev != nil {
		current, err = store.get(ctx, name, lastRev.Version)
	}
	if err != nil {
		return failed(old.hash(), err)
	}
	revision, isUpgrade := 1, lastRev != nil
	if isUpgrade {
		revision = lastRev.Version + 1
	}

	if err := a.ensureNamespace(ctx, ns); err != nil {
		return failed(old.hash(), err)
	}
	if err := a.installCRDs(ctx, log, h.Chart); err != nil {
		return failed(old.hash(), err)
	}
	rel, err := a.renderRelease(d, name, ns, revision, isUpgrade)
	if err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	rel.Labels = map[string]string{labelHelmDigest: digest, labelHelmRevision: strconv.Itoa(rel.Version)}
	if current != nil {
		rel.Info.FirstDeployed = current.Info.FirstDeployed
		for k, v := range current.Labels {
			if _, ok := rel.Labels[k]; !ok {
				rel.Labels[k] = v
			}
		}
	}
	if current != nil && current.Info.Status == release.StatusDeployed && current.Version == lastRev.Version && sameRelease(current, rel) {
		// Only the inputs changed, not what they make: remember the new digest on the
		// deployed revision rather than making a revision that changes nothing.
		current.Labels[labelHelmDigest] = digest
		current.Labels[labelHelmRevision] = strconv.Itoa(current.Version)
		if err := store.update(ctx, current); err != nil {
			return failed(old.hash(), err)
		}
		log.Info("helm release unchanged by the new inputs; keeping its revision", "revision", current.Version)
		hist, err := store.history(ctx, name)
		if err != nil {
			return failed(old.hash(), err)
		}
		if l := last(hist); l != nil && l.Version == current.Version {
			return a.keepRelease(ctx, log, d, store, l, inv, old)
		}
		return failed(old.hash(), fmt.Errorf("helm release %s/%s changed while the agent was updating it", ns, name))
	}

	items, err := a.helmItems(ctx, d, rel.Manifest, name, ns)
	if err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	if err := a.checkOwnership(ctx, d, items, old, name, ns); err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	inv.Objects = refsOf(items)
	stale := staleRefs(old, inv.Objects)
	// Record every object this operation may create before creating any, under the old
	// hash: an agent that dies half-way then still finds and prunes them.
	pending := &inventory{ID: d.ID, Hash: old.hash(), KeepResources: d.KeepResources, HelmNamespace: ns, HelmRelease: name, Objects: append(slices.Clone(inv.Objects), stale...)}
	if err := a.writeInventory(ctx, pending); err != nil {
		return failed(old.hash(), err)
	}
	if err := a.ensureNamespaces(ctx, Deployment{DefaultNamespace: ns}, items); err != nil {
		return failed(old.hash(), err)
	}
	maxHistory := h.MaxHistory
	if maxHistory <= 0 {
		maxHistory = defaultMaxHistory
	}
	if err := store.create(ctx, rel, hist, maxHistory); err != nil {
		return failed(old.hash(), err)
	}

	nonReady, err := a.releaseObjects(ctx, log, d, store, rel, items, stale, isUpgrade, timeout)
	if err != nil {
		if isUpgrade {
			rel.SetStatus(release.StatusFailed, fmt.Sprintf("Upgrade %q failed: %s", name, err))
		} else {
			rel.SetStatus(release.StatusFailed, fmt.Sprintf("Release %q failed: %s", name, err))
		}
		if uerr := store.update(ctx, rel); uerr != nil {
			log.Error("recording failed helm release", "err", uerr)
		}
		if h.Atomic {
			err = a.undoRelease(ctx, log, d, store, rel, pending, old, err)
		}
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	if err := supersede(ctx, store, name, rel.Version); err != nil {
		return failed(old.hash(), err)
	}
	desc := "Install complete"
	if isUpgrade {
		desc = "Upgrade complete"
	}
	rel.SetStatus(release.StatusDeployed, desc+" ("+a.fieldManager+")")
	if err := store.update(ctx, rel); err != nil {
		return failed(old.hash(), err)
	}
	if old != nil && old.HelmRelease != "" && (old.HelmRelease != name || old.HelmNamespace != ns) {
		// The bundle renamed or moved its release; the objects of the old one were pruned
		// above, its history goes now.
		if err := a.forgetRelease(ctx, old.HelmNamespace, old.HelmRelease); err != nil {
			return failed(old.hash(), err)
		}
	}
	if err := a.writeInventory(ctx, inv); err != nil {
		return failed(old.hash(), err)
	}
	log.Info("applied helm release", "revision", rel.Version, "objects", len(items), "pruned", len(stale), "hash", inv.Hash)
	res := Result{AppliedHash: inv.Hash, NonReady: nonReady}
	res.summarize()
	return res, nil
}

// releaseObjects runs the pre hooks, applies the objects, prunes stale ones, waits when
// asked to, and runs the post hooks.
func (a *Applier) releaseObjects(ctx context.Context, log *slog.Logger, d Deployment, store releaseStore, rel *release.Release, items []item, stale []objectRef, isUpgrade bool, timeout time.Duration) ([]ObjectStatus, error) {
	h := d.Helm
	pre, post := release.HookPreInstall, release.HookPostInstall
	if isUpgrade {
		pre, post = release.HookPreUpgrade, release.HookPostUpgrade
	}
	if err := a.runHooks(ctx, log, store, rel, pre, timeout); err != nil {
		return nil, err
	}
	nonReady, err := a.applyItems(ctx, items, h.Force || d.ForceDrift)
	if err != nil {
		return nil, err
	}
	if err := a.deleteObjects(ctx, log, d.ID, stale); err != nil {
		return nil, err
	}
	if h.Atomic || h.WaitForJobs {
		if nonReady, err = a.waitReady(ctx, items, timeout, h.WaitForJobs); err != nil {
			return nil, err
		}
	}
	if err := a.runHooks(ctx, log, store, rel, post, timeout); err != nil {
		return nil, err
	}
	return nonReady, nil
}

// undoRelease is Atomic's answer to a failed operation: a failed install is uninstalled, a
// failed upgrade rolled back to the last revision that worked, in a new revision as `helm
// rollback` makes (without rollback hooks).
func (a *Applier) undoRelease(ctx context.Context, log *slog.Logger, d Deployment, store releaseStore, failedRel *release.Release, pending, old *inventory, cause error) error {
	name, ns := failedRel.Name, failedRel.Namespace
	hist, err := store.history(ctx, name)
	if err != nil {
		return fmt.Errorf("%w; and then: %w", cause, err)
	}
	var target *revision
	for i := len(hist) - 1; i >= 0; i-- {
		if st := hist[i].Status; hist[i].Version != failedRel.Version && (st == release.StatusDeployed || st == release.StatusSuperseded) {
			target = &hist[i]
			break
		}
	}
	if target == nil {
		log.Warn("helm install failed and atomic is set; uninstalling", "err", cause)
		if err := a.deleteObjects(ctx, log, d.ID, pending.Objects); err != nil {
			return fmt.Errorf("%w; and uninstalling it: %w", cause, err)
		}
		if err := a.forgetRelease(ctx, ns, name); err != nil {
			return fmt.Errorf("%w; and uninstalling it: %w", cause, err)
		}
		empty := *pending
		empty.Objects = nil
		if err := a.writeInventory(ctx, &empty); err != nil {
			return fmt.Errorf("%w; and uninstalling it: %w", cause, err)
		}
		return fmt.Errorf("release %s failed, and has been uninstalled due to atomic being set: %w", name, cause)
	}
	log.Warn("helm upgrade failed and atomic is set; rolling back", "to", target.Version, "err", cause)
	prev, err := store.get(ctx, name, target.Version)
	if err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	items, err := a.helmItems(ctx, d, prev.Manifest, name, ns)
	if err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	refs := refsOf(items)
	if _, err := a.applyItems(ctx, items, true); err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	if err := a.deleteObjects(ctx, log, d.ID, staleRefs(pending, refs)); err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	now := helmtime.Now()
	back := &release.Release{
		Name: name, Namespace: ns, Chart: prev.Chart, Config: prev.Config, Manifest: prev.Manifest, Hooks: prev.Hooks,
		Version: failedRel.Version + 1, Labels: prev.Labels,
		Info: &release.Info{FirstDeployed: prev.Info.FirstDeployed, LastDeployed: now, Status: release.StatusDeployed, Description: fmt.Sprintf("Rollback to %d", prev.Version), Notes: prev.Info.Notes},
	}
	maxHistory := d.Helm.MaxHistory
	if maxHistory <= 0 {
		maxHistory = defaultMaxHistory
	}
	if err := supersede(ctx, store, name, back.Version); err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	if err := store.setStatus(ctx, name, failedRel.Version, release.StatusSuperseded, failedRel.Info.Description); err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	if hist, err = store.history(ctx, name); err == nil {
		err = store.create(ctx, back, hist, maxHistory)
	}
	if err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	rolled := &inventory{ID: d.ID, Hash: old.hash(), KeepResources: d.KeepResources, HelmNamespace: ns, HelmRelease: name, Objects: refs}
	if err := a.writeInventory(ctx, rolled); err != nil {
		return fmt.Errorf("%w; and rolling back: %w", cause, err)
	}
	return fmt.Errorf("release %s failed, and has been rolled back to revision %d due to atomic being set: %w", name, prev.Version, cause)
}

// supersede marks every deployed revision but keep as superseded.
func supersede(ctx context.Context, store releaseStore, name string, keep int) error {
	hist, err := store.history(ctx, name)
	if err != nil {
		return err
	}
	for _, r := range hist {
		if r.Status != release.StatusDeployed || r.Version == keep {
			continue
		}
		rel, err := store.get(ctx, name, r.Version)
		if err != nil {
			return err
		}
		rel.Info.Status = release.StatusSuperseded
		if err := store.update(ctx, rel); err != nil {
			return err
		}
	}
	return nil
}

// releaseStatus checks the objects of d's release as its latest revision has them.
func (a *Applier) releaseStatus(ctx context.Context, d Deployment, inv *inventory) (Result, error) {
	name, ns := releaseName(d), releaseNamespace(d)
	store := a.releases(ns)
	hist, err := store.history(ctx, name)
	if err != nil {
		return Result{}, err
	}
	rev := last(hist)
	switch {
	case rev == nil:
		return Result{State: Modified, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: missing", ns, name)}, nil
	case rev.Status == release.StatusFailed:
		desc := ""
		if rel, err := store.get(ctx, name, rev.Version); err == nil {
			desc = ": " + shorten(rel.Info.Description, 512)
		}
		return Result{State: ErrApplied, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: %s%s", ns, name, rev.Status, desc)}, nil
	case rev.Status != release.StatusDeployed:
		return Result{State: NotReady, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: %s", ns, name, rev.Status)}, nil
	case rev.Digest != helmDigest(&d):
		return Result{State: OutOfSync, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: revision %d was not made by this agent from the desired chart and values", ns, name, rev.Version)}, nil
	}
	items, err := a.releaseItems(ctx, d, store, rev)
	if err != nil {
		return Result{}, err
	}
	return a.status(ctx, d, items, inv.Hash)
}

// uninstallRelease uninstalls a release as `helm uninstall` does: pre-delete hooks, its
// objects (those of its manifest and of the inventory, refs), post-delete hooks, and then
// its whole history. A release with no history has only its objects deleted.
func (a *Applier) uninstallRelease(ctx context.Context, log *slog.Logger, id, ns, name string, refs []objectRef) error {
	store := a.releases(ns)
	hist, err := store.history(ctx, name)
	if err != nil {
		return err
	}
	timeout := defaultHelmTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	var rel *release.Release
	if l := last(hist); l != nil {
		if rel, err = store.get(ctx, name, l.Version); err != nil {
			log.Warn("uninstalling a helm release whose latest revision cannot be read", "err", err)
			rel = nil
		}
	}
	if rel != nil {
		rel.Info.Status = release.StatusUninstalling
		rel.Info.Deleted = helmtime.Now()
		rel.Info.Description = "Deletion in progress (or silently failed)"
		if err := a.runHooks(ctx, log, store, rel, release.HookPreDelete, timeout); err != nil {
			return fmt.Errorf("uninstalling helm release %s/%s: %w", ns, name, err)
		}
		if err := store.update(ctx, rel); err != nil {
			log.Warn("recording uninstalling helm release", "err", err)
		}
		refs = slices.Concat(refs, a.manifestRefs(rel.Manifest, ns))
	}
	if err := a.deleteObjects(ctx, log, id, dedupeRefs(refs)); err != nil {
		return fmt.Errorf("uninstalling helm release %s/%s: %w", ns, name, err)
	}
	if rel != nil {
		if err := a.runHooks(ctx, log, store, rel, release.HookPostDelete, timeout); err != nil {
			return fmt.Errorf("uninstalling helm release %s/%s: %w", ns, name, err)
		}
	}
	if err := a.forgetRelease(ctx, ns, name); err != nil {
		return err
	}
	if len(hist) > 0 {
		log.Info("uninstalled helm release", "release", ns+"/"+name)
	}
	return nil
}

// forgetRelease deletes a release's history, leaving its objects alone.
func (a *Applier) forgetRelease(ctx context.Context, ns, name string) error {
	store := a.releases(ns)
	hist, err := store.history(ctx, name)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range hist {
		errs = append(errs, store.delete(ctx, name, r.Version))
	}
	store.cache.forget(ns, name)
	return errors.Join(errs...)
}

// releaseItems are the objects of revision rev of d's release, ready to apply or check.
func (a *Applier) releaseItems(ctx context.Context, d Deployment, store releaseStore, rev *revision) ([]item, error) {
	name, ns := releaseName(d), releaseNamespace(d)
	manifest, err := store.manifest(ctx, name, rev)
	if err != nil {
		return nil, err
	}
	items, err := a.helmItems(ctx, d, manifest, name, ns)
	if err != nil {
		return nil, fmt.Errorf("helm release %s/%s revision %d: %w", ns, name, rev.Version, err)
	}
	return items, nil
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

// checkOwnership refuses, as Helm does, to take over an existing object that belongs to no
// release of this name, unless TakeOwnership is set. Objects of the previous version of the
// deployment, and objects the deployment's label marks as its own (applied as raw manifests
// before the bundle became a chart), are its own.
func (a *Applier) checkOwnership(ctx context.Context, d Deployment, items []item, old *inventory, name, ns string) error {
	if d.Helm.TakeOwnership {
		return nil
	}
	label := LabelValue(d.ID)
	for _, it := range items {
		if old != nil && slices.ContainsFunc(old.Objects, it.ref.sameObject) {
			continue
		}
		m, err := a.mapping(it.obj.GroupVersionKind())
		if err != nil {
			if meta.IsNoMatchError(err) {
				continue // a kind not served yet has no objects yet
			}
			return err
		}
		live, err := a.resource(m, it.ref.Namespace).Get(ctx, it.ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", it.ref, err)
		}
		an := live.GetAnnotations()
		if live.GetLabels()[LabelBundleID] == label ||
			live.GetLabels()[labelManagedBy] == "Helm" && an[annotationReleaseName] == name && an[annotationReleaseNamespace] == ns {
			continue
		}
		return fmt.Errorf("%s exists and is not part of this release (no %s=Helm label and %s=%s, %s=%s annotations); set helm.takeOwnership to adopt it",
			it.ref, labelManagedBy, annotationReleaseName, name, annotationReleaseNamespace, ns)
	}
	return nil
}

// installCRDs creates the CRDs of the chart's crds/ directories (and its subcharts') that
// do not exist yet, before rendering, so that templates and capabilities see them. Like
// Helm it never updates or deletes them: deleting a CRD deletes every object of its kind.
func (a *Applier) installCRDs(ctx context.Context, log *slog.Logger, ch *chart.Chart) error {
	var items []item
	for _, crd := range ch.CRDObjects() {
		objs, err := manifestObjects(string(crd.File.Data))
		if err != nil {
			return fmt.Errorf("chart CRDs %s: %w", crd.Filename, err)
		}
		for _, o := range objs {
			if o.GroupVersionKind().GroupKind() != crdGroupKind {
				return fmt.Errorf("chart CRDs %s: %s %s is not a CustomResourceDefinition", crd.Filename, o.GetKind(), o.GetName())
			}
			items = append(items, item{obj: o, ref: refOf(o), rank: rankCRD})
		}
	}
	if len(items) == 0 {
		return nil
	}
	m, err := a.mapping(items[0].obj.GroupVersionKind())
	if err != nil {
		return err
	}
	created := false
	for _, it := range items {
		_, err := a.resource(m, "").Create(ctx, it.obj, metav1.CreateOptions{FieldManager: a.fieldManager})
		if apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("creating %s: %w", it.ref, err)
		}
		log.Info("created CRD of the chart", "crd", it.ref.Name)
		created = true
	}
	if !created {
		return nil
	}
	return a.waitCRDs(ctx, items)
}

// renderRelease renders revision of d's chart into a release pending install or upgrade, as
// `helm install` and `helm upgrade` do: real capabilities of the cluster, the lookup
// function, NOTES.txt, hooks split out, then d's post-renderer and the deployment's stamps.
func (a *Applier) renderRelease(d Deployment, name, ns string, revision int, isUpgrade bool) (*release.Release, error) {
	h := d.Helm
	ch := h.Chart
	if err := chartutil.ValidateReleaseName(name); err != nil {
		return nil, fmt.Errorf("release name %q: %w", name, err)
	}
	if ch.Metadata == nil {
		return nil, errors.New("chart has no metadata")
	}
	if ch.Metadata.Type != "" && ch.Metadata.Type != "application" {
		return nil, fmt.Errorf("%s charts are not installable", ch.Metadata.Type)
	}
	caps, err := a.capabilities()
	if err != nil {
		return nil, err
	}
	if kv := ch.Metadata.KubeVersion; kv != "" && !chartutil.IsCompatibleRange(kv, caps.KubeVersion.String()) {
		return nil, fmt.Errorf("chart requires kubeVersion %s, incompatible with Kubernetes %s", kv, caps.KubeVersion.String())
	}
	vals, _ := copyValue(h.Values).(map[string]any)
	if vals == nil {
		vals = map[string]any{}
	}
	if err := chartutil.ProcessDependenciesWithMerge(ch, vals); err != nil {
		return nil, err
	}
	opts := chartutil.ReleaseOptions{Name: name, Namespace: ns, Revision: revision, IsInstall: !isUpgrade, IsUpgrade: isUpgrade}
	values, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals, opts, caps, h.SkipSchemaValidation)
	if err != nil {
		return nil, err
	}
	e := engine.New(a.restConfig)
	e.EnableDNS = !h.DisableDNS
	files, err := e.Render(ch, values)
	if err != nil {
		return nil, err
	}
	notes := files[path.Join(ch.Name(), "templates", "NOTES.txt")]
	for k := range files {
		if strings.HasSuffix(k, "NOTES.txt") {
			delete(files, k)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	out := &b
	if h.PostRenderer != nil {
		if out, err = h.PostRenderer.Run(out); err != nil {
			return nil, fmt.Errorf("post-rendering: %w", err)
		}
	}
	if out, err = (&labeler{label: LabelValue(d.ID), annotation: d.ID}).Run(out); err != nil {
		return nil, err
	}
	now := helmtime.Now()
	status, desc := release.StatusPendingInstall, "Initial install underway"
	if isUpgrade {
		status, desc = release.StatusPendingUpgrade, "Preparing upgrade"
	}
	return &release.Release{
		Name:      name,
		Namespace: ns,
		Chart:     ch,
		Config:    vals,
		Info:      &release.Info{FirstDeployed: now, LastDeployed: now, Status: status, Description: desc, Notes: notes},
		Manifest:  out.String(),
		Hooks:     hooks,
		Version:   revision,
	}, nil
}

// capabilities describes the cluster to templates as Helm does: its version, and every
// group/version and group/version/kind it serves.
func (a *Applier) capabilities() (*chartutil.Capabilities, error) {
	// Helm rediscovers before every install: a CRD may have been added since.
	a.discovery.Invalidate()
	v, err := a.discovery.ServerVersion()
	if err != nil {
		return nil, fmt.Errorf("reading the server's version: %w", err)
	}
	groups, resources, err := a.discovery.ServerGroupsAndResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return nil, fmt.Errorf("discovering the server's APIs: %w", err)
	}
	set := map[string]bool{}
	for _, g := range groups {
		for _, gv := range g.Versions {
			set[gv.GroupVersion] = true
		}
	}
	for _, r := range resources {
		for _, res := range r.APIResources {
			set[path.Join(r.GroupVersion, res.Kind)] = true
		}
	}
	versions := chartutil.DefaultVersionSet
	if len(set) > 0 {
		versions = make(chartutil.VersionSet, 0, len(set))
		for k := range set {
			versions = append(versions, k)
		}
		slices.Sort(versions)
	}
	return &chartutil.Capabilities{
		APIVersions: versions,
		KubeVersion: chartutil.KubeVersion{Version: v.GitVersion, Major: v.Major, Minor: v.Minor},
		HelmVersion: chartutil.DefaultCapabilities.HelmVersion,
	}, nil
}

// waitReady waits until every object is ready (Jobs complete too when jobs is set), as
// `helm --wait` does, and returns what is still not ready (only Jobs, when not waited for).
func (a *Applier) waitReady(ctx context.Context, items []item, timeout time.Duration, jobs bool) ([]ObjectStatus, error) {
	var blocking *ObjectStatus
	var nonReady []ObjectStatus
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		blocking, nonReady = nil, nil
		for _, it := range items {
			m, err := a.mapping(it.obj.GroupVersionKind())
			if err != nil {
				return false, err
			}
			live, err := a.resource(m, it.ref.Namespace).Get(ctx, it.ref.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				blocking = &ObjectStatus{APIVersion: it.ref.APIVersion, Kind: it.ref.Kind, Namespace: it.ref.Namespace, Name: it.ref.Name, Missing: true, Message: "missing"}
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("reading %s: %w", it.ref, err)
			}
			st := readiness(live)
			if st == nil {
				continue
			}
			if !jobs && it.obj.GroupVersionKind().GroupKind() == jobKind {
				nonReady = append(nonReady, *st)
				continue
			}
			blocking = st
			return false, nil
		}
		return true, nil
	})
	if err != nil && blocking != nil {
		return nil, fmt.Errorf("waiting for readiness: %s: %w", blocking, err)
	}
	if err != nil {
		return nil, fmt.Errorf("waiting for readiness: %w", err)
	}
	return nonReady, nil
}

// sameRelease reports whether a new rendering makes the same release as cur.
func sameRelease(cur, next *release.Release) bool {
	if cur.Manifest != next.Manifest || len(cur.Hooks) != len(next.Hooks) || cur.Chart == nil || cur.Chart.Metadata == nil {
		return false
	}
	cm, nm := cur.Chart.Metadata, next.Chart.Metadata
	if cm.Name != nm.Name || cm.Version != nm.Version || cm.AppVersion != nm.AppVersion {
		return false
	}
	for i, h := range cur.Hooks {
		n := next.Hooks[i]
		if h.Path != n.Path || h.Manifest != n.Manifest || h.Weight != n.Weight || !slices.Equal(h.Events, n.Events) || !slices.Equal(h.DeletePolicies, n.DeletePolicies) {
			return false
		}
	}
	cv, err1 := json.Marshal(cur.Config)
	nv, err2 := json.Marshal(next.Config)
	return err1 == nil && err2 == nil && bytes.Equal(normalizeJSON(cv), normalizeJSON(nv))
}

// normalizeJSON re-encodes JSON so that numbers decoded as float64 and integers compare equal.
func normalizeJSON(b []byte) []byte {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return b
	}
	out, _ := json.Marshal(v)
	return out
}

// manifestRefs resolves the objects of a manifest for deleting them; kinds no longer served
// are skipped, as their objects are gone with them.
func (a *Applier) manifestRefs(manifest, ns string) []objectRef {
	objs, err := manifestObjects(manifest)
	if err != nil {
		a.log.Warn("reading a helm release manifest", "err", err)
	}
	var refs []objectRef
	for _, o := range objs {
		m, err := a.mapping(o.GroupVersionKind())
		if err != nil {
			continue
		}
		r := refOf(o)
		switch {
		case m.Scope.Name() != meta.RESTScopeNameNamespace:
			r.Namespace = ""
		case r.Namespace == "":
			r.Namespace = ns
		}
		refs = append(refs, r)
	}
	return refs
}

func refsOf(items []item) []objectRef {
	refs := make([]objectRef, len(items))
	for i, it := range items {
		refs[i] = it.ref
	}
	return refs
}

// staleRefs are the objects of old that are not in refs.
func staleRefs(old *inventory, refs []objectRef) []objectRef {
	if old == nil {
		return nil
	}
	var stale []objectRef
	for _, r := range old.Objects {
		if !slices.ContainsFunc(refs, r.sameObject) {
			stale = append(stale, r)
		}
	}
	return stale
}

func dedupeRefs(refs []objectRef) []objectRef {
	var out []objectRef
	for _, r := range refs {
		if !slices.ContainsFunc(out, r.sameObject) {
			out = append(out, r)
		}
	}
	return out
}

func helmTimeout(h *HelmRelease) time.Duration {
	if h.TimeoutSeconds > 0 {
		return time.Duration(h.TimeoutSeconds) * time.Second
	}
	return defaultHelmTimeout
}

// copyValue deep-copies Helm values, so that rendering never changes the caller's.
func copyValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = copyValue(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = copyValue(x)
		}
		return out
	}
	return v
}
