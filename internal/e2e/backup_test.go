package e2e_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/e2e"
	"flotilla.dev/internal/testenv/pg"
)

// TestBackupRestoreMigrate runs a real agent on a real kube-apiserver against a real
// server, takes a backup while the server runs, restores it into a fresh data directory
// for a new server on the same address, then migrates that one to PostgreSQL. At each step
// the agent goes on with its credential, without registering again (its token allowed one
// registration), and a bundle change reaches its cluster.
func TestBackupRestoreMigrate(t *testing.T) {
	clusters, kubes := startClusters(t, "edge-backup")
	k := kubes[0]
	addr := e2e.FreePort(t)
	serverArgs := []string{"--agent-poll-interval", "1s"}
	srv := e2e.StartServer(t, e2e.ServerOptions{Addr: addr, Args: serverArgs})
	cl := srv.CLI(t)
	admin := adminClient(t, srv)
	ctx := testCtx(t, 10*time.Minute)

	tok := newToken(t, cl, "--max-uses", "1")
	ag := startAgent(t, t.TempDir(), "--server", srv.URL, "--ca-checksum", srv.Checksum, "--token", tok,
		"--kubeconfig", clusters[0].KubeconfigPath(), "--labels", "env=edge", "--status-interval", "2s")
	edge := "- clusterSelector:\n    matchLabels: {env: edge}\n"
	apply := func(cl *e2e.CLI, v string) {
		t.Helper()
		cli(t, cl, bundleYAML("app", "defaultNamespace: app\n", map[string]string{"cm.yaml": cmYAML("app-config", v)}, edge), "apply", "-f", "-")
	}
	apply(cl, "1")
	waitSummary(t, ctx, admin, "app", 1, 1, nil)
	eventually(t, time.Minute, "app-config 1", func() error { return configMapIs(ctx, k, "app", "app-config", "1") })
	clusterName := onlyCluster(t, admin)

	// Only an administrator may take a backup.
	viewer := *cl
	viewer.Env = append(append([]string{}, cl.Env...), "FLOTILLA_TOKEN="+tok)
	file := filepath.Join(t.TempDir(), "fleet.backup")
	if _, _, err := viewer.Run(ctx, "", "backup", file); err == nil {
		t.Fatal("a registration token took a backup")
	}
	out := cli(t, cl, "", "backup", file)
	if !strings.Contains(out, "written to "+file) {
		t.Errorf("backup said %q", out)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	if _, err := os.Stat(file + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("the temporary file was left: %v", err)
	}

	// A change after the backup reaches the cluster, then the server is lost with it. A new
	// one starts from the backup, on the same address: the cluster goes back to the backup's
	// state, then follows new changes.
	apply(cl, "lost")
	eventually(t, time.Minute, "app-config lost", func() error { return configMapIs(ctx, k, "app", "app-config", "lost") })
	srv.Stop(t)
	restored := t.TempDir()
	out = cli(t, cl, "", "restore", file, "--data-dir", restored)
	t.Logf("%s", out)
	// A second restore into it is refused.
	if _, errOut, err := cl.Run(ctx, "", "restore", file, "--data-dir", restored); err == nil || !strings.Contains(errOut, "fresh data directory") {
		t.Errorf("a restore into a used data directory: %v %s", err, errOut)
	}
	srv2 := e2e.StartServer(t, e2e.ServerOptions{DataDir: restored, Addr: addr, Args: serverArgs})
	if srv2.Checksum != srv.Checksum {
		t.Errorf("the restored server's CA %s, want the original's %s", srv2.Checksum, srv.Checksum)
	}
	srv2.Token = srv.Token // the admin token is printed on the first start only; it is restored
	cl2, admin2 := srv2.CLI(t), adminClient(t, srv2)
	eventually(t, 2*time.Minute, "app-config back to the backup's 1", func() error { return configMapIs(ctx, k, "app", "app-config", "1") })
	apply(cl2, "2")
	eventually(t, 2*time.Minute, "app-config 2 from the restored server", func() error { return configMapIs(ctx, k, "app", "app-config", "2") })
	waitSummary(t, ctx, admin2, "app", 1, 1, nil)
	if got := onlyCluster(t, admin2); got != clusterName {
		t.Errorf("cluster %s after the restore, want %s", got, clusterName)
	}

	// Outgrowing one machine: the restored installation moves to PostgreSQL.
	db := pg.Start(t).NewDatabase(t)
	if _, errOut, err := cl2.Run(ctx, "", "migrate", "--from", restored, "--to", db); err == nil || !strings.Contains(errOut, "in use") {
		t.Errorf("migrate while the server runs: %v %s", err, errOut)
	}
	srv2.Stop(t)
	out = cli(t, cl2, "", "migrate", "--from", restored, "--to", db)
	t.Logf("%s", out)
	srv3 := e2e.StartServer(t, e2e.ServerOptions{DataDir: restored, Addr: addr, Args: append([]string{"--db", db}, serverArgs...)})
	srv3.Token = srv.Token
	cl3, admin3 := srv3.CLI(t), adminClient(t, srv3)
	apply(cl3, "3")
	eventually(t, 2*time.Minute, "app-config 3 from the PostgreSQL server", func() error { return configMapIs(ctx, k, "app", "app-config", "3") })
	waitSummary(t, ctx, admin3, "app", 1, 1, nil)
	if got := onlyCluster(t, admin3); got != clusterName {
		t.Errorf("cluster %s after the migration, want %s", got, clusterName)
	}
	// The PostgreSQL server's backup restores into SQLite.
	pgFile := filepath.Join(t.TempDir(), "pg.backup")
	cli(t, cl3, "", "backup", pgFile)
	out = cli(t, cl3, "", "restore", pgFile, "--data-dir", t.TempDir())
	if !strings.Contains(out, "restored revision") {
		t.Errorf("restore of the PostgreSQL backup said %q", out)
	}
	select {
	case <-ag.done:
		t.Fatalf("the agent exited: %v", ag.err)
	default:
	}
}

func onlyCluster(t *testing.T, c *client.Client) string {
	t.Helper()
	l, err := c.ListAll(testCtx(t, time.Minute), api.KindCluster, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 1 {
		t.Fatalf("%d clusters, want 1", len(l.Items))
	}
	var o api.Object
	if err := json.Unmarshal(l.Items[0], &o); err != nil {
		t.Fatal(err)
	}
	return o.Metadata.Name
}
