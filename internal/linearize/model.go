// Package linearize checks histories of concurrent requests to Flotilla's API for
// linearizability with porcupine, and watch streams for completeness, as etcd's robustness
// tests do. The model is one register per object key with resourceVersion semantics. Every
// write stores a value no other write stores, so "the stored resourceVersion is R" is "the
// stored value is the one whose write was given R", and the model's state is the value alone.
// Imported only by tests.
package linearize

import (
	"fmt"
	"strings"

	"github.com/anishathalye/porcupine"
)

// OpKind is a request's kind.
type OpKind int

// The requests the model knows.
const (
	Get OpKind = iota
	Create
	Update
	Delete
)

func (k OpKind) String() string {
	return [...]string{"get", "create", "update", "delete"}[k]
}

// Input is a request.
type Input struct {
	Kind OpKind
	Key  string
	// Value is what a create or update writes; unique across the history.
	Value string
	// Pre is the value whose write produced the resourceVersion an update or a conditional
	// delete carries (PreRV); "" for an unconditional delete.
	Pre, PreRV string
}

// Outcome is how a request ended.
type Outcome int

// Outcomes. Unknown is a request whose effect is not known: a timeout, a broken connection,
// a server error. It may or may not have taken effect.
const (
	OK Outcome = iota
	NotFound
	AlreadyExists
	Conflict
	Unknown
)

func (o Outcome) String() string {
	return [...]string{"ok", "not found", "already exists", "conflict", "unknown"}[o]
}

// Output is a request's answer.
type Output struct {
	Outcome Outcome
	// Value is the value a get read, the value a delete removed or a write wrote.
	Value string
	RV    string
	// Err is the error's text, for the report.
	Err string
}

// precondition reports whether a write would succeed in state.
func precondition(state string, in Input) bool {
	switch in.Kind {
	case Create:
		return state == ""
	case Update:
		return state != "" && state == in.Pre
	case Delete:
		return state != "" && (in.Pre == "" || state == in.Pre)
	}
	return true
}

func step(state string, in Input, out Output) (bool, string) {
	if out.Outcome == Unknown {
		// It may have happened: its return is at infinity, so the checker may also place
		// it after everything else, which is the same as its not having happened.
		if in.Kind != Get && precondition(state, in) {
			return true, after(state, in)
		}
		return true, state
	}
	switch in.Kind {
	case Get:
		switch out.Outcome {
		case OK:
			return state != "" && state == out.Value, state
		case NotFound:
			return state == "", state
		}
	case Create:
		switch out.Outcome {
		case OK:
			return state == "", in.Value
		case AlreadyExists:
			return state != "", state
		}
	case Update, Delete:
		switch out.Outcome {
		case OK:
			if in.Kind == Delete && out.Value != state {
				return false, state
			}
			return precondition(state, in), after(state, in)
		case Conflict:
			return state != "" && in.Pre != "" && state != in.Pre, state
		case NotFound:
			return state == "", state
		}
	}
	return false, state
}

func after(state string, in Input) string {
	switch in.Kind {
	case Create, Update:
		return in.Value
	case Delete:
		return ""
	}
	return state
}

// Model is the per-key register, partitioned by key.
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(Input).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		parts := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, byKey[k])
		}
		return parts
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		return step(state.(string), input.(Input), output.(Output))
	},
	DescribeOperation: func(input, output any) string { return Describe(input.(Input), output.(Output)) },
	DescribeState: func(state any) string {
		if state.(string) == "" {
			return "(absent)"
		}
		return state.(string)
	},
}

// Describe formats one request and its answer.
func Describe(in Input, out Output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s(%s", in.Kind, in.Key)
	if in.Value != "" {
		fmt.Fprintf(&b, ", %s", in.Value)
	}
	if in.PreRV != "" {
		fmt.Fprintf(&b, ", rv=%s [%s]", in.PreRV, in.Pre)
	}
	b.WriteString(") -> ")
	b.WriteString(out.Outcome.String())
	if out.Outcome == OK && (out.Value != "" || out.RV != "") {
		fmt.Fprintf(&b, " %s@%s", out.Value, out.RV)
	}
	if out.Err != "" && out.Outcome != NotFound && out.Outcome != AlreadyExists {
		fmt.Fprintf(&b, " (%s)", out.Err)
	}
	return b.String()
}
