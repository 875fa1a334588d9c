package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"flotilla.dev/internal/server"
)

// Bad key and bootstrap settings are refused before anything starts.
func TestServerRefusesBadKeySettings(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("flt_from_file\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bootstrap-token-file", tokenFile, "--bootstrap-token", "x"}, "not both"},
		{[]string{"--bootstrap-token-file", empty}, "is empty"},
		{[]string{"--bootstrap-token-file", filepath.Join(t.TempDir(), "missing")}, "reading --bootstrap-token-file"},
		{[]string{"--cluster-credential-ttl", "0s"}, "--cluster-credential-ttl must be positive"},
		{[]string{"--key-grace", "-1h"}, "grace periods not negative"},
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

func TestBootstrapTokenSources(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("flt_from_file\n"), 0o600)
	for _, tc := range []struct {
		args, env, want string
		warn            bool
	}{
		{args: "--bootstrap-token-file=" + tokenFile, env: "flt_env", want: "flt_from_file"},
		{env: "flt_env", want: "flt_env"},
		{args: "--bootstrap-token=flt_flag", want: "flt_flag", warn: true},
		{want: ""},
	} {
		t.Setenv("FLOTILLA_BOOTSTRAP_TOKEN", tc.env)
		cmd := newServerCmd(&globals{})
		if tc.args != "" {
			if err := cmd.ParseFlags([]string{tc.args}); err != nil {
				t.Fatal(err)
			}
		}
		file, _ := cmd.Flags().GetString("bootstrap-token-file")
		cfg := serverConfigOf(t, cmd)
		var logs bytes.Buffer
		if err := bootstrapToken(cmd, cfg, file, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if cfg.BootstrapToken != tc.want || strings.Contains(logs.String(), "process list") != tc.warn {
			t.Errorf("%q with env %q: token %q, logs %q; want %q, warning %v", tc.args, tc.env, cfg.BootstrapToken, logs.String(), tc.want, tc.warn)
		}
	}
}

// serverConfigOf is the part of the configuration the bootstrap flags set.
func serverConfigOf(t *testing.T, cmd *cobra.Command) *server.Config {
	t.Helper()
	v, err := cmd.Flags().GetString("bootstrap-token")
	if err != nil {
		t.Fatal(err)
	}
	return &server.Config{BootstrapToken: v}
}
