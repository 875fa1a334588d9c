package agent

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// maxPollAfter bounds how long a server may send the agent away for; maxBellPollAfter the
// same while the doorbell answers (its pings then check the desired version).
const (
	maxPollAfter     = time.Hour
	maxBellPollAfter = 24 * time.Hour
)

// closeIdleAfter: when the next poll is further away than this, the agent closes its idle
// connections instead of keeping them until then.
const closeIdleAfter = time.Minute

// pollLoop asks the server for the desired state, as often as the server says, and hands
// every new state to the reconciler once its content is in the cache. While the server is
// unreachable it backs off; the reconciler keeps working from the last state meanwhile.
//
// Polls are long polls: the server holds one open until the desired state changes, for up
// to the time the agent would have waited before its next poll anyway (the server's
// poll-after, counted from its answer, at most PollWait). The agent holds a poll at all
// times: the next poll starts as soon as an answer arrives, and is held for the poll-after
// that answer gave, so a change reaches the agent at once while the server's poll-after
// still sets the rate of requests. The agent waits between polls only when told to come
// back later than PollWait (it then waits the difference and holds the rest), or when the
// server answered "unchanged" without holding the poll (it may be holding too many): then
// it comes back when told. The first poll, and the first after an outage, is not held, so
// that reaching the server again is noticed (and queued status sent) at once.
func (a *agent) pollLoop(ctx context.Context) error {
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	var since int64
	if ds := a.currentDesired(); ds != nil {
		since = ds.Revision
	}
	offline := false
	var hold time.Duration
	for {
		start := time.Now()
		after, changed, err := a.poll(ctx, &since, hold)
		elapsed := time.Since(start)
		var wait time.Duration
		if err != nil {
			if f := fatal(err); f != nil {
				return f
			}
			if ctx.Err() != nil {
				return nil
			}
			wait, hold = bo.next(), 0
			switch {
			case client.Reason(err) == api.ReasonDesiredTooLarge:
				// The server is reached; what it has for the cluster cannot be delivered
				// until less is targeted at it. Said at every try, which the backoff
				// spaces (the doorbell's "changed" is ignored meanwhile): it needs
				// someone to act.
				a.undeliverable.Store(true)
				a.log.Error("the server cannot send this cluster's desired state; the cluster keeps its last one", "err", err, "retryIn", wait.Round(time.Millisecond))
				if offline {
					// Reached, all the same: queued status goes now.
					a.log.Info("reached the Flotilla server again")
					offline = false
					kick(a.online)
				}
			case !offline:
				a.log.Warn("cannot reach the Flotilla server; the cluster keeps its last desired state", "err", err, "retryIn", wait.Round(time.Millisecond))
				offline = true
			default:
				a.log.Debug("server still unreachable", "err", err, "retryIn", wait.Round(time.Millisecond))
			}
		} else {
			bo.reset()
			a.undeliverable.Store(false)
			a.pollAfter.Store(int64(after))
			wait, hold = nextPoll(after, a.cfg.PollWait, hold, elapsed, changed)
			if a.doorbellUsable() {
				// The doorbell rings when there is news: no poll need be held open at
				// the server, which holds a million of them only at great cost, and
				// polls may be hours apart when the server says so.
				wait, hold = after, 0
				if bp := time.Duration(a.bellPollAfter.Load()); bp > 0 {
					wait = bp
				}
			}
			if wait > closeIdleAfter {
				// Told to come back in minutes (a large fleet): close the connection now
				// rather than have the server keep it open meanwhile. A million agents
				// each holding one for the transport's 90 s idle timeout would cost the
				// server far more memory than a resumed TLS handshake per poll costs CPU.
				a.client.CloseIdleConnections()
			}
			if offline {
				a.log.Info("reached the Flotilla server again")
				offline = false
				kick(a.online)
			}
		}
		if wait > 0 && !a.sleepUnlessRung(ctx, wait) {
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// sleepUnlessRung waits d, or less when the doorbell rings, and reports whether ctx is
// still live.
func (a *agent) sleepUnlessRung(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-a.rung:
		a.log.Debug("the doorbell rang")
	}
	return true
}

// nextPoll decides, from the answer to a poll held for up to asked that took elapsed, how
// long to wait before the next poll and how long to let the server hold that one. The
// server's poll-after counts from its answer: waiting it out after a held poll (as if it
// counted from the poll's start) would leave the agent without a poll held for most of it.
func nextPoll(after, pollWait, asked, elapsed time.Duration, changed bool) (wait, hold time.Duration) {
	// The protocol holds for whole seconds.
	hold = min(after, pollWait).Truncate(time.Second)
	wait = after - hold
	if !changed && asked >= time.Second && elapsed < asked/2 {
		// Unchanged, yet not held: the server declined to hold it. Come back when told,
		// or the agent would poll in a loop.
		wait = after
	}
	return wait, hold
}

// poll makes one poll, held by the server for up to hold, and returns the server's
// poll-after (how long after its answer to poll again) and whether the state changed.
func (a *agent) poll(ctx context.Context, since *int64, hold time.Duration) (time.Duration, bool, error) {
	pctx, cancel := context.WithTimeout(ctx, hold+time.Minute)
	ds, rev, after, err := a.client.WaitDesired(pctx, *since, hold)
	cancel()
	if err != nil {
		return 0, false, err
	}
	if after <= 0 {
		after = a.cfg.PollInterval
	}
	after = min(after, maxPollAfter)
	if ds == nil {
		a.log.Debug("desired state unchanged", "revision", *since)
		// Content that could not be fetched before is tried again.
		if cur := a.currentDesired(); cur != nil {
			fetched, err := a.fetchContent(ctx, cur)
			if err != nil {
				return 0, false, err
			}
			if fetched {
				// Deployments waiting for it are rendered on a full pass.
				a.mu.Lock()
				a.desiredGen++
				a.mu.Unlock()
				kick(a.wakeReconcile)
			}
		}
		return after, false, nil
	}
	a.takeInline(ds)
	if _, err := a.fetchContent(ctx, ds); err != nil {
		return 0, false, err
	}
	if err := a.dir.saveDesired(ds); err != nil {
		// Still apply it; only a restart before the next change would miss it.
		a.log.Error("persisting the desired state", "err", err)
	}
	a.mu.Lock()
	a.desired = ds
	a.desiredGen++
	a.mu.Unlock()
	if a.tun != nil {
		a.tun.SetAlways(ds.ClusterLabels[api.LabelTunnel] == api.TunnelAlways)
	}
	kick(a.wakeReconcile)
	a.log.Info("received desired state", "revision", rev, "deployments", len(ds.Deployments))
	*since = rev
	keep := map[string]bool{}
	for _, d := range ds.Deployments {
		keep[d.ContentHash] = true
	}
	if err := a.dir.pruneContent(keep); err != nil {
		a.log.Warn("pruning the content cache", "err", err)
	}
	return after, true, nil
}

// takeInline puts in the cache the archives the server sent with ds, and drops them from ds.
// Each is checked against its digest like fetched content; one that fails the check, or
// that no deployment of ds names, is left out, and fetchContent fetches what is missing.
func (a *agent) takeInline(ds *api.DesiredState) {
	for digest, data := range ds.Contents {
		named := slices.ContainsFunc(ds.Deployments, func(d api.DeploymentSpec) bool { return d.ContentHash == digest })
		if !named || a.dir.hasContent(digest) {
			continue
		}
		if err := a.dir.putContent(digest, data); err != nil {
			a.log.Warn("content sent with the desired state refused; fetching it", "digest", digest, "err", err)
			continue
		}
		a.setContentErr(digest, "")
		a.log.Debug("took content sent with the desired state", "digest", digest, "bytes", len(data))
	}
	ds.Contents = nil
}

// fetchContent puts the content of every deployment of ds in the cache. It returns an error
// only when the server could not be reached (the poll is then retried as a whole); content
// the server answers wrongly for is remembered in contentErrs, for the reconciler to report.
func (a *agent) fetchContent(ctx context.Context, ds *api.DesiredState) (fetched bool, err error) {
	for _, d := range ds.Deployments {
		digest := d.ContentHash
		if digest == "" || a.dir.hasContent(digest) || !a.contentDue(digest) {
			continue
		}
		if _, err := a.dir.contentPath(digest); err != nil {
			a.setContentErr(digest, err.Error())
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		data, err := a.client.Content(cctx, digest)
		cancel()
		if err != nil {
			// A revoked credential stops the agent; a refusal of this one digest does not.
			if client.Code(err) == http.StatusUnauthorized || transient(err) {
				return fetched, fmt.Errorf("fetching content %s: %w", digest, err)
			}
			a.setContentErr(digest, "fetching content: "+err.Error())
			continue
		}
		if err := a.dir.putContent(digest, data); err != nil {
			// A transfer damaged on the way is retried with the next poll; the message
			// says what happened if it keeps happening.
			a.setContentErr(digest, err.Error())
			continue
		}
		a.setContentErr(digest, "")
		fetched = true
		a.log.Debug("fetched content", "digest", digest, "bytes", len(data))
	}
	return fetched, nil
}

// contentFailure is content the server did not give correctly. It is asked for again with
// backoff: an archive that arrives damaged may be large.
type contentFailure struct {
	msg     string
	retryAt time.Time
	bo      *backoff
}

func (a *agent) setContentErr(digest, msg string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if msg == "" {
		delete(a.contentErrs, digest)
		return
	}
	f := a.contentErrs[digest]
	if f == nil {
		f = &contentFailure{bo: newBackoff(a.cfg.PollInterval, a.cfg.MaxBackoff)}
		a.contentErrs[digest] = f
	}
	if f.msg != msg {
		a.log.Warn("bundle content unavailable", "digest", digest, "err", msg)
	}
	f.msg = msg
	f.retryAt = a.now().Add(f.bo.next())
}

// contentDue reports whether digest may be fetched now.
func (a *agent) contentDue(digest string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.contentErrs[digest]
	return f == nil || !a.now().Before(f.retryAt)
}

func (a *agent) contentErr(digest string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if f := a.contentErrs[digest]; f != nil {
		return f.msg
	}
	return ""
}

func (a *agent) currentDesired() *api.DesiredState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.desired
}
