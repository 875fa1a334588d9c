package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// TestAccessPages drives the users, roles, role bindings and projects pages against a real
// server: an admin lists and changes them, a read-only user sees them without controls and
// is refused with the API's reason when forging a change.
func TestAccessPages(t *testing.T) {
	r, _ := startServer(t, "")
	r.addUser(t, "ops", "admin")
	r.addUser(t, "viewer", "read-only")
	spec, _ := json.Marshal(api.ProjectSpec{Namespaces: []api.ProjectNamespace{{Name: "shop-web"}, {Name: "shop-db"}},
		Quota: &api.ResourceQuotaSpec{Hard: map[string]string{"pods": "40"}}})
	if _, err := r.admin.Create(context.Background(), &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindProject},
		Metadata: api.ObjectMeta{Name: "shop"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	ops, viewer := r.browser(t), r.browser(t)
	r.login(t, ops, "ops")
	r.login(t, viewer, "viewer")

	t.Run("pages", func(t *testing.T) {
		for p, want := range map[string]string{
			"/users":        `data-user="viewer"`,
			"/roles":        `<a href="/roles/cluster-owner">`,
			"/roles/admin":  "Kubernetes rules",
			"/rolebindings": `<code>global</code>`,
			"/projects":     `<span class="tag">shop-db</span>`,
		} {
			code, _, body := get(t, ops, r.url+p)
			if code != http.StatusOK || !strings.Contains(body, want) {
				t.Errorf("GET %s: %d, want %q in\n%s", p, code, want, body)
			}
			if len(body) > 300<<10 {
				t.Errorf("GET %s: %d bytes", p, len(body))
			}
		}
		_, _, body := get(t, ops, r.url+"/projects")
		if !strings.Contains(body, "<code>pods</code> 0 / 40") {
			t.Errorf("the project's quota is not shown:\n%s", body)
		}
		code, _, body := get(t, ops, r.url+"/roles/no-such-role")
		if code != http.StatusNotFound {
			t.Errorf("missing role: %d\n%s", code, body)
		}
	})

	t.Run("users are created, disabled and enabled", func(t *testing.T) {
		_, _, page := get(t, ops, r.url+"/users")
		csrf := formValue(page, "csrf")
		if !strings.Contains(page, `id="create-user"`) || !strings.Contains(page, `action="/users/viewer/disable"`) {
			t.Fatalf("an admin sees no user controls:\n%s", page)
		}
		code, _, body := post(t, ops, r.url+"/users", url.Values{"csrf": {csrf}, "name": {"carol"}, "password": {"short"}, "password2": {"short"}}, nil)
		if code < 400 || !strings.Contains(body, "password was refused") {
			t.Errorf("a weak password: %d\n%s", code, body)
		}
		if _, err := r.admin.Get(context.Background(), api.KindUser, "", "carol"); err == nil {
			t.Errorf("a user whose password was refused was kept")
		}
		code, loc, body := post(t, ops, r.url+"/users", url.Values{"csrf": {csrf}, "name": {"carol"}, "password": {password}, "password2": {password}}, nil)
		if code != http.StatusSeeOther || loc != "/users?done=user-created" {
			t.Fatalf("create user: %d %q\n%s", code, loc, body)
		}
		r.login(t, r.browser(t), "carol")
		code, loc, _ = post(t, ops, r.url+"/users/carol/disable", url.Values{"csrf": {csrf}}, nil)
		if code != http.StatusSeeOther || loc != "/users?done=user-disabled" {
			t.Fatalf("disable: %d %q", code, loc)
		}
		_, _, page = get(t, ops, r.url+"/users")
		if !strings.Contains(page, `action="/users/carol/enable"`) {
			t.Errorf("a disabled user has no enable button")
		}
		c := r.browser(t)
		_, _, lp := get(t, c, r.url+"/login")
		if code, _, _ := post(t, c, r.url+"/login", url.Values{"csrf": {formValue(lp, "csrf")}, "username": {"carol"}, "password": {password}}, nil); code != http.StatusUnauthorized {
			t.Errorf("a disabled user logged in: %d", code)
		}
		if code, _, _ = post(t, ops, r.url+"/users/carol/enable", url.Values{"csrf": {csrf}}, nil); code != http.StatusSeeOther {
			t.Errorf("enable: %d", code)
		}
		r.login(t, r.browser(t), "carol")
		if code, _, _ = post(t, ops, r.url+"/users/carol/delete", url.Values{"csrf": {csrf}}, nil); code != http.StatusNotFound {
			t.Errorf("an unknown action: %d", code)
		}
	})

	t.Run("role bindings are created and deleted", func(t *testing.T) {
		_, _, page := get(t, ops, r.url+"/rolebindings")
		csrf := formValue(page, "csrf")
		form := url.Values{"csrf": {csrf}, "subjectKind": {"User"}, "subject": {"carol"}, "role": {"cluster-member"}, "scopeKind": {"selector"}, "scope": {"env=dev"}}
		code, loc, body := post(t, ops, r.url+"/rolebindings", form, nil)
		if code != http.StatusSeeOther || loc != "/rolebindings?done=binding-created" {
			t.Fatalf("create binding: %d %q\n%s", code, loc, body)
		}
		_, _, page = get(t, ops, r.url+"/rolebindings")
		if !strings.Contains(page, `data-binding="carol-cluster-member"`) || !strings.Contains(page, "<code>selector/env=dev</code>") {
			t.Fatalf("the new binding is not listed:\n%s", page)
		}
		// The API validates: a global role cannot be bound to clusters.
		form.Set("role", "read-only")
		code, _, body = post(t, ops, r.url+"/rolebindings", form, nil)
		if code < 400 || !strings.Contains(body, `data-testid="error"`) || !strings.Contains(body, `value="read-only"`) {
			t.Errorf("a binding the API refuses: %d\n%s", code, body)
		}
		form.Set("scopeKind", "cluster")
		form.Set("scope", "")
		if code, _, _ = post(t, ops, r.url+"/rolebindings", form, nil); code != http.StatusBadRequest {
			t.Errorf("a cluster scope without a cluster: %d", code)
		}
		code, loc, _ = post(t, ops, r.url+"/rolebindings/carol-cluster-member/delete", url.Values{"csrf": {csrf}}, nil)
		if code != http.StatusSeeOther || loc != "/rolebindings?done=binding-deleted" {
			t.Fatalf("delete binding: %d %q", code, loc)
		}
		if _, err := r.admin.Get(context.Background(), api.KindRoleBinding, "", "carol-cluster-member"); err == nil {
			t.Errorf("the deleted binding is still there")
		}
	})

	t.Run("a read-only user sees no controls and is refused with the API's reason", func(t *testing.T) {
		_, _, page := get(t, viewer, r.url+"/users")
		if strings.Contains(page, `id="create-user"`) || strings.Contains(page, "/disable\"") {
			t.Errorf("a read-only user is shown user controls")
		}
		_, _, bpage := get(t, viewer, r.url+"/rolebindings")
		if strings.Contains(bpage, `id="create-binding"`) || strings.Contains(bpage, "/delete\"") {
			t.Errorf("a read-only user is shown binding controls")
		}
		csrf := formValue(page, "csrf")
		for p, form := range map[string]url.Values{
			"/users":                         {"csrf": {csrf}, "name": {"mallory"}, "password": {password}, "password2": {password}},
			"/users/ops/disable":             {"csrf": {csrf}},
			"/rolebindings":                  {"csrf": {csrf}, "subjectKind": {"User"}, "subject": {"viewer"}, "role": {"admin"}, "scopeKind": {"global"}},
			"/rolebindings/ops-admin/delete": {"csrf": {csrf}},
		} {
			code, _, body := post(t, viewer, r.url+p, form, nil)
			if code != http.StatusForbidden || !strings.Contains(body, "Refused: ") || !strings.Contains(body, `viewer`) {
				t.Errorf("POST %s as read-only: %d\n%s", p, code, regexp.MustCompile(`(?s)<main.*</main>`).FindString(body))
			}
		}
		if _, err := r.admin.Get(context.Background(), api.KindRoleBinding, "", "ops-admin"); err != nil {
			t.Errorf("a refused delete removed the binding: %v", err)
		}
		// Without the session's CSRF token, nothing is even asked of the API.
		if code, _, _ := post(t, ops, r.url+"/users/viewer/disable", url.Values{"csrf": {"forged"}}, nil); code != http.StatusForbidden {
			t.Errorf("a forged form: %d", code)
		}
	})
}

// TestAuditPage: admins page through the audit log filtered in the URL; others are refused
// with the API's reason.
func TestAuditPage(t *testing.T) {
	r, _ := startServer(t, "")
	r.addUser(t, "ops", "admin")
	r.addUser(t, "viewer", "read-only")
	ops, viewer := r.browser(t), r.browser(t)
	r.login(t, ops, "ops")
	r.login(t, viewer, "viewer")
	_, _, page := get(t, ops, r.url+"/users")
	csrf := formValue(page, "csrf")
	for i := 0; i < 3; i++ {
		post(t, ops, r.url+"/users/viewer/disable", url.Values{"csrf": {csrf}}, nil)
		post(t, ops, r.url+"/users/viewer/enable", url.Values{"csrf": {csrf}}, nil)
	}
	r.login(t, viewer, "viewer")

	// The log is written asynchronously: wait for the records to land.
	var code, rows int
	var body string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		code, _, body = get(t, ops, r.url+"/audit?user=ops&kind=User&verb=patch&since=1h")
		if rows = strings.Count(body, `class="audit-row"`); rows >= 6 || code != http.StatusOK || time.Now().After(deadline) {
			break
		}
	}
	if code != http.StatusOK || rows != 6 {
		t.Fatalf("audit filtered to ops patching users: %d, %d rows (want 6)\n%s", code, rows, body)
	}
	if strings.Contains(body, "<td>viewer</td>") || !strings.Contains(body, `value="1h"`) {
		t.Errorf("the filter was not applied or not shown")
	}
	// Pages follow the API's continue tokens and keep the filters.
	seen := 0
	next := "/audit?user=ops"
	for pages := 0; next != "" && pages < 50; pages++ {
		code, _, body = get(t, ops, r.url+next)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d", next, code)
		}
		seen += strings.Count(body, `class="audit-row"`)
		next = ""
		if m := regexp.MustCompile(`<a href="([^"]+)" rel="next"`).FindStringSubmatch(body); m != nil {
			next = strings.ReplaceAll(m[1], "&amp;", "&")
			if !strings.Contains(next, "user=ops") {
				t.Fatalf("the next page lost the filter: %s", next)
			}
		}
	}
	if seen < 6 {
		t.Errorf("pages of ops's records hold %d, want at least 6", seen)
	}
	if code, _, body = get(t, ops, r.url+"/audit?since=yesterday"); code != http.StatusBadRequest || !strings.Contains(body, `data-testid="error"`) {
		t.Errorf("a bad since: %d", code)
	}
	if code, _, body = get(t, viewer, r.url+"/audit"); code != http.StatusForbidden || !strings.Contains(body, "not an admin") {
		t.Errorf("the audit log as read-only: %d\n%s", code, body)
	}
}

