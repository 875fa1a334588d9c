package sim

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/agentapi"
	"flotilla.dev/internal/tunnel"
)

// tunnels are the simulated clusters' ends of their agent tunnels. A cluster the server
// asks for its tunnel (a token on a poll's answer) gets the real agent end, tunnel.Agent,
// serving NewKubeAPI; it keeps it, and the goroutine waiting for the next token, for the
// rest of the run. At most max clusters get one: each open tunnel holds a connection (a
// file descriptor) and a few goroutines here.
type tunnels struct {
	max  int
	idle time.Duration
	// base is what each agent's transport is cloned from (tunnel.NewAgent clones it for
	// HTTP/1.1: the WebSocket upgrade needs a connection of its own); its dialer counts
	// the connections alive, which are the tunnels open or opening.
	base *http.Transport

	mu     sync.Mutex
	agents map[int32]*tunnel.Agent
	// keep: clusters below it are labelled to keep their tunnel (SetAlways).
	keep atomic.Int64

	tokens, dropped, live, dials atomic.Int64
}

// TunnelCounts are the simulator's side of the tunnels.
type TunnelCounts struct {
	// Tokens is how many "tunnel wanted" answers the clusters received; Dropped how many
	// of them found the simulator at its MaxTunnels.
	Tokens  int64 `json:"tokens"`
	Dropped int64 `json:"dropped"`
	// Agents is how many clusters run a tunnel agent; Open how many tunnel connections are
	// alive now; Dials how many were made.
	Agents int64 `json:"agents"`
	Open   int64 `json:"open"`
	Dials  int64 `json:"dials"`
}

// fileLimit returns the soft limit of open files. Go raises it to the hard limit at start
// (os package, since Go 1.19), as servers do; the simulator only stays below it.
func fileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1 << 30
	}
	return int(rl.Cur)
}

func newTunnels(cfg *Config) (*tunnels, error) {
	if cfg.MaxTunnels <= 0 {
		return nil, nil
	}
	// Room for the fleet's connections, the long polls' and the process's own files.
	room := fileLimit() - cfg.Connections - int(cfg.LongPollFraction*float64(cfg.Clusters))/streamsPerConn - 256
	if cfg.MaxTunnels > room {
		if room < 1 {
			return nil, fmt.Errorf("no file descriptors left for tunnels (limit %d): raise ulimit -n", fileLimit())
		}
		cfg.Logger.Warn("fewer simulated tunnels than asked: the open-file limit is too low", "asked", cfg.MaxTunnels, "allowed", room)
		cfg.MaxTunnels = room
	}
	trs, err := newTransports(cfg.CAData, cfg.CAChecksum, 1)
	if err != nil {
		return nil, err
	}
	t := &tunnels{max: cfg.MaxTunnels, idle: cfg.TunnelIdle, base: trs[0], agents: map[int32]*tunnel.Agent{}}
	dial := (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		t.dials.Add(1)
		t.live.Add(1)
		return &countedConn{Conn: c, live: &t.live}, nil
	}
	return t, nil
}

type countedConn struct {
	net.Conn
	live *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.live.Add(-1) })
	return c.Conn.Close()
}

// want hands cluster i's tunnel token to its agent, starting one the first time.
func (s *Sim) wantTunnel(i int, token string) {
	t := s.tun
	t.tokens.Add(1)
	t.mu.Lock()
	a := t.agents[int32(i)]
	if a == nil {
		if len(t.agents) >= t.max {
			t.mu.Unlock()
			t.dropped.Add(1)
			return
		}
		a = tunnel.NewAgent(tunnel.AgentConfig{Server: firstServer(s.cfg.Server), ServerURL: s.conn(i).Server, HTTPClient: &http.Client{Transport: t.base},
			Credential: func() string { return s.Credential(i) }, Target: NewKubeAPI(s.ClientID(i)), Idle: t.idle,
			MinBackoff: s.cfg.MinBackoff, MaxBackoff: s.cfg.MaxBackoff, Logger: s.cfg.Logger})
		t.agents[int32(i)] = a
		s.wg.Go(func() { a.Run(s.fleetCtx) })
	}
	t.mu.Unlock()
	a.SetAlways(int64(i) < t.keep.Load())
	a.Want(token)
}

