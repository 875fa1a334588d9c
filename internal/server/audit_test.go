package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/server"
	"flotilla.dev/internal/store"
)

// rawClient sends requests with headers the client package does not set.
func rawClient(t *testing.T, ts *testServer) *http.Client {
	t.Helper()
	tc, err := client.TLSConfig(nil, ts.checksum, false)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
}

func send(t *testing.T, hc *http.Client, ts *testServer, method, path, token, requestID, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if requestID != "" {
		req.Header.Set(api.HeaderRequestID, requestID)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// auditAll pages through the audit log with small pages.
func auditAll(t *testing.T, c *client.Client, q client.AuditQuery) []api.AuditRecord {
	t.Helper()
	var out []api.AuditRecord
	for {
		page, err := c.Audit(ctxT(t), q)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Items...)
		if page.Continue == "" {
			return out
		}
		q.Continue = page.Continue
	}
}

// Every change and every denial is recorded with who, what, where from and how it ended; no
// Secret value, password, token or query credential reaches the database or the log file.
func TestAuditLog(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "audit.jsonl")
	ts, s := startWith(t, dir, func(c *server.Config) { c.AuditLogFile = logFile })
	ctx := ctxT(t)
	const (
		secretValue   = "hunter2-audit-secret-value"
		bodyPassword  = "BODY-PASSWORD-VALUE-77"
		queryToken    = "QUERY-TOKEN-VALUE-99"
		bogusToken    = "bogus-token-value-55"
		nonAdminToken = "flt_bob-token-value-0123456789"
	)
	if err := auth.NewAuthenticator(s.Store()).CreateToken(ctx, nonAdminToken, "bob", false, 0); err != nil {
		t.Fatal(err)
	}
	bob, err := client.New(client.Config{Server: ts.url, Token: nonAdminToken, CAChecksum: ts.checksum})
	if err != nil {
		t.Fatal(err)
	}
	hc := rawClient(t, ts)
	secretsPath := "/apis/" + api.APIVersion + "/namespaces/" + api.DefaultNamespace + "/secrets"

	secret := func(value string) *api.Object {
		raw, _ := json.Marshal(api.SecretSpec{Type: api.SecretTypeBasicAuth, StringData: map[string]string{"username": "deploy", "password": value}})
		return &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindSecret},
			Metadata: api.ObjectMeta{Name: "db-auth", Namespace: api.DefaultNamespace}, Spec: raw}
	}
	if _, err := ts.admin.Create(ctx, secret(secretValue)); err != nil {
		t.Fatal(err)
	}
	if _, result, err := ts.admin.Apply(ctx, secret(secretValue+"-2"), false); err != nil || result != "configured" {
		t.Fatalf("update: %q, %v", result, err)
	}
	if _, err := ts.admin.Delete(ctx, api.KindSecret, api.DefaultNamespace, "db-auth", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Create(ctx, secret(secretValue)); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("bob's create: %v, want forbidden", err)
	}
	if _, err := bob.Audit(ctx, client.AuditQuery{}); err == nil || !strings.Contains(err.Error(), "not an admin") {
		t.Fatalf("bob reads the audit log: %v, want forbidden", err)
	}
	// A client's sane request ID is kept and echoed; a hostile one is replaced.
	resp := send(t, hc, ts, http.MethodDelete, secretsPath+"/nope?token="+queryToken, adminToken, "req-query-1", "")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get(api.HeaderRequestID) != "req-query-1" {
		t.Fatalf("delete: %d, request ID %q", resp.StatusCode, resp.Header.Get(api.HeaderRequestID))
	}
	badBody := `{"apiVersion":"` + api.APIVersion + `","kind":"Secret","metadata":{"name":"Not A Name"},"spec":{"stringData":{"password":"` + bodyPassword + `"}}}`
	resp = send(t, hc, ts, http.MethodPost, secretsPath, adminToken, "bad id; with spaces <b>", badBody)
	badID := resp.Header.Get(api.HeaderRequestID)
	if resp.StatusCode < 400 || resp.StatusCode >= 500 || badID == "" || strings.Contains(badID, " ") {
		t.Fatalf("bad create: %d, request ID %q", resp.StatusCode, badID)
	}
	if resp = send(t, hc, ts, http.MethodGet, "/apis/"+api.APIVersion+"/bundles", bogusToken, "req-bogus", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bogus token: %d", resp.StatusCode)
	}
	// Reads by a permitted user are not recorded.
	if _, err := ts.admin.List(ctx, api.KindSecret, "", client.ListOptions{}); err != nil {
		t.Fatal(err)
	}

	var recs []api.AuditRecord
	waitUntil(t, "the records are written", func() bool {
		recs = auditAll(t, ts.admin, client.AuditQuery{Since: "1h", Limit: 2})
		return len(recs) >= 8
	})
	// Records written together may be stored in any order among themselves.
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
	type want struct {
		user, verb, name, reason string
		code                     int
	}
	wants := []want{
		{"admin", "create", "db-auth", "", 201},
		{"admin", "update", "db-auth", "", 200},
		{"admin", "delete", "db-auth", "", 200},
		{"bob", "create", "", api.ReasonForbidden, 403}, // refused before its body is read: no name
		{"bob", "list", "", api.ReasonForbidden, 403},
		{"admin", "delete", "nope", api.ReasonNotFound, 404},
		{"admin", "create", "", "", 0},
		{"", "list", "", api.ReasonUnauthorized, 401},
	}
	if len(recs) != len(wants) {
		t.Fatalf("%d records, want %d: %+v", len(recs), len(wants), recs)
	}
	for i, w := range wants {
		r := recs[i]
		kind := api.KindSecret
		if i == 4 {
			kind = "AuditRecord"
		}
		if i == 7 {
			kind = api.KindBundle
		}
		if r.User != w.user || r.Verb != w.verb || r.Name != w.name || r.Kind != kind || (w.code != 0 && r.Code != w.code) ||
			(w.reason != "" && r.Reason != w.reason) || r.Source != "127.0.0.1" || r.RequestID == "" || r.Time.IsZero() {
			t.Errorf("record %d: %+v, want %+v of kind %s", i, r, w, kind)
		}
		if i < 4 && r.Namespace != api.DefaultNamespace {
			t.Errorf("record %d: namespace %q", i, r.Namespace)
		}
	}
	if !strings.Contains(recs[3].Message, "bob") {
		t.Errorf("the denial's message says nothing of who: %q", recs[3].Message)
	}
	if recs[5].RequestID != "req-query-1" || recs[5].Path != secretsPath+"/nope?token=REDACTED" {
		t.Errorf("query record: ID %q, path %q", recs[5].RequestID, recs[5].Path)
	}
	if recs[6].RequestID != badID || recs[6].Code < 400 || recs[6].Message != "" {
		t.Errorf("refused create: %+v (request ID sent back %q)", recs[6], badID)
	}
	if recs[7].RequestID != "req-bogus" {
		t.Errorf("401 record: %+v", recs[7])
	}
	// Filters.
	if got := auditAll(t, ts.admin, client.AuditQuery{Since: "1h", Result: "denied"}); len(got) != 3 {
		t.Errorf("denied: %d records, want 3", len(got))
	}
	if got := auditAll(t, ts.admin, client.AuditQuery{Since: "1h", User: "bob", Limit: 1}); len(got) != 2 {
		t.Errorf("bob: %d records, want 2", len(got))
	}
	if got := auditAll(t, ts.admin, client.AuditQuery{Since: "1h", Verb: "delete", Kind: api.KindSecret}); len(got) != 2 {
		t.Errorf("deletes of Secrets: %d records, want 2", len(got))
	}
	if _, err := ts.admin.Audit(ctx, client.AuditQuery{Since: "yesterday"}); err == nil || !strings.Contains(err.Error(), "since") {
		t.Errorf("a bad since: %v", err)
	}

	ts.stop()
	lines := 0
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r api.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		lines++
	}
	f.Close()
	if lines != len(wants) {
		t.Errorf("%d lines in the log file, want %d", lines, len(wants))
	}
	// Nothing secret anywhere: not in the database (its WAL included), not in the log file.
	secrets := []string{secretValue, bodyPassword, queryToken, bogusToken, nonAdminToken, adminToken}
	files := []string{logFile}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	dbSeen := false
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dbSeen = dbSeen || bytes.Contains(raw, []byte("AuditRecord"))
		for _, s := range secrets {
			if bytes.Contains(raw, []byte(s)) {
				t.Errorf("%s holds %q", p, s)
			}
		}
	}
	if !dbSeen {
		t.Error("no file of the data directory holds an audit record: the search looked in the wrong place")
	}
}

