package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"flotilla.dev/api"
	"flotilla.dev/internal/fleet"
)

// TestChangeDelayWithRealServer measures, against a real server, how long a change made at
// a random moment takes to reach a connected agent: without the doorbell it must hold a poll
// at all times, and with it (polls far apart) the server's ring must bring it, so every
// change arrives in a small part of the poll interval (the ratio is compared, not a
// wall-clock figure).
func TestChangeDelayWithRealServer(t *testing.T) {
	t.Run("held polls", func(t *testing.T) { testChangeDelay(t, 3*time.Second, true) })
	t.Run("doorbell", func(t *testing.T) { testChangeDelay(t, 30*time.Second, false) })
}

func testChangeDelay(t *testing.T, interval time.Duration, noDoorbell bool) {
	rs := startRealServerWith(t, fleet.Config{PollInterval: interval, StatusInterval: time.Second})
	open := rs.token(t, "open", api.RegistrationTokenSpec{})
	cfg := Config{Server: rs.url, CAChecksum: rs.checksum, Token: open, StateDir: t.TempDir(), Logger: testLogger(t), Version: "test",
		ReportDelay: 5 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, NoDoorbell: noDoorbell}
	ap := newFakeApplier()
	startAgentAs(t, "uid-delay", cfg, ap)
	name := ""
	waitFor(t, "the cluster registered", func() bool {
		l, err := rs.admin.ListAll(context.Background(), api.KindCluster, api.DefaultNamespace, "")
		if err == nil && len(l.Items) == 1 {
			var o api.Object
			json.Unmarshal(l.Items[0], &o)
			name = o.Metadata.Name
		}
		return name != ""
	})
	bundle := func(v int) *api.Object {
		spec, _ := json.Marshal(map[string]any{
			"resources": []map[string]string{{"name": "cm.yaml", "content": fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\ndata: {v: %q}\n", fmt.Sprint(v))}},
			"targets":   []map[string]any{{"clusterName": name}},
		})
		return &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindBundle},
			Metadata: api.ObjectMeta{Name: "timed", Namespace: api.DefaultNamespace}, Spec: spec}
	}
	applied := func() (v string) {
		ap.get(func(ap *fakeApplier) {
			if d, ok := ap.applied["fleet-default/timed"]; ok && len(d.Objects) == 1 {
				v, _, _ = unstructured.NestedString(d.Objects[0].Object, "data", "v")
			}
		})
		return v
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var worst time.Duration
	for i := range 6 {
		time.Sleep(time.Duration(rng.Int64N(int64(min(interval, 3*time.Second)))))
		changed := time.Now()
		if _, _, err := rs.admin.Apply(context.Background(), bundle(i), false); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the change applied", func() bool { return applied() == fmt.Sprint(i) })
		delay := time.Since(changed)
		worst = max(worst, delay)
		t.Logf("change %d reached the agent after %s", i, delay.Round(time.Millisecond))
	}
	if worst > interval/3 {
		t.Errorf("the slowest change took %s, over a third of the %s poll interval: the agent is not holding a poll at all times, or not rung", worst.Round(time.Millisecond), interval)
	}
}
