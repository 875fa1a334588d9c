package agent

import (
	"context"
	"time"

	"flotilla.dev/client"
)

// reportLoop sends queued status: soon after it changes (gathering changes that come within
// ReportDelay into one report), and a heartbeat carrying the inventory every
// heartbeatInterval. While the server is unreachable it backs off, and tries again at once
// when the poller reaches the server.
func (a *agent) reportLoop(ctx context.Context) error {
	bo := newBackoff(a.cfg.MinBackoff, a.cfg.MaxBackoff)
	heartbeat := time.NewTimer(a.heartbeatInterval())
	defer heartbeat.Stop()
	beat := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.wakeReport:
			if !sleep(ctx, a.cfg.ReportDelay) {
				return nil
			}
		case <-heartbeat.C:
			beat = true
			heartbeat.Reset(a.heartbeatInterval())
		case <-a.online:
		}
		for {
			rep, ok, err := a.queue.next(beat, a.currentInventory())
			if err != nil {
				// Sending a report whose number is not on disk could reuse the number
				// after a restart, and the server would ignore that later report.
				a.log.Error("cannot persist the status queue; not reporting", "err", err)
				break
			}
			if !ok {
				break
			}
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			err = a.client.ReportStatus(rctx, rep)
			cancel()
			if err == nil {
				if err := a.queue.ack(rep); err != nil {
					a.log.Error("persisting the status queue", "err", err)
				}
				a.log.Debug("reported status", "seq", rep.Seq, "deployments", len(rep.Deployments), "removed", len(rep.Removed), "inventory", rep.Inventory != nil)
				beat = false
				bo.reset()
				continue
			}
			if f := fatal(err); f != nil {
				return f
			}
			if ctx.Err() != nil {
				return nil
			}
			if !transient(err) {
				// The server will refuse this report however often it is sent; keeping it
				// would block every later one.
				a.log.Error("the server refused a status report; dropping it", "seq", rep.Seq, "code", client.Code(err), "err", err)
				if err := a.queue.ack(rep); err != nil {
					a.log.Error("persisting the status queue", "err", err)
				}
				beat = false
				continue
			}
			wait := bo.next()
			a.log.Debug("status report failed; queued on disk", "err", err, "retryIn", wait.Round(time.Millisecond))
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			case <-a.online:
				t.Stop()
			}
		}
	}
}

// heartbeatPolls is how many of the server's poll intervals a heartbeat interval lasts at
// least. The server stretches poll intervals to keep a large fleet's requests within its
// budget; heartbeats follow, so that 1M clusters do not send 1,700 a second. Liveness does
// not depend on them: every poll counts as the cluster being seen.
const heartbeatPolls = 8

// heartbeatInterval is HeartbeatInterval, or heartbeatPolls poll intervals if longer; on the
// doorbell (whose pings keep the cluster seen) at least its poll interval, hours.
func (a *agent) heartbeatInterval() time.Duration {
	d := max(a.cfg.HeartbeatInterval, heartbeatPolls*time.Duration(a.pollAfter.Load()))
	if a.doorbellUsable() {
		d = max(d, time.Duration(a.bellPollAfter.Load()))
	}
	return d
}
