// Package rbac owns Flotilla's authorisation model: roles, role bindings and projects, kept in
// one in-memory index that answers "may this subject do this?" in microseconds, filters lists
// of clusters, and compiles the Kubernetes RBAC objects, namespaces and quotas each downstream
// cluster must hold. Nothing is stored per cluster × binding: bindings are indexed by subject
// and by scope, and a cluster's objects are computed from its name, workspace, labels and
// groups when they are asked for.
//
// It is imported by the server side only (API, proxy, fleet model); the agent receives the
// compiled objects as plain manifests.
package rbac

import (
	"fmt"
	"slices"

	"flotilla.dev/api"
)

// verb bits; a rule's verbs are a mask so that a check is one AND.
const (
	verbGet uint8 = 1 << iota
	verbList
	verbWatch
	verbCreate
	verbUpdate
	verbDelete

	verbAll = verbGet | verbList | verbWatch | verbCreate | verbUpdate | verbDelete
)

func verbBit(v string) uint8 {
	switch v {
	case api.VerbGet:
		return verbGet
	case api.VerbList:
		return verbList
	case api.VerbWatch:
		return verbWatch
	case api.VerbCreate:
		return verbCreate
	case api.VerbUpdate:
		return verbUpdate
	case api.VerbDelete:
		return verbDelete
	case "*":
		return verbAll
	}
	return 0
}

// lookupKind maps a rule's resource (plural, kind or short name) to its kind.
func lookupKind(resource string) (string, bool) {
	if k, ok := api.LookupKind(resource); ok {
		return k.Kind, true
	}
	return "", false
}

// ruleSet is a role's rules over Flotilla's kinds, flattened over inheritance.
type ruleSet struct {
	star   uint8            // verbs granted on every kind
	byKind map[string]uint8 // verbs granted on a kind, on every name
	named  []namedRule      // verbs granted on some names only
}

type namedRule struct {
	kind  string // "" for every kind
	verbs uint8
	names []string
}

func (rs *ruleSet) allows(bit uint8, kind, name string) bool {
	if rs.star&bit != 0 || rs.byKind[kind]&bit != 0 {
		return true
	}
	if name == "" {
		return false
	}
	for i := range rs.named {
		n := &rs.named[i]
		if n.verbs&bit != 0 && (n.kind == "" || n.kind == kind) && slices.Contains(n.names, name) {
			return true
		}
	}
	return false
}

func (rs *ruleSet) add(r api.PolicyRule) {
	var mask uint8
	for _, v := range r.Verbs {
		mask |= verbBit(v)
	}
	for _, res := range r.Resources {
		kind := ""
		if res != "*" {
			kind, _ = lookupKind(res)
		}
		switch {
		case len(r.ResourceNames) > 0:
			rs.named = append(rs.named, namedRule{kind: kind, verbs: mask, names: slices.Clone(r.ResourceNames)})
		case kind == "":
			rs.star |= mask
		default:
			if rs.byKind == nil {
				rs.byKind = map[string]uint8{}
			}
			rs.byKind[kind] |= mask
		}
	}
}

// validateRule checks one rule over Flotilla's kinds.
func validateRule(field string, r api.PolicyRule) []string {
	var errs []string
	for _, g := range r.APIGroups {
		if g != api.Group && g != api.FleetGroup && g != "*" {
			errs = append(errs, fmt.Sprintf("%s.apiGroups: %q is not %s, %s or *", field, g, api.Group, api.FleetGroup))
		}
	}
	if len(r.Resources) == 0 {
		errs = append(errs, field+".resources: at least one resource (or *) is required")
	}
	for _, res := range r.Resources {
		if res == "*" {
			continue
		}
		if _, ok := lookupKind(res); !ok {
			errs = append(errs, fmt.Sprintf("%s.resources: unknown resource %q", field, res))
		}
	}
	if len(r.Verbs) == 0 {
		errs = append(errs, field+".verbs: at least one verb (or *) is required")
	}
	for _, v := range r.Verbs {
		if verbBit(v) == 0 {
			errs = append(errs, fmt.Sprintf("%s.verbs: unknown verb %q (want get, list, watch, create, update, delete or *)", field, v))
		}
	}
	for _, n := range r.ResourceNames {
		if n == "" {
			errs = append(errs, field+".resourceNames: empty name")
		}
	}
	return errs
}

// validateKubeRule checks one rule pushed to clusters, with the API server's own rules: a
// rule names resources or non-resource URLs, never both, and non-resource URLs only make
// sense cluster-wide.
func validateKubeRule(field string, r api.KubernetesPolicyRule, namespaced bool) []string {
	var errs []string
	if len(r.Verbs) == 0 {
		errs = append(errs, field+".verbs: at least one verb (or *) is required")
	}
	for _, v := range r.Verbs {
		if v == "" {
			errs = append(errs, field+".verbs: empty verb")
		}
	}
	switch {
	case len(r.NonResourceURLs) > 0 && (len(r.Resources) > 0 || len(r.APIGroups) > 0 || len(r.ResourceNames) > 0):
		errs = append(errs, field+": nonResourceURLs cannot be combined with apiGroups, resources or resourceNames")
	case len(r.NonResourceURLs) > 0 && namespaced:
		errs = append(errs, field+".nonResourceURLs: not allowed in a project role (its rules apply inside namespaces)")
	case len(r.NonResourceURLs) == 0 && len(r.Resources) == 0:
		errs = append(errs, field+": either resources (with apiGroups) or nonResourceURLs is required")
	case len(r.Resources) > 0 && len(r.APIGroups) == 0:
		errs = append(errs, field+".apiGroups: required with resources (\"\" is the core group)")
	}
	return errs
}
