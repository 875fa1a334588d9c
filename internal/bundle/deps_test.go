package bundle

import (
	"testing"

	"flotilla.dev/internal/testenv/deps"
)

// The edge agent links this package.
func TestNoServerOnlyDependencies(t *testing.T) {
	deps.Forbid(t, ".", deps.Edge...)
}
