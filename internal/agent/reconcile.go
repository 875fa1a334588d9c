package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/agent/apply"
	"flotilla.dev/internal/bundle"
)

// deploymentState is what the reconciler keeps of one deployment between passes.
type deploymentState struct {
	// key identifies what dep was rendered from: the spec's ID and the cluster's name,
	// labels and annotations, which templating may use.
	key string
	dep *apply.Deployment
	// err says why dep could not be rendered; it is rendered again on the next pass.
	err error
	// waiting is set when err is only that the content has not arrived yet.
	waiting bool
	// A failed apply is retried with backoff (from StatusInterval up to MaxBackoff), not on
	// every pass: a failing Helm install leaves a release revision behind each time.
	failures int
	retryAt  time.Time
}

// maxMessage bounds a status message: it travels to the server for every cluster.
const maxMessage = 1024

// settle is how long the reconciler waits after a drift notification for more to come.
const settle = 200 * time.Millisecond

// reconcileLoop keeps the cluster at the desired state: a full pass when the state changes
// and every StatusInterval, and a pass over just the deployments the watch reports changed.
func (a *agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.StatusInterval)
	defer t.Stop()
	var doneGen uint64
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-a.wakeReconcile:
			if !sleep(ctx, settle) {
				return
			}
		case <-t.C:
			full = true
		}
		a.mu.Lock()
		ds, gen, changed := a.desired, a.desiredGen, a.drifted
		a.drifted = map[string]bool{}
		a.mu.Unlock()
		if ds == nil {
			continue
		}
		if full || gen != doneGen {
			a.reconcileAll(ctx, ds)
			doneGen = gen
			continue
		}
		for _, spec := range ds.Deployments {
			if changed[spec.Bundle] {
				a.reconcileOne(ctx, ds, spec)
			}
		}
	}
}

// reconcileAll removes deployments that are no longer desired and reconciles the others.
func (a *agent) reconcileAll(ctx context.Context, ds *api.DesiredState) {
	// Access first: a bundle may need a project namespace, and people their access.
	a.reconcileAccess(ctx, ds)
	want := map[string]bool{}
	for _, spec := range ds.Deployments {
		want[spec.Bundle] = true
	}
	// The bundles the agent reported on are those it applied; the queue remembers them
	// across restarts, so a bundle dropped while the agent was down is removed too. The
	// cluster's inventories name them as well, even when the state directory was lost.
	applied := map[string]bool{}
	for id := range a.queue.known() {
		applied[id] = true
	}
	if ids, err := a.applier.Deployments(ctx); err != nil {
		a.log.Warn("listing the deployments applied to the cluster", "err", err)
	} else {
		for _, id := range ids {
			applied[id] = true
		}
	}
	for _, id := range slices.Sorted(maps.Keys(applied)) {
		if want[id] || ctx.Err() != nil {
			continue
		}
		if err := a.applier.Remove(ctx, id); err != nil {
			a.log.Error("removing deployment", "bundle", id, "err", err)
			continue
		}
		delete(a.deployments, id)
		a.log.Info("removed deployment", "bundle", id)
		if err := a.queue.remove(id); err != nil {
			a.log.Error("queueing status", "err", err)
		}
		kick(a.wakeReport)
	}
	for _, spec := range ds.Deployments {
		if ctx.Err() != nil {
			return
		}
		a.reconcileOne(ctx, ds, spec)
	}
}

