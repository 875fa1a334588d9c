package bundle

import (
	"os/exec"
	"strings"
	"testing"
)

// The edge agent links this package, so it must not pull in SQL drivers, git, or Helm's release
// storage (which links SQL drivers).
func TestNoServerOnlyDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// database/sql/driver alone is only interfaces (uuid implements them); database/sql is the
	// SQL client itself.
	forbidden := []string{
		"github.com/lib/pq", "github.com/jackc/pgx", "github.com/jmoiron/sqlx",
		"modernc.org/sqlite", "github.com/mattn/go-sqlite3", "github.com/go-git/",
		"helm.sh/helm/v3/pkg/storage", "helm.sh/helm/v3/pkg/action",
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "database/sql" {
			t.Errorf("internal/bundle depends on %s", dep)
		}
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f)) {
				t.Errorf("internal/bundle depends on %s", dep)
			}
		}
	}
}
