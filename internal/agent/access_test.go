package agent

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// An access report is sent once when it changes, not again while it stays the same, and
// again with heartbeats, so that a restarted server (which keeps usage in memory) relearns it.
func TestStatusQueueAccess(t *testing.T) {
	dir, err := openStateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	q, err := openQueue(dir, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	usage := func(pods string) *api.AccessReport {
		return &api.AccessReport{Digest: "sha256:a", Usage: map[string]map[string]map[string]string{"shop": {"web": {"pods": pods}}}}
	}
	if news, err := q.setAccess(usage("1")); !news || err != nil {
		t.Fatalf("first report: news %v, %v", news, err)
	}
	rep, ok, _ := q.next(false, nil)
	if !ok || rep.Access == nil || rep.Access.Usage["shop"]["web"]["pods"] != "1" {
		t.Fatalf("report %+v", rep)
	}
	q.ack(rep)
	if news, _ := q.setAccess(usage("1")); news {
		t.Error("an unchanged access report is news")
	}
	if _, ok, _ := q.next(false, nil); ok {
		t.Error("a report is due with nothing changed")
	}
	if rep, _, _ := q.next(true, nil); rep.Access == nil || rep.Access.Usage["shop"]["web"]["pods"] != "1" {
		t.Errorf("a heartbeat lacks the last access report: %+v", rep)
	}
	if news, _ := q.setAccess(usage("2")); !news {
		t.Error("changed usage is not news")
	}
	if q.empty() {
		t.Error("the queue holding a changed access report says it is empty")
	}
}

// The agent takes from the access channel only the kinds it is for, each with the owner label.
func TestDecodeAccessObject(t *testing.T) {
	for _, tc := range []struct {
		obj, want string
	}{
		{`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"flotilla-x","labels":{"flotilla.dev/owner":"access"}}}`, ""},
		{`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x","labels":{"flotilla.dev/owner":"access"}}}`, "not an access kind"},
		{`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}`, "lacks the label"},
		{`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x","labels":{"flotilla.dev/owner":"access"}}}`, "not an access kind"},
	} {
		_, err := decodeAccessObject(json.RawMessage(tc.obj))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.obj, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error mentioning %q", tc.obj, err, tc.want)
		}
	}
}
