package helmtpl

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	chartvalues "helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
)

// errBudget is what countingMeter fails with.
var errBudget = errors.New("test budget exceeded")

// countingMeter fails after maxSteps steps or maxBytes bytes written: a budget without a
// clock, so that what these tests see does not depend on the machine's speed.
type countingMeter struct {
	maxSteps, maxBytes int64
	steps, bytes       int64
}

func (m *countingMeter) Step() error {
	m.steps++
	if m.steps > m.maxSteps {
		return errBudget
	}
	return nil
}

func (m *countingMeter) Wrote(n int, what string) error {
	if err := m.Step(); err != nil {
		return err
	}
	m.bytes += int64(n)
	if m.bytes > m.maxBytes {
		return fmt.Errorf("%w: %s", errBudget, what)
	}
	return nil
}

func (m *countingMeter) Alloc(n int64, what string) error {
	if n > m.maxBytes {
		return fmt.Errorf("%w: %s", errBudget, what)
	}
	return nil
}

// renderValues prepares vals for ch as Helm's install does.
func renderValues(t *testing.T, ch *chart.Chart, vals map[string]any) common.Values {
	t.Helper()
	if err := chartutil.ProcessDependencies(ch, vals); err != nil {
		t.Fatal(err)
	}
	opts := common.ReleaseOptions{Name: "rel", Namespace: "ns", Revision: 1, IsInstall: true}
	v, err := chartvalues.ToRenderValues(ch, vals, opts, common.DefaultCapabilities.Copy())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func chartOf(templates map[string]string, values map[string]any, deps ...*chart.Chart) *chart.Chart {
	ch := &chart.Chart{
		Metadata: &chart.Metadata{APIVersion: chart.APIVersionV2, Name: "top", Version: "1.2.3", AppVersion: "4.5"},
		Values:   values,
	}
	for _, name := range slices.Sorted(maps.Keys(templates)) {
		ch.Templates = append(ch.Templates, &common.File{Name: name, Data: []byte(templates[name])})
	}
	ch.Files = []*common.File{{Name: "config/a.txt", Data: []byte("line 1\nline 2\n")}}
	for _, d := range deps {
		ch.Metadata.Dependencies = append(ch.Metadata.Dependencies, &chart.Dependency{Name: d.Name(), Version: d.Metadata.Version})
		ch.AddDependency(d)
	}
	return ch
}

// TestRenderSameAsHelm: without a budget in the way, the copy renders what Helm v4's own
// engine renders, for `helm create`'s chart and for templates that use what the copy changed
// (include, tpl, required, fail, Files, subcharts, .Chart, .Template).
func TestRenderSameAsHelm(t *testing.T) {
	dir := t.TempDir()
	path, err := chartutil.Create("web", dir)
	if err != nil {
		t.Fatal(err)
	}
	sub := chartOf(map[string]string{"templates/sub.yaml": "sub: {{ .Values.x }} {{ .Chart.Name }} {{ .Chart.IsRoot }}\n"}, map[string]any{"x": "sub-default"})
	sub.Metadata.Name = "sub"
	cases := map[string]func() (*chart.Chart, map[string]any){
		"helm create": func() (*chart.Chart, map[string]any) {
			ch, err := loader.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			return ch, map[string]any{"ingress": map[string]any{"enabled": true}, "autoscaling": map[string]any{"enabled": true}}
		},
		"functions": func() (*chart.Chart, map[string]any) {
			return chartOf(map[string]string{
				"templates/_helpers.tpl": `{{ define "x.name" }}{{ .Chart.Name }}-{{ .Release.Name }}{{ end }}`,
				"templates/a.yaml": `name: {{ include "x.name" . | quote }}
tpl: {{ tpl "{{ .Values.greeting | upper }} {{ include \"x.name\" . }}" . }}
required: {{ required "need it" .Values.greeting }}
file: {{ .Files.Get "config/a.txt" | b64enc }}
lines: {{ range .Files.Lines "config/a.txt" }}[{{ . }}]{{ end }}
glob: {{ range $p, $_ := .Files.Glob "config/*" }}{{ $p }}{{ end }}
chart: {{ .Chart.Version }} {{ .Chart.AppVersion }} {{ .Chart.IsRoot }} {{ .Chart.Description }}
template: {{ .Template.Name }} {{ .Template.BasePath }}
missing: {{ .Values.nothere }}
yaml: {{ toYaml .Values.nested | nindent 2 }}
json: {{ mustToJson .Values.nested }}
duration: {{ durationSeconds "1m30s" }}
dns: {{ getHostByName "localhost" }}
sub: {{ .Subcharts.sub.Values.x }}
`,
			}, map[string]any{"greeting": "hi", "nested": map[string]any{"a": []any{1, "two"}}}, sub), map[string]any{"sub": map[string]any{"x": "from-parent"}}
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			ch, vals := mk()
			want, err := engine.Engine{}.RenderWithContext(t.Context(), ch, renderValues(t, ch, vals))
			if err != nil {
				t.Fatal(err)
			}
			ch, vals = mk()
			got, err := Engine{Meter: &countingMeter{maxSteps: 1 << 40, maxBytes: 1 << 40}}.Render(ch, renderValues(t, ch, vals))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) || len(got) < 2 {
				t.Fatalf("rendered %d files, Helm %d", len(got), len(want))
			}
			for f, w := range want {
				if got[f] != w {
					t.Errorf("%s:\n got: %q\nwant: %q", f, got[f], w)
				}
			}
		})
	}
	// Errors read as Helm's.
	ch := chartOf(map[string]string{
		"templates/_h.tpl": `{{ define "inner" }}{{ required "greeting is required" .Values.greeting }}{{ end }}{{ define "outer" }}{{ include "inner" . }}{{ end }}`,
		"templates/a.yaml": `{{ include "outer" . }}`,
		"templates/b.yaml": `{{ .Values.x.y.z }}`,
	}, nil)
	_, want := engine.Engine{}.RenderWithContext(t.Context(), ch, renderValues(t, ch, map[string]any{"x": 1}))
	_, got := Engine{}.Render(ch, renderValues(t, ch, map[string]any{"x": 1}))
	if want == nil || got == nil || got.Error() != want.Error() {
		t.Errorf("error %v, Helm's %v", got, want)
	}
}

