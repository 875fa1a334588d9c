package sim

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/doorbell"
)

// bells are the simulated clusters' doorbell sockets: a million sockets cannot be opened,
// so PerSocket clusters share each, and answers are told apart by the cluster they name.
type bells struct {
	server  netip.AddrPort
	socks   []*bellSocket
	per     int
	enabled atomic.Bool

	// keepAlive is the keepalive interval the server gives (0: it takes none).
	keepAlive atomic.Int64

	pings, answers, rings, changed, keepalives, acks atomic.Uint64
}

type bellSocket struct {
	conn *net.UDPConn
	mu   sync.RWMutex
	ids  map[doorbell.UID]int32
}

// bellState is what a simulated cluster keeps for its doorbell: 72 bytes.
type bellState struct {
	key      [32]byte
	uid      doorbell.UID
	nextPing int64
	// nextKeep is when to send a keepalive before the next ping (0: none due).
	nextKeep int64
	// pollAfterMs is the poll interval the server gave while the doorbell answers.
	pollAfterMs uint32
}

func newBells(cfg *Config) (*bells, error) {
	if cfg.DoorbellFraction <= 0 {
		return nil, nil
	}
	// With several replicas' URLs the simulated doorbell pings the first: its sockets are
	// shared by many clusters, whichever replica each polls.
	u, err := url.Parse(firstServer(cfg.Server))
	if err != nil {
		return nil, err
	}
	n := int(float64(cfg.Clusters)*cfg.DoorbellFraction)/cfg.DoorbellPerSocket + 1
	b := &bells{per: cfg.DoorbellPerSocket}
	host := net.ParseIP(u.Hostname())
	for k := range n {
		ip := host
		if host.To4() != nil && host.IsLoopback() && k < 1<<16 {
			// Each socket its own loopback address, as sites behind their own NATs: the
			// server limits datagrams per source address.
			ip = net.IPv4(127, 2, byte(k>>8), byte(k))
		}
		conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
		if err != nil {
			b.close()
			return nil, err
		}
		conn.SetReadBuffer(1 << 20)
		b.socks = append(b.socks, &bellSocket{conn: conn, ids: map[doorbell.UID]int32{}})
	}
	return b, nil
}

func (b *bells) close() {
	for _, s := range b.socks {
		s.conn.Close()
	}
}

// UsesDoorbell reports whether cluster i pings the doorbell when the server offers one;
// the others rely on HTTPS polls alone, for a comparison in the same run.
func (s *Sim) UsesDoorbell(i int) bool {
	return s.bells != nil && unit(i, 0xbe11) < s.cfg.DoorbellFraction
}

// joinBell takes the doorbell a registration answer offers.
func (s *Sim) joinBell(i int, info *api.DoorbellInfo, now int64) {
	if !s.UsesDoorbell(i) || info == nil || len(info.Key) != 32 {
		return
	}
	uid, err := doorbell.ParseUID(info.UID)
	if err != nil {
		return
	}
	b := s.bells
	if !b.enabled.Load() {
		u, _ := url.Parse(firstServer(s.cfg.Server))
		ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(u.Hostname(), strconv.Itoa(info.Port)))
		if err != nil {
			return
		}
		b.server = ua.AddrPort()
		if b.enabled.CompareAndSwap(false, true) {
			for n, sock := range b.socks {
				go s.readBells(sock, n)
			}
		}
	}
	st := &bellState{uid: uid}
	copy(st.key[:], info.Key)
	interval := time.Duration(info.IntervalSeconds) * time.Second
	if info.KeepAliveSeconds > 0 {
		b.keepAlive.CompareAndSwap(0, int64(time.Duration(info.KeepAliveSeconds)*time.Second))
	}
	// As the agent: the first ping goes at once, so the server has the cluster's address.
	st.nextPing = now
	mu := s.lock(i)
	mu.Lock()
	s.clusters[i].bell = st
	mu.Unlock()
	s.bellInterval.Store(int64(interval))
	sock := b.socks[(i/b.per)%len(b.socks)]
	sock.mu.Lock()
	sock.ids[uid] = int32(i)
	sock.mu.Unlock()
}

