package apply

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/release"
	helmtime "helm.sh/helm/v3/pkg/time"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
)

var (
	jobKind = schema.GroupKind{Group: "batch", Kind: "Job"}
	podKind = schema.GroupKind{Kind: "Pod"}
)

// runHooks runs rel's hooks for event as Helm does: by weight, then name; each one's
// objects created (after deleting the previous run's, by default), Jobs and Pods waited for
// until they succeed or fail, other kinds taken as done once created; delete policies
// honoured; each run's phase recorded in the stored release. Hooks are not post-rendered,
// as in Helm 3.
func (a *Applier) runHooks(ctx context.Context, log *slog.Logger, store releaseStore, rel *release.Release, event release.HookEvent, timeout time.Duration) error {
	var hooks []*release.Hook
	for _, h := range rel.Hooks {
		if slices.Contains(h.Events, event) {
			hooks = append(hooks, h)
		}
	}
	if len(hooks) == 0 {
		return nil
	}
	sort.SliceStable(hooks, func(i, j int) bool {
		if hooks[i].Weight == hooks[j].Weight {
			return hooks[i].Name < hooks[j].Name
		}
		return hooks[i].Weight < hooks[j].Weight
	})
	for i, h := range hooks {
		if len(h.DeletePolicies) == 0 {
			h.DeletePolicies = []release.HookDeletePolicy{release.HookBeforeHookCreation}
		}
		items, err := a.hookItems(h, rel.Namespace)
		if err != nil {
			return fmt.Errorf("%s hook %s: %w", event, h.Path, err)
		}
		if err := a.deleteHook(ctx, h, items, release.HookBeforeHookCreation, timeout); err != nil {
			return fmt.Errorf("%s hook %s: %w", event, h.Path, err)
		}
		h.LastRun = release.HookExecution{StartedAt: helmtime.Now(), Phase: release.HookPhaseRunning}
		if err := store.update(ctx, rel); err != nil {
			log.Warn("recording a hook's start", "hook", h.Path, "err", err)
		}
		log.Info("running helm hook", "event", event, "hook", h.Path, "weight", h.Weight)
		err = a.createHook(ctx, items)
		if err == nil {
			err = a.waitHook(ctx, items, timeout)
		}
		h.LastRun.CompletedAt = helmtime.Now()
		if err != nil {
			h.LastRun.Phase = release.HookPhaseFailed
			if derr := a.deleteHook(ctx, h, items, release.HookFailed, timeout); derr != nil {
				log.Warn("deleting a failed hook", "hook", h.Path, "err", derr)
			}
			for _, done := range hooks[:i] {
				if derr := a.deleteHookOf(ctx, done, rel.Namespace, release.HookSucceeded, timeout); derr != nil {
					log.Warn("deleting a succeeded hook", "hook", done.Path, "err", derr)
				}
			}
			return fmt.Errorf("%s hook %s failed: %w", event, h.Path, err)
		}
		h.LastRun.Phase = release.HookPhaseSucceeded
	}
	for i := len(hooks) - 1; i >= 0; i-- {
		if err := a.deleteHookOf(ctx, hooks[i], rel.Namespace, release.HookSucceeded, timeout); err != nil {
			return fmt.Errorf("%s hook %s: %w", event, hooks[i].Path, err)
		}
	}
	return nil
}

// hookItems parses a hook's manifest; namespaced objects without a namespace go to the
// release's.
func (a *Applier) hookItems(h *release.Hook, ns string) ([]item, error) {
	objs, err := manifestObjects(h.Manifest)
	if err != nil {
		return nil, err
	}
	items := make([]item, 0, len(objs))
	for _, o := range objs {
		m, err := a.mapping(o.GroupVersionKind())
		if err != nil {
			return nil, err
		}
		namespaced := m.Scope.Name() == meta.RESTScopeNameNamespace
		switch {
		case !namespaced:
			o.SetNamespace("")
		case o.GetNamespace() == "":
			o.SetNamespace(ns)
		}
		items = append(items, item{obj: o, ref: refOf(o), namespaced: namespaced})
	}
	return items, nil
}

