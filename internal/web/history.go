package web

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
)

// The overview's "connected over time" chart: one sample a minute of the whole fleet's
// counts, kept in memory for historyLen minutes. It is a few counters a minute, never a
// per-cluster history, and it starts empty when the server does.

const (
	historyLen = 24 * 60
	// historyPoints bounds the points drawn: a day of samples is drawn as 5-minute steps,
	// each the step's lowest connected count (a dip is what the chart is for).
	historyPoints = 288
	historyW      = 576
	historyH      = 80
)

// sample is one minute of the fleet: clusters connected (Ready or NotReady), offline
// (not seen within the offline window) and in all.
type sample struct {
	minute             int64 // Unix minutes; 0: no sample
	connected, offline int32
	total              int32
}

// history is a ring of one sample a minute.
type history struct {
	mu   sync.Mutex
	ring [historyLen]sample
}

// record keeps o as the sample of now's minute (a later one in the same minute replaces it).
func (hs *history) record(now time.Time, o fleet.Overview) {
	m := now.Unix() / 60
	s := sample{minute: m, connected: int32(o.ByState[api.StateReady] + o.ByState[api.StateNotReady]),
		offline: int32(o.ByState["Offline"]), total: int32(o.Total)}
	hs.mu.Lock()
	hs.ring[m%historyLen] = s
	hs.mu.Unlock()
}

// samples answers the samples of the historyLen minutes up to now, oldest first.
func (hs *history) samples(now time.Time) []sample {
	end := now.Unix() / 60
	var out []sample
	hs.mu.Lock()
	defer hs.mu.Unlock()
	for m := end - historyLen + 1; m <= end; m++ {
		if s := hs.ring[((m%historyLen)+historyLen)%historyLen]; s.minute == m && m > 0 {
			out = append(out, s)
		}
	}
	return out
}

// connectedChart is the SVG of the samples: an area of connected clusters and a line of
// offline ones, over the last day.
type connectedChart struct {
	Samples          int
	Points           int
	Area, Offline    string
	Now, Max         int
	NowOffline       int
	Since            string
	Width, Height, H int
}

// newConnectedChart draws samples ending at now; the x axis is time, so minutes without a
// sample (the server was down) are gaps in time, not in the drawing.
func newConnectedChart(now time.Time, ss []sample) connectedChart {
	c := connectedChart{Samples: len(ss), Width: historyW, Height: historyH + 2, H: historyH}
	if len(ss) == 0 {
		return c
	}
	last := ss[len(ss)-1]
	c.Now, c.NowOffline = int(last.connected), int(last.offline)
	c.Since = time.Unix(ss[0].minute*60, 0).UTC().Format("15:04 UTC")
	// Group into at most historyPoints steps of equal minutes.
	step := int64((len(ss) + historyPoints - 1) / historyPoints)
	type pt struct {
		minute             int64
		connected, offline int32
	}
	var pts []pt
	for i := 0; i < len(ss); i += int(step) {
		p := pt{minute: ss[i].minute, connected: ss[i].connected, offline: ss[i].offline}
		for _, s := range ss[i:min(len(ss), i+int(step))] {
			p.connected = min(p.connected, s.connected)
			p.offline = max(p.offline, s.offline)
		}
		pts = append(pts, p)
	}
	for _, s := range ss {
		c.Max = max(c.Max, int(s.total), int(s.connected))
	}
	c.Points = len(pts)
	first := now.Unix()/60 - historyLen + 1
	x := func(m int64) int { return int((m - first) * historyW / (historyLen - 1)) }
	y := func(n int32) int {
		if c.Max == 0 {
			return historyH
		}
		return historyH - int(n)*historyH/c.Max
	}
	var area, off strings.Builder
	fmt.Fprintf(&area, "M%d %d", x(pts[0].minute), historyH)
	for i, p := range pts {
		fmt.Fprintf(&area, "L%d %d", x(p.minute), y(p.connected))
		sep := "L"
		if i == 0 {
			sep = "M"
		}
		fmt.Fprintf(&off, "%s%d %d", sep, x(p.minute), y(p.offline))
	}
	fmt.Fprintf(&area, "L%d %dZ", x(pts[len(pts)-1].minute), historyH)
	c.Area, c.Offline = area.String(), off.String()
	return c
}

// sampleHistory records the whole fleet's overview for this minute, through the overview's
// one-second cache (a page or stream of the whole fleet may have just computed it).
func (h *Handler) sampleHistory(ctx context.Context) error {
	o, err := h.cachedOverview(ctx, "*\x01", fleet.ClusterQuery{})
	if err != nil {
		return err
	}
	h.history.record(h.cfg.Now(), o)
	return nil
}

// Run samples the fleet for the connected-clusters chart once a minute until ctx ends.
func (h *Handler) Run(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if err := h.sampleHistory(ctx); err != nil && ctx.Err() == nil {
			h.log.Warn("sampling the fleet for the dashboard", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
