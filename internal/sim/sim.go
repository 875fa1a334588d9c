package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// Sim is a simulated fleet.
type Sim struct {
	cfg     Config
	epoch   time.Time
	seqBase int64

	clusters []cluster
	// locks guard what other goroutines read of a cluster (tests, progress): the worker
	// running a cluster writes its record under the cluster's stripe and reads it freely.
	locks [256]sync.Mutex

	sched *scheduler
	trs   []*http.Transport
	conns []*client.Client
	// lpConns carry long polls, which hold a stream each: the server allows some 250
	// streams per connection.
	lpConns []*client.Client
	// hc shares the first connection, for /metrics and the admin API.
	hc    *http.Client
	admin *client.Client

	st        stats
	change    atomic.Pointer[change]
	mark      atomic.Pointer[mark]
	namespace atomic.Pointer[string]
	inv       api.ClusterInventory

	// tun is the clusters' tunnel agents; nil when MaxTunnels is 0.
	tun *tunnels
	// bells are the doorbell sockets; nil when DoorbellFraction is 0. bellInterval is how
	// often the server asks clusters to ping.
	bells        *bells
	bellInterval atomic.Int64
	// coldToken is the session of the user the cold tunnel calls are made as.
	coldToken string
	fleetCtx  context.Context

	wg      sync.WaitGroup
	started atomic.Bool
}

// cluster is one simulated cluster: about 150 bytes plus its credential and deployments.
type cluster struct {
	cred    string
	deps    []deployment
	removed []string
	since   int64
	seq     int64
	// Times in nanoseconds since the epoch; 0 means not pending.
	nextPoll, reportAt, readyAt, nextBeat int64
	// pollAfterMs is the poll interval the server gave last.
	pollAfterMs                      uint32
	fails                            uint8
	flags                            uint8
	changeSeen, changeDone, markSeen uint32
	// bell is the cluster's doorbell; nil when it does not use one.
	bell *bellState
}

const (
	flagRegistered uint8 = 1 << iota
	flagPolled
	flagDead
	flagHeld // has made a long poll
)

// deployment is one bundle as the simulated cluster runs it. Its strings are interned:
// every cluster deploying the same bundle shares them.
type deployment struct {
	bundle, id, digest string
	state, acked       uint8
}

// Deployment states a simulated cluster goes through.
const (
	stNone uint8 = iota
	stNotReady
	stReady
	stErrApplied
)

var stateNames = [...]string{stNone: "", stNotReady: api.StateNotReady, stReady: api.StateReady, stErrApplied: api.StateErrApplied}

// Call types whose latency is recorded.
const (
	callRegister = iota
	callDesired
	callDesiredUnchanged
	callContent
	callStatus
	callLongPoll
	numCalls
)

var callNames = [numCalls]string{"register", "desired", "desired-304", "content", "status", "long-poll"}

type stats struct {
	registered, polled, dead          atomic.Int64
	polls, unchanged, contents, bytes atomic.Uint64
	// inlined counts archives the server sent with a desired state, inlineBytes their size.
	inlined, inlineBytes atomic.Uint64
	reports, errors      atomic.Uint64
	inflight, longPolls  atomic.Int64
	// everHeld counts clusters that have made a long poll.
	everHeld atomic.Int64
	// pollAfter is the last poll interval the server gave, in nanoseconds.
	pollAfter atomic.Int64
	// firstReg and lastReg are when the first and last registration succeeded; lastPolled
	// when the last cluster made its first poll.
	regStart, lastReg, lastPolled atomic.Int64

	lat [numCalls]histogram
	lag histogram

	errMu sync.Mutex
	errs  map[string]uint64
}

// change is a bundle change being measured.
type change struct {
	gen                   uint32
	bundle, digest        string
	start                 int64
	reached, done         atomic.Int64
	lastReached, lastDone atomic.Int64
	// reachAt and doneAt record, per cluster, how long after the apply it got there; the
	// groups the same for clusters with the doorbell and those polling HTTPS only.
	reachAt, doneAt histogram
	groups          [2]changeGroup
}

// changeGroup is a change's progress in one group of clusters: 0 HTTPS only, 1 doorbell.
type changeGroup struct {
	reached, done         atomic.Int64
	lastReached, lastDone atomic.Int64
	reachAt, doneAt       histogram
}

