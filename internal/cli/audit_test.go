package cli

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
)

// flotilla audit against the real API and audit log over SQLite.
func TestAuditCommand(t *testing.T) {
	_, st := apiServer(t)
	a := auth.NewAuthenticator(st)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	al, err := audit.New(audit.Config{Store: st, Logger: log, BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	mux := http.NewServeMux()
	apiserver.New(st, a, log).Register(mux)
	mux.Handle("GET "+api.PathAudit, al.Handler())
	ts := httptest.NewServer(al.Middleware(mux))
	t.Cleanup(ts.Close)
	c := &cliT{t: t, server: ts.URL, config: filepath.Join(t.TempDir(), "none.json")}

	c.must(gitrepoYAML, "apply", "-f", "-")
	c.must("", "delete", "gitrepo", "apps")
	var table string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if table = c.must("", "audit", "--since", "1h"); strings.Contains(table, "delete") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit shows:\n%s", table)
		}
	}
	lines := strings.Split(strings.TrimSpace(table), "\n")
	// apply checks every document with a dry run first: recorded, and marked.
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[1], "update (dry run)") ||
		!strings.Contains(lines[2], "update ") || strings.Contains(lines[2], "dry run") || !strings.Contains(lines[3], "delete") {
		t.Fatalf("table:\n%s", table)
	}
	for _, l := range lines[1:] {
		if !strings.Contains(l, "admin") || !strings.Contains(l, "GitRepo") || !strings.Contains(l, api.DefaultNamespace+"/apps") {
			t.Errorf("row %q", l)
		}
	}
	var list api.AuditRecordList
	if err := json.Unmarshal([]byte(c.must("", "audit", "--kind", "GitRepo", "--verb", "delete", "-o", "json")), &list); err != nil ||
		len(list.Items) != 1 || list.Items[0].Name != "apps" || list.Items[0].Code != http.StatusOK {
		t.Fatalf("json: %v %+v", err, list)
	}
	if out := c.must("", "audit", "--limit", "1"); strings.Count(out, "\n") != 2 {
		t.Errorf("--limit 1:\n%s", out)
	}
	c.fails("--output", "audit", "-o", "yaml")
	c.fails("since", "audit", "--since", "yesterday")
}
