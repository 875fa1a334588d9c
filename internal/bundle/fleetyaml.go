package bundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

// FleetYAMLName is the file that makes a directory a bundle. Fleet also accepts fleet.yml.
const (
	FleetYAMLName    = "fleet.yaml"
	fleetYAMLAltName = "fleet.yml"
)

// releaseNameRE is Helm's rule for release names.
var releaseNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ParseFleetYAML decodes a fleet.yaml strictly: unknown fields, duplicate keys and values of the
// wrong type are errors naming the field. It then checks what Fleet would reject later (invalid
// selectors, dependsOn entries naming nothing, bad release names, paths leaving the bundle).
func ParseFleetYAML(data []byte) (api.FleetYAML, error) {
	var fy api.FleetYAML
	if err := decodeStrict(data, &fy); err != nil {
		return api.FleetYAML{}, err
	}
	if err := validateFleetYAML(&fy); err != nil {
		return api.FleetYAML{}, err
	}
	return fy, nil
}

// decodeStrict converts YAML to JSON and decodes it into v, refusing unknown fields.
func decodeStrict(data []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("invalid YAML: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(j))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		msg := strings.TrimPrefix(err.Error(), "json: ")
		if strings.HasPrefix(msg, "unknown field") {
			// encoding/json names only the field; name its path too.
			var generic any
			if json.Unmarshal(j, &generic) == nil {
				if p := unknownField(reflect.TypeOf(v), generic, ""); p != "" {
					msg = fmt.Sprintf("unknown field %q", p)
				}
			}
		}
		return fmt.Errorf("invalid fleet.yaml: %s", msg)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return errors.New("invalid fleet.yaml: trailing data")
	}
	return nil
}

func validateFleetYAML(fy *api.FleetYAML) error {
	if err := validateOptions("", fy.BundleDeploymentOptions); err != nil {
		return err
	}
	for i, dep := range fy.DependsOn {
		if dep.Name == "" && dep.Selector == nil {
			return fmt.Errorf("dependsOn[%d]: must specify either name or selector", i)
		}
		if _, err := selector(dep.Selector); err != nil {
			return fmt.Errorf("dependsOn[%d].selector: %w", i, err)
		}
	}
	for field, targets := range map[string][]api.BundleTarget{"targets": fy.Targets, "targetCustomizations": fy.TargetCustomizations} {
		for i, t := range targets {
			prefix := fmt.Sprintf("%s[%d]", field, i)
			if err := validateCriteria(prefix, t.ClusterSelector, t.ClusterGroupSelector); err != nil {
				return err
			}
			if err := validateOptions(prefix+".", t.BundleDeploymentOptions); err != nil {
				return err
			}
		}
	}
	for i, t := range fy.OverrideTargets {
		if err := validateCriteria(fmt.Sprintf("overrideTargets[%d]", i), t.ClusterSelector, t.ClusterGroupSelector); err != nil {
			return err
		}
	}
	if rs := fy.RolloutStrategy; rs != nil {
		for name, v := range map[string]*api.IntOrString{"maxUnavailable": rs.MaxUnavailable, "maxUnavailablePartitions": rs.MaxUnavailablePartitions, "autoPartitionSize": rs.AutoPartitionSize} {
			if v == nil {
				continue
			}
			if _, err := v.Scaled(100, false); err != nil {
				return fmt.Errorf("rolloutStrategy.%s: %w", name, err)
			}
		}
		for i, p := range rs.Partitions {
			prefix := fmt.Sprintf("rolloutStrategy.partitions[%d]", i)
			if err := validateCriteria(prefix, p.ClusterSelector, p.ClusterGroupSelector); err != nil {
				return err
			}
			if p.MaxUnavailable != nil {
				if _, err := p.MaxUnavailable.Scaled(100, false); err != nil {
					return fmt.Errorf("%s.maxUnavailable: %w", prefix, err)
				}
			}
		}
	}
	return nil
}

func validateCriteria(prefix string, clusterSelector, groupSelector *api.LabelSelector) error {
	if _, err := selector(clusterSelector); err != nil {
		return fmt.Errorf("%s.clusterSelector: %w", prefix, err)
	}
	if _, err := selector(groupSelector); err != nil {
		return fmt.Errorf("%s.clusterGroupSelector: %w", prefix, err)
	}
	return nil
}

func validateOptions(prefix string, o api.BundleDeploymentOptions) error {
	if h := o.Helm; h != nil {
		if h.ReleaseName != "" && (len(h.ReleaseName) > maxReleaseNameLen || !releaseNameRE.MatchString(h.ReleaseName)) {
			return fmt.Errorf("%shelm.releaseName %q: must be at most %d lowercase letters, digits, '-' and '.'", prefix, h.ReleaseName, maxReleaseNameLen)
		}
		for _, f := range h.ValuesFiles {
			if err := validRepoPath(f); err != nil {
				return fmt.Errorf("%shelm.valuesFiles: %w", prefix, err)
			}
		}
	}
	if o.YAML != nil {
		for _, name := range o.YAML.Overlays {
			if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
				return fmt.Errorf("%syaml.overlays: %q is not a directory name", prefix, name)
			}
		}
	}
	if o.Kustomize != nil && o.Kustomize.Dir != "" {
		if err := validRepoPath(o.Kustomize.Dir); err != nil {
			return fmt.Errorf("%skustomize.dir: %w", prefix, err)
		}
	}
	return nil
}

// validRepoPath accepts the relative paths a fleet.yaml may use: "./x", "x/" and "../x" are
// resolved later against the bundle and checked against the repository root then.
func validRepoPath(p string) error {
	if p == "" {
		return errors.New("empty path")
	}
	if strings.HasPrefix(p, "/") {
		return fmt.Errorf("%s: absolute path", p)
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("%q: NUL in path", p)
	}
	return nil
}

// unknownField returns the path of the first field of data (decoded JSON) that type t does not
// have, matching names case-insensitively as encoding/json does; "" if there is none.
func unknownField(t reflect.Type, data any, prefix string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	join := func(k string) string {
		if prefix == "" {
			return k
		}
		return prefix + "." + k
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := data.(map[string]any)
		if !ok {
			return ""
		}
		fields := map[string]reflect.Type{}
		jsonFields(t, fields)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[strings.ToLower(k)]
			if !ok {
				return join(k)
			}
			if p := unknownField(ft, m[k], join(k)); p != "" {
				return p
			}
		}
	case reflect.Slice:
		a, ok := data.([]any)
		if !ok || t.Elem().Kind() == reflect.Uint8 {
			return ""
		}
		for i, e := range a {
			if p := unknownField(t.Elem(), e, fmt.Sprintf("%s[%d]", prefix, i)); p != "" {
				return p
			}
		}
	case reflect.Map:
		m, ok := data.(map[string]any)
		if !ok {
			return ""
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if p := unknownField(t.Elem(), m[k], join(k)); p != "" {
				return p
			}
		}
	}
	return ""
}

// jsonFields collects the JSON names (lowercased) of t's fields, promoting those of embedded
// structs as encoding/json does.
func jsonFields(t reflect.Type, into map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			jsonFields(f.Type, into)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		into[strings.ToLower(name)] = f.Type
	}
}
