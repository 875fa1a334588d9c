package main

import (
	"os"
	"os/exec"
	"testing"

	"flotilla.dev/internal/testenv/deps"
)

// flotilla-agent is an edge binary: it links none of deps.Edge, nor the server's packages.
// It renders and installs charts with Helm v4 only: a second Helm's chart packages would cost
// megabytes of binary and RSS.
func TestDependencies(t *testing.T) {
	deps.Forbid(t, ".", append(deps.Edge,
		"flotilla.dev/internal/server", "flotilla.dev/internal/apiserver", "flotilla.dev/internal/cli",
		"flotilla.dev/internal/fleet", "flotilla.dev/internal/gitops", "helm.sh/helm/v3")...)
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
