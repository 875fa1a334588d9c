package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// flotilla-agent is an edge binary: it must link neither the server's store, nor any SQL
// driver, nor git. Helm's action and storage packages are out too: their SQL release
// driver links lib/pq, sqlx, gorp and sql-migrate, so the agent writes Helm's release
// Secrets itself (internal/agent/apply).
func TestDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command("go", "list", "-deps", "-test=false", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"flotilla.dev/internal/store",
		"flotilla.dev/internal/server",
		"flotilla.dev/internal/apiserver",
		"flotilla.dev/internal/cli",
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
	deps := strings.Fields(string(out))
	for _, pkg := range deps {
		for _, f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, strings.TrimSuffix(f, "/")+"/") {
				t.Errorf("flotilla-agent depends on %s", pkg)
			}
		}
	}
	if len(deps) < 10 {
		t.Fatalf("go list -deps returned only %d packages: %q", len(deps), out)
	}
}

// The agent runs on Arm boxes as well as x86 ones.
func TestCrossBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-building takes a while")
	}
	cmd := exec.Command("go", "build", "-o", os.DevNull, ".")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("GOOS=linux GOARCH=arm64 go build: %v\n%s", err, out)
	}
}
