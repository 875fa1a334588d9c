package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"flotilla.dev/api"
)

// PasswordProvider checks a user name and password with an identity provider (the local user
// store, an LDAP directory). A wrong name or password is ErrUnauthenticated whatever the cause,
// so that the answer never says whether a user exists.
type PasswordProvider interface {
	// Name is the provider's name as logins give it: api.ProviderLocal, api.ProviderLDAP.
	Name() string
	Authenticate(ctx context.Context, username, password string) (Identity, error)
}

// DefaultSessionTTL is how long a login lasts unless the server is told otherwise.
const DefaultSessionTTL = 16 * time.Hour

// IssueSession stores a new token for an identity a provider vouched for (a login) and returns
// it, to be shown once to its holder. Its groups are kept with it, as the provider reported
// them at login.
func (a *Authenticator) IssueSession(ctx context.Context, id Identity, ttl time.Duration) (string, error) {
	if id.User == "" {
		return "", fmt.Errorf("issuing a session: no user")
	}
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	token := NewToken("fls_")
	hash := Hash(token)
	e := a.now().Add(ttl).UTC()
	spec := tokenSpec{Hash: hash, User: id.User, Groups: id.Groups, Admin: id.Admin, Expires: &e}
	raw, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	k := tokenKey(hash)
	now := a.now().UTC()
	if _, err := a.store.Create(ctx, &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kindToken},
		Metadata: api.ObjectMeta{Name: k.Name, Namespace: k.Namespace, CreationTimestamp: &now,
			Labels: map[string]string{"flotilla.dev/user": labelSafe(id.User)}},
		Spec: raw,
	}); err != nil {
		return "", fmt.Errorf("storing a session for %s: %w", id.User, err)
	}
	return token, nil
}

// RecordLogin is told of every successful login, before its session is issued: it keeps the
// User object of a provider's user (created at first login, groups and last login refreshed)
// and refuses a disabled user, or a name another provider owns, with ErrUnauthenticated.
//
// Not yet backed by the user store: it accepts every login.
func (a *Authenticator) RecordLogin(ctx context.Context, provider string, id Identity) error {
	return nil
}
