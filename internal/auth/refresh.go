package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"flotilla.dev/internal/store"
)

// GroupSource reads a provider's user again without their password (LDAP as its service
// account). Lookup answers ErrUserNotFound for a user the provider no longer has.
type GroupSource interface {
	Name() string
	Lookup(ctx context.Context, user string) (Identity, error)
}

// RefreshGroups reads again, every every, the groups of src's users who hold a live token,
// until ctx ends. A provider user's tokens take their groups from the User object, so a user
// removed from a group loses the rights it gave within a refresh (and the token cache's TTL),
// not when their session ends; a user the provider no longer has loses every token.
func (a *Authenticator) RefreshGroups(ctx context.Context, src GroupSource, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		res, err := a.RefreshGroupsOnce(ctx, src)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("refreshing users' groups; the groups of users not read stay", "provider", src.Name(), "refreshed", res.Refreshed, "failed", res.Failed, "err", err)
		case res.Changed > 0 || res.Revoked > 0:
			log.Info("refreshed users' groups", "provider", src.Name(), "refreshed", res.Refreshed, "changed", res.Changed, "revoked", res.Revoked)
		}
	}
}

// RefreshResult counts what a round of refreshing did: users whose groups were read, of
// those whose groups changed, users gone from the provider whose tokens were revoked, and
// users who could not be read (their groups stay as they were).
type RefreshResult struct{ Refreshed, Changed, Revoked, Failed int }

// maxFailuresInARow ends a round: a directory that cannot be reached would otherwise cost
// each remaining user a timeout.
const maxFailuresInARow = 3

// RefreshGroupsOnce is one round of RefreshGroups. A user who cannot be read keeps their groups
// and the round goes on (one user in too many groups stops nobody else's refresh), but
// maxFailuresInARow failures end it. Users gone from the provider lose their tokens only when
// they are a minority of those read: when most are "gone" at once, the service account more
// likely lost its right to read them, and revoking everyone would lock the fleet out.
func (a *Authenticator) RefreshGroupsOnce(ctx context.Context, src GroupSource) (RefreshResult, error) {
	var res RefreshResult
	holders, err := a.tokenHolders(ctx)
	if err != nil {
		return res, err
	}
	var gone []string
	var firstErr error
	inARow := 0
	fail := func(user string, err error) {
		res.Failed++
		inARow++
		if firstErr == nil {
			firstErr = fmt.Errorf("user %s: %w", user, err)
		}
	}
	for _, user := range holders {
		if inARow >= maxFailuresInARow || ctx.Err() != nil {
			break
		}
		u, found, err := a.getUser(ctx, user)
		if err != nil {
			fail(user, err)
			continue
		}
		if !found || u.provider() != src.Name() || u.spec.Disabled {
			continue
		}
		id, err := src.Lookup(ctx, user)
		if errors.Is(err, ErrUserNotFound) {
			inARow = 0
			gone = append(gone, user)
			continue
		}
		if err != nil {
			fail(user, err)
			continue
		}
		inARow = 0
		changed, err := a.setGroups(ctx, user, src.Name(), id.Groups)
		if err != nil {
			fail(user, err)
			continue
		}
		res.Refreshed++
		if changed {
			res.Changed++
		}
	}
	if len(gone) > 1 && len(gone) >= res.Refreshed {
		return res, errors.Join(firstErr, fmt.Errorf("%d users not found against %d read: not revoking anyone (can the service account still read the directory?)", len(gone), res.Refreshed))
	}
	for _, user := range gone {
		n, err := a.RevokeUser(ctx, user)
		if err != nil {
			fail(user, err)
			continue
		}
		res.Revoked++
		a.log.Warn("a user is no longer in the identity provider; their tokens are revoked", "provider", src.Name(), "user", user, "tokens", n)
	}
	return res, firstErr
}

// tokenHolders returns the users holding a live token bound to their User, each once, in order.
func (a *Authenticator) tokenHolders(ctx context.Context) ([]string, error) {
	now := a.now()
	seen := map[string]bool{}
	opts := store.ListOptions{Kind: kindToken, Namespace: SystemNamespace, Limit: 1000}
	for {
		page, err := a.store.List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing API tokens: %w", err)
		}
		for _, raw := range page.Items {
			var obj struct {
				Spec tokenSpec `json:"spec"`
			}
			if json.Unmarshal(raw, &obj) != nil || !obj.Spec.Bound || (obj.Spec.Expires != nil && now.After(*obj.Spec.Expires)) {
				continue
			}
			seen[obj.Spec.User] = true
		}
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}
	out := make([]string, 0, len(seen))
	for u := range seen {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, nil
}

// setGroups stores a provider user's groups as just read, and when they changed drops the
// user's cached tokens so that the new groups apply at once on this replica.
func (a *Authenticator) setGroups(ctx context.Context, user, provider string, groups []string) (changed bool, err error) {
	for range 5 {
		u, found, err := a.getUser(ctx, user)
		if err != nil || !found || u.provider() != provider {
			return false, err
		}
		changed = !slices.Equal(sortedCopy(u.spec.Groups), sortedCopy(groups))
		now := a.now().UTC()
		u.spec.Groups = groups
		u.status.GroupsRefreshed = &now
		u.obj.Spec, _ = json.Marshal(u.spec)
		u.obj.Status, _ = json.Marshal(u.status)
		_, err = a.store.Update(ctx, u.obj)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("storing the groups of %s: %w", user, err)
		}
		if changed {
			a.forgetUser(user)
		}
		return changed, nil
	}
	return false, fmt.Errorf("storing the groups of %s: too many concurrent changes", user)
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// forgetUser drops user's cached tokens.
func (a *Authenticator) forgetUser(user string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for hash, c := range a.cache {
		if c.id.User == user {
			delete(a.cache, hash)
		}
	}
}
