package agent

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla.dev/api"
	"flotilla.dev/internal/agent/apply"
)

func TestBackoff(t *testing.T) {
	tests := []struct {
		name string
		rand float64
		want []time.Duration
	}{
		{"shortest", 0, []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}},
		{"longest", 0.999999999, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(time.Second, 8*time.Second)
			b.rand = func() float64 { return tt.rand }
			var got []time.Duration
			for range tt.want {
				got = append(got, b.next().Round(time.Millisecond))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("delays = %v, want %v", got, tt.want)
			}
			b.reset()
			if got := b.next().Round(time.Millisecond); got != tt.want[0] {
				t.Errorf("after reset: %v, want %v", got, tt.want[0])
			}
		})
	}
	// Real jitter stays within [d/2, d] of the cap.
	b := newBackoff(10*time.Millisecond, 80*time.Millisecond)
	for range 100 {
		if d := b.next(); d < 5*time.Millisecond || d > 80*time.Millisecond {
			t.Fatalf("delay %v outside [5ms, 80ms]", d)
		}
	}
}

func st(bundle, state string) api.DeploymentStatus {
	return api.DeploymentStatus{Bundle: bundle, ID: "id-" + bundle, State: state}
}

func TestStatusQueue(t *testing.T) {
	dir, err := openStateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	q, err := openQueue(dir, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if got, want := q.q.NextSeq, now.UnixMicro(); got != want {
		t.Errorf("first seq = %d, want %d (the time in µs)", got, want)
	}
	put := func(s api.DeploymentStatus, wantNews bool) {
		t.Helper()
		news, err := q.put(s)
		if err != nil {
			t.Fatal(err)
		}
		if news != wantNews {
			t.Errorf("put(%s %s) news = %v, want %v", s.Bundle, s.State, news, wantNews)
		}
	}
	put(st("a", "NotReady"), true)
	put(st("a", "NotReady"), false)
	put(st("a", "Modified"), true) // collapses over NotReady
	put(st("b", "Ready"), true)

	rep, ok, err := q.next(false, nil)
	if err != nil || !ok {
		t.Fatalf("next = %v, %v", ok, err)
	}
	if got, want := rep.Deployments, []api.DeploymentStatus{st("a", "Modified"), st("b", "Ready")}; !reflect.DeepEqual(got, want) {
		t.Errorf("report deployments = %v, want %v", got, want)
	}
	// A change after the report was taken survives its acknowledgement.
	put(st("b", "NotReady"), true)
	if err := q.ack(rep); err != nil {
		t.Fatal(err)
	}
	if got := q.q.Pending; len(got) != 1 || got["b"].State != "NotReady" {
		t.Errorf("pending after ack = %v, want only b NotReady", got)
	}
	put(st("a", "Modified"), false) // acknowledged already

	// Sequence numbers grow across a reopen, and every attempt takes a new one.
	rep2, _, _ := q.next(false, nil)
	rep3, _, _ := q.next(false, nil)
	if !(rep2.Seq > rep.Seq && rep3.Seq > rep2.Seq) {
		t.Errorf("seqs %d, %d, %d do not grow", rep.Seq, rep2.Seq, rep3.Seq)
	}
	q2, err := openQueue(dir, func() time.Time { return now.Add(-time.Hour) })
	if err != nil {
		t.Fatal(err)
	}
	rep4, ok, _ := q2.next(false, nil)
	if !ok || rep4.Seq <= rep3.Seq {
		t.Errorf("after reopen seq = %d (ok %v), want > %d", rep4.Seq, ok, rep3.Seq)
	}
	if got := rep4.Deployments; len(got) != 1 || got[0] != st("b", "NotReady") {
		t.Errorf("after reopen the queue holds %v, want b NotReady", got)
	}

	// Removal replaces whatever was pending, and a re-added bundle is news again.
	if err := q2.remove("b"); err != nil {
		t.Fatal(err)
	}
	rep5, _, _ := q2.next(false, nil)
	if len(rep5.Deployments) != 0 || !slices.Equal(rep5.Removed, []string{"b"}) {
		t.Errorf("report after removal = %+v, want only b removed", rep5)
	}
	q2.ack(rep5)
	if !q2.empty() {
		t.Errorf("queue not empty after ack: %+v", q2.q)
	}
	if _, ok := q2.known()["b"]; ok {
		t.Error("a removed bundle is still known")
	}
	if _, ok := q2.known()["a"]; !ok {
		t.Error("an acknowledged bundle is not known")
	}

	// Nothing queued: no report, except a heartbeat, which carries the inventory.
	if _, ok, _ := q2.next(false, nil); ok {
		t.Error("an empty queue gave a report")
	}
	inv := &api.ClusterInventory{NodeCount: 3}
	hb, ok, _ := q2.next(true, inv)
	if !ok || hb.Inventory != inv || len(hb.Deployments) != 0 {
		t.Errorf("heartbeat = %+v, %v; want one carrying the inventory", hb, ok)
	}
}

func TestStatusOf(t *testing.T) {
	spec := api.DeploymentSpec{Bundle: "ns/b", ID: "new"}
	tests := []struct {
		name string
		res  apply.Result
		err  error
		want api.DeploymentStatus
	}{
		{"ready", apply.Result{State: apply.Ready, AppliedHash: "new@c1"}, nil, api.DeploymentStatus{Bundle: "ns/b", ID: "new", State: "Ready"}},
		{"older applied", apply.Result{State: apply.OutOfSync, AppliedHash: "old@c1", Message: "an older version is applied"}, nil,
			api.DeploymentStatus{Bundle: "ns/b", ID: "old", State: "OutOfSync", Message: "an older version is applied"}},
		{"failed", apply.Result{State: apply.ErrApplied, AppliedHash: "old@c1"}, errors.New("boom"), api.DeploymentStatus{Bundle: "ns/b", ID: "new", State: "ErrApplied", Message: "boom"}},
		{"not applied", apply.Result{State: apply.WaitApplied}, nil, api.DeploymentStatus{Bundle: "ns/b", ID: "new", State: "WaitApplied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statusOf(spec, tt.res, tt.err); got != tt.want {
				t.Errorf("statusOf = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func node(arch, cpu, mem string) corev1.Node {
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Status: corev1.NodeStatus{
			NodeInfo:    corev1.NodeSystemInfo{Architecture: arch},
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
		},
	}
}

func TestSummarizeNodes(t *testing.T) {
	tests := []struct {
		name  string
		nodes []corev1.Node
		want  api.ClusterInventory
	}{
		{"none", nil, api.ClusterInventory{}},
		{"one arm box", []corev1.Node{node("arm64", "4", "8Gi")},
			api.ClusterInventory{NodeCount: 1, Architectures: []string{"arm64"}, Architecture: "arm64", AllocatableCPU: "4", AllocatableMemory: "8Gi"}},
		{"mixed", []corev1.Node{node("amd64", "3500m", "4Gi"), node("arm64", "2", "2Gi"), node("amd64", "500m", "2Gi")},
			api.ClusterInventory{NodeCount: 3, Architectures: []string{"amd64", "arm64"}, Architecture: "mixed", AllocatableCPU: "6", AllocatableMemory: "8Gi"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarizeNodes(tt.nodes); !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("summarizeNodes = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	env := map[string]string{"FLOTILLA_SERVER": "https://fleet.example:8443", "FLOTILLA_TOKEN": "from-env"}
	getenv := func(k string) string { return env[k] }
	tests := []struct {
		name    string
		args    []string
		check   func(Config) bool
		wantErr string
	}{
		{"env defaults", nil, func(c Config) bool {
			return c.Server == "https://fleet.example:8443" && c.Token == "from-env" && c.StateDir == DefaultStateDir && !c.InCluster
		}, ""},
		{"flags win", []string{"--token", "t", "--labels", "env=prod,site=berlin", "--state-dir", "/s", "--kubeconfig", "/k"}, func(c Config) bool {
			return c.Token == "t" && c.Labels["env"] == "prod" && c.Labels["site"] == "berlin" && c.StateDir == "/s" && c.Kubeconfig == "/k"
		}, ""},
		{"bad label", []string{"--labels", "env"}, nil, "not key=value"},
		{"bad label value", []string{"--labels", "env=a b"}, nil, "value of"},
		{"bad server", []string{"--server", "fleet.example"}, nil, "https://host:port"},
		{"stray argument", []string{"register"}, nil, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, _, err := parseFlags(tt.args, getenv, &strings.Builder{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(cfg) {
				t.Errorf("config = %+v", cfg)
			}
		})
	}
	cfg, _, _, _ := parseFlags(nil, func(k string) string {
		if k == "KUBERNETES_SERVICE_HOST" {
			return "10.0.0.1"
		}
		return ""
	}, &strings.Builder{})
	if !cfg.InCluster {
		t.Error("in a pod the agent does not default to in-cluster")
	}
}

func TestContentPathRefusesNonDigests(t *testing.T) {
	dir, _ := openStateDir(t.TempDir())
	for _, d := range []string{"sha256:../../etc/passwd", "md5:abc", "sha256:" + strings.Repeat("A", 64), ""} {
		if _, err := dir.contentPath(d); err == nil {
			t.Errorf("contentPath(%q) accepted", d)
		}
	}
	if err := dir.putContent("sha256:"+strings.Repeat("0", 64), []byte("x")); err == nil {
		t.Error("putContent accepted data that does not match its digest")
	}
}

func TestMainVersionAndUsage(t *testing.T) {
	var out, errOut strings.Builder
	if code := Main(t.Context(), []string{"--version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "flotilla-agent ") {
		t.Errorf("--version: code %d, output %q", code, out.String())
	}
	out.Reset()
	if code := Main(t.Context(), []string{"--labels", "nope"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "key=value") {
		t.Errorf("bad flag: code %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	code := Main(t.Context(), []string{"--state-dir", t.TempDir(), "--kubeconfig", "/nonexistent/kubeconfig"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "kubeconfig") {
		t.Errorf("missing kubeconfig: code %d, stderr %q", code, errOut.String())
	}
}

func TestNextPoll(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name                  string
		after, asked, elapsed time.Duration
		changed               bool
		wantWait, wantHold    time.Duration
	}{
		{"first poll, not held", 7 * s, 0, 0, false, 0, 7 * s},
		{"held to the end", 12 * s, 7 * s, 7 * s, false, 0, 12 * s},
		{"a change ends the hold", 5 * s, 12 * s, 2 * s, true, 0, 5 * s},
		{"the server declined to hold", 9 * s, 12 * s, 0, false, 9 * s, 9 * s},
		{"come back in minutes", 5 * time.Minute, 30 * s, 30 * s, false, 4*time.Minute + 30*s, 30 * s},
		{"whole seconds only", 1500 * time.Millisecond, 1 * s, 1 * s, false, 500 * time.Millisecond, 1 * s},
		{"under a second: no hold", 20 * time.Millisecond, 0, 0, false, 20 * time.Millisecond, 0},
	} {
		wait, hold := nextPoll(tc.after, 30*s, tc.asked, tc.elapsed, tc.changed)
		if wait != tc.wantWait || hold != tc.wantHold {
			t.Errorf("%s: wait %v hold %v, want %v and %v", tc.name, wait, hold, tc.wantWait, tc.wantHold)
		}
	}
}
