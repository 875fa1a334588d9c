package sim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/client"
)

// Run measures the server with the simulated fleet, phase by phase: the bare-HTTPS
// baseline, registration of every cluster and their first poll, one bundle change reaching
// every targeted cluster and all of them reporting, an idle fleet, and a storm of unchanged
// polls. Phases not configured are skipped. The fleet stops when Run returns.
func (s *Sim) Run(ctx context.Context) (*Report, error) {
	rep := s.newReport()
	if s.cfg.Baseline > 0 {
		s.logf("measuring the bare-HTTPS baseline for %v", s.cfg.Baseline)
		b, err := Baseline(ctx, s.cfg.Connections, s.cfg.Workers, s.cfg.Baseline)
		if err != nil {
			return nil, err
		}
		rep.Baseline = b
	}
	if m, err := s.Scrape(ctx); err == nil {
		rep.ServerMemory.Before, _ = m.value("process_resident_memory_bytes", nil)
	}
	if s.cfg.RegistrationToken == "" {
		tok, err := s.CreateRegistrationToken(ctx)
		if err != nil {
			return nil, err
		}
		s.SetRegistrationToken(tok)
	}
	if s.cfg.ColdTunnels > 0 {
		// Bound before any cluster registers: a binding made later re-versions every
		// covered cluster's desired state, a change of its own.
		if err := s.makeColdUser(ctx); err != nil {
			return nil, err
		}
	}
	fleetCtx, stop := context.WithCancel(ctx)
	defer func() { stop(); s.Wait() }()
	s.Start(fleetCtx)

	var err error
	if rep.Registration, err = s.WaitRegistered(ctx); err != nil {
		return s.finish(rep), err
	}
	if rep.InitialSync, err = s.WaitPolled(ctx); err != nil {
		return s.finish(rep), err
	}
	if m, err := s.Scrape(ctx); err == nil {
		rep.ServerMemory.AfterRegistration, _ = m.value("process_resident_memory_bytes", nil)
	}
	if rep.Held, err = s.WaitHeld(ctx); err != nil {
		return s.finish(rep), err
	}
	if s.cfg.Tunnels > 0 {
		if rep.Tunnels, err = s.OpenTunnels(ctx, s.cfg.Tunnels, min(s.cfg.Duration, time.Minute)); err != nil {
			return s.finish(rep), err
		}
	}
	if s.cfg.ChangeBundle != "" {
		if rep.Change, err = s.Change(ctx, s.cfg.ChangeBundle, s.cfg.ChangeSelector); err != nil {
			return s.finish(rep), err
		}
	}
	if s.cfg.Duration > 0 {
		if rep.Idle, err = s.Idle(ctx, s.cfg.Duration); err != nil {
			return s.finish(rep), err
		}
	}
	if s.cfg.ColdTunnels > 0 {
		if rep.ColdTunnels, err = s.ColdTunnels(ctx, s.cfg.ColdTunnels, time.Duration(float64(s.st.pollAfter.Load())*1.5)+30*time.Second); err != nil {
			return s.finish(rep), err
		}
	}
	if s.cfg.PollStorm > 0 {
		if rep.PollStorm, err = s.PollStorm(ctx, s.cfg.PollStorm, rep.Baseline); err != nil {
			return s.finish(rep), err
		}
		if rep.ReconnectStorm, err = s.ReconnectStorm(ctx, s.cfg.PollStorm, rep.Baseline); err != nil {
			return s.finish(rep), err
		}
	}
	if s.cfg.PingStorm > 0 {
		var idleCPU float64
		if rep.Idle != nil {
			idleCPU = rep.Idle.ServerCPU
			if rep.Idle.Late != nil {
				// The idle fleet alone, without the change's wake.
				idleCPU = rep.Idle.Late.ServerCPU
			}
		}
		if rep.PingStorm, err = s.PingStorm(ctx, s.cfg.PingStorm, idleCPU); err != nil {
			return s.finish(rep), err
		}
	}
	return s.finish(rep), nil
}

