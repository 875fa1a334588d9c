package linearize

import (
	"math"
	"os"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

// op builds a request of client c over [call, ret]; ret < 0 is an unknown outcome.
func op(c int, call, ret int64, in Input, out Output) porcupine.Operation {
	if ret < 0 {
		ret = math.MaxInt64
	}
	if in.Key == "" {
		in.Key = "k"
	}
	return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
}

func observedIn(ops []porcupine.Operation) map[string]bool {
	seen := map[string]bool{}
	for _, o := range ops {
		if v := o.Output.(Output).Value; v != "" {
			seen[v] = true
		}
	}
	return seen
}

func TestLinearizable(t *testing.T) {
	cases := map[string][]porcupine.Operation{
		"sequential": {
			op(0, 0, 1, Input{Kind: Get}, Output{Outcome: NotFound}),
			op(0, 2, 3, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "5"}),
			op(1, 4, 5, Input{Kind: Create, Value: "x"}, Output{Outcome: AlreadyExists}),
			op(1, 6, 7, Input{Kind: Update, Value: "b", Pre: "a", PreRV: "5"}, Output{Outcome: OK, Value: "b", RV: "6"}),
			op(0, 8, 9, Input{Kind: Update, Value: "c", Pre: "a", PreRV: "5"}, Output{Outcome: Conflict}),
			op(0, 10, 11, Input{Kind: Get}, Output{Outcome: OK, Value: "b", RV: "6"}),
			op(0, 12, 13, Input{Kind: Delete, Pre: "b", PreRV: "6"}, Output{Outcome: OK, Value: "b", RV: "7"}),
			op(1, 14, 15, Input{Kind: Update, Value: "d", Pre: "b", PreRV: "6"}, Output{Outcome: NotFound}),
		},
		"concurrent read sees either side of a write": {
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(0, 2, 10, Input{Kind: Update, Value: "b", Pre: "a", PreRV: "1"}, Output{Outcome: OK, Value: "b", RV: "2"}),
			op(1, 3, 4, Input{Kind: Get}, Output{Outcome: OK, Value: "b", RV: "2"}),
			op(2, 3, 4, Input{Kind: Get}, Output{Outcome: OK, Value: "a", RV: "1"}),
		},
		"a write of unknown outcome that happened": {
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(0, 2, -1, Input{Kind: Update, Value: "b", Pre: "a", PreRV: "1"}, Output{Outcome: Unknown}),
			op(1, 5, 6, Input{Kind: Get}, Output{Outcome: OK, Value: "b", RV: "2"}),
		},
		"a write of unknown outcome that did not happen": {
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(0, 2, -1, Input{Kind: Delete}, Output{Outcome: Unknown}),
			op(1, 5, 6, Input{Kind: Get}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(1, 7, 8, Input{Kind: Get}, Output{Outcome: OK, Value: "a", RV: "1"}),
		},
	}
	for name, ops := range cases {
		t.Run(name, func(t *testing.T) {
			if r := Check(ops, observedIn(ops), t.TempDir(), 0); !r.OK {
				t.Errorf("%s", r)
			}
		})
	}
}

// The checker must be able to fail: each of these histories breaks linearizability, and
// the report must name the requests that prove it.
func TestNotLinearizable(t *testing.T) {
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want string // in the explanation
	}{
		{"stale read", []porcupine.Operation{
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(0, 2, 3, Input{Kind: Update, Value: "b", Pre: "a", PreRV: "1"}, Output{Outcome: OK, Value: "b", RV: "2"}),
			op(1, 4, 5, Input{Kind: Get}, Output{Outcome: OK, Value: "a", RV: "1"}),
		}, "get(k) -> ok a@1"},
		{"read of a deleted object", []porcupine.Operation{
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(0, 2, 3, Input{Kind: Delete}, Output{Outcome: OK, Value: "a", RV: "2"}),
			op(1, 4, 5, Input{Kind: Get}, Output{Outcome: OK, Value: "a", RV: "1"}),
		}, "get(k) -> ok a@1"},
		{"refused as a conflict, yet it happened", []porcupine.Operation{
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(0, 2, 3, Input{Kind: Update, Value: "b", Pre: "a", PreRV: "1"}, Output{Outcome: Conflict}),
			op(1, 4, 5, Input{Kind: Get}, Output{Outcome: OK, Value: "b", RV: "2"}),
		}, "update(k, b, rv=1 [a]) -> conflict"},
		{"create refused on an absent key", []porcupine.Operation{
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: AlreadyExists}),
			op(1, 2, 3, Input{Kind: Get}, Output{Outcome: NotFound}),
		}, "create(k, a) -> already exists"},
		{"lost acknowledged write", []porcupine.Operation{
			op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
			op(1, 2, 3, Input{Kind: Get}, Output{Outcome: NotFound}),
		}, "get(k) -> not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			r := Check(c.ops, observedIn(c.ops), dir, 0)
			if r.OK {
				t.Fatalf("checker accepted a non-linearizable history:\n%s", r)
			}
			if !strings.Contains(r.String(), c.want) {
				t.Errorf("report does not show %q:\n%s", c.want, r)
			}
			if r.Visualization == "" {
				t.Fatalf("no visualization written:\n%s", r)
			}
			if fi, err := os.Stat(r.Visualization); err != nil || fi.Size() == 0 {
				t.Errorf("visualization %s: %v", r.Visualization, err)
			}
		})
	}
}

