package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"helm.sh/helm/v4/pkg/action"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/kube"
	rcommon "helm.sh/helm/v4/pkg/release/common"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
)

// Helm's marks of ownership on the objects of a release: Helm adds them to every object it
// applies (not to the manifest), so the objects checked for drift carry them too.
const (
	labelManagedBy             = "app.kubernetes.io/managed-by"
	annotationReleaseName      = "meta.helm.sh/release-name"
	annotationReleaseNamespace = "meta.helm.sh/release-namespace"
)

const (
	// defaultHelmTimeout bounds hooks and waits when the bundle sets no timeout.
	defaultHelmTimeout = 300 * time.Second
	// defaultMaxHistory is how many revisions are kept when the bundle does not say, as
	// the helm CLI's default, so that release Secrets do not pile up on small clusters.
	defaultMaxHistory = 10
)

// applyRelease installs or upgrades d's Helm release with Helm's SDK (server-side apply, the
// agent's field manager), then records its objects in the inventory so that drift
// detection, readiness and pruning treat them as any other deployment's.
//
// A release whose latest revision is deployed and was made by the agent from the same chart,
// values and render key is not upgraded again: Apply then only checks it and corrects drift
// in place, without a new revision.
func (a *Applier) applyRelease(ctx context.Context, log *slog.Logger, d Deployment, old *inventory) (Result, error) {
	name, ns := releaseName(d), releaseNamespace(d)
	log = log.With("release", ns+"/"+name)
	inv := &inventory{ID: d.ID, Hash: d.hash(), KeepResources: d.KeepResources, HelmNamespace: ns, HelmRelease: name}
	cfg, err := a.helmConfig(ctx, ns)
	if err != nil {
		return failed(old.hash(), err)
	}
	lastRel, err := lastRelease(cfg, name)
	if err != nil {
		return failed(old.hash(), err)
	}
	digest := helmDigest(&d)
	if upToDate(lastRel, digest) {
		return a.keepRelease(ctx, log, d, lastRel, inv, old)
	}
	if lastRel != nil && (lastRel.Info.Status.IsPending() || lastRel.Info.Status == rcommon.StatusUninstalling) {
		// Only this agent changes its releases, one operation at a time, so a pending
		// revision was left by an agent that stopped mid-operation. Helm would refuse
		// every later upgrade; mark it failed and carry on from it.
		log.Warn("marking interrupted helm operation as failed", "revision", lastRel.Version, "status", lastRel.Info.Status)
		lastRel.SetStatus(rcommon.StatusFailed, "interrupted: the agent stopped during the operation")
		if err := cfg.Releases.Update(lastRel); err != nil {
			return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
		}
	}
	ch := d.Helm.Chart
	if err := a.ensureNamespace(ctx, ns); err != nil {
		return failed(old.hash(), err)
	}
	// Record the release before the SDK creates anything, under the old hash: an agent
	// that dies half-way then still finds it, and uninstalls it on Remove.
	pending := &inventory{ID: d.ID, Hash: old.hash(), KeepResources: d.KeepResources, HelmNamespace: ns, HelmRelease: name}
	if old != nil {
		pending.Objects = old.Objects
	}
	if err := a.writeInventory(ctx, pending); err != nil {
		return failed(old.hash(), err)
	}
	takeOwnership, err := a.ownsExisting(ctx, d, ch, old, lastRel != nil)
	if err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}

	h := d.Helm
	timeout := helmTimeout(h)
	vals, _ := copyValue(h.Values).(map[string]any)
	if vals == nil {
		vals = map[string]any{}
	}
	post := &postRenderer{next: h.PostRenderer, label: LabelValue(d.ID), annotation: d.ID}
	// Helm waits for readiness only when asked to; hooks are always waited for.
	wait := kube.HookOnlyStrategy
	if h.Atomic || h.WaitForJobs {
		wait = kube.StatusWatcherStrategy
	}
	var res any
	isUpgrade := lastRel != nil
	if isUpgrade && lastRel.Info.Status == rcommon.StatusDeployed {
		// Inputs other than the chart and values (the render key, options) may make the
		// same release; then the deployed revision is kept, with the new digest, rather
		// than made again in a revision that changes nothing. Helm renders it to tell.
		same, err := a.rendersSame(ctx, d, ch, vals, lastRel, takeOwnership, post)
		if err != nil {
			return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
		}
		if same {
			lastRel.Labels = mergeLabels(lastRel.Labels, map[string]string{labelHelmDigest: digest, labelHelmRevision: strconv.Itoa(lastRel.Version)})
			if err := cfg.Releases.Update(lastRel); err != nil {
				return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
			}
			log.Info("helm release unchanged by the new inputs; keeping its revision", "revision", lastRel.Version)
			return a.keepRelease(ctx, log, d, lastRel, inv, old)
		}
	}
	if !isUpgrade {
		in := action.NewInstall(cfg)
		in.ReleaseName, in.Namespace = name, ns
		in.ServerSideApply = true
		// The agent owns the fields of its objects, as for raw bundles: an edit by someone
		// else does not block the next install or upgrade.
		in.ForceConflicts = true
		in.TakeOwnership = takeOwnership
		in.RollbackOnFailure = h.Atomic
		in.WaitStrategy, in.WaitForJobs, in.Timeout = wait, h.WaitForJobs, timeout
		in.EnableDNS, in.SkipSchemaValidation = !h.DisableDNS, h.SkipSchemaValidation
		in.PostRenderer = post
		in.Labels = map[string]string{labelHelmDigest: digest, labelHelmRevision: "1"}
		res, err = in.RunWithContext(ctx, ch, vals)
	} else {
		up := action.NewUpgrade(cfg)
		up.Namespace = ns
		up.ServerSideApply = "true"
		up.ForceConflicts = true
		// Helm's --force: replace objects the server refuses to change in place.
		up.ForceReplace = h.Force || d.ForceDrift
		up.TakeOwnership = takeOwnership
		up.RollbackOnFailure = h.Atomic
		up.WaitStrategy, up.WaitForJobs, up.Timeout = wait, h.WaitForJobs, timeout
		up.EnableDNS, up.SkipSchemaValidation = !h.DisableDNS, h.SkipSchemaValidation
		// The bundle's values are the whole of the release's values: without this an
		// upgrade with no values would reuse the previous revision's.
		up.ResetValues = true
		up.MaxHistory = h.MaxHistory
		if up.MaxHistory <= 0 {
			up.MaxHistory = defaultMaxHistory
		}
		up.PostRenderer = post
		up.Labels = map[string]string{labelHelmDigest: digest, labelHelmRevision: strconv.Itoa(lastRel.Version + 1)}
		res, err = up.RunWithContext(ctx, name, ch, vals)
	}
	if err != nil {
		a.recordAfterFailure(ctx, log, cfg, d, pending)
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	rel, err := toV1(res)
	if err != nil {
		return failed(old.hash(), err)
	}
	items, err := a.helmItems(ctx, d, rel.Manifest, name, ns)
	if err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s: %w", ns, name, err))
	}
	inv.Objects = refsOf(items)
	// What an earlier version of the deployment applied outside this release (raw
	// manifests, or another release name) goes now; Helm pruned its own.
	if err := a.deleteObjects(ctx, log, d.ID, staleRefs(old, inv.Objects)); err != nil {
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
	log.Info("applied helm release", "revision", rel.Version, "objects", len(items), "hash", inv.Hash)
	nonReady, err := a.nonReady(ctx, items)
	if err != nil {
		return failed(inv.Hash, err)
	}
	r := Result{AppliedHash: inv.Hash, NonReady: nonReady}
	r.summarize()
	return r, nil
}

