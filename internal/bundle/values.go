package bundle

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
	"flotilla.dev/internal/bundle/helmtpl"
)

// clusterLabelPrefix marks a value to be replaced by a cluster label, Fleet's older form of
// ${ .ClusterLabels.x }: "global.fleet.clusterLabels.env" becomes the value of label env.
const clusterLabelPrefix = "global.fleet.clusterLabels."

// maxValuesDepth bounds recursion into nested values.
const maxValuesDepth = 50

// TemplateValues returns opts with its Helm values customised for c, as Fleet's controller does
// before it hands options to a cluster: values of the form "global.fleet.clusterLabels.<key>"
// become that label's value; unless helm.disablePreProcess is set, the values are then rendered
// as a Go template with ${ } delimiters (so YAML's braces stay plain), sprig's functions except
// env, expandenv, include and tpl, and missing keys as errors, seeing .ClusterName,
// .ClusterNamespace, .ClusterLabels, .ClusterAnnotations and .ClusterValues; and each of
// helm.templateValues is rendered the same way and set as a top-level value. opts is not modified.
// The templates run within DefaultBudget.
func TemplateValues(opts api.BundleDeploymentOptions, c Cluster) (api.BundleDeploymentOptions, error) {
	return TemplateValuesContext(context.Background(), opts, c)
}

// TemplateValuesContext is TemplateValues within ctx's render budget (see WithBudget), stopping
// when ctx is cancelled.
func TemplateValuesContext(ctx context.Context, opts api.BundleDeploymentOptions, c Cluster) (api.BundleDeploymentOptions, error) {
	m, _, stop := startMeter(ctx)
	defer stop()
	out, err := templateValues(m, opts, c)
	return out, m.result(err)
}

func templateValues(m *meter, opts api.BundleDeploymentOptions, c Cluster) (api.BundleDeploymentOptions, error) {
	if opts.Helm == nil || (len(opts.Helm.Values) == 0 && len(opts.Helm.TemplateValues) == 0) {
		return opts, nil
	}
	opts = copyOptions(opts)
	h := opts.Helm
	if h.Values == nil {
		h.Values = map[string]any{}
	}
	if err := replaceLabelValues(h.Values, c.Labels, 0); err != nil {
		return opts, err
	}
	if h.DisablePreProcess {
		return opts, nil
	}
	ctx := map[string]any{
		"ClusterName":        c.Name,
		"ClusterNamespace":   c.Namespace,
		"ClusterLabels":      toDict(c.Labels),
		"ClusterAnnotations": toDict(c.Annotations),
		"ClusterValues":      c.TemplateValues,
	}
	if ctx["ClusterValues"] == nil {
		ctx["ClusterValues"] = map[string]any{}
	}
	if len(h.Values) > 0 {
		data, err := yaml.Marshal(h.Values)
		if err != nil {
			return opts, fmt.Errorf("helm values: %w", err)
		}
		out, err := execTemplate(m, string(data), ctx)
		if err != nil {
			return opts, fmt.Errorf("helm values: %w", err)
		}
		var values map[string]any
		if err := yaml.Unmarshal(out, &values); err != nil {
			return opts, fmt.Errorf("helm values: rendered template is not valid YAML: %w", err)
		}
		h.Values = values
		if h.Values == nil {
			h.Values = map[string]any{}
		}
	}
	for _, k := range sortedKeys(h.TemplateValues) {
		out, err := execTemplate(m, h.TemplateValues[k], ctx)
		if err != nil {
			return opts, fmt.Errorf("helm templateValues %s: %w", k, err)
		}
		var v any
		if err := yaml.Unmarshal(out, &v); err != nil {
			return opts, fmt.Errorf("helm templateValues %s: rendered template is not valid YAML: %w", k, err)
		}
		h.Values[k] = v
	}
	return opts, nil
}

func execTemplate(m *meter, text string, data map[string]any) ([]byte, error) {
	t, err := template.New("values").Funcs(helmtpl.Funcs(templateFuncs(), m)).Option("missingkey=error").Delims("${", "}").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("parsing template: %w", err)
	}
	helmtpl.Instrument(t, m)
	var b strings.Builder
	if err := t.Execute(helmtpl.Writer(&b, m, "helm values template"), data); err != nil {
		return nil, fmt.Errorf("rendering template: %w", m.result(err))
	}
	return []byte(b.String()), nil
}

// templateFuncs are sprig's functions less those that would read the environment of whoever
// renders, or recurse into templates.
func templateFuncs() template.FuncMap {
	f := sprig.TxtFuncMap()
	for _, name := range []string{"env", "expandenv", "include", "tpl"} {
		delete(f, name)
	}
	return f
}

func replaceLabelValues(values map[string]any, clusterLabels map[string]string, depth int) error {
	if depth > maxValuesDepth {
		return fmt.Errorf("helm values nested deeper than %d levels", maxValuesDepth)
	}
	for k, v := range values {
		switch v := v.(type) {
		case string:
			if label, ok := strings.CutPrefix(v, clusterLabelPrefix); ok {
				values[k] = clusterLabels[label] // a missing label gives "", as in Fleet
			}
		case map[string]any:
			if err := replaceLabelValues(v, clusterLabels, depth+1); err != nil {
				return err
			}
		case []any:
			for _, item := range v {
				if m, ok := item.(map[string]any); ok {
					if err := replaceLabelValues(m, clusterLabels, depth+1); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// toDict converts labels to the map type sprig's dict functions (hasKey, default…) expect.
func toDict(m map[string]string) map[string]any {
	d := make(map[string]any, len(m))
	for k, v := range m {
		d[k] = v
	}
	return d
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
