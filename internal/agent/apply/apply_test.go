package apply

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestLabelValue(t *testing.T) {
	long := strings.Repeat("a", 80)
	tests := []struct {
		id   string
		want string // "" means: any valid value other than id
	}{
		{id: "my-bundle", want: "my-bundle"},
		{id: "a.b_c-1", want: "a.b_c-1"},
		{id: "fleet-default/my-bundle"},
		{id: "fleet-default.my-bundle", want: "fleet-default.my-bundle"}, // must differ from the one above
		{id: long},
		{id: "//"},
		{id: "-x-"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := LabelValue(tt.id)
		if errs := validation.IsValidLabelValue(got); len(errs) > 0 {
			t.Errorf("LabelValue(%q) = %q, not a label value: %v", tt.id, got, errs)
		}
		if tt.want != "" && got != tt.want {
			t.Errorf("LabelValue(%q) = %q, want %q", tt.id, got, tt.want)
		}
		if tt.want == "" && got == tt.id {
			t.Errorf("LabelValue(%q) = the ID itself, want a sanitised value", tt.id)
		}
		if other, ok := seen[got]; ok {
			t.Errorf("LabelValue(%q) = LabelValue(%q) = %q", tt.id, other, got)
		}
		seen[got] = tt.id
		if again := LabelValue(tt.id); again != got {
			t.Errorf("LabelValue(%q) is not stable: %q then %q", tt.id, got, again)
		}
	}
	if got := LabelValue("fleet-default/my-bundle"); !strings.HasPrefix(got, "fleet-default.my-bundle-") {
		t.Errorf("LabelValue keeps no readable prefix: %q", got)
	}
}

func TestSummarize(t *testing.T) {
	obj := func(kind, ns, name, msg string) ObjectStatus {
		return ObjectStatus{Kind: kind, Namespace: ns, Name: name, Message: msg}
	}
	tests := []struct {
		name      string
		res       Result
		wantState State
		wantMsg   string
	}{
		{name: "ready", wantState: Ready},
		{
			name:      "not ready",
			res:       Result{NonReady: []ObjectStatus{obj("Deployment", "default", "web", "not ready: Available: 0/3")}},
			wantState: NotReady,
			wantMsg:   "Deployment default/web: not ready: Available: 0/3",
		},
		{
			name: "modified wins and comes first",
			res: Result{
				NonReady: []ObjectStatus{obj("Deployment", "default", "web", "not ready: x")},
				Modified: []ObjectStatus{obj("ClusterRole", "", "admin", "modified")},
			},
			wantState: Modified,
			wantMsg:   "ClusterRole admin: modified; Deployment default/web: not ready: x",
		},
		{
			name: "truncated",
			res: Result{Modified: []ObjectStatus{
				obj("ConfigMap", "a", "1", "modified"), obj("ConfigMap", "a", "2", "modified"),
				obj("ConfigMap", "a", "3", "modified"), obj("ConfigMap", "a", "4", "missing"),
				obj("ConfigMap", "a", "5", "missing"),
			}},
			wantState: Modified,
			wantMsg:   "ConfigMap a/1: modified; ConfigMap a/2: modified; ConfigMap a/3: modified; and 2 more",
		},
		{
			name: "drifted fields",
			res: Result{Modified: []ObjectStatus{
				{Kind: "Deployment", Namespace: "ns", Name: "web", Message: "modified", Fields: []string{"/spec/replicas", "/metadata/annotations/example.com~1owner"}},
				{Kind: "ClusterRole", Name: "admin", Message: "modified", Fields: []string{"/rules/0/verbs", "/a", "/b", "…"}},
			}},
			wantState: Modified,
			wantMsg: "Deployment ns/web: modified; ClusterRole admin: modified; drifted: Deployment/ns/web: spec.replicas, " +
				"Deployment/ns/web: metadata.annotations[example.com/owner], ClusterRole/admin: rules.0.verbs, ClusterRole/admin: a, ClusterRole/admin: b and more",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.res
			r.summarize()
			if r.State != tt.wantState || r.Message != tt.wantMsg {
				t.Errorf("got %s %q, want %s %q", r.State, r.Message, tt.wantState, tt.wantMsg)
			}
		})
	}
}

