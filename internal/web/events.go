package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"flotilla.dev/api"
)

// A cluster's recent Kubernetes events are read live from the cluster, through the proxy and
// the tunnel as the user, when its page asks (a fragment loaded after the page): the
// cluster's RBAC decides which the user may see, and the server keeps nothing per cluster.
// Events the agents reported would be stored for every cluster, at a million clusters, for
// pages that are seldom opened, and would be shown to users the cluster's RBAC may not let
// read them. A cluster that is not connected is said so at once rather than waited for.

const (
	// maxEvents is how many events the page shows; maxEventsRead how many of each type
	// (warnings, the rest) it reads to choose them.
	maxEvents     = 20
	maxEventsRead = 250
	// eventsTimeout bounds the wait for the cluster, its tunnel's opening included.
	eventsTimeout = 5 * time.Second
)

type eventRow struct {
	Type, Reason, Object, Namespace, Message string
	Count                                    int32
	Last                                     time.Time
}

type eventsData struct {
	Rows []eventRow
	// Absent says why there are no rows to show (not connected, refused, no answer).
	Absent string
	// Read is how many events were read to choose Rows.
	Read int
}

func (h *Handler) clusterEvents(w http.ResponseWriter, r *http.Request, u *user) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	obj, res := h.getCluster(r, u, ns, name)
	if obj == nil {
		h.fragment(w, http.StatusOK, "events", eventsData{Absent: apiRefusal(res)})
		return
	}
	var st api.ClusterStatus
	json.Unmarshal(obj.Status, &st)
	open := h.cfg.TunnelOpen != nil && h.cfg.TunnelOpen(ns+"/"+name)
	if !open && (st.State == "Offline" || st.State == "Pending" || st.LastSeen == nil) {
		msg := "The cluster is not connected"
		if st.LastSeen != nil {
			msg += fmt.Sprintf(" (its agent was last seen %s ago)", h.cfg.Now().Sub(*st.LastSeen).Round(time.Second))
		} else {
			msg += " (its agent has never called)"
		}
		h.fragment(w, http.StatusOK, "events", eventsData{Absent: msg + ": its events cannot be read now."})
		return
	}
	ref := name
	if ns != api.DefaultNamespace {
		ref = ns + "." + name
	}
	ctx, cancel := context.WithTimeout(r.Context(), eventsTimeout)
	defer cancel()
	var d eventsData
	var warnings, others []corev1.Event
	for _, sel := range []string{"type=Warning", "type!=Warning"} {
		q := url.Values{"fieldSelector": {sel}, "limit": {fmt.Sprint(maxEventsRead)}}
		ans := h.call(r.WithContext(ctx), u.token, http.MethodGet, api.PathK8sClusters+ref+"/api/v1/events?"+q.Encode(), "", nil)
		if ans.code != http.StatusOK {
			switch {
			case ctx.Err() != nil:
				d.Absent = fmt.Sprintf("The cluster did not answer within %s: reload to try again (its tunnel may be opening).", eventsTimeout)
			case ans.code == http.StatusForbidden:
				d.Absent = "Refused: " + ans.message()
			default:
				d.Absent = "The events could not be read: " + ans.message()
			}
			h.fragment(w, http.StatusOK, "events", d)
			return
		}
		var list corev1.EventList
		if err := json.Unmarshal(ans.body, &list); err != nil {
			h.fragment(w, http.StatusOK, "events", eventsData{Absent: "The cluster's answer was not a list of events."})
			return
		}
		d.Read += len(list.Items)
		if sel == "type=Warning" {
			warnings = list.Items
		} else {
			others = list.Items
		}
	}
	// Warnings first, each kind newest first.
	for _, evs := range [][]corev1.Event{warnings, others} {
		sort.Slice(evs, func(i, j int) bool { return lastTime(&evs[i]).After(lastTime(&evs[j])) })
		for i := range evs {
			if len(d.Rows) == maxEvents {
				break
			}
			e := &evs[i]
			d.Rows = append(d.Rows, eventRow{Type: e.Type, Reason: e.Reason, Namespace: e.Namespace, Message: e.Message,
				Object: strings.ToLower(e.InvolvedObject.Kind) + "/" + e.InvolvedObject.Name, Count: max(e.Count, 1), Last: lastTime(e)})
		}
	}
	h.fragment(w, http.StatusOK, "events", d)
}

// lastTime is when an event last happened, whichever of its times the reporter filled.
func lastTime(e *corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// fragment renders a part of a page (for htmx) from template name's "fragment".
func (h *Handler) fragment(w http.ResponseWriter, code int, name string, data any) {
	var buf bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&buf, "fragment", data); err != nil {
		h.log.Error("rendering a dashboard fragment", "fragment", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}
