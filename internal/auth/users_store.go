package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"flotilla.dev/api"
	"flotilla.dev/internal/resource"
	"flotilla.dev/internal/store"
)

// kindPassword is the internal kind of a local user's password hash. It lives in
// SystemNamespace under the user's name, apart from the User object the API serves, and never
// leaves the server.
const kindPassword = "UserPassword"

// passwordSpec is what is stored for a password: its argon2id hash in PHC form.
type passwordSpec struct {
	Hash string `json:"hash"`
}

// userRecord is a User object with its spec and status decoded.
type userRecord struct {
	obj    *api.Object
	spec   api.UserSpec
	status api.UserStatus
}

func (u *userRecord) provider() string {
	if u.spec.Provider == "" {
		return api.ProviderLocal
	}
	return u.spec.Provider
}

func userKey(name string) store.Key { return store.Key{Kind: api.KindUser, Name: name} }

func passwordKey(name string) store.Key {
	return store.Key{Kind: kindPassword, Namespace: SystemNamespace, Name: name}
}

// validUserName reports whether name can name a User object. Names come from requests and
// identity providers, so they are checked before they reach the store.
func validUserName(name string) bool {
	return resource.UserNameProblem(name) == ""
}

// getUser reads a User object; found is false when there is none.
func (a *Authenticator) getUser(ctx context.Context, name string) (u *userRecord, found bool, err error) {
	if !validUserName(name) {
		return nil, false, nil
	}
	obj, err := a.store.Get(ctx, userKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading user %s: %w", name, err)
	}
	u = &userRecord{obj: obj}
	if len(obj.Spec) > 0 {
		if err := json.Unmarshal(obj.Spec, &u.spec); err != nil {
			return nil, false, fmt.Errorf("reading user %s: %w", name, err)
		}
	}
	if len(obj.Status) > 0 {
		if err := json.Unmarshal(obj.Status, &u.status); err != nil {
			return nil, false, fmt.Errorf("reading user %s: %w", name, err)
		}
	}
	return u, true, nil
}

// passwordHash returns a local user's stored hash, or "" when none was set.
func (a *Authenticator) passwordHash(ctx context.Context, name string) (string, error) {
	obj, err := a.store.Get(ctx, passwordKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the password of %s: %w", name, err)
	}
	var spec passwordSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return "", fmt.Errorf("reading the password of %s: %w", name, err)
	}
	return spec.Hash, nil
}

// storePasswordHash creates or replaces a local user's password hash.
func (a *Authenticator) storePasswordHash(ctx context.Context, name, hash string) error {
	raw, err := json.Marshal(passwordSpec{Hash: hash})
	if err != nil {
		return err
	}
	k := passwordKey(name)
	for range 5 {
		old, err := a.store.Get(ctx, k)
		switch {
		case errors.Is(err, store.ErrNotFound):
			now := a.now().UTC()
			_, err = a.store.Create(ctx, &api.Object{
				TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kindPassword},
				Metadata: api.ObjectMeta{Name: k.Name, Namespace: k.Namespace, CreationTimestamp: &now},
				Spec:     raw,
			})
		case err == nil:
			old.Spec = raw
			_, err = a.store.Update(ctx, old)
		}
		if errors.Is(err, store.ErrAlreadyExists) || errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("storing the password of %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("storing the password of %s: too many concurrent changes", name)
}

// RecordLogin is told of every successful login, before its session is issued. A local user
// must exist, be local and be enabled. A provider's user gets a User object at first login
// (spec.provider and spec.groups as reported, status.lastLogin and groupsRefreshed), refreshed
// at later ones. A disabled user, or a name another provider owns, is refused with
// ErrUnauthenticated.
func (a *Authenticator) RecordLogin(ctx context.Context, provider string, id Identity) error {
	if provider == "" {
		provider = api.ProviderLocal
	}
	if !validUserName(id.User) {
		return fmt.Errorf("%w: %q cannot be a Flotilla user name (lower-case letters, digits, '-' and '.')", ErrUnauthenticated, id.User)
	}
	for range 5 {
		u, found, err := a.getUser(ctx, id.User)
		if err != nil {
			return err
		}
		if provider == api.ProviderLocal {
			if !found || u.provider() != api.ProviderLocal || u.spec.Disabled {
				return fmt.Errorf("%w: no enabled local user %s", ErrUnauthenticated, id.User)
			}
			return nil
		}
		now := a.now().UTC()
		if !found {
			spec, _ := json.Marshal(api.UserSpec{Provider: provider, Groups: id.Groups})
			status, _ := json.Marshal(api.UserStatus{LastLogin: &now, GroupsRefreshed: &now})
			_, err = a.store.Create(ctx, &api.Object{
				TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser},
				Metadata: api.ObjectMeta{Name: id.User, CreationTimestamp: &now},
				Spec:     spec, Status: status,
			})
			if err == nil {
				// A deleted user of that name may have left its mark; this is a new user.
				a.SetUserDisabled(id.User, false)
			}
		} else {
			if u.provider() != provider {
				return fmt.Errorf("%w: user %s belongs to provider %s, not %s", ErrUnauthenticated, id.User, u.provider(), provider)
			}
			if u.spec.Disabled {
				return fmt.Errorf("%w: user %s is disabled", ErrUnauthenticated, id.User)
			}
			u.spec.Groups = id.Groups
			u.status.LastLogin, u.status.GroupsRefreshed = &now, &now
			u.obj.Spec, _ = json.Marshal(u.spec)
			u.obj.Status, _ = json.Marshal(u.status)
			_, err = a.store.Update(ctx, u.obj)
		}
		if errors.Is(err, store.ErrAlreadyExists) || errors.Is(err, store.ErrConflict) {
			continue // changed meanwhile: decide again on what is stored now
		}
		if err != nil {
			return fmt.Errorf("recording the login of %s: %w", id.User, err)
		}
		return nil
	}
	return fmt.Errorf("recording the login of %s: too many concurrent changes", id.User)
}

