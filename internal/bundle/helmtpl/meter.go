package helmtpl

import (
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"text/template"
	"text/template/parse"
)

// stepFunc is the function instrument puts at the start of every template and range body. A
// template that calls it by name only makes one more step.
const stepFunc = "__flotillaBudgetStep"

// writer returns sb, metered: a template writing more than the budget fails at that write.
func writer(sb *strings.Builder, m Meter, what string) io.Writer {
	if m == nil {
		return sb
	}
	return meteredWriter{sb: sb, m: m, what: what}
}

type meteredWriter struct {
	sb   *strings.Builder
	m    Meter
	what string
}

func (w meteredWriter) Write(p []byte) (int, error) {
	if err := w.m.Wrote(len(p), w.what); err != nil {
		return 0, err
	}
	return w.sb.Write(p)
}

// metered wraps every function of fm so that each call is a step and its result is checked
// against the budget; functions whose result is not bounded by their arguments' size (repeat,
// until, indent…) are checked before they run. It also overrides text/template's builtins that
// make strings (print, printf…), which could otherwise double a value on every loop iteration.
func metered(fm template.FuncMap, m Meter) template.FuncMap {
	if m == nil {
		return fm
	}
	out := make(template.FuncMap, len(fm)+8)
	for name, fn := range builtins {
		out[name] = wrap(name, fn, m)
	}
	for name, fn := range fm {
		out[name] = wrap(name, fn, m)
	}
	out[stepFunc] = func() (string, error) { return "", m.Step() }
	return out
}

// builtins are text/template's builtin functions that make new strings.
var builtins = template.FuncMap{
	"print":    fmt.Sprint,
	"printf":   fmt.Sprintf,
	"println":  fmt.Sprintln,
	"html":     template.HTMLEscaper,
	"js":       template.JSEscaper,
	"urlquery": template.URLQueryEscaper,
}

func wrap(name string, fn any, m Meter) any {
	v := reflect.ValueOf(fn)
	t := v.Type()
	if t.Kind() != reflect.Func {
		return fn
	}
	guard := guards[name]
	what := "function " + name
	return reflect.MakeFunc(t, func(args []reflect.Value) []reflect.Value {
		// text/template turns a panic in a function into an error that ends the render.
		if err := m.Step(); err != nil {
			panic(err)
		}
		if guard != nil {
			if err := m.Alloc(guard(args), what); err != nil {
				panic(err)
			}
		}
		var out []reflect.Value
		if t.IsVariadic() {
			out = v.CallSlice(args)
		} else {
			out = v.Call(args)
		}
		if len(out) > 0 {
			if err := m.Alloc(size(out[0]), what); err != nil {
				panic(err)
			}
		}
		return out
	}).Interface()
}

// size estimates the bytes a function's result holds, without walking it: its length times a
// small per-element cost. Results built from other results are checked as each is made.
func size(v reflect.Value) int64 {
	switch v.Kind() {
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			return 0
		}
		return size(v.Elem())
	case reflect.String:
		return int64(v.Len())
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return int64(v.Len())
		}
		return mul(int64(v.Len()), 16)
	case reflect.Map:
		return mul(int64(v.Len()), 48)
	}
	return 0
}

// guards estimate, from their arguments, the size of what functions whose output does not
// follow from their input's size would allocate.
var guards = map[string]func([]reflect.Value) int64{
	"repeat":       func(a []reflect.Value) int64 { return mul(intArg(a, 0), int64(strArg(a, 1))) },
	"indent":       indentSize,
	"nindent":      indentSize,
	"until":        func(a []reflect.Value) int64 { return mul(intArg(a, 0), 8) },
	"untilStep":    func(a []reflect.Value) int64 { return mul(span(intArg(a, 0), intArg(a, 1), intArg(a, 2)), 8) },
	"seq":          seqSize,
	"randAlphaNum": func(a []reflect.Value) int64 { return intArg(a, 0) },
	"randAlpha":    func(a []reflect.Value) int64 { return intArg(a, 0) },
	"randNumeric":  func(a []reflect.Value) int64 { return intArg(a, 0) },
	"randAscii":    func(a []reflect.Value) int64 { return intArg(a, 0) },
	"randBytes":    func(a []reflect.Value) int64 { return mul(intArg(a, 0), 2) },
	"replace": func(a []reflect.Value) int64 {
		if len(a) < 3 || a[0].Kind() != reflect.String || a[1].Kind() != reflect.String || a[2].Kind() != reflect.String {
			return 0
		}
		old, repl, src := a[0].String(), a[1].String(), a[2].String()
		return int64(len(src)) + mul(int64(strings.Count(src, old)), int64(len(repl)))
	},
}

