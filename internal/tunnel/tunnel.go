// Package tunnel owns the reverse tunnels through which the server reaches a cluster's API
// server: the server's registry of open tunnels with their one-time tokens (Server), and the
// agent's end, which dials in when asked and serves the streams (Agent).
//
// A tunnel is yamux over a WebSocket (github.com/coder/websocket). yamux multiplexes streams
// with a flow-control window per stream, so a slow watch holds back only its own stream (the
// back-pressure a tunnel shared by many kubectl calls needs), sends keep-alives, and its
// session is a net.Listener, so the agent serves every stream with net/http as an ordinary
// connection. The WebSocket carries it as one HTTPS request through proxies and load
// balancers. rancher/remotedialer was the alternative: its versions built with Go 1.26 are
// old, and its model is the server naming addresses for the agent to dial, which this agent
// must never do: it forwards only to its own cluster's API server.
//
// Tunnels are opened on demand: Want makes a one-time token bound to the cluster, which the
// agent gets with its next poll (a held long poll is woken for it) and sends back when it
// dials. Either end closes a tunnel no stream used for an idle period.
package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/api"
)

// Defaults.
const (
	DefaultMax      = 10000
	DefaultIdle     = 5 * time.Minute
	DefaultTokenTTL = 10 * time.Minute
)

// ErrNoTunnel: the cluster did not open its tunnel in time.
var ErrNoTunnel = errors.New("the cluster has not opened its tunnel")

// Config tunes the server's registry.
type Config struct {
	// Max bounds the tunnels open at once (0: DefaultMax); more are refused.
	Max int
	// Idle closes a tunnel no stream used for that long (0: DefaultIdle).
	Idle time.Duration
	// TokenTTL is how long a wanted tunnel's token stays valid (0: DefaultTokenTTL): an
	// agent polling every few minutes still gets it.
	TokenTTL time.Duration
	Logger   *slog.Logger
	// Wanted, if set, is told of a cluster whose tunnel became wanted, so that its agent
	// can be rung. It is called with the registry locked: it must not block.
	Wanted func(cluster string)
}

// Server is the registry of open tunnels, keyed by cluster ("namespace/name").
type Server struct {
	cfg Config

	mu       sync.Mutex
	open     map[string]*tunnel
	reserved int // accepted, handshake in progress
	wanted   map[string]*want
	// wantedUntil is when the last token handed out expires: past it no want is live, though
	// expired ones stay in wanted until a sweep.
	wantedUntil time.Time
	sweepAt     int // len(wanted) at which expired wants are next swept
	// waiters are held polls of clusters no tunnel is wanted for yet; closed when one is.
	waiters map[string]*waiter

	opened, refused atomic.Int64
}

type tunnel struct {
	sess *yamux.Session
	act  activity
	// always: the cluster keeps its tunnel (Keep); it is not closed when idle.
	always atomic.Bool
}

type want struct {
	token   string
	expires time.Time
	// ready is closed when the cluster's tunnel opens.
	ready chan struct{}
}

type waiter struct {
	ch   chan struct{}
	refs int
}

// NewServer makes an empty registry.
func NewServer(cfg Config) *Server {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	if cfg.Idle <= 0 {
		cfg.Idle = DefaultIdle
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg, open: map[string]*tunnel{}, wanted: map[string]*want{}, sweepAt: minSweep, waiters: map[string]*waiter{}}
}

// Collectors are the registry's metrics.
func (s *Server) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_tunnels_open", Help: "Agent tunnels open now."},
			func() float64 { return float64(s.Open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_tunnel_streams_open", Help: "Streams open through the tunnels: calls in flight, watches, exec, port-forward."},
			func() float64 { return float64(s.Streams()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flotilla_tunnels_opened_total", Help: "Agent tunnels opened."},
			func() float64 { return float64(s.opened.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flotilla_tunnels_refused_total", Help: "Tunnel dials refused (token, limit)."},
			func() float64 { return float64(s.refused.Load()) }),
	}
}

// Open is the number of open tunnels.
func (s *Server) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open)
}

// Streams is the number of streams open through all tunnels: requests in flight, watches,
// and upgraded connections (exec, attach, port-forward).
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, t := range s.open {
		n += int(t.act.active.Load())
	}
	return n
}

