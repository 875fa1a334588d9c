// Package metrics owns the server's Prometheus metrics: one registry, the HTTP middleware
// that counts and times requests per route, and the collectors other packages feed.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the server's registry and the metrics everyone shares.
type Metrics struct {
	Registry *prometheus.Registry

	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	storeOps *prometheus.HistogramVec
	storeErr *prometheus.CounterVec
	batch    prometheus.Histogram
	agent    *prometheus.CounterVec
	reconc   *prometheus.HistogramVec
}

// New creates the registry with Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_http_requests_total", Help: "HTTP requests by route, method and status code.",
	}, []string{"route", "method", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "flotilla_http_request_duration_seconds", Help: "HTTP request latency by route (watch streams excluded).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"route", "method"})
	m.storeOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "flotilla_store_operation_duration_seconds", Help: "Store operation latency by operation.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"op"})
	m.storeErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_store_operation_errors_total", Help: "Store operations that failed, by operation (refusals such as not found or conflict are answers, not failures).",
	}, []string{"op"})
	m.batch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "flotilla_store_batch_size", Help: "Writes (objects and agent status reports) committed per transaction.",
		Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000},
	})
	m.agent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_agent_requests_total",
		Help: "Agent protocol requests by call and answer. Every desired-state answer (not_modified, changed) is made from memory, without a database read, but for content it carries (content, inline) not cached yet.",
	}, []string{"call", "answer"})
	m.reconc = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "flotilla_controller_reconcile_duration_seconds", Help: "Controller reconcile passes by controller.",
		Buckets: []float64{.0001, .001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"controller", "result"})
	m.Registry.MustRegister(m.requests, m.latency, m.storeOps, m.storeErr, m.batch, m.agent, m.reconc,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveBatch records one committed write transaction.
func (m *Metrics) ObserveBatch(n int) { m.batch.Observe(float64(n)) }

// AgentRequest counts one agent protocol request.
func (m *Metrics) AgentRequest(call, answer string) { m.agent.WithLabelValues(call, answer).Inc() }

// ObserveReconcile records one pass of a controller.
func (m *Metrics) ObserveReconcile(controller string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reconc.WithLabelValues(controller, result).Observe(d.Seconds())
}

// FleetStats is the fleet's state at one moment.
type FleetStats struct {
	ClustersByState    map[string]int
	BundlesByState     map[string]int
	DeploymentsByState map[string]int
	// QueueDepth is work waiting per controller (e.g. status rollups not yet written).
	QueueDepth map[string]int
}

// RegisterFleet exposes fleet state, computed at each scrape.
func (m *Metrics) RegisterFleet(stats func() FleetStats) {
	m.Registry.MustRegister(&fleetCollector{stats: stats,
		clusters:    prometheus.NewDesc("flotilla_clusters", "Clusters by state.", []string{"state"}, nil),
		bundles:     prometheus.NewDesc("flotilla_bundles", "Bundles by state (Ready when every targeted cluster is ready).", []string{"state"}, nil),
		deployments: prometheus.NewDesc("flotilla_deployments", "Bundle deployments (cluster × bundle pairs, computed, not stored) by state.", []string{"state"}, nil),
		queue:       prometheus.NewDesc("flotilla_controller_queue_depth", "Work waiting per controller.", []string{"controller"}, nil),
	})
}

type fleetCollector struct {
	stats                                 func() FleetStats
	clusters, bundles, deployments, queue *prometheus.Desc
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.clusters
	ch <- c.bundles
	ch <- c.deployments
	ch <- c.queue
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for desc, m := range map[*prometheus.Desc]map[string]int{c.clusters: s.ClustersByState, c.bundles: s.BundlesByState, c.deployments: s.DeploymentsByState, c.queue: s.QueueDepth} {
		for k, n := range m {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n), k)
		}
	}
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveStore records one store operation; it fits sqlstore.Config.Observe.
func (m *Metrics) ObserveStore(op string, d time.Duration, err error) {
	m.storeOps.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.storeErr.WithLabelValues(op).Inc()
	}
}

type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Instrument counts and times requests by the route pattern that served them.
func (m *Metrics) Instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		m.requests.WithLabelValues(route, r.Method, strconv.Itoa(rec.code)).Inc()
		// Watches last as long as the client stays; their durations would drown the rest.
		// (Parsing every query would cost a map per request: look first.)
		if !strings.Contains(r.URL.RawQuery, "watch=") || r.URL.Query().Get("watch") == "" {
			m.latency.WithLabelValues(route, r.Method).Observe(time.Since(start).Seconds())
		}
	})
}

// Counter is a function that counts things on demand, e.g. objects per kind.
type Counter func(ctx context.Context) (map[string]int64, error)

// RegisterObjectCounts exposes counts per kind, cached for a few seconds so that frequent
// scrapes cost little.
func (m *Metrics) RegisterObjectCounts(count Counter) {
	m.Registry.MustRegister(&countCollector{count: count, desc: prometheus.NewDesc(
		"flotilla_objects", "Stored objects by kind.", []string{"kind"}, nil)})
}

type countCollector struct {
	count Counter
	desc  *prometheus.Desc

	mu   sync.Mutex
	last map[string]int64
	at   time.Time
}

func (c *countCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *countCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) > 5*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		counts, err := c.count(ctx)
		cancel()
		if err == nil {
			c.last, c.at = counts, time.Now()
		}
	}
	for k, n := range c.last {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k)
	}
}
