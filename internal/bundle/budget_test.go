package bundle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"flotilla.dev/api"
)

// hostileFanOut is a kustomization whose bases fan out: each of levels levels has two bases
// (with their own namePrefix, so their objects do not clash), each naming both bases of the next
// level. Kustomize reads each base once per reference: 2^levels leaves, render time doubling
// per level.
func hostileFanOut(levels int) Files {
	f := Files{"kustomization.yaml": []byte("resources:\n- l0a\n- l0b\n")}
	for i := range levels {
		for _, s := range []string{"a", "b"} {
			d := fmt.Sprintf("l%d%s", i, s)
			if i == levels-1 {
				f[d+"/kustomization.yaml"] = []byte("namePrefix: " + s + "-\nresources:\n- cm.yaml\n")
				f[d+"/cm.yaml"] = []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: v\n")
				continue
			}
			f[d+"/kustomization.yaml"] = fmt.Appendf(nil, "namePrefix: %s-\nresources:\n- ../l%da\n- ../l%db\n", s, i+1, i+1)
		}
	}
	return f
}

// hostileChart is a chart whose only template is tpl.
func hostileChart(tpl string) Files {
	return Files{
		"Chart.yaml":          []byte("apiVersion: v2\nname: hostile\nversion: 0.1.0\n"),
		"templates/many.yaml": []byte(tpl),
	}
}

func budgetErr(t *testing.T, err error) *BudgetError {
	t.Helper()
	var be *BudgetError
	if !errors.As(err, &be) || !errors.Is(err, ErrBudgetExceeded) {
		t.Fatalf("got error %v, want a render budget error", err)
	}
	return be
}

func renderWith(b Budget, files Files) (*Rendered, error) {
	return Render(WithBudget(context.Background(), b), files, api.BundleDeploymentOptions{}, Cluster{Name: "c"}, "hostile")
}

func TestRenderBudgetKustomizeFanOut(t *testing.T) {
	// 10 levels make 1,024 objects, within the budget of 1,500; Kustomize reads some 3,000
	// kustomizations and documents to make them.
	_, err := renderWith(Budget{MaxObjects: 1500}, hostileFanOut(10))
	be := budgetErr(t, err)
	if be.Budget != "objects" || be.Flag != FlagRenderMaxObjects {
		t.Errorf("got %+v, want the objects budget and %s", be, FlagRenderMaxObjects)
	}
	if !strings.Contains(err.Error(), "kustomize") || !strings.Contains(err.Error(), "1500 objects") {
		t.Errorf("error %q does not name kustomize and the budget", err)
	}
	// The same tree with 5 levels is fine.
	if _, err := renderWith(Budget{MaxObjects: 1500}, hostileFanOut(5)); err != nil {
		t.Fatal(err)
	}
}

// TestRenderBudgetKustomizeWorkBounded: the work Kustomize does before it stops is the same
// whatever the depth of the tree (unbudgeted, each level doubles it).
func TestRenderBudgetKustomizeWorkBounded(t *testing.T) {
	steps := func(levels int) int64 {
		m, _, stop := startMeter(WithBudget(context.Background(), Budget{Time: time.Hour, MaxObjects: 500}))
		defer stop()
		_, err := kustomize(m, hostileFanOut(levels), ".", nil)
		budgetErr(t, err)
		return m.steps.Load()
	}
	small, big := steps(9), steps(16)
	// 2^16 leaves instead of 2^9: unbounded, 128 times the work.
	if big > 2*small {
		t.Errorf("16 levels took %d steps, 9 levels %d: the work grows with the tree", big, small)
	}
}

