package web

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
)

// listFilter is the cluster list's filters, all in the URL.
type listFilter struct {
	State, Selector, Version, Arch, Agent, Prefix, Namespace, Reason string
	Limit                                                            int
}

const (
	defaultPage = 50
	maxPage     = 200
	// maxFilter bounds each filter's length.
	maxFilter = 512
)

func parseFilter(q url.Values) (listFilter, fleet.ClusterQuery, error) {
	f := listFilter{State: q.Get("state"), Selector: strings.TrimSpace(q.Get("selector")), Version: q.Get("version"), Arch: q.Get("arch"),
		Agent: q.Get("agent"), Prefix: q.Get("prefix"), Namespace: q.Get("ns"), Reason: q.Get("reason"), Limit: defaultPage}
	var fq fleet.ClusterQuery
	for _, v := range []string{f.State, f.Selector, f.Version, f.Arch, f.Agent, f.Prefix, f.Namespace, f.Reason} {
		if len(v) > maxFilter {
			return f, fq, fmt.Errorf("a filter is longer than %d bytes", maxFilter)
		}
	}
	if f.State != "" && !slices.Contains(clusterStates, f.State) {
		return f, fq, fmt.Errorf("state must be one of %s", strings.Join(clusterStates, ", "))
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxPage {
			return f, fq, fmt.Errorf("limit must be a number from 1 to %d", maxPage)
		}
		f.Limit = n
	}
	fq = fleet.ClusterQuery{Namespace: f.Namespace, State: f.State, KubernetesVersion: f.Version, Architecture: f.Arch,
		AgentVersion: f.Agent, NamePrefix: f.Prefix, Reason: f.Reason}
	if f.Selector != "" {
		sel, err := labels.Parse(f.Selector)
		if err != nil {
			return f, fq, fmt.Errorf("the label selector is not valid: %v", err)
		}
		fq.Selector = sel
	}
	return f, fq, nil
}

// values are the filters as URL parameters, without the page position.
func (f listFilter) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"state": f.State, "selector": f.Selector, "version": f.Version, "arch": f.Arch,
		"agent": f.Agent, "prefix": f.Prefix, "ns": f.Namespace, "reason": f.Reason} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if f.Limit != defaultPage {
		v.Set("limit", strconv.Itoa(f.Limit))
	}
	return v
}

// Continue tokens name the key a page starts after (a:) or ends before (b:); they are
// opaque to the user, and a bad one is refused.
func continueToken(dir, key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(dir + key))
}

func parseContinue(s string) (after, before string, err error) {
	if s == "" {
		return "", "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 3 || len(b) > 600 {
		return "", "", fmt.Errorf("the page token is not valid; start from the first page")
	}
	switch k := string(b[2:]); string(b[:2]) {
	case "a:":
		return k, "", nil
	case "b:":
		return "", k, nil
	}
	return "", "", fmt.Errorf("the page token is not valid; start from the first page")
}

type listData struct {
	F          listFilter
	States     []string
	Rows       []fleet.ClusterRow
	Total      int
	First      string
	Next, Prev string
	Took       time.Duration
}

func (h *Handler) clusters(w http.ResponseWriter, r *http.Request, u *user) {
	q := r.URL.Query()
	f, fq, err := parseFilter(q)
	d := listData{F: f, States: clusterStates}
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "clusters", page{Title: "Clusters", User: u, Nav: "clusters", Error: err.Error(), Data: d})
		return
	}
	after, before, err := parseContinue(q.Get("continue"))
	if err != nil {
		h.render(w, r, http.StatusBadRequest, "clusters", page{Title: "Clusters", User: u, Nav: "clusters", Error: err.Error(), Data: d})
		return
	}
	if _, err := h.view(u, &fq); err != nil {
		h.refused(w, r, u, err)
		return
	}
	if err := h.pass(r.Context()); err != nil {
		return // the user went away
	}
	start := time.Now()
	p := h.cfg.Fleet.ListClusters(fq, after, before, f.Limit)
	d.Took = time.Since(start)
	<-h.passes
	d.Rows, d.Total = p.Rows, p.Total
	base := f.values()
	d.First = "/clusters?" + base.Encode()
	if len(p.Rows) > 0 {
		if p.More {
			v := cloneValues(base)
			v.Set("continue", continueToken("a:", p.Rows[len(p.Rows)-1].Key()))
			d.Next = "/clusters?" + v.Encode()
		}
		if p.Earlier {
			v := cloneValues(base)
			v.Set("continue", continueToken("b:", p.Rows[0].Key()))
			d.Prev = "/clusters?" + v.Encode()
		}
	}
	h.render(w, r, http.StatusOK, "clusters", page{Title: "Clusters", User: u, Nav: "clusters", Data: d})
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// clusterData is one cluster's page.
type clusterData struct {
	Namespace, Name string
	ResourceVersion string
	Labels          []labelPair
	LabelsText      string
	Paused          bool
	Status          api.ClusterStatus
	Deployments     []fleet.DeploymentRow
	// More is how many deployments were left off the page.
	More   int
	Tunnel string
}