// IsOpen reports whether cluster has a tunnel open.
func (s *Server) IsOpen(cluster string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[cluster] != nil
}

// Wanted returns the token of the tunnel wanted for cluster, if any. Otherwise, for a poll
// about to be held, it returns a channel closed when a tunnel becomes wanted, and release,
// which the poll calls when it ends.
func (s *Server) Wanted(cluster string) (token string, wake <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.wanted[cluster]; w != nil && time.Now().Before(w.expires) && s.open[cluster] == nil {
		return w.token, nil, func() {}
	}
	wt := s.waiters[cluster]
	if wt == nil {
		wt = &waiter{ch: make(chan struct{})}
		s.waiters[cluster] = wt
	}
	wt.refs++
	return "", wt.ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if wt.refs--; wt.refs == 0 && s.waiters[cluster] == wt {
			delete(s.waiters, cluster)
		}
	}
}

// wantLocked makes (or keeps) the one-time token for cluster's tunnel and wakes its polls.
func (s *Server) wantLocked(cluster string) *want {
	if w := s.wanted[cluster]; w != nil && time.Now().Before(w.expires) {
		return w
	}
	if len(s.wanted) >= s.sweepAt {
		s.sweepLocked()
	}
	var b [32]byte
	rand.Read(b[:])
	old := s.wanted[cluster]
	w := &want{token: hex.EncodeToString(b[:]), expires: time.Now().Add(s.cfg.TokenTTL), ready: make(chan struct{})}
	if old != nil {
		// Whoever waited on the expired token waits on this one.
		w.ready = old.ready
	}
	s.wanted[cluster] = w
	if w.expires.After(s.wantedUntil) {
		s.wantedUntil = w.expires
	}
	if wt := s.waiters[cluster]; wt != nil {
		close(wt.ch)
		delete(s.waiters, cluster)
	}
	if s.cfg.Wanted != nil {
		s.cfg.Wanted(cluster)
	}
	return w
}

// Wanting reports whether a tunnel is wanted for any cluster (the doorbell asks on every
// ping, before it names the cluster to ask IsWanted).
func (s *Server) Wanting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.wanted) > 0 && time.Now().Before(s.wantedUntil)
}

// IsWanted reports whether a tunnel is wanted for cluster and not open yet.
func (s *Server) IsWanted(cluster string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.wanted[cluster]
	return w != nil && time.Now().Before(w.expires) && s.open[cluster] == nil
}

// sweepLocked forgets the wanted tunnels whose token expired unused (calls for clusters
// whose agents never came), which would otherwise stay for every cluster ever asked for. It
// runs when the map has doubled since the last sweep, so its cost is spread over the calls
// that grew it. Whoever still waits on a forgotten want is woken, and asks again.
func (s *Server) sweepLocked() {
	now := time.Now()
	for c, w := range s.wanted {
		if !now.Before(w.expires) {
			delete(s.wanted, c)
			close(w.ready)
		}
	}
	s.sweepAt = max(2*len(s.wanted), minSweep)
}

// minSweep is the size of the wanted map below which expired tokens are not swept.
const minSweep = 1024

// Keep asks for cluster's tunnel if none is open, and keeps an open one from its idle
// close: the poll of a cluster labelled to keep its tunnel calls it.
func (s *Server) Keep(cluster string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.open[cluster]; t != nil {
		t.always.Store(true)
		return
	}
	s.wantLocked(cluster)
}