func (s *Sim) group(i int) int {
	if s.clusters[i].bell != nil {
		return 1
	}
	return 0
}

// mark counts clusters that made a successful poll after a point in time (e.g. a server
// restart).
type mark struct {
	gen   uint32
	start int64
	n     atomic.Int64
	last  atomic.Int64
}

// New prepares a fleet; Start runs it.
func New(cfg Config) (*Sim, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	if cfg.Progress != nil {
		cfg.Progress = &lockedWriter{w: cfg.Progress}
	}
	s := &Sim{cfg: cfg, epoch: time.Now(), clusters: make([]cluster, cfg.Clusters)}
	// Report numbers start at the current time, as a fresh agent's do, so that a second run
	// with the same identities is not mistaken for resent reports.
	s.seqBase = s.epoch.UnixMicro()
	s.st.errs = map[string]uint64{}
	s.sched = newScheduler(s.now, cfg.Clusters)
	var err error
	if s.trs, err = newTransports(cfg.CAData, cfg.CAChecksum, cfg.Connections); err != nil {
		return nil, err
	}
	for j, tr := range s.trs {
		c, err := client.New(client.Config{Server: rotated(cfg.Server, j), Transport: tr})
		if err != nil {
			return nil, err
		}
		s.conns = append(s.conns, c)
	}
	if holders := cfg.LongPollFraction * float64(cfg.Clusters); cfg.LongPoll > 0 && holders > 0 {
		n := int(holders/streamsPerConn) + 1
		lps, err := newTransports(cfg.CAData, cfg.CAChecksum, n)
		if err != nil {
			return nil, err
		}
		for j, tr := range lps {
			c, _ := client.New(client.Config{Server: rotated(cfg.Server, j), Transport: tr})
			s.lpConns = append(s.lpConns, c)
		}
		s.trs = append(s.trs, lps...)
	}
	if s.tun, err = newTunnels(&s.cfg); err != nil {
		return nil, err
	}
	if s.bells, err = newBells(&s.cfg); err != nil {
		return nil, err
	}
	if s.bells != nil {
		s.sched.enableRings(cfg.Clusters)
	}
	s.hc = &http.Client{Transport: s.trs[0], Timeout: cfg.RequestTimeout}
	if cfg.AdminToken != "" {
		s.admin, _ = client.New(client.Config{Server: cfg.Server, Token: cfg.AdminToken, Transport: s.trs[0], Timeout: cfg.RequestTimeout})
	}
	s.inv = api.ClusterInventory{KubernetesVersion: "v1.37.0+k3s1", NodeCount: 1, Architecture: "amd64",
		Architectures: []string{"amd64"}, AllocatableCPU: "4", AllocatableMemory: "8Gi", AgentVersion: "sim"}
	return s, nil
}

func (s *Sim) now() int64 { return int64(time.Since(s.epoch)) }

// rotated returns the list of server URLs starting at the j-th (modulo their number).
func rotated(list string, j int) string {
	servers, err := client.Servers(list)
	if err != nil || len(servers) < 2 {
		return list
	}
	j %= len(servers)
	return strings.Join(append(servers[j:], servers[:j]...), ",")
}

// firstServer is the first of the server URLs.
func firstServer(list string) string {
	first, _, _ := strings.Cut(list, ",")
	return strings.TrimSpace(first)
}

func (s *Sim) lock(i int) *sync.Mutex { return &s.locks[i%len(s.locks)] }

func (s *Sim) conn(i int) *client.Client { return s.conns[i%len(s.conns)] }

// ClientID is cluster i's stable identity.
func (s *Sim) ClientID(i int) string {
	return s.cfg.Prefix + "-" + fmt.Sprintf("%07d", i)
}

// Labels are the labels cluster i registers with.
func (s *Sim) Labels(i int) map[string]string {
	l := s.cfg.Labels.Labels(i)
	l[RunLabel] = s.cfg.Prefix
	return l
}

// Failing reports whether cluster i reports ErrApplied instead of Ready.
func (s *Sim) Failing(i int) bool { return unit(i, 0xfa11) < s.cfg.FailFraction }

// maxPollAfter bounds how long the server may send a cluster away for, as in the agent.
const (
	maxPollAfter     = time.Hour
	maxBellPollAfter = 24 * time.Hour
)

