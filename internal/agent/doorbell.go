package agent

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/doorbell"
)

// advertised is told the doorbell of every poll answer (port 0: the server offers none).
// The replica polled counts too: after a failover the doorbell to use is the new replica's.
func (a *agent) advertised(d client.DoorbellAd) {
	port := d.Port
	a.bellPort.Store(int32(port))
	a.bellPollAfter.Store(int64(min(d.PollAfter, maxBellPollAfter)))
	ad := a.client.Server() + "|" + strconv.Itoa(port)
	if old, _ := a.bellAd.Swap(ad).(string); old != ad {
		kick(a.bellAdvert)
	}
}

func (a *agent) doorbellState() string {
	if s, ok := a.bellState.Load().(string); ok {
		return s
	}
	return api.DoorbellOff
}

// setDoorbellState records the doorbell's state and reports it with the inventory.
func (a *agent) setDoorbellState(s string) {
	if old := a.bellState.Swap(s); old == s {
		return
	} else if old == api.DoorbellOn {
		// A poll may be set hours away, trusting the doorbell: poll now, and long-poll on.
		kick(a.rung)
	}
	if s == api.DoorbellBlocked {
		// Its key may have been rotated out while the agent was away: fetch it again
		// later (not at once: UDP may simply be blocked, and each fetch is an HTTPS call).
		time.AfterFunc(bellRetry, func() {
			if a.doorbellState() == api.DoorbellBlocked {
				kick(a.bellRekey)
			}
		})
	}
	switch s {
	case api.DoorbellBlocked:
		a.log.Warn("the server's doorbell does not answer (UDP blocked on the way?); hearing of changes by HTTPS long polls only")
	case api.DoorbellOn:
		a.log.Info("the server's doorbell answers; changes reach the agent by datagram")
	}
	a.mu.Lock()
	inv := a.inventory
	if inv != nil {
		cp := *inv
		cp.Doorbell = s
		a.inventory = &cp
		inv = &cp
	}
	a.mu.Unlock()
	if inv != nil {
		if err := a.queue.setInventory(inv); err != nil {
			a.log.Error("queueing the inventory", "err", err)
		}
		kick(a.wakeReport)
	}
}

// bellRetry is how long a doorbell that stopped answering is left before the agent fetches
// its key and starts it again.
const bellRetry = time.Hour

// doorbellUsable: the doorbell answers, so polls need not be held open.
func (a *agent) doorbellUsable() bool { return a.doorbellState() == api.DoorbellOn }

// doorbellLoop uses the doorbell the server advertises: it fetches the cluster's key over
// HTTPS, pings from its own socket, and turns the server's "changed" and "tunnel wanted"
// into an immediate poll. It follows the advertisement: another port, another keeper; none,
// none.
func (a *agent) doorbellLoop(ctx context.Context) {
	var stop context.CancelFunc
	done := func() {
		if stop != nil {
			stop()
			stop = nil
		}
	}
	defer done()
	cur := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.bellAdvert:
		case <-a.bellRekey:
			// The server's doorbell keys were rotated, or the doorbell stopped answering
			// long ago: the same doorbell, its key fetched again.
			a.log.Info("fetching the doorbell key again and restarting the doorbell")
			cur = ""
		}
		ad, _ := a.bellAd.Load().(string)
		port := a.bellPort.Load()
		if ad == cur {
			continue
		}
		done()
		cur = ad
		if port <= 0 {
			a.setDoorbellState(api.DoorbellOff)
			continue
		}
		kctx, cancel := context.WithCancel(ctx)
		if err := a.startDoorbell(kctx); err != nil {
			cancel()
			a.log.Warn("not using the server's doorbell", "err", err)
			a.setDoorbellState(api.DoorbellBlocked)
			// Asked again when the next poll advertises it.
			cur = ""
			a.bellAd.Store("")
			continue
		}
		stop = cancel
	}
}

// startDoorbell fetches the key, opens the socket and runs the keeper until ctx ends.
func (a *agent) startDoorbell(ctx context.Context) error {
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	info, err := a.client.Doorbell(fctx)
	cancel()
	if err != nil {
		return err
	}
	uid, err := doorbell.ParseUID(info.UID)
	if err != nil {
		return err
	}
	ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(a.client.Host(), strconv.Itoa(info.Port)))
	if err != nil {
		return err
	}
	server := ua.AddrPort()
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	ep, err := doorbell.NewEndpoint("")
	if err != nil {
		return err
	}
	k := &doorbell.Keeper{
		Interval:  time.Duration(info.IntervalSeconds) * time.Second,
		KeepAlive: time.Duration(info.KeepAliveSeconds) * time.Second,
		Version: func() int64 {
			if ds := a.currentDesired(); ds != nil {
				return ds.Revision
			}
			return 0
		},
		Ring:    a.ring,
		Rekey:   func() { kick(a.bellRekey) },
		OnState: a.setDoorbellState,
		Timeout: a.cfg.DoorbellTimeout,
	}
	k.Bell = ep.Add(uid, info.Key, server, k.Answer)
	go ep.Serve()
	go func() {
		k.Run(ctx)
		ep.Close()
	}()
	a.log.Debug("using the server's doorbell", "address", server.String())
	return nil
}

// ring hears the doorbell: the poll loop polls now. While the server cannot send the
// cluster's state (too large), "changed" is what every ping hears: it does not cut the
// backoff short, while a wanted tunnel still does.
func (a *agent) ring(k doorbell.Kind) {
	if k == doorbell.KindChanged && a.undeliverable.Load() {
		return
	}
	kick(a.rung)
}
