package bundle

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Budget bounds one Render: what a repository's author can make the renderer spend. Kustomize and
// Helm take no context, so the budget is enforced where the renderer calls back into Flotilla:
// every file Kustomize reads goes through a counting filesystem, and Helm templates run in
// Flotilla's copy of Helm's engine, whose writer, functions and loops check the budget (see
// package helmtpl). A render over its budget stops at the next such check with a *BudgetError.
type Budget struct {
	// Time is how long one render may run.
	Time time.Duration
	// MaxBytes bounds the bytes a render reads and produces: YAML parsed, template output
	// (includes counted where they are made), files Kustomize reads (a base once per reference)
	// and any single value a template function makes.
	MaxBytes int64
	// MaxObjects bounds the objects a render produces, and the files and documents Kustomize
	// reads (a base once per reference), which bounds the size of its resource graph.
	MaxObjects int
}

// Names of the server's and `flotilla render`'s flags that raise each budget; errors name them.
const (
	FlagRenderTimeout    = "--render-timeout"
	FlagRenderMaxBytes   = "--render-max-bytes"
	FlagRenderMaxObjects = "--render-max-objects"
)

// DefaultBudget bounds a render well above what real bundles need. 30 s is some 30 times what
// the largest public charts take here; 64 MiB of YAML is the largest bundle content allowed
// (DefaultLimits) read once; 10,000 objects is more than any single application should ship
// to one cluster, and about 20 MB of objects held in memory.
func DefaultBudget() Budget {
	return Budget{Time: 30 * time.Second, MaxBytes: 64 << 20, MaxObjects: 10_000}
}

// withDefaults fills the budget's zero fields from DefaultBudget.
func (b Budget) withDefaults() Budget {
	d := DefaultBudget()
	if b.Time <= 0 {
		b.Time = d.Time
	}
	if b.MaxBytes <= 0 {
		b.MaxBytes = d.MaxBytes
	}
	if b.MaxObjects <= 0 {
		b.MaxObjects = d.MaxObjects
	}
	return b
}

type budgetKey struct{}

// WithBudget returns a context whose renders (Render, RenderDir) use budget b; its zero fields
// take their default. Without it, renders use DefaultBudget.
func WithBudget(ctx context.Context, b Budget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b.withDefaults())
}

// BudgetFrom returns the budget renders under ctx use.
func BudgetFrom(ctx context.Context) Budget {
	if b, ok := ctx.Value(budgetKey{}).(Budget); ok {
		return b
	}
	return DefaultBudget()
}

// ErrBudgetExceeded is wrapped by every *BudgetError.
var ErrBudgetExceeded = errors.New("render budget exceeded")

// BudgetError says which budget a render overran, and how to raise it.
type BudgetError struct {
	// Budget is "time", "bytes" or "objects".
	Budget string
	// Limit is the budget's value, as a person would write it ("30s", "67108864 bytes").
	Limit string
	// Flag is the flag that raises it.
	Flag string
	// What says what overran ("template output", "files read by kustomize"…), if known.
	What string
}

func (e *BudgetError) Error() string {
	what := ""
	if e.What != "" {
		what = " (" + e.What + ")"
	}
	return fmt.Sprintf("%s: %s budget of %s%s; raise it with %s", ErrBudgetExceeded, e.Budget, e.Limit, what, e.Flag)
}

func (e *BudgetError) Unwrap() error { return ErrBudgetExceeded }

// rendersInFlight counts renders running in this process (see RendersInFlight).
var rendersInFlight atomic.Int64

// RendersInFlight reports how many renders are running in this process now: a render that was
// cancelled has returned, so it is no longer counted.
func RendersInFlight() int64 { return rendersInFlight.Load() }

