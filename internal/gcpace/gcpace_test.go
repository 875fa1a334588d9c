package gcpace

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

// These tests drive the real collector; they change process-wide settings and restore them,
// so none runs in parallel.

var (
	sink []byte
	// kept is the live set: a global, so that the compiler cannot end its life early.
	kept [][]byte
)

// churn allocates n bytes of garbage in 64 KB pieces.
func churn(n int) {
	for range n >> 16 {
		sink = make([]byte, 64<<10)
	}
	sink = nil
}

// hold adds n bytes to the live set.
func hold(n int) {
	for range n >> 16 {
		kept = append(kept, make([]byte, 64<<10))
	}
}

// goalRatio is the heap goal over the live heap once a collection has set both and the pacer
// has moved its limit after it.
func goalRatio(t *testing.T) float64 {
	t.Helper()
	var r float64
	n := numGC()
	waitFor(t, "a collection's cleanup", func() bool {
		r = float64(read("/gc/heap/goal:bytes")) / float64(read("/gc/heap/live:bytes"))
		return numGC() > n+1
	})
	return r
}

func numGC() uint32 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.NumGC
}

func read(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func currentLimit() int64 { return debug.SetMemoryLimit(-1) }

// waitFor waits until ok, collecting meanwhile: the pacer moves the limit in a cleanup that
// runs after a collection, on the runtime's cleanup goroutine.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPacesAsGOGC runs the same allocation under GOGC=50 and under the pacer at 50: the
// pacer must collect about as often and to the same heap goal, with GOGC off (so that the
// runtime forces no collection every two minutes), and follow the live heap as it grows.
func TestPacesAsGOGC(t *testing.T) {
	const live, garbage = 128 << 20, 3 << 30
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func() { kept = nil }()
	hold(live)
	runtime.GC()

	debug.SetGCPercent(50)
	before := numGC()
	churn(garbage)
	gogcRuns := numGC() - before

	stop := Start(Config{Percent: 50})
	defer stop()
	if p := debug.SetGCPercent(-1); p != -1 {
		t.Fatalf("GOGC is %d while the pacer runs, want off (-1): the runtime would force collections", p)
	}
	runtime.GC()
	waitFor(t, "a limit set from the live heap", func() bool { return currentLimit() < math.MaxInt64 })
	before = numGC()
	churn(garbage)
	paceRuns := numGC() - before
	ratio := goalRatio(t)
	t.Logf("garbage %d MB over %d MB live: GOGC=50 %d collections, the pacer at 50 %d; its goal %.2f× the live heap",
		garbage>>20, live>>20, gogcRuns, paceRuns, ratio)
	if r := float64(paceRuns) / float64(gogcRuns); r < 0.6 || r > 1.7 {
		t.Errorf("the pacer collected %d times where GOGC=50 collected %d", paceRuns, gogcRuns)
	}
	if ratio < 1.3 || ratio > 1.7 {
		t.Errorf("the pacer's heap goal is %.2f× the live heap, want ~1.5× (GOGC=50)", ratio)
	}

	// The live heap doubles: the goal follows it.
	hold(live)
	ratio = goalRatio(t)
	t.Logf("live heap doubled: goal %.2f× the live heap", ratio)
	if ratio < 1.3 || ratio > 1.7 {
		t.Errorf("with the live heap doubled the goal is %.2f× it, want ~1.5×", ratio)
	}

	// And shrinks: the limit comes down with it, so the free heap is given back.
	high := currentLimit()
	kept = nil
	waitFor(t, "the limit to come down with the live heap", func() bool { return currentLimit() < high/2 })
}

// TestAtLeast raises the pacer's percent for a while (a load), and GOGC's when the pacer
// does not run.
func TestAtLeast(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(70))
	defer func() { kept = nil }()
	hold(256 << 20)
	stop := Start(Config{Percent: 50})
	goalRatio(t) // a limit from the live heap held
	base := currentLimit()
	restore := AtLeast(800)
	raised := currentLimit()
	if float64(raised) < 4*float64(base) {
		t.Errorf("AtLeast(800) moved the limit from %d MB to %d MB, want ~6× higher", base>>20, raised>>20)
	}
	restore()
	if back := currentLimit(); float64(back) > 1.2*float64(base) {
		t.Errorf("after the restore the limit is %d MB, want back near %d MB", back>>20, base>>20)
	}
	stop()
	if l := currentLimit(); l != math.MaxInt64 {
		t.Errorf("stop left a memory limit of %d", l)
	}
	if p := debug.SetGCPercent(100); p != 70 {
		t.Errorf("stop left GOGC at %d, want the 70 from before Start", p)
	}

	debug.SetGCPercent(50)
	restore = AtLeast(800)
	if p := debug.SetGCPercent(800); p != 800 {
		t.Errorf("without the pacer AtLeast(800) left GOGC at %d", p)
	}
	restore()
	if p := debug.SetGCPercent(50); p != 50 {
		t.Errorf("the restore left GOGC at %d, want 50", p)
	}
	debug.SetGCPercent(-1)
	AtLeast(800)()
	if p := debug.SetGCPercent(100); p != -1 {
		t.Errorf("AtLeast turned GOGC on (%d) where it was off", p)
	}
}

