package image_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"flotilla.dev/internal/image"
)

// TestImagesBuildPushAndRun builds the agent's image for linux/amd64 and linux/arm64 and the
// server's for this machine's architecture (both with FLOTILLA_IMAGE_ALL_PLATFORMS=1, as
// `make images` does), pushes them to a registry running in the test, pulls them back and
// checks their platforms, configuration and files, and runs the binary of this machine's
// architecture taken from the pulled layer.
func TestImagesBuildPushAndRun(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the images are Linux images; their binaries run only here on Linux")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	host := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	serverPlatforms := []v1.Platform{host}
	if os.Getenv("FLOTILLA_IMAGE_ALL_PLATFORMS") != "" {
		serverPlatforms = image.DefaultPlatforms
	}
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	regHost := strings.TrimPrefix(reg.URL, "http://")

	for _, c := range []struct {
		spec      image.Spec
		platforms []v1.Platform
		version   []string // the command printing the version
	}{
		{image.Agent, image.DefaultPlatforms, []string{"--version"}},
		{image.Server, serverPlatforms, []string{"--version"}},
	} {
		t.Run(c.spec.Name, func(t *testing.T) {
			idx, err := image.Build(ctx, c.spec, image.Options{Dir: root, Platforms: c.platforms, Version: "v9.8.7-test"})
			if err != nil {
				t.Fatal(err)
			}
			digest, err := idx.Digest()
			if err != nil {
				t.Fatal(err)
			}
			// The OCI layout holds the same index.
			dir := filepath.Join(t.TempDir(), c.spec.Name)
			if err := image.WriteLayout(dir, "test", idx); err != nil {
				t.Fatal(err)
			}
			lidx, err := layout.ImageIndexFromPath(dir)
			if err != nil {
				t.Fatal(err)
			}
			if lm, err := lidx.IndexManifest(); err != nil || len(lm.Manifests) != 1 {
				t.Fatalf("layout index: %v, %v", lm, err)
			} else if lm.Manifests[0].Digest != digest || lm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "test" {
				t.Errorf("the layout holds %s, built %s", lm.Manifests[0].Digest, digest)
			}

			ref := regHost + "/flotilla/" + c.spec.Name + ":test"
			if err := image.Push(ctx, ref, idx, name.Insecure); err != nil {
				t.Fatal(err)
			}
			r, err := name.ParseReference(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			pulled, err := remote.Index(r, remote.WithContext(ctx))
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := pulled.Digest(); d != digest {
				t.Errorf("pulled index %s, pushed %s", d, digest)
			}
			im, err := pulled.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range im.Manifests {
				if m.Platform == nil {
					t.Fatalf("manifest %s has no platform", m.Digest)
				}
				got = append(got, m.Platform.OS+"/"+m.Platform.Architecture)
				img, err := pulled.Image(m.Digest)
				if err != nil {
					t.Fatal(err)
				}
				checkImage(t, c.spec, img, *m.Platform, c.version, m.Platform.Architecture == runtime.GOARCH)
			}
			var want []string
			for _, p := range c.platforms {
				want = append(want, p.OS+"/"+p.Architecture)
			}
			if !slices.Equal(got, want) {
				t.Errorf("platforms %v, want %v", got, want)
			}
		})
	}
}

func checkImage(t *testing.T, spec image.Spec, img v1.Image, p v1.Platform, versionCmd []string, run bool) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != p.OS || cf.Architecture != p.Architecture {
		t.Errorf("%s: config says %s/%s", p.Architecture, cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, spec.Entrypoint) || cf.Config.User != "65532:65532" || cf.Config.Labels["org.opencontainers.image.version"] != "v9.8.7-test" {
		t.Errorf("%s: config %+v", p.Architecture, cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%s: layers %d, %v", p.Architecture, len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*tar.Header{}
	var binary []byte
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files["/"+strings.TrimSuffix(h.Name, "/")] = h
		if "/"+h.Name == spec.Binary {
			if binary, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if h := files[spec.Binary]; h == nil || h.Mode != 0o755 || len(binary) == 0 {
		t.Fatalf("%s: binary %s: %+v", p.Architecture, spec.Binary, h)
	}
	if h := files[spec.DataDir]; h == nil || h.Typeflag != tar.TypeDir || h.Uid != image.User {
		t.Errorf("%s: data directory %s: %+v", p.Architecture, spec.DataDir, h)
	}
	for _, f := range []string{"/etc/passwd", "/tmp"} {
		if files[f] == nil {
			t.Errorf("%s: no %s", p.Architecture, f)
		}
	}
	if !run {
		return
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(spec.Binary))
	if err := os.WriteFile(bin, binary, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, versionCmd...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "v9.8.7-test") {
		t.Errorf("%s %s from the image: %v\n%s", spec.Binary, strings.Join(versionCmd, " "), err, out)
	}
}
