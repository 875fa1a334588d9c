//go:build !flotilla_failpoints

package sqlstore

// Failpoints are compiled in only with the flotilla_failpoints build tag (see
// failpoint_on.go). Without it failpointsOn is a false constant, so every `if failpointsOn`
// in the writer is removed by the compiler and costs nothing.
const failpointsOn = false

func failpoint(string, []*op) error { return nil }

func failpointRetryable(error) bool { return false }
