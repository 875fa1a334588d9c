package bundle

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	"sigs.k8s.io/yaml"

	"flotilla.dev/api"
)

// ScanOptions configure Scan.
type ScanOptions struct {
	// Paths are globs, relative to the root, of the directories to scan, as a GitRepo's
	// spec.paths; none means the root.
	Paths []string
	// NamePrefix prefixes bundle names, normally the GitRepo's name.
	NamePrefix string
	// Limits bound each bundle's content; the zero value means DefaultLimits.
	Limits Limits
	// HTTPClient fetches charts from chart repositories, OCI registries and URLs; nil means
	// http.DefaultClient. Its Transport carries any credentials or CAs they need.
	HTTPClient *http.Client
	// RegistryPlainHTTP talks to OCI registries over plain HTTP (for local registries).
	RegistryPlainHTTP bool
}

// Source is one bundle read from a repository.
type Source struct {
	// Name is the bundle's name: the fleet.yaml's name, else derived from the GitRepo's name and
	// Path (see BundleName).
	Name string
	// Path is the bundle's directory, relative to the scanned root ("." for the root).
	Path string
	// Spec is the parsed fleet.yaml (empty without one), with Fleet's defaults applied: targets
	// named, the chart's repo/chart/version copied into targets that change only some of them,
	// and valuesFiles read and merged over values (so their files are not in Files).
	Spec api.FleetYAML
	// Files is the bundle's content, charts from outside the repository included.
	Files Files
	// Labels are the fleet.yaml's labels.
	Labels map[string]string
}

// Scan reads the bundles of a checked-out repository at root, as Fleet does for a GitRepo: every
// directory with a fleet.yaml under the matched paths is a bundle, and a matched path without one
// is a raw bundle if it (or a subdirectory that is not a bundle) holds YAML. Hidden files and
// those named in .fleetignore files are left out. Charts named by helm.repo, oci:// references
// or URLs are downloaded now, so that content is complete. Any path or symlink leaving root, and
// any pipe, socket or device, is an error naming the file: nothing outside root is opened.
func Scan(ctx context.Context, root string, opts ScanOptions) ([]Source, error) {
	if opts.Limits == (Limits{}) {
		opts.Limits = DefaultLimits()
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	// Every open, stat and directory listing goes through an os.Root: nothing outside the
	// repository is ever opened, whatever a link says.
	r, err := os.OpenRoot(real)
	if err != nil {
		return nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	defer r.Close()
	s := &scanner{root: real, r: r, fsys: r.FS(), opts: opts, fetch: newChartFetcher(opts.HTTPClient, opts.RegistryPlainHTTP, opts.Limits.MaxBytes)}

	paths := opts.Paths
	if len(paths) == 0 {
		paths = []string{"."}
	}
	var dirs []string // bundle directories, relative to root, slash-separated
	for _, p := range paths {
		p = strings.TrimLeft(filepath.ToSlash(p), "/")
		if p == "" {
			p = "."
		}
		if slices.Contains(strings.Split(p, "/"), "..") {
			return nil, fmt.Errorf("path %q leaves the repository", p)
		}
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("invalid path glob %q: %w", p, err)
		}
		matches, err := fs.Glob(s.fsys, path.Clean(p))
		if err != nil {
			return nil, fmt.Errorf("invalid path glob %q: %w", p, err)
		}
		slices.Sort(matches)
		for _, rel := range matches {
			fi, err := fs.Stat(s.fsys, rel)
			if err != nil || !fi.IsDir() {
				continue
			}
			found, err := s.bundleDirs(rel)
			if err != nil {
				return nil, err
			}
			dirs = append(dirs, found...)
		}
	}
	var sources []Source
	names := map[string]string{}
	for _, d := range dirs {
		if slices.ContainsFunc(sources, func(src Source) bool { return src.Path == d }) {
			continue // matched by two paths
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		src, err := s.read(ctx, d)
		if err != nil {
			return nil, err
		}
		if other, dup := names[src.Name]; dup {
			return nil, fmt.Errorf("bundles %s and %s are both named %s", other, d, src.Name)
		}
		names[src.Name] = d
		sources = append(sources, src)
	}
	if len(sources) == 0 {
		return nil, fmt.Errorf("no bundle found at paths %v", paths)
	}
	return sources, nil
}

type scanner struct {
	root  string // real (symlink-free) absolute path
	r     *os.Root
	fsys  fs.FS // r's, confined to the root
	opts  ScanOptions
	fetch *chartFetcher
}

// abs returns the absolute path of rel (slash-separated, relative to the root).
func (s *scanner) abs(rel string) string {
	return filepath.Join(s.root, filepath.FromSlash(rel))
}

// rel returns the slash-separated path of abs relative to the root, or an error if it is
// outside.
func (s *scanner) rel(abs string) (string, error) {
	r, err := filepath.Rel(s.root, abs)
	if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%s is outside the repository", abs)
	}
	return filepath.ToSlash(r), nil
}

// resolve returns the real path of rel, which must stay inside the root once symlinks are
// followed.
func (s *scanner) resolve(rel string) (string, error) {
	if c := path.Clean(rel); c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%s: path is outside the repository", rel)
	}
	real, err := filepath.EvalSymlinks(s.abs(rel))
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s: no such file or directory", rel)
		}
		return "", fmt.Errorf("%s: %w", rel, err)
	}
	if _, err := s.rel(real); err != nil {
		return "", fmt.Errorf("%s: symlink points outside the repository", rel)
	}
	return real, nil
}

