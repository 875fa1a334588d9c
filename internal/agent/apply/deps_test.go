package apply

import (
	"testing"

	"flotilla.dev/internal/testenv/deps"
)

// The agent links this package; its input types are its own, so it imports nothing of
// Flotilla's, and none of deps.Edge.
func TestDependencies(t *testing.T) {
	deps.Forbid(t, ".", append(deps.Edge, "flotilla.dev/internal", "flotilla.dev/api", "flotilla.dev/client")...)
}
