package apiserver_test

import (
	"net/http"
	"testing"

	"flotilla.dev/api"
)

// A user who may write roles must not raise what a role already bound grants: that would
// hand itself (or others) rights no binding author could grant.
func TestReviewRoleUpdateCannotEscalate(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "role-editor", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"roles"}, Verbs: []string{"get", "list", "create", "update"}}}}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("mallory-roles", "role-editor", api.Subject{Kind: api.SubjectUser, Name: "mallory"}, api.BindingScope{Global: true}), http.StatusCreated)
	mallory := e.as("mallory")
	mallory.mustDo("GET", base+"/gitrepos", nil, http.StatusForbidden)

	// Widening the role bound to oneself, or making it inherit admin.
	for _, spec := range []api.RoleSpec{
		{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"*"}, Verbs: []string{"*"}}}},
		{Context: api.RoleContextGlobal, Rules: []api.PolicyRule{{Resources: []string{"roles"}, Verbs: []string{"get"}}}, InheritFrom: []string{"admin"}},
	} {
		before := e.snapshot()
		code, body := mallory.json("PUT", base+"/roles/role-editor", newObj(api.KindRole, "", "role-editor", nil, spec))
		e.refused("widening a bound role", code, body, before, http.StatusForbidden, "in use")
		mallory.mustDo("GET", base+"/gitrepos", nil, http.StatusForbidden)
	}
	// Through PATCH as well.
	before := e.snapshot()
	code, body := mallory.do("PATCH", base+"/roles/role-editor", "application/merge-patch+json", []byte(`{"spec":{"inheritFrom":["admin"]}}`))
	e.refused("widening a bound role by a patch", code, body, before, http.StatusForbidden, "in use")

	// A role nobody holds may be written: binding it still needs MayGrant.
	mallory.mustDo("POST", base+"/roles", newObj(api.KindRole, "", "draft", nil, api.RoleSpec{Context: api.RoleContextGlobal, InheritFrom: []string{"admin"}}), http.StatusCreated)
	mallory.mustDo("PUT", base+"/roles/draft", newObj(api.KindRole, "", "draft", nil, api.RoleSpec{Context: api.RoleContextGlobal}), http.StatusOK)
	// An administrator still changes a bound role.
	e.mustDo("PUT", base+"/roles/role-editor", newObj(api.KindRole, "", "role-editor", nil, api.RoleSpec{Context: api.RoleContextGlobal,
		Rules: []api.PolicyRule{{Resources: []string{"roles"}, Verbs: []string{"get"}}}}), http.StatusOK)
}

// A dry run (or a refused update) of a User that disables it must not disable it.
func TestReviewDryRunDoesNotDisableUser(t *testing.T) {
	e := newEnv(t)
	e.mustDo("POST", base+"/users", newObj(api.KindUser, "", "bob", nil, api.UserSpec{}), http.StatusCreated)
	e.mustDo("POST", base+"/rolebindings", binding("bob-ro", "read-only", api.Subject{Kind: api.SubjectUser, Name: "bob"}, api.BindingScope{Global: true}), http.StatusCreated)
	bob := e.as("bob")
	bob.mustDo("GET", base+"/gitrepos", nil, http.StatusOK)
	e.mustDo("PUT", base+"/users/bob?dryRun=All", newObj(api.KindUser, "", "bob", nil, api.UserSpec{Disabled: true}), http.StatusOK)
	bob.mustDo("GET", base+"/gitrepos", nil, http.StatusOK)
}
