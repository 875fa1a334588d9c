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
	return api.APIToken{ID: spec.Hash[:tokenIDLen], User: spec.User, Admin: spec.Admin,
		Created: obj.Metadata.CreationTimestamp, Expires: spec.Expires}, nil
}

// tokens returns every stored API token object.
func (a *Authenticator) tokens(ctx context.Context) ([]*api.Object, error) {
	var out []*api.Object
	opts := store.ListOptions{Kind: kindToken, Namespace: SystemNamespace, Limit: 1000}
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

// ListTokens returns every API token, oldest first.
func (a *Authenticator) ListTokens(ctx context.Context) ([]api.APIToken, error) {
	objs, err := a.tokens(ctx)
	if err != nil {
		return nil, err
	}
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

// RevokeToken deletes the API token with id. It stops working at once on this server, and on
// other replicas as soon as they see the deletion (FollowRevocations).
func (a *Authenticator) RevokeToken(ctx context.Context, id string) (api.APIToken, error) {
	if !tokenIDPattern.MatchString(id) {
		return api.APIToken{}, fmt.Errorf("%w: %q is not a token ID (%d hex characters, as `flotilla token list` shows)", ErrTokenNotFound, id, tokenIDLen)
	}
	objs, err := a.tokens(ctx)
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
// deletion may have been missed meanwhile.
func (a *Authenticator) FollowRevocations(ctx context.Context, log *slog.Logger) {
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

// RegisterHandlers adds the admin API for tokens to mux: GET api.PathTokens lists them,
// DELETE api.PathTokens/ID revokes one.
func (a *Authenticator) RegisterHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathTokens, a.admin(func(w http.ResponseWriter, r *http.Request) {
		tokens, err := a.ListTokens(r.Context())
		if err != nil {
			writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "listing API tokens failed")
			return
		}
		writeJSON(w, http.StatusOK, api.APITokenList{Items: tokens})
	}))
	mux.HandleFunc("DELETE "+api.PathTokens+"/{id}", a.admin(func(w http.ResponseWriter, r *http.Request) {
		t, err := a.RevokeToken(r.Context(), r.PathValue("id"))
		switch {
		case errors.Is(err, ErrTokenNotFound):
			writeStatus(w, http.StatusNotFound, api.ReasonNotFound, err.Error())
		case err != nil:
			writeStatus(w, http.StatusInternalServerError, api.ReasonInternal, "revoking the API token failed")
		default:
			writeJSON(w, http.StatusOK, t)
		}
	}))
}

func (a *Authenticator) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := a.Authenticate(r.Context(), BearerToken(r))
		if err != nil {
			if errors.Is(err, ErrUnauthenticated) {
				writeStatus(w, http.StatusUnauthorized, api.ReasonUnauthorized, err.Error())
			} else {
				writeStatus(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "cannot check the token now; try again")
			}
			return
		}
		if !id.Admin {
			writeStatus(w, http.StatusForbidden, api.ReasonForbidden, fmt.Sprintf("%s: %s is not an admin", ErrForbidden, id.User))
			return
		}
		h(w, r)
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
