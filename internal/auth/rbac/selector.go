package rbac

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/labels"

	"flotilla.dev/api"
	"flotilla.dev/internal/resource"
)

// selector is a parsed label selector, interned by its canonical form so that thousands of
// bindings naming the same selector share one.
type selector struct {
	sel   labels.Selector
	key   string // canonical form; "" for the empty selector (everything)
	src   *api.LabelSelector
	eq    eqKey // one label every matching set must carry, when there is one
	keyed bool
	refs  int
}

// eqKey is a label key and value; a cluster with labels L can only match selectors keyed by
// one of L's pairs, or unkeyed ones.
type eqKey struct{ k, v string }

func parseSelector(s *api.LabelSelector) (labels.Selector, error) {
	sel, err := resource.Selector(s)
	if err != nil {
		return nil, fmt.Errorf("invalid selector: %w", err)
	}
	return sel, nil
}

// eqOf picks the pair an index can key a selector by: its first matchLabels key, or an In
// expression with a single value.
func eqOf(s *api.LabelSelector) (eqKey, bool) {
	if len(s.MatchLabels) > 0 {
		keys := make([]string, 0, len(s.MatchLabels))
		for k := range s.MatchLabels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return eqKey{keys[0], s.MatchLabels[keys[0]]}, true
	}
	for _, e := range s.MatchExpressions {
		if e.Operator == "In" && len(e.Values) == 1 {
			return eqKey{e.Key, e.Values[0]}, true
		}
	}
	return eqKey{}, false
}

// selectors interns parsed selectors.
type selectors map[string]*selector

func (ss selectors) get(s *api.LabelSelector) (*selector, error) {
	sel, err := parseSelector(s)
	if err != nil {
		return nil, err
	}
	key := sel.String()
	if x, ok := ss[key]; ok {
		x.refs++
		return x, nil
	}
	x := &selector{sel: sel, key: key, src: cloneSelector(s), refs: 1}
	x.eq, x.keyed = eqOf(s)
	ss[key] = x
	return x, nil
}

func (ss selectors) release(x *selector) {
	if x == nil {
		return
	}
	x.refs--
	if x.refs == 0 {
		delete(ss, x.key)
	}
}

func cloneSelector(s *api.LabelSelector) *api.LabelSelector {
	if s == nil {
		return nil
	}
	c := &api.LabelSelector{}
	if s.MatchLabels != nil {
		c.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			c.MatchLabels[k] = v
		}
	}
	for _, e := range s.MatchExpressions {
		c.MatchExpressions = append(c.MatchExpressions, api.LabelSelectorRequirement{Key: e.Key, Operator: e.Operator, Values: slices.Clone(e.Values)})
	}
	return c
}

// selIndex finds the items whose selector matches a label set without trying every
// selector: items are bucketed by a label pair their selector requires.
type selIndex[T comparable] struct {
	keyed   map[eqKey][]selEntry[T]
	unkeyed []selEntry[T]
}

type selEntry[T comparable] struct {
	sel  *selector
	item T
}

func (x *selIndex[T]) add(s *selector, item T) {
	e := selEntry[T]{s, item}
	if !s.keyed {
		x.unkeyed = append(x.unkeyed, e)
		return
	}
	if x.keyed == nil {
		x.keyed = map[eqKey][]selEntry[T]{}
	}
	x.keyed[s.eq] = append(x.keyed[s.eq], e)
}

func (x *selIndex[T]) remove(s *selector, item T) {
	e := selEntry[T]{s, item}
	if !s.keyed {
		x.unkeyed = deleteItem(x.unkeyed, e)
		return
	}
	l := deleteItem(x.keyed[s.eq], e)
	if len(l) == 0 {
		delete(x.keyed, s.eq)
	} else {
		x.keyed[s.eq] = l
	}
}

// each calls fn for every item whose selector matches set.
func (x *selIndex[T]) each(set map[string]string, fn func(T)) {
	ls := labels.Set(set)
	for _, e := range x.unkeyed {
		if e.sel.sel.Matches(ls) {
			fn(e.item)
		}
	}
	if len(x.keyed) == 0 {
		return
	}
	for k, v := range set {
		for _, e := range x.keyed[eqKey{k, v}] {
			if e.sel.sel.Matches(ls) {
				fn(e.item)
			}
		}
	}
}

// deleteItem removes the first v from s, keeping order.
func deleteItem[T comparable](s []T, v T) []T {
	if i := slices.Index(s, v); i >= 0 {
		s = slices.Delete(s, i, i+1)
	}
	if len(s) == 0 {
		return nil
	}
	return s
}