// TestRoom: room for a gigabyte more than the heap holds puts the next collection past that
// gigabyte, and no collection comes while it is allocated; the restore takes the room back.
func TestRoom(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func() { kept = nil }()
	hold(64 << 20)
	stop := Start(Config{Percent: 25})
	defer stop()
	goalRatio(t)
	base := currentLimit()
	restore := Room(1 << 30)
	if l, want := currentLimit(), int64(read("/memory/classes/heap/objects:bytes")+1<<30); l < want {
		t.Fatalf("Room(1 GB) set a limit of %d MB, want at least %d MB", l>>20, want>>20)
	}
	n := numGC()
	churn(700 << 20)
	if c := numGC() - n; c != 0 {
		t.Errorf("%d collections while 700 MB were allocated in a room of 1 GB", c)
	}
	restore()
	if l := currentLimit(); float64(l) > 1.2*float64(base) {
		t.Errorf("after the restore the limit is %d MB, want back near %d MB", l>>20, base>>20)
	}
}

func TestAdapt(t *testing.T) {
	cfg := Config{Percent: 25, MaxPercent: 100, CPUShare: 0.05}
	for _, c := range []struct {
		p, share, want float64
	}{
		{25, 0.01, 25},   // cheap: stays at the floor
		{25, 0.05, 25},   // on budget
		{25, 0.20, 50},   // 4× over: half way (geometrically) to 100
		{50, 0.10, 70.7}, // 2× over
		{25, 2, 100},     // capped
		{100, 0, 25},     // idle: straight back down
		{80, 0.0125, 40}, // a quarter of the budget: half way to 20, floored at 25 later
	} {
		if got := adapt(c.p, c.share, cfg); math.Abs(got-c.want) > 0.1 {
			t.Errorf("adapt(%v, %v) = %.1f, want %.1f", c.p, c.share, got, c.want)
		}
	}
	if got := adapt(80, 1, Config{Percent: 50}); got != 50 {
		t.Errorf("without a MaxPercent the percent is %v, want 50", got)
	}
}

// TestRisesAndFalls: under heavy allocation the percent rises off its floor, and once the
// collections are cheap again it comes back.
func TestRisesAndFalls(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func() { kept = nil }()
	hold(64 << 20)
	stop := Start(Config{Percent: 25, MaxPercent: 400, CPUShare: 0.05})
	defer stop()
	churn(2 << 30)
	busy := Percent()
	t.Logf("after 2 GB of garbage over 64 MB live: %d%%", busy)
	if busy <= 25 {
		t.Errorf("the percent stayed at %d%% while collections ran back to back", busy)
	}
	time.Sleep(2 * time.Second)
	runtime.GC()
	waitFor(t, "the percent to come back down", func() bool { return Percent() < busy })
	t.Logf("after 2 s without garbage: %d%%", Percent())
}

// TestStepsDownWhenIdle: after heavy allocation has raised the percent, a process that stops
// allocating (so collects no more) still comes back to the floor, with a collection or two at
// most, where the percent would otherwise wait for the next collection, however far off.
func TestStepsDownWhenIdle(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func() { kept = nil }()
	defer func(d time.Duration) { stepEvery = d }(stepEvery)
	stepEvery = 20 * time.Millisecond
	hold(64 << 20)
	stop := Start(Config{Percent: 25, MaxPercent: 400, CPUShare: 0.05})
	defer stop()
	churn(2 << 30)
	busy := Percent()
	if busy <= 25 {
		t.Fatalf("the percent stayed at %d%% under heavy allocation", busy)
	}
	// The stepper lowers it on its own, without a collection. How long it takes to come all
	// the way down grows with the last collection's cost and percent (up to ~50 s here), so
	// the test waits only for a first step and then asks as the stepper would an hour on.
	deadline := time.Now().Add(30 * time.Second)
	for Percent() >= busy {
		if time.Now().After(deadline) {
			t.Fatalf("the percent stayed at %d%% (from %d%%) for 30 s without garbage", Percent(), busy)
		}
		time.Sleep(10 * time.Millisecond)
	}
	n := numGC()
	pace.mu.Lock()
	gen := pace.gen
	pace.mu.Unlock()
	stepDown(gen, time.Now().Add(time.Hour))
	if p := Percent(); p != 25 {
		t.Fatalf("the percent is %d%% an hour after the last collection, want 25", p)
	}
	// The lower limit may start a collection at once, which hands the garbage back; no more.
	time.Sleep(200 * time.Millisecond)
	if c := numGC() - n; c > 2 {
		t.Errorf("%d collections while stepping down from %d%%, want at most 2", c, busy)
	}
	t.Logf("from %d%% to 25%% with %d collections", busy, numGC()-n)
}

// TestStopTwice: a pacer's stop called again, after a later Start, neither panics nor stops
// the later pacer.
func TestStopTwice(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := Start(Config{Percent: 25})
	stop()
	stop2 := Start(Config{Percent: 30})
	defer stop2()
	stop()
	if p := Percent(); p != 30 {
		t.Fatalf("the later pacer paces at %d%% after the first one's stop was called again, want 30", p)
	}
}
