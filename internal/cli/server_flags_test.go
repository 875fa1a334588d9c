package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// --agent-inline-content outside 0..api.MaxInlineContent is refused before anything starts:
// an agent refuses an answer carrying more. The bounds themselves are taken, which a later
// bad flag (checked after it) shows without starting a server.
func TestServerRefusesBadInlineContent(t *testing.T) {
	const refused = "--agent-inline-content must be from 0 to"
	const later = "--agent-poll-budget must be a positive number" // checked after it
	for _, tc := range []struct {
		value int
		want  string
	}{
		{api.MaxInlineContent + 1, refused},
		{-1, refused},
		{api.MaxInlineContent, later},
		{0, later},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		args := []string{"server", "--data-dir", dir, "--listen", "127.0.0.1:0",
			"--agent-inline-content=" + strconv.Itoa(tc.value), "--agent-poll-budget=0"}
		var out, errOut bytes.Buffer
		root := NewRoot(strings.NewReader(""), &out, &errOut)
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--agent-inline-content=%d: %v, want an error containing %q", tc.value, err, tc.want)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("--agent-inline-content=%d: the data directory was created before refusing", tc.value)
		}
	}
}