func TestRenderBudgetHelm(t *testing.T) {
	cmTpl := "{{ range $i := until %d }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{ $i }}\n{{ end }}\n"
	for _, tc := range []struct {
		name   string
		tpl    string
		budget Budget
		want   string // which budget
	}{
		// The reported case: 20,000 objects, 4 s and 148 MB unbudgeted.
		{"range until 20000", fmt.Sprintf(cmTpl, 20000), Budget{}, "objects"},
		{"until allocates", "{{ range until 1000000000 }}x{{ end }}", Budget{}, "bytes"},
		{"output", "{{ range 100000000 }}xxxxxxxxxx{{ end }}", Budget{MaxBytes: 64 << 10}, "bytes"},
		{"output of includes", `{{ define "x" }}{{ range 100000000 }}x{{ end }}{{ end }}{{ $s := include "x" . }}`, Budget{MaxBytes: 64 << 10}, "bytes"},
		{"tpl", `{{ tpl "{{ range 100000000 }}x{{ end }}" . }}`, Budget{MaxBytes: 64 << 10}, "bytes"},
		{"repeat", `{{ repeat 1000000000 "x" }}`, Budget{}, "bytes"},
		{"indent", `{{ indent 1000000000 "x" }}`, Budget{}, "bytes"},
		{"doubling a list", `{{ $l := list 1 }}{{ range until 64 }}{{ $l = concat $l $l }}{{ end }}`, Budget{MaxBytes: 64 << 10}, "bytes"},
		{"doubling a string", `{{ $s := "x" }}{{ range until 64 }}{{ $s = printf "%s%s" $s $s }}{{ end }}`, Budget{MaxBytes: 64 << 10}, "bytes"},
		{"replace", `{{ $s := repeat 100000 "x" }}{{ replace "" $s $s }}`, Budget{}, "bytes"},
		// No output and no function call: only the time budget stops them.
		{"empty loop", "{{ range 1000000000000 }}{{ end }}", Budget{Time: 100 * time.Millisecond}, "time"},
		{"nested loops", "{{ range $i := .Values.l }}{{ range $j := $.Values.l }}{{ range $k := $.Values.l }}{{ end }}{{ end }}{{ end }}", Budget{Time: 100 * time.Millisecond}, "time"},
		{"recursion", `{{ define "a" }}{{ template "a" }}{{ template "a" }}{{ end }}{{ template "a" }}`, Budget{Time: 100 * time.Millisecond}, "time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := hostileChart(tc.tpl)
			files["values.yaml"] = []byte("l: [" + strings.Repeat("1,", 5000) + "1]\n")
			_, err := renderWith(tc.budget, files)
			if be := budgetErr(t, err); be.Budget != tc.want {
				t.Errorf("got %v, want the %s budget", err, tc.want)
			}
		})
	}
	// A chart within the budget renders as before.
	r, err := renderWith(Budget{}, hostileChart(fmt.Sprintf(cmTpl, 100)))
	if err != nil || len(r.Objects) != 100 {
		t.Fatalf("got %v, %v; want 100 objects", r, err)
	}
}

// TestRenderBudgetRawTemplates: a raw bundle's templates/ run in the same engine.
func TestRenderBudgetRawTemplates(t *testing.T) {
	_, err := renderWith(Budget{MaxBytes: 64 << 10}, Files{"templates/x.yaml": []byte("{{ range 100000000 }}x{{ end }}")})
	budgetErr(t, err)
}

func TestRenderBudgetValuesTemplate(t *testing.T) {
	files := hostileChart("{}")
	opts := api.BundleDeploymentOptions{Helm: &api.HelmOptions{Values: map[string]any{"a": "${ range until 1000000000 }x${ end }"}}}
	_, err := Render(context.Background(), files, opts, Cluster{Name: "c"}, "hostile")
	budgetErr(t, err)
	_, err = TemplateValues(opts, Cluster{Name: "c"})
	budgetErr(t, err)
}

func TestRenderBudgetRawYAML(t *testing.T) {
	var many bytes.Buffer
	for i := range 10_001 {
		fmt.Fprintf(&many, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c%d\n", i)
	}
	_, err := renderWith(Budget{}, Files{"many.yaml": many.Bytes()})
	if be := budgetErr(t, err); be.Budget != "objects" {
		t.Errorf("got %v, want the objects budget", err)
	}
	_, err = renderWith(Budget{MaxBytes: 100_000}, Files{"many.yaml": many.Bytes()})
	if be := budgetErr(t, err); be.Budget != "bytes" {
		t.Errorf("got %v, want the bytes budget", err)
	}
	// Lists count their items.
	list := "apiVersion: v1\nkind: List\nitems:\n" + strings.Repeat("- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: x\n", 10_001)
	_, err = renderWith(Budget{}, Files{"list.yaml": []byte(list)})
	budgetErr(t, err)
}

// TestRenderCancelStops: a render whose context is cancelled returns (it is not left running),
// even where the renderer takes no context.
func TestRenderCancelStops(t *testing.T) {
	for name, files := range map[string]Files{
		"helm":      hostileChart("{{ range 1000000000000 }}{{ end }}"),
		"kustomize": hostileFanOut(20),
	} {
		t.Run(name, func(t *testing.T) {
			before := RendersInFlight()
			ctx, cancel := context.WithCancel(WithBudget(context.Background(), Budget{Time: time.Hour, MaxObjects: 1 << 30, MaxBytes: 1 << 40}))
			done := make(chan error, 1)
			go func() {
				_, err := Render(ctx, files, api.BundleDeploymentOptions{}, Cluster{Name: "c"}, "hostile")
				done <- err
			}()
			for RendersInFlight() == before {
				time.Sleep(time.Millisecond)
			}
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("got %v, want context.Canceled", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("the render went on after its context was cancelled")
			}
			if n := RendersInFlight(); n != before {
				t.Fatalf("%d renders in flight after the render returned, want %d", n, before)
			}
		})
	}
}

func TestRenderDirBudget(t *testing.T) {
	dir := t.TempDir()
	tree := map[string]string{}
	tree["app/fleet.yaml"] = "{}\n"
	for name, data := range hostileFanOut(10) {
		tree["app/"+name] = string(data)
	}
	writeTree(t, dir, tree)
	var out bytes.Buffer
	err := RenderDir(WithBudget(context.Background(), Budget{MaxObjects: 1500}), dir, Cluster{Name: "c"}, &out)
	budgetErr(t, err)
}
