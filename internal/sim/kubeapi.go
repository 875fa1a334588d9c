package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Headers the simulated Kubernetes API sets on every answer, so that a test can tell which
// cluster answered and as whom the request reached it.
const (
	HeaderSimCluster     = "X-Flotilla-Sim-Cluster"
	HeaderSimImpersonate = "X-Flotilla-Sim-Impersonate-User"
)

// SimPods is how many pods the simulated API lists in every namespace; a watch sends one
// ADDED event for each and a MODIFIED event for the first.
const SimPods = 3

// NewKubeAPI is the small Kubernetes-like API a simulated cluster serves behind its tunnel:
// GET /version, GET /api/v1/namespaces/NS/pods (a list of SimPods pods, or with
// ?watch=true a stream of SimPods+1 watch events), and a Kubernetes Status for anything
// else. As the agent's target (tunnel.NewTarget), it refuses requests that do not
// impersonate a Flotilla subject. It is not an API server: it keeps no state.
func NewKubeAPI(cluster string) http.Handler {
	return &kubeAPI{cluster: cluster}
}

type kubeAPI struct{ cluster string }

func (k *kubeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set(HeaderSimCluster, k.cluster)
	user := r.Header.Get("Impersonate-User")
	h.Set(HeaderSimImpersonate, user)
	if !strings.HasPrefix(user, "flotilla:") {
		kubeStatus(w, http.StatusForbidden, "Forbidden", "the agent forwards only requests impersonating a Flotilla user")
		return
	}
	if r.Method != http.MethodGet {
		kubeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the simulated cluster serves only GET")
		return
	}
	if r.URL.Path == "/version" {
		writeJSON(w, map[string]string{"major": "1", "minor": "37", "gitVersion": "v1.37.0+sim", "platform": "linux/amd64"})
		return
	}
	ns, ok := strings.CutPrefix(r.URL.Path, "/api/v1/namespaces/")
	ns, rest, _ := strings.Cut(ns, "/")
	if !ok || ns == "" || rest != "pods" {
		kubeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("the server could not find the requested resource %.100q", r.URL.Path))
		return
	}
	if v := r.URL.Query().Get("watch"); v == "true" || v == "1" {
		k.watch(w, r, ns)
		return
	}
	items := make([]any, SimPods)
	for i := range items {
		items[i] = k.pod(ns, i, "1")
	}
	writeJSON(w, map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]string{"resourceVersion": "1"}, "items": items})
}

// watch streams an ADDED event per pod and a MODIFIED one, flushed one by one a few
// milliseconds apart (a stream through the tunnel, not one write), then ends as a watch
// whose timeout passed.
func (k *kubeAPI) watch(w http.ResponseWriter, r *http.Request, ns string) {
	w.Header().Set("Content-Type", "application/json")
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for i := range SimPods + 1 {
		ev := map[string]any{"type": "ADDED", "object": k.pod(ns, i, "1")}
		if i == SimPods {
			ev = map[string]any{"type": "MODIFIED", "object": k.pod(ns, 0, "2")}
		}
		if enc.Encode(ev) != nil {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (k *kubeAPI) pod(ns string, i int, rv string) map[string]any {
	return map[string]any{
		"metadata": map[string]any{"name": fmt.Sprintf("web-%d", i), "namespace": ns, "resourceVersion": rv,
			"uid": fmt.Sprintf("%s-%s-%d", k.cluster, ns, i), "labels": map[string]string{"app": "web"}},
		"spec":   map[string]any{"nodeName": k.cluster, "containers": []any{map[string]string{"name": "web", "image": "nginx:1.27"}}},
		"status": map[string]any{"phase": "Running"},
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func kubeStatus(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": msg})
}
