package fleet

// dirtySet is the clusters whose status is to be written: a flag in each cluster and a queue
// of them, taken in the order they were marked. At a million clusters a sweep or a load
// marks every cluster, and a map of them grew to ~40 MB of slots that stayed while the
// writer drained it; the flag costs nothing (it sits in the Cluster's padding) and the queue
// 8 bytes a waiting cluster, given back as it drains.
type dirtySet struct {
	chunks [][]*Cluster // the first is read from head on; the last is appended to
	head   int
	n      int // clusters flagged
}

// dirtyChunk is how many clusters a chunk of the queue holds.
const dirtyChunk = 4096

// add marks c; a cluster already marked keeps its place.
func (d *dirtySet) add(c *Cluster) {
	if c.dirty {
		return
	}
	c.dirty = true
	d.n++
	if k := len(d.chunks); k == 0 || len(d.chunks[k-1]) == dirtyChunk {
		d.chunks = append(d.chunks, make([]*Cluster, 0, dirtyChunk))
	}
	last := &d.chunks[len(d.chunks)-1]
	*last = append(*last, c)
}

// remove unmarks c. Its place in the queue is passed over when reached.
func (d *dirtySet) remove(c *Cluster) {
	if c.dirty {
		c.dirty = false
		d.n--
	}
}

// pop unmarks and returns the cluster marked longest ago, or nil when none is.
func (d *dirtySet) pop() *Cluster {
	for len(d.chunks) > 0 {
		first := d.chunks[0]
		if d.head == len(first) {
			if len(d.chunks) == 1 {
				// The last chunk: reused, as marks come one at a time between passes.
				d.chunks[0], d.head = first[:0], 0
				return nil
			}
			d.chunks[0] = nil
			d.chunks, d.head = d.chunks[1:], 0
			continue
		}
		c := first[d.head]
		first[d.head] = nil
		d.head++
		if c.dirty {
			c.dirty = false
			d.n--
			return c
		}
	}
	return nil
}

// len is how many clusters are marked.
func (d *dirtySet) len() int { return d.n }

// clear unmarks every cluster.
func (d *dirtySet) clear() {
	for d.pop() != nil {
	}
}
