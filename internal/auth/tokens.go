package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/store"
)

// tokenIDLen is how many hex characters of a token's hash name it for admins: enough to be
// unique among a server's tokens, too few to be worth anything to an attacker (the hash is
// of a 192-bit random value in any case).
const tokenIDLen = 12

var tokenIDPattern = regexp.MustCompile(`^[0-9a-f]{` + fmt.Sprint(tokenIDLen) + `}$`)

// ErrTokenNotFound: no API token has the given ID.
var ErrTokenNotFound = errors.New("no such API token")

func tokenInfo(obj *api.Object) (api.APIToken, error) {
	var spec tokenSpec
	if err := json.Unmarshal(obj.Spec, &spec); err != nil || len(spec.Hash) < tokenIDLen {
		return api.APIToken{}, fmt.Errorf("API token %s is unreadable", obj.Metadata.Name)
	}
	return api.APIToken{ID: spec.Hash[:tokenIDLen], User: spec.User, Admin: spec.Admin, Session: spec.Session,
		Description: spec.Description, Created: obj.Metadata.CreationTimestamp, Expires: spec.Expires}, nil
}

// tokens returns the stored API token objects matching sel (nil: all).
func (a *Authenticator) tokens(ctx context.Context, sel labels.Selector) ([]*api.Object, error) {
	var out []*api.Object
	opts := store.ListOptions{Kind: kindToken, Namespace: SystemNamespace, Selector: sel, Limit: 1000}
	for {
		res, err := a.store.List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing API tokens: %w", err)
		}
		for _, raw := range res.Items {
			obj, err := store.Decode(raw)
			if err != nil {
				return nil, err
			}
			out = append(out, obj)
		}
		if res.Continue == "" {
			return out, nil
		}
		opts.Continue = res.Continue
	}
}

// userTokens returns the token objects of user. The label narrows the list; the stored user
// decides, since labels cannot hold every name exactly.
func (a *Authenticator) userTokens(ctx context.Context, user string) ([]*api.Object, error) {
	objs, err := a.tokens(ctx, labels.SelectorFromSet(labels.Set{userLabel: labelSafe(user)}))
	if err != nil {
		return nil, err
	}
	out := objs[:0]
	for _, obj := range objs {
		var spec tokenSpec
		if json.Unmarshal(obj.Spec, &spec) == nil && spec.User == user {
			out = append(out, obj)
		}
	}
	return out, nil
}

func sortedInfos(objs []*api.Object) ([]api.APIToken, error) {
	out := make([]api.APIToken, 0, len(objs))
	for _, obj := range objs {
		t, err := tokenInfo(obj)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(x, y api.APIToken) int {
		if x.Created != nil && y.Created != nil && !x.Created.Equal(*y.Created) {
			return x.Created.Compare(*y.Created)
		}
		return strings.Compare(x.ID, y.ID)
	})
	return out, nil
}

// ListTokens returns every API token, oldest first.
func (a *Authenticator) ListTokens(ctx context.Context) ([]api.APIToken, error) {
	objs, err := a.tokens(ctx, nil)
	if err != nil {
		return nil, err
	}
	return sortedInfos(objs)
}

// ListUserTokens returns user's API tokens, oldest first.
func (a *Authenticator) ListUserTokens(ctx context.Context, user string) ([]api.APIToken, error) {
	objs, err := a.userTokens(ctx, user)
	if err != nil {
		return nil, err
	}
	return sortedInfos(objs)
}

// RevokeToken deletes the API token with id. It stops working at once on this server, and on
// other replicas as soon as they see the deletion (FollowRevocations).
func (a *Authenticator) RevokeToken(ctx context.Context, id string) (api.APIToken, error) {
	return a.revokeToken(ctx, id, nil)
}

// revokeToken revokes the token with id; owner, when set, must own it (another's token is
// not found, so that IDs reveal nothing).
func (a *Authenticator) revokeToken(ctx context.Context, id string, owner *string) (api.APIToken, error) {
	if !tokenIDPattern.MatchString(id) {
		return api.APIToken{}, fmt.Errorf("%w: %q is not a token ID (%d hex characters, as `flotilla token list` shows)", ErrTokenNotFound, id, tokenIDLen)
	}
	var objs []*api.Object
	var err error
	if owner != nil {
		objs, err = a.userTokens(ctx, *owner)
	} else {
		objs, err = a.tokens(ctx, nil)
	}
	if err != nil {
		return api.APIToken{}, err
	}
	for _, obj := range objs {
		t, err := tokenInfo(obj)
		if err != nil || t.ID != id {
			continue
		}
		// Forget before and after: a request between the two may have cached it again.
		a.forget(id)
		if _, err := a.store.Delete(ctx, store.KeyOf(obj), ""); err != nil && !errors.Is(err, store.ErrNotFound) {
			return api.APIToken{}, fmt.Errorf("revoking API token %s: %w", id, err)
		}
		a.forget(id)
		return t, nil
	}
	return api.APIToken{}, fmt.Errorf("%w: %s", ErrTokenNotFound, id)
}

