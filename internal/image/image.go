// Package image builds Flotilla's container images without a container engine: each is one
// statically linked Go binary on an empty base, for linux/amd64 and linux/arm64, assembled
// with go-containerregistry into an OCI image index, written as an OCI layout and optionally
// pushed to a registry.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the unprivileged user and group the images run as (no user database is needed to
// run as a number; /etc/passwd names it for tools that look).
const User = 65532

// Spec is one image.
type Spec struct {
	// Name is the image's repository name, e.g. "flotilla-server".
	Name string
	// Package is the Go package of its binary, e.g. "./cmd/flotilla".
	Package string
	// Binary is where the binary goes in the image.
	Binary string
	// Entrypoint and Cmd are the image's defaults.
	Entrypoint, Cmd []string
	// Env are extra environment variables, KEY=VALUE.
	Env []string
	// DataDir, if set, is created owned by User and declared a volume.
	DataDir string
	// Ports are exposed ports, e.g. "8443/tcp".
	Ports []string
	// VersionVar is the -X linker variable set to the version, if any.
	VersionVar string
}

// Server is the flotilla server's image: `flotilla server` on its embedded database in
// /var/lib/flotilla, listening on every address.
var Server = Spec{
	Name:       "flotilla-server",
	Package:    "./cmd/flotilla",
	Binary:     "/usr/local/bin/flotilla",
	Entrypoint: []string{"/usr/local/bin/flotilla"},
	Cmd:        []string{"server", "--data-dir", "/var/lib/flotilla", "--listen", "0.0.0.0:8443"},
	DataDir:    "/var/lib/flotilla",
	Ports:      []string{"8443/tcp"},
	VersionVar: "flotilla.dev/internal/cli.Version",
}

// Agent is flotilla-agent's image, run as a pod of the cluster it manages.
var Agent = Spec{
	Name:       "flotilla-agent",
	Package:    "./cmd/flotilla-agent",
	Binary:     "/usr/local/bin/flotilla-agent",
	Entrypoint: []string{"/usr/local/bin/flotilla-agent"},
	DataDir:    "/var/lib/flotilla-agent",
	VersionVar: "flotilla.dev/internal/agent.version",
}

// Options say how to build.
type Options struct {
	// Dir is the module's root directory.
	Dir string
	// Platforms default to linux/amd64 and linux/arm64.
	Platforms []v1.Platform
	// Version is stamped into the binary and the image's labels ("dev" if empty).
	Version string
	// Created is the images' creation time; the zero time keeps builds reproducible.
	Created time.Time
	// CACerts is a CA bundle to put at /etc/ssl/certs/ca-certificates.crt (the server reaches
	// git hosts over HTTPS); empty uses the build machine's, if it has one.
	CACerts string
	// TrimPath builds with -trimpath, as releases are.
	TrimPath bool
	// Go is the go command ("go" if empty).
	Go string
	// Log receives the build's progress.
	Log io.Writer
}

// DefaultPlatforms are those Flotilla ships for: x86 and Arm edge boxes.
var DefaultPlatforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// Build builds spec's image for every platform and returns them as one OCI image index.
func Build(ctx context.Context, spec Spec, opts Options) (v1.ImageIndex, error) {
	if len(opts.Platforms) == 0 {
		opts.Platforms = DefaultPlatforms
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Go == "" {
		opts.Go = "go"
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	certs, err := caCerts(opts.CACerts)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "flotilla-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range opts.Platforms {
		bin := filepath.Join(tmp, spec.Name+"-"+p.OS+"-"+p.Architecture)
		if err := goBuild(ctx, spec, opts, p, bin); err != nil {
			return nil, err
		}
		img, err := platformImage(spec, opts, p, bin, certs)
		if err != nil {
			return nil, fmt.Errorf("image %s for %s/%s: %w", spec.Name, p.OS, p.Architecture, err)
		}
		platform := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &platform}})
	}
	return idx, nil
}

