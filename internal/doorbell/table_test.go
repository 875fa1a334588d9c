package doorbell

import (
	"encoding/binary"
	"runtime"
	"testing"
)

// TestTable checks the table against a map of the same entries through inserts, updates,
// deletes and reuse of deleted slots, and that iterating sees each entry once.
func TestTable(t *testing.T) {
	tb := newTable()
	want := map[UID]entry{}
	uid := func(i int) UID {
		var u UID
		binary.LittleEndian.PutUint64(u[:], uint64(i)*0x9e3779b97f4a7c15)
		return u
	}
	check := func(step string) {
		t.Helper()
		if tb.len() != len(want) {
			t.Fatalf("%s: len %d, want %d", step, tb.len(), len(want))
		}
		seen := 0
		for u, e := range tb.all() {
			if w, ok := want[u]; !ok || w != e {
				t.Fatalf("%s: entry %x is %+v, want %+v (%v)", step, u, e, w, ok)
			}
			seen++
		}
		if seen != len(want) {
			t.Fatalf("%s: iterated %d entries, want %d", step, seen, len(want))
		}
		for u, w := range want {
			if e, ok := tb.get(u); !ok || e != w {
				t.Fatalf("%s: get %x = %+v, %v; want %+v", step, u, e, ok, w)
			}
		}
	}
	const n = 3*tablePage + 17
	for i := range n {
		e := entry{counter: uint64(i), port: uint16(i), family: 4}
		tb.set(uid(i), e)
		want[uid(i)] = e
	}
	check("inserted")
	for i := 0; i < n; i += 3 {
		e := want[uid(i)]
		e.pending = true
		tb.set(uid(i), e)
		want[uid(i)] = e
	}
	check("updated")
	for i := 1; i < n; i += 2 {
		tb.del(uid(i))
		delete(want, uid(i))
	}
	tb.del(uid(n + 5)) // none: nothing happens
	check("deleted")
	if _, ok := tb.get(uid(1)); ok {
		t.Fatal("a deleted entry is still found")
	}
	pages := len(tb.pages)
	for i := n; i < n+n/2; i++ {
		e := entry{counter: uint64(i), family: 6}
		tb.set(uid(i), e)
		want[uid(i)] = e
	}
	check("reinserted")
	if len(tb.pages) != pages {
		t.Fatalf("%d pages after reinserting into deleted slots, want %d", len(tb.pages), pages)
	}
	// Deleting while iterating, as the forgetter does.
	for u, e := range tb.all() {
		if e.counter%5 == 0 {
			tb.del(u)
			delete(want, u)
		}
	}
	check("deleted while iterating")
}

// BenchmarkTableMemory reports the heap bytes per entry of the table and of a map of the
// entries, filled with the same b.N entries (-benchtime=1000000x for a million clusters).
func BenchmarkTableMemory(b *testing.B) {
	uid := func(i int) UID {
		var u UID
		binary.LittleEndian.PutUint64(u[:], uint64(i)*0x9e3779b97f4a7c15)
		return u
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	tb := newTable()
	for i := range b.N {
		tb.set(uid(i), entry{counter: uint64(i)})
	}
	mid := heap()
	m := map[UID]entry{}
	for i := range b.N {
		m[uid(i)] = entry{counter: uint64(i)}
	}
	after := heap()
	b.ReportMetric(float64(mid-before)/float64(b.N), "table-B/entry")
	b.ReportMetric(float64(after-mid)/float64(b.N), "map-B/entry")
	runtime.KeepAlive(tb)
	runtime.KeepAlive(m)
}