// reconcileOne applies one deployment (or, paused, only checks it) and queues its status
// when it changed.
func (a *agent) reconcileOne(ctx context.Context, ds *api.DesiredState, spec api.DeploymentSpec) {
	log := a.log.With("bundle", spec.Bundle)
	key := spec.ID + "@" + clusterKey(ds)
	d := a.deployments[spec.Bundle]
	if d == nil || d.key != key || d.err != nil {
		d = &deploymentState{key: key}
		d.dep, d.waiting, d.err = a.render(ctx, ds, spec, key)
		a.deployments[spec.Bundle] = d
	}
	st := api.DeploymentStatus{Bundle: spec.Bundle, ID: spec.ID}
	switch {
	case d.err != nil && d.waiting:
		st.State, st.Message = api.StateWaitApplied, d.err.Error()
	case d.err != nil:
		st.State, st.Message = api.StateErrApplied, d.err.Error()
	default:
		var (
			res apply.Result
			err error
		)
		switch {
		case spec.Paused:
			res, err = a.applier.Status(ctx, *d.dep)
		case d.failures > 0 && a.now().Before(d.retryAt):
			return // the failure stays reported until the retry
		default:
			res, err = a.applier.Apply(ctx, *d.dep)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil && spec.Paused {
			log.Warn("checking paused deployment", "err", err)
			return
		}
		if err != nil && !spec.Paused {
			d.failures++
			wait := a.cfg.StatusInterval << min(d.failures-1, 10)
			d.retryAt = a.now().Add(min(wait, max(a.cfg.MaxBackoff, a.cfg.StatusInterval)))
		} else {
			d.failures = 0
		}
		st = statusOf(spec, res, err)
	}
	st.Message = shorten(st.Message, maxMessage)
	news, err := a.queue.put(st)
	if err != nil {
		log.Error("queueing status", "err", err)
	}
	if news {
		log.Info("deployment state", "state", st.State, "message", st.Message, "id", st.ID)
		kick(a.wakeReport)
	}
}

// statusOf turns an apply result into the status reported for spec. The ID is the one of
// the version applied, taken back from the applied hash (see clusterKey), except when
// applying spec failed or has not happened: that news is about spec.
func statusOf(spec api.DeploymentSpec, res apply.Result, err error) api.DeploymentStatus {
	st := api.DeploymentStatus{Bundle: spec.Bundle, ID: spec.ID, State: string(res.State), Message: res.Message}
	if err != nil {
		st.State, st.Message = api.StateErrApplied, err.Error()
		return st
	}
	if res.State != apply.WaitApplied && res.AppliedHash != "" {
		st.ID, _, _ = strings.Cut(res.AppliedHash, "@")
	}
	if st.State == "" {
		st.State = api.StateErrApplied
	}
	return st
}

// clusterKey digests what templating may read of the cluster. It is part of every applied
// hash, so that a label change re-renders and re-applies templated bundles.
func clusterKey(ds *api.DesiredState) string {
	b, _ := json.Marshal([]any{ds.ClusterName, ds.ClusterNamespace, ds.ClusterLabels, ds.ClusterAnnotations})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// errWaitingContent says a deployment's content has not been fetched yet.
type errWaitingContent struct{ digest string }

func (e errWaitingContent) Error() string { return "waiting for content " + e.digest }

// render turns a deployment's content and options into what the apply engine applies.
// hash becomes the deployment's applied hash.
func (a *agent) render(ctx context.Context, ds *api.DesiredState, spec api.DeploymentSpec, hash string) (*apply.Deployment, bool, error) {
	files := bundle.Files{}
	if spec.ContentHash != "" {
		data, err := a.dir.content(spec.ContentHash)
		if err != nil {
			if msg := a.contentErr(spec.ContentHash); msg != "" {
				return nil, false, fmt.Errorf("content %s: %s", spec.ContentHash, msg)
			}
			return nil, true, errWaitingContent{spec.ContentHash}
		}
		if files, err = bundle.Unpack(data, bundle.DefaultLimits()); err != nil {
			return nil, false, err
		}
	}
	release := spec.ReleaseName
	if release == "" {
		_, release, _ = strings.Cut(spec.Bundle, "/")
	}
	c := bundle.Cluster{Name: ds.ClusterName, Namespace: ds.ClusterNamespace, Labels: ds.ClusterLabels, Annotations: ds.ClusterAnnotations, TemplateValues: ds.ClusterValues}
	r, err := bundle.Render(ctx, files, spec.Options, c, release)
	if err != nil {
		return nil, false, err
	}
	o := spec.Options
	d := &apply.Deployment{
		ID:               spec.Bundle,
		Hash:             hash,
		DefaultNamespace: o.DefaultNamespace,
		KeepResources:    o.KeepResources,
	}
	if o.TargetNamespace != "" {
		d.DefaultNamespace = o.TargetNamespace
	}
	if o.CorrectDrift != nil && o.CorrectDrift.Enabled {
		d.CorrectDrift, d.ForceDrift = true, o.CorrectDrift.Force
	}
	if o.Diff != nil {
		for _, p := range o.Diff.ComparePatches {
			cp := apply.ComparePatch{APIVersion: p.APIVersion, Kind: p.Kind, Name: p.Name, Namespace: p.Namespace, JSONPointers: p.JSONPointers}
			for _, op := range p.Operations {
				cp.Operations = append(cp.Operations, apply.PatchOperation{Op: op.Op, Path: op.Path, Value: op.Value})
			}
			d.ComparePatches = append(d.ComparePatches, cp)
		}
	}
	if r.Helm == nil {
		d.Objects = r.Objects
		return d, false, nil
	}
	h := r.Helm
	values := h.Values
	if len(h.ValuesFrom) > 0 {
		from, err := a.cluster.ValuesFrom(ctx, h.ValuesFrom, h.Namespace)
		if err != nil {
			return nil, false, err
		}
		values = bundle.MergeValues(values, from)
	}
	d.Helm = &apply.HelmRelease{
		ReleaseName: h.ReleaseName,
		Namespace:   h.Namespace,
		Chart:       h.Chart,
		Values:      values,
		// The chart's output gets the bundle's Kustomize overlay and namespace rules, as
		// Rendered.Objects (what `flotilla render` shows) has them. They depend on the
		// content and options, which hash identifies.
		PostRenderer:         h,
		RenderKey:            hash,
		Force:                h.Force,
		TakeOwnership:        h.TakeOwnership,
		Atomic:               h.Atomic,
		WaitForJobs:          h.WaitForJobs,
		DisableDNS:           h.DisableDNS,
		SkipSchemaValidation: h.SkipSchemaValidation,
		MaxHistory:           h.MaxHistory,
		TimeoutSeconds:       int(h.Timeout / time.Second),
	}
	return d, false, nil
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut at a rune boundary.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
