// Command images builds Flotilla's container images (the server and the agent, linux/amd64
// and linux/arm64) without a container engine, writes each as an OCI layout under --out, and
// pushes them when --push names a registry and repository prefix.
//
//	go run ./hack/images --version v0.4.0 --out dist/oci --push registry.example:5000/flotilla
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"flotilla.dev/internal/image"
)

func main() {
	version := flag.String("version", "dev", "version stamped into the binaries and the images' labels and tags")
	out := flag.String("out", "dist/oci", "directory for the OCI layouts, one per image")
	push := flag.String("push", "", "registry/prefix to push to as PREFIX/flotilla-server:VERSION and PREFIX/flotilla-agent:VERSION (empty: do not push)")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "platforms to build, comma-separated")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *version, *out, *push, *platforms); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, version, out, push, platforms string) error {
	var ps []v1.Platform
	for _, p := range strings.Split(platforms, ",") {
		pl, err := v1.ParsePlatform(strings.TrimSpace(p))
		if err != nil {
			return fmt.Errorf("platform %q: %w", p, err)
		}
		ps = append(ps, *pl)
	}
	for _, spec := range []image.Spec{image.Server, image.Agent} {
		idx, err := image.Build(ctx, spec, image.Options{Dir: ".", Platforms: ps, Version: version, TrimPath: true, Log: os.Stderr})
		if err != nil {
			return err
		}
		dir := filepath.Join(out, spec.Name)
		if err := image.WriteLayout(dir, version, idx); err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s: OCI layout %s (%s)\n", spec.Name, dir, d)
		if push != "" {
			ref := strings.TrimSuffix(push, "/") + "/" + spec.Name + ":" + version
			if err := image.Push(ctx, ref, idx); err != nil {
				return err
			}
			fmt.Printf("%s: pushed %s@%s\n", spec.Name, ref, d)
		}
	}
	return nil
}
