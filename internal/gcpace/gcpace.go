// Package gcpace paces the server's garbage collector as GOGC does — a collection once the
// heap has grown by a percentage of what the last one left live — but without the collection
// the Go runtime forces every two minutes whatever the heap did.
//
// At a million clusters the fleet model is ~700 MB of live heap, and every collection marks
// all of it: ~2.5 s of CPU. An idle fleet allocates so little that most of its collections
// were the forced ones, a few percent of a core for nothing (docs/benchmarks.md). The runtime
// forces none while GOGC is off; a soft memory limit (debug.SetMemoryLimit), moved after each
// collection to the heap goal that GOGC would have set, then starts the next collection where
// GOGC would have started it.
//
// The package holds process-wide state: one pacer per process, as there is one collector.
package gcpace

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// minGoal is the least heap goal, as the runtime's own 4 MB floor under GOGC, larger: below
// it a small server would collect for every few requests.
const minGoal = 64 << 20

// headroom is the share of the memory limit the runtime keeps unused below it when the limit
// sets the heap goal (memoryLimitHeapGoalHeadroomPercent in runtime/mgcpacer.go: 3%), so the
// limit is set that much above the goal wanted.
const headroom = 0.03

// Config says how the pacer paces.
type Config struct {
	// Percent is the GOGC paced as: the heap grows by this share of what the last collection
	// left live before the next one starts. The least it paces at when MaxPercent is higher.
	Percent int
	// MaxPercent, when above Percent, is how far the percent may rise while collections take
	// more than CPUShare of a core: when the fleet is busy its allocation would otherwise
	// make a low percent collect the whole model every few seconds. It comes back down as
	// collections get cheaper.
	MaxPercent int
	// CPUShare is the share of one core that collections may take before the percent rises.
	CPUShare float64
}

var pace struct {
	mu      sync.Mutex
	on      bool
	gen     int // which Start the re-armed sentinels belong to
	cfg     Config
	percent float64 // the GOGC paced as now
	raised  []int
	gogc    int   // before Start
	limit   int64 // before Start
	// when, and the runtime's count of CPU seconds spent collecting then, at the last
	// collection's cleanup
	lastAt  time.Time
	lastCPU float64
	// lastCost is the CPU seconds collecting between the last two cleanups (the last
	// collection's cost), atGC the percent set then; stepDown lowers the percent from them.
	lastCost float64
	atGC     float64
}

// stepEvery is how often the pacer looks whether collections have become rare (stepDown).
// A variable for tests.
var stepEvery = 15 * time.Second

// Start turns the runtime's GOGC off and paces collections as cfg says, until stop. It does
// nothing (and stop does nothing) when the pacer already runs or cfg.Percent is not positive.
func Start(cfg Config) (stop func()) {
	pace.mu.Lock()
	defer pace.mu.Unlock()
	if pace.on || cfg.Percent <= 0 {
		return func() {}
	}
	cfg.MaxPercent = max(cfg.MaxPercent, cfg.Percent)
	pace.on = true
	pace.gen++
	pace.cfg = cfg
	pace.percent = float64(cfg.Percent)
	pace.raised = nil
	pace.lastAt, pace.lastCPU = time.Now(), gcCPU()
	pace.lastCost, pace.atGC = 0, pace.percent
	pace.gogc = debug.SetGCPercent(-1)
	pace.limit = debug.SetMemoryLimit(-1)
	tuneLocked()
	arm(pace.gen)
	gen, done := pace.gen, make(chan struct{})
	go stepper(gen, done)
	return func() {
		pace.mu.Lock()
		defer pace.mu.Unlock()
		// A stop called twice, or after a later Start, leaves that pacer alone.
		if !pace.on || pace.gen != gen {
			return
		}
		pace.on = false
		close(done)
		debug.SetMemoryLimit(pace.limit)
		debug.SetGCPercent(pace.gogc)
	}
}

// Percent is the percent the pacer paces at now (0 when it does not run).
func Percent() int {
	pace.mu.Lock()
	defer pace.mu.Unlock()
	if !pace.on {
		return 0
	}
	return int(pace.percent + 0.5)
}

// adapt returns the percent to pace at after a period in which collections took share of a
// core at percent p. Collections per second go as 1/percent for a given allocation rate,
// each marking the same live heap, so share × percent is about constant: p × share / CPUShare
// would meet the budget exactly. The step goes half way there (geometrically), so that one
// unusual period does not swing it fully.
func adapt(p, share float64, cfg Config) float64 {
	if cfg.MaxPercent <= cfg.Percent || cfg.CPUShare <= 0 {
		return float64(cfg.Percent)
	}
	p = math.Sqrt(p * p * share / cfg.CPUShare)
	return min(max(p, float64(cfg.Percent)), float64(cfg.MaxPercent))
}

