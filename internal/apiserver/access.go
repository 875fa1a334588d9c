package apiserver

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/store"
)

// The rules of the access kinds that need the model as a whole: a Role's parents exist and
// form no cycle, a RoleBinding names a known role bound where its context allows and grants
// nothing its author does not hold, a Project's namespaces are not the system's, built-in
// roles stay as shipped, a role still bound cannot be deleted, and a user disabled or
// deleted loses its sessions at once. Writes are applied to the index as soon as they are
// stored, so that a file holding a role and its binding applies in one go; the index's
// follower of the store applies the same changes again, which is harmless.

// EnableAccess makes every route decide with acc, installs the access kinds' hooks and
// stores the built-in roles. users, when not nil, are the authenticator's hooks of the User
// kind (which end a disabled or deleted user's sessions); they run inside the access ones.
func (s *Server) EnableAccess(ctx context.Context, acc Access, users Hooks) error {
	s.SetAccess(acc)
	for kind, h := range accessHooks(acc.Authorizer, users, s.store, s.log) {
		s.SetHooks(kind, h)
	}
	return EnsureBuiltinRoles(ctx, s.store)
}

// accessHooks returns the hooks of the access kinds, by kind.
func accessHooks(a *rbac.Authorizer, users Hooks, st store.Store, log *slog.Logger) map[string]Hooks {
	return map[string]Hooks{
		api.KindRole:         &roleHooks{a: a},
		api.KindRoleBinding:  &bindingHooks{a: a},
		api.KindProject:      &projectHooks{a: a},
		api.KindClusterGroup: &clusterGroupHooks{a: a},
		api.KindUser:         &userHooks{a: a, inner: users, st: st, log: log},
	}
}

// DeleteGuard may refuse the deletion of an object, which the API reads first.
type DeleteGuard interface {
	BeforeDelete(ctx context.Context, obj *api.Object) error
}

// UpdateHook is told of an object the API updated, once the store holds it.
type UpdateHook interface {
	AfterUpdate(ctx context.Context, obj *api.Object)
}

func invalid(err error) error {
	var ie *rbac.InvalidError
	if errors.As(err, &ie) {
		st := &api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: http.StatusUnprocessableEntity,
			Reason: api.ReasonInvalid, Message: err.Error(), Details: &api.StatusDetails{Name: ie.Name, Kind: ie.Kind, Causes: ie.Causes}}
		return st
	}
	return statusErr(http.StatusUnprocessableEntity, api.ReasonInvalid, err.Error())
}

func specOf[T any](obj *api.Object) (T, error) {
	var v T
	if len(obj.Spec) == 0 {
		return v, nil
	}
	if err := json.Unmarshal(obj.Spec, &v); err != nil {
		return v, statusErr(http.StatusBadRequest, api.ReasonBadRequest, fmt.Sprintf("reading spec: %v", err))
	}
	return v, nil
}

type roleHooks struct {
	a *rbac.Authorizer
}

func builtinRole(name string) bool { _, ok := rbac.Builtin()[name]; return ok }

func (h *roleHooks) check(obj *api.Object) error {
	spec, err := specOf[api.RoleSpec](obj)
	if err != nil {
		return err
	}
	if err := h.a.ValidateRole(obj.Metadata.Name, spec); err != nil {
		return invalid(err)
	}
	return nil
}

func (h *roleHooks) BeforeCreate(_ context.Context, obj *api.Object, _ bool) error {
	if builtinRole(obj.Metadata.Name) {
		return statusErr(http.StatusConflict, api.ReasonAlreadyExists, fmt.Sprintf("role %q is built in", obj.Metadata.Name))
	}
	return h.check(obj)
}

func (h *roleHooks) BeforeUpdate(ctx context.Context, _, obj *api.Object, _ bool) error {
	if builtinRole(obj.Metadata.Name) {
		return statusErr(http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("role %q is built in and cannot be changed: make a role that inherits from it", obj.Metadata.Name))
	}
	// Changing a role in use changes what every holder is granted, the author included:
	// no binding author could grant that, so only an administrator may.
	if refs := h.a.RoleInUse(obj.Metadata.Name); refs != "" {
		if id := IdentityFrom(ctx); !isAdministrator(h.a, id) {
			return forbidden(fmt.Sprintf("%s may not change role %q: it is in use by %s, and only an administrator may change what a role in use grants", userOf(id), obj.Metadata.Name, refs))
		}
	}
	return h.check(obj)
}