func indentSize(a []reflect.Value) int64 {
	n := intArg(a, 0)
	if len(a) < 2 || a[1].Kind() != reflect.String {
		return n
	}
	s := a[1].String()
	return int64(len(s)) + mul(n, int64(strings.Count(s, "\n")+2))
}

// seqSize bounds seq's output: its arguments are "last", "first last" or "first step last".
func seqSize(a []reflect.Value) int64 {
	if len(a) != 1 || a[0].Kind() != reflect.Slice {
		return 0
	}
	var p []int64
	for i := range a[0].Len() {
		e := a[0].Index(i)
		if !e.CanInt() {
			return 0
		}
		p = append(p, e.Int())
	}
	var n int64
	switch len(p) {
	case 1:
		n = abs(p[0])
	case 2:
		n = span(p[0], p[1], 1)
	case 3:
		n = span(p[0], p[2], p[1])
	}
	return mul(n, 21) // an int64 and a space
}

func span(start, stop, step int64) int64 {
	if step == 0 {
		return 0
	}
	d := stop - start
	if (d > 0) != (step > 0) && d != 0 {
		return 0
	}
	return abs(d) / abs(step)
}

func intArg(a []reflect.Value, i int) int64 {
	if i >= len(a) {
		return 0
	}
	v := a[i]
	for v.Kind() == reflect.Interface && !v.IsNil() {
		v = v.Elem()
	}
	switch {
	case v.CanInt():
		return max(v.Int(), 0)
	case v.CanUint():
		return int64(min(v.Uint(), math.MaxInt64))
	}
	return 0
}

func strArg(a []reflect.Value, i int) int {
	if i >= len(a) || a[i].Kind() != reflect.String {
		return 0
	}
	return a[i].Len()
}

func abs(x int64) int64 {
	if x < 0 {
		if x == math.MinInt64 {
			return math.MaxInt64
		}
		return -x
	}
	return x
}

// mul multiplies non-negative numbers, saturating.
func mul(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

// instrument puts a step at the start of every template of t's set and of every range body in
// them, so that no loop or recursion runs without checking the budget. It is idempotent, as
// tpl instruments sets that share already instrumented templates.
func instrument(t *template.Template, m Meter) {
	if m == nil {
		return
	}
	for _, tt := range t.Templates() {
		if tt.Tree == nil || tt.Tree.Root == nil {
			continue
		}
		instrumentList(tt.Tree, tt.Tree.Root)
	}
}

func instrumentList(tr *parse.Tree, l *parse.ListNode) {
	if l == nil {
		return
	}
	walkList(tr, l)
	if len(l.Nodes) > 0 && isStep(l.Nodes[0]) {
		return
	}
	l.Nodes = append([]parse.Node{stepNode(tr, l.Position())}, l.Nodes...)
}

// walkList instruments the ranges inside a list without putting a step at its start.
func walkList(tr *parse.Tree, l *parse.ListNode) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.RangeNode:
			instrumentList(tr, n.List)
			instrumentList(tr, n.ElseList)
		case *parse.IfNode:
			walkList(tr, n.List)
			walkList(tr, n.ElseList)
		case *parse.WithNode:
			walkList(tr, n.List)
			walkList(tr, n.ElseList)
		case *parse.ListNode:
			walkList(tr, n)
		}
	}
}

func stepNode(tr *parse.Tree, pos parse.Pos) parse.Node {
	id := parse.NewIdentifier(stepFunc).SetTree(tr).SetPos(pos)
	cmd := &parse.CommandNode{NodeType: parse.NodeCommand, Pos: pos, Args: []parse.Node{id}}
	pipe := &parse.PipeNode{NodeType: parse.NodePipe, Pos: pos, Cmds: []*parse.CommandNode{cmd}}
	return &parse.ActionNode{NodeType: parse.NodeAction, Pos: pos, Pipe: pipe}
}

func isStep(n parse.Node) bool {
	a, ok := n.(*parse.ActionNode)
	if !ok || a.Pipe == nil || len(a.Pipe.Cmds) != 1 || len(a.Pipe.Cmds[0].Args) != 1 {
		return false
	}
	id, ok := a.Pipe.Cmds[0].Args[0].(*parse.IdentifierNode)
	return ok && id.Ident == stepFunc
}

// Funcs returns fm with every function metered by m, as the engine's are, plus the functions
// Instrument's steps call: for other text/templates that must keep to a budget.
func Funcs(fm template.FuncMap, m Meter) template.FuncMap { return metered(fm, m) }

// Instrument makes every template of t's set, parsed with Funcs(…, m), step m at its start and
// at every range iteration.
func Instrument(t *template.Template, m Meter) { instrument(t, m) }

// Writer returns sb, with every write accounted to m.
func Writer(sb *strings.Builder, m Meter, what string) io.Writer { return writer(sb, m, what) }