// TunnelCounts returns the simulator's side of the tunnels now.
func (s *Sim) TunnelCounts() TunnelCounts {
	t := s.tun
	if t == nil {
		return TunnelCounts{}
	}
	t.mu.Lock()
	n := len(t.agents)
	t.mu.Unlock()
	return TunnelCounts{Tokens: t.tokens.Load(), Dropped: t.dropped.Load(), Agents: int64(n), Open: t.live.Load(), Dials: t.dials.Load()}
}

// ClusterName is the name the server gives cluster i (in Namespace()).
func (s *Sim) ClusterName(i int) string { return agentapi.ClusterName(s.ClientID(i)) }

// KeepTunnels labels clusters [0, n) with flotilla.dev/tunnel=always (the admin API, 16
// updates at a time), so that the server asks for their tunnels at their next poll (a
// held poll is answered at once: its desired state changed) and keeps them open; their
// agents keep them too.
func (s *Sim) KeepTunnels(ctx context.Context, n int) error {
	if s.tun == nil {
		return fmt.Errorf("the simulator opens no tunnels (MaxTunnels is 0)")
	}
	if s.admin == nil {
		return fmt.Errorf("labelling clusters needs the admin token")
	}
	n = min(n, len(s.clusters))
	s.tun.keep.Store(int64(n))
	s.tun.mu.Lock()
	for i, a := range s.tun.agents {
		a.SetAlways(int(i) < n)
	}
	s.tun.mu.Unlock()
	patch := []byte(`{"metadata":{"labels":{"` + api.LabelTunnel + `":"` + api.TunnelAlways + `"}}}`)
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if _, err := s.admin.Patch(ctx, api.KindCluster, s.Namespace(), s.ClusterName(i), client.MergePatch, patch, "", false); err != nil {
					select {
					case errs <- fmt.Errorf("labelling cluster %s: %w", s.ClusterName(i), err):
					default:
					}
				}
			}
		})
	}
	var err error
