package bundle

import (
	"fmt"
	"maps"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
)

// Cluster is what targeting and templating know of a cluster.
type Cluster struct {
	Name   string
	Labels map[string]string
	// Groups maps the name of every ClusterGroup containing the cluster to that group's labels.
	Groups map[string]map[string]string

	// Namespace, Annotations and TemplateValues are only used by value templating
	// (${ .ClusterNamespace }, ${ .ClusterAnnotations.x }, ${ .ClusterValues.x }).
	Namespace      string
	Annotations    map[string]string
	TemplateValues map[string]any
}

// DefaultGroup is the ClusterGroup a GitRepo without targets deploys to, as in Fleet, where the
// group of that name selects every cluster of its workspace.
const DefaultGroup = "default"

// selector converts s to a labels.Selector; nil stays nil (no criterion), and an empty selector
// matches everything, as in Kubernetes.
func selector(s *api.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return nil, nil
	}
	ls := &metav1.LabelSelector{MatchLabels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key:      e.Key,
			Operator: metav1.LabelSelectorOperator(e.Operator),
			Values:   e.Values,
		})
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("invalid label selector: %w", err)
	}
	return sel, nil
}

// criteria is one target's or restriction's compiled selection. All set criteria must hold;
// with none set it matches nothing, as in Fleet.
type criteria struct {
	name, group        string
	clusterSel, grpSel labels.Selector
	hasAny             bool
}

func newCriteria(name, group string, clusterSel, groupSel *api.LabelSelector) (criteria, error) {
	cs, err := selector(clusterSel)
	if err != nil {
		return criteria{}, fmt.Errorf("clusterSelector: %w", err)
	}
	gs, err := selector(groupSel)
	if err != nil {
		return criteria{}, fmt.Errorf("clusterGroupSelector: %w", err)
	}
	return criteria{
		name: name, group: group, clusterSel: cs, grpSel: gs,
		hasAny: name != "" || group != "" || cs != nil || gs != nil,
	}, nil
}

// matches reports whether c satisfies every criterion through at least one of its groups (or
// with no group, if it is in none).
func (cr criteria) matches(c Cluster) bool {
	if !cr.hasAny {
		return false
	}
	if cr.name != "" && cr.name != c.Name {
		return false
	}
	if cr.clusterSel != nil && !cr.clusterSel.Matches(labels.Set(c.Labels)) {
		return false
	}
	if cr.group == "" && cr.grpSel == nil {
		return true
	}
	for g, gl := range c.Groups {
		if (cr.group == "" || cr.group == g) && (cr.grpSel == nil || cr.grpSel.Matches(labels.Set(gl))) {
			return true
		}
	}
	return false
}

// Matcher holds a bundle's compiled targets, so that matching many clusters parses every
// selector once.
type Matcher struct {
	targets        []api.BundleTarget
	criteria       []criteria
	restrictions   []criteria
	customizations int
}