// next returns when the cluster pings and keeps alive next, read under its lock mu.
func (st *bellState) next(mu *sync.Mutex) (ping, keep int64) {
	mu.Lock()
	defer mu.Unlock()
	return st.nextPing, st.nextKeep
}

// ping sends cluster i's "my version is V"; the worker running i calls it.
func (s *Sim) ping(i int, now int64) {
	c := &s.clusters[i]
	st := c.bell
	ka := s.bells.keepAlive.Load()
	p := doorbell.Packet{Kind: doorbell.KindPing, Cluster: st.uid, Counter: uint64(time.Now().UnixNano()), Value: uint64(c.since), KeepAlive: ka > 0, Acks: ka > 0}
	var buf [doorbell.Size]byte
	sock := s.bells.socks[(i/s.bells.per)%len(s.bells.socks)]
	// Until its answer says when (its phase in the server's ping interval). Set before the
	// ping goes, as the agent does, and under the lock the reader of answers takes: an answer
	// read before this returned would otherwise be overwritten, and the cluster would ping
	// off its phase.
	d := time.Duration(s.bellInterval.Load())
	mu := s.lock(i)
	mu.Lock()
	st.nextPing = now + int64(d-d/10) + rand.Int64N(int64(d/5)+1)
	st.nextKeep = 0
	if ka > 0 {
		st.nextKeep = now + int64(jitter(time.Duration(ka)))
	}
	mu.Unlock()
	if _, err := sock.conn.WriteToUDPAddrPort(p.Append(buf[:0], st.key[:]), s.bells.server); err == nil {
		s.bells.pings.Add(1)
	}
}

// keepAlive sends cluster i's keepalive, as the agent does between pings while its path
// would otherwise go quiet for longer than the server's keepalive interval.
func (s *Sim) keepAlive(i int, now int64) {
	st := s.clusters[i].bell
	sock := s.bells.socks[(i/s.bells.per)%len(s.bells.socks)]
	if _, err := sock.conn.WriteToUDPAddrPort(doorbell.KeepAlive, s.bells.server); err == nil {
		s.bells.keepalives.Add(1)
	}
	mu := s.lock(i)
	mu.Lock()
	st.nextKeep = now + int64(jitter(time.Duration(s.bells.keepAlive.Load())))
	mu.Unlock()
}

// jitter spreads d by ±10%, as the agent's keeper does.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// readBells takes the answers and rings of one socket's clusters: "changed" and "tunnel
// wanted" make the cluster poll at once (or when the server says).
func (s *Sim) readBells(sock *bellSocket, n int) {
	buf := make([]byte, 2*doorbell.Size)
	for {
		k, _, err := sock.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p, err := doorbell.Parse(buf[:k])
		if err != nil || p.Kind == doorbell.KindPing {
			continue
		}
		sock.mu.RLock()
		i, ok := sock.ids[p.Cluster]
		sock.mu.RUnlock()
		if !ok {
			continue
		}
		mu := s.lock(int(i))
		mu.Lock()
		st := s.clusters[i].bell
		mu.Unlock()
		if st == nil || doorbell.Verify(buf[:k], st.key[:]) != nil {
			continue
		}
		if p.Ring {
			s.bells.rings.Add(1)
		} else {
			s.bells.answers.Add(1)
		}
		delay, keepAlive := p.Delays()
		delay = min(delay, time.Hour)
		if keepAlive > 0 && !p.Ring {
			s.bells.keepAlive.Store(int64(min(keepAlive, time.Hour)))
		}
		if !p.Ring && (p.Kind == doorbell.KindUnchanged || p.Kind == doorbell.KindLater) && delay > 0 {
			// As the agent: the next ping when the server says. The longest delay it
			// gives (its phase, up to 1.1 intervals) tells the simulator its ping interval.
			if iv := delay * 10 / 11; p.Kind == doorbell.KindUnchanged && iv > time.Duration(s.bellInterval.Load()) {
				s.bellInterval.Store(int64(iv))
			}
			mu.Lock()
			st.nextPing = s.now() + int64(delay)
			mu.Unlock()
		}
		switch p.Kind {
		case doorbell.KindChanged, doorbell.KindTunnel:
			s.bells.changed.Add(1)
			s.sched.ring(i, s.now()+int64(delay))
			if p.Ring && s.bells.keepAlive.Load() > 0 {
				// As the agent: the ring is acknowledged at once, so the server does not
				// send it again. The version is not compared.
				mu.Lock()
				since := s.clusters[i].since
				mu.Unlock()
				ack := doorbell.Packet{Kind: doorbell.KindPing, Cluster: st.uid, Counter: uint64(time.Now().UnixNano()), Value: uint64(since), KeepAlive: true, Acks: true, Rung: true}
				var out [doorbell.Size]byte
				if _, err := sock.conn.WriteToUDPAddrPort(ack.Append(out[:0], st.key[:]), s.bells.server); err == nil {
					s.bells.acks.Add(1)
				}
			}
		}
	}
}