// Await returns once cluster has a tunnel open, asking for one if needed; after timeout it
// returns ErrNoTunnel.
func (s *Server) Await(ctx context.Context, cluster string, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		if s.open[cluster] != nil {
			s.mu.Unlock()
			return nil
		}
		ready := s.wantLocked(cluster).ready
		s.mu.Unlock()
		select {
		case <-ready:
		case <-t.C:
			return ErrNoTunnel
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Dial opens a stream to cluster's agent, which forwards what is written to it to the
// cluster's API server.
func (s *Server) Dial(ctx context.Context, cluster string) (net.Conn, error) {
	s.mu.Lock()
	t := s.open[cluster]
	s.mu.Unlock()
	if t == nil {
		return nil, fmt.Errorf("cluster %s: %w", cluster, ErrNoTunnel)
	}
	st, err := t.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("opening a stream to cluster %s: %w", cluster, err)
	}
	t.act.begin()
	return &trackedConn{Conn: st, act: &t.act}, nil
}

func refuse(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(&api.Status{TypeMeta: api.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Code: code, Reason: reason, Message: msg})
}

// Serve takes the tunnel a cluster's agent dials, the caller having authenticated the
// cluster by its credential. It holds the request until the tunnel closes.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, cluster string) {
	tok := r.Header.Get(api.HeaderTunnelToken)
	s.mu.Lock()
	wt := s.wanted[cluster]
	switch {
	case wt == nil || tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(wt.token)) != 1 || !time.Now().Before(wt.expires):
		s.mu.Unlock()
		s.refused.Add(1)
		refuse(w, http.StatusForbidden, api.ReasonForbidden, "tunnel token unknown, already used, expired, or for another cluster")
		return
	case len(s.open)+s.reserved >= s.cfg.Max:
		s.mu.Unlock()
		s.refused.Add(1)
		w.Header().Set("Retry-After", "30")
		refuse(w, http.StatusServiceUnavailable, api.ReasonUnavailable, fmt.Sprintf("the server holds its maximum of %d tunnels", s.cfg.Max))
		return
	}
	delete(s.wanted, cluster) // one use
	s.reserved++
	s.mu.Unlock()
	unreserve := func() {
		s.mu.Lock()
		s.reserved--
		s.mu.Unlock()
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		unreserve()
		s.cfg.Logger.Debug("tunnel upgrade failed", "cluster", cluster, "err", err)
		return
	}
	ctx := r.Context()
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	sess, err := yamux.Client(nc, yamuxConfig())
	if err != nil {
		unreserve()
		nc.Close()
		return
	}
	t := &tunnel{sess: sess}
	t.act.touch()
	s.mu.Lock()
	s.reserved--
	old := s.open[cluster]
	s.open[cluster] = t
	close(wt.ready)
	s.mu.Unlock()
	if old != nil {
		old.sess.Close()
	}
	s.opened.Add(1)
	s.cfg.Logger.Info("tunnel open", "cluster", cluster)
	idle := time.NewTicker(s.cfg.Idle / 4)
	defer idle.Stop()
loop:
	for {
		select {
		case <-sess.CloseChan():
			break loop
		case <-ctx.Done():
			break loop
		case <-idle.C:
			if !t.always.Load() && t.act.idleFor() >= s.cfg.Idle {
				break loop
			}
		}
	}
	sess.Close()
	s.mu.Lock()
	if s.open[cluster] == t {
		delete(s.open, cluster)
	}
	s.mu.Unlock()
	s.cfg.Logger.Info("tunnel closed", "cluster", cluster)
}

func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = nil
	c.Logger = slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug)
	c.KeepAliveInterval = 30 * time.Second
	c.StreamOpenTimeout = 30 * time.Second
	return c
}

// activity tracks a tunnel's streams: how many are open, and when the last one ended.
type activity struct {
	active atomic.Int64
	last   atomic.Int64 // unix nanoseconds
}

func (a *activity) touch() { a.last.Store(time.Now().UnixNano()) }
func (a *activity) begin() { a.active.Add(1); a.touch() }
func (a *activity) end()   { a.active.Add(-1); a.touch() }

// idleFor is how long no stream has been open; 0 while one is.
func (a *activity) idleFor() time.Duration {
	if a.active.Load() > 0 {
		return 0
	}
	return time.Since(time.Unix(0, a.last.Load()))
}

type trackedConn struct {
	net.Conn
	act  *activity
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(c.act.end)
	return c.Conn.Close()
}
