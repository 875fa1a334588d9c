package e2e_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/sim"
)

// TestSimCommand runs `flotilla sim` as an operator would: the server's address, its CA
// checksum and the admin token in the environment, and reads its table and JSON report.
func TestSimCommand(t *testing.T) {
	srv := e2e.StartServer(t, e2e.ServerOptions{Args: []string{"--agent-poll-interval", "1s"}})
	out := filepath.Join(t.TempDir(), "sim.json")
	cli := &e2e.CLI{Bin: e2e.Binary(t, "flotilla"), Env: []string{"FLOTILLA_TOKEN=" + srv.Token, "FLOTILLA_CONFIG=" + filepath.Join(t.TempDir(), "none.json")}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stdout, stderr, err := cli.Run(ctx, "", "sim", "--server", srv.URL, "--ca-checksum", srv.Checksum,
		"--clusters", "200", "--labels", "env=prod:1,dev:1", "--fail-fraction", "0.1",
		"--change-bundle", "cli-change", "--change-selector", "env=prod", "--report-delay", "10ms",
		"--baseline", "300ms", "--duration", "1s", "--poll-storm", "300ms", "--progress", "500ms", "--json", out)
	if err != nil {
		t.Fatalf("flotilla sim: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, want := range []string{"baseline", "registration", "reached all", "idle fleet", "unchanged poll", "server RSS", "desired-304"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the report lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "registered 200/200") {
		t.Errorf("no progress line with every cluster registered:\n%s", stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep sim.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	c := rep.Change
	switch {
	case rep.Registration == nil || rep.Registration.Clusters != 200:
		t.Errorf("registration %+v, want 200 clusters", rep.Registration)
	case c == nil || c.Reported != int64(c.Expect.Reach) || c.Expect.ErrApplied == 0 || c.Expect.Targeted == 0 || c.Expect.Targeted == 200:
		t.Errorf("change %+v: want about half the clusters targeted, some failing, all reported", c)
	case rep.Baseline == nil || rep.PollStorm == nil || rep.PollStorm.RateRatio <= 0 || rep.Idle == nil:
		t.Errorf("baseline %+v, storm %+v, idle %+v: want all measured", rep.Baseline, rep.PollStorm, rep.Idle)
	case rep.ServerMemory.End <= 0 || rep.Calls["desired"].Count == 0:
		t.Errorf("server memory %+v, calls %+v: want both", rep.ServerMemory, rep.Calls)
	}

	// Without any CA the command refuses, naming what is missing.
	_, stderr, err = cli.Run(ctx, "", "sim", "--server", srv.URL, "--clusters", "1")
	if err == nil || !strings.Contains(stderr, "--ca-checksum") {
		t.Errorf("sim without a CA: %v, %q; want an error naming --ca-checksum", err, stderr)
	}
}