func (h *roleHooks) BeforeDelete(_ context.Context, obj *api.Object) error {
	if builtinRole(obj.Metadata.Name) {
		return statusErr(http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("role %q is built in and cannot be deleted", obj.Metadata.Name))
	}
	if refs := h.a.RoleInUse(obj.Metadata.Name); refs != "" {
		return statusErr(http.StatusConflict, api.ReasonConflict, fmt.Sprintf("role %q is still used by %s: delete or change those first", obj.Metadata.Name, refs))
	}
	return nil
}

func (h *roleHooks) AfterCreate(_ context.Context, obj *api.Object) error { h.put(obj); return nil }
func (h *roleHooks) AfterUpdate(_ context.Context, obj *api.Object)       { h.put(obj) }
func (h *roleHooks) AfterDelete(_ context.Context, obj *api.Object) {
	h.a.DeleteRole(obj.Metadata.Name)
}

func (h *roleHooks) put(obj *api.Object) {
	if spec, err := specOf[api.RoleSpec](obj); err == nil && !builtinRole(obj.Metadata.Name) {
		h.a.PutRole(obj.Metadata.Name, spec)
	}
}

type bindingHooks struct {
	a *rbac.Authorizer
}

// check validates a binding and refuses escalation: its author must hold the role at its
// scope (or be an administrator).
func (h *bindingHooks) check(ctx context.Context, obj *api.Object) error {
	spec, err := specOf[api.RoleBindingSpec](obj)
	if err != nil {
		return err
	}
	if err := h.a.ValidateBinding(obj.Metadata.Name, spec); err != nil {
		return invalid(err)
	}
	return h.mayGrant(ctx, spec)
}

func (h *bindingHooks) mayGrant(ctx context.Context, spec api.RoleBindingSpec) error {
	id := IdentityFrom(ctx)
	if id != nil && id.Admin {
		return nil
	}
	if id == nil || !h.a.MayGrant(subjectOf(id), spec.RoleRef, spec.Scope) {
		return forbidden(fmt.Sprintf("%s may not grant role %q at scope %s: only a holder of that role there, or an administrator, may", userOf(id), spec.RoleRef, spec.Scope))
	}
	return nil
}

func (h *bindingHooks) BeforeCreate(ctx context.Context, obj *api.Object, _ bool) error {
	return h.check(ctx, obj)
}

func (h *bindingHooks) BeforeUpdate(ctx context.Context, cur, obj *api.Object, _ bool) error {
	// Changing a binding takes away what it granted, which needs the same right.
	old, err := specOf[api.RoleBindingSpec](cur)
	if err == nil {
		if err := h.mayGrant(ctx, old); err != nil {
			return err
		}
	}
	return h.check(ctx, obj)
}

func (h *bindingHooks) BeforeDelete(ctx context.Context, obj *api.Object) error {
	spec, err := specOf[api.RoleBindingSpec](obj)
	if err != nil {
		return nil
	}
	return h.mayGrant(ctx, spec)
}

func (h *bindingHooks) AfterCreate(_ context.Context, obj *api.Object) error { h.put(obj); return nil }
func (h *bindingHooks) AfterUpdate(_ context.Context, obj *api.Object)       { h.put(obj) }
func (h *bindingHooks) AfterDelete(_ context.Context, obj *api.Object) {
	h.a.DeleteBinding(obj.Metadata.Name)
}

func (h *bindingHooks) put(obj *api.Object) {
	if spec, err := specOf[api.RoleBindingSpec](obj); err == nil {
		h.a.PutBinding(obj.Metadata.Name, spec)
	}
}

// isAdministrator: an admin token, or a subject bound globally to a role granting everything.
func isAdministrator(a *rbac.Authorizer, id *auth.Identity) bool {
	return id != nil && (id.Admin || a.IsAdmin(subjectOf(id)))
}

// clusterGroupHooks keep a ClusterGroup that bindings are scoped to from being widened (or
// narrowed) by anyone but an administrator: its selector is what those bindings grant.
type clusterGroupHooks struct {
	a *rbac.Authorizer
}