// Finish completes a report assembled phase by phase outside Run: call latencies, errors,
// totals, the simulator's cost, ratios to the baseline, and the server's memory now unless
// it was filled in.
func (s *Sim) Finish(rep *Report) *Report { return s.finish(rep) }

func (s *Sim) logf(format string, args ...any) {
	if s.cfg.Progress != nil {
		fmt.Fprintf(s.cfg.Progress, "sim: "+format+"\n", args...)
	}
}

// CreateRegistrationToken makes a registration token for the run with the admin token.
func (s *Sim) CreateRegistrationToken(ctx context.Context) (string, error) {
	if s.admin == nil {
		return "", errors.New("no registration token: give one, or an admin token to create one")
	}
	spec, _ := json.Marshal(api.RegistrationTokenSpec{TTL: "168h"})
	name := fmt.Sprintf("%s-%d", s.cfg.Prefix, time.Now().Unix())
	out, err := s.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRegistrationToken},
		Metadata: api.ObjectMeta{Name: name, Namespace: api.DefaultNamespace}, Spec: spec})
	if err != nil {
		return "", fmt.Errorf("creating a registration token: %w", err)
	}
	var st api.RegistrationTokenStatus
	json.Unmarshal(out.Status, &st)
	if st.Token == "" {
		return "", errors.New("creating a registration token: the server returned no value")
	}
	return st.Token, nil
}

