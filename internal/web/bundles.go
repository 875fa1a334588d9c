package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"

	"flotilla.dev/api"
)

// Bundles and GitRepos are few next to clusters (thousands, not millions) and carry their
// rollups in their status: their pages are pages of the API's own list, as the user, with
// its continue tokens.

// stackSeg is one state's share of a stacked bar.
type stackSeg struct {
	State string
	Count int
	X, W  float64
}

// stack is a rollup drawn as one bar split by state.
type stack struct {
	Total int
	Segs  []stackSeg
}

// stackWidth is the bar's width in SVG units.
const stackWidth = 300.0

func newStack(s *api.Summary) stack {
	if s == nil {
		return stack{}
	}
	parts := []struct {
		state string
		n     int
	}{{api.StateReady, s.Ready}, {api.StateNotReady, s.NotReady}, {api.StateModified, s.Modified}, {api.StateWaitApplied, s.WaitApplied},
		{api.StateErrApplied, s.ErrApplied}, {api.StateOutOfSync, s.OutOfSync}, {api.StatePending, s.Pending}}
	st := stack{Total: max(s.DesiredReady, 0)}
	sum := 0
	for _, p := range parts {
		sum += max(p.n, 0)
	}
	st.Total = max(st.Total, sum)
	if st.Total == 0 {
		return st
	}
	x := 0.0
	for _, p := range parts {
		if p.n <= 0 {
			continue
		}
		w := stackWidth * float64(p.n) / float64(st.Total)
		st.Segs = append(st.Segs, stackSeg{State: p.state, Count: p.n, X: x, W: w})
		x += w
	}
	return st
}

type rolloutRow struct {
	Kind, Namespace, Name string
	Stack                 stack
	Partitions            int
	Commit, Error         string
	// Sync: the user may force this GitRepo to sync.
	Sync bool
}

type rolloutsData struct {
	Plural string
	Rows   []rolloutRow
	Next   string
	First  string
}

// rolloutPlurals are the kinds the rollout pages show.
var rolloutPlurals = map[string]string{"bundles": api.KindBundle, "gitrepos": api.KindGitRepo}

func (h *Handler) rollouts(w http.ResponseWriter, r *http.Request, u *user) {
	plural := r.PathValue("plural")
	kind, ok := rolloutPlurals[plural]
	if !ok {
		h.errorPage(w, r, u, http.StatusNotFound, "No such page.")
		return
	}
	q := url.Values{"limit": {"50"}}
	if c := r.URL.Query().Get("continue"); c != "" {
		if len(c) > 1024 {
			h.errorPage(w, r, u, http.StatusBadRequest, "The page token is not valid; start from the first page.")
			return
		}
		q.Set("continue", c)
	}
	res := h.call(r, u.token, http.MethodGet, "/apis/"+api.Group+"/"+api.Version+"/"+plural+"?"+q.Encode(), "", nil)
	if res.code != http.StatusOK {
		h.errorPage(w, r, u, res.code, apiRefusal(res))
		return
	}
	var list struct {
		Metadata api.ListMeta `json:"metadata"`
		Items    []api.Object `json:"items"`
	}
	if err := json.Unmarshal(res.body, &list); err != nil {
		h.errorPage(w, r, u, http.StatusInternalServerError, "The list could not be read.")
		return
	}
	d := rolloutsData{Plural: plural, First: "/" + plural}
	// may answers can-i once per workspace on the page.
	may := map[string]bool{}
	for _, o := range list.Items {
		row := rolloutRow{Kind: kind, Namespace: o.Metadata.Namespace, Name: o.Metadata.Name}
		if kind == api.KindBundle {
			var st api.BundleStatus
			json.Unmarshal(o.Status, &st)
			row.Stack, row.Partitions = newStack(st.Summary), len(st.Partitions)
		} else {
			var st api.GitRepoStatus
			json.Unmarshal(o.Status, &st)
			row.Stack, row.Commit, row.Error = newStack(st.Summary), shortCommit(st.Commit), st.Error
			ok, asked := may[row.Namespace]
			if !asked {
				ok = h.canI(r, u, api.VerbUpdate, api.KindGitRepo, row.Namespace)
				may[row.Namespace] = ok
			}
			row.Sync = ok
		}
		d.Rows = append(d.Rows, row)
	}
	if list.Metadata.Continue != "" {
		d.Next = "/" + plural + "?" + url.Values{"continue": {list.Metadata.Continue}}.Encode()
	}
	title := map[string]string{"bundles": "Bundles", "gitrepos": "GitRepos"}[plural]
	h.render(w, r, http.StatusOK, "rollouts", page{Title: title, User: u, Nav: plural, Flash: flashes[r.URL.Query().Get("done")], Data: d})
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

type partitionRow struct {
	api.PartitionStatus
	Stack stack
}

type failureGroup struct {
	State, Message string
	Count          int
	Examples       []string
}

type bundleData struct {
	Namespace, Name string
	Status          api.BundleStatus
	Stack           stack
	Partitions      []partitionRow
	Failures        []failureGroup
}

// bundle shows one bundle's rollout: its partitions' progress and its failing deployments
// grouped by state and message.
func (h *Handler) bundle(w http.ResponseWriter, r *http.Request, u *user) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	res := h.call(r, u.token, http.MethodGet, "/apis/"+api.Group+"/"+api.Version+"/namespaces/"+url.PathEscape(ns)+"/bundles/"+url.PathEscape(name), "", nil)
	if res.code != http.StatusOK {
		h.errorPage(w, r, u, res.code, apiRefusal(res))
		return
	}
	var obj api.Object
	if err := json.Unmarshal(res.body, &obj); err != nil {
		h.errorPage(w, r, u, http.StatusInternalServerError, "The bundle could not be read.")
		return
	}
	d := bundleData{Namespace: ns, Name: name}
	json.Unmarshal(obj.Status, &d.Status)
	d.Stack = newStack(d.Status.Summary)
	for _, p := range d.Status.Partitions {
		d.Partitions = append(d.Partitions, partitionRow{PartitionStatus: p, Stack: newStack(p.Summary)})
	}
	if s := d.Status.Summary; s != nil {
		groups := map[[2]string]*failureGroup{}
		for _, nr := range s.NonReadyResources {
			k := [2]string{nr.State, nr.Message}
			g := groups[k]
			if g == nil {
				g = &failureGroup{State: nr.State, Message: nr.Message}
				groups[k] = g
			}
			g.Count++
			if len(g.Examples) < 5 {
				g.Examples = append(g.Examples, nr.Name)
			}
		}
		for _, g := range groups {
			d.Failures = append(d.Failures, *g)
		}
		sort.Slice(d.Failures, func(i, j int) bool {
			if d.Failures[i].Count != d.Failures[j].Count {
				return d.Failures[i].Count > d.Failures[j].Count
			}
			return fmt.Sprint(d.Failures[i]) < fmt.Sprint(d.Failures[j])
		})
	}
	h.render(w, r, http.StatusOK, "bundle", page{Title: name, User: u, Nav: "bundles", Data: d})
}