func TestResourceVersionsAreOneToOne(t *testing.T) {
	ops := []porcupine.Operation{
		op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
		op(1, 2, 3, Input{Kind: Get}, Output{Outcome: OK, Value: "a", RV: "7"}),
	}
	if r := Check(ops, observedIn(ops), "", 0); r.OK || !strings.Contains(r.String(), "value a seen at resourceVersion 1 and at 7") {
		t.Errorf("one value at two resourceVersions not reported:\n%s", r)
	}
}

func TestWatches(t *testing.T) {
	ops := []porcupine.Operation{
		op(0, 0, 1, Input{Kind: Create, Value: "a"}, Output{Outcome: OK, Value: "a", RV: "1"}),
		op(0, 2, 3, Input{Kind: Update, Value: "b", Pre: "a", PreRV: "1"}, Output{Outcome: OK, Value: "b", RV: "2"}),
		op(0, 4, -1, Input{Kind: Update, Value: "c", Pre: "b", PreRV: "2"}, Output{Outcome: Unknown}),
		op(0, 5, 6, Input{Kind: Delete}, Output{Outcome: OK, Value: "c", RV: "4"}),
	}
	full := []Event{{"ADDED", 1, "a"}, {"MODIFIED", 2, "b"}, {"MODIFIED", 3, "c"}, {"DELETED", 4, "c"}}
	upTo := map[string]int64{"k": 4}
	if p := CheckWatches(ops, []Watch{{Name: "w1", Key: "k", Events: full}, {Name: "w2", Key: "k", From: 2, Events: full[2:]}}, upTo); len(p) != 0 {
		t.Errorf("complete watches reported: %q", p)
	}
	cases := []struct {
		name  string
		watch []Watch
		upTo  int64
		want  string
	}{
		{"gap in an acknowledged write", []Watch{{Name: "w", Key: "k", Events: []Event{full[0], full[2], full[3]}}}, 4, "missed resourceVersion 2"},
		{"gap another watch filled", []Watch{{Name: "w1", Key: "k", Events: full}, {Name: "w2", Key: "k", Events: []Event{full[0], full[1], full[3]}}}, 4, "missed resourceVersion 3 (MODIFIED c)"},
		{"out of order", []Watch{{Name: "w", Key: "k", Events: []Event{full[1], full[0], full[2], full[3]}}}, 4, "resourceVersion 1 after 2"},
		{"phantom", []Watch{{Name: "w", Key: "k", Events: []Event{full[0], {"MODIFIED", 2, "zz"}, full[2], full[3]}}}, 4, "MODIFIED zz@2, which no update wrote"},
		{"stopped early", []Watch{{Name: "w", Key: "k", Events: full[:2]}}, 4, "ends at resourceVersion 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := CheckWatches(ops, c.watch, map[string]int64{"k": c.upTo})
			if !strings.Contains(strings.Join(p, "\n"), c.want) {
				t.Errorf("problems %q, want one containing %q", p, c.want)
			}
		})
	}
}
