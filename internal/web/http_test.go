package web_test

import (
	"bufio"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// TestDashboardOverHTTP drives the dashboard as a browser without script would, against a
// real server and simulated fleet: sessions, CSRF, RBAC narrowing and refusals, filters,
// pagination and actions.
func TestDashboardOverHTTP(t *testing.T) {
	r := startFleet(t, 120)
	r.addUser(t, "ops", "admin")
	r.addUser(t, "viewer", "read-only")

	anon := r.browser(t)
	t.Run("unauthenticated pages redirect to the login", func(t *testing.T) {
		for _, p := range []string{"/", "/clusters?state=Ready", "/clusters/fleet-default/x"} {
			code, loc, _ := get(t, anon, r.url+p)
			if code != http.StatusSeeOther || !strings.HasPrefix(loc, "/login") {
				t.Errorf("GET %s: %d to %q, want 303 to /login", p, code, loc)
			}
		}
		code, _, body := get(t, anon, r.url+"/login")
		if code != http.StatusOK || !strings.Contains(body, `name="password"`) {
			t.Errorf("login page: %d\n%s", code, body)
		}
	})

	t.Run("security headers", func(t *testing.T) {
		res, err := anon.Get(r.url + "/login")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		csp := res.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("Content-Security-Policy %q", csp)
		}
		for _, c := range res.Cookies() {
			if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteLaxMode {
				t.Errorf("cookie %s is not HttpOnly, Secure and SameSite=Lax: %+v", c.Name, c)
			}
		}
	})

	t.Run("wrong password and a forged login form are refused", func(t *testing.T) {
		c := r.browser(t)
		_, _, page := get(t, c, r.url+"/login")
		code, _, body := post(t, c, r.url+"/login", url.Values{"csrf": {formValue(page, "csrf")}, "username": {"ops"}, "password": {"nope, not this"}}, nil)
		if code != http.StatusUnauthorized || !strings.Contains(body, "Wrong user name or password") {
			t.Errorf("wrong password: %d\n%s", code, body)
		}
		code, _, _ = post(t, r.browser(t), r.url+"/login", url.Values{"csrf": {"made-up"}, "username": {"ops"}, "password": {password}}, nil)
		if code != http.StatusForbidden {
			t.Errorf("login without the form's token: %d, want 403", code)
		}
	})

	ops := r.browser(t)
	r.login(t, ops, "ops")
	var name string
	t.Run("overview and filtered list", func(t *testing.T) {
		code, _, body := get(t, ops, r.url+"/")
		if code != http.StatusOK || !strings.Contains(body, `data-testid="total">120<`) {
			t.Fatalf("overview: %d\n%s", code, body)
		}
		if !strings.Contains(body, `href="/clusters?state=Ready"`) || !strings.Contains(body, "<svg") {
			t.Errorf("overview has no chart linking to the Ready clusters")
		}
		// The server sampled the fleet when it started: the chart has a point.
		if !strings.Contains(body, `id="connected"`) || !strings.Contains(body, "minutes sampled since") {
			t.Errorf("overview has no connected-clusters chart with a sample")
		}
		if !strings.Contains(body, `href="/clusters?reason=DeploymentsErrApplied"`) {
			t.Errorf("overview does not group the failing deployments under needs attention")
		}
		code, _, body = get(t, ops, r.url+"/?label=region")
		if code != http.StatusOK || !strings.Contains(body, `href="/clusters?selector=region%3Deu"`) || !strings.Contains(body, "Label region") {
			t.Errorf("overview by label region: %d, no bar linking to region=eu", code)
		}
		if code, _, _ = get(t, ops, r.url+"/?label=not+a+key!"); code != http.StatusBadRequest {
			t.Errorf("overview by a bad label key: %d, want 400", code)
		}
		code, _, body = get(t, ops, r.url+"/clusters?selector=env%3Ddev&limit=10")
		if code != http.StatusOK {
			t.Fatalf("list: %d\n%s", code, body)
		}
		rows := regexp.MustCompile(`<tr data-cluster="([^"]+)"`).FindAllStringSubmatch(body, -1)
		if len(rows) != 10 || strings.Contains(body, ">env=prod<") {
			t.Fatalf("a page of dev clusters has %d rows (want 10), prod shown: %v", len(rows), strings.Contains(body, ">env=prod<"))
		}
		name = regexp.MustCompile(`<td><a href="(/clusters/[^"]+)"`).FindStringSubmatch(body)[1]
		// Every page is different and together they hold every dev cluster once.
		seen := map[string]bool{}
		next := "/clusters?selector=env%3Ddev&limit=10"
		for pages := 0; next != "" && pages < 20; pages++ {
			_, _, body = get(t, ops, r.url+next)
			for _, m := range regexp.MustCompile(`<tr data-cluster="([^"]+)"`).FindAllStringSubmatch(body, -1) {
				if seen[m[1]] {
					t.Fatalf("cluster %s on two pages", m[1])
				}
				seen[m[1]] = true
			}
			next = ""
			if m := regexp.MustCompile(`<a href="([^"]+)" rel="next"`).FindStringSubmatch(body); m != nil {
				next = strings.ReplaceAll(m[1], "&amp;", "&")
			}
		}
		total := regexp.MustCompile(`<b>(\d+)</b> clusters match`).FindStringSubmatch(body)
		if total == nil || total[1] != itoa(len(seen)) {
			t.Errorf("pages held %d clusters, the total says %v", len(seen), total)
		}
		if m := regexp.MustCompile(`<a href="([^"]+)" rel="prev"`).FindStringSubmatch(body); m == nil {
			t.Errorf("the last page links to no previous page")
		}
		code, _, body = get(t, ops, r.url+"/clusters?selector=env+in+(")
		if code != http.StatusBadRequest || !strings.Contains(body, "label selector is not valid") {
			t.Errorf("bad selector: %d", code)
		}
		code, _, _ = get(t, ops, r.url+"/clusters?continue=garbage!")
		if code != http.StatusBadRequest {
			t.Errorf("bad continue token: %d, want 400", code)
		}
	})

	t.Run("bundles with their rollout", func(t *testing.T) {
		code, _, body := get(t, ops, r.url+"/bundles")
		if code != http.StatusOK || !strings.Contains(body, `<tr data-name="web">`) {
			t.Fatalf("bundles: %d\n%s", code, body)
		}
		if !strings.Contains(body, `class="seg-Ready"`) || !strings.Contains(body, `class="seg-ErrApplied"`) {
			t.Errorf("the bundle's bar is not split into Ready and ErrApplied")
		}
		link := regexp.MustCompile(`<a href="(/bundles/[^"]+/web)"`).FindStringSubmatch(body)
		if link == nil {
			t.Fatal("no link to the bundle")
		}
		code, _, body = get(t, ops, r.url+link[1])
		if code != http.StatusOK || !strings.Contains(body, "ErrApplied") {
			t.Errorf("bundle page: %d, failures not shown\n%s", code, body)
		}
		if code, _, _ := get(t, ops, r.url+"/gitrepos"); code != http.StatusOK {
			t.Errorf("gitrepos: %d", code)
		}
	})

	t.Run("pause needs the form's token and the right", func(t *testing.T) {
		path := r.url + name
		_, _, page := get(t, ops, path)
		csrf := formValue(page, "csrf")
		if csrf == "" {
			t.Fatalf("no CSRF token on the cluster page\n%s", page)
		}
		code, _, _ := post(t, ops, path+"/pause", url.Values{}, nil)
		if code != http.StatusForbidden {
			t.Errorf("pause without the token: %d, want 403", code)
		}
		code, _, _ = post(t, ops, path+"/pause", url.Values{"csrf": {csrf}}, http.Header{"Sec-Fetch-Site": {"cross-site"}})
		if code != http.StatusForbidden {
			t.Errorf("pause from another site: %d, want 403", code)
		}
		if _, _, page := get(t, ops, path); !strings.Contains(page, `data-testid="paused">no<`) {
			t.Fatalf("cluster paused by a refused request")
		}

		viewer := r.browser(t)
		r.login(t, viewer, "viewer")
		_, _, vpage := get(t, viewer, path)
		code, _, body := post(t, viewer, path+"/pause", url.Values{"csrf": {formValue(vpage, "csrf")}}, nil)
		if code != http.StatusForbidden || !strings.Contains(body, "Refused") {
			t.Errorf("read-only pause: %d\n%s", code, body)
		}
		code, loc, _ := post(t, ops, path+"/pause", url.Values{"csrf": {csrf}}, nil)
		if code != http.StatusSeeOther {
			t.Fatalf("pause: %d", code)
		}
		if _, _, page := get(t, ops, r.url+loc); !strings.Contains(page, `data-testid="paused">yes<`) {
			t.Errorf("not paused after pausing")
		}
		code, _, body = post(t, ops, path+"/labels", url.Values{"csrf": {csrf}, "resourceVersion": {formValue(page, "resourceVersion")},
			"labels": {"env=dev\nBad Key!=x"}}, nil)
		if code != http.StatusConflict && code != http.StatusUnprocessableEntity && code != http.StatusBadRequest {
			t.Errorf("labels with a bad key: %d\n%s", code, body)
		}
	})

	t.Run("a kubeconfig for the cluster is downloaded", func(t *testing.T) {
		_, _, page := get(t, ops, r.url+name)
		code, _, body := post(t, ops, r.url+name+"/kubeconfig", url.Values{"csrf": {formValue(page, "csrf")}}, nil)
		ns, cluster, _ := strings.Cut(strings.TrimPrefix(name, "/clusters/"), "/")
		ref := cluster
		if ns != api.DefaultNamespace {
			ref = ns + "." + cluster
		}
		if code != http.StatusOK || !strings.Contains(body, api.PathK8sClusters+ref+"\n") || !strings.Contains(body, "token: ") {
			t.Errorf("kubeconfig: %d\n%s", code, body)
		}
		if code, _, _ := post(t, ops, r.url+name+"/kubeconfig", url.Values{}, nil); code != http.StatusForbidden {
			t.Errorf("kubeconfig without the form's token: %d, want 403", code)
		}
	})

	t.Run("the overview's live stream tells of a change", func(t *testing.T) {
		res, err := ops.Get(r.url + "/events/overview")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if ct := res.Header.Get("Content-Type"); res.StatusCode != http.StatusOK || ct != "text/event-stream" {
			t.Fatalf("events: %d %s", res.StatusCode, ct)
		}
		events := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(res.Body)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "event: ") {
					events <- strings.TrimPrefix(sc.Text(), "event: ")
				}
			}
			close(events)
		}()
		// Change a count: a second paused cluster.
		_, _, body := get(t, ops, r.url+"/clusters?selector=env%3Dprod&limit=1")
		other := regexp.MustCompile(`<td><a href="(/clusters/[^"]+)"`).FindStringSubmatch(body)[1]
		_, _, page := get(t, ops, r.url+other)
		if code, _, _ := post(t, ops, r.url+other+"/pause", url.Values{"csrf": {formValue(page, "csrf")}}, nil); code != http.StatusSeeOther {
			t.Fatalf("pause: %d", code)
		}
		select {
		case ev := <-events:
			if ev != "overview" {
				t.Errorf("event %q, want overview", ev)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no event after a cluster was paused")
		}
	})

	t.Run("logout ends the session", func(t *testing.T) {
		_, _, page := get(t, ops, r.url+"/")
		code, _, _ := post(t, ops, r.url+"/logout", url.Values{"csrf": {formValue(page, "csrf")}}, nil)
		if code != http.StatusSeeOther {
			t.Fatalf("logout: %d", code)
		}
		if code, loc, _ := get(t, ops, r.url+"/"); code != http.StatusSeeOther || loc != "/login" {
			t.Errorf("after logout: %d %q", code, loc)
		}
	})
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}
