package api

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// This file holds the types of a bundle's deployment options and targeting, spelled exactly as
// Fleet spells them (fleet.cattle.io/v1alpha1), so that a Fleet fleet.yaml, Bundle or GitRepo
// decodes unchanged. Only the JSON shape is Fleet's; the behaviour lives in internal/bundle.

// BundleDeploymentOptions say how a bundle is deployed to a cluster. A fleet.yaml carries them at
// its top level, and every target may carry more that are merged over them.
type BundleDeploymentOptions struct {
	// DefaultNamespace is the namespace of objects that name none. It does not stop objects from
	// naming another namespace.
	DefaultNamespace string `json:"defaultNamespace,omitempty"`
	// TargetNamespace, if set, puts every namespaced object in that namespace; a cluster-scoped
	// object then is an error, as in Fleet.
	TargetNamespace string `json:"namespace,omitempty"`

	Kustomize *KustomizeOptions `json:"kustomize,omitempty"`
	Helm      *HelmOptions      `json:"helm,omitempty"`
	YAML      *YAMLOptions      `json:"yaml,omitempty"`
	Diff      *DiffOptions      `json:"diff,omitempty"`

	// ServiceAccount the agent deploys as, instead of its own identity.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// ForceSyncGeneration forces a redeployment whenever it changes.
	ForceSyncGeneration int64 `json:"forceSyncGeneration,omitempty"`
	// KeepResources leaves the deployed objects in place when the bundle is removed.
	KeepResources bool `json:"keepResources,omitempty"`
	// DeleteNamespace deletes the namespace created for the bundle when it is removed.
	DeleteNamespace bool `json:"deleteNamespace,omitempty"`
	// DeleteCRDResources deletes the bundle's CRDs, and so all their objects, when it is removed.
	DeleteCRDResources bool `json:"deleteCRDResources,omitempty"`

	// IgnoreOptions lists status conditions that do not make an object unready.
	IgnoreOptions IgnoreOptions `json:"ignore,omitzero"`
	CorrectDrift  *CorrectDrift `json:"correctDrift,omitempty"`

	// NamespaceLabels and NamespaceAnnotations are set on the namespace created for the bundle.
	NamespaceLabels      map[string]string `json:"namespaceLabels,omitempty"`
	NamespaceAnnotations map[string]string `json:"namespaceAnnotations,omitempty"`

	// DownstreamResources are ConfigMaps and Secrets copied from the bundle's workspace into the
	// cluster before the bundle is deployed.
	DownstreamResources []DownstreamResource `json:"downstreamResources,omitempty"`
}

// KustomizeOptions point at the directory holding the kustomization.yaml to build.
type KustomizeOptions struct {
	// Dir is the directory, relative to the bundle, holding the kustomization.yaml.
	Dir string `json:"dir,omitempty"`
}

