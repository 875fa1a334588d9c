package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Poll settings the fleet cannot use are refused before anything starts.
func TestServerRefusesBadPollSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agent-poll-interval", "0s"}, "--agent-poll-interval must be positive"},
		{[]string{"--agent-poll-interval", "-5s"}, "--agent-poll-interval must be positive"},
		{[]string{"--agent-poll-budget", "0"}, "--agent-poll-budget must be a positive number"},
		{[]string{"--agent-poll-budget", "-1"}, "--agent-poll-budget must be a positive number"},
		{[]string{"--agent-poll-budget", "NaN"}, "--agent-poll-budget must be a positive number"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		var out, errOut bytes.Buffer
		root := NewRoot(strings.NewReader(""), &out, &errOut)
		root.SetArgs(append([]string{"server", "--data-dir", dir, "--listen", "127.0.0.1:0"}, tc.args...))
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("server %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("server %v created its data directory before refusing", tc.args)
		}
	}
}
