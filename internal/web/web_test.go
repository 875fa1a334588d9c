package web

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Every vendored file is the one VENDOR.md names, with its sum.
func TestVendoredSum(t *testing.T) {
	doc, err := os.ReadFile("static/VENDOR.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"htmx.min.js", "xterm.js", "xterm.css", "addon-fit.js"} {
		m := regexp.MustCompile(`\| ` + regexp.QuoteMeta(file) + ` \|[^\n]*\| ([0-9a-f]{64}) \|`).FindSubmatch(doc)
		if m == nil {
			t.Errorf("VENDOR.md names no sha256 for %s", file)
			continue
		}
		b, err := staticFS.ReadFile("static/" + file)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != string(m[1]) {
			t.Errorf("%s has sha256 %x, VENDOR.md says %s", file, sum, m[1])
		}
	}
}

func TestDonutSharesAddUp(t *testing.T) {
	d := newDonut("x", map[string]int{"Ready": 7, "Offline": 2, "Weird": 1}, clusterStates, func(v string) string { return listHref("state", v) })
	if d.Total != 10 || len(d.Segments) != 3 {
		t.Fatalf("donut %+v", d)
	}
	sum := 0.0
	for _, s := range d.Segments {
		f := strings.Fields(s.Dash)
		a, _ := strconv.ParseFloat(f[0], 64)
		b, _ := strconv.ParseFloat(f[1], 64)
		if math.Abs(a+b-donutCircumference) > 0.01 {
			t.Errorf("segment %s dash %q does not span the circle", s.Label, s.Dash)
		}
		sum += a
		if u, err := url.Parse(s.Href); err != nil || u.Query().Get("state") != s.Label {
			t.Errorf("segment %s links to %q", s.Label, s.Href)
		}
	}
	if math.Abs(sum-donutCircumference) > 0.01 {
		t.Errorf("segments cover %.3f of %v", sum, donutCircumference)
	}
	if d.Segments[0].Label != "Ready" || d.Segments[2].Label != "Weird" {
		t.Errorf("order %v: known states first, in their order", d.Segments)
	}
}

func TestBarChartKeepsTheLargest(t *testing.T) {
	counts := map[string]int{}
	for i := range 15 {
		counts["v"+strconv.Itoa(i)] = i + 1
	}
	c := newBarChart("x", counts, func(v string) string { return listHref("version", v) })
	if len(c.Bars) != maxBars || c.Bars[0].Label != "v14" || c.Bars[0].W != barWidth || c.Other != 1+2+3+4+5 {
		t.Errorf("chart %+v", c)
	}
}

func TestContinueTokens(t *testing.T) {
	for _, key := range []string{"fleet-default/c-1", "ns/name with spaces"} {
		for _, dir := range []string{"a:", "b:"} {
			a, b, err := parseContinue(continueToken(dir, key))
			if err != nil || (dir == "a:" && a != key) || (dir == "b:" && b != key) {
				t.Errorf("%s%s: %q %q %v", dir, key, a, b, err)
			}
		}
	}
	for _, bad := range []string{"!!", continueToken("c:", "x"), continueToken("a", "")} {
		if _, _, err := parseContinue(bad); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{"/clusters?state=Ready": "/clusters?state=Ready", "//evil.example": "/",
		"https://evil.example/": "/", `/\evil`: "/", "": "/"} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}