// NewMatcher compiles targets and restrictions as CombineTargets lays them out. When there are
// restrictions, the first len(targets)-len(restrictions) targets are customizations (from
// fleet.yaml) and the rest are the GitRepo's targets, which is how Fleet tells them apart in
// bundles that carry no explicit marker. Without restrictions every target is a plain target.
func NewMatcher(targets []api.BundleTarget, restrictions []api.BundleTargetRestriction) (*Matcher, error) {
	m, err := compile(targets, restrictions)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// compile builds a Matcher even when a selector is invalid (that entry then matches nothing) and
// returns the first such error.
func compile(targets []api.BundleTarget, restrictions []api.BundleTargetRestriction) (*Matcher, error) {
	m := &Matcher{targets: targets}
	if len(restrictions) > 0 {
		m.customizations = max(len(targets)-len(restrictions), 0)
	}
	var first error
	for i, t := range targets {
		cr, err := newCriteria(t.ClusterName, t.ClusterGroup, t.ClusterSelector, t.ClusterGroupSelector)
		if err != nil && first == nil {
			first = fmt.Errorf("target %d (%s): %w", i, t.Name, err)
		}
		m.criteria = append(m.criteria, cr)
	}
	for i, r := range restrictions {
		cr, err := newCriteria(r.ClusterName, r.ClusterGroup, r.ClusterSelector, r.ClusterGroupSelector)
		if err != nil && first == nil {
			first = fmt.Errorf("target restriction %d (%s): %w", i, r.Name, err)
		}
		m.restrictions = append(m.restrictions, cr)
	}
	return m, first
}

// Match returns the target whose options customise the bundle for c, or false if c does not
// receive the bundle. With Fleet's semantics: c must pass the restrictions (if any) and match a
// GitRepo target; the first customization matching c then replaces that target's options; a
// doNotDeploy on the chosen GitRepo target or customization keeps the bundle off c. The result
// points into the targets NewMatcher was given and must not be modified.
func (m *Matcher) Match(c Cluster) (*api.BundleTarget, bool) {
	if len(m.restrictions) > 0 && !slices.ContainsFunc(m.restrictions, func(r criteria) bool { return r.matches(c) }) {
		return nil, false
	}
	var target *api.BundleTarget
	for i := m.customizations; i < len(m.targets); i++ {
		if m.criteria[i].matches(c) {
			target = &m.targets[i]
			break
		}
	}
	if target == nil || target.DoNotDeploy {
		return nil, false
	}
	for i := range m.customizations {
		if m.criteria[i].matches(c) {
			if m.targets[i].DoNotDeploy {
				return nil, false
			}
			return &m.targets[i], true
		}
	}
	return target, true
}

// Match is NewMatcher(targets, restrictions).Match(c) for a single cluster. A target or
// restriction with an invalid selector matches no cluster; ParseFleetYAML and NewMatcher report
// such selectors as errors.
func Match(targets []api.BundleTarget, restrictions []api.BundleTargetRestriction, c Cluster) (t *api.BundleTarget, ok bool) {
	m, _ := compile(targets, restrictions)
	return m.Match(c)
}

// CombineTargets lays out a bundle's targets as Fleet does when a GitRepo is scanned: the
// fleet.yaml's targets and targetCustomizations first (named target000… when unnamed), then the
// GitRepo's targets, or the fleet.yaml's overrideTargets instead, or the default group when there
// are neither. Every GitRepo target is also a restriction, so customizations can refine but
// never widen where the bundle goes.
func CombineTargets(gitRepoTargets []api.BundleTarget, fy api.FleetYAML) (targets []api.BundleTarget, restrictions []api.BundleTargetRestriction) {
	targets = append(targets, fy.Targets...)
	targets = append(targets, fy.TargetCustomizations...)
	for i := range targets {
		if targets[i].Name == "" {
			targets[i].Name = fmt.Sprintf("target%03d", i)
		}
	}
	git := gitRepoTargets
	if len(fy.OverrideTargets) > 0 {
		git = nil
		for _, t := range fy.OverrideTargets {
			git = append(git, api.BundleTarget{
				Name: t.Name, ClusterName: t.ClusterName, ClusterSelector: t.ClusterSelector,
				ClusterGroup: t.ClusterGroup, ClusterGroupSelector: t.ClusterGroupSelector,
				DoNotDeploy: t.DoNotDeploy,
			})
		}
	}
	if len(git) == 0 {
		git = []api.BundleTarget{{Name: "default", ClusterGroup: DefaultGroup}}
	}
	for _, t := range git {
		targets = append(targets, t)
		restrictions = append(restrictions, api.BundleTargetRestriction{
			Name: t.Name, ClusterName: t.ClusterName, ClusterSelector: t.ClusterSelector,
			ClusterGroup: t.ClusterGroup, ClusterGroupSelector: t.ClusterGroupSelector,
		})
	}
	return targets, restrictions
}

// Merge returns base customised by target's options, with Fleet's rules: scalar fields set in the
// target win ("-" clears a string), Helm values are deep-merged, overlays and valuesFiles are
// appended, compare patches and valuesFrom entries replace those with the same key, booleans are
// or-ed. base and target are not modified; a nil target returns a copy of base.
func Merge(base api.BundleDeploymentOptions, target *api.BundleTarget) api.BundleDeploymentOptions {
	r := copyOptions(base)
	if target == nil {
		return r
	}
	c := copyOptions(target.BundleDeploymentOptions)
	mergeString(&r.DefaultNamespace, c.DefaultNamespace)
	mergeString(&r.TargetNamespace, c.TargetNamespace)
	mergeString(&r.ServiceAccount, c.ServiceAccount)
	if c.Helm != nil {
		if r.Helm == nil {
			r.Helm = &api.HelmOptions{}
		}
		h, ch := r.Helm, c.Helm
		if ch.TimeoutSeconds > 0 {
			h.TimeoutSeconds = ch.TimeoutSeconds
		} else if ch.TimeoutSeconds < 0 {
			h.TimeoutSeconds = 0
		}
		if h.Values == nil {
			h.Values = ch.Values
		} else if ch.Values != nil {
			h.Values = MergeValues(h.Values, ch.Values)
		}
		if h.TemplateValues == nil {
			h.TemplateValues = ch.TemplateValues
		} else {
			maps.Copy(h.TemplateValues, ch.TemplateValues)
		}
		h.ValuesFiles = append(h.ValuesFiles, ch.ValuesFiles...)
		h.ValuesFrom = mergeByKey(h.ValuesFrom, ch.ValuesFrom, valuesFromKey)
		mergeString(&h.Repo, ch.Repo)
		mergeString(&h.Chart, ch.Chart)
		mergeString(&h.Version, ch.Version)
		mergeString(&h.ReleaseName, ch.ReleaseName)
		if ch.MaxHistory > 0 {
			h.MaxHistory = ch.MaxHistory
		}
		h.Force = h.Force || ch.Force
		h.Atomic = h.Atomic || ch.Atomic
		h.TakeOwnership = h.TakeOwnership || ch.TakeOwnership
		h.DisablePreProcess = h.DisablePreProcess || ch.DisablePreProcess
		h.WaitForJobs = h.WaitForJobs || ch.WaitForJobs
		h.DisableDNS = h.DisableDNS || ch.DisableDNS
		h.SkipSchemaValidation = h.SkipSchemaValidation || ch.SkipSchemaValidation
		h.DisableDependencyUpdate = h.DisableDependencyUpdate || ch.DisableDependencyUpdate
	}
	if c.Kustomize != nil {
		if r.Kustomize == nil {
			r.Kustomize = &api.KustomizeOptions{}
		}
		mergeString(&r.Kustomize.Dir, c.Kustomize.Dir)
	}
	if c.Diff != nil {
		if r.Diff == nil {
			r.Diff = &api.DiffOptions{}
		}
		r.Diff.ComparePatches = mergeByKey(r.Diff.ComparePatches, c.Diff.ComparePatches, comparePatchKey)
	}
	if c.YAML != nil {
		if r.YAML == nil {
			r.YAML = &api.YAMLOptions{}
		}
		r.YAML.Overlays = append(r.YAML.Overlays, c.YAML.Overlays...)
	}
	if c.ForceSyncGeneration > 0 {
		r.ForceSyncGeneration = c.ForceSyncGeneration
	}
	r.KeepResources = r.KeepResources || c.KeepResources
	r.DeleteNamespace = r.DeleteNamespace || c.DeleteNamespace
	r.DeleteCRDResources = r.DeleteCRDResources || c.DeleteCRDResources
	if c.CorrectDrift != nil {
		r.CorrectDrift = c.CorrectDrift
	}
	r.IgnoreOptions.Conditions = append(r.IgnoreOptions.Conditions, c.IgnoreOptions.Conditions...)
	r.DownstreamResources = mergeByKey(r.DownstreamResources, c.DownstreamResources, func(d api.DownstreamResource) string {
		return d.Kind + "|" + d.Name
	})
	if len(c.NamespaceLabels) > 0 {
		if r.NamespaceLabels == nil {
			r.NamespaceLabels = map[string]string{}
		}
		maps.Copy(r.NamespaceLabels, c.NamespaceLabels)
	}
	if len(c.NamespaceAnnotations) > 0 {
		if r.NamespaceAnnotations == nil {
			r.NamespaceAnnotations = map[string]string{}
		}
		maps.Copy(r.NamespaceAnnotations, c.NamespaceAnnotations)
	}
	return r
}

// mergeString sets *dst to src when src is set; "-" clears *dst. (Fleet documents "-" but its
// check is unreachable, so there "-" is taken literally.)
func mergeString(dst *string, src string) {
	switch src {
	case "":
	case "-":
		*dst = ""
	default:
		*dst = src
	}
}

// mergeByKey replaces the entries of base whose key an entry of custom has, in place, and
// appends the rest of custom. Entries with an empty key are always appended.
func mergeByKey[T any](base, custom []T, key func(T) string) []T {
	if len(custom) == 0 {
		return base
	}
	result := slices.Clone(base)
	index := map[string]int{}
	for i, b := range result {
		if k := key(b); k != "" {
			index[k] = i
		}
	}
	for _, c := range custom {
		k := key(c)
		if i, ok := index[k]; ok && k != "" {
			result[i] = c
			continue
		}
		result = append(result, c)
		if k != "" {
			index[k] = len(result) - 1
		}
	}
	return result
}

func valuesFromKey(v api.ValuesFrom) string {
	switch {
	case v.ConfigMapKeyRef != nil:
		return "configmap|" + v.ConfigMapKeyRef.Namespace + "|" + v.ConfigMapKeyRef.Name + "|" + v.ConfigMapKeyRef.Key
	case v.SecretKeyRef != nil:
		return "secret|" + v.SecretKeyRef.Namespace + "|" + v.SecretKeyRef.Name + "|" + v.SecretKeyRef.Key
	}
	return ""
}

func comparePatchKey(p api.ComparePatch) string {
	return p.APIVersion + "|" + p.Kind + "|" + p.Namespace + "|" + p.Name
}

// MergeValues deep-merges overlay over base into a new map: where both hold a map they are merged,
// otherwise overlay's value wins. Neither argument is modified.
func MergeValues(base, overlay map[string]any) map[string]any {
	result := make(map[string]any, len(base)+len(overlay))
	for k, v := range base {
		result[k] = v
	}
	for k, v := range overlay {
		bm, bok := result[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			v = MergeValues(bm, om)
		}
		result[k] = v
	}
	return result
}

// copyOptions deep-copies o so that merging never aliases maps or slices of its inputs.
func copyOptions(o api.BundleDeploymentOptions) api.BundleDeploymentOptions {
	r := o
	if o.Kustomize != nil {
		k := *o.Kustomize
		r.Kustomize = &k
	}
	if o.Helm != nil {
		h := *o.Helm
		if o.Helm.Values != nil {
			h.Values = copyValue(o.Helm.Values).(map[string]any)
		}
		h.TemplateValues = maps.Clone(o.Helm.TemplateValues)
		h.ValuesFiles = slices.Clone(o.Helm.ValuesFiles)
		h.ValuesFrom = slices.Clone(o.Helm.ValuesFrom)
		r.Helm = &h
	}
	if o.YAML != nil {
		y := api.YAMLOptions{Overlays: slices.Clone(o.YAML.Overlays)}
		r.YAML = &y
	}
	if o.Diff != nil {
		d := api.DiffOptions{ComparePatches: slices.Clone(o.Diff.ComparePatches)}
		r.Diff = &d
	}
	if o.CorrectDrift != nil {
		cd := *o.CorrectDrift
		r.CorrectDrift = &cd
	}
	r.IgnoreOptions.Conditions = slices.Clone(o.IgnoreOptions.Conditions)
	r.NamespaceLabels = maps.Clone(o.NamespaceLabels)
	r.NamespaceAnnotations = maps.Clone(o.NamespaceAnnotations)
	r.DownstreamResources = slices.Clone(o.DownstreamResources)
	return r
}

// copyValue deep-copies a JSON-like value (maps, slices and scalars).
func copyValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = copyValue(e)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			s[i] = copyValue(e)
		}
		return s
	}
	return v
}
