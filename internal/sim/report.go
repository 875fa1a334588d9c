package sim

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Seconds is a duration in seconds, as JSON numbers are easiest to plot.
type Seconds float64

func seconds(d time.Duration) Seconds { return Seconds(d.Seconds()) }

// Duration converts back.
func (s Seconds) Duration() time.Duration { return time.Duration(float64(s) * float64(time.Second)) }

func (s Seconds) String() string {
	d := s.Duration()
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// Report is what a run measured; it is printed as a table and written as JSON.
type Report struct {
	Server      string    `json:"server"`
	Clusters    int       `json:"clusters"`
	Connections int       `json:"connections"`
	Workers     int       `json:"workers"`
	Started     time.Time `json:"started"`

	Baseline     *BaselineResult `json:"baseline,omitempty"`
	Registration *Registration   `json:"registration,omitempty"`
	// InitialSync is from the start until every cluster made its first poll.
	InitialSync Seconds `json:"initialSync"`
	// Held is from the start until nine in ten long-polling clusters had made a long poll.
	Held    Seconds       `json:"held,omitempty"`
	Change  *ChangeResult `json:"change,omitempty"`
	Tunnels *TunnelResult `json:"tunnels,omitempty"`
	Idle    *IdleResult   `json:"idle,omitempty"`
	// ColdTunnels and PingStorm measure the doorbell: a call to a cluster with no tunnel
	// open, and the server's cost per datagram.
	ColdTunnels *ColdTunnelResult `json:"coldTunnels,omitempty"`
	PingStorm   *PingStormResult  `json:"pingStorm,omitempty"`
	Doorbell    DoorbellCounts    `json:"doorbell"`
	PollStorm   *StormResult      `json:"pollStorm,omitempty"`
	// ReconnectStorm is the same with a new connection (a resumed TLS session) per poll.
	ReconnectStorm *StormResult       `json:"reconnectStorm,omitempty"`
	ServerMemory   ServerMemory       `json:"serverMemory"`
	Simulator      SimulatorResult    `json:"simulator"`
	Calls          map[string]Latency `json:"calls"`
	Errors         map[string]uint64  `json:"errors"`
	Totals         Totals             `json:"totals"`
}

// Registration is how fast the fleet registered.
type Registration struct {
	Clusters int64   `json:"clusters"`
	Duration Seconds `json:"duration"`
	PerSec   float64 `json:"perSec"`
	// RatioToBaseline is PerSec over the bare-HTTPS request rate.
	RatioToBaseline float64 `json:"ratioToBaseline,omitempty"`
}

// ServerMemory is the server's resident memory, from its /metrics, in bytes.
type ServerMemory struct {
	Before            float64 `json:"before"`
	AfterRegistration float64 `json:"afterRegistration"`
	End               float64 `json:"end"`
	// PerCluster is End over the number of clusters; GrowthPerCluster (End-Before) over it.
	PerCluster       float64 `json:"perCluster"`
	GrowthPerCluster float64 `json:"growthPerCluster"`
	// GoHeap is the Go heap in use at the end (go_memstats_heap_inuse_bytes): RSS also
	// holds what the Go runtime has not returned and what SQLite caches outside the heap.
	GoHeap           float64 `json:"goHeap,omitempty"`
	GoHeapPerCluster float64 `json:"goHeapPerCluster,omitempty"`
}

// SimulatorResult is what the simulator itself cost.
type SimulatorResult struct {
	HeapBytes  uint64  `json:"heapBytes"`
	SysBytes   uint64  `json:"sysBytes"`
	PerCluster float64 `json:"perCluster"`
	CPU        Seconds `json:"cpu"`
	// SchedulingLag is how late clusters were run once the fleet was registered: when it
	// grows while fewer requests than workers are in flight, the simulator is the
	// bottleneck; with every worker waiting on an answer, the server is.
	SchedulingLag Latency `json:"schedulingLag"`
}

// Totals count what the fleet did.
type Totals struct {
	Registered   int64  `json:"registered"`
	Polls        uint64 `json:"polls"`
	Unchanged    uint64 `json:"unchanged"`
	Contents     uint64 `json:"contents"`
	ContentBytes uint64 `json:"contentBytes"`
	// Inlined and InlineBytes are the archives the server sent with desired states.
	Inlined     uint64 `json:"inlined"`
	InlineBytes uint64 `json:"inlineBytes"`
	Reports     uint64 `json:"reports"`
	Errors      uint64 `json:"errors"`
}

func (s *Sim) newReport() *Report {
	return &Report{Server: s.cfg.Server, Clusters: len(s.clusters), Connections: s.cfg.Connections, Workers: s.cfg.Workers, Started: s.epoch}
}

func mb(b float64) string { return fmt.Sprintf("%.1f MB", b/(1<<20)) }

func ratio(x float64) string { return strconv.FormatFloat(x, 'f', 3, 64) + "×" }

// WriteTable prints the report for people.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "flotilla sim: %d clusters against %s (%d connections, %d workers)\n\n", r.Clusters, r.Server, r.Connections, r.Workers)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var base float64
	if b := r.Baseline; b != nil {
		base = b.RequestsPerSec
		fmt.Fprintf(tw, "baseline\t%.0f req/s\tbare HTTPS, trivial handler, same machine; %v CPU per request (client+server), p50 %v\n", b.RequestsPerSec, b.CPUPerRequest, b.Latency.P50)
	}
	if g := r.Registration; g != nil {
		extra := ""
		if base > 0 {
			extra = " (" + ratio(g.RatioToBaseline) + " baseline)"
		}
		fmt.Fprintf(tw, "registration\t%d in %v\t%.0f clusters/s%s\n", g.Clusters, g.Duration, g.PerSec, extra)
		fmt.Fprintf(tw, "first poll\tall in %v\tfrom the start\n", r.InitialSync)
		if r.Held > 0 {
			fmt.Fprintf(tw, "polls held\tafter %v\tnine in ten long-polling clusters have made a long poll, from the start\n", r.Held)
		}
	}
	if c := r.Change; c != nil {
		fmt.Fprintf(tw, "bundle change\t%s\t%d targeted (%s): %d to reach, %d Ready, %d ErrApplied, %d offline\n", c.Bundle, c.Expect.Targeted, c.Selector, c.Expect.Reach, c.Expect.Ready, c.Expect.ErrApplied, c.Expect.WaitApplied)
		fmt.Fprintf(tw, "  reached all\t%v\t%d clusters, half in %v, 90%% in %v, 99%% in %v; server poll interval %v\n", c.ReachAll, c.Reached, c.Reach.P50, c.Reach.P90, c.Reach.P99, c.PollAfter)
		fmt.Fprintf(tw, "  all reported\t%v\t%d final reports acknowledged, half in %v, 90%% in %v, 99%% in %v\n", c.ReportAll, c.Reported, c.Report.P50, c.Report.P90, c.Report.P99)
		for _, g := range []struct {
			name string
			g    *ChangeGroup
		}{{"doorbell", c.Doorbell}, {"HTTPS only", c.HTTPS}} {
			if g.g != nil {
				fmt.Fprintf(tw, "  %s\t%v / %v\t%d reached, all Ready-reported in %v; reach half in %v, 99%% in %v\n", g.name, g.g.ReachAll, g.g.ReportAll, g.g.Reached, g.g.ReportAll, g.g.Reach.P50, g.g.Reach.P99)
			}
		}
		extra := ""
		if c.BaselineTime > 0 {
			extra = fmt.Sprintf("; %d requests, %v at the baseline rate", c.Requests, c.BaselineTime)
		}
		fmt.Fprintf(tw, "  server rollup\t%v\tBundle status counts every cluster%s\n", c.ServerRollup, extra)
		if c.StatusSettled > 0 {
			fmt.Fprintf(tw, "  status settled\t%v\tevery Cluster's status written, the server's queues empty\n", c.StatusSettled)
		}
		if c.TimedOut {
			fmt.Fprintf(tw, "  TIMED OUT\t\t\n")
		}
	}
	if t := r.Tunnels; t != nil {
		fmt.Fprintf(tw, "tunnels	%d in %v	kept open at once; %d tokens received, %d dropped, %d dials\n", t.Tunnels, t.OpenedIn, t.Counts.Tokens, t.Counts.Dropped, t.Counts.Dials)
		fmt.Fprintf(tw, "  server	%.0f B RSS, %.0f B heap	per tunnel; %.1f goroutines per tunnel; RSS %s → %s\n", t.ServerRSSPerTunnel, t.ServerHeapPerTunnel, t.ServerGoroutinesPerTunnel, mb(t.ServerBefore.RSS), mb(t.Server.RSS))
		fmt.Fprintf(tw, "  simulator	%.0f B heap	per tunnel; %.1f goroutines per tunnel\n", t.SimHeapPerTunnel, t.SimGoroutinesPerTunnel)
		if t.Server.IdleWindow > 0 {
			fmt.Fprintf(tw, "  idle CPU	%v	server %.1f%% of one core before, %.1f%% with the tunnels; simulator %.1f%%, %.1f%%\n", t.Server.IdleWindow,
				100*t.ServerBefore.IdleCPU, 100*t.Server.IdleCPU, 100*t.SimulatorBefore.IdleCPU, 100*t.Simulator.IdleCPU)
		}
	}
	if i := r.Idle; i != nil {
		fmt.Fprintf(tw, "idle fleet\t%v\t%.0f polls/s, %.1f reports/s; server CPU %.1f%% of one core, simulator %.1f%%\n", i.Duration, i.PollsPerSec, i.ReportsPerSec, 100*i.ServerCPU, 100*i.SimCPU)
		fmt.Fprintf(tw, "  server heap		%s\n", i.ServerGC)
		if i.DoorbellPerSec > 0 {
			fmt.Fprintf(tw, "  doorbell\t%.0f pkt/s\tdatagrams received by the server; %.0f keepalives/s sent, dropped by its socket filter\n", i.DoorbellPerSec, i.KeepAlivesPerSec)
		}
		if l := i.Late; l != nil {
			fmt.Fprintf(tw, "  second half\t%v\tserver CPU %.1f%% of one core; %.1f reports/s, %.0f pkt/s; %s\n", l.Duration, 100*l.ServerCPU, l.ReportsPerSec, l.DoorbellPerSec, l.ServerGC)
		}
	}
	if c := r.ColdTunnels; c != nil {
		fmt.Fprintf(tw, "cold tunnel\t\tfirst byte of GET /version through the proxy, no tunnel open: doorbell %v, HTTPS only %v\n", c.Doorbell, c.HTTPS)
	}
	if p := r.PingStorm; p != nil {
		// The gross figure counts the fleet's polls meanwhile too: an upper bound. The net one
		// subtracts the idle phase's CPU, and reads 0 when the fleet's noise is larger.
		var gross Seconds
		if p.Received > 0 {
			gross = Seconds(p.ServerCPU * (float64(p.Duration) + 0.2) / p.Received)
		}
		fmt.Fprintf(tw, "doorbell pings\t%.0f/s\tserver CPU %.1f%% of one core: at most %v per datagram, %v beyond the idle fleet's; %.0f received, %.0f answered, %.0f refused, %.0f over the per-source limit in %v\n",
			p.PerSec, 100*p.ServerCPU, gross, p.ServerCPUPerPacket, p.Received, p.Answered, p.Refused, p.Limited, p.Duration)
	}
	if d := r.Doorbell; d.Pings > 0 {
		fmt.Fprintf(tw, "doorbell\t%d pings\t%d answers, %d rings, %d saying changed or tunnel wanted; %d keepalives, %d acknowledgements of rings\n", d.Pings, d.Answers, d.Rings, d.Changed, d.KeepAlives, d.Acks)
	}
	for _, st := range []struct {
		name string
		p    *StormResult
	}{{"unchanged poll", r.PollStorm}, {"  on a new conn.", r.ReconnectStorm}} {
		p := st.p
		if p == nil {
			continue
		}
		extra := ""
		if p.RateRatio > 0 {
			extra = fmt.Sprintf(" (%s baseline rate; CPU %s baseline)", ratio(p.RateRatio), ratio(p.CPURatio))
		}
		fmt.Fprintf(tw, "%s\t%.0f/s%s\tCPU per poll: server %v + simulator %v; p50 %v, %d of %d unchanged\n", st.name, p.PerSec, extra, p.ServerCPUPerPoll, p.SimCPUPerPoll, p.Latency.P50, p.Unchanged, p.Polls)
		fmt.Fprintf(tw, "\t\tserver heap: %s\n", p.ServerGC)
	}
	m := r.ServerMemory
	if m.End > 0 {
		fmt.Fprintf(tw, "server RSS\t%s\tbefore %s, after registration %s; %.0f bytes per cluster (%.0f of growth)\n", mb(m.End), mb(m.Before), mb(m.AfterRegistration), m.PerCluster, m.GrowthPerCluster)
		if m.GoHeap > 0 {
			fmt.Fprintf(tw, "server Go heap\t%s\t%.0f bytes per cluster\n", mb(m.GoHeap), m.GoHeapPerCluster)
		}
	}
	sm := r.Simulator
	fmt.Fprintf(tw, "simulator\t%s heap\t%.0f bytes per cluster, %v CPU, scheduling lag p99 %v (max %v)\n", mb(float64(sm.HeapBytes)), sm.PerCluster, sm.CPU, sm.SchedulingLag.P99, sm.SchedulingLag.Max)
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "call\tcount\tp50\tp90\tp99\tmax\t")
	for _, name := range callNames {
		l := r.Calls[name]
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%v\t%v\t\n", name, l.Count, l.P50, l.P90, l.P99, l.Max)
	}
	tw.Flush()
	t := r.Totals
	fmt.Fprintf(w, "\n%d polls (%d unchanged), %d content fetches (%s), %d archives sent with the state (%s), %d status reports, %d errors\n",
		t.Polls, t.Unchanged, t.Contents, mb(float64(t.ContentBytes)), t.Inlined, mb(float64(t.InlineBytes)), t.Reports, t.Errors)
	for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
		fmt.Fprintf(w, "  %-50s %d\n", k, r.Errors[k])
	}
}

