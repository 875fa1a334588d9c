package apiserver

import (
	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
)

// ClusterView answers which Clusters id may list, as a list of clusters is narrowed: every
// one (all), those f matches, or none (an error saying why). The dashboard's aggregates and
// pages are narrowed with it, so that they show exactly what the API would list.
func (s *Server) ClusterView(id *auth.Identity) (all bool, f rbac.ClusterFilter, err error) {
	kind, _ := api.LookupKind(api.KindCluster)
	if s.decide(id, api.VerbList, kind, "", "", nil) == nil {
		return true, f, nil
	}
	a := s.access.Authorizer
	if a == nil || id == nil || !a.MayAny(subjectOf(id), api.VerbList, api.KindCluster) {
		return false, f, s.decide(id, api.VerbList, kind, "", "", nil)
	}
	return false, a.ClusterFilter(subjectOf(id), api.VerbList), nil
}
