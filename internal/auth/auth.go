// Package auth owns who may call the API: bearer tokens (stored only as hashes), the first
// admin token, and the identity a request carries. Authorisation decisions for users and
// clusters are made here too, so every handler asks one place.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// SystemNamespace holds Flotilla's own records (tokens, credentials); the API does not
// serve it.
const SystemNamespace = "flotilla-system"

// kindToken is the internal kind of a stored API token; it never leaves the server.
const kindToken = "APIToken"

// Identity is who made a request.
type Identity struct {
	User   string
	Groups []string
	Admin  bool
}

// tokenSpec is what is stored for a token: never the token itself.
type tokenSpec struct {
	Hash    string     `json:"hash"`
	User    string     `json:"user"`
	Groups  []string   `json:"groups,omitempty"`
	Admin   bool       `json:"admin,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
	// Session marks a login's token; Description is what its owner said a token is for.
	Session     bool   `json:"session,omitempty"`
	Description string `json:"description,omitempty"`
	// Bound: the user had a User object when the token was made, and the token works only
	// while that object exists and is enabled. Bootstrap admin tokens have no User object.
	Bound bool `json:"bound,omitempty"`
}

// Errors for callers to map to HTTP statuses.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
)

// Authenticator checks bearer tokens against their stored hashes, with a short cache so
// that a busy client costs no store read per request.
type Authenticator struct {
	store store.Store
	ttl   time.Duration
	now   func() time.Time

	log   *slog.Logger
	login loginState

	mu    sync.Mutex
	cache map[string]cached
	// blocked users are refused whatever their tokens: disabled or deleted users, as the API
	// reports them (SetUserDisabled, ForgetUser), so that no cached entry outlives them.
	blocked map[string]struct{}
	// onSession is told of every session issued; see OnSession.
	onSession func(ctx context.Context, id Identity)
}

type cached struct {
	id *Identity
	// bound: the token dies with its user (tokenSpec.Bound).
	bound bool
	// expires is when the entry must be checked again: the cache TTL, or the token's own
	// expiry if sooner.
	expires time.Time
}

// NewAuthenticator returns an Authenticator over st.
func NewAuthenticator(st store.Store) *Authenticator {
	a := &Authenticator{store: st, ttl: 10 * time.Second, now: time.Now, log: slog.Default(),
		cache: map[string]cached{}, blocked: map[string]struct{}{}}
	a.ConfigureLogin(LoginConfig{})
	return a
}

// Hash returns the stored form of a token.
func Hash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// NewToken returns a fresh random token with the given prefix.
func NewToken(prefix string) string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return prefix + hex.EncodeToString(b)
}

func tokenKey(hash string) store.Key {
	return store.Key{Kind: kindToken, Namespace: SystemNamespace, Name: "t-" + hash[:40]}
}

// CreateToken stores a token for user. The token is the caller's to show once.
func (a *Authenticator) CreateToken(ctx context.Context, token, user string, admin bool, ttl time.Duration) error {
	spec := tokenSpec{Hash: Hash(token), User: user, Admin: admin}
	if ttl > 0 {
		e := a.now().Add(ttl).UTC()
		spec.Expires = &e
	}
	err := a.storeToken(ctx, spec)
	if errors.Is(err, store.ErrAlreadyExists) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storing token for %s: %w", user, err)
	}
	return nil
}

func labelSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "-_.")
}

// Bootstrap makes sure an admin can log in. With a given token, that token becomes an admin
// token (idempotently). Without one, if no admin token exists yet, a new one is made and
// returned so the caller can print it once; otherwise it returns "".
func (a *Authenticator) Bootstrap(ctx context.Context, given string) (generated string, err error) {
	if given != "" {
		return "", a.bootstrapGiven(ctx, given)
	}
	res, err := a.store.List(ctx, store.ListOptions{Kind: kindToken, Namespace: SystemNamespace, Limit: 1})
	if err != nil {
		return "", fmt.Errorf("looking for admin tokens: %w", err)
	}
	if len(res.Items) > 0 {
		return "", nil
	}
	t := NewToken("flt_")
	if err := a.CreateToken(ctx, t, "admin", true, 0); err != nil {
		return "", err
	}
	return t, nil
}

// kindBootstrapUse records that a given bootstrap token was accepted once, so that revoking
// it lasts: the server is usually restarted with the same file or environment.
const kindBootstrapUse = "BootstrapTokenUse"

// ErrBootstrapRevoked: the bootstrap token given at start was accepted before and has since
// been revoked; it is not accepted again.
var ErrBootstrapRevoked = errors.New("the bootstrap token was revoked and is not accepted again: remove it from --bootstrap-token-file / FLOTILLA_BOOTSTRAP_TOKEN, or give a new one")

func (a *Authenticator) bootstrapGiven(ctx context.Context, given string) error {
	hash := Hash(given)
	mark := store.Key{Kind: kindBootstrapUse, Namespace: SystemNamespace, Name: "b-" + hash[:40]}
	_, err := a.store.Get(ctx, mark)
	switch {
	case err == nil:
		if _, err := a.store.Get(ctx, tokenKey(hash)); errors.Is(err, store.ErrNotFound) {
			return ErrBootstrapRevoked
		} else if err != nil {
			return fmt.Errorf("looking up the bootstrap token: %w", err)
		}
		return nil
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("looking up the bootstrap token: %w", err)
	}
	if err := a.CreateToken(ctx, given, "admin", true, 0); err != nil {
		return err
	}
	now := a.now().UTC()
	_, err = a.store.Create(ctx, &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: kindBootstrapUse},
		Metadata: api.ObjectMeta{Name: mark.Name, Namespace: mark.Namespace, CreationTimestamp: &now},
		Spec:     json.RawMessage(`{}`),
	})
	if err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		return fmt.Errorf("recording the bootstrap token: %w", err)
	}
	return nil
}

// BearerToken returns the request's bearer token, or "".
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// Authenticate returns the identity behind a request's bearer token.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (*Identity, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	hash := Hash(token)
	now := a.now()
	a.mu.Lock()
	c, ok := a.cache[hash]
	if ok && c.bound {
		if _, blocked := a.blocked[c.id.User]; blocked {
			a.mu.Unlock()
			return nil, fmt.Errorf("%w: user %s is disabled or deleted", ErrUnauthenticated, c.id.User)
		}
	}
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.id, nil
	}
	obj, err := a.store.Get(ctx, tokenKey(hash))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: invalid token", ErrUnauthenticated)
	}
	if err != nil {
		return nil, fmt.Errorf("checking token: %w", err)
	}
	var spec tokenSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil {
		return nil, fmt.Errorf("reading token: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(spec.Hash), []byte(hash)) != 1 {
		return nil, fmt.Errorf("%w: invalid token", ErrUnauthenticated)
	}
	if spec.Expires != nil && now.After(*spec.Expires) {
		return nil, fmt.Errorf("%w: token expired", ErrUnauthenticated)
	}
	if spec.Bound {
		if a.userBlocked(spec.User) {
			return nil, fmt.Errorf("%w: user %s is disabled or deleted", ErrUnauthenticated, spec.User)
		}
		u, found, err := a.getUser(ctx, spec.User)
		if err != nil {
			return nil, fmt.Errorf("checking token: %w", err)
		}
		if !found || u.spec.Disabled {
			return nil, fmt.Errorf("%w: user %s is disabled or deleted", ErrUnauthenticated, spec.User)
		}
		if u.provider() != api.ProviderLocal {
			// A provider's groups as last refreshed, not as they were when the token was made.
			spec.Groups = u.spec.Groups
		}
	}
	id := &Identity{User: spec.User, Groups: spec.Groups, Admin: spec.Admin}
	a.mu.Lock()
	if _, blocked := a.blocked[spec.User]; blocked && spec.Bound {
		// Disabled while the token was being checked.
		a.mu.Unlock()
		return nil, fmt.Errorf("%w: user %s is disabled or deleted", ErrUnauthenticated, spec.User)
	}
	if len(a.cache) > 100000 {
		a.cache = map[string]cached{}
	}
	until := now.Add(a.ttl)
	if spec.Expires != nil && spec.Expires.Before(until) {
		until = *spec.Expires
	}
	a.cache[hash] = cached{id: id, bound: spec.Bound, expires: until}
	a.mu.Unlock()
	return id, nil
}

// Authorize decides whether id may do verb on kind in namespace. Admins may do anything;
// other identities get nothing until roles exist.
func Authorize(id *Identity, verb, kind, namespace string) error {
	if id != nil && id.Admin {
		return nil
	}
	return fmt.Errorf("%w: %s may not %s %s in %s", ErrForbidden, userOf(id), verb, kind, namespace)
}

func userOf(id *Identity) string {
	if id == nil {
		return "anonymous"
	}
	return id.User
}
