package server

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/doorbell"
	"flotilla.dev/internal/fleet"
)

// bellFleet is how the doorbell sees the fleet model.
type bellFleet struct{ f *fleet.Fleet }

var _ doorbell.Clusters = bellFleet{}

func (b bellFleet) DoorbellLookup(uid doorbell.UID, version int64) (doorbell.Cluster, bool, bool) {
	var text [36]byte
	c, changed, ok := b.f.DoorbellLookup(uid.Append(text[:0]), version)
	if !ok {
		return nil, false, false
	}
	return c, changed, true
}

func (b bellFleet) DoorbellKnown(uid string) bool { return b.f.KnownUID(uid) }

func (b bellFleet) DoorbellUID(key string) string {
	ns, name, _ := strings.Cut(key, "/")
	return b.f.UIDOf(ns, name)
}

func (b bellFleet) Seen(c doorbell.Cluster, now time.Time) { b.f.SeenCluster(c.(*fleet.Cluster), now) }

func (b bellFleet) Key(c doorbell.Cluster) string { return b.f.KeyOf(c.(*fleet.Cluster)) }

func (b bellFleet) Ready() bool { return b.f.Ready() }

// bellGrace is how long a rotated-out doorbell secret still answers the agents holding
// keys derived from it (each answer asks them to fetch the new key).
const bellGrace = 24 * time.Hour

// bellSecrets gives the doorbell the ring's valid secrets, the active one first. They are
// read again at most once a second: the doorbell asks for every datagram, and the ring
// copies its keys on every read.
func bellSecrets(r *auth.Ring) func() [][]byte {
	type cached struct {
		at      int64
		secrets [][]byte
	}
	var cur atomic.Pointer[cached]
	return func() [][]byte {
		now := time.Now().UnixNano()
		if c := cur.Load(); c != nil && now-c.at < int64(time.Second) {
			return c.secrets
		}
		active := r.Active()
		out := [][]byte{active.Secret}
		for _, k := range r.Valid() {
			if k.ID != active.ID {
				out = append(out, k.Secret)
			}
		}
		cur.Store(&cached{at: now, secrets: out})
		return out
	}
}

// bellCollectors are the doorbell's metrics.
func bellCollectors(b *doorbell.Server) []prometheus.Collector {
	counter := func(name, help string, v func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter("flotilla_doorbell_received_total", "Doorbell datagrams received and read (keepalives, and any datagram not a ping's size, are dropped by the socket's filter before).", b.Stats.Received.Load),
		counter("flotilla_doorbell_reads_total", "Doorbell socket reads, each a batch of datagrams.", b.Stats.Reads.Load),
		counter("flotilla_doorbell_answered_total", "Doorbell pings answered.", b.Stats.Answered.Load),
		counter("flotilla_doorbell_rung_total", "Doorbell rings sent unprompted (a change, a tunnel wanted).", b.Stats.Rung.Load),
		counter("flotilla_doorbell_rings_resent_total", "Doorbell rings sent again, unacknowledged by an agent that acknowledges rings.", b.Stats.Resent.Load),
		counter("flotilla_doorbell_rings_spared_total", "Doorbell rings not sent, or not sent again, because the cluster polled over HTTPS first.", b.Stats.Spared.Load),
		counter("flotilla_doorbell_refused_total", "Doorbell datagrams read and dropped: malformed, not signed, replayed, or of an unknown cluster.", b.Stats.Refused.Load),
		counter("flotilla_doorbell_limited_total", "Doorbell datagrams dropped by the per-source limit.", b.Stats.Limited.Load),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_doorbell_clusters", Help: "Clusters whose agents ping the doorbell."}, func() float64 { return float64(b.Len()) }),
	}
}
