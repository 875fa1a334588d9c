package apply

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// releaseNamespace is where d's release lives: the chart's namespace, else
// the deployment's default namespace, else "default".
func releaseNamespace(d Deployment) string {
	switch {
	case d.Helm.Namespace != "":
		return d.Helm.Namespace
	case d.DefaultNamespace != "":
		return d.DefaultNamespace
	}
	return "default"
}

// releaseName is the Helm release name, derived from the deployment ID when
// the bundle names none: Helm release names are DNS labels of at most 53
// characters.
func releaseName(d Deployment) string {
	if d.Helm.ReleaseName != "" {
		return d.Helm.ReleaseName
	}
	var b strings.Builder
	for _, r := range strings.ToLower(d.ID) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) <= 53 && name == strings.ToLower(d.ID) {
		return name
	}
	sum := sha256.Sum256([]byte(d.ID))
	if len(name) > 44 {
		name = strings.TrimRight(name[:44], "-")
	}
	return name + "-" + hex.EncodeToString(sum[:])[:8]
}

// helmDigest identifies what a release is made from: the chart (with its
// dependencies), the values, the render key and options, and where it goes. It is stored as a release
// label to recognise an up-to-date release without rendering anything.
func helmDigest(d *Deployment) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	_ = enc.Encode([]string{releaseName(*d), releaseNamespace(*d), d.ID})
	var walk func(c *chart.Chart)
	walk = func(c *chart.Chart) {
		_ = enc.Encode(c.Metadata)
		_ = enc.Encode(c.Lock)
		_ = enc.Encode(c.Values)
		_ = enc.Encode(c.Schema)
		for _, files := range [][]*chart.File{c.Templates, c.Files} {
			for _, f := range files {
				_ = enc.Encode(f.Name)
				h.Write(f.Data)
			}
		}
		deps := c.Dependencies()
		sort.Slice(deps, func(i, j int) bool { return deps[i].Name() < deps[j].Name() })
		for _, dep := range deps {
			walk(dep)
		}
	}
	walk(d.Helm.Chart)
	_ = enc.Encode(d.Helm.Values)
	_ = enc.Encode([]any{d.Helm.RenderKey, d.Helm.DisableDNS, d.Helm.SkipSchemaValidation})
	// Label values are limited to 63 characters.
	return hex.EncodeToString(h.Sum(nil))[:40]
}

// manifestObjects decodes a release manifest into its objects.
func manifestObjects(manifest string) ([]*unstructured.Unstructured, error) {
	docs := releaseutil.SplitManifests(manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	var out []*unstructured.Unstructured
	for _, k := range keys {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(docs[k]), &obj); err != nil {
			return nil, fmt.Errorf("decoding manifest: %w", err)
		}
		if len(obj) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
	return out, nil
}

// labeler is a Helm post-renderer that stamps every rendered object with the
// deployment's label and annotation, as for raw bundles, so that Watch sees
// changes to them.
type labeler struct{ label, annotation string }

func (l *labeler) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	objs, err := manifestObjects(in.String())
	if err != nil {
		return nil, err
	}
	out := new(bytes.Buffer)
	for _, o := range objs {
		stamp(o, l.label, l.annotation)
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", refOf(o), err)
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	return out, nil
}