// streamsPerConn is how many long polls share a connection, below the 250 concurrent
// streams Go's HTTP/2 server allows by default.
const streamsPerConn = 200

// LongPolling reports whether cluster i holds its polls open (long polls).
func (s *Sim) LongPolling(i int) bool {
	return s.cfg.LongPoll > 0 && unit(i, 0x10e6) < s.cfg.LongPollFraction
}

// Offline reports whether cluster i goes silent after its first poll.
func (s *Sim) Offline(i int) bool { return unit(i, 0x0ff1) < s.cfg.OfflineFraction }

// Clusters is the number of simulated clusters.
func (s *Sim) Clusters() int { return len(s.clusters) }

// Namespace is the namespace the clusters registered in ("" before the first).
func (s *Sim) Namespace() string {
	if p := s.namespace.Load(); p != nil {
		return *p
	}
	return ""
}

// Credential returns cluster i's credential ("" until it registered).
func (s *Sim) Credential(i int) string {
	mu := s.lock(i)
	mu.Lock()
	defer mu.Unlock()
	return s.clusters[i].cred
}

// DeploymentState is what a simulated cluster runs of one bundle, and what the server
// acknowledged of it.
type DeploymentState struct {
	Bundle, ID, ContentHash string
	State, Acked            string
}

// Deployments returns what cluster i runs.
func (s *Sim) Deployments(i int) []DeploymentState {
	mu := s.lock(i)
	mu.Lock()
	defer mu.Unlock()
	var out []DeploymentState
	for _, d := range s.clusters[i].deps {
		out = append(out, DeploymentState{Bundle: d.bundle, ID: d.id, ContentHash: d.digest, State: stateNames[d.state], Acked: stateNames[d.acked]})
	}
	return out
}

// Settled reports whether cluster i has nothing left to tell the server: every
// deployment's final state and every removal were acknowledged.
func (s *Sim) Settled(i int) bool {
	mu := s.lock(i)
	mu.Lock()
	defer mu.Unlock()
	c := &s.clusters[i]
	if len(c.removed) > 0 || c.readyAt != 0 {
		return false
	}
	for _, d := range c.deps {
		if d.acked != d.state || d.state == stNotReady {
			return false
		}
	}
	return true
}

// Start runs the fleet until ctx ends; Wait waits for it to stop. Clusters start
// registering at once, Ramp per second.
func (s *Sim) Start(ctx context.Context) {
	if !s.started.CompareAndSwap(false, true) {
		return
	}
	s.fleetCtx = ctx
	s.st.regStart.Store(s.now())
	// Wake-ups in increasing order are already a heap.
	now := s.now()
	s.sched.mu.Lock()
	for i := range s.clusters {
		at := now
		if s.cfg.Ramp > 0 {
			at += int64(float64(i) / s.cfg.Ramp * float64(time.Second))
		}
		s.sched.heap = append(s.sched.heap, wake{at: at, id: int32(i)})
	}
	s.sched.mu.Unlock()
	work := make(chan int32)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.sched.run(ctx, work, &s.st.lag)
	}()
	for range s.cfg.Workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for id := range work {
				s.step(ctx, int(id))
			}
		}()
	}
	if s.cfg.Progress != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.progressLoop(ctx)
		}()
	}
}

// Wait waits until the fleet stopped, then closes its connections.
func (s *Sim) Wait() {
	s.wg.Wait()
	closeTransports(s.trs)
	if s.tun != nil {
		s.tun.base.CloseIdleConnections()
	}
	if s.bells != nil {
		s.bells.close()
	}
}

// step does what cluster i has due, then schedules its next wake-up.
func (s *Sim) step(ctx context.Context, i int) {
	c := &s.clusters[i]
	if c.flags&flagDead != 0 {
		return
	}
	now := s.now()
	if s.sched.rung(int32(i), now) {
		c.nextPoll = min(c.nextPoll, now)
	}
	var err error
	switch {
	case c.flags&flagRegistered == 0:
		err = s.register(ctx, i, now)
	default:
		err = s.act(ctx, i, now)
	}
	if errors.Is(err, errDetached) || ctx.Err() != nil {
		return
	}
	s.reschedule(i, err)
}

