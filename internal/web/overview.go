package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/fleet"
)

var clusterStates = []string{api.StateReady, api.StateNotReady, "Offline", "Pending"}

type attention struct {
	Reason string
	Count  int
	Href   string
}

type overviewData struct {
	O                    fleet.Overview
	State                donut
	Version, Arch, Agent barChart
	Attention            []attention
	Deployments          barChart
	// Label is the label key counted by, and its chart.
	Label      string
	LabelChart barChart
	Live       string
	// Connected is the connected-clusters chart, for users who see the whole fleet.
	Connected *connectedChart
}

// labelParam is the overview's label key to count by, checked as a Kubernetes label key.
func labelParam(r *http.Request) (string, error) {
	k := strings.TrimSpace(r.URL.Query().Get("label"))
	if k == "" {
		return "", nil
	}
	if errs := validation.IsQualifiedName(k); len(errs) > 0 {
		return "", fmt.Errorf("%q is not a label key: %s", k, strings.Join(errs, "; "))
	}
	return k, nil
}

// reasonLabel says an attention reason in words.
func reasonLabel(r string) string {
	switch r {
	case fleet.ReasonOffline:
		return "Offline: the agent has not called for a while"
	case fleet.ReasonNeverConnected:
		return "Never connected: registered, no agent seen yet"
	case fleet.ReasonPaused:
		return "Paused: no new deployments reach it"
	}
	if s, ok := strings.CutPrefix(r, fleet.ReasonDeployments); ok {
		return "Deployments " + s
	}
	return r
}

func (h *Handler) overviewData(r *http.Request, u *user, label string) (overviewData, error) {
	o, all, err := h.overviewAndView(r.Context(), u, label)
	if err != nil {
		return overviewData{}, err
	}
	d := overviewData{O: o,
		State:       newDonut("Clusters by state", o.ByState, clusterStates, func(v string) string { return listHref("state", v) }),
		Version:     newBarChart("Kubernetes version", o.ByVersion, func(v string) string { return listHref("version", v) }),
		Arch:        newBarChart("Architecture", o.ByArch, func(v string) string { return listHref("arch", v) }),
		Agent:       newBarChart("Agent version", o.ByAgent, func(v string) string { return listHref("agent", v) }),
		Deployments: newBarChart("Deployments by state", o.DeploymentsByState, func(v string) string { return listHref("reason", fleet.ReasonDeployments+v) }),
	}
	d.Label, d.Live = label, "/events/overview"
	if all {
		// The history is of the whole fleet: a user who sees part of it is not shown it.
		now := h.cfg.Now()
		c := newConnectedChart(now, h.history.samples(now))
		d.Connected = &c
	}
	if label != "" {
		d.Live += "?" + url.Values{"label": {label}}.Encode()
		d.LabelChart = newBarChart("Label "+label, o.ByLabel, func(v string) string {
			if v == "-" {
				return listHref("selector", "!"+label)
			}
			return listHref("selector", label+"="+v)
		})
	}
	// A Ready deployment needs no attention: its bar links to the whole list.
	for i, b := range d.Deployments.Bars {
		if b.Label == api.StateReady {
			d.Deployments.Bars[i].Href = "/clusters"
		}
	}
	for r, n := range o.Attention {
		d.Attention = append(d.Attention, attention{Reason: r, Count: n, Href: listHref("reason", r)})
	}
	sort.Slice(d.Attention, func(i, j int) bool {
		if d.Attention[i].Count != d.Attention[j].Count {
			return d.Attention[i].Count > d.Attention[j].Count
		}
		return d.Attention[i].Reason < d.Attention[j].Reason
	})
	return d, nil
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, u *user) {
	label, err := labelParam(r)
	if err != nil {
		h.errorPage(w, r, u, http.StatusBadRequest, err.Error())
		return
	}
	d, err := h.overviewData(r, u, label)
	if err != nil {
		h.refused(w, r, u, err)
		return
	}
	h.render(w, r, http.StatusOK, "overview", page{Title: "Overview", User: u, Nav: "overview", Data: d})
}

// refused shows why a view is not the user's to see.
func (h *Handler) refused(w http.ResponseWriter, r *http.Request, u *user, err error) {
	if errors.Is(err, auth.ErrForbidden) {
		h.errorPage(w, r, u, http.StatusForbidden, "Refused: "+err.Error())
		return
	}
	h.log.Error("dashboard view", "err", err)
	h.errorPage(w, r, u, http.StatusInternalServerError, "The view failed on the server.")
}

// overviewEvents streams an event whenever the user's overview changes, at most once per
// LiveInterval: the page then fetches the new counts. Only aggregates travel, never one
// event per cluster.
func (h *Handler) overviewEvents(w http.ResponseWriter, r *http.Request, u *user) {
	label, err := labelParam(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case h.live <- struct{}{}:
		defer func() { <-h.live }()
	default:
		http.Error(w, "too many live views open; reload later", http.StatusServiceUnavailable)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	// The first reading is taken before the stream answers: a change made once the client
	// has the answer is told.
	o, err := h.overviewOf(r.Context(), u, label)
	if err != nil {
		h.refused(w, r, u, err)
		return
	}
	last := overviewSignature(o)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 5000\n\n")
	fl.Flush()
	t := time.NewTicker(h.cfg.LiveInterval)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
		// A revoked session or a changed binding ends or narrows the stream at once.
		if _, err := h.cfg.Auth.Authenticate(r.Context(), u.token); err != nil {
			fmt.Fprint(w, "event: logout\ndata: \n\n")
			fl.Flush()
			return
		}
		o, err := h.overviewOf(r.Context(), u, label)
		if err != nil {
			return
		}
		sig := overviewSignature(o)
		if sig == last {
			continue
		}
		last = sig
		if _, err := fmt.Fprintf(w, "event: overview\ndata: %d\n\n", o.Total); err != nil {
			return
		}
		fl.Flush()
	}
}

// overviewSignature changes when any count the overview shows does.
func overviewSignature(o fleet.Overview) string {
	var b strings.Builder
	fmt.Fprint(&b, o.Total)
	for _, m := range []map[string]int{o.ByState, o.ByVersion, o.ByArch, o.ByAgent, o.ByLabel, o.Attention, o.DeploymentsByState} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "|%s=%d", k, m[k])
		}
		b.WriteByte(';')
	}
	return b.String()
}