func TestDrift(t *testing.T) {
	u := func(obj map[string]any) *unstructured.Unstructured { return &unstructured.Unstructured{Object: obj} }
	base := func() map[string]any {
		return map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": "cfg", "resourceVersion": "1", "managedFields": []any{"x"}},
			"data":     map[string]any{"a": "1", "b/c": "2"},
			"list":     []any{"x", map[string]any{"y": "1"}},
		}
	}
	tests := []struct {
		name   string
		change func(m map[string]any)
		ignore []string
		want   []string
	}{
		{name: "same", change: func(map[string]any) {}},
		{
			name: "server-owned metadata and status are ignored",
			change: func(m map[string]any) {
				m["metadata"] = map[string]any{"name": "cfg", "resourceVersion": "9"}
				m["status"] = "x"
			},
		},
		{name: "value changed", change: func(m map[string]any) { m["data"].(map[string]any)["a"] = "9" }, want: []string{"/data/a"}},
		{name: "key escaped", change: func(m map[string]any) { delete(m["data"].(map[string]any), "b/c") }, want: []string{"/data/b~1c"}},
		{name: "in a list", change: func(m map[string]any) { m["list"].([]any)[1].(map[string]any)["y"] = "2" }, want: []string{"/list/1/y"}},
		{name: "list length", change: func(m map[string]any) { m["list"] = []any{"x"} }, want: []string{"/list"}},
		{
			name: "ignored by pointer",
			change: func(m map[string]any) {
				m["data"].(map[string]any)["a"] = "9"
				m["list"].([]any)[1].(map[string]any)["y"] = "2"
			},
			ignore: []string{"/data/a", "/list/1/y"},
		},
		{
			name:   "ignored pointer with escapes",
			change: func(m map[string]any) { m["data"].(map[string]any)["b/c"] = "9" },
			ignore: []string{"/data/b~1c", "/no/such/path", "/list/7"},
		},
		{
			name: "capped",
			change: func(m map[string]any) {
				m["data"] = map[string]any{"a": "x", "b/c": "x", "d": "x", "e": "x", "f": "x"}
			},
			want: []string{"/data/a", "/data/b~1c", "/data/d", "…"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			live := base()
			tt.change(live)
			got := drift(u(live), u(base()), tt.ignore)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("drift = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMatchingPatches(t *testing.T) {
	patches := []ComparePatch{
		{APIVersion: "v1", Kind: "ConfigMap", Name: "cfg", Namespace: "app", Operations: []PatchOperation{{Op: "remove", Path: "/data/a"}}},
		{Kind: "ConfigMap", JSONPointers: []string{"/data/b"}},
		{APIVersion: "apps/v1", Kind: "Deployment", JSONPointers: []string{"/spec/replicas"}},
	}
	tests := []struct {
		ref  objectRef
		want []string
	}{
		{ref: objectRef{APIVersion: "v1", Kind: "ConfigMap", Namespace: "app", Name: "cfg"}, want: []string{"/data/a", "/data/b"}},
		{ref: objectRef{APIVersion: "v1", Kind: "ConfigMap", Namespace: "other", Name: "cfg"}, want: []string{"/data/b"}},
		{ref: objectRef{APIVersion: "apps/v1", Kind: "Deployment", Namespace: "app", Name: "web"}, want: []string{"/spec/replicas"}},
		{ref: objectRef{APIVersion: "v1", Kind: "Secret", Namespace: "app", Name: "cfg"}},
	}
	for _, tt := range tests {
		if got := matchingPatches(patches, tt.ref); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("matchingPatches(%s) = %q, want %q", tt.ref, got, tt.want)
		}
	}
}

func TestReleaseName(t *testing.T) {
	tests := []struct{ id, release, want string }{
		{id: "web", want: "web"},
		{id: "x", release: "named", want: "named"},
		{id: "fleet-default/my-bundle", want: "fleet-default-my-bundle-"},
		{id: strings.Repeat("long-", 20), want: strings.Repeat("long-", 8) + "long-"},
	}
	for _, tt := range tests {
		got := releaseName(Deployment{ID: tt.id, Helm: &HelmRelease{ReleaseName: tt.release}})
		if !strings.HasPrefix(got, tt.want) || len(got) > 53 || len(validation.IsDNS1123Label(got)) > 0 {
			t.Errorf("releaseName(%q) = %q, want a DNS label of at most 53 characters starting with %q", tt.id, got, tt.want)
		}
	}
}

func TestLabelerStampsEveryObject(t *testing.T) {
	in := bytes.NewBufferString(`---
# Source: demo/templates/a.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: a
  labels:
    app: demo
---
# Source: demo/templates/empty.yaml
---
# Source: demo/templates/b.yaml
apiVersion: v1
kind: Secret
metadata:
  name: b
`)
	out, err := (&labeler{label: "lbl", annotation: "ns/id"}).Run(in)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifestObjects(out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("got %d objects, want 2:\n%s", len(objs), out)
	}
	for _, o := range objs {
		if got := o.GetLabels()[LabelBundleID]; got != "lbl" {
			t.Errorf("%s: label %q, want %q", o.GetName(), got, "lbl")
		}
		if got := o.GetAnnotations()[AnnotationBundleID]; got != "ns/id" {
			t.Errorf("%s: annotation %q, want %q", o.GetName(), got, "ns/id")
		}
	}
	if got := objs[0].GetLabels()["app"]; got != "demo" {
		t.Errorf("existing label lost: got %q, want %q", got, "demo")
	}
}

// The drifted fields in a message are bounded in count and bytes, whatever the objects.
func TestDriftSummaryBounded(t *testing.T) {
	var many []ObjectStatus
	for i := range 40 {
		many = append(many, ObjectStatus{Kind: "ConfigMap", Namespace: "ns", Name: fmt.Sprintf("cm-%d", i), Fields: []string{"/data/key"}})
	}
	got := driftSummary(many)
	if n := strings.Count(got, "ConfigMap/"); n != maxMessagePaths || !strings.HasSuffix(got, " and 30 more") {
		t.Errorf("40 drifted paths: %d listed, want %d and \"and 30 more\": %q", n, maxMessagePaths, got)
	}
	long := []ObjectStatus{{Kind: "ConfigMap", Namespace: "ns", Name: strings.Repeat("n", 250), Fields: []string{"/data/" + strings.Repeat("k", 300), "/data/a", "/data/b", "/data/c"}}}
	got = driftSummary(long)
	if len(got) > maxMessagePathBytes+len("drifted: ")+len(" and 4 more") {
		t.Errorf("summary of long paths is %d bytes, over the bound: %q", len(got), got)
	}
	if !strings.Contains(got, " more") {
		t.Errorf("summary of long paths does not say more were left out: %q", got)
	}
}
