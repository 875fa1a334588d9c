//go:build unix

package bundle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// scanWatchingFIFOs runs Scan and reports which of fifos it opened. A reader blocked on a
// FIFO is found (a non-blocking open for writing succeeds only while one is there) and let go
// with an empty file, so that the old behaviour fails the test instead of hanging it.
func scanWatchingFIFOs(t *testing.T, root string, opts ScanOptions, fifos ...string) (opened []string, err error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := Scan(context.Background(), root, opts)
		done <- err
	}()
	for {
		select {
		case err := <-done:
			return opened, err
		default:
		}
		for _, f := range fifos {
			if w, err := os.OpenFile(f, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				opened = append(opened, f)
				w.Close()
			}
		}
		time.Sleep(time.Millisecond)
	}
}

func mkfifo(t *testing.T, p string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Scan opens nothing but regular files inside the root: a .fleetignore, fleet.yaml, values
// file or manifest that is (or links to) a pipe, a device or a file outside is refused with
// an error naming it, and a pipe is never opened, so a hostile repository cannot block a
// worker for good or read the server's files.
func TestScanOpensOnlyRegularFilesInside(t *testing.T) {
	outsideDir := t.TempDir()
	outsideFIFO := mkfifo(t, filepath.Join(outsideDir, "fifo"))
	outsideIgnore := filepath.Join(outsideDir, "ignore")
	if err := os.WriteFile(outsideIgnore, []byte("cm.yaml\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		files   map[string]string
		links   map[string]string // name → target
		fifos   []string          // FIFOs to make inside the root
		paths   []string
		wantErr []string
		special bool
	}{
		{name: ".fleetignore links to a FIFO outside", files: map[string]string{"cm.yaml": cm},
			links: map[string]string{".fleetignore": outsideFIFO}, wantErr: []string{".fleetignore", "outside the repository"}},
		{name: ".fleetignore links to a file outside", files: map[string]string{"cm.yaml": cm, "other.yaml": cm},
			links: map[string]string{".fleetignore": outsideIgnore}, wantErr: []string{".fleetignore", "outside the repository"}},
		{name: ".fleetignore links to a device", files: map[string]string{"cm.yaml": cm},
			links: map[string]string{".fleetignore": "/dev/zero"}, wantErr: []string{".fleetignore", "outside the repository"}},
		{name: ".fleetignore is a FIFO", files: map[string]string{"cm.yaml": cm},
			fifos: []string{".fleetignore"}, wantErr: []string{".fleetignore", "named pipe"}, special: true},
		{name: ".fleetignore links to a FIFO inside", files: map[string]string{"cm.yaml": cm},
			fifos: []string{"pipes/p"}, links: map[string]string{".fleetignore": "pipes/p"}, wantErr: []string{".fleetignore", "named pipe"}, special: true},
		{name: "manifest is a FIFO", files: map[string]string{"cm.yaml": cm},
			fifos: []string{"more.yaml"}, wantErr: []string{"more.yaml", "named pipe"}, special: true},
		{name: "fleet.yaml is a FIFO", files: map[string]string{"app/cm.yaml": cm},
			fifos: []string{"app/fleet.yaml"}, wantErr: []string{"app/fleet.yaml", "named pipe"}, special: true},
		{name: "values file is a FIFO", files: map[string]string{"fleet.yaml": "helm:\n  chart: c\n  valuesFiles: [v.yaml]\n", "c/Chart.yaml": "apiVersion: v2\nname: c\nversion: 0.1.0\n"},
			fifos: []string{"v.yaml"}, wantErr: []string{"v.yaml", "named pipe"}, special: true},
		{name: "path links out", files: map[string]string{"cm.yaml": cm},
			links: map[string]string{"apps": outsideDir}, paths: []string{"apps"}, wantErr: []string{"no bundle found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files)
			var fifos []string
			for _, f := range tt.fifos {
				fifos = append(fifos, mkfifo(t, filepath.Join(dir, filepath.FromSlash(f))))
			}
			for name, target := range tt.links {
				if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			opened, err := scanWatchingFIFOs(t, dir, ScanOptions{NamePrefix: "r", Paths: tt.paths}, append(fifos, outsideFIFO)...)
			if len(opened) > 0 {
				t.Errorf("Scan opened %v", opened)
			}
			if err == nil {
				t.Fatalf("Scan() succeeded, want an error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Scan() error = %q, want it to contain %q", err, w)
				}
			}
			if tt.special && !errors.Is(err, ErrSpecialFile) {
				t.Errorf("Scan() error %v does not wrap ErrSpecialFile", err)
			}
			if strings.Contains(err.Error(), outsideDir) {
				t.Errorf("Scan() error %q names a path outside the repository", err)
			}
		})
	}
}
