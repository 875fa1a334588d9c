package linearize

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// History records requests as clients make them. Safe for concurrent use.
type History struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

// NewHistory starts an empty history; times are measured from now on the monotonic clock.
func NewHistory() *History { return &History{start: time.Now()} }

// Now is the time to give Add as a request's call time.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Add records a request made at call (from Now) that has just returned out.
func (h *History) Add(client int, in Input, call int64, out Output) {
	ret := h.Now()
	if out.Outcome == Unknown {
		if in.Kind == Get {
			return // a read that may not have happened tells nothing
		}
		ret = math.MaxInt64
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

// Operations returns what was recorded so far.
func (h *History) Operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// Result is what Check found.
type Result struct {
	OK bool
	// Problems are the findings, each with the requests that prove it.
	Problems []string
	// Visualization is porcupine's HTML view of the history, written when the history is not
	// linearizable.
	Visualization string
	Operations    int
	Unknown       int
}

func (r *Result) String() string {
	if r.OK {
		return fmt.Sprintf("linearizable: %d requests (%d of unknown outcome)", r.Operations, r.Unknown)
	}
	s := fmt.Sprintf("NOT linearizable (%d requests, %d of unknown outcome):\n%s", r.Operations, r.Unknown, strings.Join(r.Problems, "\n"))
	if r.Visualization != "" {
		s += "\nvisualization: " + r.Visualization
	}
	return s
}

// Check checks ops against Model. observed holds every value seen anywhere (reads, watch
// events): a write of unknown outcome whose value nobody saw did not happen, given the
// watches are complete (CheckWatches), and is dropped, which keeps the search small. dir is
// where the visualization goes. timeout bounds porcupine's search (0: none); a search that
// runs out of time is reported as a problem.
func Check(ops []porcupine.Operation, observed map[string]bool, dir string, timeout time.Duration) *Result {
	res := &Result{OK: true}
	var kept []porcupine.Operation
	rvOf := map[string]string{}    // value -> rv
	valueOf := map[string]string{} // key/rv -> value
	note := func(key, value, rv string, op porcupine.Operation) {
		if value == "" || rv == "" {
			return
		}
		if old, ok := rvOf[value]; ok && old != rv {
			res.OK = false
			res.Problems = append(res.Problems, fmt.Sprintf("value %s seen at resourceVersion %s and at %s: %s", value, old, rv, describeOp(op)))
		}
		rvOf[value] = rv
		if old, ok := valueOf[key+"/"+rv]; ok && old != value {
			res.OK = false
			res.Problems = append(res.Problems, fmt.Sprintf("%s resourceVersion %s holds %s and %s: %s", key, rv, old, value, describeOp(op)))
		}
		valueOf[key+"/"+rv] = value
	}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		res.Operations++
		if out.Outcome == Unknown {
			res.Unknown++
			if in.Kind != Delete && !observed[in.Value] {
				continue
			}
		}
		if out.Outcome == OK && in.Kind != Delete { // a delete answers with the old value at the delete's revision
			note(in.Key, out.Value, out.RV, op)
		}
		if in.PreRV != "" {
			note(in.Key, in.Pre, in.PreRV, op)
		}
		kept = append(kept, op)
	}
	result, info := porcupine.CheckOperationsVerbose(Model, kept, timeout)
	switch result {
	case porcupine.Ok:
		return res
	case porcupine.Unknown:
		res.OK = false
		res.Problems = append(res.Problems, fmt.Sprintf("the checker ran out of its %v before deciding", timeout))
		return res
	}
	res.OK = false
	res.Problems = append(res.Problems, explain(kept, info)...)
	if dir != "" {
		path := filepath.Join(dir, "linearizability.html")
		if err := porcupine.VisualizePath(Model, info, path); err == nil {
			res.Visualization = path
		} else {
			res.Problems = append(res.Problems, "writing the visualization: "+err.Error())
		}
	}
	return res
}

// explain prints, for each key whose history is not linearizable, the end of the longest
// order the checker could find and the requests it could not place after it: the earliest of
// those to return, and every request that had started by then.
func explain(ops []porcupine.Operation, info porcupine.LinearizationInfo) []string {
	parts := Model.Partition(ops)
	var out []string
	for i, lins := range info.PartialLinearizationsOperations() {
		if i >= len(parts) || len(parts[i]) == 0 {
			continue
		}
		part := parts[i]
		var longest []porcupine.Operation
		for _, l := range lins {
			if len(l) > len(longest) {
				longest = l
			}
		}
		if len(longest) == len(part) {
			continue // this key is linearizable
		}
		placed := map[int]bool{}
		for _, op := range longest {
			placed[indexOf(part, op)] = true
		}
		var rest []porcupine.Operation
		for j, op := range part {
			if !placed[j] {
				rest = append(rest, op)
			}
		}
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return cmpInt(a.Return, b.Return) })
		first := rest[0]
		var b strings.Builder
		fmt.Fprintf(&b, "key %s: %d of %d requests linearize; the last of them, in order:\n", first.Input.(Input).Key, len(longest), len(part))
		for _, op := range longest[max(0, len(longest)-8):] {
			fmt.Fprintf(&b, "    %s\n", describeOp(op))
		}
		b.WriteString("  and none of these can come next:\n")
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return cmpInt(a.Call, b.Call) })
		for _, op := range rest {
			if op.Call <= first.Return {
				fmt.Fprintf(&b, "    %s\n", describeOp(op))
			}
		}
		out = append(out, strings.TrimRight(b.String(), "\n"))
	}
	return out
}

func indexOf(ops []porcupine.Operation, op porcupine.Operation) int {
	for i := range ops {
		if ops[i].ClientId == op.ClientId && ops[i].Call == op.Call && ops[i].Input == op.Input {
			return i
		}
	}
	return -1
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func describeOp(op porcupine.Operation) string {
	ret := "?"
	if op.Return != math.MaxInt64 {
		ret = time.Duration(op.Return).String()
	}
	return fmt.Sprintf("client %d [%v, %s] %s", op.ClientId, time.Duration(op.Call), ret, Describe(op.Input.(Input), op.Output.(Output)))
}