// waitFor polls cond until it holds, ctx ends or the configured timeout passes.
func (s *Sim) waitFor(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(s.cfg.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", s.cfg.Timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// WaitRegistered waits until every cluster registered (or gave up for good).
func (s *Sim) WaitRegistered(ctx context.Context) (*Registration, error) {
	n := int64(len(s.clusters))
	err := s.waitFor(ctx, "every cluster to register", func() bool { return s.st.registered.Load()+s.st.dead.Load() >= n })
	r := &Registration{Clusters: s.st.registered.Load()}
	took := time.Duration(s.st.lastReg.Load() - s.st.regStart.Load())
	r.Duration = seconds(took)
	if took > 0 {
		r.PerSec = float64(r.Clusters) / took.Seconds()
	}
	if err == nil && r.Clusters < n {
		err = fmt.Errorf("%d of %d clusters could not register (see the errors)", n-r.Clusters, n)
	}
	return r, err
}

// WaitPolled waits until every registered cluster made its first poll, and returns how
// long after the start that was.
func (s *Sim) WaitPolled(ctx context.Context) (Seconds, error) {
	err := s.waitFor(ctx, "every cluster's first poll", func() bool {
		return s.st.polled.Load()+s.st.dead.Load() >= int64(len(s.clusters))
	})
	// From here on, the scheduling lag says whether the simulator keeps up with a running
	// fleet, not how long the registration queue was.
	s.st.lag.reset()
	return seconds(time.Duration(s.st.lastPolled.Load() - s.st.regStart.Load())), err
}

// WaitHeld waits until nine in ten long-polling clusters have made a long poll, as in a
// fleet that has run for a while (after registering, a cluster's second poll is the first
// held), and
// returns how long after the start that was; 0 without long polls.
func (s *Sim) WaitHeld(ctx context.Context) (Seconds, error) {
	want := int64(0)
	for i := range s.clusters {
		// Clusters using the doorbell hold no polls, as the agent.
		if s.LongPolling(i) && !s.UsesDoorbell(i) && !s.Offline(i) {
			want++
		}
	}
	if want == 0 {
		return 0, nil
	}
	s.logf("waiting for the fleet to hold its polls")
	// Each holds a poll for at most the server's poll interval, which in a large fleet is
	// longer than LongPoll: count clusters that have made one, not those holding one now.
	err := s.waitFor(ctx, "the fleet to hold its polls", func() bool { return s.st.everHeld.Load() >= want*9/10 })
	return seconds(time.Since(s.epoch) - time.Duration(s.st.regStart.Load())), err
}

// Expectation is what a bundle change should lead to, from the simulated clusters' labels.
type Expectation struct {
	Targeted    int `json:"targeted"`
	Reach       int `json:"reach"`
	Ready       int `json:"ready"`
	ErrApplied  int `json:"errApplied"`
	WaitApplied int `json:"waitApplied"`
}

// Expect computes which simulated clusters a selector targets and what they will report:
// offline clusters never receive the change, failing ones report ErrApplied. It assumes
// the clusters still carry the labels they registered with.
func (s *Sim) Expect(sel labels.Selector) Expectation {
	var e Expectation
	for i := range s.clusters {
		if !sel.Matches(labels.Set(s.Labels(i))) {
			continue
		}
		e.Targeted++
		switch {
		case s.Offline(i):
			e.WaitApplied++
		case s.Failing(i):
			e.Reach++
			e.ErrApplied++
		default:
			e.Reach++
			e.Ready++
		}
	}
	return e
}

// ChangeResult is one bundle change as the fleet and the server saw it.
type ChangeResult struct {
	Bundle      string      `json:"bundle"`
	ContentHash string      `json:"contentHash"`
	Selector    string      `json:"selector"`
	Expect      Expectation `json:"expect"`
	Reached     int64       `json:"reached"`
	Reported    int64       `json:"reported"`
	// ReachAll is from the apply until the last targeted cluster received the change;
	// ReportAll until the server acknowledged the last final report; ServerRollup until
	// the Bundle's status counted every one.
	ReachAll     Seconds `json:"reachAll"`
	ReportAll    Seconds `json:"reportAll"`
	ServerRollup Seconds `json:"serverRollup"`
	// StatusSettled is until the server had no status writes left to make: every
	// Cluster's status (state, bundle counts) brought up to date.
	StatusSettled Seconds `json:"statusSettled,omitempty"`
	// Reach and Report spread the clusters' times since the apply.
	Reach  Latency `json:"reach"`
	Report Latency `json:"report"`
	// Doorbell and HTTPS split the above between the clusters using the doorbell and
	// those polling HTTPS only.
	Doorbell *ChangeGroup `json:"doorbell,omitempty"`
	HTTPS    *ChangeGroup `json:"https,omitempty"`
	// PollAfter is the poll interval the server gave, which bounds ReachAll from below.
	PollAfter Seconds `json:"pollAfter"`
	// Requests made while the change rolled out, and how long the baseline would take
	// to serve that many.
	Requests     uint64  `json:"requests"`
	BaselineTime Seconds `json:"baselineTime,omitempty"`
	TimedOut     bool    `json:"timedOut,omitempty"`
}

// Change applies a bundle targeting selector (default: every cluster of the run) with new
// content and measures how it reaches the fleet.
func (s *Sim) Change(ctx context.Context, name, selector string) (*ChangeResult, error) {
	if s.admin == nil {
		return nil, errors.New("a bundle change needs the admin token")
	}
	if selector == "" {
		selector = RunLabel + "=" + s.cfg.Prefix
	}
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("change selector %q: %w", selector, err)
	}
	ls, err := metav1.ParseToLabelSelector(selector)
	if err != nil {
		return nil, fmt.Errorf("change selector %q: %w", selector, err)
	}
	target := &api.LabelSelector{MatchLabels: ls.MatchLabels}
	for _, r := range ls.MatchExpressions {
		target.MatchExpressions = append(target.MatchExpressions, api.LabelSelectorRequirement{Key: r.Key, Operator: string(r.Operator), Values: r.Values})
	}
	ns := s.Namespace()
	if ns == "" {
		ns = api.DefaultNamespace
	}
	cm := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  changed: %q\n  payload: %q\n",
		name, time.Now().UTC().Format(time.RFC3339Nano), strings.Repeat("x", s.cfg.ChangeSize))
	spec, _ := json.Marshal(api.BundleSpec{
		Resources:       []api.BundleResource{{Name: "configmap.yaml", Content: cm}},
		Targets:         []api.BundleTarget{{Name: "sim", ClusterSelector: target}},
		RolloutStrategy: s.cfg.ChangeRollout,
	})
	res := &ChangeResult{Bundle: ns + "/" + name, Selector: selector, Expect: s.Expect(sel)}
	s.logf("applying bundle %s to %d clusters (%s)", res.Bundle, res.Expect.Targeted, selector)
	reqs0 := s.st.polls.Load() + s.st.contents.Load() + s.st.reports.Load()
	ch := &change{bundle: res.Bundle}
	if old := s.change.Load(); old != nil {
		ch.gen = old.gen
	}
	ch.gen++
	obj := &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
		Metadata: api.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	// apply returns the Bundle as the server took it, and the digest of its content.
	apply := func(dryRun bool) (*api.Object, string, error) {
		out, _, err := s.admin.Apply(ctx, obj, dryRun)
		if err != nil {
			return nil, "", fmt.Errorf("applying bundle %s (dry run: %v): %w", res.Bundle, dryRun, err)
		}
		var applied api.BundleSpec
		json.Unmarshal(out.Spec, &applied)
		return out, applied.ContentHash, nil
	}
	// The digest must be known before the change is made: a cluster polling while the
	// apply is still in flight already receives it. A dry run has the server work it out.
	_, digest, err := apply(true)
	if err != nil {
		return nil, err
	}
	ch.digest, ch.start = digest, s.now()
	start := ch.start
	s.change.Store(ch)
	out, digest, err := apply(false)
	if err != nil {
		return nil, err
	}
	res.ContentHash = digest
	if digest != ch.digest {
		return nil, fmt.Errorf("applying bundle %s: stored content %s differs from the dry run's %s", res.Bundle, digest, ch.digest)
	}

	err = s.waitFor(ctx, "the change to reach every targeted cluster and all of them to report", func() bool {
		return ch.reached.Load() >= int64(res.Expect.Reach) && ch.done.Load() >= int64(res.Expect.Reach)
	})
	res.Reached, res.Reported = ch.reached.Load(), ch.done.Load()
	res.ReachAll = seconds(time.Duration(ch.lastReached.Load() - start))
	res.ReportAll = seconds(time.Duration(ch.lastDone.Load() - start))
	res.PollAfter = seconds(time.Duration(s.st.pollAfter.Load()))
	res.Reach, res.Report = ch.reachAt.summary(), ch.doneAt.summary()
	res.HTTPS, res.Doorbell = ch.groups[0].result(start), ch.groups[1].result(start)
	if err != nil {
		res.TimedOut = true
		return res, err
	}
	err = s.waitFor(ctx, "the bundle's status to count every cluster", func() bool {
		o, err := s.admin.Get(ctx, api.KindBundle, ns, name)
		if err != nil {
			return false
		}
		var st api.BundleStatus
		json.Unmarshal(o.Status, &st)
		return st.ObservedGeneration == out.Metadata.Generation && st.Summary != nil &&
			st.Summary.Ready == res.Expect.Ready && st.Summary.ErrApplied == res.Expect.ErrApplied
	})
	res.ServerRollup = seconds(time.Duration(s.now() - start))
	res.Requests = s.st.polls.Load() + s.st.contents.Load() + s.st.reports.Load() - reqs0
	if err != nil {
		res.TimedOut = true
		return res, err
	}
	if err = s.waitSettled(ctx); err != nil {
		res.TimedOut = true
		return res, err
	}
	res.StatusSettled = seconds(time.Duration(s.now() - start))
	return res, nil
}