type labelPair struct{ Key, Value string }

// maxDeploymentRows bounds the deployments a cluster's page lists.
const maxDeploymentRows = 500

func clusterPath(ns, name string) string {
	return "/apis/" + api.Group + "/" + api.Version + "/namespaces/" + url.PathEscape(ns) + "/clusters/" + url.PathEscape(name)
}

// getCluster reads the cluster through the API as the user.
func (h *Handler) getCluster(r *http.Request, u *user, ns, name string) (*api.Object, apiResult) {
	res := h.call(r, u.token, http.MethodGet, clusterPath(ns, name), "", nil)
	if res.code != http.StatusOK {
		return nil, res
	}
	var obj api.Object
	if err := json.Unmarshal(res.body, &obj); err != nil {
		return nil, apiResult{code: http.StatusInternalServerError, body: []byte("the cluster could not be read")}
	}
	return &obj, res
}

func (h *Handler) clusterPage(w http.ResponseWriter, r *http.Request, u *user, code int, errMsg, flash string) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	obj, res := h.getCluster(r, u, ns, name)
	if obj == nil {
		h.errorPage(w, r, u, res.code, apiRefusal(res))
		return
	}
	d := clusterData{Namespace: ns, Name: name, ResourceVersion: obj.Metadata.ResourceVersion}
	var spec api.ClusterSpec
	json.Unmarshal(obj.Spec, &spec)
	json.Unmarshal(obj.Status, &d.Status)
	d.Paused = spec.Paused
	for k, v := range obj.Metadata.Labels {
		d.Labels = append(d.Labels, labelPair{k, v})
	}
	sort.Slice(d.Labels, func(i, j int) bool { return d.Labels[i].Key < d.Labels[j].Key })
	var lt strings.Builder
	for _, l := range d.Labels {
		fmt.Fprintf(&lt, "%s=%s\n", l.Key, l.Value)
	}
	d.LabelsText = lt.String()
	d.Deployments, _ = h.cfg.Fleet.ClusterDeployments(ns, name)
	sort.Slice(d.Deployments, func(i, j int) bool { return d.Deployments[i].Bundle < d.Deployments[j].Bundle })
	if len(d.Deployments) > maxDeploymentRows {
		d.More = len(d.Deployments) - maxDeploymentRows
		d.Deployments = d.Deployments[:maxDeploymentRows]
	}
	if h.cfg.TunnelOpen != nil {
		d.Tunnel = "closed (opened on demand)"
		if h.cfg.TunnelOpen(ns + "/" + name) {
			d.Tunnel = "open"
		}
	}
	h.render(w, r, code, "cluster", page{Title: name, User: u, Nav: "clusters", Error: errMsg, Flash: flash, Data: d})
}

func apiRefusal(res apiResult) string {
	switch res.code {
	case http.StatusForbidden:
		return "Refused: " + res.message()
	case http.StatusNotFound:
		return "No such cluster."
	}
	return res.message()
}

func (h *Handler) cluster(w http.ResponseWriter, r *http.Request, u *user) {
	h.clusterPage(w, r, u, http.StatusOK, "", flashes[r.URL.Query().Get("done")])
}

// Flash messages a redirect after an action may carry (only these, so that a link cannot
// put words on the page).
var flashes = map[string]string{
	"paused":          "Paused: no new deployments reach this cluster.",
	"resumed":         "Resumed.",
	"labels":          "Labels saved.",
	"user-created":    "User created.",
	"user-disabled":   "User disabled: their sessions stop working at once.",
	"user-enabled":    "User enabled.",
	"binding-created": "Role binding created.",
	"binding-deleted": "Role binding deleted.",
	"synced":          "Sync requested: the GitRepo is fetched now and its bundles redeployed.",
}

