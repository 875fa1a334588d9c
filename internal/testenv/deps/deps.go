// Package deps checks in tests that a package does not link what the edge agent must not
// carry. Imported only by tests.
package deps

import (
	"os/exec"
	"strings"
	"testing"
)

// Edge lists what nothing linked into flotilla-agent may import: the server's store, the
// SQL drivers the server uses, and git. The agent installs Helm releases with Helm's SDK,
// whose storage package carries Helm's SQL release driver (database/sql, lib/pq, sqlx, gorp,
// sql-migrate) and whose plugin loader carries a WebAssembly runtime: those come with Helm
// and are allowed; the agent never opens a database.
var Edge = []string{
	"flotilla.dev/internal/store",
	"modernc.org/sqlite",
	"github.com/mattn/go-sqlite3",
	"github.com/jackc/pgx",
	"github.com/go-git",
}

// Forbid fails t for every package that pkg (a `go list` pattern, usually ".") depends on
// and that is, or lies under, one of forbidden.
func Forbid(t testing.TB, pkg string, forbidden ...string) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-test=false", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	self, err := exec.Command(goTool, "list", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps %s returned only %d packages", pkg, len(deps))
	}
	for _, d := range deps {
		if d == strings.TrimSpace(string(self)) {
			continue
		}
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
}