// HelmOptions describe the chart of a Helm bundle and how it is installed. ReleaseName applies
// to every kind of bundle.
type HelmOptions struct {
	// Chart is a path inside the bundle, a chart name in Repo, an oci:// reference or an
	// http(s) URL of a chart archive.
	Chart string `json:"chart,omitempty"`
	// Repo is the URL of an HTTP(S) chart repository serving an index.yaml.
	Repo string `json:"repo,omitempty"`
	// ReleaseName overrides the release name derived from the bundle's name.
	ReleaseName string `json:"releaseName,omitempty"`
	// Version is a chart version or a semver constraint.
	Version string `json:"version,omitempty"`
	// TimeoutSeconds bounds how long an install or upgrade may take.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
	// Values are passed to the chart. Strings may use ${ } templates that see the cluster.
	Values map[string]any `json:"values,omitempty"`
	// TemplateValues are templates whose rendered, YAML-decoded results are set as top-level values.
	TemplateValues map[string]string `json:"templateValues,omitempty"`
	// ValuesFiles are files in the bundle whose values are merged over Values.
	ValuesFiles []string `json:"valuesFiles,omitempty"`
	// ValuesFrom loads values from ConfigMaps and Secrets in the downstream cluster.
	ValuesFrom []ValuesFrom `json:"valuesFrom,omitempty"`

	// Force replaces objects that cannot be updated in place.
	Force bool `json:"force,omitempty"`
	// TakeOwnership adopts existing objects that belong to no release.
	TakeOwnership bool `json:"takeOwnership,omitempty"`
	// MaxHistory bounds the release revisions kept.
	MaxHistory int `json:"maxHistory,omitempty"`
	// WaitForJobs counts the chart's Jobs as ready only once they completed.
	WaitForJobs bool `json:"waitForJobs,omitempty"`
	// Atomic rolls a failed upgrade back.
	Atomic bool `json:"atomic,omitempty"`
	// DisablePreProcess passes ${ } in values through unrendered.
	DisablePreProcess bool `json:"disablePreProcess,omitempty"`
	// DisableDNS turns off DNS lookups in the chart's templates.
	DisableDNS bool `json:"disableDNS,omitempty"`
	// SkipSchemaValidation ignores the chart's values.schema.json.
	SkipSchemaValidation bool `json:"skipSchemaValidation,omitempty"`
	// DisableDependencyUpdate builds the chart with the dependencies it ships instead of
	// downloading them.
	DisableDependencyUpdate bool `json:"disableDependencyUpdate,omitempty"`
}

// ValuesFrom names a ConfigMap or Secret key holding Helm values.
type ValuesFrom struct {
	// ConfigMapKeyRef names a ConfigMap key holding values.
	ConfigMapKeyRef *KeySelector `json:"configMapKeyRef,omitempty"`
	// SecretKeyRef names a Secret key holding values.
	SecretKeyRef *KeySelector `json:"secretKeyRef,omitempty"`
}

// KeySelector selects a key of a ConfigMap or Secret; Key defaults to values.yaml.
type KeySelector struct {
	// Name is the ConfigMap's or Secret's name.
	Name string `json:"name"`
	// Namespace is its namespace in the cluster.
	Namespace string `json:"namespace,omitempty"`
	// Key is the key holding the values; default values.yaml.
	Key string `json:"key,omitempty"`
}

// YAMLOptions name the overlays/<name>/ directories applied to a raw-YAML bundle, in order.
type YAMLOptions struct {
	// Overlays are the names of the overlays/<name>/ directories to apply, in order.
	Overlays []string `json:"overlays,omitempty"`
}

// DiffOptions stop runtime-amended fields from counting as drift.
type DiffOptions struct {
	// ComparePatches select objects and the fields of them that drift detection ignores.
	ComparePatches []ComparePatch `json:"comparePatches,omitempty"`
}

// ComparePatch selects objects and the fields of them to leave out of drift detection.
type ComparePatch struct {
	// APIVersion, Kind, Name and Namespace select the objects; empty matches any.
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
	Name       string `json:"name,omitempty"`
	Namespace  string `json:"namespace,omitempty"`
	// Operations are JSON patch operations naming the fields to ignore, usually remove.
	Operations []Operation `json:"operations,omitempty"`
	// JSONPointers are the fields to ignore, as JSON pointers such as /spec/replicas.
	JSONPointers []string `json:"jsonPointers,omitempty"`
}

// Operation is a JSON patch operation, usually "remove".
type Operation struct {
	// Op is the JSON patch operation; remove ignores the field at Path.
	Op string `json:"op,omitempty"`
	// Path is the field's JSON pointer.
	Path string `json:"path,omitempty"`
	// Value is the operation's value, for operations that take one.
	Value string `json:"value,omitempty"`
}

// CorrectDrift says whether the agent undoes changes made in the cluster.
type CorrectDrift struct {
	// Enabled makes the agent apply the objects again when they were changed in the cluster.
	Enabled bool `json:"enabled,omitempty"`
	// Force deletes and recreates objects that cannot be updated in place.
	Force bool `json:"force,omitempty"`
	// KeepFailHistory keeps the release history of failed corrections, as in Fleet.
	KeepFailHistory bool `json:"keepFailHistory,omitempty"`
}

