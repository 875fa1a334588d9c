package rbac

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
)

// FuzzSelectorIndex checks that the bucketed selector index finds exactly the bindings a
// brute-force match finds, for selectors and label sets made from the input, and that
// Decide and Compile agree with it.
func FuzzSelectorIndex(f *testing.F) {
	f.Add("env=prod;site=a", "env=prod,site=a", "env=prod,site=b")
	f.Add("env=prod,site=a;", "", "env=dev")
	f.Add("env in prod dev;!site", "env=dev", "env=prod,site=x")
	f.Add("env notin prod;tier", "tier=1", "env=prod,tier=1")
	f.Add("a in x;a in x y;a=x", "a=x", "a=y")
	f.Fuzz(func(t *testing.T, sels, set1, set2 string) {
		a := New()
		var parsed []*api.LabelSelector
		for i, s := range strings.Split(sels, ";") {
			if i >= 8 {
				break
			}
			ls := selectorFrom(s)
			if _, err := a.PutBinding(fmt.Sprintf("b%d", i), api.RoleBindingSpec{
				Subject: api.Subject{Kind: api.SubjectUser, Name: fmt.Sprintf("u%d", i)}, RoleRef: RoleClusterMember,
				Scope: api.BindingScope{ClusterSelector: ls},
			}); err != nil {
				continue // invalid selectors are refused, and that is all
			}
			parsed = append(parsed, ls)
		}
		for _, set := range []string{set1, set2} {
			lbls := labelsFrom(set)
			c := Cluster{Name: "c", Workspace: "w", Labels: lbls}
			found := map[string]bool{}
			a.selBindings.each(lbls, func(b *binding) { found[b.name] = true })
			for name, b := range a.bindings {
				want := b.sel.sel.Matches(labels.Set(lbls))
				if found[name] != want {
					t.Fatalf("selector %q on %v: index says %v, brute force %v", b.sel.key, lbls, found[name], want)
				}
				d := a.Decide(Subject{User: b.subj.name}, Request{Verb: "get", Kind: api.KindCluster, Namespace: "w", Name: "c", Cluster: &c})
				if d.Allowed != want {
					t.Fatalf("selector %q on %v: Decide says %v, brute force %v", b.sel.key, lbls, d.Allowed, want)
				}
			}
			out := a.Compile(c, DefaultCompileOptions())
			if (len(found) > 0) != (len(out.Objects) > 0) {
				t.Fatalf("%d bindings match %v but Compile made %d objects", len(found), lbls, len(out.Objects))
			}
		}
		// Removing every binding empties the index and the interned selectors.
		for name := range a.bindings {
			if _, err := a.DeleteBinding(name); err != nil {
				t.Fatal(err)
			}
		}
		if len(a.sels) != 0 || len(a.selBindings.keyed) != 0 || len(a.selBindings.unkeyed) != 0 {
			t.Fatalf("index not empty after deleting every binding of %d selectors", len(parsed))
		}
	})
}

// selectorFrom reads "k=v,k2=v2" (matchLabels), "k in a b", "k notin a", "k", "!k".
func selectorFrom(s string) *api.LabelSelector {
	ls := &api.LabelSelector{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		switch f := strings.Fields(part); {
		case part == "":
		case strings.Contains(part, "="):
			k, v, _ := strings.Cut(part, "=")
			if ls.MatchLabels == nil {
				ls.MatchLabels = map[string]string{}
			}
			ls.MatchLabels[k] = v
		case len(f) >= 2 && (f[1] == "in" || f[1] == "notin"):
			op := map[string]string{"in": "In", "notin": "NotIn"}[f[1]]
			ls.MatchExpressions = append(ls.MatchExpressions, api.LabelSelectorRequirement{Key: f[0], Operator: op, Values: f[2:]})
		case strings.HasPrefix(part, "!"):
			ls.MatchExpressions = append(ls.MatchExpressions, api.LabelSelectorRequirement{Key: part[1:], Operator: "DoesNotExist"})
		default:
			ls.MatchExpressions = append(ls.MatchExpressions, api.LabelSelectorRequirement{Key: part, Operator: "Exists"})
		}
	}
	return ls
}

func labelsFrom(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}
