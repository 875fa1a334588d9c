package bundle

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

// parseObjects reads every object of a multi-document YAML or JSON file. Empty documents are
// skipped, List kinds are expanded, and documents without apiVersion or kind are skipped when
// skipKindless is set (raw-YAML bundles hold values and other plain YAML files, which Fleet
// ignores) and are errors otherwise. The bytes read count against m's budget, and it stops as
// soon as it holds more objects than the budget allows.
func parseObjects(m *meter, source string, data []byte, skipKindless bool) ([]*unstructured.Unstructured, error) {
	if err := m.Wrote(len(data), source); err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for i := 0; ; i++ {
		if err := m.checkObjects(len(objs), source); err != nil {
			return nil, err
		}
		if err := m.Step(); err != nil {
			return nil, err
		}
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			if err := m.checkObjects(len(objs), source); err != nil {
				return nil, err
			}
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		var v any
		// util/json keeps integers as int64, as unstructured objects expect.
		if err := utiljson.Unmarshal(j, &v); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		if v == nil {
			continue
		}
		m, ok := v.(map[string]any)
		if !ok {
			if skipKindless {
				continue
			}
			return nil, fmt.Errorf("%s: document %d is not an object", source, i+1)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" {
			if skipKindless {
				continue
			}
			return nil, fmt.Errorf("%s: document %d has no apiVersion or kind", source, i+1)
		}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
			}
			for k := range list.Items {
				item := &list.Items[k]
				// An item is checked as a document is: a List's items come from
				// the same untrusted file.
				if item.GetAPIVersion() == "" || item.GetKind() == "" {
					if skipKindless {
						continue
					}
					return nil, fmt.Errorf("%s: document %d: item %d has no apiVersion or kind", source, i+1, k+1)
				}
				if item.IsList() {
					return nil, fmt.Errorf("%s: document %d: item %d is a List inside a List", source, i+1, k+1)
				}
				objs = append(objs, item)
			}
			continue
		}
		objs = append(objs, u)
	}
}

// encodeObjects writes objs as a multi-document YAML stream.
func encodeObjects(objs []*unstructured.Unstructured) ([]byte, error) {
	var b bytes.Buffer
	for _, o := range objs {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", objectName(o), err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}

// objectName names an object in errors: "Kind namespace/name".
func objectName(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return o.GetKind() + " " + ns + "/" + o.GetName()
	}
	return o.GetKind() + " " + o.GetName()
}

// sortObjects orders objects as Helm installs them (by kind), then by API version, namespace
// and name, so output is deterministic and dependencies come first.
func sortObjects(objs []*unstructured.Unstructured) {
	rank := func(kind string) int {
		if i := slices.Index(releaseutil.InstallOrder, kind); i >= 0 {
			return i
		}
		return len(releaseutil.InstallOrder)
	}
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		if d := rank(a.GetKind()) - rank(b.GetKind()); d != 0 {
			return d
		}
		for _, pair := range [][2]string{
			{a.GetKind(), b.GetKind()},
			{a.GetAPIVersion(), b.GetAPIVersion()},
			{a.GetNamespace(), b.GetNamespace()},
			{a.GetName(), b.GetName()},
		} {
			if c := strings.Compare(pair[0], pair[1]); c != 0 {
				return c
			}
		}
		return 0
	})
}

// clusterScoped are the kinds of Kubernetes' own API groups that have no namespace. Kinds of
// CRDs are looked up in the CRDs a bundle carries; any other kind is taken to be namespaced.
var clusterScoped = map[schema.GroupKind]bool{}

func init() {
	for group, kinds := range map[string][]string{
		"":                             {"Namespace", "Node", "PersistentVolume", "ComponentStatus"},
		"rbac.authorization.k8s.io":    {"ClusterRole", "ClusterRoleBinding"},
		"apiextensions.k8s.io":         {"CustomResourceDefinition"},
		"apiregistration.k8s.io":       {"APIService"},
		"storage.k8s.io":               {"StorageClass", "CSIDriver", "CSINode", "VolumeAttachment", "VolumeAttributesClass"},
		"scheduling.k8s.io":            {"PriorityClass"},
		"node.k8s.io":                  {"RuntimeClass"},
		"networking.k8s.io":            {"IngressClass", "IPAddress", "ServiceCIDR"},
		"admissionregistration.k8s.io": {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"},
		"certificates.k8s.io":          {"CertificateSigningRequest", "ClusterTrustBundle"},
		"flowcontrol.apiserver.k8s.io": {"FlowSchema", "PriorityLevelConfiguration"},
		"policy":                       {"PodSecurityPolicy"},
		"resource.k8s.io":              {"DeviceClass", "ResourceSlice", "DeviceTaintRule"},
		"internal.apiserver.k8s.io":    {"StorageVersion"},
		"storagemigration.k8s.io":      {"StorageVersionMigration"},
		"authentication.k8s.io":        {"TokenReview", "SelfSubjectReview"},
		"authorization.k8s.io":         {"SubjectAccessReview", "SelfSubjectAccessReview", "SelfSubjectRulesReview"},
	} {
		for _, k := range kinds {
			clusterScoped[schema.GroupKind{Group: group, Kind: k}] = true
		}
	}
}

// scopes tells namespaced kinds from cluster-scoped ones without an API server.
type scopes map[schema.GroupKind]bool

func newScopes(objs []*unstructured.Unstructured) scopes {
	s := scopes{}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		if gvk.Group != "apiextensions.k8s.io" || gvk.Kind != "CustomResourceDefinition" {
			continue
		}
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
		scope, _, _ := unstructured.NestedString(o.Object, "spec", "scope")
		s[schema.GroupKind{Group: group, Kind: kind}] = scope == "Cluster"
	}
	return s
}

func (s scopes) clusterScoped(o *unstructured.Unstructured) bool {
	gk := o.GroupVersionKind().GroupKind()
	if cs, ok := s[gk]; ok {
		return cs
	}
	return clusterScoped[gk]
}

// setNamespaces resolves every object's namespace as Fleet's deployment does: with a target
// namespace, every namespaced object goes there and a cluster-scoped object is an error;
// otherwise namespaced objects without one get the default namespace ("default" if unset), and
// cluster-scoped objects carry none.
// crds are further CRDs whose kinds' scope is known (a chart's crds/, which Helm installs
// outside the release's manifest).
func setNamespaces(objs []*unstructured.Unstructured, opts api.BundleDeploymentOptions, crds ...*unstructured.Unstructured) error {
	s := newScopes(slices.Concat(crds, objs))
	def := releaseNamespace(opts)
	for _, o := range objs {
		if s.clusterScoped(o) {
			if opts.TargetNamespace != "" {
				return fmt.Errorf("cluster-scoped %s %s cannot be deployed to namespace %s: use defaultNamespace, not namespace, in fleet.yaml", o.GetKind(), o.GetName(), opts.TargetNamespace)
			}
			o.SetNamespace("")
			continue
		}
		if opts.TargetNamespace != "" || o.GetNamespace() == "" {
			o.SetNamespace(def)
		}
	}
	return nil
}