// TestRenderBudgets: each template below is finite, so that without the budget it renders
// (slowly, or big) and the test fails rather than hangs; Helm's own engine cannot stop any of
// them. With a meter they end at the budget, having done no more than it allows.
func TestRenderBudgets(t *testing.T) {
	long := "[" + strings.Repeat("1,", 2999) + "1]"
	kb := strings.Repeat("x", 1024)
	for _, tc := range []struct {
		name string
		tpl  string
	}{
		// Include depth is capped at 1,000 by Helm, but each level doubles the work: 2^20
		// includes.
		{"recursion", `{{ define "a" }}{{ if lt (len .) 20 }}{{ include "a" (append . 1) }}{{ include "a" (append . 1) }}{{ end }}{{ end }}{{ include "a" list }}`},
		// template, unlike include, has no depth count of Helm's: 2^20 calls.
		{"recursion through template", `{{ define "a" }}{{ if . }}{{ template "a" (rest .) }}{{ template "a" (rest .) }}{{ end }}{{ end }}{{ template "a" .Values.l20 }}`},
		// 3 MB of literal text in 3,000 steps, no function call: only the writer sees it.
		{"huge output", `{{ range .Values.l }}` + kb + `{{ end }}`},
		{"huge output through include", `{{ define "x" }}{{ range $.Values.l }}` + kb + `{{ end }}{{ end }}{{ $s := include "x" . }}`},
		{"huge output through tpl", `{{ $s := tpl "{{ range $.Values.l }}` + kb + `{{ end }}" . }}`},
		// 9 million empty iterations: no output and no function call, only time.
		{"too long", `{{ range $i := .Values.l }}{{ range $j := $.Values.l }}{{ end }}{{ end }}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := chartOf(map[string]string{"templates/x.yaml": tc.tpl}, nil)
			vals := renderValues(t, ch, map[string]any{"l": mustYAML(t, long), "l20": make([]any, 20)})
			m := &countingMeter{maxSteps: 200_000, maxBytes: 1 << 20}
			_, err := Engine{Meter: m}.Render(ch, vals)
			if !errors.Is(err, errBudget) && (err == nil || !strings.Contains(err.Error(), errBudget.Error())) {
				t.Fatalf("got %v, want the budget's error", err)
			}
			// The render stopped at the budget: one more step (the failing one) at most, and
			// at most one write's worth past the byte budget.
			if m.steps > m.maxSteps+1 || m.bytes > m.maxBytes+64<<10 {
				t.Errorf("%d steps and %d bytes within a budget of %d and %d", m.steps, m.bytes, m.maxSteps, m.maxBytes)
			}
		})
	}
}

func mustYAML(t *testing.T, s string) any {
	t.Helper()
	v, err := common.ReadValues([]byte("v: " + s))
	if err != nil {
		t.Fatal(err)
	}
	return v["v"]
}