// errDetached says a long poll now owns the cluster: it reschedules it when it returns.
var errDetached = errors.New("long poll in flight")

// reschedule puts cluster i back in the scheduler after a step: retried with backoff after
// an error, else at its next due time.
func (s *Sim) reschedule(i int, err error) {
	c := &s.clusters[i]
	if c.flags&flagDead != 0 {
		s.st.dead.Add(1)
		return
	}
	if err != nil {
		c.fails = min(c.fails+1, 30)
		s.sched.push(s.now()+int64(s.backoff(c.fails)), int32(i))
		return
	}
	c.fails = 0
	if c.flags&flagPolled != 0 && s.Offline(i) {
		return // gone silent
	}
	next := c.nextPoll
	var ping, keep int64
	if c.bell != nil {
		ping, keep = c.bell.next(s.lock(i))
	}
	for _, t := range []int64{c.reportAt, c.readyAt, c.nextBeat, ping, keep} {
		if t != 0 && t < next {
			next = t
		}
	}
	s.sched.push(next, int32(i))
}

// backoff is the agent's: exponential from MinBackoff to MaxBackoff, drawn from [d/2, d].
func (s *Sim) backoff(fails uint8) time.Duration {
	d := s.cfg.MinBackoff
	for n := uint8(1); n < fails && d < s.cfg.MaxBackoff; n++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxBackoff)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (s *Sim) register(ctx context.Context, i int, now int64) error {
	c := &s.clusters[i]
	req := api.RegisterRequest{ClientID: s.ClientID(i), Labels: s.Labels(i), Inventory: &s.inv}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := timed(s, callRegister, func() (*api.RegisterResponse, error) {
		return s.conn(i).Register(rctx, s.cfg.RegistrationToken, req)
	})
	if err != nil {
		if ctx.Err() == nil {
			s.countErr("register", err)
			if client.Reason(err) == api.ReasonTokenInvalid {
				c.flags |= flagDead
			}
		}
		return err
	}
	mu := s.lock(i)
	mu.Lock()
	c.cred = resp.Credential
	c.seq = s.seqBase
	c.flags |= flagRegistered
	c.nextPoll = s.now()
	if s.cfg.Heartbeat > 0 {
		c.nextBeat = now + rand.Int64N(int64(s.cfg.Heartbeat))
	}
	mu.Unlock()
	if s.namespace.Load() == nil {
		ns := resp.Namespace
		s.namespace.CompareAndSwap(nil, &ns)
	}
	s.st.registered.Add(1)
	s.st.lastReg.Store(s.now())
	if s.bells != nil {
		s.joinBell(i, resp.Doorbell, now)
	}
	return nil
}

// act makes readiness progress, reports and polls, in the order an agent would.
func (s *Sim) act(ctx context.Context, i int, now int64) error {
	c := &s.clusters[i]
	if c.readyAt != 0 && now >= c.readyAt {
		final := s.finalState(i)
		mu := s.lock(i)
		mu.Lock()
		for j := range c.deps {
			if c.deps[j].state == stNotReady {
				c.deps[j].state = final
			}
		}
		c.readyAt = 0
		if c.reportAt == 0 {
			c.reportAt = now
		}
		mu.Unlock()
	}
	if c.bell != nil {
		if now >= c.nextPoll {
			// A poll due as well (the first after registering, or a ring's, or both
			// late behind a busy scheduler) goes first, as the agent's would: its keeper
			// pings the version the poll brought. Pinged before, the version it had would
			// be answered "changed" (spending the server's ring budget), and the cluster
			// would poll again for nothing.
			defer s.bellStep(i)
		} else {
			s.bellStep(i)
		}
	}
	beat := s.cfg.Heartbeat > 0 && now >= c.nextBeat
	if (c.reportAt != 0 && now >= c.reportAt) || beat {
		if err := s.report(ctx, i, beat); err != nil {
			return err
		}
	}
	if now >= c.nextPoll {
		var hold time.Duration
		// As the agent: polls are held by the server for up to the poll-after it gave
		// last (at most LongPoll), except the first and the first after a failure.
		// As the agent: with the doorbell, no poll is held (it rings when there is news).
		if s.LongPolling(i) && c.bell == nil && c.flags&flagPolled != 0 && c.fails == 0 {
			if c.reportAt != 0 || c.readyAt != 0 {
				// The agent's poll and report loops run side by side; the simulator runs
				// one call per cluster at a time, so the long poll waits for the report.
				c.nextPoll = c.reportAt
				if c.nextPoll == 0 || (c.readyAt != 0 && c.readyAt < c.nextPoll) {
					c.nextPoll = c.readyAt
				}
				return nil
			}
			hold = min(s.cfg.LongPoll, time.Duration(c.pollAfterMs)*time.Millisecond)
			if s.cfg.Heartbeat > 0 {
				// Likewise the heartbeat: the poll is held no longer than until it is due.
				hold = min(hold, time.Duration(c.nextBeat-now))
			}
		}
		if hold >= time.Second {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				err := s.poll(ctx, i, hold)
				if ctx.Err() == nil {
					s.reschedule(i, err)
				}
			}()
			return errDetached
		}
		if err := s.poll(ctx, i, 0); err != nil {
			return err
		}
	}
	return nil
}

