package agent

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle"
)

// kubeCluster answers what the agent asks of its cluster besides applying: who it is,
// what it is made of, and Helm values kept in it.
type kubeCluster struct {
	kube    kubernetes.Interface
	version string // the agent's
}

// ClientID is the UID of the kube-system namespace: stable for the cluster's life, the same
// whichever credentials read it, and new when the cluster is rebuilt.
func (k *kubeCluster) ClientID(ctx context.Context) (string, error) {
	ns, err := k.kube.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading the kube-system namespace for the cluster's identity: %w", err)
	}
	return string(ns.UID), nil
}

// Inventory summarises the cluster: version, nodes, architectures and allocatable resources.
func (k *kubeCluster) Inventory(ctx context.Context) (*api.ClusterInventory, error) {
	v, err := k.kube.Discovery().ServerVersion()
	if err != nil {
		return nil, fmt.Errorf("reading the Kubernetes version: %w", err)
	}
	var nodes []corev1.Node
	opts := metav1.ListOptions{Limit: 500}
	for {
		l, err := k.kube.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing nodes: %w", err)
		}
		nodes = append(nodes, l.Items...)
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	inv := summarizeNodes(nodes)
	inv.KubernetesVersion = v.GitVersion
	inv.AgentVersion = k.version
	return inv, nil
}

// summarizeNodes counts nodes, their architectures and allocatable CPU and memory.
func summarizeNodes(nodes []corev1.Node) *api.ClusterInventory {
	inv := &api.ClusterInventory{NodeCount: len(nodes)}
	var cpu, mem resource.Quantity
	for _, n := range nodes {
		arch := n.Status.NodeInfo.Architecture
		if arch == "" {
			arch = n.Labels[corev1.LabelArchStable]
		}
		if arch != "" && !slices.Contains(inv.Architectures, arch) {
			inv.Architectures = append(inv.Architectures, arch)
		}
		if q, ok := n.Status.Allocatable[corev1.ResourceCPU]; ok {
			cpu.Add(q)
		}
		if q, ok := n.Status.Allocatable[corev1.ResourceMemory]; ok {
			mem.Add(q)
		}
	}
	slices.Sort(inv.Architectures)
	switch len(inv.Architectures) {
	case 0:
	case 1:
		inv.Architecture = inv.Architectures[0]
	default:
		inv.Architecture = "mixed"
	}
	if len(nodes) > 0 {
		inv.AllocatableCPU = cpu.String()
		inv.AllocatableMemory = mem.String()
	}
	return inv
}

// ValuesFrom reads Helm values from ConfigMaps and Secrets of the cluster, in order, each
// merged over the ones before, as Fleet's helm.valuesFrom does. A reference without a
// namespace reads from ns, and one without a key reads values.yaml.
func (k *kubeCluster) ValuesFrom(ctx context.Context, refs []api.ValuesFrom, ns string) (map[string]any, error) {
	var values map[string]any
	for _, r := range refs {
		var (
			data []byte
			what string
		)
		switch {
		case r.ConfigMapKeyRef != nil:
			ref := withDefaults(r.ConfigMapKeyRef, ns)
			what = fmt.Sprintf("configmap %s/%s key %s", ref.Namespace, ref.Name, ref.Key)
			cm, err := k.kube.CoreV1().ConfigMaps(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("helm valuesFrom %s: %w", what, err)
			}
			data = []byte(cm.Data[ref.Key])
		case r.SecretKeyRef != nil:
			ref := withDefaults(r.SecretKeyRef, ns)
			what = fmt.Sprintf("secret %s/%s key %s", ref.Namespace, ref.Name, ref.Key)
			sec, err := k.kube.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("helm valuesFrom %s: %w", what, err)
			}
			data = sec.Data[ref.Key]
		default:
			continue
		}
		var v map[string]any
		if err := yaml.Unmarshal(data, &v); err != nil {
			// Not the content: values read from a Secret must not reach logs or the server.
			return nil, fmt.Errorf("helm valuesFrom %s: not a YAML map of values", what)
		}
		values = bundle.MergeValues(values, v)
	}
	return values, nil
}

func withDefaults(r *api.KeySelector, ns string) api.KeySelector {
	out := *r
	if out.Namespace == "" {
		out.Namespace = ns
	}
	if out.Key == "" {
		out.Key = "values.yaml"
	}
	return out
}