func (h *clusterGroupHooks) BeforeCreate(context.Context, *api.Object, bool) error { return nil }
func (h *clusterGroupHooks) AfterCreate(context.Context, *api.Object) error        { return nil }

func (h *clusterGroupHooks) BeforeUpdate(ctx context.Context, cur, obj *api.Object, _ bool) error {
	if store.SameJSON(cur.Spec, obj.Spec) {
		return nil
	}
	if refs := h.a.ClusterGroupInUse(obj.Metadata.Namespace, obj.Metadata.Name); refs != "" && !isAdministrator(h.a, IdentityFrom(ctx)) {
		return forbidden(fmt.Sprintf("%s may not change ClusterGroup %s/%s: it is in use by %s, and only an administrator may change which clusters it holds", userOf(IdentityFrom(ctx)), obj.Metadata.Namespace, obj.Metadata.Name, refs))
	}
	return nil
}

// BeforeDelete: a deleted group no longer holds any cluster, which only narrows what its
// bindings grant; it is allowed.

type projectHooks struct {
	a *rbac.Authorizer
}

func (h *projectHooks) check(obj *api.Object) error {
	spec, err := specOf[api.ProjectSpec](obj)
	if err != nil {
		return err
	}
	if err := h.a.ValidateProject(obj.Metadata.Name, spec); err != nil {
		return invalid(err)
	}
	return nil
}

func (h *projectHooks) BeforeCreate(_ context.Context, obj *api.Object, _ bool) error {
	return h.check(obj)
}

func (h *projectHooks) BeforeUpdate(ctx context.Context, cur, obj *api.Object, _ bool) error {
	if err := h.check(obj); err != nil {
		return err
	}
	// What a project holds (its clusters, namespaces, quotas) is what every binding scoped to
	// it grants: while it has any, only an administrator may change more than its name.
	old, _ := specOf[api.ProjectSpec](cur)
	next, _ := specOf[api.ProjectSpec](obj)
	old.DisplayName, next.DisplayName = "", ""
	if reflect.DeepEqual(old, next) {
		return nil
	}
	if refs := h.a.ProjectInUse(obj.Metadata.Name); refs != "" && !isAdministrator(h.a, IdentityFrom(ctx)) {
		return forbidden(fmt.Sprintf("%s may not change project %q: it is in use by %s, and only an administrator may change what a project in use holds", userOf(IdentityFrom(ctx)), obj.Metadata.Name, refs))
	}
	return nil
}

func (h *projectHooks) BeforeDelete(_ context.Context, obj *api.Object) error {
	if refs := h.a.ProjectInUse(obj.Metadata.Name); refs != "" {
		return statusErr(http.StatusConflict, api.ReasonConflict, fmt.Sprintf("project %q is still used by %s: delete or change those first", obj.Metadata.Name, refs))
	}
	return nil
}

func (h *projectHooks) AfterCreate(_ context.Context, obj *api.Object) error { h.put(obj); return nil }
func (h *projectHooks) AfterUpdate(_ context.Context, obj *api.Object)       { h.put(obj) }
func (h *projectHooks) AfterDelete(_ context.Context, obj *api.Object) {
	h.a.DeleteProject(obj.Metadata.Name)
}

func (h *projectHooks) put(obj *api.Object) {
	if spec, err := specOf[api.ProjectSpec](obj); err == nil {
		h.a.PutProject(obj.Metadata.Name, spec)
	}
}

type userHooks struct {
	a     *rbac.Authorizer
	inner Hooks // may be nil
	st    store.Store
	log   *slog.Logger
}

func (h *userHooks) BeforeCreate(ctx context.Context, obj *api.Object, dry bool) error {
	if h.inner != nil {
		return h.inner.BeforeCreate(ctx, obj, dry)
	}
	return nil
}

func (h *userHooks) BeforeUpdate(ctx context.Context, cur, obj *api.Object, dry bool) error {
	old, _ := specOf[api.UserSpec](cur)
	next, err := specOf[api.UserSpec](obj)
	if err != nil {
		return err
	}
	if cmp.Or(old.Provider, api.ProviderLocal) != cmp.Or(next.Provider, api.ProviderLocal) {
		return statusErr(http.StatusUnprocessableEntity, api.ReasonInvalid, fmt.Sprintf("user %q belongs to provider %q: its provider cannot be changed", obj.Metadata.Name, cmp.Or(old.Provider, api.ProviderLocal)))
	}
	if next.Disabled && !dry {
		// Decisions refuse the user before the write, as the authenticator does; a dry run
		// changes nothing.
		h.a.SetUserDisabled(obj.Metadata.Name, true)
	}
	if h.inner != nil {
		return h.inner.BeforeUpdate(ctx, cur, obj, dry)
	}
	return nil
}