func (a *Applier) createHook(ctx context.Context, items []item) error {
	for _, it := range items {
		m, err := a.mapping(it.obj.GroupVersionKind())
		if err != nil {
			return err
		}
		if err := a.ensureNamespace(ctx, it.ref.Namespace); err != nil {
			return err
		}
		if _, err := a.resource(m, it.ref.Namespace).Create(ctx, it.obj, metav1.CreateOptions{FieldManager: a.fieldManager}); err != nil {
			return fmt.Errorf("creating %s: %w", it.ref, err)
		}
	}
	return nil
}

// waitHook waits until the hook's Jobs have completed and its Pods have succeeded.
func (a *Applier) waitHook(ctx context.Context, items []item, timeout time.Duration) error {
	for _, it := range items {
		gk := it.obj.GroupVersionKind().GroupKind()
		if gk != jobKind && gk != podKind {
			continue
		}
		m, err := a.mapping(it.obj.GroupVersionKind())
		if err != nil {
			return err
		}
		ri := a.resource(m, it.ref.Namespace)
		var state string
		err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
			live, err := ri.Get(ctx, it.ref.Name, metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("reading %s: %w", it.ref, err)
			}
			done, failure := hookDone(live)
			if failure != "" {
				return false, fmt.Errorf("%s: %s", it.ref, failure)
			}
			state = hookState(live)
			return done, nil
		})
		if err != nil && wait.Interrupted(err) {
			return fmt.Errorf("waiting for %s (%s): %w", it.ref, state, err)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// hookDone says whether a Job or Pod finished, and why it failed if it did.
func hookDone(u *unstructured.Unstructured) (done bool, failure string) {
	if u.GroupVersionKind().GroupKind() == podKind {
		switch phase, _, _ := unstructured.NestedString(u.Object, "status", "phase"); phase {
		case "Succeeded":
			return true, ""
		case "Failed":
			msg, _, _ := unstructured.NestedString(u.Object, "status", "message")
			return false, strings.TrimSpace("pod failed " + msg)
		}
		return false, ""
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		c, _ := c.(map[string]any)
		if c["status"] != "True" {
			continue
		}
		switch c["type"] {
		case "Complete":
			return true, ""
		case "Failed":
			return false, fmt.Sprintf("job failed: %v: %v", c["reason"], c["message"])
		}
	}
	return false, ""
}

func hookState(u *unstructured.Unstructured) string {
	if u.GroupVersionKind().GroupKind() == podKind {
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		return "phase " + phase
	}
	active, _, _ := unstructured.NestedInt64(u.Object, "status", "active")
	succeeded, _, _ := unstructured.NestedInt64(u.Object, "status", "succeeded")
	failedN, _, _ := unstructured.NestedInt64(u.Object, "status", "failed")
	return fmt.Sprintf("active %d, succeeded %d, failed %d", active, succeeded, failedN)
}

func (a *Applier) deleteHookOf(ctx context.Context, h *release.Hook, ns string, policy release.HookDeletePolicy, timeout time.Duration) error {
	if !slices.Contains(h.DeletePolicies, policy) {
		return nil
	}
	items, err := a.hookItems(h, ns)
	if err != nil {
		return err
	}
	return a.deleteHook(ctx, h, items, policy, timeout)
}

// deleteHook deletes a hook's objects if its delete policies include policy, and waits
// until they are gone, so that the next run can create them again. CRDs are never deleted.
func (a *Applier) deleteHook(ctx context.Context, h *release.Hook, items []item, policy release.HookDeletePolicy, timeout time.Duration) error {
	if !slices.Contains(h.DeletePolicies, policy) || h.Kind == "CustomResourceDefinition" {
		return nil
	}
	for _, it := range items {
		m, err := a.mapping(it.obj.GroupVersionKind())
		if err != nil {
			return err
		}
		ri := a.resource(m, it.ref.Namespace)
		// Background: a Job's pods go later; the Job's name is free at once.
		bg := metav1.DeletePropagationBackground
		if err := ri.Delete(ctx, it.ref.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("deleting %s: %w", it.ref, err)
		}
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
			_, err := ri.Get(ctx, it.ref.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
		if err != nil {
			return fmt.Errorf("waiting for %s to be deleted: %w", it.ref, err)
		}
	}
	return nil
}