// TestRegistrationPage: a registration token made on the page is shown once, in the agent's
// command with the server's CA checksum; a read-only user may not make one.
func TestRegistrationPage(t *testing.T) {
	r, checksum := startServer(t, "")
	r.addUser(t, "ops", "admin")
	r.addUser(t, "viewer", "read-only")
	ops, viewer := r.browser(t), r.browser(t)
	r.login(t, ops, "ops")
	r.login(t, viewer, "viewer")

	_, _, page := get(t, ops, r.url+"/registration")
	if !strings.Contains(page, `id="create-token"`) {
		t.Fatalf("an admin has no token form:\n%s", page)
	}
	csrf := formValue(page, "csrf")
	form := url.Values{"csrf": {csrf}, "labels": {"env=lab, site=berlin"}, "ttl": {"1h"}, "maxUses": {"2"}, "clusterName": {"lab-1"}, "name": {"lab"}}
	code, _, body := post(t, ops, r.url+"/registration", form, nil)
	m := regexp.MustCompile(`<pre class="command" id="agent-command" data-testid="agent-command">flotilla-agent --server (\S+) --ca-checksum (\S+) --token (\S+) --cluster-name lab-1</pre>`).FindStringSubmatch(body)
	if code != http.StatusCreated || m == nil {
		t.Fatalf("create token: %d\n%s", code, body)
	}
	if m[1] != r.url || m[2] != checksum || !strings.HasPrefix(m[3], "frt_") {
		t.Errorf("the command names server %s, checksum %s, token %s; want %s, %s, frt_…", m[1], m[2], m[3], r.url, checksum)
	}
	_, _, page = get(t, ops, r.url+"/registration")
	if strings.Contains(page, m[3]) || !strings.Contains(page, `data-token="lab"`) || !strings.Contains(page, "<td>0 of 2</td>") {
		t.Errorf("the token list shows the token's value, or not the token:\n%s", page)
	}
	obj, err := r.admin.Get(context.Background(), api.KindRegistrationToken, api.DefaultNamespace, "lab")
	if err != nil {
		t.Fatal(err)
	}
	var spec api.RegistrationTokenSpec
	json.Unmarshal(obj.Spec, &spec)
	if spec.Labels["site"] != "berlin" || spec.MaxUses != 2 || spec.ClusterName != "lab-1" {
		t.Errorf("token spec %+v", spec)
	}
	form.Set("maxUses", "many")
	if code, _, _ = post(t, ops, r.url+"/registration", form, nil); code != http.StatusBadRequest {
		t.Errorf("max uses not a number: %d", code)
	}
	form.Set("maxUses", "")
	form.Set("ttl", "a while")
	if code, _, body = post(t, ops, r.url+"/registration", form, nil); code != http.StatusBadRequest && code != http.StatusUnprocessableEntity {
		t.Errorf("a bad TTL: %d\n%s", code, body)
	}

	_, _, vpage := get(t, viewer, r.url+"/registration")
	if strings.Contains(vpage, `id="create-token"`) {
		t.Errorf("a read-only user is shown the token form")
	}
	form = url.Values{"csrf": {formValue(vpage, "csrf")}, "name": {"mine"}}
	if code, _, body = post(t, viewer, r.url+"/registration", form, nil); code != http.StatusForbidden || !strings.Contains(body, "Refused: ") || strings.Contains(body, "agent-command") {
		t.Errorf("a read-only user making a token: %d\n%s", code, body)
	}
}

