package bundle

import (
	"encoding/json"
	"reflect"
	"testing"

	"flotilla.dev/api"
)

func sel(kv ...string) *api.LabelSelector {
	s := &api.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func TestMatch(t *testing.T) {
	prod := Cluster{Name: "p1", Labels: map[string]string{"env": "prod"}, Groups: map[string]map[string]string{"default": {}, "eu": {"region": "eu"}}}
	dev := Cluster{Name: "d1", Labels: map[string]string{"env": "dev"}, Groups: map[string]map[string]string{"default": {}}}
	lone := Cluster{Name: "l1", Labels: map[string]string{"env": "prod"}}

	defaultTarget := api.BundleTarget{Name: "default", ClusterGroup: "default"}
	defaultRestriction := api.BundleTargetRestriction{Name: "default", ClusterGroup: "default"}

	tests := []struct {
		name         string
		targets      []api.BundleTarget
		restrictions []api.BundleTargetRestriction
		cluster      Cluster
		want         string // name of the matched target, "" for no match
	}{
		{"no targets", nil, nil, prod, ""},
		{"target without criteria matches nothing", []api.BundleTarget{{Name: "empty"}}, nil, prod, ""},
		{"empty selector matches everything", []api.BundleTarget{{Name: "all", ClusterSelector: &api.LabelSelector{}}}, nil, lone, "all"},
		{"first match wins without restrictions", []api.BundleTarget{
			{Name: "a", ClusterSelector: sel("env", "prod")},
			{Name: "b", ClusterSelector: sel("env", "prod")},
		}, nil, prod, "a"},
		{"cluster name", []api.BundleTarget{{Name: "n", ClusterName: "d1"}}, nil, dev, "n"},
		{"cluster name mismatch", []api.BundleTarget{{Name: "n", ClusterName: "d1"}}, nil, prod, ""},
		{"group by name", []api.BundleTarget{{Name: "g", ClusterGroup: "eu"}}, nil, prod, "g"},
		{"group by selector", []api.BundleTarget{{Name: "g", ClusterGroupSelector: sel("region", "eu")}}, nil, prod, "g"},
		{"no groups never matches a group", []api.BundleTarget{{Name: "g", ClusterGroup: "eu"}}, nil, lone, ""},
		{"all criteria must hold", []api.BundleTarget{{Name: "g", ClusterGroup: "eu", ClusterSelector: sel("env", "dev")}}, nil, prod, ""},
		{"group name and group selector hold through the same group", []api.BundleTarget{
			{Name: "g", ClusterGroup: "default", ClusterGroupSelector: sel("region", "eu")},
		}, nil, prod, ""},
		{"doNotDeploy plain target", []api.BundleTarget{{Name: "x", ClusterSelector: sel("env", "prod"), DoNotDeploy: true}}, nil, prod, ""},
		{"customization refines the GitRepo target",
			[]api.BundleTarget{{Name: "prod", ClusterSelector: sel("env", "prod")}, defaultTarget},
			[]api.BundleTargetRestriction{defaultRestriction}, prod, "prod"},
		{"no customization matches: the GitRepo target",
			[]api.BundleTarget{{Name: "prod", ClusterSelector: sel("env", "prod")}, defaultTarget},
			[]api.BundleTargetRestriction{defaultRestriction}, dev, "default"},
		{"customization cannot widen the GitRepo's targets",
			[]api.BundleTarget{{Name: "prod", ClusterSelector: sel("env", "prod")}, defaultTarget},
			[]api.BundleTargetRestriction{defaultRestriction}, lone, ""},
		{"first matching customization wins",
			[]api.BundleTarget{{Name: "c1", ClusterSelector: sel("env", "prod")}, {Name: "c2", ClusterName: "p1"}, defaultTarget},
			[]api.BundleTargetRestriction{defaultRestriction}, prod, "c1"},
		{"doNotDeploy customization",
			[]api.BundleTarget{{Name: "c1", ClusterSelector: sel("env", "prod"), DoNotDeploy: true}, {Name: "c2", ClusterName: "p1"}, defaultTarget},
			[]api.BundleTargetRestriction{defaultRestriction}, prod, ""},
		{"doNotDeploy GitRepo target beats a customization",
			[]api.BundleTarget{{Name: "c1", ClusterSelector: sel("env", "prod")}, {Name: "git", ClusterGroup: "default", DoNotDeploy: true}},
			[]api.BundleTargetRestriction{defaultRestriction}, prod, ""},
		{"second GitRepo target",
			[]api.BundleTarget{{Name: "git-eu", ClusterGroup: "eu"}, {Name: "git-dev", ClusterSelector: sel("env", "dev")}},
			[]api.BundleTargetRestriction{{ClusterGroup: "eu"}, {ClusterSelector: sel("env", "dev")}}, dev, "git-dev"},
		{"invalid selector matches nothing",
			[]api.BundleTarget{{Name: "bad", ClusterSelector: &api.LabelSelector{MatchExpressions: []api.LabelSelectorRequirement{{Key: "env", Operator: "Near"}}}}},
			nil, prod, ""},
		{"match expressions",
			[]api.BundleTarget{{Name: "expr", ClusterSelector: &api.LabelSelector{MatchExpressions: []api.LabelSelectorRequirement{
				{Key: "env", Operator: "In", Values: []string{"prod", "staging"}},
				{Key: "gpu", Operator: "DoesNotExist"},
			}}}}, nil, prod, "expr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Match(tt.targets, tt.restrictions, tt.cluster)
			gotName := ""
			if ok {
				gotName = got.Name
			}
			if gotName != tt.want || ok != (tt.want != "") {
				t.Errorf("Match() = %q, %v; want %q", gotName, ok, tt.want)
			}
		})
	}
}

