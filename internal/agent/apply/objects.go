package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
)

var crdGroupKind = schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}

// Apply order: namespaces first so that namespaced objects can be created in
// them, CRDs before the custom resources that need them, then other
// cluster-scoped objects (RBAC, webhooks' targets) before namespaced ones.
const (
	rankNamespace = iota
	rankCRD
	rankCluster
	rankNamespaced
)

// item is one desired object, ready to apply.
type item struct {
	obj        *unstructured.Unstructured
	ref        objectRef
	namespaced bool
	rank       int
}

// prepare copies d's objects, stamps them with the deployment's label and
// annotation, defaults their namespace and sorts them into apply order.
// Custom resources whose CRD is in the same deployment take their scope from
// it, as the API server may not know the kind yet.
func (a *Applier) prepare(_ context.Context, d Deployment) ([]item, error) {
	crdScopes := map[schema.GroupKind]bool{} // namespaced?
	for _, o := range d.Objects {
		if o.GroupVersionKind().GroupKind() != crdGroupKind {
			continue
		}
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
		scope, _, _ := unstructured.NestedString(o.Object, "spec", "scope")
		crdScopes[schema.GroupKind{Group: group, Kind: kind}] = scope != "Cluster"
	}
	defaultNS := d.DefaultNamespace
	if defaultNS == "" {
		defaultNS = metav1.NamespaceDefault
	}
	label, ann := LabelValue(d.ID), d.ID
	items := make([]item, 0, len(d.Objects))
	seen := map[objectRef]bool{}
	for i, o := range d.Objects {
		if o == nil {
			return nil, fmt.Errorf("object %d of %s is nil", i, d.ID)
		}
		gvk := o.GroupVersionKind()
		if gvk.Kind == "" || gvk.Version == "" || o.GetName() == "" {
			return nil, fmt.Errorf("object %d of %s lacks apiVersion, kind or metadata.name", i, d.ID)
		}
		namespaced, ok := crdScopes[gvk.GroupKind()]
		if !ok {
			m, err := a.mapping(gvk)
			if err != nil {
				return nil, err
			}
			namespaced = m.Scope.Name() == meta.RESTScopeNameNamespace
		}
		obj := o.DeepCopy()
		// Fields only the server may set; a rendered manifest copied from
		// a live object would otherwise fail to apply (resourceVersion
		// turns the apply into a conditional update).
		for _, f := range []string{"resourceVersion", "uid", "managedFields", "creationTimestamp", "selfLink", "generation"} {
			unstructured.RemoveNestedField(obj.Object, "metadata", f)
		}
		switch {
		case !namespaced:
			obj.SetNamespace("")
		case obj.GetNamespace() == "":
			obj.SetNamespace(defaultNS)
		}
		stamp(obj, label, ann)
		it := item{obj: obj, ref: refOf(obj), namespaced: namespaced, rank: rankOf(gvk.GroupKind(), namespaced)}
		key := it.ref
		key.APIVersion = gvk.Group // same object under two versions is still a duplicate
		if seen[key] {
			return nil, fmt.Errorf("%s appears twice in %s", it.ref, d.ID)
		}
		seen[key] = true
		items = append(items, it)
	}
	slices.SortStableFunc(items, func(x, y item) int { return x.rank - y.rank })
	return items, nil
}

func rankOf(gk schema.GroupKind, namespaced bool) int {
	switch {
	case gk == schema.GroupKind{Kind: "Namespace"}:
		return rankNamespace
	case gk == crdGroupKind:
		return rankCRD
	case !namespaced:
		return rankCluster
	}
	return rankNamespaced
}

func stamp(obj *unstructured.Unstructured, label, annotation string) {
	l := obj.GetLabels()
	if l == nil {
		l = map[string]string{}
	}
	l[LabelBundleID] = label
	obj.SetLabels(l)
	an := obj.GetAnnotations()
	if an == nil {
		an = map[string]string{}
	}
	an[AnnotationBundleID] = annotation
	obj.SetAnnotations(an)
}

