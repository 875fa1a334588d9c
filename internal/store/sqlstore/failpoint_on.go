//go:build flotilla_failpoints

package sqlstore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Failpoints inject faults into the writer for the linearizability tests, which build the
// server with `-tags flotilla_failpoints` and set FLOTILLA_FAILPOINTS, a comma-separated
// list of point=action:probability, e.g. "begin=busy:0.05,mid=stall:0.1,commit=error:0.02".
//
// Points: begin (before the transaction starts), mid (inside it, after the revision is
// taken), commit (before COMMIT: the transaction is rolled back and the commit reported
// failed) and committed (after a successful COMMIT: the commit is reported failed although
// it happened, as when a connection drops before the answer arrives).
//
// FLOTILLA_FAILPOINTS_NAMESPACE, if set, limits the faults to batches that write an object
// of that namespace, so that the server's own start-up writes are spared.
//
// Actions: busy (an error the writer retries, like SQLITE_BUSY), error (an error it does
// not), stall (a pause of up to 200 ms, long enough for a client to give up mid-write).
const failpointsOn = true

type failpointRule struct {
	action string
	p      float64
}

var (
	failpoints         = parseFailpoints(os.Getenv("FLOTILLA_FAILPOINTS"))
	failpointNamespace = os.Getenv("FLOTILLA_FAILPOINTS_NAMESPACE")
)

func parseFailpoints(spec string) map[string]failpointRule {
	rules := map[string]failpointRule{}
	for _, item := range strings.Split(spec, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		point, rest, ok1 := strings.Cut(item, "=")
		action, prob, ok2 := strings.Cut(rest, ":")
		p, err := strconv.ParseFloat(prob, 64)
		if !ok1 || !ok2 || err != nil || p < 0 || p > 1 {
			panic(fmt.Sprintf("FLOTILLA_FAILPOINTS: invalid item %q: want point=action:probability", item))
		}
		switch point {
		case "begin", "mid", "commit", "committed":
		default:
			panic(fmt.Sprintf("FLOTILLA_FAILPOINTS: unknown point %q", point))
		}
		switch action {
		case "busy", "error", "stall":
		default:
			panic(fmt.Sprintf("FLOTILLA_FAILPOINTS: unknown action %q", action))
		}
		rules[point] = failpointRule{action: action, p: p}
	}
	return rules
}

var errFailpointBusy = errors.New("failpoint: database is locked")

func failpoint(point string, batch []*op) error {
	r, ok := failpoints[point]
	if !ok || rand.Float64() >= r.p {
		return nil
	}
	if failpointNamespace != "" && !slices.ContainsFunc(batch, func(o *op) bool { return o.key.Namespace == failpointNamespace }) {
		return nil
	}
	switch r.action {
	case "busy":
		return errFailpointBusy
	case "stall":
		time.Sleep(rand.N(200 * time.Millisecond))
		return nil
	}
	return fmt.Errorf("failpoint %s: injected error", point)
}

func failpointRetryable(err error) bool { return errors.Is(err, errFailpointBusy) }
