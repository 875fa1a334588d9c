package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

const (
	// LabelBundleID marks every object applied for a deployment, with a
	// label-safe form of the deployment ID (see LabelValue), so the objects
	// can be found and watched with a label selector.
	LabelBundleID = "flotilla.dev/bundle-id"
	// AnnotationBundleID carries the full deployment ID on the same objects.
	AnnotationBundleID = "flotilla.dev/bundle-id"
	// labelInventory marks inventory ConfigMaps.
	labelInventory = "flotilla.dev/inventory"
	// labelHelmDigest is a Helm release label holding the digest of the
	// chart and values it was made from, so that an unchanged release is not
	// upgraded again.
	labelHelmDigest = "flotilla.dev/digest"
	// labelHelmRevision is the revision the agent stored labelHelmDigest on.
	// `helm upgrade` copies a release's labels into the revisions it makes;
	// a digest on another revision than its own was not made by the agent.
	labelHelmRevision = "flotilla.dev/revision"

	// DefaultSystemNamespace holds the inventories.
	DefaultSystemNamespace = "flotilla-system"
)

// LabelValue returns the value of LabelBundleID for a deployment ID: the ID
// itself when it is a valid label value, otherwise a readable, sanitised
// prefix followed by a hash of the ID, so that distinct IDs never share a
// value in practice.
func LabelValue(id string) string {
	if len(validation.IsValidLabelValue(id)) == 0 {
		return id
	}
	var b strings.Builder
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('.')
		}
	}
	prefix := strings.Trim(b.String(), "-_.")
	if len(prefix) > 46 {
		prefix = strings.TrimRight(prefix[:46], "-_.")
	}
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:])[:16]
	if prefix == "" {
		return h
	}
	return prefix + "-" + h
}

// inventoryName is the name of a deployment's inventory ConfigMap.
func inventoryName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "flotilla-inv-" + hex.EncodeToString(sum[:])[:20]
}

// objectRef identifies one applied object. The resource is not stored: it is
// looked up from the kind when needed, as the mapping may change.
type objectRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

func refOf(u *unstructured.Unstructured) objectRef {
	return objectRef{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
}

func (r objectRef) gvk() schema.GroupVersionKind {
	return schema.FromAPIVersionAndKind(r.APIVersion, r.Kind)
}

func (r objectRef) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// sameObject compares refs by group, kind, namespace and name: an object
// whose apiVersion changed (v1beta1 to v1) is still the same object.
func (r objectRef) sameObject(o objectRef) bool {
	return r.gvk().GroupKind() == o.gvk().GroupKind() && r.Namespace == o.Namespace && r.Name == o.Name
}

// inventory is what the agent persisted about one applied deployment. It is
// kept in a ConfigMap rather than found by label, so pruning costs one read
// and never misses an object whose kind is no longer in the deployment.
type inventory struct {
	ID            string
	Hash          string
	KeepResources bool
	// HelmNamespace and HelmRelease are set for Helm deployments.
	HelmNamespace string
	HelmRelease   string
	Objects       []objectRef
}

func (a *Applier) readInventory(ctx context.Context, id string) (*inventory, error) {
	cm, err := a.kube.CoreV1().ConfigMaps(a.systemNamespace).Get(ctx, inventoryName(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading inventory of %s: %w", id, err)
	}
	inv, err := decodeInventory(cm)
	if err != nil {
		return nil, fmt.Errorf("reading inventory of %s: %w", id, err)
	}
	return inv, nil
}

func decodeInventory(cm *corev1.ConfigMap) (*inventory, error) {
	inv := &inventory{
		ID:            cm.Data["id"],
		Hash:          cm.Data["hash"],
		HelmNamespace: cm.Data["helmNamespace"],
		HelmRelease:   cm.Data["helmRelease"],
	}
	inv.KeepResources, _ = strconv.ParseBool(cm.Data["keepResources"])
	if s := cm.Data["objects"]; s != "" {
		if err := json.Unmarshal([]byte(s), &inv.Objects); err != nil {
			return nil, fmt.Errorf("decoding objects of %s/%s: %w", cm.Namespace, cm.Name, err)
		}
	}
	return inv, nil
}

func (a *Applier) writeInventory(ctx context.Context, inv *inventory) error {
	if err := a.ensureNamespace(ctx, a.systemNamespace); err != nil {
		return err
	}
	objs, err := json.Marshal(inv.Objects)
	if err != nil {
		return fmt.Errorf("encoding inventory of %s: %w", inv.ID, err)
	}
	data := map[string]string{
		"id":            inv.ID,
		"hash":          inv.Hash,
		"keepResources": strconv.FormatBool(inv.KeepResources),
		"objects":       string(objs),
	}
	if inv.HelmRelease != "" {
		data["helmNamespace"] = inv.HelmNamespace
		data["helmRelease"] = inv.HelmRelease
	}
	cm := corev1ac.ConfigMap(inventoryName(inv.ID), a.systemNamespace).
		WithLabels(map[string]string{labelInventory: "true", LabelBundleID: LabelValue(inv.ID)}).
		WithAnnotations(map[string]string{AnnotationBundleID: inv.ID}).
		WithData(data)
	_, err = a.kube.CoreV1().ConfigMaps(a.systemNamespace).Apply(ctx, cm, metav1.ApplyOptions{FieldManager: a.fieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("writing inventory of %s: %w", inv.ID, err)
	}
	a.noteInventory(inv)
	return nil
}

func (a *Applier) deleteInventory(ctx context.Context, id string) error {
	err := a.kube.CoreV1().ConfigMaps(a.systemNamespace).Delete(ctx, inventoryName(id), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting inventory of %s: %w", id, err)
	}
	a.forgetInventory(id)
	return nil
}

// listInventories returns every deployment this agent has applied.
func (a *Applier) listInventories(ctx context.Context) ([]*inventory, error) {
	list, err := a.kube.CoreV1().ConfigMaps(a.systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: labelInventory + "=true"})
	if err != nil {
		return nil, fmt.Errorf("listing inventories: %w", err)
	}
	var out []*inventory
	for i := range list.Items {
		inv, err := decodeInventory(&list.Items[i])
		if err != nil {
			a.log.Warn("skipping unreadable inventory", "name", list.Items[i].Name, "err", err)
			continue
		}
		out = append(out, inv)
	}
	return out, nil
}

var configMapsGVR = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

// Deployments lists the IDs of the deployments whose inventories the cluster holds: every
// deployment applied and not removed since, whatever the agent remembers. An agent whose
// state was lost learns from it what it has to remove. Only metadata is read.
func (a *Applier) Deployments(ctx context.Context) ([]string, error) {
	list, err := a.metadata.Resource(configMapsGVR).Namespace(a.systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: labelInventory + "=true"})
	if err != nil {
		return nil, fmt.Errorf("listing inventories: %w", err)
	}
	ids := make([]string, 0, len(list.Items))
	for _, m := range list.Items {
		if id := m.Annotations[AnnotationBundleID]; id != "" && m.Name == inventoryName(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// ensureNamespace creates a namespace unless it exists. Namespaces created
// this way are not part of any inventory, so they are never deleted: other
// things may live in them.
func (a *Applier) ensureNamespace(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	_, err := a.kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		_, err = a.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{FieldManager: a.fieldManager})
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("ensuring namespace %s: %w", name, err)
	}
	return nil
}