// applyAll applies a new version of d and prunes what it no longer has.
func (a *Applier) applyAll(ctx context.Context, log *slog.Logger, d Deployment, items []item, old *inventory) (Result, error) {
	start := time.Now()
	newInv := &inventory{ID: d.ID, Hash: d.hash(), KeepResources: d.KeepResources}
	for _, it := range items {
		newInv.Objects = append(newInv.Objects, it.ref)
	}
	var stale []objectRef
	if old != nil {
		for _, r := range old.Objects {
			if !slices.ContainsFunc(newInv.Objects, r.sameObject) {
				stale = append(stale, r)
			}
		}
	}
	// Record the union before touching anything, under the old hash: an
	// agent that dies half-way then still knows every object it may have
	// created, and applies again on restart.
	pending := &inventory{ID: d.ID, Hash: old.hash(), KeepResources: d.KeepResources, Objects: append(slices.Clone(newInv.Objects), stale...)}
	if err := a.writeInventory(ctx, pending); err != nil {
		return failed(old.hash(), err)
	}
	if err := a.ensureNamespaces(ctx, d, items); err != nil {
		return failed(old.hash(), err)
	}
	nonReady, err := a.applyItems(ctx, items, d.ForceDrift)
	if err != nil {
		return failed(old.hash(), err)
	}
	res := Result{NonReady: nonReady}
	if err := a.deleteObjects(ctx, log, d.ID, stale); err != nil {
		return failed(old.hash(), err)
	}
	if old != nil && old.HelmRelease != "" {
		// The bundle switched from a Helm chart to raw manifests: the release's
		// objects were pruned or taken over above; its history goes now.
		if err := a.forgetRelease(ctx, old.HelmNamespace, old.HelmRelease); err != nil {
			return failed(old.hash(), err)
		}
	}
	if err := a.writeInventory(ctx, newInv); err != nil {
		return failed(old.hash(), err)
	}
	log.Info("applied deployment", "hash", newInv.Hash, "objects", len(items), "pruned", len(stale), "took", time.Since(start).Round(time.Millisecond))
	res.AppliedHash = newInv.Hash
	res.summarize()
	return res, nil
}

// applyItems applies items in order, waiting for CRDs to be served before the
// objects after them, and returns the objects that are not ready yet.
func (a *Applier) applyItems(ctx context.Context, items []item, recreate bool) ([]ObjectStatus, error) {
	var nonReady []ObjectStatus
	crds := false
	for i, it := range items {
		if crds && it.rank > rankCRD {
			// The CRDs just applied must be served before their custom
			// resources can be applied.
			if err := a.waitCRDs(ctx, items[:i]); err != nil {
				return nil, err
			}
			crds = false
		}
		live, err := a.applyObject(ctx, it, recreate)
		if err != nil {
			return nil, err
		}
		if it.rank == rankCRD {
			// Readiness of a CRD is its being established, waited for
			// below; the apply response predates it.
			crds = true
			continue
		}
		if st := readiness(live); st != nil {
			nonReady = append(nonReady, *st)
		}
	}
	if crds {
		if err := a.waitCRDs(ctx, items); err != nil {
			return nil, err
		}
	}
	return nonReady, nil
}

// keepApplied handles a deployment whose version is already applied: it
// reports drift, or corrects it when asked to.
func (a *Applier) keepApplied(ctx context.Context, log *slog.Logger, d Deployment, items []item, inv *inventory) (Result, error) {
	res, err := a.status(ctx, d, items, inv.Hash)
	if err != nil {
		return failed(inv.Hash, err)
	}
	if res.State != Modified || !d.CorrectDrift {
		return res, nil
	}
	if err := a.ensureNamespaces(ctx, d, items); err != nil {
		return failed(inv.Hash, err)
	}
	for _, m := range res.Modified {
		for _, it := range items {
			if it.ref.Kind != m.Kind || it.ref.APIVersion != m.APIVersion || it.ref.Namespace != m.Namespace || it.ref.Name != m.Name {
				continue
			}
			log.Info("correcting drift", "object", it.ref.String(), "fields", m.Fields, "missing", m.Missing)
			if _, err := a.applyObject(ctx, it, d.ForceDrift); err != nil {
				return failed(inv.Hash, fmt.Errorf("correcting drift: %w", err))
			}
		}
	}
	return a.status(ctx, d, items, inv.Hash)
}

// ensureNamespaces creates the default namespace and every namespace an
// object needs that the deployment does not create itself.
func (a *Applier) ensureNamespaces(ctx context.Context, d Deployment, items []item) error {
	own := map[string]bool{}
	for _, it := range items {
		if it.rank == rankNamespace {
			own[it.ref.Name] = true
		}
	}
	need := []string{}
	if d.DefaultNamespace != "" {
		need = append(need, d.DefaultNamespace)
	}
	for _, it := range items {
		if it.namespaced {
			need = append(need, it.ref.Namespace)
		}
	}
	slices.Sort(need)
	for _, ns := range slices.Compact(need) {
		if own[ns] {
			continue
		}
		if err := a.ensureNamespace(ctx, ns); err != nil {
			return err
		}
	}
	return nil
}