// DoorbellCounts are the simulated clusters' doorbell datagrams.
type DoorbellCounts struct {
	Pings uint64 `json:"pings"`
	// KeepAlives counts keepalives, which the server's socket drops unread; Acks the pings
	// acknowledging rings.
	KeepAlives uint64 `json:"keepAlives"`
	Acks       uint64 `json:"acks"`
	Answers    uint64 `json:"answers"`
	Rings      uint64 `json:"rings"`
	// Changed counts answers and rings saying "changed" or "tunnel wanted".
	Changed uint64 `json:"changed"`
}

func (s *Sim) doorbellCounts() DoorbellCounts {
	if s.bells == nil {
		return DoorbellCounts{}
	}
	b := s.bells
	return DoorbellCounts{Pings: b.pings.Load(), KeepAlives: b.keepalives.Load(), Acks: b.acks.Load(), Answers: b.answers.Load(), Rings: b.rings.Load(), Changed: b.changed.Load()}
}

// ChangeGroup is a change as one group of clusters saw it: those using the doorbell, or
// those polling HTTPS only.
type ChangeGroup struct {
	Reached   int64   `json:"reached"`
	Reported  int64   `json:"reported"`
	ReachAll  Seconds `json:"reachAll"`
	ReportAll Seconds `json:"reportAll"`
	Reach     Latency `json:"reach"`
	Report    Latency `json:"report"`
}

func (g *changeGroup) result(start int64) *ChangeGroup {
	if g.reached.Load() == 0 {
		return nil
	}
	return &ChangeGroup{Reached: g.reached.Load(), Reported: g.done.Load(),
		ReachAll: seconds(time.Duration(g.lastReached.Load() - start)), ReportAll: seconds(time.Duration(g.lastDone.Load() - start)),
		Reach: g.reachAt.summary(), Report: g.doneAt.summary()}
}

// PingStormResult is the server's cost of one doorbell datagram, measured by sending pings
// (each a registered cluster's, at its current version) as fast as they are answered.
type PingStormResult struct {
	Duration Seconds `json:"duration"`
	Sent     uint64  `json:"sent"`
	// Received, Answered, Refused and Limited are the server's counts (its /metrics) over
	// the period; Refused includes the fleet's own pings, whose counters the storm's outrun.
	Received float64 `json:"received"`
	Answered float64 `json:"answered"`
	Refused  float64 `json:"refused"`
	Limited  float64 `json:"limited"`
	PerSec   float64 `json:"perSec"`
	// ServerCPU is the server's CPU use over the period, in cores.
	ServerCPU float64 `json:"serverCPU"`
	// ServerCPUPerPacket is the server's CPU time per datagram it received, less what the
	// idle fleet cost it over as long (idleCPU, from the idle phase) when that is known.
	ServerCPUPerPacket Seconds `json:"serverCPUPerPacket"`
}

