package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"flotilla.dev/api"
)

// auditFilter is the audit page's filters, all in the URL and passed to the API's audit log
// (GET /v1/audit, admins only), which validates them.
type auditFilter struct {
	User, Since, Verb, Kind, Result string
}

type auditData struct {
	F       auditFilter
	Rows    []api.AuditRecord
	Next    string
	Dropped int64
}

func (h *Handler) auditLog(w http.ResponseWriter, r *http.Request, u *user) {
	q := r.URL.Query()
	f := auditFilter{User: strings.TrimSpace(q.Get("user")), Since: strings.TrimSpace(q.Get("since")), Verb: strings.TrimSpace(q.Get("verb")),
		Kind: strings.TrimSpace(q.Get("kind")), Result: strings.TrimSpace(q.Get("result"))}
	d := auditData{F: f}
	fail := func(code int, msg string) {
		h.render(w, r, code, "audit", page{Title: "Audit log", User: u, Nav: "audit", Error: msg, Data: d})
	}
	aq := url.Values{"limit": {"100"}}
	for k, v := range map[string]string{"user": f.User, "verb": f.Verb, "kind": f.Kind, "result": f.Result, "continue": q.Get("continue")} {
		if len(v) > maxFilter*2 {
			fail(http.StatusBadRequest, fmt.Sprintf("The %s filter is longer than %d bytes.", k, maxFilter*2))
			return
		}
		if v != "" {
			aq.Set(k, v)
		}
	}
	if f.Since != "" {
		// A duration ("2h") is read as that long ago; anything else goes to the API as given
		// (RFC 3339), which says what is wrong with it.
		if dur, err := time.ParseDuration(f.Since); err == nil && dur > 0 {
			aq.Set("since", time.Now().Add(-dur).UTC().Format(time.RFC3339))
		} else if len(f.Since) <= 64 {
			aq.Set("since", f.Since)
		} else {
			fail(http.StatusBadRequest, "since is a time (RFC 3339) or a duration such as 2h.")
			return
		}
	}
	res := h.call(r, u.token, http.MethodGet, api.PathAudit+"?"+aq.Encode(), "", nil)
	if res.code != http.StatusOK {
		fail(res.code, refusal(res))
		return
	}
	var list api.AuditRecordList
	if err := json.Unmarshal(res.body, &list); err != nil {
		fail(http.StatusInternalServerError, "The audit log could not be read.")
		return
	}
	d.Rows, d.Dropped = list.Items, list.Dropped
	if list.Continue != "" {
		v := f.values()
		if s := aq.Get("since"); s != "" {
			v.Set("since", s) // a relative time stays where the first page put it
		}
		v.Set("continue", list.Continue)
		d.Next = "/audit?" + v.Encode()
	}
	h.render(w, r, http.StatusOK, "audit", page{Title: "Audit log", User: u, Nav: "audit", Data: d})
}

func (f auditFilter) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"user": f.User, "since": f.Since, "verb": f.Verb, "kind": f.Kind, "result": f.Result} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}