// applyObject server-side applies one object, forcing conflicts: the agent is
// the authority for what it applies. With recreate, an object the server
// refuses to change in place (immutable fields) is deleted and created anew.
func (a *Applier) applyObject(ctx context.Context, it item, recreate bool) (*unstructured.Unstructured, error) {
	m, err := a.mapping(it.obj.GroupVersionKind())
	if err != nil {
		return nil, err
	}
	ri := a.resource(m, it.ref.Namespace)
	opts := metav1.ApplyOptions{FieldManager: a.fieldManager, Force: true}
	live, err := ri.Apply(ctx, it.ref.Name, it.obj, opts)
	if err != nil && recreate && apierrors.IsInvalid(err) {
		a.log.Info("recreating object the server refused to change", "object", it.ref.String(), "err", err)
		if err := a.deleteAndWait(ctx, ri, it.ref.Name); err != nil {
			return nil, fmt.Errorf("recreating %s: %w", it.ref, err)
		}
		live, err = ri.Apply(ctx, it.ref.Name, it.obj, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("applying %s: %w", it.ref, err)
	}
	return live, nil
}

func (a *Applier) deleteAndWait(ctx context.Context, ri interface {
	Delete(context.Context, string, metav1.DeleteOptions, ...string) error
	Get(context.Context, string, metav1.GetOptions, ...string) (*unstructured.Unstructured, error)
}, name string) error {
	// Background: the object goes at once and its dependents (a Job's
	// pods) are collected later, so the new one need not wait for them.
	bg := metav1.DeletePropagationBackground
	if err := ri.Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := ri.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// waitCRDs waits until every CRD among items is established, then makes the
// mapper rediscover the API so that their kinds resolve.
func (a *Applier) waitCRDs(ctx context.Context, items []item) error {
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, it := range items {
		if it.rank != rankCRD {
			continue
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			crd, err := a.dynamic.Resource(crdGVR).Get(ctx, it.ref.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				c, _ := c.(map[string]any)
				if c["type"] == "Established" && c["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("waiting for %s to be established: %w", it.ref, err)
		}
	}
	a.mapper.Reset()
	return nil
}

// resourcePolicyAnnotation set to "keep" on an object spares it when its
// deployment no longer has it or is removed, as Helm (and so Fleet) does.
const resourcePolicyAnnotation = "helm.sh/resource-policy"

func keepPolicy(u *unstructured.Unstructured) bool {
	return strings.EqualFold(strings.TrimSpace(u.GetAnnotations()[resourcePolicyAnnotation]), "keep")
}

// deleteObjects deletes the objects of deployment id, namespaced ones before
// cluster-scoped ones and namespaces last. An object that another deployment
// has taken over since (its label says so) is left alone, and so is one
// annotated helm.sh/resource-policy: keep.
func (a *Applier) deleteObjects(ctx context.Context, log *slog.Logger, id string, refs []objectRef) error {
	refs = slices.Clone(refs)
	rank := func(r objectRef) int {
		switch r.gvk().GroupKind() {
		case schema.GroupKind{Kind: "Namespace"}:
			return 0
		case crdGroupKind:
			return 1
		}
		if r.Namespace == "" {
			return 2
		}
		return 3
	}
	slices.SortStableFunc(refs, func(x, y objectRef) int { return rank(y) - rank(x) })
	want := LabelValue(id)
	var errs []error
	for _, r := range refs {
		m, err := a.mapping(r.gvk())
		if meta.IsNoMatchError(err) {
			continue // its CRD is gone, and so is the object
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ri := a.resource(m, r.Namespace)
		live, err := ri.Get(ctx, r.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reading %s before deleting it: %w", r, err))
			continue
		}
		if got := live.GetLabels()[LabelBundleID]; got != want {
			log.Info("not deleting object owned by another deployment", "object", r.String(), "owner", got)
			continue
		}
		if live.GetDeletionTimestamp() != nil {
			continue
		}
		if keepPolicy(live) {
			log.Info("not deleting object annotated "+resourcePolicyAnnotation+": keep", "object", r.String())
			continue
		}
		bg := metav1.DeletePropagationBackground
		uid := live.GetUID()
		err = ri.Delete(ctx, r.Name, metav1.DeleteOptions{PropagationPolicy: &bg, Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("deleting %s: %w", r, err))
			continue
		}
		log.Info("deleted object", "object", r.String())
	}
	return errors.Join(errs...)
}