// IgnoreOptions list status conditions (each a map of condition fields to match) to ignore.
type IgnoreOptions struct {
	// Conditions are status conditions, each a map of condition fields to the values to match,
	// that do not make an object unready.
	Conditions []map[string]string `json:"conditions,omitempty"`
}

// DownstreamResource names a ConfigMap or Secret to copy to the cluster.
type DownstreamResource struct {
	// Kind is ConfigMap or Secret.
	Kind string `json:"kind,omitempty"`
	// Name is the object's name, in the bundle's namespace on the server.
	Name string `json:"name,omitempty"`
}

// LabelSelector has the shape of Kubernetes' metav1.LabelSelector. A nil selector selects
// nothing; an empty one selects everything.
type LabelSelector struct {
	// MatchLabels are labels that must all be set, to these values.
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
	// MatchExpressions are further requirements, all of which must hold.
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one expression of a LabelSelector: Operator is In, NotIn, Exists
// or DoesNotExist.
type LabelSelectorRequirement struct {
	// Key is the label key.
	Key string `json:"key"`
	// Operator is In, NotIn, Exists or DoesNotExist.
	Operator string `json:"operator"`
	// Values are the values for In and NotIn; empty for Exists and DoesNotExist.
	Values []string `json:"values,omitempty"`
}

// BundleTarget selects clusters and carries the options merged for them. All of a target's
// criteria must hold; a target without criteria matches no cluster.
type BundleTarget struct {
	// Name is for display; targets without one are named target000, target001, ….
	Name string `json:"name,omitempty"`
	// ClusterName matches the cluster of this name.
	ClusterName string `json:"clusterName,omitempty"`
	// ClusterSelector matches clusters by their labels.
	ClusterSelector *LabelSelector `json:"clusterSelector,omitempty"`
	// ClusterGroup matches the clusters of the ClusterGroup of this name.
	ClusterGroup string `json:"clusterGroup,omitempty"`
	// ClusterGroupSelector matches the clusters of the ClusterGroups selected by their labels.
	ClusterGroupSelector *LabelSelector `json:"clusterGroupSelector,omitempty"`
	// DoNotDeploy keeps the bundle off the clusters this target matches.
	DoNotDeploy bool `json:"doNotDeploy,omitempty"`

	BundleDeploymentOptions
}

// BundleTargetRestriction is an allow list entry: when a bundle has restrictions (it came from a
// GitRepo), only clusters matching one of them may receive it.
type BundleTargetRestriction struct {
	// Name is for display.
	Name string `json:"name,omitempty"`
	// ClusterName matches the cluster of this name.
	ClusterName string `json:"clusterName,omitempty"`
	// ClusterSelector matches clusters by their labels.
	ClusterSelector *LabelSelector `json:"clusterSelector,omitempty"`
	// ClusterGroup matches the clusters of the ClusterGroup of this name.
	ClusterGroup string `json:"clusterGroup,omitempty"`
	// ClusterGroupSelector matches the clusters of the ClusterGroups selected by their labels.
	ClusterGroupSelector *LabelSelector `json:"clusterGroupSelector,omitempty"`
}

// GitTarget is a GitRepo target, and an entry of a fleet.yaml's overrideTargets.
type GitTarget struct {
	// Name is for display.
	Name string `json:"name,omitempty"`
	// ClusterName matches the cluster of this name.
	ClusterName string `json:"clusterName,omitempty"`
	// ClusterSelector matches clusters by their labels.
	ClusterSelector *LabelSelector `json:"clusterSelector,omitempty"`
	// ClusterGroup matches the clusters of the ClusterGroup of this name.
	ClusterGroup string `json:"clusterGroup,omitempty"`
	// ClusterGroupSelector matches the clusters of the ClusterGroups selected by their labels.
	ClusterGroupSelector *LabelSelector `json:"clusterGroupSelector,omitempty"`
	// DoNotDeploy keeps the bundles off the clusters this target matches.
	DoNotDeploy bool `json:"doNotDeploy,omitempty"`
}

// BundleRef names a bundle this one depends on, by name or by labels.
type BundleRef struct {
	// Name is the bundle depended on, in the same namespace.
	Name string `json:"name,omitempty"`
	// Selector selects the bundles depended on by their labels.
	Selector *LabelSelector `json:"selector,omitempty"`
	// AcceptedStates are the dependency's states that count as ready; default Ready.
	AcceptedStates []string `json:"acceptedStates,omitempty"`
}

// RolloutStrategy limits how many clusters, and partitions of them, may be unavailable while a
// bundle change rolls out.
type RolloutStrategy struct {
	// MaxUnavailable clusters, a count or a percentage; default 100%.
	MaxUnavailable *IntOrString `json:"maxUnavailable,omitempty"`
	// MaxUnavailablePartitions, a count or a percentage; default 0.
	MaxUnavailablePartitions *IntOrString `json:"maxUnavailablePartitions,omitempty"`
	// AutoPartitionSize splits clusters no partition names into partitions; default 25%.
	AutoPartitionSize *IntOrString `json:"autoPartitionSize,omitempty"`
	// Partitions are sets of clusters rolled out one after another; clusters no partition names
	// are split by AutoPartitionSize.
	Partitions []Partition `json:"partitions,omitempty"`
}

// Partition is a set of clusters rolled out together.
type Partition struct {
	// Name is for display.
	Name string `json:"name,omitempty"`
	// MaxUnavailable clusters of this partition; default 10%.
	MaxUnavailable *IntOrString `json:"maxUnavailable,omitempty"`
	// ClusterName matches the cluster of this name.
	ClusterName string `json:"clusterName,omitempty"`
	// ClusterSelector matches clusters by their labels.
	ClusterSelector *LabelSelector `json:"clusterSelector,omitempty"`
	// ClusterGroup matches the clusters of the ClusterGroup of this name.
	ClusterGroup string `json:"clusterGroup,omitempty"`
	// ClusterGroupSelector matches the clusters of the ClusterGroups selected by their labels.
	ClusterGroupSelector *LabelSelector `json:"clusterGroupSelector,omitempty"`
}

// FleetYAML is the whole of a fleet.yaml. Every directory holding one is a bundle.
type FleetYAML struct {
	// Name overrides the bundle name derived from the GitRepo and the path.
	Name string `json:"name,omitempty"`
	// Labels are set on the bundle, for dependsOn selectors.
	Labels map[string]string `json:"labels,omitempty"`

	BundleDeploymentOptions

	Paused          bool             `json:"paused,omitempty"`
	RolloutStrategy *RolloutStrategy `json:"rolloutStrategy,omitempty"`
	DependsOn       []BundleRef      `json:"dependsOn,omitempty"`

	// Targets are accepted as Fleet accepts them (its fleet.yaml inlines a BundleSpec); they act
	// as target customizations placed before TargetCustomizations.
	Targets []BundleTarget `json:"targets,omitempty"`
	// TargetCustomizations are tried in order; the first that matches a cluster customizes the
	// bundle for it. They never make a cluster receive a bundle its GitRepo does not target.
	TargetCustomizations []BundleTarget `json:"targetCustomizations,omitempty"`
	// OverrideTargets replace the GitRepo's targets for this bundle.
	OverrideTargets []GitTarget `json:"overrideTargets,omitempty"`
	// ImageScans are accepted so that Fleet repositories decode; Flotilla does not scan images.
	ImageScans []json.RawMessage `json:"imageScans,omitempty"`
}

// IntOrString is a count ("3") or a percentage ("25%"). It decodes from a JSON number or string
// and encodes a count as a number, as Kubernetes' intstr does.
type IntOrString string

// FromInt returns the IntOrString for a count.
func FromInt(n int) IntOrString { return IntOrString(strconv.Itoa(n)) }

// MarshalJSON writes a count as a number and anything else as a string.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if n, err := strconv.Atoi(string(v)); err == nil {
		return []byte(strconv.Itoa(n)), nil
	}
	return json.Marshal(string(v))
}

