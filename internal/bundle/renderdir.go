package bundle

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// RenderDir prints what cluster c would receive from the repository checked out at dir, scanned
// as a GitRepo with no paths and no targets would be (Fleet's `fleet test`): every bundle that
// targets c, preceded by a comment naming it and the target that matched, as multi-document YAML.
// Helm hooks follow their release's objects. As in Fleet, where the ClusterGroup "default"
// selects every cluster, c is taken to be in that group.
func RenderDir(ctx context.Context, dir string, c Cluster, out io.Writer) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	prefix := strings.ToLower(filepath.Base(abs))
	sources, err := Scan(ctx, dir, ScanOptions{NamePrefix: prefix})
	if err != nil {
		return err
	}
	if _, ok := c.Groups[DefaultGroup]; !ok {
		groups := map[string]map[string]string{DefaultGroup: {}}
		for g, l := range c.Groups {
			groups[g] = l
		}
		c.Groups = groups
	}
	for _, src := range sources {
		targets, restrictions := CombineTargets(nil, src.Spec)
		m, err := NewMatcher(targets, restrictions)
		if err != nil {
			return fmt.Errorf("bundle %s: %w", src.Name, err)
		}
		t, ok := m.Match(c)
		if !ok {
			continue
		}
		opts := Merge(src.Spec.BundleDeploymentOptions, t)
		r, err := Render(ctx, src.Files, opts, c, src.Name)
		if err != nil {
			return fmt.Errorf("bundle %s (%s): %w", src.Name, src.Path, err)
		}
		name := t.Name
		if name == "" {
			name = "(unnamed)"
		}
		if _, err := fmt.Fprintf(out, "# Bundle %s (path %s, target %s)\n", src.Name, src.Path, name); err != nil {
			return err
		}
		objs := r.Objects
		if r.Helm != nil {
			objs = append(objs, r.Helm.Hooks...)
		}
		b, err := encodeObjects(objs)
		if err != nil {
			return err
		}
		if _, err := out.Write(b); err != nil {
			return err
		}
	}
	return nil
}
