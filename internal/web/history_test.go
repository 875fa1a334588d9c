package web

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/fleet"
)

// countsFleet is a fleet whose overview is the counts the test sets (unit logic: the
// model's own overview is tested in internal/fleet and over HTTP in TestDashboardOverHTTP).
type countsFleet struct {
	mu                 sync.Mutex
	connected, offline int
	passes             int
}

func (f *countsFleet) Overview(fleet.ClusterQuery) fleet.Overview {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.passes++
	return fleet.Overview{Total: f.connected + f.offline, ByState: map[string]int{api.StateReady: f.connected, "Offline": f.offline}}
}
func (f *countsFleet) ListClusters(fleet.ClusterQuery, string, string, int) fleet.ClusterPage {
	return fleet.ClusterPage{}
}
func (f *countsFleet) ClusterDeployments(string, string) ([]fleet.DeploymentRow, bool) {
	return nil, false
}

func TestConnectedHistory(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 30, 0, time.UTC)
	f := &countsFleet{}
	h, err := New(Config{Fleet: f, Now: func() time.Time { return now },
		ClusterView: func(id *auth.Identity) (bool, rbac.ClusterFilter, error) {
			return id.User == "ops", rbac.ClusterFilter{}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tick := func(connected, offline int) {
		f.mu.Lock()
		f.connected, f.offline = connected, offline
		f.mu.Unlock()
		if err := h.sampleHistory(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		tick(100+i, 3)
		now = now.Add(time.Minute)
	}
	// A second sample in the same minute replaces the first.
	now = now.Add(-time.Minute)
	now = now.Add(2 * time.Second)
	tick(500, 7)
	ss := h.history.samples(now)
	if len(ss) != 30 || ss[0].connected != 100 || ss[29].connected != 500 || ss[29].offline != 7 || ss[28].connected != 128 {
		t.Fatalf("30 minutes sampled: %d samples, %+v … %+v", len(ss), ss[0], ss[len(ss)-1])
	}
	c := newConnectedChart(now, ss)
	if c.Points != 30 || strings.Count(c.Offline, "L")+strings.Count(c.Offline, "M") != 30 || c.Now != 500 || c.Max != 507 {
		t.Fatalf("chart of 30 samples: %d points, offline %q, now %d, max %d", c.Points, c.Offline, c.Now, c.Max)
	}
	// The last point is the highest (500 of 507) and right at the end of the axis.
	if !strings.HasSuffix(c.Area, "L576 2L576 80Z") {
		t.Errorf("area ends %q", c.Area[max(0, len(c.Area)-30):])
	}

	// Two days on: the ring holds the last day only, drawn as 288 points; the rendered page
	// stays small.
	for range 2 * historyLen {
		now = now.Add(time.Minute)
		tick(1000, 10)
	}
	ss = h.history.samples(now)
	if len(ss) != historyLen {
		t.Fatalf("after two days %d samples, want %d", len(ss), historyLen)
	}
	if c := newConnectedChart(now, ss); c.Points != historyPoints {
		t.Fatalf("a day drawn with %d points, want %d", c.Points, historyPoints)
	}
	// A dip of one minute shows: each point is its step's lowest count.
	now = now.Add(time.Minute)
	tick(10, 990)
	c = newConnectedChart(now, h.history.samples(now))
	if m := regexp.MustCompile(`L\d+ (\d+)L\d+ 80Z$`).FindStringSubmatch(c.Area); m == nil || m[1] != "80" {
		t.Errorf("a dip to 10 of 1000 is not drawn at the bottom: %q", c.Area[len(c.Area)-40:])
	}

	render := func(who string) string {
		u := &user{Identity: &auth.Identity{User: who}}
		d, err := h.overviewData(httptest.NewRequest("GET", "/", nil), u, "")
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := h.pages["overview"].ExecuteTemplate(&b, "layout", page{Title: "Overview", User: u, Nav: "overview", Data: d}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	body := render("ops")
	if !strings.Contains(body, `class="connected-area"`) || !strings.Contains(body, "1440 minutes sampled") {
		t.Fatalf("the overview has no connected chart of a day:\n%s", body)
	}
	if len(body) > 24<<10 {
		t.Errorf("the overview with a day's chart weighs %d bytes, over 24 KB", len(body))
	}
	t.Logf("overview with a full day's chart: %d bytes", len(body))
	// The history is the whole fleet's: a user who sees part of it is not shown it.
	if body := render("prod"); strings.Contains(body, `id="connected"`) {
		t.Errorf("a user with a narrowed view sees the whole fleet's history")
	}
}

// Users bound to the same cluster sets share one overview a second; a user with other
// bindings has a view, and a pass, of their own.
func TestSameBindingsShareOverview(t *testing.T) {
	authz := rbac.New()
	if err := authz.Load(nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	for i, b := range []struct{ user, env string }{{"a", "prod"}, {"b", "prod"}, {"c", "dev"}} {
		if _, err := authz.PutBinding(fmt.Sprint("b", i), api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: b.user},
			RoleRef: rbac.RoleClusterMember, Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"env": b.env}}}}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	f := &countsFleet{}
	h, err := New(Config{Fleet: f, Now: func() time.Time { return now },
		ClusterView: func(id *auth.Identity) (bool, rbac.ClusterFilter, error) {
			fl := authz.ClusterFilter(rbac.Subject{User: id.User}, api.VerbList)
			return fl.All(), fl, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"a", "b", "a", "c"} {
		if _, err := h.overviewOf(context.Background(), &user{Identity: &auth.Identity{User: who}}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if f.passes != 2 {
		t.Errorf("%d passes for two users bound alike and one other, want 2", f.passes)
	}
}
