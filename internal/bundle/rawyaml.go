package bundle

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

const overlaysDir = "overlays/"

// rawObjects renders a raw-YAML bundle as Fleet does: overlays are applied by file name, then
// every .yaml, .yml and .json file is read, except fleet.yaml, overlays/ and directories holding
// a nested bundle (a fleet.yaml) or a chart (a Chart.yaml). Files under a top-level templates/
// directory are Helm templates, rendered with the bundle's values; other files are not templated.
func rawObjects(ctx context.Context, m *meter, files Files, opts api.BundleDeploymentOptions, releaseName string) ([]*unstructured.Unstructured, error) {
	var overlays []string
	if opts.YAML != nil {
		overlays = opts.YAML.Overlays
	}
	work, err := applyOverlays(m, files, overlays)
	if err != nil {
		return nil, err
	}

	var ignore []string
	for name := range work {
		base := path.Base(name)
		if name != base && (base == FleetYAMLName || base == fleetYAMLAltName || base == "Chart.yaml") {
			ignore = append(ignore, path.Dir(name)+"/")
		}
	}
	var objs []*unstructured.Unstructured
	var templates []*common.File
	for _, name := range slices.Sorted(maps.Keys(work)) {
		switch {
		case name == FleetYAMLName || name == fleetYAMLAltName:
			continue
		case strings.HasPrefix(name, overlaysDir):
			continue
		case !strings.HasSuffix(name, ".yaml") && !strings.HasSuffix(name, ".yml") && !strings.HasSuffix(name, ".json"):
			continue
		case slices.ContainsFunc(ignore, func(p string) bool { return strings.HasPrefix(name, p) }):
			continue
		case strings.HasPrefix(name, "templates/"):
			templates = append(templates, &common.File{Name: name, Data: work[name]})
			continue
		}
		o, err := parseObjects(m, name, work[name], true)
		if err != nil {
			return nil, err
		}
		objs = append(objs, o...)
	}
	if len(templates) > 0 {
		o, err := renderTemplates(ctx, m, templates, opts, releaseName)
		if err != nil {
			return nil, err
		}
		objs = append(objs, o...)
	}
	return objs, nil
}

// renderTemplates renders a raw bundle's templates/ directory as the chart Fleet would wrap it in.
func renderTemplates(ctx context.Context, m *meter, templates []*common.File, opts api.BundleDeploymentOptions, releaseName string) ([]*unstructured.Unstructured, error) {
	rel := &HelmRelease{
		ReleaseName: releaseName,
		Namespace:   releaseNamespace(opts),
		Chart: &chart.Chart{
			Metadata:  &chart.Metadata{APIVersion: chart.APIVersionV2, Name: releaseName, Version: "0.0.0"},
			Templates: templates,
		},
	}
	if opts.Helm != nil {
		rel.Values = opts.Helm.Values
		rel.DisableDNS = opts.Helm.DisableDNS
	}
	manifest, _, err := helmTemplate(ctx, m, rel, false)
	if err != nil {
		return nil, fmt.Errorf("rendering templates/: %w", err)
	}
	return parseObjects(m, "templates/", []byte(manifest), false)
}

// applyOverlays returns a copy of files with the named overlays applied in order. A file
// overlays/<name>/p replaces (or adds) p; a file overlays/<name>/dir/x_patch.yaml patches
// dir/x.yaml with a JSON patch (a list of operations), a strategic merge patch (for Kubernetes'
// own kinds) or a JSON merge patch (for any other kind).
func applyOverlays(m *meter, files Files, overlays []string) (map[string][]byte, error) {
	work := maps.Clone(map[string][]byte(files))
	for _, overlay := range overlays {
		prefix := overlaysDir + overlay + "/"
		var replace, patches []string
		for name := range files {
			rest, ok := strings.CutPrefix(name, prefix)
			if !ok {
				continue
			}
			if strings.Contains(path.Base(rest), "_patch.") {
				patches = append(patches, name)
			} else {
				replace = append(replace, name)
			}
		}
		slices.Sort(replace)
		slices.Sort(patches)
		for _, name := range replace {
			work[strings.TrimPrefix(name, prefix)] = files[name]
		}
		for _, name := range patches {
			rest := strings.TrimPrefix(name, prefix)
			target := path.Join(path.Dir(rest), strings.Replace(path.Base(rest), "_patch.", ".", 1))
			base, ok := work[target]
			if !ok {
				return nil, fmt.Errorf("overlay %q: %s: no file %s to patch", overlay, name, target)
			}
			patched, err := patchFile(m, base, files[name])
			if err != nil {
				return nil, fmt.Errorf("overlay %q: patching %s with %s: %w", overlay, target, name, err)
			}
			work[target] = patched
		}
	}
	return work, nil
}

// patchFile applies patch to every document of base that it names (by apiVersion, kind and
// metadata.name, where the patch has them), and returns the result as JSON documents in YAML.
func patchFile(m *meter, base, patch []byte) ([]byte, error) {
	pj, err := yaml.YAMLToJSON(patch)
	if err != nil {
		return nil, fmt.Errorf("patch is not valid YAML: %w", err)
	}
	docs, err := parseObjects(m, "base", base, true)
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("no objects to patch")
	}
	var sel map[string]any
	_ = json.Unmarshal(pj, &sel) // a JSON patch (a list) selects every document
	applied := 0
	var out []*unstructured.Unstructured
	for _, d := range docs {
		if len(docs) > 1 && !patchSelects(sel, d) {
			out = append(out, d)
			continue
		}
		orig, err := json.Marshal(d.Object)
		if err != nil {
			return nil, err
		}
		res, err := applyPatch(orig, pj, d.GroupVersionKind())
		if err != nil {
			return nil, err
		}
		objs, err := parseObjects(m, "patched", res, false)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
		applied++
	}
	if applied == 0 {
		return nil, fmt.Errorf("the patch names none of the file's %d objects", len(docs))
	}
	return encodeObjects(out)
}

// patchSelects reports whether a merge patch names o (by the identity fields it sets).
func patchSelects(patch map[string]any, o *unstructured.Unstructured) bool {
	if patch == nil {
		return true
	}
	p := unstructured.Unstructured{Object: patch}
	if v := p.GetAPIVersion(); v != "" && v != o.GetAPIVersion() {
		return false
	}
	if k := p.GetKind(); k != "" && k != o.GetKind() {
		return false
	}
	if n := p.GetName(); n != "" && n != o.GetName() {
		return false
	}
	return true
}

// applyPatch picks the patch type from its content, as Fleet does.
func applyPatch(orig, patch []byte, gvk schema.GroupVersionKind) ([]byte, error) {
	if t := strings.TrimSpace(string(patch)); strings.HasPrefix(t, "[") {
		p, err := jsonpatch.DecodePatch(patch)
		if err != nil {
			return nil, fmt.Errorf("invalid JSON patch: %w", err)
		}
		return p.Apply(orig)
	}
	obj, err := scheme.Scheme.New(gvk)
	if runtime.IsNotRegisteredError(err) {
		return jsonpatch.MergePatch(orig, patch)
	}
	if err != nil {
		return nil, err
	}
	return strategicpatch.StrategicMergePatch(orig, patch, obj)
}