func (h *userHooks) AfterCreate(ctx context.Context, obj *api.Object) error {
	spec, _ := specOf[api.UserSpec](obj)
	h.a.SetUserDisabled(obj.Metadata.Name, spec.Disabled)
	if h.inner != nil {
		return h.inner.AfterCreate(ctx, obj)
	}
	return nil
}

func (h *userHooks) AfterUpdate(_ context.Context, obj *api.Object) {
	spec, _ := specOf[api.UserSpec](obj)
	h.a.SetUserDisabled(obj.Metadata.Name, spec.Disabled)
}

// BeforeDelete refuses a deletion that would delete a binding its author could not delete
// (AfterDelete deletes the user's bindings): the right to delete users is no way around
// the right to grant.
func (h *userHooks) BeforeDelete(ctx context.Context, obj *api.Object) error {
	id := IdentityFrom(ctx)
	if id != nil && id.Admin {
		return nil
	}
	for _, b := range h.a.BindingsOf(api.SubjectUser, obj.Metadata.Name) {
		o, err := h.st.Get(ctx, store.Key{Kind: api.KindRoleBinding, Name: b})
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		spec, err := specOf[api.RoleBindingSpec](o)
		if err != nil {
			return err
		}
		if id == nil || !h.a.MayGrant(subjectOf(id), spec.RoleRef, spec.Scope) {
			return forbidden(fmt.Sprintf("%s may not delete user %q: that deletes role binding %s, granting role %q, which only a holder of that role there, or an administrator, may", userOf(id), obj.Metadata.Name, b, spec.RoleRef))
		}
	}
	return nil
}

// AfterDelete ends the user's sessions and deletes the role bindings naming it, as Rancher
// does: a user made again later under that name starts with nothing, and every cluster
// loses what the user was granted there.
func (h *userHooks) AfterDelete(ctx context.Context, obj *api.Object) {
	if d, ok := h.inner.(DeleteHook); ok {
		d.AfterDelete(ctx, obj)
	}
	ctx = context.WithoutCancel(ctx)
	for _, b := range h.a.BindingsOf(api.SubjectUser, obj.Metadata.Name) {
		if _, err := h.st.Delete(ctx, store.Key{Kind: api.KindRoleBinding, Name: b}, ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			h.log.Error("deleting a role binding of a deleted user", "user", obj.Metadata.Name, "binding", b, "err", err)
			continue
		}
		h.a.DeleteBinding(b)
	}
}

// EnsureBuiltinRoles stores the built-in roles as shipped, so that they are listed and
// bindings can name them; a stored copy someone changed in the store is put back.
func EnsureBuiltinRoles(ctx context.Context, st store.Store) error {
	now := time.Now().UTC().Truncate(time.Second)
	for name, spec := range rbac.Builtin() {
		raw, err := json.Marshal(spec)
		if err != nil {
			return err
		}
		status, _ := json.Marshal(api.RoleStatus{Builtin: true})
		want := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRole},
			Metadata: api.ObjectMeta{Name: name, UID: NewUID(), CreationTimestamp: &now, Generation: 1}, Spec: raw, Status: status}
		cur, err := st.Get(ctx, store.Key{Kind: api.KindRole, Name: name})
		switch {
		case errors.Is(err, store.ErrNotFound):
			if _, err := st.Create(ctx, want); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
				return fmt.Errorf("storing built-in role %s: %w", name, err)
			}
		case err != nil:
			return fmt.Errorf("reading built-in role %s: %w", name, err)
		case !store.SameJSON(cur.Spec, raw) || !store.SameJSON(cur.Status, status):
			cur.Spec, cur.Status = raw, status
			cur.Metadata.Generation++
			if _, err := st.Update(ctx, cur); err != nil {
				return fmt.Errorf("restoring built-in role %s: %w", name, err)
			}
		}
	}
	return nil
}