// SetUserDisabled tells the Authenticator that user was disabled (or enabled again, or
// created): while disabled, Authenticate refuses every token of the user at once, cached or
// not (but for tokens made while it had no User object, such as the bootstrap admin token). Disabling also needs RevokeUser, so that the tokens are gone for every replica and
// after a restart.
func (a *Authenticator) SetUserDisabled(user string, disabled bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if disabled {
		a.blocked[user] = struct{}{}
	} else {
		delete(a.blocked, user)
	}
}

// ForgetUser tells the Authenticator that user was deleted: its tokens are refused at once,
// until a user of that name is created again (SetUserDisabled(user, false)). Deleting also
// needs RevokeUser.
func (a *Authenticator) ForgetUser(user string) { a.SetUserDisabled(user, true) }

// RevokeUser deletes every token user holds (sessions and API tokens) and drops them from the
// cache, returning how many were deleted. Tokens made while the user had no User object (the
// bootstrap admin token) are not the User's and stay.
func (a *Authenticator) RevokeUser(ctx context.Context, user string) (int, error) {
	objs, err := a.userTokens(ctx, user)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, obj := range objs {
		var spec tokenSpec
		if json.Unmarshal(obj.Spec, &spec) != nil || !spec.Bound {
			continue
		}
		a.forget(obj.Metadata.Name)
		if _, err := a.store.Delete(ctx, store.KeyOf(obj), ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			return n, fmt.Errorf("revoking the tokens of %s: %w", user, err)
		}
		a.forget(obj.Metadata.Name)
		n++
	}
	return n, nil
}

// EndSessions deletes user's login sessions except the one whose hash is keep (empty: none
// kept) and drops them from the cache, returning how many ended. A new password must shut out
// whoever learned the old one and logged in with it; the user's API tokens stay, since they
// were made deliberately and are revoked one by one.
func (a *Authenticator) EndSessions(ctx context.Context, user, keep string) (int, error) {
	objs, err := a.userTokens(ctx, user)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, obj := range objs {
		var spec tokenSpec
		if json.Unmarshal(obj.Spec, &spec) != nil || !spec.Session || (keep != "" && spec.Hash == keep) {
			continue
		}
		a.forget(obj.Metadata.Name)
		if _, err := a.store.Delete(ctx, store.KeyOf(obj), ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			return n, fmt.Errorf("ending the sessions of %s: %w", user, err)
		}
		a.forget(obj.Metadata.Name)
		n++
	}
	return n, nil
}

// userBlocked is Authenticate's check of a token's user beyond the token itself.
func (a *Authenticator) userBlocked(user string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.blocked[user]
	return ok
}

// UserHooks returns the hooks for the API's User kind: they keep Authenticate and the stored
// tokens in step with users being disabled, enabled, created and deleted. Its methods have
// the shapes of the API server's Hooks and DeleteHook.
func (a *Authenticator) UserHooks() *UserHooks { return &UserHooks{a: a} }

// UserHooks: see Authenticator.UserHooks.
type UserHooks struct{ a *Authenticator }

func userDisabled(obj *api.Object) bool {
	var spec api.UserSpec
	_ = json.Unmarshal(obj.Spec, &spec)
	return spec.Disabled
}

// BeforeCreate refuses at once the tokens of a user created disabled (a deleted user's
// were revoked then).
func (h *UserHooks) BeforeCreate(ctx context.Context, obj *api.Object, dryRun bool) error {
	if !dryRun && userDisabled(obj) {
		h.a.SetUserDisabled(obj.Metadata.Name, true)
	}
	return nil
}

// AfterCreate lets in a new enabled user whose name a deleted one had; only once the object
// is stored, so that a refused create of an existing disabled user lets no one in.
func (h *UserHooks) AfterCreate(ctx context.Context, obj *api.Object) error {
	if !userDisabled(obj) {
		h.a.SetUserDisabled(obj.Metadata.Name, false)
	}
	return nil
}

// BeforeUpdate stops a user being disabled at once (before the write, so that no request gets
// through meanwhile) and revokes all its tokens; it lets an enabled user in again.
func (h *UserHooks) BeforeUpdate(ctx context.Context, old, obj *api.Object, dryRun bool) error {
	if dryRun {
		return nil
	}
	name := obj.Metadata.Name
	if !userDisabled(obj) {
		h.a.SetUserDisabled(name, false)
		return nil
	}
	h.a.SetUserDisabled(name, true)
	if _, err := h.a.RevokeUser(ctx, name); err != nil {
		return fmt.Errorf("disabling user %s: %w", name, err)
	}
	return nil
}

// AfterDelete refuses a deleted user's tokens at once, revokes them and deletes its password.
func (h *UserHooks) AfterDelete(ctx context.Context, obj *api.Object) {
	name := obj.Metadata.Name
	h.a.ForgetUser(name)
	if _, err := h.a.RevokeUser(ctx, name); err != nil {
		h.a.log.Warn("revoking the tokens of a deleted user", "user", name, "err", err)
	}
	if _, err := h.a.store.Delete(ctx, passwordKey(name), ""); err != nil && !errors.Is(err, store.ErrNotFound) {
		h.a.log.Warn("deleting the password of a deleted user", "user", name, "err", err)
	}
}