// bellStep sends cluster i's ping or keepalive if it is due; the worker running i calls it.
func (s *Sim) bellStep(i int) {
	c := &s.clusters[i]
	now := s.now()
	// The reader of answers moves these under the cluster's lock.
	nextPing, nextKeep := c.bell.next(s.lock(i))
	if now >= nextPing {
		s.ping(i, now)
	} else if nextKeep != 0 && now >= nextKeep {
		if nextKeep < nextPing {
			s.keepAlive(i, now)
		} else {
			mu := s.lock(i)
			mu.Lock()
			c.bell.nextKeep = 0 // the ping comes first, and keeps the path open itself
			mu.Unlock()
		}
	}
}

func (s *Sim) finalState(i int) uint8 {
	if s.Failing(i) {
		return stErrApplied
	}
	return stReady
}

// poll asks for cluster i's desired state; with wait, as a long poll that the server holds
// until the state changes or wait passes.
func (s *Sim) poll(ctx context.Context, i int, wait time.Duration) error {
	c := &s.clusters[i]
	cl := s.conn(i).WithToken(c.cred)
	if wait > 0 {
		cl = s.lpConns[i%len(s.lpConns)].WithToken(c.cred)
		s.st.longPolls.Add(1)
		defer s.st.longPolls.Add(-1)
		mu := s.lock(i)
		mu.Lock()
		first := c.flags&flagHeld == 0
		c.flags |= flagHeld
		mu.Unlock()
		if first {
			s.st.everHeld.Add(1)
		}
	}
	if s.tun != nil {
		// As the agent: a poll's answer, held or not, may ask for the cluster's tunnel.
		cl.OnTunnelWanted(func(token string) { s.wantTunnel(i, token) })
	}
	var bellAfter time.Duration
	if c.bell != nil {
		cl.OnDoorbell(func(d client.DoorbellAd) { bellAfter = d.PollAfter })
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout+wait)
	defer cancel()
	begun := s.now()
	start := time.Now()
	s.st.inflight.Add(1)
	ds, rev, after, err := cl.WaitDesired(rctx, c.since, wait)
	s.st.inflight.Add(-1)
	s.st.polls.Add(1)
	if err != nil {
		if ctx.Err() == nil {
			s.countErr("desired", err)
			s.checkFatal(i, err)
		}
		return err
	}
	took := time.Since(start)
	switch {
	case wait > 0:
		s.st.lat[callLongPoll].record(took)
		if ds == nil {
			s.st.unchanged.Add(1)
		}
	case ds == nil:
		s.st.lat[callDesiredUnchanged].record(took)
		s.st.unchanged.Add(1)
	default:
		s.st.lat[callDesired].record(took)
	}
	if ds != nil {
		if err := s.apply(ctx, i, cl, ds); err != nil {
			return err
		}
	}
	if after <= 0 {
		after = s.cfg.PollInterval
	} else {
		s.st.pollAfter.Store(int64(after))
	}
	after = min(after, maxPollAfter)
	every := after // heartbeats follow the HTTPS interval, as the agent's
	if bellAfter > 0 {
		// As the agent whose doorbell answers: polls hours apart, as the server says.
		after = min(bellAfter, maxBellPollAfter)
	}
	now := s.now()
	mu := s.lock(i)
	mu.Lock()
	if ds != nil {
		c.since = rev
	}
	// The next poll starts poll-after after this one started: a poll the server held that
	// long is followed at once by the next.
	c.nextPoll = max(begun+int64(after), now)
	c.pollAfterMs = uint32(every / time.Millisecond)
	if c.bell != nil {
		c.bell.pollAfterMs = uint32(bellAfter / time.Millisecond)
	}
	first := c.flags&flagPolled == 0
	c.flags |= flagPolled
	mu.Unlock()
	if first {
		s.st.polled.Add(1)
		s.st.lastPolled.Store(now)
	}
	if m := s.mark.Load(); m != nil && c.markSeen != m.gen {
		c.markSeen = m.gen
		m.n.Add(1)
		m.last.Store(now)
	}
	return nil
}