// UnmarshalJSON accepts an integer or a string.
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*v = IntOrString(s)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("int or string: %w", err)
	}
	*v = IntOrString(strconv.FormatInt(n, 10))
	return nil
}

// Scaled resolves v against total: a count is returned as is, a percentage is that share of
// total, rounded up or down.
func (v IntOrString) Scaled(total int, roundUp bool) (int, error) {
	s := string(v)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil {
			return 0, fmt.Errorf("invalid percentage %q", s)
		}
		f := float64(n) * float64(total) / 100
		if roundUp {
			return int(math.Ceil(f)), nil
		}
		return int(math.Floor(f)), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("invalid count or percentage %q", s)
	}
	return n, nil
}

// Bounds of the deployment options the API accepts. A Helm timeout longer than a day is
// certainly a mistake, and one of 2^62 seconds overflows a time.Duration.
const (
	MaxHelmTimeoutSeconds = 24 * 60 * 60
)

// Validate reports the options no deployment can honour: negative counts and generations,
// and timeouts out of range. Fields are named under prefix ("spec", "spec.targets[0]").
func (o *BundleDeploymentOptions) Validate(prefix string) []StatusCause {
	var causes []StatusCause
	add := func(f, m string) { causes = append(causes, StatusCause{Field: prefix + "." + f, Message: m}) }
	if o.ForceSyncGeneration < 0 {
		add("forceSyncGeneration", fmt.Sprintf("must not be negative, not %d", o.ForceSyncGeneration))
	}
	if h := o.Helm; h != nil {
		if h.TimeoutSeconds < 0 || h.TimeoutSeconds > MaxHelmTimeoutSeconds {
			add("helm.timeoutSeconds", fmt.Sprintf("must be from 0 to %d seconds, not %d", MaxHelmTimeoutSeconds, h.TimeoutSeconds))
		}
		if h.MaxHistory < 0 {
			add("helm.maxHistory", fmt.Sprintf("must not be negative, not %d", h.MaxHistory))
		}
	}
	return causes
}