// waitSettled waits until the server's controllers have no work queued (its
// flotilla_controller_queue_depth), scraping once a second.
func (s *Sim) waitSettled(ctx context.Context) error {
	var last time.Time
	return s.waitFor(ctx, "the server's status writes to settle", func() bool {
		if time.Since(last) < time.Second {
			return false
		}
		last = time.Now()
		m, err := s.Scrape(ctx)
		if err != nil {
			return false
		}
		q, ok := m.value("flotilla_controller_queue_depth", nil)
		return ok && q == 0
	})
}

// Mark starts counting clusters that poll successfully from now on (e.g. after a server
// restart); WaitMarked waits until every online cluster has.
func (s *Sim) Mark() {
	m := &mark{start: s.now()}
	if old := s.mark.Load(); old != nil {
		m.gen = old.gen
	}
	m.gen++
	s.mark.Store(m)
}

// WaitMarked waits until every online, registered cluster polled successfully since Mark,
// and returns how long after Mark the last one did.
func (s *Sim) WaitMarked(ctx context.Context) (Seconds, error) {
	m := s.mark.Load()
	if m == nil {
		return 0, errors.New("no mark")
	}
	online := int64(0)
	for i := range s.clusters {
		if !s.Offline(i) {
			online++
		}
	}
	err := s.waitFor(ctx, "every cluster to poll again", func() bool { return m.n.Load()+s.st.dead.Load() >= online })
	return seconds(time.Duration(m.last.Load() - m.start)), err
}

