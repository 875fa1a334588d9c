package linearize

import (
	"fmt"
	"strconv"

	"github.com/anishathalye/porcupine"
)

// Event is one watch event of a key, as a watcher received it.
type Event struct {
	Type  string // ADDED, MODIFIED or DELETED
	RV    int64
	Value string
}

// Watch is what one watcher of one key received, across however many resumes.
type Watch struct {
	Name string
	Key  string
	// From is the resourceVersion the watch started after.
	From   int64
	Events []Event
}

// CheckWatches checks what each watcher saw against the history and against the other
// watchers of its key: resourceVersions strictly increase; every event is a write some
// request made, of the right type, and continues from the event before it; every write
// acknowledged to a client with a resourceVersion after the watcher's start, up to the last
// event it saw, was delivered; and no watcher misses a revision another watcher of the key
// delivered in its range. upTo, per key, is the resourceVersion each of its watchers must
// have reached (the last acknowledged write of the key). It returns the problems found.
func CheckWatches(ops []porcupine.Operation, watches []Watch, upTo map[string]int64) []string {
	type write struct {
		kind OpKind
		pre  string
	}
	writes := map[string]write{} // value -> the request that wrote it
	acked := map[string]map[int64]string{}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		if in.Kind == Create || in.Kind == Update {
			writes[in.Value] = write{in.Kind, in.Pre}
		}
		if in.Kind != Get && out.Outcome == OK {
			rv, err := strconv.ParseInt(out.RV, 10, 64)
			if err != nil {
				continue
			}
			if acked[in.Key] == nil {
				acked[in.Key] = map[int64]string{}
			}
			acked[in.Key][rv] = in.Kind.String() + " " + Describe(in, out)
		}
	}
	seen := map[string]map[int64]Event{} // key -> rv -> event, over all watchers
	var problems []string
	bad := func(w Watch, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("watch %s of %s: ", w.Name, w.Key)+fmt.Sprintf(format, args...))
	}
	for _, w := range watches {
		last := w.From
		prev := "?" // the value before the event; "" absent, "?" not known yet
		for _, ev := range w.Events {
			if ev.RV <= last {
				bad(w, "resourceVersion %d after %d", ev.RV, last)
			}
			last = ev.RV
			wr, known := writes[ev.Value]
			switch ev.Type {
			case "ADDED":
				if !known || wr.kind != Create {
					bad(w, "ADDED %s@%d, which no create wrote", ev.Value, ev.RV)
				}
				if prev != "?" && prev != "" {
					bad(w, "ADDED %s@%d while %s is stored", ev.Value, ev.RV, prev)
				}
				prev = ev.Value
			case "MODIFIED":
				if !known || wr.kind != Update {
					bad(w, "MODIFIED %s@%d, which no update wrote", ev.Value, ev.RV)
				} else if prev != "?" && prev != wr.pre {
					bad(w, "MODIFIED %s@%d, written over %s, after %s", ev.Value, ev.RV, wr.pre, prev)
				}
				prev = ev.Value
			case "DELETED":
				if prev != "?" && prev != ev.Value {
					bad(w, "DELETED %s@%d after %s", ev.Value, ev.RV, prev)
				}
				prev = ""
			default:
				bad(w, "event of type %q", ev.Type)
			}
			if seen[w.Key] == nil {
				seen[w.Key] = map[int64]Event{}
			}
			if other, ok := seen[w.Key][ev.RV]; ok && other != ev {
				bad(w, "resourceVersion %d is %v here and %v in another watch", ev.RV, ev, other)
			}
			seen[w.Key][ev.RV] = ev
		}
		if want := upTo[w.Key]; last < want {
			bad(w, "ends at resourceVersion %d, before the key's last acknowledged write at %d", last, want)
		}
		got := map[int64]bool{}
		for _, ev := range w.Events {
			got[ev.RV] = true
		}
		for rv, what := range acked[w.Key] {
			if rv > w.From && rv <= last && !got[rv] {
				bad(w, "missed resourceVersion %d (%s), acknowledged to its client", rv, what)
			}
		}
	}
	for _, w := range watches {
		got := map[int64]bool{}
		last := w.From
		for _, ev := range w.Events {
			got[ev.RV] = true
			last = ev.RV
		}
		for rv, ev := range seen[w.Key] {
			if rv > w.From && rv <= last && !got[rv] {
				bad(w, "missed resourceVersion %d (%s %s), which another watch of the key delivered", rv, ev.Type, ev.Value)
			}
		}
	}
	return problems
}