// AtLeast raises the collector's percent to at least p until restore is called: the pacer's
// when it runs, else GOGC itself (unless GOGC is off). A load that builds a large live heap
// from nothing uses it to collect a few times instead of at every 1.5× of growth.
func AtLeast(p int) (restore func()) {
	pace.mu.Lock()
	defer pace.mu.Unlock()
	if !pace.on {
		old := debug.SetGCPercent(p)
		if old < 0 || old >= p {
			debug.SetGCPercent(old) // off, or already as high
			return func() {}
		}
		return func() { debug.SetGCPercent(old) }
	}
	pace.raised = append(pace.raised, p)
	tuneLocked()
	gen := pace.gen
	return func() {
		pace.mu.Lock()
		defer pace.mu.Unlock()
		if gen != pace.gen {
			return
		}
		if i := indexOf(pace.raised, p); i >= 0 {
			pace.raised = append(pace.raised[:i], pace.raised[i+1:]...)
		}
		tuneLocked()
	}
}

// Room raises the percent as AtLeast does, to where the heap may grow by extra bytes over
// what it holds now before the next collection starts. A load that knows about how much it
// will allocate then collects none of it while it builds, instead of marking its growing
// live heap halfway (at 1M clusters that was a collection of seconds of CPU inside the
// load); its caller collects the garbage once afterwards.
func Room(extra uint64) (restore func()) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	var live, inUse uint64
	if s[0].Value.Kind() == metrics.KindUint64 {
		live = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		inUse = s[1].Value.Uint64()
	}
	// The goal is the live heap and the percent of it more (see tuneLocked).
	live = max(live, 1<<20)
	p := 100*(float64(inUse)+float64(extra))/float64(live) - 100
	return AtLeast(int(min(max(p, 0), 1e7)))
}

func indexOf(s []int, v int) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// arm leaves a sentinel for the next collection to find unreachable: its cleanup, run after
// that collection, sets the next limit and arms again.
func arm(gen int) {
	s := new(sentinel)
	runtime.AddCleanup(s, collected, gen)
}

// sentinel is an object with nothing in it but its address; 16 bytes, so that it is not a
// tiny allocation sharing a block (and a lifetime) with others.
type sentinel [2]uint64

func collected(gen int) {
	pace.mu.Lock()
	defer pace.mu.Unlock()
	if !pace.on || gen != pace.gen {
		return
	}
	now, cpu := time.Now(), gcCPU()
	if wall := now.Sub(pace.lastAt).Seconds(); wall > 0 {
		pace.percent = adapt(pace.percent, (cpu-pace.lastCPU)/wall, pace.cfg)
	}
	pace.lastCost = cpu - pace.lastCPU
	pace.lastAt, pace.lastCPU, pace.atGC = now, cpu, pace.percent
	tuneLocked()
	arm(gen)
}

// stepper runs stepDown every stepEvery until done is closed.
func stepper(gen int, done chan struct{}) {
	t := time.NewTicker(stepEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			stepDown(gen, time.Now())
		}
	}
}

// stepDown lowers the percent while no collection comes. The percent adapts after each
// collection, but a server gone idle after a busy hour collects rarely: it would keep the
// busy hour's percent, and the heap that goes with it, for many minutes (at 1M clusters a
// percent of 50 held ~1.65 GB of RSS at idle where 25 held ~1.2 GB). Were a collection to
// come now, it would have cost the last one's CPU over the whole time since: that share
// gives the percent, which only ever falls here. When it does, the lower limit may start a
// collection at once, which hands the garbage back.
func stepDown(gen int, now time.Time) {
	pace.mu.Lock()
	defer pace.mu.Unlock()
	if !pace.on || gen != pace.gen {
		return
	}
	wall := now.Sub(pace.lastAt).Seconds()
	if wall <= 0 {
		return
	}
	if p := adapt(pace.atGC, pace.lastCost/wall, pace.cfg); p < pace.percent-0.5 {
		pace.percent = p
		tuneLocked()
	}
}

var names = [...]string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/objects:bytes",
}

// gcCPU is the runtime's estimate of the CPU seconds spent collecting so far.
func gcCPU() float64 {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return s[0].Value.Float64()
}

// tuneLocked sets the memory limit to what the runtime holds besides the heap, plus the heap
// goal: the last collection's live heap and percent of it more.
func tuneLocked() {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	live, total, released, free, objects := v(0), v(1), v(2), v(3), v(4)
	// What the memory limit counts besides the heap's objects: stacks, the runtime's metadata,
	// the unused ends of the heap's spans. The runtime takes the goal from the limit less the
	// same (memoryLimitHeapGoal).
	var other uint64
	if heap := released + free + objects; total > heap {
		other = total - heap
	}
	p := pace.percent
	for _, r := range pace.raised {
		p = max(p, float64(r))
	}
	goal := max(float64(live)*(1+p/100), minGoal)
	limit := float64(other) + goal/(1-headroom)
	if limit >= math.MaxInt64 {
		limit = math.MaxInt64
	}
	debug.SetMemoryLimit(int64(limit))
}
