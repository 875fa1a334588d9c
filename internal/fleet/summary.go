package fleet

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"flotilla.dev/api"
)

// The summary of a Cluster is what the model loads at start: a compact binary record the
// store keeps beside the document, so that loading a million clusters reads no JSON.
//
//	version 1 | namespace | name | uid | clientID | paused | state | lastSeen (unix ns) |
//	inventory (JSON) | labels | annotations | templateValues (JSON, may be absent)
//
// strings and byte fields are uvarint-length-prefixed; maps are a uvarint count of pairs.

const summaryVersion = 1

// SummarizeCluster is the store.Summarizer for Clusters.
func SummarizeCluster(obj *api.Object) []byte {
	var spec api.ClusterSpec
	json.Unmarshal(obj.Spec, &spec)
	var st struct {
		State     string          `json:"state"`
		LastSeen  *time.Time      `json:"lastSeen"`
		Inventory json.RawMessage `json:"inventory"`
	}
	json.Unmarshal(obj.Status, &st)
	b := make([]byte, 0, 256)
	b = append(b, summaryVersion)
	for _, s := range []string{obj.Metadata.Namespace, obj.Metadata.Name, obj.Metadata.UID, spec.ClientID} {
		b = appendString(b, s)
	}
	if spec.Paused {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = appendString(b, st.State)
	var seen int64
	if st.LastSeen != nil {
		seen = st.LastSeen.UnixNano()
	}
	b = binary.AppendVarint(b, seen)
	b = appendString(b, string(st.Inventory))
	b = appendMap(b, obj.Metadata.Labels)
	b = appendMap(b, obj.Metadata.Annotations)
	var values []byte
	if len(spec.TemplateValues) > 0 {
		values, _ = json.Marshal(spec.TemplateValues)
	}
	b = appendString(b, string(values))
	// Summaries end with the stored status's hash (older ones end before it, or before
	// the values).
	return binary.LittleEndian.AppendUint64(b, statusHash(obj.Status))
}

// statusHash identifies a stored status document, so that the model can tell, without
// reading the object, that a status it would write is already stored: after a load every
// cluster's rollup is recomputed, and at a million clusters reading each back costs minutes.
// Zero means unknown.
func statusHash(status []byte) uint64 {
	if len(status) == 0 {
		return 0
	}
	return fnv1a(status)
}

// fnv1a is 64-bit FNV-1a, the same sums as hash/fnv's New64a (a test checks), written out
// because it runs on every agent poll (PollAfter) and hash/fnv's hasher of a string costs two
// allocations there.
func fnv1a[T string | []byte](b T) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(b); i++ {
		h ^= uint64(b[i])
		h *= prime
	}
	return h
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendMap writes pairs in key order, so equal maps encode to equal bytes and can be
// shared when loaded (see sharedMap).
func appendMap(b []byte, m map[string]string) []byte {
	b = binary.AppendUvarint(b, uint64(len(m)))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, m[k])
	}
	return b
}

// sharedMaps holds one copy of each distinct label (or annotation) set. The model never
// changes a cluster's map in place — a change replaces it — so clusters with the same
// labels can share one map: a fleet of a million usually has a few thousand distinct sets.
var sharedMaps = map[string]map[string]string{}

const maxSharedMaps = 1 << 18

// sharedMap returns the shared copy of m.
func sharedMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	key := appendMap(nil, m)
	if s, ok := sharedMaps[string(key)]; ok {
		return s
	}
	m = intern(m)
	if len(sharedMaps) < maxSharedMaps {
		sharedMaps[string(key)] = m
	}
	return m
}

var errSummary = errors.New("malformed cluster summary")

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errSummary
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errSummary
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// str interns: label keys and values repeat across a fleet.
func (r *reader) str(intern bool) string {
	v := r.bytes()
	if intern {
		return internBytes(v)
	}
	return string(v)
}

func (r *reader) strMap(intern bool) map[string]string {
	start := r.b
	n := r.uvarint()
	if r.err != nil || n == 0 || n > uint64(len(r.b)) {
		return nil
	}
	// Equal maps have equal bytes (appendMap sorts): most clusters share one copy, so look
	// for it before building another.
	body := r.b
	for range 2 * n {
		r.bytes()
	}
	if r.err != nil {
		return nil
	}
	raw := start[:len(start)-len(r.b)]
	if s, ok := sharedMaps[string(raw)]; ok {
		return s
	}
	rest := r.b
	r.b = body
	m := make(map[string]string, n)
	for range n {
		k := r.str(intern)
		m[k] = r.str(intern)
	}
	r.b = rest
	if len(sharedMaps) < maxSharedMaps {
		sharedMaps[string(raw)] = m
	}
	return m
}

// setIDs sets the cluster's name, UID and client ID as parts of one string: they are kept
// for the cluster's lifetime, and at a million clusters one object instead of three is
// less for the collector to mark.
func (c *Cluster) setIDs(name, uid, clientID string) {
	all := name + uid + clientID
	c.Name, all = all[:len(name)], all[len(name):]
	c.UID, c.ClientID = all[:len(uid)], all[len(uid):]
}

// decodeCluster reads a summary into a new Cluster.
func decodeCluster(b []byte) (*Cluster, error) {
	if len(b) == 0 || b[0] != summaryVersion {
		return nil, errSummary
	}
	r := &reader{b: b[1:]}
	c := &Cluster{}
	c.Namespace = r.str(true)
	// Name, UID and client ID are adjacent: keep them in one allocation (see setIDs).
	start := r.b
	name, uid, clientID := r.bytes(), r.bytes(), r.bytes()
	if r.err != nil {
		return nil, r.err
	}
	span := string(start[:len(start)-len(r.b)])
	sub := func(v []byte) string {
		o := cap(start) - cap(v)
		return span[o : o+len(v)]
	}
	c.Name, c.UID, c.ClientID = sub(name), sub(uid), sub(clientID)
	if len(r.b) == 0 {
		return nil, errSummary
	}
	c.Paused = r.b[0] == 1
	r.b = r.b[1:]
	c.state = codeOf(string(r.bytes()))
	seen, n := binary.Varint(r.b)
	if n <= 0 {
		return nil, errSummary
	}
	r.b = r.b[n:]
	if seen != 0 {
		c.seen.Store(seen)
		c.storedSeen = seen
	}
	if inv := r.bytes(); len(inv) > 0 {
		c.inventory = invOf(inv)
		c.storedInv = c.inventory
	}
	c.Labels = r.strMap(true)
	c.Annotations = r.strMap(false)
	if r.err == nil && len(r.b) > 0 {
		if v := r.bytes(); len(v) > 0 {
			var values map[string]any
			json.Unmarshal(v, &values)
			c.setValues(values)
		}
	}
	if r.err == nil && len(r.b) >= 8 {
		c.statusHash = binary.LittleEndian.Uint64(r.b)
		r.b = r.b[8:]
	}
	return c, r.err
}