// hasFleetYAML reports whether the directory rel holds a fleet.yaml.
func (s *scanner) hasFleetYAML(rel string) bool {
	for _, n := range []string{FleetYAMLName, fleetYAMLAltName} {
		if s.isRegular(path.Join(rel, n)) {
			return true
		}
	}
	return false
}

// isRegular reports whether rel is a regular file inside the root, links followed.
func (s *scanner) isRegular(rel string) bool {
	fi, err := fs.Stat(s.fsys, rel)
	return err == nil && fi.Mode().IsRegular()
}

// readFile reads the regular file rel, refusing a path or link that leaves the root and
// anything that is not a regular file (a pipe would block the scan for good, a device could
// be endless) before reading a byte. max bounds what is read; zero is no bound.
func (s *scanner) readFile(rel string, max int64) ([]byte, error) {
	if _, err := s.resolve(rel); err != nil {
		return nil, err
	}
	name := filepath.FromSlash(rel)
	fi, err := s.r.Stat(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, rootErr(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, notRegular(rel, fi.Mode())
	}
	// O_NONBLOCK: were the file swapped for a pipe since the check, opening it cannot block.
	f, err := s.r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, rootErr(err))
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, notRegular(rel, fi.Mode())
	}
	if max > 0 && fi.Size() > max {
		return nil, fmt.Errorf("%s: %w: file is over %d bytes", rel, ErrTooLarge, max)
	}
	var r io.Reader = f
	if max > 0 {
		r = io.LimitReader(f, max+1)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if max > 0 && int64(len(data)) > max {
		return nil, fmt.Errorf("%s: %w: file is over %d bytes", rel, ErrTooLarge, max)
	}
	return data, nil
}

// notRegular is the error for a special file.
func notRegular(rel string, m fs.FileMode) error {
	kind := "special file"
	switch {
	case m&fs.ModeNamedPipe != 0:
		kind = "named pipe"
	case m&fs.ModeSocket != 0:
		kind = "socket"
	case m&fs.ModeDevice != 0:
		kind = "device"
	case m.IsDir():
		kind = "directory"
	}
	return fmt.Errorf("%s: %w: a %s, not a regular file", rel, ErrSpecialFile, kind)
}

// ErrSpecialFile is wrapped by the error for a pipe, socket or device in a repository.
var ErrSpecialFile = errors.New("special file")

// rootErr says in words that a path left the root, which os.Root reports tersely.
func rootErr(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return errors.New("no such file or directory")
	}
	if strings.Contains(err.Error(), "escapes") {
		return errors.New("path is outside the repository")
	}
	return err
}

