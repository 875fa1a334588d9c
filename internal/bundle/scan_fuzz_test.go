//go:build unix

package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// secretMarker is in every file outside the scanned root: no bundle may ever hold it.
const secretMarker = "OUTSIDE-THE-REPOSITORY"

// FuzzScan scans trees made from fuzz bytes: files, directories, links (inside, outside, to
// a pipe or a device) and pipes, under fleet.yaml files, values files and .fleetignore files
// that name them. Scan never panics, returns bundles or an error, never returns a file from
// outside the root, and never opens a pipe (it would block the fuzzer, failing the run).
func FuzzScan(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 2, 2})
	f.Add([]byte{3, 5, 0, 2, 4, 1, 2, 6, 2})
	f.Add([]byte{2, 5, 6, 1, 7, 2, 2, 3, 8, 0})
	f.Add([]byte{0, 3, 4, 1, 4, 0, 3, 2, 9})
	f.Add([]byte("fleet.yaml valuesFiles .fleetignore"))
	names := []string{"cm.yaml", "fleet.yaml", ".fleetignore", "v.yaml", "app", "app/cm.yaml", "app/fleet.yaml",
		"app/.fleetignore", "app/v.yaml", "l", "app/l", "chart/Chart.yaml", "chart/templates/cm.yaml", "p"}
	contents := []string{
		cm,
		"helm:\n  valuesFiles: [v.yaml]\n",
		"helm:\n  valuesFiles: [../outside/secret.yaml]\n",
		"helm:\n  chart: ../chart\n",
		"cm.yaml\n*.yaml\n",
		"a: b\n",
		"",
		"apiVersion: v2\nname: c\nversion: 0.1.0\n",
		"helm:\n  valuesFiles: [l]\n",
		"namespace: [\n",
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		top := t.TempDir()
		root := filepath.Join(top, "repo")
		outside := filepath.Join(top, "outside")
		for _, d := range []string{root, outside} {
			os.Mkdir(d, 0o755)
		}
		os.WriteFile(filepath.Join(outside, "secret.yaml"), []byte("kind: Secret\nmetadata: {name: "+secretMarker+"}\n"), 0o644)
		os.WriteFile(filepath.Join(outside, ".fleetignore"), []byte(secretMarker+"\n"), 0o644)
		syscall.Mkfifo(filepath.Join(outside, "fifo"), 0o600)
		targets := []string{"../outside/secret.yaml", filepath.Join(outside, "secret.yaml"), "../outside/fifo", "/dev/zero",
			"cm.yaml", "..", ".", "app", "../outside", "p", "../../outside/.fleetignore", "l"}
		next := func() int {
			if len(data) == 0 {
				return 0
			}
			c := data[0]
			data = data[1:]
			return int(c)
		}
		// The tree is built through an os.Root, after removing what a name held, so that the
		// harness itself never writes through a link or into a pipe.
		r, err := os.OpenRoot(root)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		realRoot, err := filepath.EvalSymlinks(root)
		if err != nil {
			t.Fatal(err)
		}
		for n := next() % 12; n >= 0 && len(data) > 0; n-- {
			name := names[next()%len(names)]
			if dir := filepath.Dir(name); dir != "." {
				if fi, err := r.Lstat(dir); err == nil && !fi.IsDir() {
					next()
					continue
				}
				r.MkdirAll(dir, 0o755)
			}
			r.Remove(name)
			switch next() % 4 {
			case 0, 1:
				r.WriteFile(name, []byte(contents[next()%len(contents)]), 0o644)
			case 2:
				r.Symlink(targets[next()%len(targets)], name)
			case 3:
				// Only where no link leads elsewhere.
				parent := filepath.Join(realRoot, filepath.Dir(name))
				if p, err := filepath.EvalSymlinks(parent); err == nil && p == parent {
					syscall.Mkfifo(filepath.Join(parent, filepath.Base(name)), 0o600)
				}
			}
		}
		var paths []string
		if p := next() % 5; p > 0 {
			paths = []string{[]string{"", "app", "*", "l", "../outside"}[p]}
		}
		srcs, err := Scan(context.Background(), root, ScanOptions{NamePrefix: "f", Paths: paths, Limits: Limits{MaxFiles: 50, MaxFileBytes: 1 << 16, MaxBytes: 1 << 18}})
		if err != nil {
			if errors.Is(err, context.Canceled) || err.Error() == "" {
				t.Fatalf("unexpected error %v", err)
			}
			if strings.Contains(err.Error(), secretMarker) {
				t.Fatalf("error %q holds a file from outside", err)
			}
			return
		}
		if len(srcs) == 0 {
			t.Fatal("no error and no bundle")
		}
		for _, s := range srcs {
			for name, content := range s.Files {
				if bytes.Contains(content, []byte(secretMarker)) {
					t.Fatalf("bundle %s: %s holds a file from outside", s.Name, name)
				}
			}
			if spec, _ := json.Marshal(s.Spec); bytes.Contains(spec, []byte(secretMarker)) {
				t.Fatalf("bundle %s: its fleet.yaml values hold a file from outside", s.Name)
			}
		}
	})
}
