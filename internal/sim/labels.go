package sim

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// LabelSpec describes how labels are spread over the simulated clusters. It is written
//
//	key=value[:weight],value[:weight]…;key=…
//
// e.g. "env=prod:50,dev:50;region=eu,us,ap": each cluster gets one value per key, drawn with
// the given weights (1 when omitted), deterministically from the cluster's index so that a
// run is reproducible. "key=@N" gives consecutive blocks of N clusters the values b0, b1, …,
// which makes groups of an exact size (e.g. "group=@10000" for listing 10,000 by label).
type LabelSpec struct {
	keys []labelKey
}

type labelKey struct {
	name   string
	values []string
	// cum holds the cumulative weights; cum[len-1] is the total.
	cum []uint64
	// block > 0: value is "b" + index/block.
	block int
}

// ParseLabelSpec parses a label spec; "" means no labels.
func ParseLabelSpec(spec string) (LabelSpec, error) {
	var ls LabelSpec
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		key, vals, ok := strings.Cut(part, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" || strings.TrimSpace(vals) == "" {
			return LabelSpec{}, fmt.Errorf("label spec %q: want key=value,value…", part)
		}
		if msgs := validation.IsQualifiedName(key); len(msgs) > 0 {
			return LabelSpec{}, fmt.Errorf("label key %q: %s", key, strings.Join(msgs, "; "))
		}
		if seen[key] {
			return LabelSpec{}, fmt.Errorf("label key %q appears twice", key)
		}
		seen[key] = true
		k := labelKey{name: key}
		if n, ok := strings.CutPrefix(strings.TrimSpace(vals), "@"); ok {
			b, err := strconv.Atoi(n)
			if err != nil || b <= 0 {
				return LabelSpec{}, fmt.Errorf("label %s: block size %q is not a positive number", key, n)
			}
			k.block = b
			ls.keys = append(ls.keys, k)
			continue
		}
		var total uint64
		for _, v := range strings.Split(vals, ",") {
			v = strings.TrimSpace(v)
			w := uint64(1)
			if val, weight, ok := strings.Cut(v, ":"); ok {
				n, err := strconv.ParseUint(weight, 10, 32)
				if err != nil {
					return LabelSpec{}, fmt.Errorf("label %s=%s: weight %q is not a whole number", key, val, weight)
				}
				v, w = val, n
			}
			if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 || v == "" {
				return LabelSpec{}, fmt.Errorf("label %s: value %q is not a valid label value", key, v)
			}
			if w == 0 {
				continue
			}
			total += w
			k.values = append(k.values, v)
			k.cum = append(k.cum, total)
		}
		if total == 0 {
			return LabelSpec{}, fmt.Errorf("label %s: every weight is zero", key)
		}
		ls.keys = append(ls.keys, k)
	}
	return ls, nil
}

// Keys returns the label keys in spec order.
func (ls LabelSpec) Keys() []string {
	out := make([]string, len(ls.keys))
	for i, k := range ls.keys {
		out[i] = k.name
	}
	return out
}

// Labels returns cluster i's labels. They are computed, not stored: a million clusters carry
// no label maps in the simulator.
func (ls LabelSpec) Labels(i int) map[string]string {
	out := make(map[string]string, len(ls.keys))
	for n, k := range ls.keys {
		out[k.name] = k.value(i, n)
	}
	return out
}

func (k labelKey) value(i, n int) string {
	if k.block > 0 {
		return "b" + strconv.Itoa(i/k.block)
	}
	u := mix(uint64(i)*0x9e3779b97f4a7c15+uint64(n)+1) % k.cum[len(k.cum)-1]
	for j, c := range k.cum {
		if u < c {
			return k.values[j]
		}
	}
	return k.values[len(k.values)-1]
}

// mix is splitmix64's finaliser: a cheap, well-spread hash of an integer.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// unit maps i and a salt to [0, 1), deterministically.
func unit(i int, salt uint64) float64 {
	return float64(mix(uint64(i)^salt)>>11) / (1 << 53)
}
