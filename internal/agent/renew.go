package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// Cluster credentials expire. The agent renews its credential after two thirds of its life,
// or as soon as the server asks (api.HeaderRenewCredential: the server rotated its key, the
// credential is of an old format, or it expired while the agent was away, which the server
// still renews for a grace period). The new credential is stored before it is used, so a
// restart in between keeps the old one, which stays valid.

// setCurrent records the credentials in use, and when to renew them.
func (a *agent) setCurrent(c *credentials) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cur = c
}

// renewDue reports whether the credential should be renewed now.
func (a *agent) renewDue() bool {
	if a.client.RenewRequested() {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur != nil && a.cur.RenewAfter != nil && !a.now().Before(*a.cur.RenewAfter)
}

// renewLoop renews the credential when due until ctx ends, or until the server refuses it
// for good: then it returns the error Run stops with.
func (a *agent) renewLoop(ctx context.Context) error {
	every := min(a.cfg.PollInterval, time.Minute)
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	for {
		if a.renewDue() {
			err := a.renew(ctx)
			switch {
			case err == nil:
				bo.reset()
				if !sleep(ctx, every) {
					return nil
				}
				continue
			case ctx.Err() != nil:
				return nil
			}
			if f := renewFatal(err); f != nil {
				return f
			}
			wait := bo.next()
			a.log.Warn("renewing the cluster credential failed; retrying", "err", err, "in", wait.Round(time.Millisecond))
			if !sleep(ctx, wait) {
				return nil
			}
			continue
		}
		if !sleep(ctx, every) {
			return nil
		}
	}
}

// renew exchanges the credential for a fresh one and stores it.
func (a *agent) renew(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	resp, err := a.client.RenewCredential(rctx)
	cancel()
	if err != nil {
		return err
	}
	if resp.Credential == "" {
		return fmt.Errorf("the server renewed the credential with an empty one")
	}
	a.mu.Lock()
	next := *a.cur
	a.mu.Unlock()
	next.Credential = resp.Credential
	next.setExpiry(resp.Expires, a.now())
	if err := a.creds.save(ctx, &next); err != nil {
		return fmt.Errorf("storing the renewed credential: %w", err)
	}
	a.setCurrent(&next)
	a.client.SetToken(next.Credential)
	a.log.Info("renewed the cluster credential", "expires", resp.Expires)
	return nil
}

// renewFatal returns the error Run stops with when the server refuses to renew the
// credential for good, and nil when renewing is worth trying again.
func renewFatal(err error) error {
	switch client.Code(err) {
	case http.StatusUnauthorized:
		if client.Reason(err) == api.ReasonClusterDeleted {
			return ErrClusterDeleted
		}
		return fmt.Errorf("%w: renewing the cluster credential: %v", ErrUnauthorized, err)
	case http.StatusForbidden:
		return fmt.Errorf("%w: renewing the cluster credential: %v", ErrUnauthorized, err)
	}
	return nil
}

// setExpiry records a credential's expiry and when to renew it: after two thirds of the
// time it has left.
func (c *credentials) setExpiry(expires *time.Time, now time.Time) {
	c.Expires, c.RenewAfter = nil, nil
	if expires == nil {
		return
	}
	e := expires.UTC()
	r := now.Add(e.Sub(now) * 2 / 3).UTC()
	c.Expires, c.RenewAfter = &e, &r
}
