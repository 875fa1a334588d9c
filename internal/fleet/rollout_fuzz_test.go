package fleet

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"flotilla.dev/api"
)

// FuzzRollout drives the rollout arithmetic with arbitrary strategies and cluster states:
// partitions cover every targeted cluster exactly once, a pass never makes more clusters
// unavailable than allowed, never admits a later partition's clusters while an earlier one
// holds some back, and keeps the state counts whole.
func FuzzRollout(f *testing.F) {
	f.Add(uint16(10), []byte{0, 1, 2, 3}, "", "", "", uint8(0), "")
	f.Add(uint16(10), []byte{1}, "1", "", "", uint8(0), "")
	f.Add(uint16(250), []byte{1, 3, 5, 7, 0}, "10%", "0", "25%", uint8(0), "")
	f.Add(uint16(250), []byte{1, 1, 1, 6}, "5", "1", "10", uint8(3), "50%")
	f.Add(uint16(40), []byte{7, 3, 1}, "30%", "50%", "", uint8(4), "2")
	f.Add(uint16(300), []byte{1}, "9223372036854775807%", "9223372036854775807%", "9223372036854775807%", uint8(2), "9223372036854775807%")
	f.Add(uint16(30), []byte{1}, "-5", "-1", "-3", uint8(2), "-10%")
	f.Add(uint16(30), []byte{1}, "x", "%", "0%", uint8(1), "0")
	f.Fuzz(func(t *testing.T, n uint16, seed []byte, maxUnavailable, maxUnavailableParts, autoSize string, nparts uint8, partMax string) {
		n %= 301
		rs := &api.RolloutStrategy{}
		ios := func(s string) *api.IntOrString {
			if s == "" {
				return nil
			}
			v := api.IntOrString(s)
			return &v
		}
		rs.MaxUnavailable, rs.MaxUnavailablePartitions, rs.AutoPartitionSize = ios(maxUnavailable), ios(maxUnavailableParts), ios(autoSize)
		k := int(nparts % 5)
		for j := range k {
			p := api.Partition{Name: fmt.Sprintf("p%d", j), MaxUnavailable: ios(partMax),
				ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{"p": strconv.Itoa(j)}}}
			if j == 1 {
				// Overlaps the others: a cluster belongs to the first partition it matches.
				p.ClusterSelector = nil
				p.ClusterName = "c-0003"
			}
			rs.Partitions = append(rs.Partitions, p)
		}

		fl := New(nil, Config{})
		w := fl.ws("ns")
		b := &bundleEntry{ns: "ns", name: "app", spec: api.BundleSpec{RolloutStrategy: rs},
			counts: map[string]int{}, notReady: map[*Cluster]struct{}{}, rolling: true}
		w.bundles[b.name] = b
		heldBefore := map[*Cluster]bool{}
		for i := range int(n) {
			var x byte
			if len(seed) > 0 {
				x = seed[i%len(seed)] ^ byte(i/len(seed))
			}
			c := &Cluster{Namespace: "ns", Name: fmt.Sprintf("c-%04d", i), UID: strconv.Itoa(i), Labels: map[string]string{"p": strconv.Itoa(i % max(k, 1))}}
			w.clusters[c.Name] = c
			p := pair{target: 0, desiredID: "new"}
			if x&1 != 0 {
				p.held = &api.DeploymentSpec{ID: "old"}
				heldBefore[c] = true
			}
			switch x >> 1 & 3 {
			case 0: // runs the new version, Ready
				p.reportedID, p.state = "new", readyState
			case 1: // runs the old version, Ready
				p.reportedID, p.state = "old", readyState
			case 2: // failing
				p.reportedID, p.state = "old", depStateOf(api.StateErrApplied)
			}
			c.addDep(b.name, p)
			fl.recount(b, c, "", c.deps.get(b.name).effective())
		}
		total := int(n)

		parts := fl.partitions(w, b)
		inPart := map[*Cluster]int{}
		for pi, p := range parts {
			for _, c := range p.clusters {
				if prev, dup := inPart[c]; dup {
					t.Fatalf("cluster %s is in partitions %d and %d", c.Name, prev, pi)
				}
				inPart[c] = pi
			}
			if p.maxUnavailable < 0 || (strings.HasSuffix(partMax, "%") && p.maxUnavailable > len(p.clusters)) {
				t.Fatalf("partition %s of %d clusters allows %d unavailable", p.name, len(p.clusters), p.maxUnavailable)
			}
		}
		if len(inPart) != total {
			t.Fatalf("partitions hold %d of %d clusters", len(inPart), total)
		}

		unavailable := func() int {
			u := 0
			for _, c := range w.clusters {
				if !c.deps.get(b.name).available() {
					u++
				}
			}
			return u
		}
		before := unavailable()
		allowed := max(1, scaled(rs.MaxUnavailable, "100%", total))
		if strings.HasSuffix(maxUnavailable, "%") && allowed > max(total, 1) {
			t.Fatalf("maxUnavailable %q of %d clusters allows %d", maxUnavailable, total, allowed)
		}
		fl.rollout(w, b)
		if after := unavailable(); after > max(before, allowed) {
			t.Fatalf("%d clusters unavailable after a pass (%d before), at most %d allowed", after, before, allowed)
		}

		// Partition status adds up.
		if len(b.rollout.partitions) != len(parts) {
			t.Fatalf("%d partition statuses for %d partitions", len(b.rollout.partitions), len(parts))
		}
		sum := 0
		for i, ps := range b.rollout.partitions {
			if ps.Ready+ps.Unavailable != ps.Count || ps.Count != len(parts[i].clusters) || ps.Name != parts[i].name {
				t.Fatalf("partition status %+v for %d clusters", ps, len(parts[i].clusters))
			}
			sum += ps.Count
		}
		if sum != total {
			t.Fatalf("partition statuses count %d clusters of %d", sum, total)
		}
		if b.rollout.stalled != "" && !strings.HasPrefix(b.rollout.stalled, "rollout waiting: partition ") {
			t.Fatalf("stall message %q", b.rollout.stalled)
		}

		// In order: once a partition holds a cluster back, no later one was admitted.
		heldAfter := 0
		blocked := false
		for _, p := range parts {
			for _, c := range p.clusters {
				held := c.deps.get(b.name).held != nil
				if held {
					heldAfter++
				} else if blocked && heldBefore[c] {
					t.Fatalf("cluster %s of partition %s admitted while an earlier partition holds clusters back", c.Name, p.name)
				}
				if held && !heldBefore[c] {
					t.Fatalf("cluster %s held back by the pass", c.Name)
				}
			}
			for _, c := range p.clusters {
				if c.deps.get(b.name).held != nil {
					blocked = true
				}
			}
		}
		if b.rolling != (heldAfter > 0) {
			t.Fatalf("rolling %v with %d clusters held", b.rolling, heldAfter)
		}

		// The counts still add up to the clusters, by their effective state.
		want := map[string]int{}
		for _, c := range w.clusters {
			want[c.deps.get(b.name).effective()]++
		}
		for s, n := range b.counts {
			if n != want[s] {
				t.Fatalf("count of %s is %d, want %d (counts %v)", s, n, want[s], b.counts)
			}
		}
		if b.desired != total {
			t.Fatalf("desired %d, want %d", b.desired, total)
		}
	})
}
