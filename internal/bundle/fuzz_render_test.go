package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// FuzzParseFleetYAML: any input parses or is refused with an error, never a panic; what parses
// survives a round trip through JSON unchanged (nothing is accepted that cannot be written back).
func FuzzParseFleetYAML(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*/fleet.yaml")
	more, _ := filepath.Glob("testdata/*/fleet.yaml")
	for _, p := range append(seeds, more...) {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	for _, s := range []string{
		"",
		"defaultNamespace: x\nhelm:\n  releaseName: r\n  values: {a: 1}\n",
		"targetCustomizations:\n- name: p\n  clusterSelector: {matchLabels: {env: prod}}\n  yaml: {overlays: [a]}\n",
		"dependsOn:\n- selector: {matchExpressions: [{key: a, operator: In, values: [b]}]}\n",
		"rolloutStrategy: {maxUnavailable: 10%, partitions: [{name: a, maxUnavailable: 1}]}\n",
		"unknown: 1\n",
		"a: &a [*a, *a]\n",
		"helm: {releaseName: \"UPPER\"}\n",
		"kustomize: {dir: /abs}\n",
		"targets: [{clusterSelector: {matchLabels: {\"bad key!\": v}}}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fy, err := ParseFleetYAML(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		j, err := json.Marshal(fy)
		if err != nil {
			t.Fatalf("accepted fleet.yaml does not encode: %v", err)
		}
		again, err := ParseFleetYAML(j)
		if err != nil {
			t.Fatalf("accepted fleet.yaml, written back as %s, is refused: %v", j, err)
		}
		if j2, _ := json.Marshal(again); !bytes.Equal(j, j2) {
			t.Fatalf("round trip changed the fleet.yaml:\n%s\n%s", j, j2)
		}
	})
}

// fuzzBudget is small, so that fuzzing finds the edges of the budgets quickly.
var fuzzBudget = Budget{Time: 250 * time.Millisecond, MaxBytes: 256 << 10, MaxObjects: 100}

// fuzzTree makes a small bundle of the given style from data: its parts, split at NUL bytes,
// become the style's files.
func fuzzTree(style uint8, data []byte) (Files, api.BundleDeploymentOptions) {
	parts := bytes.SplitN(data, []byte{0}, 4)
	for len(parts) < 4 {
		parts = append(parts, nil)
	}
	chart := []byte("apiVersion: v2\nname: fuzz\nversion: 0.1.0\n")
	var opts api.BundleDeploymentOptions
	switch style % 4 {
	case 0: // raw YAML, with templates/ and an overlay
		opts.YAML = &api.YAMLOptions{Overlays: []string{"o"}}
		return Files{"a.yaml": parts[0], "b.yaml": parts[1], "templates/t.yaml": parts[2], "overlays/o/a_patch.yaml": parts[3]}, opts
	case 1: // Kustomize with a base
		return Files{"kustomization.yaml": parts[0], "base/kustomization.yaml": parts[1], "base/r.yaml": parts[2], "r.yaml": parts[3]}, opts
	case 2: // a Helm chart
		return Files{"Chart.yaml": chart, "templates/t.yaml": parts[0], "values.yaml": parts[1], "templates/_h.tpl": parts[2], "kustomization.yaml": parts[3]}, opts
	default: // Fleet's values templates
		opts.Helm = &api.HelmOptions{Values: map[string]any{"v": string(parts[0])}, TemplateValues: map[string]string{"t": string(parts[1])}}
		return Files{"Chart.yaml": chart, "templates/t.yaml": []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {v: {{ .Values.v | quote }}}\n")}, opts
	}
}

// FuzzRenderBudget: rendering any small tree never panics and keeps to its budget: an error
// is clean, a budget error names its flag, and a render that succeeds produced no more objects
// and no more bytes than the budget allows.
func FuzzRenderBudget(f *testing.F) {
	for _, s := range []struct {
		style uint8
		data  string
	}{
		{0, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n\x00---\napiVersion: v1\nkind: List\nitems: []\n\x00{{ range until 3 }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c{{ . }}}\n{{ end }}\x00data: {k: v}\n"},
		{0, "{{ range 100000000 }}x{{ end }}\x00\x00{{ range 1000000000000 }}{{ end }}"},
		{1, "resources: [base, r.yaml]\nnamePrefix: p-\n\x00resources: [r.yaml]\n\x00apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n\x00apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"},
		{1, "resources: [base, base]\n\x00resources: [../base]\n"},
		{2, "{{ range $i := until (int .Values.n) }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c{{ $i }}}\n{{ end }}\x00n: 1000\n\x00{{ define \"h\" }}{{ include \"h\" . }}{{ end }}\x00resources: []\n"},
		{2, "{{ repeat 1000000000 \"x\" }}\x00\x00\x00"},
		{3, "${ .ClusterName }\x00${ range until 100000000 }x${ end }"},
	} {
		f.Add(s.style, []byte(s.data))
	}
	f.Fuzz(func(t *testing.T, style uint8, data []byte) {
		files, opts := fuzzTree(style, data)
		for name, d := range files {
			if d == nil {
				delete(files, name)
			}
		}
		m, ctx, stop := startMeter(WithBudget(context.Background(), fuzzBudget))
		defer stop()
		r, err := render(ctx, m, files, opts, Cluster{Name: "fuzz", Labels: map[string]string{"env": "dev"}}, "fuzz")
		err = m.result(err)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			var be *BudgetError
			if errors.Is(err, ErrBudgetExceeded) != errors.As(err, &be) {
				t.Fatalf("%v: a budget error that is not a *BudgetError, or the reverse", err)
			}
			if be != nil && !slices.Contains([]string{FlagRenderTimeout, FlagRenderMaxBytes, FlagRenderMaxObjects}, be.Flag) {
				t.Fatalf("budget error %v names no flag", err)
			}
			return
		}
		if n := m.bytes.Load(); n > fuzzBudget.MaxBytes {
			t.Fatalf("render succeeded after %d bytes, over its budget of %d", n, fuzzBudget.MaxBytes)
		}
		objs := r.Objects
		if r.Helm != nil {
			objs = append(objs, r.Helm.Hooks...)
		}
		if len(objs) > fuzzBudget.MaxObjects {
			t.Fatalf("render succeeded with %d objects, over its budget of %d", len(objs), fuzzBudget.MaxObjects)
		}
		for _, o := range objs {
			if o.GetAPIVersion() == "" || o.GetKind() == "" {
				t.Fatalf("object without apiVersion or kind: %v", o.Object)
			}
			if strings.Contains(o.GetNamespace(), "/") {
				t.Fatalf("object in namespace %q", o.GetNamespace())
			}
		}
	})
}
