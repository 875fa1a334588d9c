package web_test

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
)

// chromium finds a headless Chromium: FLOTILLA_CHROMIUM, else Debian's
// chromium-headless-shell (not on chromedp's own search list) or a Chromium on PATH. In CI a
// missing browser fails the test; elsewhere it is skipped.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FLOTILLA_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const how = "no headless Chromium: apt-get install -y chromium-headless-shell, or set FLOTILLA_CHROMIUM to a Chromium binary"
	if os.Getenv("CI") == "true" {
		t.Fatal(how)
	}
	t.Skip(how)
	return ""
}

// tab is one browser tab on the rig's dashboard.
type tab struct {
	t   *testing.T
	r   *rig
	ctx context.Context
	// problems are the page's console errors, uncaught exceptions and CSP violations.
	mu       sync.Mutex
	problems []string
}

// newBrowser starts a headless Chromium for the test; each tab from it has its own
// cookies. When the test fails, every tab's last page is saved as a PNG in the test's
// artifact directory.
func newBrowser(t *testing.T, r *rig) func() *tab {
	exe := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe),
		// The server's CA is the test's own: trust its certificate without installing it.
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1280, 900))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	n := 0
	var first context.Context
	return func() *tab {
		n++
		name := n
		var ctx context.Context
		var cancel context.CancelFunc
		if n == 1 {
			ctx, cancel = chromedp.NewContext(alloc)
			first = ctx
		} else {
			// A new browser context of the same browser: cookies of its own.
			ctx, cancel = chromedp.NewContext(first, chromedp.WithNewBrowserContext())
		}
		tb := &tab{t: t, r: r, ctx: ctx}
		if err := chromedp.Do(ctx); err != nil {
			cancel()
			t.Fatalf("starting %s: %v", exe, err)
		}
		go func() {
			for m, err := range chromedp.Console(ctx) {
				if err != nil {
					return
				}
				// A refused action answers 403: the browser logs that, and it is expected.
				if (m.Type == "error" || m.IsException()) && !strings.Contains(m.Text, "403") && !strings.Contains(m.Text, "favicon") {
					tb.mu.Lock()
					tb.problems = append(tb.problems, string(m.Type)+": "+m.Text)
					tb.mu.Unlock()
				}
			}
		}()
		t.Cleanup(func() {
			if t.Failed() {
				sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
				if png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)); err == nil {
					p := filepath.Join(t.ArtifactDir(), "tab"+itoa(name)+".png")
					if err := os.WriteFile(p, png, 0o644); err == nil {
						t.Logf("screenshot of tab %d: %s", name, p)
					}
				}
				scancel()
			}
			cancel()
		})
		return tb
	}
}

// run runs steps with a deadline, failing the test on error.
func (tb *tab) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		tb.t.Fatalf("%s: %v", what, err)
	}
}

func (tb *tab) login(user string) {
	tb.t.Helper()
	tb.run("log in as "+user,
		chromedp.Navigate(tb.r.url+"/"),
		chromedp.WaitVisible(chromedp.CSS("#username")),
		chromedp.SendKeys(chromedp.CSS("#username"), user),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="total"]`)))
}

// texts answers the text of every element sel matches.
func (tb *tab) texts(sel string) []string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	out, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll(`+jsString(sel)+`)).map(e => e.textContent.trim())`))
	if err != nil {
		tb.t.Fatalf("reading %s: %v", sel, err)
	}
	return out
}

// poll waits until the expression is true.
// A poll begun while a click still navigates may find its page's context gone: it starts
// again on the new page, within the same 20 s.
func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(time.Until(deadline)))(ctx, t)
			if err != nil && strings.Contains(err.Error(), "Cannot find context with specified id") && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
	})
}

func jsString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func (tb *tab) checkClean() {
	tb.t.Helper()
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, p := range tb.problems {
		tb.t.Errorf("the page reported: %s", p)
	}
}

