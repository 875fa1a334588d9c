package bundle

import (
	"bytes"
	"fmt"
	"path"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

// kustomizationNames are the file names Kustomize reads, in its order of preference.
var kustomizationNames = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

// generatedManifests is the file a chart's output is written to before Kustomize runs over it,
// Fleet's name for it.
const generatedManifests = "fleet-manifests.yaml"

// kustomizeDir returns the directory whose kustomization the bundle builds: kustomize.dir, or the
// root when it holds one; "" when there is none. A kustomize.dir without a kustomization is an
// error rather than, as in Fleet, a silent fall back to raw YAML.
func kustomizeDir(files Files, opts api.BundleDeploymentOptions) (string, error) {
	dir := "."
	if opts.Kustomize != nil && opts.Kustomize.Dir != "" {
		dir = cleanRel(opts.Kustomize.Dir)
		if dir == "" {
			dir = "."
		}
	}
	if kustomizationFile(files, dir) != "" {
		return dir, nil
	}
	if dir != "." {
		return "", fmt.Errorf("kustomize.dir %s: no kustomization.yaml in the bundle there", opts.Kustomize.Dir)
	}
	return "", nil
}

func kustomizationFile(files Files, dir string) string {
	for _, n := range kustomizationNames {
		p := path.Join(dir, n)
		if _, ok := files[p]; ok {
			return p
		}
	}
	return ""
}

// kustomize builds the kustomization in dir over an in-memory copy of files. When generated
// objects (a chart's output) are given, they are written to fleet-manifests.yaml in dir and
// added to the kustomization's resources first, so the kustomization can patch them.
//
// Kustomize takes no context and re-reads a base for every reference to it, so bases that
// fan out cost twice as much per level. It reads through budgetFS, which counts every file and
// document read against m's budget and fails the read once over it, or once m's render is
// cancelled: Kustomize's work between two reads is that of one kustomization.
func kustomize(m *meter, files Files, dir string, generated []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	if err := checkRemoteBases(files); err != nil {
		return nil, err
	}
	fs := filesys.MakeFsInMemory()
	for name, data := range files {
		if err := fs.WriteFile("/"+name, data); err != nil {
			return nil, fmt.Errorf("kustomize: %s: %w", name, err)
		}
	}
	kfile := kustomizationFile(files, dir)
	if len(generated) > 0 {
		data, err := encodeObjects(generated)
		if err != nil {
			return nil, err
		}
		if err := fs.WriteFile(path.Join("/", dir, generatedManifests), data); err != nil {
			return nil, fmt.Errorf("kustomize: %w", err)
		}
		var k map[string]any
		if err := yaml.Unmarshal(files[kfile], &k); err != nil {
			return nil, fmt.Errorf("kustomize: %s: %w", kfile, err)
		}
		if k == nil {
			k = map[string]any{}
		}
		res, _ := k["resources"].([]any)
		if !slices.Contains(res, any(generatedManifests)) {
			k["resources"] = append([]any{generatedManifests}, res...)
		}
		out, err := yaml.Marshal(k)
		if err != nil {
			return nil, fmt.Errorf("kustomize: %w", err)
		}
		if err := fs.WriteFile("/"+kfile, out); err != nil {
			return nil, fmt.Errorf("kustomize: %w", err)
		}
	}
	k := krusty.MakeKustomizer(&krusty.Options{
		LoadRestrictions: types.LoadRestrictionsRootOnly,
		PluginConfig:     types.DisabledPluginConfig(),
	})
	resMap, err := k.Run(budgetFS{FileSystem: fs, m: m}, path.Join("/", dir))
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", kfile, m.result(err))
	}
	if err := m.checkObjects(resMap.Size(), "kustomize output"); err != nil {
		return nil, err
	}
	out, err := resMap.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", kfile, err)
	}
	return parseObjects(m, "kustomize "+kfile, out, false)
}

// checkRemoteBases refuses kustomizations that name remote resources: Kustomize would fetch them
// with git or HTTP while rendering, and agents must not reach out (Fleet's agent would).
func checkRemoteBases(files Files) error {
	for _, name := range files.Names() {
		if !slices.Contains(kustomizationNames, path.Base(name)) {
			continue
		}
		var k struct {
			Resources  []string `json:"resources"`
			Bases      []string `json:"bases"`
			Components []string `json:"components"`
		}
		if err := yaml.Unmarshal(files[name], &k); err != nil {
			continue // Kustomize reports it, if it is used at all
		}
		for _, r := range slices.Concat(k.Resources, k.Bases, k.Components) {
			if isRemote(r) {
				return fmt.Errorf("kustomize %s: remote resource %q: vendor it in the repository, bundles are rendered without network access", name, r)
			}
		}
	}
	return nil
}

func isRemote(r string) bool {
	if strings.Contains(r, "://") || strings.HasPrefix(r, "git@") {
		return true
	}
	for _, host := range []string{"github.com/", "gitlab.com/", "bitbucket.org/"} {
		if strings.HasPrefix(r, host) {
			return true
		}
	}
	return false
}

// budgetFS is the filesystem Kustomize reads a bundle through: each read is a step of the
// render, and counts its bytes and its documents (a kustomization counts as one) against the
// render's budget, so that the resource graph Kustomize builds cannot outgrow it.
type budgetFS struct {
	filesys.FileSystem
	m *meter
}

func (f budgetFS) ReadFile(name string) ([]byte, error) {
	if err := f.m.Step(); err != nil {
		return nil, err
	}
	data, err := f.FileSystem.ReadFile(name)
	if err != nil {
		return nil, err
	}
	if err := f.m.Objects(1+bytes.Count(data, []byte("\n---")), "files and documents read by kustomize"); err != nil {
		return nil, err
	}
	if err := f.m.Wrote(len(data), "files read by kustomize"); err != nil {
		return nil, err
	}
	return data, nil
}

func (f budgetFS) Open(name string) (filesys.File, error) {
	if err := f.m.Step(); err != nil {
		return nil, err
	}
	return f.FileSystem.Open(name)
}

func (f budgetFS) ReadDir(name string) ([]string, error) {
	if err := f.m.Step(); err != nil {
		return nil, err
	}
	return f.FileSystem.ReadDir(name)
}

func (f budgetFS) Glob(pattern string) ([]string, error) {
	if err := f.m.Step(); err != nil {
		return nil, err
	}
	return f.FileSystem.Glob(pattern)
}