// A flood of calls with a tiny queue: every call is either stored or counted as dropped, and
// the metric says how many were dropped.
func TestAuditFloodIsBounded(t *testing.T) {
	dir := t.TempDir()
	ts, s := startWith(t, dir, func(c *server.Config) { c.AuditQueueSize = 1 })
	ctx := ctxT(t)
	const requests = 300
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range requests {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := ts.admin.Delete(ctx, api.KindBundle, api.DefaultNamespace, fmt.Sprintf("flood-%d", i), ""); !client.IsNotFound(err) {
				t.Errorf("delete: %v", err)
			}
		})
	}
	wg.Wait()
	req, _ := http.NewRequest(http.MethodGet, ts.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := rawClient(t, ts).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ts.stop()
	stats := s.Audit().Stats()
	if !strings.Contains(string(metrics), fmt.Sprintf("flotilla_audit_records_dropped_total %d\n", stats.Dropped)) {
		t.Errorf("the metric does not say %d dropped", stats.Dropped)
	}
	st := openStoreAt(t, dir)
	defer st.Close()
	stored := 0
	res, err := st.List(ctx, store.ListOptions{Kind: audit.Kind, Namespace: audit.Namespace})
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range res.Items {
		o, _ := store.Decode(raw)
		var r api.AuditRecord
		json.Unmarshal(o.Spec, &r)
		if strings.HasPrefix(r.Name, "flood-") {
			stored++
		}
	}
	t.Logf("%d requests: %d stored, %d dropped", requests, stored, stats.Dropped)
	if int64(stored)+stats.Dropped != requests || stats.Failed != 0 {
		t.Errorf("%d stored + %d dropped (%d failed), want %d", stored, stats.Dropped, stats.Failed, requests)
	}
}

