package apiserver

import (
	"mime"
	"net/http"
	"strings"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
)

// This file serves Kubernetes API discovery, so that kubectl and client-go find Flotilla's
// kinds: /api and /apis in the legacy form and, when asked for, the aggregated form
// (apidiscovery.k8s.io/v2) that answers everything in one request.

// category lets `kubectl get flotilla` list every kind of Flotilla's group.
const category = "flotilla"

var resourceVerbs = []string{"create", "delete", "get", "list", "patch", "update", "watch"}

// apiResources lists a group's resources and their status subresources.
func (g servedGroup) apiResources() []metav1.APIResource {
	var out []metav1.APIResource
	for _, k := range g.kinds {
		r := metav1.APIResource{Name: k.Plural, SingularName: strings.ToLower(k.Kind), Namespaced: !k.Global,
			Kind: k.Kind, Verbs: resourceVerbs}
		if g.group == api.Group {
			// Short names only in Flotilla's own group, so that kubectl never has two
			// candidates for one.
			r.ShortNames = k.ShortNames
			r.Categories = []string{category}
		}
		out = append(out, r)
		// Global kinds' status is the server's alone: no status subresource for clients.
		if _, status := kindTypes[k.Kind]; status && kindTypes[k.Kind][1] != nil && g.group != "" && !k.Global {
			out = append(out, metav1.APIResource{Name: k.Plural + "/status", Namespaced: true, Kind: k.Kind, Verbs: []string{"get", "update"}})
		}
	}
	return out
}

func (g servedGroup) discovery() apidiscoveryv2.APIVersionDiscovery {
	v := apidiscoveryv2.APIVersionDiscovery{Version: g.version, Freshness: apidiscoveryv2.DiscoveryFreshnessCurrent}
	for _, r := range g.apiResources() {
		plural, sub, isSub := strings.Cut(r.Name, "/")
		gvk := &metav1.GroupVersionKind{Group: g.group, Version: g.version, Kind: r.Kind}
		if isSub {
			last := &v.Resources[len(v.Resources)-1]
			if last.Resource == plural {
				last.Subresources = append(last.Subresources, apidiscoveryv2.APISubresourceDiscovery{Subresource: sub, ResponseKind: gvk, Verbs: r.Verbs})
			}
			continue
		}
		scope := apidiscoveryv2.ScopeNamespace
		if !r.Namespaced {
			scope = apidiscoveryv2.ScopeCluster
		}
		v.Resources = append(v.Resources, apidiscoveryv2.APIResourceDiscovery{Resource: r.Name, ResponseKind: gvk,
			Scope: scope, SingularResource: r.SingularName, Verbs: r.Verbs,
			ShortNames: r.ShortNames, Categories: r.Categories})
	}
	return v
}

const aggregatedContentType = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

// wantsAggregated reports whether the client accepts aggregated discovery (v2).
func wantsAggregated(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err == nil && mt == "application/json" && params["g"] == "apidiscovery.k8s.io" && params["v"] == "v2" && params["as"] == "APIGroupDiscoveryList" {
			return true
		}
	}
	return false
}

func (s *Server) writeAggregated(w http.ResponseWriter, core bool) {
	list := apidiscoveryv2.APIGroupDiscoveryList{TypeMeta: metav1.TypeMeta{APIVersion: "apidiscovery.k8s.io/v2", Kind: "APIGroupDiscoveryList"}}
	for _, g := range servedGroups() {
		if (g.group == "") != core {
			continue
		}
		list.Items = append(list.Items, apidiscoveryv2.APIGroupDiscovery{ObjectMeta: metav1.ObjectMeta{Name: g.group},
			Versions: []apidiscoveryv2.APIVersionDiscovery{g.discovery()}})
	}
	w.Header().Set("Content-Type", aggregatedContentType)
	w.Header().Set("Vary", "Accept")
	writeBody(w, http.StatusOK, list)
}

// writeBody is writeJSON for a handler that has set its own Content-Type.
func writeBody(w http.ResponseWriter, code int, v any) {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	data, err := jsonMarshal(v)
	if err != nil {
		WriteError(w, err)
		return
	}
	w.WriteHeader(code)
	w.Write(data)
}

// authenticated lets through only callers with a valid token; discovery describes only the
// code, but Kubernetes does not show it to anonymous callers either.
func (s *Server) authenticated(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.auth.Authenticate(r.Context(), auth.BearerToken(r)); err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r)
	}
}

func (s *Server) discoveryCore(w http.ResponseWriter, r *http.Request) {
	if wantsAggregated(r) {
		s.writeAggregated(w, true)
		return
	}
	writeBody(w, http.StatusOK, metav1.APIVersions{TypeMeta: metav1.TypeMeta{Kind: "APIVersions"}, Versions: []string{"v1"},
		ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{{ClientCIDR: "0.0.0.0/0", ServerAddress: r.Host}}})
}

func (s *Server) discoveryGroups(w http.ResponseWriter, r *http.Request) {
	if wantsAggregated(r) {
		s.writeAggregated(w, false)
		return
	}
	list := metav1.APIGroupList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "APIGroupList"}}
	for _, g := range servedGroups() {
		if g.group != "" {
			list.Groups = append(list.Groups, g.apiGroup())
		}
	}
	writeBody(w, http.StatusOK, list)
}

func (g servedGroup) apiGroup() metav1.APIGroup {
	v := metav1.GroupVersionForDiscovery{GroupVersion: g.gv(), Version: g.version}
	return metav1.APIGroup{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "APIGroup"}, Name: g.group,
		Versions: []metav1.GroupVersionForDiscovery{v}, PreferredVersion: v}
}

// discoveryGroup serves /apis/{group} and /apis/{group}/{version} (and /api/v1).
func (s *Server) discoveryGroup(w http.ResponseWriter, r *http.Request) {
	group, version := r.PathValue("group"), r.PathValue("version")
	if strings.HasPrefix(r.URL.Path, "/api/") {
		group, version = "", r.PathValue("coreversion")
	}
	for _, g := range servedGroups() {
		if g.group != group {
			continue
		}
		switch {
		case version == "":
			writeBody(w, http.StatusOK, g.apiGroup())
			return
		case version == g.version:
			writeBody(w, http.StatusOK, metav1.APIResourceList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "APIResourceList"},
				GroupVersion: g.gv(), APIResources: g.apiResources()})
			return
		}
	}
	WriteError(w, statusErr(http.StatusNotFound, api.ReasonNotFound, "the server could not find the requested resource"))
}