// bundleDirs finds the bundles under the matched path dir, as Fleet's CLI does.
func (s *scanner) bundleDirs(dir string) ([]string, error) {
	var dirs []string
	if s.hasFleetYAML(dir) {
		dirs = append(dirs, dir)
	} else if ok, err := s.hasLooseYAML(dir); err != nil {
		return nil, err
	} else if ok {
		dirs = append(dirs, dir)
	}
	err := fs.WalkDir(s.fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || p == dir {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return fs.SkipDir
		}
		if s.hasFleetYAML(p) {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning %s: %w", dir, err)
	}
	return dirs, nil
}

// hasLooseYAML reports whether dir, or a subdirectory not holding a fleet.yaml, has YAML files.
func (s *scanner) hasLooseYAML(dir string) (bool, error) {
	entries, err := fs.ReadDir(s.fsys, dir)
	if err != nil {
		return false, fmt.Errorf("%s: %w", dir, rootErr(err))
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if e.IsDir() {
			sub := path.Join(dir, e.Name())
			if s.hasFleetYAML(sub) {
				continue
			}
			if ok, err := s.hasLooseYAML(sub); err != nil || ok {
				return ok, err
			}
			continue
		}
		if ext := path.Ext(e.Name()); ext == ".yaml" || ext == ".yml" {
			return true, nil
		}
	}
	return false, nil
}

// read reads the bundle in dir.
func (s *scanner) read(ctx context.Context, dir string) (Source, error) {
	src := Source{Path: dir, Files: Files{}}
	fyName := ""
	for _, n := range []string{FleetYAMLName, fleetYAMLAltName} {
		if s.isRegular(path.Join(dir, n)) {
			fyName = path.Join(dir, n)
			break
		}
	}
	if fyName != "" {
		data, err := s.readFile(fyName, s.opts.Limits.MaxFileBytes)
		if err != nil {
			return Source{}, err
		}
		if src.Spec, err = ParseFleetYAML(data); err != nil {
			return Source{}, fmt.Errorf("%s: %w", fyName, err)
		}
	} else {
		fyName = path.Join(dir, FleetYAMLName) // for messages
	}
	spec := &src.Spec

	src.Name = BundleName(s.opts.NamePrefix, dir)
	if spec.Name != "" {
		if len(spec.Name) > maxReleaseNameLen || !releaseNameRE.MatchString(spec.Name) {
			return Source{}, fmt.Errorf("%s: name %q: must be at most %d lowercase letters, digits, '-' and '.'", fyName, spec.Name, maxReleaseNameLen)
		}
		src.Name = spec.Name
	}
	src.Labels = spec.Labels
	applyDefaults(spec)

	// valuesFiles are folded into values, as Fleet does when it reads a bundle, so that a
	// target's values and values files both override the bundle's.
	skip := map[string]bool{}
	helms := []*api.HelmOptions{spec.Helm}
	for i := range spec.Targets {
		helms = append(helms, spec.Targets[i].Helm)
	}
	for i := range spec.TargetCustomizations {
		helms = append(helms, spec.TargetCustomizations[i].Helm)
	}
	for _, h := range helms {
		if h == nil {
			continue
		}
		for _, vf := range h.ValuesFiles {
			rel := path.Join(dir, vf)
			data, err := s.readFile(rel, s.opts.Limits.MaxFileBytes)
			if err != nil {
				return Source{}, fmt.Errorf("%s: valuesFiles: %w", fyName, err)
			}
			var values map[string]any
			if err := yaml.Unmarshal(data, &values); err != nil {
				return Source{}, fmt.Errorf("%s: invalid values file: %w", rel, err)
			}
			if len(values) > 0 {
				h.Values = MergeValues(h.Values, values)
			}
			skip[path.Clean(vf)] = true
		}
	}
	skip[FleetYAMLName] = true
	skip[fleetYAMLAltName] = true

	c := collector{s: s, files: src.Files, limits: s.opts.Limits, bundle: dir, visited: map[string]bool{}}
	if err := c.walk(dir, "", nil, skip); err != nil {
		return Source{}, err
	}
	chartDirs := map[string]bool{}
	if d, ok := chartDir(src.Files, spec.BundleDeploymentOptions); ok {
		chartDirs[d] = true
	}
	for _, h := range helms {
		if h == nil || (h.Chart == "" && h.Repo == "") {
			continue
		}
		if err := s.addChart(ctx, &c, dir, fyName, h); err != nil {
			return Source{}, err
		}
		if d, ok := chartDir(src.Files, api.BundleDeploymentOptions{Helm: h}); ok && !isRemoteChart(h.Chart, h.Repo) {
			chartDirs[d] = true
		}
	}
	if spec.Helm == nil || !spec.Helm.DisableDependencyUpdate {
		for _, d := range slices.Sorted(maps.Keys(chartDirs)) {
			if err := s.addDependencies(ctx, &c, dir, d); err != nil {
				return Source{}, err
			}
		}
	}
	return src, nil
}

// addDependencies adds the dependencies a chart of the bundle declares but does not vendor in
// its charts/ directory, as Fleet runs `helm dependency update` when it reads a bundle:
// file:// dependencies from the repository, others from their chart repository or registry.
func (s *scanner) addDependencies(ctx context.Context, c *collector, dir, chartDir string) error {
	chartYAML := path.Join(chartDir, "Chart.yaml")
	var meta chart.Metadata
	if err := yaml.Unmarshal(c.files[chartYAML], &meta); err != nil {
		return fmt.Errorf("%s: %w", path.Join(dir, chartYAML), err)
	}
	charts := path.Join(chartDir, "charts") + "/"
	for _, dep := range meta.Dependencies {
		if dep == nil {
			continue
		}
		vendored := false
		for name := range c.files {
			rest, ok := strings.CutPrefix(name, charts)
			if ok && (strings.HasPrefix(rest, dep.Name+"/") || (strings.HasPrefix(rest, dep.Name+"-") && strings.HasSuffix(rest, ".tgz"))) {
				vendored = true
				break
			}
		}
		if vendored {
			continue
		}
		where := fmt.Sprintf("%s: dependency %s", path.Join(dir, chartYAML), dep.Name)
		switch repoURL := dep.Repository; {
		case strings.HasPrefix(repoURL, "file://"):
			src := path.Join(dir, chartDir, strings.TrimPrefix(repoURL, "file://"))
			if err := c.walk(src, charts+dep.Name+"/", nil, nil); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		case strings.HasPrefix(repoURL, "https://"), strings.HasPrefix(repoURL, "http://"), strings.HasPrefix(repoURL, ociScheme):
			_, files, err := s.fetch.fetch(ctx, dep.Name, repoURL, dep.Version)
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			for _, f := range files {
				if err := c.add(charts+dep.Name+"/"+f.Name, f.Data); err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
			}
		default:
			return fmt.Errorf("%s: repository %q is not a URL: vendor the chart in %s", where, repoURL, charts)
		}
	}
	return nil
}

// applyDefaults names unnamed targets and copies the chart's location into targets that set
// only part of it, as Fleet does, so each target's chart can be resolved.
func applyDefaults(fy *api.FleetYAML) {
	all := len(fy.Targets)
	for i := range fy.Targets {
		if fy.Targets[i].Name == "" {
			fy.Targets[i].Name = fmt.Sprintf("target%03d", i)
		}
	}
	for i := range fy.TargetCustomizations {
		if fy.TargetCustomizations[i].Name == "" {
			fy.TargetCustomizations[i].Name = fmt.Sprintf("target%03d", all+i)
		}
	}
	if fy.Helm == nil {
		return
	}
	for _, ts := range [][]api.BundleTarget{fy.Targets, fy.TargetCustomizations} {
		for i := range ts {
			h := ts[i].Helm
			if h == nil {
				continue
			}
			if h.Repo == "" {
				h.Repo = fy.Helm.Repo
			}
			if h.Chart == "" {
				h.Chart = fy.Helm.Chart
			}
			if h.Version == "" {
				h.Version = fy.Helm.Version
			}
		}
	}
}

// addChart makes sure the chart h names is in the bundle's files: a chart inside the bundle
// already is; a chart elsewhere in the repository is copied, and a remote one downloaded, under
// the chart's .chart/ prefix.
func (s *scanner) addChart(ctx context.Context, c *collector, dir, fyName string, h *api.HelmOptions) error {
	prefix := chartPrefix(h)
	if !isRemoteChart(h.Chart, h.Repo) {
		if local := cleanRel(h.Chart); local != "" {
			if _, ok := c.files[path.Join(local, "Chart.yaml")]; ok {
				return nil
			}
		}
		rel := path.Join(dir, h.Chart)
		if _, err := s.resolve(path.Join(rel, "Chart.yaml")); err != nil {
			return fmt.Errorf("%s: helm.chart %s: %w", fyName, h.Chart, err)
		}
		sub := collector{s: s, files: c.files, limits: c.limits, bundle: c.bundle, visited: map[string]bool{}, size: c.size}
		if err := sub.walk(rel, prefix+path.Base(path.Clean(rel))+"/", nil, nil); err != nil {
			return err
		}
		c.size = sub.size
		return nil
	}
	for n := range c.files {
		if strings.HasPrefix(n, prefix) {
			return nil // another target's chart is the same
		}
	}
	name, files, err := s.fetch.fetch(ctx, h.Chart, h.Repo, h.Version)
	if err != nil {
		return fmt.Errorf("%s: helm chart %s: %w", fyName, chartLocation(h), err)
	}
	for _, f := range files {
		if err := c.add(prefix+name+"/"+f.Name, f.Data); err != nil {
			return fmt.Errorf("%s: helm chart %s: %w", fyName, chartLocation(h), err)
		}
	}
	return nil
}

func chartLocation(h *api.HelmOptions) string {
	s := h.Chart
	if h.Repo != "" {
		s = h.Repo + " " + s
	}
	if h.Version != "" {
		s += " " + h.Version
	}
	return s
}

// collector gathers a bundle's files.
type collector struct {
	s       *scanner
	files   Files
	limits  Limits
	bundle  string
	size    int64
	visited map[string]bool // real directories walked, against symlink loops
}

func (c *collector) add(name string, data []byte) error {
	if err := ValidPath(name); err != nil {
		return fmt.Errorf("bundle %s: %w", c.bundle, err)
	}
	c.size += int64(len(data))
	if err := c.limits.check(path.Join(c.bundle, name), int64(len(data)), len(c.files)+1, c.size); err != nil {
		return fmt.Errorf("bundle %s: %w", c.bundle, err)
	}
	c.files[name] = data
	return nil
}

// walk adds the files of the repository directory rel under the bundle path prefix, leaving out
// hidden files, .fleetignore'd files, nested bundles and the paths (under prefix) in skip.
func (c *collector) walk(rel, prefix string, ignores []string, skip map[string]bool) error {
	real, err := c.s.resolve(rel)
	if err != nil {
		return err
	}
	if c.visited[real] {
		return fmt.Errorf("%s: symlink loop", rel)
	}
	c.visited[real] = true
	defer delete(c.visited, real)

	ignores = slices.Clone(ignores)
	more, err := c.s.readFleetIgnore(path.Join(rel, ".fleetignore"))
	if err != nil {
		return err
	}
	ignores = append(ignores, more...)

	entries, err := fs.ReadDir(c.s.fsys, rel)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, rootErr(err))
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		child := path.Join(rel, name)
		fi, err := c.s.r.Lstat(filepath.FromSlash(child))
		if err != nil {
			return fmt.Errorf("%s: %w", child, rootErr(err))
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if _, err = c.s.resolve(child); err != nil {
				return err
			}
			if fi, err = fs.Stat(c.s.fsys, child); err != nil {
				return fmt.Errorf("%s: %w", child, rootErr(err))
			}
		}
		if ignored(ignores, name, fi.IsDir()) {
			continue
		}
		switch {
		case fi.IsDir():
			if c.s.hasFleetYAML(child) {
				continue // a bundle of its own
			}
			if err := c.walk(child, prefix+name+"/", ignores, skip); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if skip[prefix+name] {
				continue
			}
			if c.limits.MaxFileBytes > 0 && fi.Size() > c.limits.MaxFileBytes {
				return fmt.Errorf("bundle %s: %s: %w: file is over %d bytes", c.bundle, child, ErrTooLarge, c.limits.MaxFileBytes)
			}
			data, err := c.s.readFile(child, c.limits.MaxFileBytes)
			if err != nil {
				return fmt.Errorf("bundle %s: %w", c.bundle, err)
			}
			if err := c.add(prefix+name, data); err != nil {
				return err
			}
		default:
			return fmt.Errorf("bundle %s: %w", c.bundle, notRegular(child, fi.Mode()))
		}
	}
	return nil
}

// maxFleetIgnoreBytes bounds a .fleetignore.
const maxFleetIgnoreBytes = 1 << 20

// readFleetIgnore reads a .fleetignore: one glob per line, matched against file and directory
// names; "dir/*" ignores a directory; # starts a comment.
func (s *scanner) readFleetIgnore(rel string) ([]string, error) {
	if _, err := s.r.Lstat(filepath.FromSlash(rel)); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	data, err := s.readFile(rel, maxFleetIgnoreBytes)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

func ignored(patterns []string, name string, dir bool) bool {
	for _, p := range patterns {
		if d, ok := strings.CutSuffix(p, "/*"); ok {
			if dir && d == name {
				return true
			}
			continue
		}
		if ok, _ := path.Match(strings.TrimSuffix(p, "/"), name); ok {
			return true
		}
	}
	return false
}