// TestBrowser drives the dashboard in headless Chromium against a real server with a few
// hundred simulated clusters: log in, filter the cluster list by label and by state with
// htmx, open a cluster, pause it, and see a read-only user refused the same.
func TestBrowser(t *testing.T) {
	chromium(t)
	r := startFleet(t, 300)
	r.addUser(t, "ops", "admin")
	r.addUser(t, "viewer", "read-only")
	open := newBrowser(t, r)

	ops := open()
	ops.login("ops")
	if got := ops.texts(`[data-testid="total"]`); len(got) != 1 || got[0] != "300" {
		t.Fatalf("overview total %v, want 300", got)
	}
	if n := len(ops.texts(`svg a`)); n < 4 {
		t.Errorf("overview charts have %d linked segments, want at least 4", n)
	}
	shoot(t, ops, "dashboard-overview.png")

	// Filter by label: htmx swaps the results and pushes the filter into the URL.
	ops.run("filter by label",
		chromedp.Navigate(r.url+"/clusters"),
		chromedp.WaitVisible(chromedp.CSS("#f-selector")),
		// A mark that a full page load would lose: the filters must be applied by htmx.
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`window.flotillaMark = true`)(ctx, t)
			return err
		}),
		chromedp.SendKeys(chromedp.CSS("#f-selector"), "env=dev"),
		chromedp.Click(chromedp.CSS("#apply")),
		poll(`location.search.includes('selector=env%3Ddev')`))
	rows := ops.texts(`tr[data-cluster] td.labels`)
	if len(rows) == 0 {
		t.Fatal("no clusters listed for env=dev")
	}
	for _, l := range rows {
		if !strings.Contains(l, "env=dev") {
			t.Errorf("a cluster labelled %q is listed for env=dev", l)
		}
	}
	// Then by state, which a change of the select applies at once.
	ops.run("filter by state",
		chromedp.SetValue(chromedp.CSS("#f-state"), "Ready"),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`document.querySelector('#f-state').dispatchEvent(new Event('change', {bubbles: true}))`)(ctx, t)
			return err
		}),
		poll(`location.search.includes('state=Ready')`))
	states := ops.texts(`tr[data-cluster] td:nth-child(2) .state`)
	if len(states) == 0 {
		t.Fatal("no Ready dev clusters listed")
	}
	for _, s := range states {
		if s != "Ready" {
			t.Errorf("a %s cluster is listed for state=Ready", s)
		}
	}
	if got := ops.texts(`tr[data-cluster] td.labels`); len(got) > 0 && !strings.Contains(got[0], "env=dev") {
		t.Errorf("the state filter lost the label filter: %q", got[0])
	}
	if got := ops.texts(`body`); len(got) == 0 {
		t.Fatal("no body")
	}
	if mark, err := chromedp.Run(ops.ctx, chromedp.Evaluate[bool](`window.flotillaMark === true`)); err != nil || !mark {
		t.Errorf("the filters reloaded the page (htmx did not apply them): %v", err)
	}
	shoot(t, ops, "dashboard-clusters.png")
	names := ops.texts(`tr[data-cluster] td:first-child a`)

	// Open a cluster and pause it.
	ops.run("open and pause a cluster",
		chromedp.Click(chromedp.CSS(`tr[data-cluster] td:first-child a`)),
		chromedp.WaitVisible(chromedp.CSS("#pause")),
		chromedp.Click(chromedp.CSS("#pause")),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="flash"]`)))
	if got := ops.texts(`[data-testid="paused"]`); len(got) != 1 || got[0] != "yes" {
		t.Errorf("after pausing, paused is %v", got)
	}
	if n := len(ops.texts("#resume")); n != 1 {
		t.Errorf("a paused cluster offers no resume")
	}
	shoot(t, ops, "dashboard-cluster.png")
	ops.checkClean()

	// The kubectl shell: xterm.js in the page, typed into as a terminal (the keys go to the
	// terminal's own input, as a person's would); help is answered by the server.
	ops.run("open the shell and type into it",
		chromedp.Click(chromedp.CSS("#shell")),
		poll(`document.querySelector('[data-testid="shell-status"]') !== null && document.querySelector('[data-testid="shell-status"]').textContent === 'connected'`),
		poll(`document.querySelector('.xterm-rows') !== null && document.querySelector('.xterm-rows').textContent.includes(':default>')`),
		chromedp.Click(chromedp.CSS("#terminal")),
		// Text as the browser inserts it (some Chromium builds deliver a key event's text
		// to xterm.js twice), then the Enter key.
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := cdp.Call(ctx, t, input.InsertText, input.InsertTextParams{Text: "help"})
			return err
		}),
		chromedp.KeyEvent("\r"),
		poll(`document.querySelector('.xterm-rows').textContent.includes('Commands (kubectl')`))
	shoot(t, ops, "dashboard-shell.png")
	ops.checkClean()

	// A read-only user sees the clusters but is refused the pause.
	viewer := open()
	viewer.login("viewer")
	if len(names) < 2 {
		t.Fatalf("need two clusters, listed %v", names)
	}
	viewer.run("read-only pause",
		chromedp.Navigate(r.url+"/clusters?selector=env%3Ddev&state=Ready"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-cluster]`)),
		chromedp.Click(chromedp.CSS(`tr[data-cluster]:nth-child(2) td:first-child a`)),
		chromedp.WaitVisible(chromedp.CSS("#pause")),
		chromedp.Click(chromedp.CSS("#pause")),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="error"]`)))
	if got := viewer.texts(`[data-testid="error"]`); len(got) != 1 || !strings.Contains(got[0], "Refused") || !strings.Contains(got[0], "viewer") {
		t.Errorf("read-only pause answered %v, want a refusal naming the user", got)
	}
	if got := viewer.texts(`[data-testid="paused"]`); len(got) != 1 || got[0] != "no" {
		t.Errorf("after a refused pause, paused is %v", got)
	}
	viewer.checkClean()

	// On a phone-sized screen the pages fit the width: wide tables scroll in their own box.
	for _, p := range []string{"/", "/clusters?selector=env%3Ddev", "/rolebindings", "/registration"} {
		var fits bool
		viewer.run("narrow "+p,
			chromedp.EmulateViewport(375, 800, chromedp.EmulateMobile),
			chromedp.Navigate(r.url+p),
			chromedp.WaitVisible(chromedp.CSS("main")),
			chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
				var err error
				fits, err = chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth + 1`)(ctx, t)
				return err
			}))
		if !fits {
			t.Errorf("%s is wider than a 375-pixel screen", p)
		}
	}

	// A registration token made in the page shows the agent's command once.
	ops.run("make a registration token",
		chromedp.Navigate(r.url+"/registration"),
		chromedp.WaitVisible(chromedp.CSS("#t-labels")),
		chromedp.SendKeys(chromedp.CSS("#t-labels"), "site=lab"),
		chromedp.Click(chromedp.CSS("#create-token")),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="agent-command"]`)))
	if got := ops.texts(`[data-testid="agent-command"]`); len(got) != 1 || !strings.Contains(got[0], "--token frt_") {
		t.Errorf("the agent's command is %v", got)
	}
	shoot(t, ops, "dashboard-registration.png")

	// The overview follows the fleet live: a cluster paused elsewhere shows without a reload.
	ops.run("open the overview",
		chromedp.Navigate(r.url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/clusters?reason=Paused"]`)),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`window.flotillaMark = true`)(ctx, t)
			return err
		}))
	c := r.browser(t)
	r.login(t, c, "ops")
	_, _, list := get(t, c, r.url+"/clusters?selector=env%3Dprod&limit=1")
	path := regexp.MustCompile(`<td><a href="(/clusters/[^"]+)"`).FindStringSubmatch(list)[1]
	_, _, page := get(t, c, r.url+path)
	if code, _, _ := post(t, c, r.url+path+"/pause", url.Values{"csrf": {formValue(page, "csrf")}}, nil); code != http.StatusSeeOther {
		t.Fatalf("pause: %d", code)
	}
	ops.run("see the paused count change",
		poll(`Array.from(document.querySelectorAll('.attention li')).some(li => li.textContent.includes('Paused') && li.querySelector('b').textContent === '2')`))
	if mark, err := chromedp.Run(ops.ctx, chromedp.Evaluate[bool](`window.flotillaMark === true`)); err != nil || !mark {
		t.Errorf("the overview was reloaded instead of updated in place: %v", err)
	}
	ops.checkClean()
}

// shoot saves the tab's page as a PNG into FLOTILLA_SCREENSHOTS (docs/ screenshots), when set.
func shoot(t *testing.T, tb *tab, name string) {
	dir := os.Getenv("FLOTILLA_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(tb.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Error(err)
	}
}