// Progress is a snapshot of the fleet's counters.
type Progress struct {
	Elapsed                                     time.Duration
	Clusters, Registered, Polled, Dead          int64
	Polls, Unchanged, Contents, Reports, Errors uint64
	InFlight                                    int64
	// Change counts the bundle changes made so far; the counts are the last one's.
	Change                        int
	ChangeReached, ChangeReported int64
}

// Progress returns the fleet's counters now.
func (s *Sim) Progress() Progress {
	p := Progress{Elapsed: time.Since(s.epoch), Clusters: int64(len(s.clusters)), Registered: s.st.registered.Load(),
		Polled: s.st.polled.Load(), Dead: s.st.dead.Load(), Polls: s.st.polls.Load(), Unchanged: s.st.unchanged.Load(),
		Contents: s.st.contents.Load(), Reports: s.st.reports.Load(), Errors: s.st.errors.Load(), InFlight: s.st.inflight.Load()}
	if ch := s.change.Load(); ch != nil {
		p.Change, p.ChangeReached, p.ChangeReported = int(ch.gen), ch.reached.Load(), ch.done.Load()
	}
	return p
}

func (s *Sim) progressLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProgressInterval)
	defer t.Stop()
	last, lastAt := s.Progress(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p, now := s.Progress(), time.Now()
		dt := now.Sub(lastAt).Seconds()
		rate := func(a, b uint64) float64 { return float64(a-b) / dt }
		var b strings.Builder
		fmt.Fprintf(&b, "[%6.1fs] registered %d/%d (%.0f/s)", p.Elapsed.Seconds(), p.Registered, p.Clusters, float64(p.Registered-last.Registered)/dt)
		polls := p.Polls - last.Polls
		unchangedPct := 0.0
		if polls > 0 {
			unchangedPct = 100 * float64(p.Unchanged-last.Unchanged) / float64(polls)
		}
		fmt.Fprintf(&b, " · polls %.0f/s (%.0f%% unchanged) · content %.0f/s · reports %.0f/s", rate(p.Polls, last.Polls), unchangedPct, rate(p.Contents, last.Contents), rate(p.Reports, last.Reports))
		if ch := s.change.Load(); ch != nil {
			fmt.Fprintf(&b, " · change reached %d, reported %d", p.ChangeReached, p.ChangeReported)
		}
		if s.cfg.LongPoll > 0 {
			fmt.Fprintf(&b, " · long polls held %d", s.st.longPolls.Load())
		}
		if tc := s.TunnelCounts(); tc.Tokens > 0 {
			fmt.Fprintf(&b, " · tunnels open %d", tc.Open)
		}
		fmt.Fprintf(&b, " · errors %d · in flight %d · lag p99 %v\n", p.Errors, p.InFlight, s.st.lag.summary().P99)
		io.WriteString(s.cfg.Progress, b.String())
		last, lastAt = p, now
	}
}
