package apply

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent is a small edge binary: this package must not pull in the
// server's storage, any SQL driver, or git. That includes Helm's action and
// storage packages, whose SQL release driver links lib/pq, sqlx, gorp and
// sql-migrate: the engine writes Helm's release Secrets itself.
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
		"github.com/lib/pq",
		"github.com/jmoiron/sqlx",
		"github.com/go-gorp/gorp",
		"github.com/rubenv/sql-migrate",
		"helm.sh/helm/v3/pkg/action",
		"helm.sh/helm/v3/pkg/storage",
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