// Validate reports rollout limits that are not counts or percentages, or are out of range:
// maxUnavailable and maxUnavailablePartitions are at least 0 (or 0%–100%), and
// autoPartitionSize at least 1 (or 1%–100%), since a partition of no clusters never ends.
func (r *RolloutStrategy) Validate(prefix string) []StatusCause {
	var causes []StatusCause
	check := func(f string, v *IntOrString, least int) {
		if v == nil {
			return
		}
		if err := v.Validate(least); err != nil {
			causes = append(causes, StatusCause{Field: prefix + "." + f, Message: err.Error()})
		}
	}
	check("maxUnavailable", r.MaxUnavailable, 0)
	check("maxUnavailablePartitions", r.MaxUnavailablePartitions, 0)
	check("autoPartitionSize", r.AutoPartitionSize, 1)
	for i, p := range r.Partitions {
		check(fmt.Sprintf("partitions[%d].maxUnavailable", i), p.MaxUnavailable, 0)
	}
	return causes
}

// Validate reports whether v is a count of at least least, or a percentage from least% to
// 100%, written in plain digits (no sign, no spaces).
func (v IntOrString) Validate(least int) error {
	s := string(v)
	digits, pct := strings.CutSuffix(s, "%")
	n, err := strconv.Atoi(digits)
	plain := digits != "" && strings.Trim(digits, "0123456789") == ""
	switch {
	case err == nil && pct && (n < least || n > 100):
		return fmt.Errorf("must be a percentage from %d%% to 100%%, not %q", least, s)
	case err == nil && !pct && n < least:
		return fmt.Errorf("must be a count of at least %d, not %s", least, s)
	case err != nil || !plain:
		return fmt.Errorf("must be a count or a percentage such as 3 or 25%%, not %q", s)
	}
	return nil
}
