package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"flotilla.dev/internal/bundle"
)

// `flotilla render` keeps to the render budget its flags set, and names the flag to raise.
func TestRenderBudgetFlags(t *testing.T) {
	dir := t.TempDir()
	var many strings.Builder
	for range 50 {
		many.WriteString("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "many.yaml"), []byte(many.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) error {
		var out, errOut bytes.Buffer
		root := NewRoot(strings.NewReader(""), &out, &errOut)
		root.SetArgs(append([]string{"render", dir}, args...))
		return root.ExecuteContext(context.Background())
	}
	err := run("--render-max-objects", "10")
	if !errors.Is(err, bundle.ErrBudgetExceeded) || !strings.Contains(err.Error(), "--render-max-objects") {
		t.Fatalf("got %v, want the objects budget exceeded, naming --render-max-objects", err)
	}
	if err := run("--render-max-objects", "50"); err != nil {
		t.Fatal(err)
	}
	if err := run("--render-timeout", "0s"); err == nil || !strings.Contains(err.Error(), "--render-timeout must be positive") {
		t.Fatalf("got %v, want --render-timeout refused", err)
	}
}