// IdleResult is the cost of a fleet with nothing to do.
type IdleResult struct {
	Duration      Seconds `json:"duration"`
	PollsPerSec   float64 `json:"pollsPerSec"`
	ReportsPerSec float64 `json:"reportsPerSec"`
	// ServerCPU is the server's CPU use in cores (1 = one core busy).
	ServerCPU float64 `json:"serverCPU"`
	// SimCPU is the simulator's.
	SimCPU float64 `json:"simCPU"`
	// ServerGC is what the server's Go heap did meanwhile: the collector's work grows with
	// what the requests allocate.
	ServerGC GCFigures `json:"serverGC"`
	// DoorbellPerSec is the doorbell datagrams the server received per second;
	// KeepAlivesPerSec the keepalives the simulated agents sent, which the server's socket
	// filter drops before they are read (the kernel's receive path is their whole cost, on
	// loopback charged to the simulator, not the server).
	DoorbellPerSec   float64 `json:"doorbellPerSec,omitempty"`
	KeepAlivesPerSec float64 `json:"keepAlivesPerSec,omitempty"`
	// Late is the same over the second half of the window. The first half still carries
	// the change's wake: the server compacts the history the change wrote once it is older
	// than the history window (5 minutes by default), and a simulator that fell behind
	// during the change sends what it owes. With a window of twice the history window or
	// more, the second half is the idle fleet alone.
	Late *IdleHalf `json:"late,omitempty"`
}

// IdleHalf is what the fleet cost over part of the idle window.
type IdleHalf struct {
	Duration       Seconds   `json:"duration"`
	ReportsPerSec  float64   `json:"reportsPerSec"`
	ServerCPU      float64   `json:"serverCPU"`
	ServerGC       GCFigures `json:"serverGC"`
	DoorbellPerSec float64   `json:"doorbellPerSec,omitempty"`
}

// GCFigures are the server's allocations and collections over a period, from its /metrics
// (the Go collector's go_memstats_alloc_bytes_total and go_gc_duration_seconds_count).
type GCFigures struct {
	// AllocPerSec is bytes allocated per second; AllocPerRequest the same per request the
	// server answered in the period (polls and reports), where that is known.
	AllocPerSec     float64 `json:"allocPerSec"`
	AllocPerRequest float64 `json:"allocPerRequest,omitempty"`
	// CyclesPerMin is how many collections ran per minute.
	CyclesPerMin float64 `json:"cyclesPerMin"`
}

func (f GCFigures) String() string {
	per := ""
	if f.AllocPerRequest > 0 {
		per = fmt.Sprintf(", %.0f B per request", f.AllocPerRequest)
	}
	return fmt.Sprintf("allocated %s/s%s; %.1f collections a minute", mb(f.AllocPerSec), per, f.CyclesPerMin)
}

// gcFigures compares two scrapes taken secs apart, during which the server answered
// requests requests (0 if unknown).
func gcFigures(m0, m1 serverMetrics, secs, requests float64) GCFigures {
	a0, _ := m0.value("go_memstats_alloc_bytes_total", nil)
	a1, _ := m1.value("go_memstats_alloc_bytes_total", nil)
	g0, _ := m0.value("go_gc_duration_seconds_count", nil)
	g1, _ := m1.value("go_gc_duration_seconds_count", nil)
	var f GCFigures
	if secs > 0 {
		f.AllocPerSec, f.CyclesPerMin = (a1-a0)/secs, 60*(g1-g0)/secs
	}
	if requests > 0 {
		f.AllocPerRequest = (a1 - a0) / requests
	}
	return f
}