// PingStorm sends doorbell pings from every doorbell socket for d, each socket's clusters
// in turn, pacing by answers: at most a socket buffer's worth are unanswered, and those
// unanswered for a while count as lost. idleCPU is the idle fleet's server CPU in cores,
// subtracted from the storm's (0 if not measured).
func (s *Sim) PingStorm(ctx context.Context, d time.Duration, idleCPU float64) (*PingStormResult, error) {
	if s.bells == nil || !s.bells.enabled.Load() {
		return nil, errors.New("no cluster uses the doorbell")
	}
	type target struct {
		sock *bellSocket
		p    doorbell.Packet
		key  []byte
	}
	// The storm's counters run a minute ahead of the clock, so the server takes each; the
	// clusters' own pings are refused for that minute (they poll as before meanwhile).
	const workers = 4
	var targets [workers][]target
	n := 0
	base := uint64(time.Now().Add(time.Minute).UnixNano())
	for i := range s.clusters {
		mu := s.lock(i)
		mu.Lock()
		c := &s.clusters[i]
		st, since := c.bell, c.since
		mu.Unlock()
		if st == nil || since == 0 {
			continue
		}
		p := doorbell.Packet{Kind: doorbell.KindPing, Cluster: st.uid, Value: uint64(since)}
		// Each cluster is one worker's, so its counters reach the server in order.
		targets[n%workers] = append(targets[n%workers], target{sock: s.bells.socks[(i/s.bells.per)%len(s.bells.socks)], p: p, key: st.key[:]})
		if n++; n >= 20000 {
			break
		}
	}
	if n < workers {
		return nil, errors.New("no doorbell cluster has polled yet")
	}
	s.logf("doorbell pings as fast as they go for %v", d)
	m0, err := s.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	answers0 := s.bells.answers.Load()
	var sent, lost atomic.Uint64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			ts := targets[w]
			for j := uint64(0); time.Since(start) < d && ctx.Err() == nil; j++ {
				// Keep the answers owed below a socket buffer's worth; those owed with no
				// answer coming for 20 ms were dropped (the per-source limit, a full buffer).
				waited := time.Now()
				for {
					got := s.bells.answers.Load() - answers0
					owed := sent.Load() - lost.Load() - got
					if int64(owed) < 256 || time.Since(start) >= d {
						break
					}
					if time.Since(waited) > 20*time.Millisecond {
						lost.Add(owed)
						break
					}
					time.Sleep(50 * time.Microsecond)
				}
				t := ts[j%uint64(len(ts))]
				// Each pass over the targets needs higher counters than the last.
				t.p.Counter = base + j
				var buf [doorbell.Size]byte
				if _, err := t.sock.conn.WriteToUDPAddrPort(t.p.Append(buf[:0], t.key), s.bells.server); err == nil {
					sent.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond) // the last answers
	m1, err := s.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	out := &PingStormResult{Duration: seconds(took), Sent: sent.Load()}
	delta := func(name string) float64 {
		v0, _ := m0.value(name, nil)
		v1, _ := m1.value(name, nil)
		return v1 - v0
	}
	out.Received, out.Answered = delta("flotilla_doorbell_received_total"), delta("flotilla_doorbell_answered_total")
	out.Refused, out.Limited = delta("flotilla_doorbell_refused_total"), delta("flotilla_doorbell_limited_total")
	out.PerSec = out.Received / took.Seconds()
	cpu := delta("process_cpu_seconds_total")
	out.ServerCPU = cpu / (took + 200*time.Millisecond).Seconds()
	if out.Received > 0 {
		out.ServerCPUPerPacket = Seconds(max(0, cpu-idleCPU*(took+200*time.Millisecond).Seconds()) / out.Received)
	}
	return out, nil
}

// ColdTunnelResult is how long a call through the server's Kubernetes proxy takes to a
// cluster with no tunnel open: the server asks for the tunnel, the agent hears of it (by
// doorbell, or at its next HTTPS poll) and opens it, and the call goes through.
type ColdTunnelResult struct {
	// Doorbell and HTTPS are the times to the first byte of the answer, one per cluster
	// tried, for clusters using the doorbell and those polling HTTPS only.
	Doorbell []Seconds `json:"doorbell,omitempty"`
	HTTPS    []Seconds `json:"https,omitempty"`
}

// ColdTunnels calls GET /version through the proxy on n clusters of each group at once,
// each with no tunnel open, and waits for every answer (at most wait each).
func (s *Sim) ColdTunnels(ctx context.Context, n int, wait time.Duration) (*ColdTunnelResult, error) {
	if s.coldToken == "" || s.tun == nil {
		return nil, errors.New("cold tunnels need the admin token (for their user) and tunnels (--max-tunnels)")
	}
	s.logf("calling %d clusters of each group through the proxy, no tunnel open", n)
	res := &ColdTunnelResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var tried [2]int
	for i := len(s.clusters) - 1; i >= 0 && (tried[0] < n || tried[1] < n); i-- {
		g := s.group(i)
		if tried[g] >= n || s.Offline(i) || s.Credential(i) == "" {
			continue
		}
		tried[g]++
		wg.Go(func() {
			took := s.coldCall(ctx, i, wait)
			mu.Lock()
			defer mu.Unlock()
			if g == 1 {
				res.Doorbell = append(res.Doorbell, seconds(took))
			} else {
				res.HTTPS = append(res.HTTPS, seconds(took))
			}
		})
	}
	wg.Wait()
	slices.Sort(res.Doorbell)
	slices.Sort(res.HTTPS)
	return res, nil
}

// coldCall times one call to cluster i's API through the proxy to its first byte; a call
// that fails counts as wait.
func (s *Sim) coldCall(ctx context.Context, i int, wait time.Duration) time.Duration {
	u := firstServer(s.cfg.Server) + api.PathK8sClusters + s.Namespace() + "." + s.ClusterName(i) + "/version"
	cctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	req, _ := http.NewRequestWithContext(cctx, http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+s.coldToken)
	start := time.Now()
	resp, err := s.hc.Do(req)
	if err != nil {
		s.logf("cold tunnel to %s: %v", s.ClusterName(i), err)
		return wait
	}
	defer resp.Body.Close()
	var b [1]byte
	resp.Body.Read(b[:])
	took := time.Since(start)
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.logf("cold tunnel to %s: %s", s.ClusterName(i), resp.Status)
		return wait
	}
	return took
}

