package sim

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestKubeAPI(t *testing.T) {
	h := NewKubeAPI("c1")
	get := func(path, user string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		if user != "" {
			r.Header.Set("Impersonate-User", user)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := get("/version", ""); w.Code != http.StatusForbidden {
		t.Errorf("no impersonation: %d, want 403", w.Code)
	}
	if w := get("/version", "system:admin"); w.Code != http.StatusForbidden {
		t.Errorf("impersonating a non-Flotilla user: %d, want 403", w.Code)
	}
	w := get("/version", "flotilla:user:alice")
	var v struct{ GitVersion string }
	if json.Unmarshal(w.Body.Bytes(), &v); w.Code != http.StatusOK || v.GitVersion == "" || w.Header().Get(HeaderSimCluster) != "c1" ||
		w.Header().Get(HeaderSimImpersonate) != "flotilla:user:alice" {
		t.Errorf("/version: %d %s %v", w.Code, w.Body, w.Header())
	}
	w = get("/api/v1/namespaces/web/pods", "flotilla:user:alice")
	var list struct {
		Kind  string
		Items []struct{ Metadata struct{ Namespace string } }
	}
	if json.Unmarshal(w.Body.Bytes(), &list); w.Code != http.StatusOK || list.Kind != "PodList" || len(list.Items) != SimPods || list.Items[0].Metadata.Namespace != "web" {
		t.Errorf("pods: %d %s", w.Code, w.Body)
	}
	w = get("/api/v1/namespaces/web/pods?watch=true", "flotilla:user:alice")
	var types []string
	for sc := bufio.NewScanner(w.Body); sc.Scan(); {
		var ev struct{ Type string }
		json.Unmarshal(sc.Bytes(), &ev)
		types = append(types, ev.Type)
	}
	if got := strings.Join(types, ","); got != "ADDED,ADDED,ADDED,MODIFIED" {
		t.Errorf("watch events %s", got)
	}
	for _, p := range []string{"/api/v1/namespaces//pods", "/api/v1/namespaces/web/secrets", "/apis/apps/v1/deployments", "/api/v1/namespaces/web/pods/x"} {
		if w := get(p, "flotilla:user:alice"); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), `"kind":"Status"`) {
			t.Errorf("%s: %d %s, want a 404 Status", p, w.Code, w.Body)
		}
	}
	r := httptest.NewRequest(http.MethodDelete, "/api/v1/namespaces/web/pods", nil)
	r.Header.Set("Impersonate-User", "flotilla:user:alice")
	rw := httptest.NewRecorder()
	h.ServeHTTP(rw, r)
	if rw.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d, want 405", rw.Code)
	}
}
