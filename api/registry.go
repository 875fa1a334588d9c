package api

import "strings"

// KindInfo is how a kind is named in URLs and on the command line.
type KindInfo struct {
	Kind       string
	Plural     string
	ShortNames []string
	// Global kinds have no namespace: one object means the same thing in every workspace.
	Global bool
}

// Kinds are the kinds the API serves, in the order a listing of everything shows them.
var Kinds = []KindInfo{
	{Kind: KindCluster, Plural: "clusters"},
	{Kind: KindClusterGroup, Plural: "clustergroups", ShortNames: []string{"cg"}},
	{Kind: KindRegistrationToken, Plural: "registrationtokens", ShortNames: []string{"token", "tokens", "clusterregistrationtoken", "clusterregistrationtokens"}},
	{Kind: KindGitRepo, Plural: "gitrepos", ShortNames: []string{"gr"}},
	{Kind: KindBundle, Plural: "bundles"},
	{Kind: KindSecret, Plural: "secrets"},
	{Kind: KindUser, Plural: "users", Global: true},
	{Kind: KindRole, Plural: "roles", Global: true},
	{Kind: KindRoleBinding, Plural: "rolebindings", ShortNames: []string{"rb"}, Global: true},
	{Kind: KindProject, Plural: "projects", Global: true},
}

// LookupKind finds a kind by its name, plural or short name, in any case.
func LookupKind(s string) (KindInfo, bool) {
	s = strings.ToLower(s)
	for _, k := range Kinds {
		if s == strings.ToLower(k.Kind) || s == k.Plural {
			return k, true
		}
		for _, n := range k.ShortNames {
			if s == n {
				return k, true
			}
		}
	}
	return KindInfo{}, false
}

// KnownAPIVersion reports whether apiVersion is Flotilla's group or, for kinds Fleet also
// has, Fleet's.
func KnownAPIVersion(apiVersion, kind string) bool {
	switch apiVersion {
	case APIVersion:
		return true
	case FleetAPIVersion:
		return kind == KindGitRepo || kind == KindClusterGroup || kind == KindBundle || kind == KindCluster
	}
	return false
}
