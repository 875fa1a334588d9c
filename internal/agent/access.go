package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/resource"
)

// accessManager applies a cluster's access objects and reads its projects' quota usage:
// *kubeAccess, or nil when the agent has no cluster client (unit tests).
type accessManager interface {
	Apply(ctx context.Context, st *api.AccessState) error
	Usage(ctx context.Context) (map[string]map[string]map[string]string, error)
}

// AccessFieldManager is the field manager of the access objects the agent applies.
const AccessFieldManager = "flotilla-access"

// accessKind is one kind the server may send as an access object. Nothing else is applied
// from that channel: it carries RBAC, namespaces, quotas and limit ranges only.
type accessKind struct {
	gvr        schema.GroupVersionResource
	namespaced bool
}

var accessKinds = map[schema.GroupVersionKind]accessKind{
	{Version: "v1", Kind: "Namespace"}:                                              {schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, false},
	{Version: "v1", Kind: "ResourceQuota"}:                                          {schema.GroupVersionResource{Version: "v1", Resource: "resourcequotas"}, true},
	{Version: "v1", Kind: "LimitRange"}:                                             {schema.GroupVersionResource{Version: "v1", Resource: "limitranges"}, true},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"}:        {schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, false},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"}: {schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}, false},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"}:        {schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"}, true},
}

// pruneOrder is the order kinds are pruned in: what grants before what is granted.
var pruneOrder = []schema.GroupVersionKind{
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"},
	{Version: "v1", Kind: "ResourceQuota"},
	{Version: "v1", Kind: "LimitRange"},
	{Version: "v1", Kind: "Namespace"},
}

var ownerSelector = rbac.OwnerLabel + "=" + rbac.OwnerValue

// kubeAccess is the accessManager of a real cluster.
type kubeAccess struct {
	dyn dynamic.Interface
}

type objKey struct {
	gvk       schema.GroupVersionKind
	namespace string
	name      string
}

// Apply makes the cluster hold exactly st's objects among those labelled as access
// objects: it applies each with server-side apply, fills the templates into the namespaces
// their selectors pick, and prunes what it applied before and st no longer lists. Project
// namespaces are never deleted: one no longer wanted is released (our labels removed), as
// it may hold workloads. Every object is tried; the errors are returned together.
func (k *kubeAccess) Apply(ctx context.Context, st *api.AccessState) error {
	var objs []*unstructured.Unstructured
	for i, raw := range st.Objects {
		u, err := decodeAccessObject(raw)
		if err != nil {
			return fmt.Errorf("access object %d: %w", i, err)
		}
		objs = append(objs, u)
	}
	var errs []error
	for _, t := range st.Templates {
		more, err := k.expand(ctx, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, more...)
	}
	want := map[objKey]bool{}
	for _, u := range objs {
		want[keyOf(u)] = true
		if err := k.apply(ctx, u); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// Nothing is pruned after a failed apply: a half-applied state keeps what it had.
		return errors.Join(errs...)
	}
	for _, gvk := range pruneOrder {
		ak := accessKinds[gvk]
		list, err := k.dyn.Resource(ak.gvr).List(ctx, metav1.ListOptions{LabelSelector: ownerSelector})
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s to prune: %w", ak.gvr.Resource, err))
			continue
		}
		for i := range list.Items {
			u := &list.Items[i]
			u.SetGroupVersionKind(gvk)
			if want[keyOf(u)] || !u.GetDeletionTimestamp().IsZero() {
				continue
			}
			if err := k.prune(ctx, ak, u); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func decodeAccessObject(raw json.RawMessage) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return nil, err
	}
	if _, ok := accessKinds[u.GroupVersionKind()]; !ok {
		return nil, fmt.Errorf("kind %s is not an access kind", u.GroupVersionKind())
	}
	if u.GetLabels()[rbac.OwnerLabel] != rbac.OwnerValue {
		return nil, fmt.Errorf("%s %s lacks the label %s", u.GetKind(), u.GetName(), ownerSelector)
	}
	return u, nil
}

func keyOf(u *unstructured.Unstructured) objKey {
	return objKey{u.GroupVersionKind(), u.GetNamespace(), u.GetName()}
}