// makeColdUser makes a local user bound as cluster-member of every simulated cluster, for
// the cold tunnel calls (the proxy acts for users, not admin tokens), and logs it in.
func (s *Sim) makeColdUser(ctx context.Context) error {
	if s.admin == nil {
		return errors.New("cold tunnels need the admin token")
	}
	name := s.cfg.Prefix + "-cold"
	spec, _ := json.Marshal(api.UserSpec{Provider: api.ProviderLocal})
	if _, err := s.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindUser}, Metadata: api.ObjectMeta{Name: name}, Spec: spec}); err != nil && client.Code(err) != http.StatusConflict {
		return fmt.Errorf("creating user %s: %w", name, err)
	}
	var pw [16]byte
	crand.Read(pw[:])
	password := hex.EncodeToString(pw[:])
	if err := s.admin.SetPassword(ctx, name, api.SetPasswordRequest{Password: password}); err != nil {
		return fmt.Errorf("setting %s's password: %w", name, err)
	}
	spec, _ = json.Marshal(api.RoleBindingSpec{Subject: api.Subject{Kind: api.SubjectUser, Name: name}, RoleRef: rbac.RoleClusterMember,
		Scope: api.BindingScope{ClusterSelector: &api.LabelSelector{MatchLabels: map[string]string{RunLabel: s.cfg.Prefix}}}})
	if _, err := s.admin.Create(ctx, &api.Object{TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: api.KindRoleBinding},
		Metadata: api.ObjectMeta{Name: name}, Spec: spec}); err != nil && client.Code(err) != http.StatusConflict {
		return fmt.Errorf("binding %s: %w", name, err)
	}
	anon, err := client.New(client.Config{Server: s.cfg.Server, Transport: s.trs[0], Timeout: s.cfg.RequestTimeout})
	if err != nil {
		return err
	}
	resp, err := anon.Login(ctx, api.LoginRequest{Username: name, Password: password})
	if err != nil {
		return fmt.Errorf("logging in as %s: %w", name, err)
	}
	s.coldToken = resp.Token
	return nil
}
