package web

import (
	"fmt"
	"html/template"
	"math"
	"net/url"
	"sort"
	"strings"
	"time"
)

// Charts are drawn on the server as SVG from counts: each bar or segment is a link to the
// cluster list filtered to it, and the page carries no charting script.

// bar is one bar of a horizontal bar chart.
type bar struct {
	Label string
	Count int
	Href  string
	Y, W  int
	Class string
}

// barChart draws at most maxBars bars, the largest first; the rest are summed in Other.
type barChart struct {
	Title  string
	Bars   []bar
	Other  int
	Height int
}

const (
	maxBars  = 10
	barWidth = 240 // px of the longest bar
	barStep  = 22
)

// newBarChart makes a chart of counts; href makes each value's link.
func newBarChart(title string, counts map[string]int, href func(string) string) barChart {
	type kv struct {
		k string
		n int
	}
	var kvs []kv
	for k, n := range counts {
		kvs = append(kvs, kv{k, n})
	}
	sort.Slice(kvs, func(i, j int) bool {
		if kvs[i].n != kvs[j].n {
			return kvs[i].n > kvs[j].n
		}
		return kvs[i].k < kvs[j].k
	})
	c := barChart{Title: title}
	top := 0
	if len(kvs) > 0 {
		top = kvs[0].n
	}
	for i, e := range kvs {
		if i >= maxBars {
			c.Other += e.n
			continue
		}
		w := 0
		if top > 0 {
			w = max(1, e.n*barWidth/top)
		}
		c.Bars = append(c.Bars, bar{Label: e.k, Count: e.n, Href: href(e.k), Y: i * barStep, W: w})
	}
	c.Height = max(len(c.Bars)*barStep, barStep)
	return c
}

// segment is one arc of a donut: a circle's stroke dashed to show only its share.
type segment struct {
	Label  string
	Count  int
	Href   string
	Dash   string
	Offset string
	Class  string
}

type donut struct {
	Title    string
	Total    int
	Segments []segment
}

// donutCircumference is 2π·r for the donut's r = 15.915…, so that a share of 100 is the
// whole circle and dashes are percentages.
const donutCircumference = 100.0

// newDonut makes a donut of counts in the given order (unknown keys last).
func newDonut(title string, counts map[string]int, order []string, href func(string) string) donut {
	d := donut{Title: title}
	keys := append([]string(nil), order...)
	var extra []string
	for k := range counts {
		known := false
		for _, o := range order {
			known = known || o == k
		}
		if !known {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	keys = append(keys, extra...)
	for _, k := range keys {
		d.Total += counts[k]
	}
	done := 0.0
	for _, k := range keys {
		n := counts[k]
		if n == 0 {
			continue
		}
		share := donutCircumference * float64(n) / float64(d.Total)
		d.Segments = append(d.Segments, segment{Label: k, Count: n, Href: href(k),
			Dash:   fmt.Sprintf("%.3f %.3f", share, donutCircumference-share),
			Offset: fmt.Sprintf("%.3f", math.Mod(donutCircumference-done+25, donutCircumference)),
			Class:  "st-" + cssName(k)})
		done += share
	}
	return d
}

// cssName keeps a value usable in a class name.
func cssName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

func listHref(key, value string) string {
	return "/clusters?" + url.Values{key: {value}}.Encode()
}

var funcs = template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := time.Since(t).Round(time.Second)
		if d < 0 {
			d = 0
		}
		return d.String() + " ago"
	},
	"css":  cssName,
	"plus": func(a, b int) int { return a + b },
	"num": func(n int) string {
		s := fmt.Sprint(n)
		for i := len(s) - 3; i > 0; i -= 3 {
			s = s[:i] + "," + s[i:]
		}
		return s
	},
	"reason": reasonLabel,
	"join":   strings.Join,
	"scopeKinds": func() []string {
		return []string{"global", "workspace", "cluster", "clustergroup", "selector", "project"}
	},
}