// CreateAPIToken makes an API token for the caller id, with a description and a TTL capped by
// the server's maximum (0: the maximum). Only admins get admin tokens. The value is in the
// answer, to be shown once.
func (a *Authenticator) CreateAPIToken(ctx context.Context, id *Identity, req api.CreateTokenRequest) (*api.CreatedToken, error) {
	maxTTL := a.login.maxTokenTTL
	ttl := maxTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: ttl %q is not a duration such as 720h", ErrBadTokenRequest, req.TTL)
		case d <= 0:
			return nil, fmt.Errorf("%w: ttl must be positive", ErrBadTokenRequest)
		case d > maxTTL:
			return nil, fmt.Errorf("%w: ttl %s exceeds the server's maximum of %s", ErrBadTokenRequest, d, maxTTL)
		}
		ttl = d
	}
	if err := checkDescription(req.Description); err != nil {
		return nil, err
	}
	if req.Admin && !a.login.isAdministrator(id) {
		return nil, fmt.Errorf("%w: only admins may create admin tokens", ErrForbidden)
	}
	bound, err := a.bound(ctx, id.User)
	if err != nil {
		return nil, err
	}
	token := NewToken("flt_")
	e := a.now().Add(ttl).UTC()
	spec := tokenSpec{Hash: Hash(token), User: id.User, Groups: id.Groups, Admin: req.Admin, Expires: &e,
		Description: req.Description, Bound: bound}
	if err := a.storeToken(ctx, spec); err != nil {
		return nil, fmt.Errorf("storing an API token for %s: %w", id.User, err)
	}
	now := a.now().UTC()
	return &api.CreatedToken{Token: token, APIToken: api.APIToken{ID: spec.Hash[:tokenIDLen], User: id.User, Admin: req.Admin,
		Description: req.Description, Created: &now, Expires: &e}}, nil
}

// ErrBadTokenRequest: a token request the server refuses as given.
var ErrBadTokenRequest = errors.New("invalid token request")

// maxDescription bounds a token's description.
const maxDescription = 200

func checkDescription(d string) error {
	switch {
	case len(d) > maxDescription:
		return fmt.Errorf("%w: description longer than %d bytes", ErrBadTokenRequest, maxDescription)
	case !utf8.ValidString(d) || strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("%w: description must be printable text", ErrBadTokenRequest)
	}
	return nil
}

// forget drops cached tokens whose hash starts with prefix (or whose stored name does).
func (a *Authenticator) forget(prefix string) {
	p := strings.TrimPrefix(prefix, "t-")
	if p == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for hash := range a.cache {
		if strings.HasPrefix(hash, p) {
			delete(a.cache, hash)
		}
	}
}

// FollowRevocations drops tokens deleted by other replicas (or straight in the store) from
// the cache until ctx ends. Whenever the watch starts again the whole cache is emptied, since a
// deletion may have been missed meanwhile. It also follows the User objects, so that a user
// disabled or deleted through another replica is refused here at once too.
//
// It also deletes expired tokens every sweepEvery: each login stores a session, and Authenticate
// refusing an expired one does not remove it. Every replica sweeps; deletions are idempotent.
func (a *Authenticator) FollowRevocations(ctx context.Context, log *slog.Logger) {
	go a.followUsers(ctx, log)
	go a.sweepLoop(ctx, log)
	for ctx.Err() == nil {
		ch, err := a.store.Watch(ctx, store.WatchOptions{Kind: kindToken, Namespace: SystemNamespace})
		a.mu.Lock()
		clear(a.cache)
		a.mu.Unlock()
		if err != nil {
			log.Warn("watching API tokens", "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		for ev := range ch {
			if ev.Type != api.Deleted {
				continue
			}
			if obj, err := store.Decode(ev.Object); err == nil {
				a.forget(obj.Metadata.Name)
			}
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	writeJSON(w, code, &api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg})
}

// followUsers feeds SetUserDisabled and ForgetUser from the store's User objects until ctx
// ends. Missed events are harmless: a token is checked against its User at least every cache
// TTL, and was deleted when its user was disabled.
func (a *Authenticator) followUsers(ctx context.Context, log *slog.Logger) {
	for ctx.Err() == nil {
		ch, err := a.store.Watch(ctx, store.WatchOptions{Kind: api.KindUser})
		if err != nil {
			log.Warn("watching users", "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		for ev := range ch {
			obj, err := store.Decode(ev.Object)
			if err != nil {
				continue
			}
			switch ev.Type {
			case api.Deleted:
				a.ForgetUser(obj.Metadata.Name)
			case api.Added, api.Modified:
				a.SetUserDisabled(obj.Metadata.Name, userDisabled(obj))
			}
		}
	}
}

// sweepEvery is how often expired tokens are deleted.
const sweepEvery = 10 * time.Minute

func (a *Authenticator) sweepLoop(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		if n, err := a.sweepExpired(ctx); err != nil && ctx.Err() == nil {
			log.Warn("deleting expired API tokens", "deleted", n, "err", err)
		} else if n > 0 {
			log.Info("deleted expired API tokens", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweepExpired deletes the tokens whose expiry has passed, a page at a time so that memory
// stays bounded however many there are, and returns how many it deleted.
func (a *Authenticator) sweepExpired(ctx context.Context) (int, error) {
	now := a.now()
	n := 0
	opts := store.ListOptions{Kind: kindToken, Namespace: SystemNamespace, Limit: 1000}
	for {
		res, err := a.store.List(ctx, opts)
		if err != nil {
			return n, fmt.Errorf("listing API tokens: %w", err)
		}
		for _, raw := range res.Items {
			obj, err := store.Decode(raw)
			if err != nil {
				return n, err
			}
			var spec tokenSpec
			if json.Unmarshal(obj.Spec, &spec) != nil || spec.Expires == nil || now.Before(*spec.Expires) {
				continue
			}
			// Only the version read is deleted: a token rewritten meanwhile is left for the
			// next sweep.
			if _, err := a.store.Delete(ctx, store.KeyOf(obj), obj.Metadata.ResourceVersion); err != nil &&
				!errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrConflict) {
				return n, fmt.Errorf("deleting expired API token %s: %w", obj.Metadata.Name, err)
			}
			a.forget(obj.Metadata.Name)
			n++
		}
		if res.Continue == "" {
			return n, nil
		}
		opts.Continue = res.Continue
	}
}
