package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"k8s.io/client-go/rest"

	"flotilla.dev/api"
)

// AgentConfig is the agent's end of the tunnel.
type AgentConfig struct {
	// Server is the Flotilla server's base URL.
	Server string
	// ServerURL, if set, replaces Server: it names the replica the agent polls now, which
	// is the one that asked for the tunnel.
	ServerURL func() string
	// HTTPClient reaches the server (its TLS pinned to the server's CA). The tunnel needs
	// HTTP/1.1 for the WebSocket upgrade: NewAgent makes its own transport from this
	// client's when it is an *http.Transport.
	HTTPClient *http.Client
	// Credential returns the cluster credential in use.
	Credential func() string
	// Target serves every request that comes through the tunnel: the cluster's API server.
	Target http.Handler
	// Idle closes the tunnel no request used for that long (0: DefaultIdle; negative:
	// never, for clusters that keep their tunnel).
	Idle time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential backoff between failed dials.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Agent dials the tunnel when the server asks and serves it until it is idle.
type Agent struct {
	cfg  AgentConfig
	mu   sync.Mutex
	tok  string
	kick chan struct{}
	// always keeps the tunnel from its idle close: the cluster is labelled to keep it.
	always atomic.Bool
}

// SetAlways says whether the cluster keeps its tunnel open when idle.
func (a *Agent) SetAlways(on bool) { a.always.Store(on) }

// NewAgent prepares the agent's end; Run serves it.
func NewAgent(cfg AgentConfig) *Agent {
	if cfg.Idle == 0 {
		cfg.Idle = DefaultIdle
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if tr, ok := cfg.HTTPClient.Transport.(*http.Transport); ok {
		tr = tr.Clone()
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		if tr.TLSClientConfig != nil {
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		cfg.HTTPClient = &http.Client{Transport: tr}
	}
	return &Agent{cfg: cfg, kick: make(chan struct{}, 1)}
}

// Want hands over the token the server sent with a poll; Run dials with it.
func (a *Agent) Want(token string) {
	a.mu.Lock()
	a.tok = token
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) take() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.tok
	a.tok = ""
	return t
}

// errRefused: the server refused the dial (token, credential, limit): wait for a new token.
var errRefused = errors.New("tunnel refused")

// Run dials whenever the server asks, until ctx ends. A dial that fails for want of the
// network is tried again with jittered exponential backoff; a refused one waits for the
// server's next token.
func (a *Agent) Run(ctx context.Context) {
	delay := a.cfg.MinBackoff
	for {
		tok := a.take()
		if tok == "" {
			select {
			case <-ctx.Done():
				return
			case <-a.kick:
				continue
			}
		}
		for {
			err := a.serveOnce(ctx, tok)
			if ctx.Err() != nil {
				return
			}
			if err == nil || errors.Is(err, errRefused) {
				if err != nil {
					a.cfg.Logger.Warn("the server refused the tunnel", "err", err)
				}
				delay = a.cfg.MinBackoff
				break
			}
			// Jittered: a server back from an outage is not dialled by every cluster at once.
			wait := delay/2 + rand.N(delay/2+1)
			delay = min(delay*2, a.cfg.MaxBackoff)
			a.cfg.Logger.Warn("cannot open the tunnel", "err", err, "retryIn", wait.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			case <-a.kick:
			}
			if t := a.take(); t != "" {
				tok = t
			}
		}
	}
}

// serveOnce dials the tunnel and serves it until it closes: nil when it closed after being
// open (idle, or the server closed it).
func (a *Agent) serveOnce(ctx context.Context, token string) error {
	server := a.cfg.Server
	if a.cfg.ServerURL != nil {
		server = a.cfg.ServerURL()
	}
	u, err := url.Parse(server)
	if err != nil {
		return fmt.Errorf("%w: server URL: %v", errRefused, err)
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	u.Path = strings.TrimRight(u.Path, "/") + api.PathTunnel
	h := http.Header{}
	h.Set("Authorization", "Bearer "+a.cfg.Credential())
	h.Set(api.HeaderTunnelToken, token)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, resp, err := websocket.Dial(dctx, u.String(), &websocket.DialOptions{HTTPClient: a.cfg.HTTPClient, HTTPHeader: h})
	cancel()
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return fmt.Errorf("%w: %s", errRefused, resp.Status)
		}
		return fmt.Errorf("dialling the tunnel: %w", err)
	}
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	sess, err := yamux.Server(nc, yamuxConfig())
	if err != nil {
		nc.Close()
		return fmt.Errorf("tunnel session: %w", err)
	}
	a.cfg.Logger.Info("tunnel open")
	l := &trackedListener{Listener: sess}
	l.act.touch()
	srv := &http.Server{Handler: a.cfg.Target, ReadHeaderTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(a.cfg.Logger.Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	var tick <-chan time.Time
	if a.cfg.Idle > 0 {
		t := time.NewTicker(max(a.cfg.Idle/4, 10*time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	reason := "closed by the server"
loop:
	for {
		select {
		case <-ctx.Done():
			reason = "agent stopping"
			break loop
		case <-sess.CloseChan():
			break loop
		case <-tick:
			if !a.always.Load() && l.act.idleFor() >= a.cfg.Idle {
				reason = "idle"
				break loop
			}
		}
	}
	srv.Close()
	sess.Close()
	<-done
	a.cfg.Logger.Info("tunnel closed", "reason", reason)
	return nil
}

// trackedListener counts the streams being served, for the idle close.
type trackedListener struct {
	net.Listener
	act activity
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.act.begin()
	return &trackedConn{Conn: c, act: &l.act}, nil
}

// TargetFor is NewTarget for the API server rc names, with rc's credentials. Upgraded
// calls (exec, attach, port-forward) go over HTTP/1.1: Go's transport would send a SPDY
// upgrade over an HTTP/2 connection, where no upgrade exists.
func TargetFor(rc *rest.Config) (http.Handler, error) {
	u, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		return nil, fmt.Errorf("the cluster's API server: %w", err)
	}
	rt, err := rest.TransportFor(rc)
	if err != nil {
		return nil, fmt.Errorf("transport to the cluster's API server: %w", err)
	}
	h1 := rest.CopyConfig(rc)
	h1.NextProtos = []string{"http/1.1"}
	upgrades, err := rest.TransportFor(h1)
	if err != nil {
		return nil, fmt.Errorf("HTTP/1.1 transport to the cluster's API server: %w", err)
	}
	return NewTarget(u, roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Header.Get("Upgrade") != "" {
			return upgrades.RoundTrip(r)
		}
		return rt.RoundTrip(r)
	})), nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// NewTarget is the handler serving the tunnel's requests: a reverse proxy to apiServer (the
// cluster's own API server, from the agent's configuration, never from the request) through
// rt, which adds the agent's credentials. It serves only requests that impersonate a
// Flotilla subject: the agent's service account must never act as itself for a caller.
func NewTarget(apiServer *url.URL, rt http.RoundTripper) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = apiServer.Scheme
			pr.Out.URL.Host = apiServer.Host
			// The path as the server decided on it, escapes and all.
			pr.Out.URL.Path = strings.TrimRight(apiServer.Path, "/") + pr.In.URL.Path
			pr.Out.URL.RawPath = ""
			if pr.In.URL.RawPath != "" {
				pr.Out.URL.RawPath = strings.TrimRight(apiServer.EscapedPath(), "/") + pr.In.URL.RawPath
			}
			pr.Out.Host = apiServer.Host
			pr.Out.Header.Del("Authorization")
		},
		Transport:     rt,
		FlushInterval: -1,
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Impersonate-User"), "flotilla:") {
			refuse(w, http.StatusForbidden, api.ReasonForbidden, "the agent forwards only requests impersonating a Flotilla user")
			return
		}
		rp.ServeHTTP(w, r)
	})
}