func TestNewMatcherInvalidSelector(t *testing.T) {
	_, err := NewMatcher([]api.BundleTarget{{Name: "bad", ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"bad key!": "x"}}}}, nil)
	if err == nil {
		t.Fatal("NewMatcher accepted an invalid selector")
	}
}

func TestCombineTargets(t *testing.T) {
	git := []api.BundleTarget{{Name: "edge", ClusterGroup: "edge"}}
	tests := []struct {
		name             string
		git              []api.BundleTarget
		fy               api.FleetYAML
		wantTargets      []string // names
		wantRestrictions []string
	}{
		{"nothing: the default group", nil, api.FleetYAML{}, []string{"default"}, []string{"default"}},
		{"GitRepo targets", git, api.FleetYAML{}, []string{"edge"}, []string{"edge"}},
		{"customizations first, named by position", git, api.FleetYAML{
			TargetCustomizations: []api.BundleTarget{{ClusterName: "a"}, {Name: "named", ClusterName: "b"}},
		}, []string{"target000", "named", "edge"}, []string{"edge"}},
		{"fleet.yaml targets before customizations", nil, api.FleetYAML{
			Targets:              []api.BundleTarget{{ClusterName: "a"}},
			TargetCustomizations: []api.BundleTarget{{ClusterName: "b"}},
		}, []string{"target000", "target001", "default"}, []string{"default"}},
		{"overrideTargets replace the GitRepo's", git, api.FleetYAML{
			OverrideTargets: []api.GitTarget{{Name: "o1", ClusterName: "x"}, {Name: "o2", ClusterGroup: "g"}},
		}, []string{"o1", "o2"}, []string{"o1", "o2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			targets, restrictions := CombineTargets(tt.git, tt.fy)
			var gotT, gotR []string
			for _, x := range targets {
				gotT = append(gotT, x.Name)
			}
			for _, x := range restrictions {
				gotR = append(gotR, x.Name)
			}
			if !reflect.DeepEqual(gotT, tt.wantTargets) || !reflect.DeepEqual(gotR, tt.wantRestrictions) {
				t.Errorf("CombineTargets() = targets %v, restrictions %v; want %v, %v", gotT, gotR, tt.wantTargets, tt.wantRestrictions)
			}
		})
	}
	// Restrictions carry the GitRepo targets' criteria.
	_, r := CombineTargets(git, api.FleetYAML{})
	if r[0].ClusterGroup != "edge" {
		t.Errorf("restriction = %+v, want clusterGroup edge", r[0])
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMerge(t *testing.T) {
	base := api.BundleDeploymentOptions{
		DefaultNamespace: "base-ns",
		ServiceAccount:   "sa",
		Helm: &api.HelmOptions{
			Chart:          "chart",
			Version:        "1.0.0",
			TimeoutSeconds: 30,
			Values:         map[string]any{"a": 1.0, "nested": map[string]any{"x": "base", "y": "base"}, "list": []any{"a"}},
			ValuesFiles:    []string{"base.yaml"},
			ValuesFrom:     []api.ValuesFrom{{ConfigMapKeyRef: &api.KeySelector{Name: "cm", Key: "k"}}},
		},
		YAML:            &api.YAMLOptions{Overlays: []string{"one"}},
		Diff:            &api.DiffOptions{ComparePatches: []api.ComparePatch{{Kind: "Service", Name: "s", JSONPointers: []string{"/a"}}}},
		NamespaceLabels: map[string]string{"team": "a"},
	}
	tests := []struct {
		name   string
		target *api.BundleTarget
		want   api.BundleDeploymentOptions
	}{
		{"nil target copies base", nil, base},
		{"empty target changes nothing", &api.BundleTarget{Name: "t"}, base},
		{"strings override, dash clears", &api.BundleTarget{BundleDeploymentOptions: api.BundleDeploymentOptions{
			DefaultNamespace: "-", TargetNamespace: "forced", ServiceAccount: "other",
		}}, func() api.BundleDeploymentOptions {
			w := copyOptions(base)
			w.DefaultNamespace, w.TargetNamespace, w.ServiceAccount = "", "forced", "other"
			return w
		}()},
		{"helm values deep-merged, lists replaced, files appended, valuesFrom by key", &api.BundleTarget{BundleDeploymentOptions: api.BundleDeploymentOptions{
			Helm: &api.HelmOptions{
				Version:        "2.0.0",
				TimeoutSeconds: -1,
				Force:          true,
				Values:         map[string]any{"b": 2.0, "nested": map[string]any{"y": "target"}, "list": []any{"b"}},
				ValuesFiles:    []string{"prod.yaml"},
				ValuesFrom: []api.ValuesFrom{
					{ConfigMapKeyRef: &api.KeySelector{Name: "cm", Key: "k", Namespace: ""}},
					{SecretKeyRef: &api.KeySelector{Name: "s"}},
				},
			},
		}}, func() api.BundleDeploymentOptions {
			w := copyOptions(base)
			w.Helm.Version = "2.0.0"
			w.Helm.TimeoutSeconds = 0
			w.Helm.Force = true
			w.Helm.Values = map[string]any{"a": 1.0, "b": 2.0, "nested": map[string]any{"x": "base", "y": "target"}, "list": []any{"b"}}
			w.Helm.ValuesFiles = []string{"base.yaml", "prod.yaml"}
			w.Helm.ValuesFrom = []api.ValuesFrom{{ConfigMapKeyRef: &api.KeySelector{Name: "cm", Key: "k"}}, {SecretKeyRef: &api.KeySelector{Name: "s"}}}
			return w
		}()},
		{"overlays appended, compare patches by key, maps merged", &api.BundleTarget{BundleDeploymentOptions: api.BundleDeploymentOptions{
			YAML:            &api.YAMLOptions{Overlays: []string{"two"}},
			Diff:            &api.DiffOptions{ComparePatches: []api.ComparePatch{{Kind: "Service", Name: "s", JSONPointers: []string{"/b"}}, {Kind: "Pod"}}},
			NamespaceLabels: map[string]string{"env": "prod"},
			Kustomize:       &api.KustomizeOptions{Dir: "overlays/prod"},
			KeepResources:   true,
			CorrectDrift:    &api.CorrectDrift{Enabled: true},
		}}, func() api.BundleDeploymentOptions {
			w := copyOptions(base)
			w.YAML.Overlays = []string{"one", "two"}
			w.Diff.ComparePatches = []api.ComparePatch{{Kind: "Service", Name: "s", JSONPointers: []string{"/b"}}, {Kind: "Pod"}}
			w.NamespaceLabels = map[string]string{"team": "a", "env": "prod"}
			w.Kustomize = &api.KustomizeOptions{Dir: "overlays/prod"}
			w.KeepResources = true
			w.CorrectDrift = &api.CorrectDrift{Enabled: true}
			return w
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := mustJSON(t, base)
			got := Merge(base, tt.target)
			if g, w := mustJSON(t, got), mustJSON(t, tt.want); g != w {
				t.Errorf("Merge() =\n%s\nwant\n%s", g, w)
			}
			if after := mustJSON(t, base); after != before {
				t.Errorf("Merge modified base:\n%s\nwas\n%s", after, before)
			}
		})
	}
}

func TestMergeDoesNotAlias(t *testing.T) {
	base := api.BundleDeploymentOptions{Helm: &api.HelmOptions{Values: map[string]any{"m": map[string]any{"k": "v"}}}}
	got := Merge(base, &api.BundleTarget{})
	got.Helm.Values["m"].(map[string]any)["k"] = "changed"
	if v := base.Helm.Values["m"].(map[string]any)["k"]; v != "v" {
		t.Errorf("changing the merged values changed base: %v", v)
	}
}