// TestGitRepoSync: "Sync now" increments the GitRepo's forceSyncGeneration through the API
// (a spec change: the server fetches at once and redeploys); a read-only user has no button
// and is refused.
func TestGitRepoSync(t *testing.T) {
	r, _ := startServer(t, "")
	r.addUser(t, "ops", "admin")
	r.addUser(t, "viewer", "read-only")
	ctx := context.Background()
	spec, _ := json.Marshal(api.GitRepoSpec{Repo: "https://127.0.0.1:1/none.git", ForceSyncGeneration: 4})
	if _, err := r.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindGitRepo},
		Metadata: api.ObjectMeta{Name: "apps", Namespace: api.DefaultNamespace}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	before, err := r.admin.Get(ctx, api.KindGitRepo, api.DefaultNamespace, "apps")
	if err != nil {
		t.Fatal(err)
	}
	ops, viewer := r.browser(t), r.browser(t)
	r.login(t, ops, "ops")
	r.login(t, viewer, "viewer")

	_, _, page := get(t, ops, r.url+"/gitrepos")
	if !strings.Contains(page, `action="/gitrepos/fleet-default/apps/sync"`) {
		t.Fatalf("an admin has no sync button:\n%s", page)
	}
	code, loc, _ := post(t, ops, r.url+"/gitrepos/fleet-default/apps/sync", url.Values{"csrf": {formValue(page, "csrf")}}, nil)
	if code != http.StatusSeeOther || loc != "/gitrepos?done=synced" {
		t.Fatalf("sync: %d %q", code, loc)
	}
	after, err := r.admin.Get(ctx, api.KindGitRepo, api.DefaultNamespace, "apps")
	if err != nil {
		t.Fatal(err)
	}
	var got api.GitRepoSpec
	json.Unmarshal(after.Spec, &got)
	if got.ForceSyncGeneration != 5 || after.Metadata.Generation <= before.Metadata.Generation || got.Repo != "https://127.0.0.1:1/none.git" {
		t.Errorf("after sync: forceSyncGeneration %d (want 5), generation %d (was %d), repo %q", got.ForceSyncGeneration,
			after.Metadata.Generation, before.Metadata.Generation, got.Repo)
	}
	if _, _, page = get(t, ops, r.url+"/gitrepos?done=synced"); !strings.Contains(page, "Sync requested") {
		t.Errorf("no word that the sync was requested")
	}

	_, _, vpage := get(t, viewer, r.url+"/gitrepos")
	if strings.Contains(vpage, "/sync\"") {
		t.Errorf("a read-only user is shown the sync button")
	}
	code, _, body := post(t, viewer, r.url+"/gitrepos/fleet-default/apps/sync", url.Values{"csrf": {formValue(vpage, "csrf")}}, nil)
	if code != http.StatusForbidden || !strings.Contains(body, "Refused: ") {
		t.Errorf("sync as read-only: %d\n%s", code, body)
	}
	if code, _, _ = post(t, ops, r.url+"/gitrepos/fleet-default/nope/sync", url.Values{"csrf": {formValue(page, "csrf")}}, nil); code != http.StatusNotFound {
		t.Errorf("sync of a missing GitRepo: %d", code)
	}
}