feed:
	for i := range n {
		select {
		case work <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// TunnelResult is what n tunnels held open at once cost, on both sides.
type TunnelResult struct {
	Tunnels int `json:"tunnels"`
	// OpenedIn is from the labelling until the server held them all.
	OpenedIn Seconds `json:"openedIn"`
	// Server and Simulator before and after, from the server's /metrics and this process.
	ServerBefore    ProcessFigures `json:"serverBefore"`
	Server          ProcessFigures `json:"server"`
	SimulatorBefore ProcessFigures `json:"simulatorBefore"`
	Simulator       ProcessFigures `json:"simulator"`
	// Per tunnel: the growth of each figure over Tunnels.
	ServerRSSPerTunnel        float64      `json:"serverRSSPerTunnel"`
	ServerHeapPerTunnel       float64      `json:"serverHeapPerTunnel"`
	ServerGoroutinesPerTunnel float64      `json:"serverGoroutinesPerTunnel"`
	SimHeapPerTunnel          float64      `json:"simHeapPerTunnel"`
	SimGoroutinesPerTunnel    float64      `json:"simGoroutinesPerTunnel"`
	Counts                    TunnelCounts `json:"counts"`
}

// ProcessFigures describe a process at one moment, and its CPU over an idle window.
type ProcessFigures struct {
	RSS        float64 `json:"rss,omitempty"`
	Heap       float64 `json:"heap"`
	Goroutines float64 `json:"goroutines"`
	// IdleCPU is the share of one core used over IdleWindow while the fleet idled.
	IdleCPU    float64 `json:"idleCPU,omitempty"`
	IdleWindow Seconds `json:"idleWindow,omitempty"`
}

// OpenTunnels measures n tunnels held open at once: the server's and the simulator's
// memory and goroutines (and, with idle > 0, their CPU over idle) before, then
// KeepTunnels(n), a wait until the server holds n tunnels, and the same figures again.
func (s *Sim) OpenTunnels(ctx context.Context, n int, idle time.Duration) (*TunnelResult, error) {
	res := &TunnelResult{Tunnels: n}
	var err error
	if res.ServerBefore, res.SimulatorBefore, err = s.processFigures(ctx, idle); err != nil {
		return res, err
	}
	s.logf("opening %d tunnels", n)
	start := time.Now()
	if err := s.KeepTunnels(ctx, n); err != nil {
		return res, err
	}
	err = s.waitFor(ctx, fmt.Sprintf("%d tunnels open", n), func() bool {
		m, err := s.Scrape(ctx)
		if err != nil {
			return false
		}
		open, _ := m.value("flotilla_tunnels_open", nil)
		if int(open) >= n {
			return true
		}
		time.Sleep(500 * time.Millisecond)
		return false
	})
	res.OpenedIn = seconds(time.Since(start))
	if err != nil {
		return res, err
	}
	// Let the handshakes' garbage go before the "after" figures.
	time.Sleep(5 * time.Second)
	if res.Server, res.Simulator, err = s.processFigures(ctx, idle); err != nil {
		return res, err
	}
	per := func(a, b float64) float64 { return (a - b) / float64(n) }
	res.ServerRSSPerTunnel = per(res.Server.RSS, res.ServerBefore.RSS)
	res.ServerHeapPerTunnel = per(res.Server.Heap, res.ServerBefore.Heap)
	res.ServerGoroutinesPerTunnel = per(res.Server.Goroutines, res.ServerBefore.Goroutines)
	res.SimHeapPerTunnel = per(res.Simulator.Heap, res.SimulatorBefore.Heap)
	res.SimGoroutinesPerTunnel = per(res.Simulator.Goroutines, res.SimulatorBefore.Goroutines)
	res.Counts = s.TunnelCounts()
	return res, nil
}

// processFigures reads the server's and this process's memory and goroutines, and with
// idle > 0 their CPU over idle.
func (s *Sim) processFigures(ctx context.Context, idle time.Duration) (server, self ProcessFigures, err error) {
	m0, err := s.Scrape(ctx)
	if err != nil {
		return server, self, err
	}
	cpu0, t0 := processCPU(), time.Now()
	if idle > 0 {
		select {
		case <-time.After(idle):
		case <-ctx.Done():
			return server, self, ctx.Err()
		}
	}
	m1, err := s.Scrape(ctx)
	if err != nil {
		return server, self, err
	}
	cpu1, wall := processCPU(), time.Since(t0)
	server.RSS, _ = m1.value("process_resident_memory_bytes", nil)
	server.Heap, _ = m1.value("go_memstats_heap_inuse_bytes", nil)
	server.Goroutines, _ = m1.value("go_goroutines", nil)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	self.Heap, self.Goroutines = float64(ms.HeapInuse), float64(runtime.NumGoroutine())
	if idle > 0 {
		c0, _ := m0.value("process_cpu_seconds_total", nil)
		c1, _ := m1.value("process_cpu_seconds_total", nil)
		server.IdleCPU, server.IdleWindow = (c1-c0)/wall.Seconds(), seconds(wall)
		self.IdleCPU, self.IdleWindow = (cpu1-cpu0).Seconds()/wall.Seconds(), seconds(wall)
	}
	return server, self, nil
}

// ServerMetric reads one figure of the server's /metrics (the sum of its samples), e.g.
// flotilla_tunnels_open or go_goroutines.
func (s *Sim) ServerMetric(ctx context.Context, name string) (float64, error) {
	m, err := s.Scrape(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := m.value(name, nil)
	if !ok {
		return 0, fmt.Errorf("the server's metrics have no %s", name)
	}
	return v, nil
}