// A login's record names who logged in (the caller had no token to name it by); a failed
// one names nobody, since a password typed into the user name field would be kept.
func TestAuditNamesLogins(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), nil)
	ctx := ctxT(t)
	user := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser}, Metadata: api.ObjectMeta{Name: "alice"}, Spec: json.RawMessage(`{}`)}
	if _, err := ts.admin.Create(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := ts.admin.SetPassword(ctx, "alice", api.SetPasswordRequest{Password: "correct horse battery staple"}); err != nil {
		t.Fatal(err)
	}
	anon, err := client.New(client.Config{Server: ts.url, CAChecksum: ts.checksum})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Login(ctx, api.LoginRequest{Username: "alice", Password: "wrong password, typed"}); err == nil {
		t.Fatal("a wrong password logged in")
	}
	if _, err := anon.Login(ctx, api.LoginRequest{Username: "alice", Password: "correct horse battery staple"}); err != nil {
		t.Fatal(err)
	}
	var logins []api.AuditRecord
	waitUntil(t, "both logins are recorded", func() bool {
		logins = auditAll(t, ts.admin, client.AuditQuery{Since: "1h", Verb: "login"})
		return len(logins) == 2
	})
	named := 0
	for _, r := range logins {
		if r.User == "alice" && r.Code == http.StatusOK {
			named++
		}
		if r.Code != http.StatusOK && r.User != "" {
			t.Errorf("a failed login names %q", r.User)
		}
	}
	if named != 1 {
		t.Fatalf("login records: %+v; want the successful one to name alice", logins)
	}
}

// A registration is recorded with the cluster it registered, and no user: the bearer of an
// agent call is a registration token or a cluster credential, never a user's.
func TestAuditNamesRegisteredCluster(t *testing.T) {
	ts, _ := startWith(t, t.TempDir(), nil)
	ctx := ctxT(t)
	tok := createToken(t, ts, "edge", api.RegistrationTokenSpec{TTL: "1h"})
	reg, err := ts.agent(t, "").Register(ctx, tok, api.RegisterRequest{ClientID: "uid-audit"})
	if err != nil {
		t.Fatal(err)
	}
	var recs []api.AuditRecord
	waitUntil(t, "the registration is recorded", func() bool {
		recs = auditAll(t, ts.admin, client.AuditQuery{Since: "1h", Verb: "register"})
		return len(recs) == 1
	})
	// A user's token on an agent call names no user: agent calls are not looked up as one.
	if resp := send(t, rawClient(t, ts), ts, http.MethodPost, api.PathRegister, adminToken, "", "{}"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a registration without a client ID answered %d, want 400", resp.StatusCode)
	}
	waitUntil(t, "both registrations are recorded", func() bool {
		recs = auditAll(t, ts.admin, client.AuditQuery{Since: "1h", Verb: "register"})
		return len(recs) == 2
	})
	for _, r := range recs {
		if r.User != "" {
			t.Errorf("registration record %+v names a user", r)
		}
	}
	r := recs[0]
	if r.Code != http.StatusOK {
		r = recs[1]
	}
	if r.Kind != api.KindCluster || r.Namespace != reg.Namespace || r.Name != reg.ClusterName || r.User != "" || r.Code != http.StatusOK {
		t.Errorf("registration record %+v; want Cluster %s/%s, no user, 200", r, reg.Namespace, reg.ClusterName)
	}
}