// Idle lets the fleet run for d and measures what it costs.
func (s *Sim) Idle(ctx context.Context, d time.Duration) (*IdleResult, error) {
	s.logf("idle fleet for %v", d)
	m0, err := s.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	polls0, reps0, cpu0 := s.st.polls.Load(), s.st.reports.Load(), processCPU()
	keeps0 := s.doorbellCounts().KeepAlives
	start := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(d / 2):
	}
	// The second half's figures start here; a failed scrape only leaves them out.
	mid, midErr := s.Scrape(ctx)
	midAt, repsMid := time.Now(), s.st.reports.Load()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(d - time.Since(start)):
	}
	m1, err := s.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	took := time.Since(start).Seconds()
	polls, reports := float64(s.st.polls.Load()-polls0), float64(s.st.reports.Load()-reps0)
	res := &IdleResult{Duration: Seconds(took), PollsPerSec: polls / took,
		ReportsPerSec: reports / took, ServerCPU: delta(m0, m1, "process_cpu_seconds_total") / took,
		SimCPU: (processCPU() - cpu0).Seconds() / took, ServerGC: gcFigures(m0, m1, took, polls+reports),
		DoorbellPerSec: delta(m0, m1, "flotilla_doorbell_received_total") / took, KeepAlivesPerSec: float64(s.doorbellCounts().KeepAlives-keeps0) / took}
	if late := time.Since(midAt).Seconds(); midErr == nil && late > 0 {
		res.Late = &IdleHalf{Duration: Seconds(late), ReportsPerSec: float64(s.st.reports.Load()-repsMid) / late,
			ServerCPU: delta(mid, m1, "process_cpu_seconds_total") / late, ServerGC: gcFigures(mid, m1, late, 0),
			DoorbellPerSec: delta(mid, m1, "flotilla_doorbell_received_total") / late}
	}
	return res, nil
}

// delta is how much the unlabelled metric name grew from scrape a to scrape b.
func delta(a, b serverMetrics, name string) float64 {
	va, _ := a.value(name, nil)
	vb, _ := b.value(name, nil)
	return vb - va
}

// StormResult is the cost of an unchanged poll, measured by sending them as fast as they
// are answered.
type StormResult struct {
	Duration  Seconds `json:"duration"`
	Polls     uint64  `json:"polls"`
	Unchanged uint64  `json:"unchanged"`
	PerSec    float64 `json:"perSec"`
	Latency   Latency `json:"latency"`
	// ServerCPUPerPoll is the server's CPU time per poll it answered in the period (from its
	// /metrics); SimCPUPerPoll the simulator's.
	ServerCPUPerPoll Seconds `json:"serverCPUPerPoll"`
	SimCPUPerPoll    Seconds `json:"simCPUPerPoll"`
	// ServerGC is the server's allocations and collections in the period, per poll it
	// answered.
	ServerGC GCFigures `json:"serverGC"`
	// RateRatio is PerSec over the baseline's rate; CPURatio the CPU per poll (server and
	// simulator) over the baseline's CPU per request (its server and client).
	RateRatio float64 `json:"rateRatio,omitempty"`
	CPURatio  float64 `json:"cpuRatio,omitempty"`
}

// PollStorm sends unchanged polls, each as one of the registered clusters at its current
// revision, from every worker for d.
func (s *Sim) PollStorm(ctx context.Context, d time.Duration, base *BaselineResult) (*StormResult, error) {
	return s.storm(ctx, d, base, false)
}

// ReconnectStorm is PollStorm with every poll on a new connection, resuming an earlier TLS
// session: how agents of a large fleet poll, since they close their connection while told to
// stay away for minutes. Its ratio is to the baseline's requests on open connections.
func (s *Sim) ReconnectStorm(ctx context.Context, d time.Duration, base *BaselineResult) (*StormResult, error) {
	return s.storm(ctx, d, base, true)
}

