package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth/users"
	"flotilla.dev/internal/store"
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

// DefaultMaxTokenTTL is the longest an API token made with POST api.PathTokens may last,
// unless the server is told otherwise; it is also the TTL of a token asked for without one.
const DefaultMaxTokenTTL = 90 * 24 * time.Hour

// LoginConfig configures logins and API tokens.
type LoginConfig struct {
	// Providers are the password providers other than the local users (LDAP, …), by the name
	// a login gives. The local provider is always there unless DisableLocal.
	Providers    []PasswordProvider
	DisableLocal bool
	// SessionTTL is how long a login's token lasts; 0 means DefaultSessionTTL.
	SessionTTL time.Duration
	// MaxTokenTTL caps an API token's TTL; 0 means DefaultMaxTokenTTL.
	MaxTokenTTL time.Duration
	// Limiter limits login attempts (and password changes) per user and per source; nil
	// means users.DefaultLimiterConfig.
	Limiter *users.Limiter
	// Hasher hashes local passwords; nil means users.DefaultParams, DefaultMaxConcurrent.
	Hasher *users.Hasher
	// IsAdmin decides who may manage other users' tokens and passwords; nil means the
	// identity's Admin flag (bootstrap tokens and admin tokens).
	IsAdmin func(*Identity) bool
	// IsAdministrator decides who may mint admin tokens and set other users' passwords (which
	// takes over their accounts and all they are granted); nil means the identity's Admin flag.
	IsAdministrator func(*Identity) bool
	Logger          *slog.Logger
}

// loginState is a LoginConfig with its defaults filled in.
type loginState struct {
	providers       map[string]PasswordProvider
	sessionTTL      time.Duration
	maxTokenTTL     time.Duration
	limiter         *users.Limiter
	hasher          *users.Hasher
	isAdmin         func(*Identity) bool
	isAdministrator func(*Identity) bool
	// afterCheck, in tests, runs between a local password's check and its session's storing.
	afterCheck func()
}

// ConfigureLogin sets how logins work; call it before serving. NewAuthenticator configures
// the local provider with the defaults.
func (a *Authenticator) ConfigureLogin(cfg LoginConfig) {
	s := loginState{providers: map[string]PasswordProvider{}, sessionTTL: cfg.SessionTTL, maxTokenTTL: cfg.MaxTokenTTL,
		limiter: cfg.Limiter, hasher: cfg.Hasher, isAdmin: cfg.IsAdmin, isAdministrator: cfg.IsAdministrator}
	if s.sessionTTL <= 0 {
		s.sessionTTL = DefaultSessionTTL
	}
	if s.maxTokenTTL <= 0 {
		s.maxTokenTTL = DefaultMaxTokenTTL
	}
	if s.limiter == nil {
		s.limiter = users.NewLimiter(users.DefaultLimiterConfig())
	}
	if s.hasher == nil {
		s.hasher = users.NewHasher(users.DefaultParams(), users.DefaultMaxConcurrent)
	}
	if s.isAdmin == nil {
		s.isAdmin = func(id *Identity) bool { return id.Admin }
	}
	if s.isAdministrator == nil {
		s.isAdministrator = func(id *Identity) bool { return id.Admin }
	}
	if cfg.Logger != nil {
		a.log = cfg.Logger
	}
	a.login = s
	if !cfg.DisableLocal {
		s.providers[api.ProviderLocal] = &localProvider{a: a}
	}
	for _, p := range cfg.Providers {
		s.providers[p.Name()] = p
	}
}

// localProvider checks the local users' passwords.
type localProvider struct{ a *Authenticator }

func (p *localProvider) Name() string { return api.ProviderLocal }

// Authenticate verifies a local user's password. An unknown user, a provider's user, one
// without a password and a disabled one cost a hash verification all the same and get the
// same error, so that neither the answer nor its timing tells them apart.
func (p *localProvider) Authenticate(ctx context.Context, username, password string) (Identity, error) {
	id, _, err := p.authenticate(ctx, username, password)
	return id, err
}

// authenticate is Authenticate, answering too the stored hash the password matched (after a
// rehash, the new one).
func (p *localProvider) authenticate(ctx context.Context, username, password string) (Identity, string, error) {
	a := p.a
	h := a.login.hasher
	u, found, err := a.getUser(ctx, username)
	if err != nil {
		return Identity{}, "", err
	}
	// The password is read whether or not the user exists, so that both cost the same reads.
	hash, err := a.passwordHash(ctx, username)
	if err != nil {
		return Identity{}, "", err
	}
	if !found || u.provider() != api.ProviderLocal {
		hash = ""
	}
	if hash == "" {
		h.VerifyNobody(ctx, password)
		return Identity{}, "", fmt.Errorf("%w: %s", ErrUnauthenticated, users.ErrInvalidCredentials)
	}
	ok, err := h.Verify(ctx, hash, password)
	if err != nil {
		return Identity{}, "", fmt.Errorf("checking the password of %s: %w", username, err)
	}
	if !ok || u.spec.Disabled {
		return Identity{}, "", fmt.Errorf("%w: %s", ErrUnauthenticated, users.ErrInvalidCredentials)
	}
	if h.NeedsRehash(hash) {
		if nh, err := h.Hash(ctx, password); err == nil {
			if err := a.storePasswordHash(ctx, username, nh); err != nil {
				a.log.Warn("rehashing a password with the current parameters", "user", username, "err", err)
			} else {
				hash = nh
			}
		}
	}
	return Identity{User: username}, hash, nil
}