// expand makes a template's objects for every namespace its selector picks, and labels
// those namespaces with the project.
func (k *kubeAccess) expand(ctx context.Context, t api.AccessTemplate) ([]*unstructured.Unstructured, error) {
	sel, err := resource.Selector(t.Selector)
	if err != nil {
		return nil, fmt.Errorf("project %s: namespace selector: %w", t.Project, err)
	}
	nss, err := k.dyn.Resource(accessKinds[schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}].gvr).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("project %s: listing namespaces: %w", t.Project, err)
	}
	var out []*unstructured.Unstructured
	for _, ns := range nss.Items {
		if !ns.GetDeletionTimestamp().IsZero() {
			continue
		}
		nsObj := &unstructured.Unstructured{}
		nsObj.SetAPIVersion("v1")
		nsObj.SetKind("Namespace")
		nsObj.SetName(ns.GetName())
		nsObj.SetLabels(map[string]string{rbac.OwnerLabel: rbac.OwnerValue, rbac.ProjectLabel: t.Project})
		out = append(out, nsObj)
		for i, raw := range t.Objects {
			u, err := decodeAccessObject(raw)
			if err != nil {
				return nil, fmt.Errorf("project %s: template object %d: %w", t.Project, i, err)
			}
			if !accessKinds[u.GroupVersionKind()].namespaced {
				return nil, fmt.Errorf("project %s: template object %s %s is not namespaced", t.Project, u.GetKind(), u.GetName())
			}
			u.SetNamespace(ns.GetName())
			out = append(out, u)
		}
	}
	return out, nil
}

func (k *kubeAccess) ri(ak accessKind, ns string) dynamic.ResourceInterface {
	if ak.namespaced {
		return k.dyn.Resource(ak.gvr).Namespace(ns)
	}
	return k.dyn.Resource(ak.gvr)
}

func (k *kubeAccess) apply(ctx context.Context, u *unstructured.Unstructured) error {
	ak := accessKinds[u.GroupVersionKind()]
	data, err := u.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	_, err = k.ri(ak, u.GetNamespace()).Patch(ctx, u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: AccessFieldManager, Force: &force})
	if err != nil {
		return fmt.Errorf("applying %s %s: %w", u.GetKind(), nsName(u), err)
	}
	return nil
}

func (k *kubeAccess) prune(ctx context.Context, ak accessKind, u *unstructured.Unstructured) error {
	if u.GetKind() == "Namespace" {
		// Applying nothing but the name gives up the labels this manager set.
		release := &unstructured.Unstructured{}
		release.SetAPIVersion("v1")
		release.SetKind("Namespace")
		release.SetName(u.GetName())
		return k.apply(ctx, release)
	}
	err := k.ri(ak, u.GetNamespace()).Delete(ctx, u.GetName(), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("pruning %s %s: %w", u.GetKind(), nsName(u), err)
	}
	return nil
}

func nsName(u *unstructured.Unstructured) string {
	if u.GetNamespace() != "" {
		return u.GetNamespace() + "/" + u.GetName()
	}
	return u.GetName()
}

// Usage reads status.used of the project ResourceQuotas the agent applied: project →
// namespace → resource → quantity, up to the entries one report may carry (the server
// refuses a report with more, and with it the deployments' status it holds).
func (k *kubeAccess) Usage(ctx context.Context) (map[string]map[string]map[string]string, error) {
	ak := accessKinds[schema.GroupVersionKind{Version: "v1", Kind: "ResourceQuota"}]
	list, err := k.dyn.Resource(ak.gvr).List(ctx, metav1.ListOptions{LabelSelector: ownerSelector + "," + rbac.ProjectLabel})
	if err != nil {
		return nil, fmt.Errorf("listing project quotas: %w", err)
	}
	out := map[string]map[string]map[string]string{}
	n := 0
	for _, q := range list.Items {
		p := q.GetLabels()[rbac.ProjectLabel]
		used, _, _ := unstructured.NestedStringMap(q.Object, "status", "used")
		if p == "" || q.GetName() != rbac.ProjectObjectName || len(used) == 0 {
			continue
		}
		if n += len(used); n > api.MaxAccessUsageEntries {
			break
		}
		if out[p] == nil {
			out[p] = map[string]map[string]string{}
		}
		out[p][q.GetNamespace()] = used
	}
	return out, nil
}

// reconcileAccess applies the desired state's access objects, when the server sends them,
// and queues a report when the outcome or the projects' usage changed.
func (a *agent) reconcileAccess(ctx context.Context, ds *api.DesiredState) {
	if ds.Access == nil || a.access == nil {
		return
	}
	rep := &api.AccessReport{Digest: ds.Access.Digest}
	if err := a.access.Apply(ctx, ds.Access); err != nil {
		if ctx.Err() != nil {
			return
		}
		rep.Error = shorten(err.Error(), 1024)
		a.log.Error("applying access objects", "digest", ds.Access.Digest, "err", err)
	}
	if usage, err := a.access.Usage(ctx); err != nil {
		a.log.Warn("reading project usage", "err", err)
	} else if len(usage) > 0 {
		rep.Usage = usage
	}
	queued, err := a.queue.setAccess(rep)
	if err != nil {
		a.log.Error("queueing the access report", "err", err)
	}
	if queued {
		kick(a.wakeReport)
	}
}

// sameAccess reports whether two access reports say the same.
func sameAccess(x, y *api.AccessReport) bool {
	if x == nil || y == nil {
		return x == y
	}
	return x.Digest == y.Digest && x.Error == y.Error && reflect.DeepEqual(x.Usage, y.Usage)
}