// rendersSame reports whether upgrading to d would make the same release as cur: Helm's
// server-side dry run of the upgrade renders it with the cluster's capabilities and
// lookups, and stores and applies nothing.
func (a *Applier) rendersSame(ctx context.Context, d Deployment, ch *chartv2.Chart, vals map[string]any, cur *release.Release, takeOwnership bool, post *postRenderer) (bool, error) {
	cfg, err := a.helmConfig(ctx, cur.Namespace)
	if err != nil {
		return false, err
	}
	h := d.Helm
	up := action.NewUpgrade(cfg)
	up.Namespace = cur.Namespace
	up.DryRunStrategy = action.DryRunServer
	up.ServerSideApply = "true"
	up.TakeOwnership = takeOwnership
	up.EnableDNS, up.SkipSchemaValidation = !h.DisableDNS, h.SkipSchemaValidation
	up.ResetValues = true
	up.PostRenderer = post
	res, err := up.RunWithContext(ctx, cur.Name, ch, copyValue(vals).(map[string]any))
	if err != nil {
		return false, fmt.Errorf("rendering the upgrade: %w", err)
	}
	next, err := toV1(res)
	if err != nil {
		return false, err
	}
	return sameRelease(cur, next), nil
}

// sameRelease reports whether a new rendering makes the same release as cur.
func sameRelease(cur, next *release.Release) bool {
	if cur.Manifest != next.Manifest || len(cur.Hooks) != len(next.Hooks) || cur.Chart == nil || cur.Chart.Metadata == nil || next.Chart == nil || next.Chart.Metadata == nil {
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

func mergeLabels(base, extra map[string]string) map[string]string {
	out := make(map[string]string, len(base)+len(extra))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// recordAfterFailure points the inventory at what a failed operation left: the objects of
// the release's latest revision (a rollback's, or the failed one's), besides what was
// recorded before, so that Remove and the next Apply find all of them.
func (a *Applier) recordAfterFailure(ctx context.Context, log *slog.Logger, cfg *action.Configuration, d Deployment, pending *inventory) {
	rel, err := lastRelease(cfg, pending.HelmRelease)
	if err != nil || rel == nil {
		return
	}
	items, err := a.helmItems(ctx, d, rel.Manifest, pending.HelmRelease, pending.HelmNamespace)
	if err != nil {
		return
	}
	inv := *pending
	inv.Objects = dedupeRefs(slices.Concat(pending.Objects, refsOf(items)))
	if err := a.writeInventory(ctx, &inv); err != nil {
		log.Warn("recording the objects of a failed helm release", "err", err)
	}
}

// keepRelease checks an up-to-date release, finishes what an interrupted run left (the
// inventory, objects of an older version), and corrects drift when d asks for it.
func (a *Applier) keepRelease(ctx context.Context, log *slog.Logger, d Deployment, rel *release.Release, inv, old *inventory) (Result, error) {
	items, err := a.helmItems(ctx, d, rel.Manifest, inv.HelmRelease, inv.HelmNamespace)
	if err != nil {
		return failed(old.hash(), fmt.Errorf("helm release %s/%s revision %d: %w", inv.HelmNamespace, inv.HelmRelease, rel.Version, err))
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

// releaseStatus checks the objects of d's release as its latest revision has them.
func (a *Applier) releaseStatus(ctx context.Context, d Deployment, inv *inventory) (Result, error) {
	name, ns := releaseName(d), releaseNamespace(d)
	cfg, err := a.helmConfig(ctx, ns)
	if err != nil {
		return Result{}, err
	}
	rel, err := lastRelease(cfg, name)
	if err != nil {
		return Result{}, err
	}
	switch {
	case rel == nil:
		return Result{State: Modified, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: missing", ns, name)}, nil
	case rel.Info.Status == rcommon.StatusFailed:
		return Result{State: ErrApplied, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: %s: %s", ns, name, rel.Info.Status, shorten(rel.Info.Description, 512))}, nil
	case rel.Info.Status != rcommon.StatusDeployed:
		return Result{State: NotReady, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: %s", ns, name, rel.Info.Status)}, nil
	case !upToDate(rel, helmDigest(&d)):
		return Result{State: OutOfSync, AppliedHash: inv.Hash, Message: fmt.Sprintf("helm release %s/%s: revision %d was not made by this agent from the desired chart and values", ns, name, rel.Version)}, nil
	}
	items, err := a.helmItems(ctx, d, rel.Manifest, name, ns)
	if err != nil {
		return Result{}, fmt.Errorf("helm release %s/%s revision %d: %w", ns, name, rel.Version, err)
	}
	return a.status(ctx, d, items, inv.Hash)
}

// uninstallRelease uninstalls a release with Helm's SDK, as `helm uninstall` does (hooks,
// objects, history), then deletes what the inventory holds beyond the release's manifest.
func (a *Applier) uninstallRelease(ctx context.Context, log *slog.Logger, id, ns, name string, refs []objectRef) error {
	cfg, err := a.helmConfig(ctx, ns)
	if err != nil {
		return err
	}
	un := action.NewUninstall(cfg)
	un.IgnoreNotFound = true
	un.WaitStrategy = kube.HookOnlyStrategy
	un.Timeout = defaultHelmTimeout
	if dl, ok := ctx.Deadline(); ok {
		un.Timeout = time.Until(dl)
	}
	if _, err := un.Run(name); err != nil {
		return fmt.Errorf("uninstalling helm release %s/%s: %w", ns, name, err)
	}
	log.Info("uninstalled helm release", "release", ns+"/"+name)
	if err := a.deleteObjects(ctx, log, id, refs); err != nil {
		return fmt.Errorf("uninstalling helm release %s/%s: %w", ns, name, err)
	}
	return nil
}

// forgetRelease deletes a release's history, leaving its objects alone.
func (a *Applier) forgetRelease(ctx context.Context, ns, name string) error {
	cfg, err := a.helmConfig(ctx, ns)
	if err != nil {
		return err
	}
	hist, err := cfg.Releases.History(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading helm release %s/%s: %w", ns, name, err)
	}
	var errs []error
	for _, r := range hist {
		rel, err := toV1(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := cfg.Releases.Delete(name, rel.Version); err != nil && !errors.Is(err, driver.ErrReleaseNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ownsExisting decides whether an install or upgrade may adopt objects that exist without
// Helm's marks of this release: always with TakeOwnership, as Helm does; and when every
// such object is the deployment's own (its label, or its previous inventory: a bundle
// that turned from manifests into a chart, or renamed its release). Anything else is
// refused by Helm itself.
func (a *Applier) ownsExisting(ctx context.Context, d Deployment, ch *chartv2.Chart, old *inventory, isUpgrade bool) (bool, error) {
	if d.Helm.TakeOwnership {
		return true, nil
	}
	if old == nil || old.HelmRelease == releaseName(d) && old.HelmNamespace == releaseNamespace(d) {
		return false, nil // nothing applied before but this release's own
	}
	manifest, err := a.dryRunManifest(ctx, d, ch, isUpgrade)
	if err != nil {
		return false, err
	}
	name, ns := releaseName(d), releaseNamespace(d)
	items, err := a.helmItems(ctx, d, manifest, name, ns)
	if err != nil {
		return false, err
	}
	return a.checkOwnership(ctx, d, items, old, name, ns)
}

// lastRelease is the latest revision of a release, nil when it has none.
func lastRelease(cfg *action.Configuration, name string) (*release.Release, error) {
	r, err := cfg.Releases.Last(name)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading helm release %s: %w", name, err)
	}
	return toV1(r)
}

// upToDate reports whether rel is deployed and was made by the agent from inputs of the
// given digest: `helm upgrade` copies a release's labels into its new revisions, so the
// digest counts only on the revision it was written for.
func upToDate(rel *release.Release, digest string) bool {
	return rel != nil && rel.Info != nil && rel.Info.Status == rcommon.StatusDeployed &&
		rel.Labels[labelHelmDigest] == digest && rel.Labels[labelHelmRevision] == strconv.Itoa(rel.Version)
}

// toV1 is the release the SDK returned, in the only format Helm v4 has.
func toV1(r any) (*release.Release, error) {
	switch r := r.(type) {
	case *release.Release:
		return r, nil
	case release.Release:
		return &r, nil
	}
	return nil, fmt.Errorf("unsupported helm release type %T", r)
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
