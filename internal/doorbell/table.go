package doorbell

import "iter"

// table holds the entries by UID. The map holds each UID's index only, 20 bytes a slot where
// key and entry took 56, and the entries lie in pages: a Go map doubles as it grows and is
// between half and seven eighths full, so at a million clusters the map of entries took
// 137 MB (137 bytes a cluster). A deleted entry's slot is reused by the next new one; the
// pages are kept, bounded by the most entries the table ever held at once.
type table struct {
	index map[UID]uint32
	pages [][]entry
	used  uint32   // slots handed out: the next new one, when free is empty
	free  []uint32 // slots of deleted entries
}

// tablePage is how many entries a page holds (40 KB).
const tablePage = 1024

func newTable() table { return table{index: map[UID]uint32{}} }

func (t *table) at(i uint32) *entry { return &t.pages[i/tablePage][i%tablePage] }

// get returns u's entry and whether it has one.
func (t *table) get(u UID) (entry, bool) {
	i, ok := t.index[u]
	if !ok {
		return entry{}, false
	}
	return *t.at(i), true
}

// set stores e as u's entry.
func (t *table) set(u UID, e entry) {
	if i, ok := t.index[u]; ok {
		*t.at(i) = e
		return
	}
	var i uint32
	if n := len(t.free); n > 0 {
		i, t.free = t.free[n-1], t.free[:n-1]
	} else {
		if int(t.used) == len(t.pages)*tablePage {
			t.pages = append(t.pages, make([]entry, tablePage))
		}
		i = t.used
		t.used++
	}
	t.index[u] = i
	*t.at(i) = e
}

// del deletes u's entry, if it has one.
func (t *table) del(u UID) {
	i, ok := t.index[u]
	if !ok {
		return
	}
	delete(t.index, u)
	*t.at(i) = entry{}
	t.free = append(t.free, i)
}

func (t *table) len() int { return len(t.index) }

// all yields every entry; set and del may be called meanwhile, as for a map.
func (t *table) all() iter.Seq2[UID, entry] {
	return func(yield func(UID, entry) bool) {
		for u, i := range t.index {
			if !yield(u, *t.at(i)) {
				return
			}
		}
	}
}