// meter enforces a Budget during one render. Every check is cheap (an atomic add and a
// non-blocking channel receive), so it is called at every step a hostile input can repeat.
// The first overrun is sticky: later checks return the same error, so callers that lose an
// error (a library's recover) still end with it.
type meter struct {
	budget  Budget
	done    <-chan struct{}
	cause   func() error
	bytes   atomic.Int64
	objects atomic.Int64
	// steps counts checks made: loop iterations, function calls and reads. Tests use it to see
	// that a cancelled render no longer runs.
	steps atomic.Int64

	err atomic.Pointer[errBox]
}

type errBox struct{ err error }

// startMeter starts a render's meter under ctx's budget; stop releases it.
func startMeter(ctx context.Context) (*meter, context.Context, func()) {
	b := BudgetFrom(ctx)
	ctx, cancel := context.WithTimeoutCause(ctx, b.Time, &BudgetError{Budget: "time", Limit: b.Time.String(), Flag: FlagRenderTimeout})
	m := &meter{budget: b, done: ctx.Done(), cause: func() error { return context.Cause(ctx) }}
	rendersInFlight.Add(1)
	return m, ctx, func() {
		cancel()
		rendersInFlight.Add(-1)
	}
}

// fail records err as the render's error unless one is recorded already, and returns the
// recorded one.
func (m *meter) fail(err error) error {
	m.err.CompareAndSwap(nil, &errBox{err})
	return m.err.Load().err
}

// recorded is the render's first overrun, if any.
func (m *meter) recorded() error {
	if b := m.err.Load(); b != nil {
		return b.err
	}
	return nil
}

// Step is one unit of work that an input can make a renderer repeat. It fails once the render's
// time is up or its context is cancelled.
func (m *meter) Step() error {
	if m == nil {
		return nil
	}
	m.steps.Add(1)
	if err := m.recorded(); err != nil {
		return err
	}
	select {
	case <-m.done:
		err := m.cause()
		if err == nil {
			err = context.Canceled
		}
		return m.fail(err)
	default:
		return nil
	}
}

// Wrote accounts for n bytes read or produced by the render.
func (m *meter) Wrote(n int, what string) error {
	if m == nil {
		return nil
	}
	if err := m.Step(); err != nil {
		return err
	}
	if m.bytes.Add(int64(n)) > m.budget.MaxBytes {
		return m.fail(m.bytesError(what))
	}
	return nil
}

// Alloc checks that one value of n bytes (a template function's result) fits the byte budget.
func (m *meter) Alloc(n int64, what string) error {
	if m == nil {
		return nil
	}
	if n > m.budget.MaxBytes {
		return m.fail(m.bytesError(what))
	}
	return nil
}

// Objects accounts for n objects (or, for Kustomize, files and documents read).
func (m *meter) Objects(n int, what string) error {
	if m == nil {
		return nil
	}
	if err := m.Step(); err != nil {
		return err
	}
	if m.objects.Add(int64(n)) > int64(m.budget.MaxObjects) {
		return m.fail(&BudgetError{Budget: "objects", Limit: fmt.Sprintf("%d objects", m.budget.MaxObjects), Flag: FlagRenderMaxObjects, What: what})
	}
	return nil
}

// checkObjects checks a count of objects held at once against the object budget, without
// adding it to the render's total.
func (m *meter) checkObjects(n int, what string) error {
	if m == nil || n <= m.budget.MaxObjects {
		return nil
	}
	return m.fail(&BudgetError{Budget: "objects", Limit: fmt.Sprintf("%d objects", m.budget.MaxObjects), Flag: FlagRenderMaxObjects, What: what})
}

func (m *meter) bytesError(what string) error {
	return &BudgetError{Budget: "bytes", Limit: fmt.Sprintf("%d bytes", m.budget.MaxBytes), Flag: FlagRenderMaxBytes, What: what}
}

// result returns the meter's recorded error if there is one, else err: a library that turned a
// budget error into its own message still reports the budget.
func (m *meter) result(err error) error {
	if m == nil || err == nil {
		return err
	}
	if rec := m.recorded(); rec != nil && !errors.Is(err, rec) {
		return rec
	}
	return err
}