// apply takes a new desired state: it fetches the content of every deployment that changed
// (once per digest, as an agent's content cache would) unless the server sent it with the
// state, and "applies" it. Nothing changes
// unless all content could be fetched, so that the poll is retried as a whole.
func (s *Sim) apply(ctx context.Context, i int, cl *client.Client, ds *api.DesiredState) error {
	c := &s.clusters[i]
	have := func(digest string) bool {
		for _, d := range c.deps {
			if d.digest == digest {
				return true
			}
		}
		return false
	}
	next := make([]deployment, 0, len(ds.Deployments))
	changed := false
	fetched := map[string]bool{}
	for _, d := range ds.Deployments {
		var old *deployment
		for j := range c.deps {
			if c.deps[j].bundle == d.Bundle {
				old = &c.deps[j]
			}
		}
		if old != nil && old.id == d.ID {
			next = append(next, *old)
			continue
		}
		if data, ok := ds.Contents[d.ContentHash]; ok && !have(d.ContentHash) && !fetched[d.ContentHash] {
			// Sent with the state, as the server does for content not applied yet. (The
			// simulator checks no digest, of this or of fetched content.)
			s.st.inlined.Add(1)
			s.st.inlineBytes.Add(uint64(len(data)))
			fetched[d.ContentHash] = true
		}
		if d.ContentHash != "" && !have(d.ContentHash) && !fetched[d.ContentHash] {
			rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
			data, err := timed(s, callContent, func() ([]byte, error) { return cl.Content(rctx, d.ContentHash) })
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					s.countErr("content", err)
					s.checkFatal(i, err)
				}
				return err
			}
			s.st.contents.Add(1)
			s.st.bytes.Add(uint64(len(data)))
			fetched[d.ContentHash] = true
		}
		nd := deployment{bundle: intern(d.Bundle), id: intern(d.ID), digest: intern(d.ContentHash), state: s.finalState(i)}
		if s.cfg.ReadyDelay > 0 {
			nd.state = stNotReady
		}
		next = append(next, nd)
		changed = true
	}
	var removed []string
	for _, d := range c.deps {
		found := false
		for _, n := range ds.Deployments {
			if n.Bundle == d.bundle {
				found = true
				break
			}
		}
		if !found {
			removed = append(removed, d.bundle)
			changed = true
		}
	}
	now := s.now()
	mu := s.lock(i)
	mu.Lock()
	c.deps = next
	c.removed = append(c.removed, removed...)
	if changed {
		if c.reportAt == 0 {
			c.reportAt = now + int64(s.cfg.ReportDelay)
		}
		if s.cfg.ReadyDelay > 0 && c.readyAt == 0 {
			c.readyAt = now + int64(s.cfg.ReadyDelay)
		}
	}
	mu.Unlock()
	if ch := s.change.Load(); ch != nil && c.changeSeen != ch.gen {
		for _, d := range next {
			if d.bundle == ch.bundle && d.digest == ch.digest {
				c.changeSeen = ch.gen
				ch.reached.Add(1)
				ch.lastReached.Store(now)
				ch.reachAt.record(time.Duration(now - ch.start))
				g := &ch.groups[s.group(i)]
				g.reached.Add(1)
				g.lastReached.Store(now)
				g.reachAt.record(time.Duration(now - ch.start))
			}
		}
	}
	return nil
}