func goBuild(ctx context.Context, spec Spec, opts Options, p v1.Platform, out string) error {
	args := []string{"build", "-o", out}
	if opts.TrimPath {
		args = append(args, "-trimpath")
	}
	ldflags := "-s -w"
	if spec.VersionVar != "" {
		ldflags += " -X " + spec.VersionVar + "=" + opts.Version
	}
	args = append(args, "-ldflags", ldflags, spec.Package)
	cmd := exec.CommandContext(ctx, opts.Go, args...)
	cmd.Dir = opts.Dir
	// Static binaries on an empty base: no C library in the image.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	if p.Variant != "" && p.Architecture == "arm" {
		cmd.Env = append(cmd.Env, "GOARM="+p.Variant[1:])
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = opts.Log, &stderr
	fmt.Fprintf(opts.Log, "building %s for %s/%s\n", spec.Package, p.OS, p.Architecture)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s for %s/%s: %w\n%s", spec.Package, p.OS, p.Architecture, err, stderr.Bytes())
	}
	return nil
}

// caCerts reads the CA bundle to ship: the one given, or the build machine's if any.
func caCerts(path string) ([]byte, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading the CA bundle: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

func platformImage(spec Spec, opts Options, p v1.Platform, bin string, certs []byte) (v1.Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	layerTar, err := rootfs(spec, data, certs, opts.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "flotilla image build: " + spec.Package, Created: v1.Time{Time: opts.Created}}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: opts.Created}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.Cmd = spec.Cmd
	cf.Config.User = fmt.Sprintf("%d:%d", User, User)
	cf.Config.Env = append([]string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "HOME=/tmp"}, spec.Env...)
	cf.Config.WorkingDir = "/"
	if spec.DataDir != "" {
		cf.Config.Volumes = map[string]struct{}{spec.DataDir: {}}
		cf.Config.WorkingDir = spec.DataDir
	}
	if len(spec.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, port := range spec.Ports {
			cf.Config.ExposedPorts[port] = struct{}{}
		}
	}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":    spec.Name,
		"org.opencontainers.image.version":  opts.Version,
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
	return mutate.ConfigFile(img, cf)
}

// rootfs is the image's one layer: the binary, a CA bundle, a user database naming User, a
// data directory it owns and a /tmp. Every entry has the same fixed time.
func rootfs(spec Spec, binary, certs []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	dir := func(path string, mode int64, uid int) error {
		if dirs[path] {
			return nil
		}
		dirs[path] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: path + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(path string, mode int64, data []byte) error {
		// Parents first, as unpackers expect.
		var parents []string
		for d := filepath.Dir(path); d != "/" && d != "."; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := dir(d[1:], 0o755, 0); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path[1:], Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := file(spec.Binary, 0o755, binary); err != nil {
		return nil, err
	}
	if certs != nil {
		if err := file("/etc/ssl/certs/ca-certificates.crt", 0o644, certs); err != nil {
			return nil, err
		}
	}
	if err := file("/etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nflotilla:x:%d:%d:flotilla:/tmp:/sbin/nologin\n", User, User)); err != nil {
		return nil, err
	}
	if err := file("/etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nflotilla:x:%d:\n", User)); err != nil {
		return nil, err
	}
	if err := dir("tmp", 0o1777, 0); err != nil {
		return nil, err
	}
	if spec.DataDir != "" {
		var parents []string
		for d := filepath.Dir(spec.DataDir); d != "/"; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := dir(d[1:], 0o755, 0); err != nil {
				return nil, err
			}
		}
		if err := dir(spec.DataDir[1:], 0o700, User); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteLayout writes idx as an OCI image layout in dir (replaced if it exists): its
// index.json names idx by tag, as registries and tools that copy layouts expect.
func WriteLayout(dir, tag string, idx v1.ImageIndex) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing the OCI layout %s: %w", dir, err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return fmt.Errorf("writing the OCI layout %s: %w", dir, err)
	}
	return nil
}

// Push pushes idx to ref (registry/repository:tag).
func Push(ctx context.Context, ref string, idx v1.ImageIndex, opts ...name.Option) error {
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	return nil
}
