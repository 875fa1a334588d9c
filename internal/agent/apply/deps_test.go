package apply

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent is a small edge binary: this package must not pull in the
// server's storage, SQL drivers of Flotilla's own choice, or git. Helm's
// action package links github.com/lib/pq for its optional SQL release
// storage, which is why lib/pq is not on the list.
func TestDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command("go", "list", "-deps", "-test=false", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"flotilla.dev/", // the package's input types are its own
		"modernc.org/sqlite",
		"github.com/mattn/go-sqlite3",
		"github.com/jackc/pgx",
		"github.com/go-git/",
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "flotilla.dev/internal/agent/apply" {
			continue
		}
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("depends on %s", pkg)
			}
		}
	}
}