// Login checks a user name and password with the named provider (local when empty) under the
// rate limits, records the login on the user and issues a session. Failures are
// ErrUnauthenticated (all alike), a *users.RateLimitError, or ErrUnknownProvider.
func (a *Authenticator) Login(ctx context.Context, req api.LoginRequest, source string) (*api.LoginResponse, error) {
	provider := req.Provider
	if provider == "" {
		provider = api.ProviderLocal
	}
	p, ok := a.login.providers[provider]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownProvider, provider)
	}
	// Keyed on the name as a directory compares it (case and surrounding spaces ignored), so
	// that each spelling of one user does not get its own guesses; distinct local users who
	// differ only so share a bucket, which is merely stricter.
	if err := a.login.limiter.Allow(provider+"/"+strings.ToLower(strings.TrimSpace(req.Username)), source); err != nil {
		return nil, err
	}
	var id Identity
	var checked string // the local password hash the login was checked against
	var err error
	if lp, ok := p.(*localProvider); ok {
		id, checked, err = lp.authenticate(ctx, req.Username, req.Password)
	} else {
		id, err = p.Authenticate(ctx, req.Username, req.Password)
	}
	if err != nil {
		return nil, err
	}
	if a.login.afterCheck != nil {
		a.login.afterCheck()
	}
	if err := a.RecordLogin(ctx, provider, id); err != nil {
		return nil, err
	}
	token, expires, err := a.issueSession(ctx, id, a.login.sessionTTL)
	if err != nil {
		return nil, err
	}
	if checked != "" {
		// A password set after the check ended the sessions it found, which may not have
		// included this one yet: a login with the old password must not outlive the change.
		if now, err := a.passwordHash(ctx, id.User); err != nil || now != checked {
			k := tokenKey(Hash(token))
			a.forget(k.Name)
			if _, derr := a.store.Delete(ctx, k, ""); derr != nil && !errors.Is(derr, store.ErrNotFound) {
				a.log.Error("undoing a session whose password changed during the login", "user", id.User, "err", derr)
			}
			a.forget(k.Name)
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %s", ErrUnauthenticated, users.ErrInvalidCredentials)
		}
	}
	return &api.LoginResponse{Token: token, Expires: expires, User: id.User, Groups: id.Groups}, nil
}

// ErrUnknownProvider: a login named no configured provider.
var ErrUnknownProvider = errors.New("no such identity provider")

// SetPassword sets a local user's password after checking it against the policy. Its caller
// has decided who may.
func (a *Authenticator) SetPassword(ctx context.Context, name, password string) error {
	u, found, err := a.getUser(ctx, name)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: user %s", ErrUserNotFound, name)
	}
	if u.provider() != api.ProviderLocal {
		return fmt.Errorf("%w: user %s logs in with provider %s, which keeps its password", ErrNotLocal, name, u.provider())
	}
	if err := users.CheckPassword(name, password); err != nil {
		return &PolicyError{err}
	}
	hash, err := a.login.hasher.Hash(ctx, password)
	if err != nil {
		return err
	}
	return a.storePasswordHash(ctx, name, hash)
}

// Errors of SetPassword.
var (
	ErrUserNotFound = errors.New("no such user")
	ErrNotLocal     = errors.New("not a local user")
)

// PolicyError is a password the policy refuses; its message states the rule.
type PolicyError struct{ Err error }

func (e *PolicyError) Error() string { return "password refused: " + e.Err.Error() }
func (e *PolicyError) Unwrap() error { return e.Err }

// bound reports whether user has a User object, so that a token made for it dies with it.
func (a *Authenticator) bound(ctx context.Context, user string) (bool, error) {
	_, found, err := a.getUser(ctx, user)
	return found, err
}

// IssueSession stores a new token for an identity a provider vouched for (a login) and returns
// it, to be shown once to its holder. Its groups are kept with it, as the provider reported
// them at login. Callers call RecordLogin first.
func (a *Authenticator) IssueSession(ctx context.Context, id Identity, ttl time.Duration) (string, error) {
	token, _, err := a.issueSession(ctx, id, ttl)
	return token, err
}

// OnSession sets a function told of every session issued (a login that succeeded), with the
// request's context: the server names the user in the login's audit record with it. Set it
// before serving.
func (a *Authenticator) OnSession(f func(ctx context.Context, id Identity)) { a.onSession = f }

// issueSession is IssueSession, returning the session's expiry too.
func (a *Authenticator) issueSession(ctx context.Context, id Identity, ttl time.Duration) (string, time.Time, error) {
	if id.User == "" {
		return "", time.Time{}, fmt.Errorf("issuing a session: no user")
	}
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	bound, err := a.bound(ctx, id.User)
	if err != nil {
		return "", time.Time{}, err
	}
	token := NewToken("fls_")
	e := a.now().Add(ttl).UTC()
	spec := tokenSpec{Hash: Hash(token), User: id.User, Groups: id.Groups, Admin: id.Admin, Expires: &e, Session: true, Bound: bound}
	if err := a.storeToken(ctx, spec); err != nil {
		return "", time.Time{}, fmt.Errorf("storing a session for %s: %w", id.User, err)
	}
	if a.onSession != nil {
		a.onSession(ctx, id)
	}
	return token, e, nil
}

// storeToken stores a token's record under its hash.
func (a *Authenticator) storeToken(ctx context.Context, spec tokenSpec) error {
	raw, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	k := tokenKey(spec.Hash)
	now := a.now().UTC()
	_, err = a.store.Create(ctx, &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kindToken},
		Metadata: api.ObjectMeta{Name: k.Name, Namespace: k.Namespace, CreationTimestamp: &now,
			Labels: map[string]string{userLabel: labelSafe(spec.User)}},
		Spec: raw,
	})
	return err
}

// userLabel marks a token with its user, so that a user's tokens are found without reading
// every token.
const userLabel = "flotilla.dev/user"