// clusterAction changes a cluster through the API as the user: the API validates, decides
// and audits. A refusal is shown on the cluster's page with the API's reason.
func (h *Handler) clusterAction(w http.ResponseWriter, r *http.Request, u *user) {
	ns, name, action := r.PathValue("ns"), r.PathValue("name"), r.PathValue("action")
	var res apiResult
	done := ""
	switch action {
	case "pause", "resume":
		body, _ := json.Marshal(map[string]any{"spec": map[string]any{"paused": action == "pause"}})
		res = h.call(r, u.token, http.MethodPatch, clusterPath(ns, name), "application/merge-patch+json", body)
		done = map[string]string{"pause": "paused", "resume": "resumed"}[action]
	case "labels":
		patch, err := h.labelPatch(r, u, ns, name)
		if err != nil {
			h.clusterPage(w, r, u, http.StatusBadRequest, err.Error(), "")
			return
		}
		if patch == nil {
			res = apiResult{code: http.StatusOK}
		} else {
			res = h.call(r, u.token, http.MethodPatch, clusterPath(ns, name), "application/merge-patch+json", patch)
		}
		done = "labels"
	case "kubeconfig":
		h.kubeconfig(w, r, u, ns, name)
		return
	default:
		h.errorPage(w, r, u, http.StatusNotFound, "No such action.")
		return
	}
	switch {
	case res.code == http.StatusOK:
		http.Redirect(w, r, "/clusters/"+url.PathEscape(ns)+"/"+url.PathEscape(name)+"?done="+done, http.StatusSeeOther)
		return
	case res.code == http.StatusConflict:
		h.clusterPage(w, r, u, http.StatusConflict, "The cluster changed since the page was loaded: check it and try again.", "")
	default:
		h.clusterPage(w, r, u, res.code, apiRefusal(res), "")
	}
}

// labelPatch turns the form's labels (KEY=VALUE lines) into a merge patch against the
// labels the user saw (their resourceVersion: a change made since is a conflict, not lost).
// Keys and values are checked by the API.
func (h *Handler) labelPatch(r *http.Request, u *user, ns, name string) ([]byte, error) {
	text := r.PostFormValue("labels")
	if len(text) > 32<<10 {
		return nil, fmt.Errorf("the labels are longer than 32 KiB")
	}
	want := map[string]string{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: write KEY=VALUE", i+1)
		}
		k = strings.TrimSpace(k)
		if _, dup := want[k]; dup {
			return nil, fmt.Errorf("line %d: label %q is given twice", i+1, k)
		}
		want[k] = strings.TrimSpace(v)
	}
	obj, res := h.getCluster(r, u, ns, name)
	if obj == nil {
		return nil, fmt.Errorf("%s", apiRefusal(res))
	}
	rv := r.PostFormValue("resourceVersion")
	if rv == "" {
		return nil, fmt.Errorf("the form is missing the cluster's version: reload the page")
	}
	patch := map[string]any{}
	for k, v := range want {
		if cur, ok := obj.Metadata.Labels[k]; !ok || cur != v {
			patch[k] = v
		}
	}
	for k := range obj.Metadata.Labels {
		if _, keep := want[k]; !keep {
			patch[k] = nil
		}
	}
	if len(patch) == 0 && rv == obj.Metadata.ResourceVersion {
		return nil, nil
	}
	return json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": rv, "labels": patch}})
}

// kubeconfig answers the user's kubeconfig for the cluster, made by the API (with a new API
// token of the user's), as a download.
func (h *Handler) kubeconfig(w http.ResponseWriter, r *http.Request, u *user, ns, name string) {
	// The API names a cluster of another workspace WORKSPACE.NAME.
	ref := name
	if ns != api.DefaultNamespace {
		ref = ns + "." + name
	}
	res := h.call(r, u.token, http.MethodPost, api.PathKubeconfig+url.PathEscape(ref), "", nil)
	if res.code != http.StatusOK {
		h.clusterPage(w, r, u, res.code, apiRefusal(res), "")
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", cssName(name)+".kubeconfig"))
	w.Write(res.body)
}