func (s *Sim) storm(ctx context.Context, d time.Duration, base *BaselineResult, reconnect bool) (*StormResult, error) {
	type target struct {
		cred  string
		since int64
	}
	var targets []target
	for i := range s.clusters {
		mu := s.lock(i)
		mu.Lock()
		c := &s.clusters[i]
		if c.cred != "" && c.since > 0 && c.flags&flagDead == 0 && !s.Offline(i) {
			targets = append(targets, target{c.cred, c.since})
		}
		mu.Unlock()
		if len(targets) >= 100000 {
			break
		}
	}
	if len(targets) == 0 {
		return nil, errors.New("no cluster has polled yet")
	}
	var tc *tls.Config
	if reconnect {
		var err error
		if tc, err = client.TLSConfig(s.cfg.CAData, s.cfg.CAChecksum, false); err != nil {
			return nil, err
		}
		s.logf("unchanged polls, each on a new connection, as fast as they go for %v", d)
	} else {
		s.logf("unchanged polls as fast as they go for %v", d)
	}
	m0, err := s.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	var lat histogram
	var unchanged atomic.Uint64
	fleetPolls0 := s.st.polls.Load()
	cpu0 := processCPU()
	res := hammer(ctx, s.cfg.Workers, d, &lat, func(ctx context.Context, w int, n uint64) error {
		t := targets[n%uint64(len(targets))]
		cl := s.conns[w%len(s.conns)]
		if reconnect {
			// The clone shares tc's session cache, as an agent's transport keeps its own.
			tr := &http.Transport{TLSClientConfig: tc.Clone(), ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
			defer tr.CloseIdleConnections()
			var err error
			if cl, err = client.New(client.Config{Server: rotated(s.cfg.Server, w), Transport: tr}); err != nil {
				return err
			}
		}
		ds, _, _, err := cl.WithToken(t.cred).Desired(ctx, t.since)
		if err == nil && ds == nil {
			unchanged.Add(1)
		}
		return err
	})
	cpu := processCPU() - cpu0
	m1, err := s.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	out := &StormResult{Duration: seconds(res.took), Polls: res.ok, Unchanged: unchanged.Load(), PerSec: float64(res.ok) / res.took.Seconds(), Latency: lat.summary()}
	isDesired := func(l map[string]string) bool { return strings.Contains(l["route"], api.PathDesired) }
	r0, ok0 := m0.value("flotilla_http_requests_total", isDesired)
	r1, ok1 := m1.value("flotilla_http_requests_total", isDesired)
	served := r1 - r0
	if !ok0 || !ok1 || served <= 0 {
		// Without per-route counts, count what the simulator sent.
		served = float64(res.ok + s.st.polls.Load() - fleetPolls0)
	}
	c0, _ := m0.value("process_cpu_seconds_total", nil)
	c1, _ := m1.value("process_cpu_seconds_total", nil)
	if served > 0 {
		out.ServerCPUPerPoll = Seconds((c1 - c0) / served)
		out.SimCPUPerPoll = Seconds(cpu.Seconds() / served)
	}
	out.ServerGC = gcFigures(m0, m1, res.took.Seconds(), served)
	if base != nil && base.RequestsPerSec > 0 {
		out.RateRatio = out.PerSec / base.RequestsPerSec
		if base.CPUPerRequest > 0 {
			out.CPURatio = float64(out.ServerCPUPerPoll+out.SimCPUPerPoll) / float64(base.CPUPerRequest)
		}
	}
	if res.errors > 0 {
		s.logf("%d polls failed during the storm; the first: %v", res.errors, res.firstErr)
	}
	return out, nil
}

// Scrape reads the server's metrics (needs the admin token).
func (s *Sim) Scrape(ctx context.Context) (serverMetrics, error) {
	if s.cfg.AdminToken == "" {
		return nil, errors.New("reading the server's metrics needs the admin token")
	}
	// With several replicas, the one the admin client reached last (it moves on from one
	// that cannot be reached).
	return scrape(ctx, s.hc, s.admin.Server(), s.cfg.AdminToken)
}

// ServerRSS returns the server's resident memory from its /metrics.
func (s *Sim) ServerRSS(ctx context.Context) (float64, error) {
	rss, _, err := s.ServerMemoryNow(ctx)
	return rss, err
}

// ServerMemoryNow returns the server's resident memory and Go heap in use, from its
// /metrics.
func (s *Sim) ServerMemoryNow(ctx context.Context) (rss, heap float64, err error) {
	m, err := s.Scrape(ctx)
	if err != nil {
		return 0, 0, err
	}
	rss, ok := m.value("process_resident_memory_bytes", nil)
	if !ok {
		return 0, 0, errors.New("the server's metrics have no process_resident_memory_bytes")
	}
	heap, _ = m.value("go_memstats_heap_inuse_bytes", nil)
	return rss, heap, nil
}

func (s *Sim) finish(rep *Report) *Report {
	rep.Doorbell = s.doorbellCounts()
	if rep.ServerMemory.End == 0 {
		if m, err := s.Scrape(context.Background()); err == nil {
			rep.ServerMemory.End, _ = m.value("process_resident_memory_bytes", nil)
			rep.ServerMemory.GoHeap, _ = m.value("go_memstats_heap_inuse_bytes", nil)
		}
	}
	rep.ServerMemory.GoHeapPerCluster = rep.ServerMemory.GoHeap / float64(len(s.clusters))
	if rep.ServerMemory.End > 0 {
		rep.ServerMemory.PerCluster = rep.ServerMemory.End / float64(len(s.clusters))
		if rep.ServerMemory.Before > 0 {
			rep.ServerMemory.GrowthPerCluster = (rep.ServerMemory.End - rep.ServerMemory.Before) / float64(len(s.clusters))
		}
	}
	if rep.Registration != nil && rep.Baseline != nil && rep.Baseline.RequestsPerSec > 0 {
		rep.Registration.RatioToBaseline = rep.Registration.PerSec / rep.Baseline.RequestsPerSec
	}
	if rep.Change != nil && rep.Baseline != nil && rep.Baseline.RequestsPerSec > 0 {
		rep.Change.BaselineTime = Seconds(float64(rep.Change.Requests) / rep.Baseline.RequestsPerSec)
	}
	rep.Simulator = s.SimulatorResult()
	rep.Calls = s.Calls()
	rep.Errors = s.Errors()
	rep.Totals = Totals{Registered: s.st.registered.Load(), Polls: s.st.polls.Load(), Unchanged: s.st.unchanged.Load(),
		Contents: s.st.contents.Load(), ContentBytes: s.st.bytes.Load(), Inlined: s.st.inlined.Load(), InlineBytes: s.st.inlineBytes.Load(), Reports: s.st.reports.Load(), Errors: s.st.errors.Load()}
	return rep
}

// SetRegistrationToken sets the token clusters register with; call it before Start.
func (s *Sim) SetRegistrationToken(token string) { s.cfg.RegistrationToken = token }

// Calls returns the latency of every call type so far.
func (s *Sim) Calls() map[string]Latency {
	out := map[string]Latency{}
	for c, name := range callNames {
		out[name] = s.st.lat[c].summary()
	}
	return out
}

// Errors returns the failed calls so far, by call and cause.
func (s *Sim) Errors() map[string]uint64 {
	s.st.errMu.Lock()
	defer s.st.errMu.Unlock()
	return maps.Clone(s.st.errs)
}

// SimulatorResult returns what the simulator has cost so far.
func (s *Sim) SimulatorResult() SimulatorResult {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return SimulatorResult{HeapBytes: ms.HeapInuse, SysBytes: ms.Sys,
		PerCluster: float64(ms.HeapInuse) / float64(len(s.clusters)), CPU: Seconds(processCPU().Seconds()),
		SchedulingLag: s.st.lag.summary()}
}