// report sends what changed since the last acknowledged report; with beat, also the
// inventory, even if nothing changed.
func (s *Sim) report(ctx context.Context, i int, beat bool) error {
	c := &s.clusters[i]
	rep := api.StatusReport{Seq: c.seq + 1, Time: time.Now().UTC().Truncate(time.Second), Removed: c.removed}
	for _, d := range c.deps {
		if d.state != d.acked {
			rep.Deployments = append(rep.Deployments, api.DeploymentStatus{Bundle: d.bundle, ID: d.id, State: stateNames[d.state], Message: s.message(d.state)})
		}
	}
	if beat {
		rep.Inventory = &s.inv
	}
	mu := s.lock(i)
	if len(rep.Deployments) > 0 || len(rep.Removed) > 0 || beat {
		// Every attempt takes a new number: a report the server may have stored before
		// the answer was lost is followed by one it will not ignore.
		mu.Lock()
		c.seq = rep.Seq
		mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		_, err := timed(s, callStatus, func() (struct{}, error) { return struct{}{}, s.conn(i).WithToken(c.cred).ReportStatus(rctx, rep) })
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.countErr("status", err)
				s.checkFatal(i, err)
			}
			if code := client.Code(err); code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests {
				// Refused for good: sending it again would not help (the agent drops it too).
				err = nil
			} else {
				return err
			}
		}
		s.st.reports.Add(1)
	}
	now := s.now()
	ch := s.change.Load()
	mu.Lock()
	for j := range c.deps {
		d := &c.deps[j]
		d.acked = d.state
		if ch != nil && c.changeDone != ch.gen && d.bundle == ch.bundle && d.digest == ch.digest && d.state != stNotReady {
			c.changeDone = ch.gen
			ch.done.Add(1)
			ch.lastDone.Store(now)
			ch.doneAt.record(time.Duration(now - ch.start))
			g := &ch.groups[s.group(i)]
			g.done.Add(1)
			g.lastDone.Store(now)
			g.doneAt.record(time.Duration(now - ch.start))
		}
	}
	c.removed = nil
	c.reportAt = 0
	if beat {
		// As the agent: at least eight poll intervals apart (heartbeatPolls there).
		beat := max(int64(s.cfg.Heartbeat), 8*int64(c.pollAfterMs)*int64(time.Millisecond))
		if c.bell != nil {
			// As the agent on the doorbell: at least its poll interval.
			beat = max(beat, int64(c.bell.pollAfterMs)*int64(time.Millisecond))
		}
		c.nextBeat = now + beat
	}
	mu.Unlock()
	return nil
}

func (s *Sim) message(st uint8) string {
	if st == stErrApplied {
		return "simulated failure: ConfigMap sim: admission webhook denied the request"
	}
	return ""
}

// checkFatal stops a cluster whose credential the server no longer accepts, as the agent
// stops.
func (s *Sim) checkFatal(i int, err error) {
	if client.Code(err) == http.StatusUnauthorized {
		s.clusters[i].flags |= flagDead
	}
}

// timed runs one call and records its latency when it succeeds.
func timed[T any](s *Sim, call int, f func() (T, error)) (T, error) {
	start := time.Now()
	s.st.inflight.Add(1)
	v, err := f()
	s.st.inflight.Add(-1)
	if err == nil {
		s.st.lat[call].record(time.Since(start))
	}
	return v, err
}

func (s *Sim) countErr(call string, err error) {
	s.st.errors.Add(1)
	key := call + ": " + errClass(err)
	s.st.errMu.Lock()
	s.st.errs[key]++
	s.st.errMu.Unlock()
}

// errClass names an error for counting: the HTTP status and reason, or what went wrong
// with the connection.
func errClass(err error) string {
	if code := client.Code(err); code != 0 {
		if r := client.Reason(err); r != "" {
			return strconv.Itoa(code) + " " + r
		}
		return strconv.Itoa(code) + " " + http.StatusText(code)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "transport error"
}

// intern shares the strings of deployments: a million clusters receive the same few bundle
// names, IDs and digests.
var internTable = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

func intern(s string) string {
	internTable.Lock()
	defer internTable.Unlock()
	if v, ok := internTable.m[s]; ok {
		return v
	}
	if len(internTable.m) < 1<<16 {
		internTable.m[s] = s
	}
	return s
}

// lockedWriter serialises the progress lines and messages of the fleet and of Run.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
