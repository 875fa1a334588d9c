// Package server is the composition root of `flotilla server`: it opens the store, makes
// sure the server has certificates and an admin token, wires the API, metrics, health and
// controllers onto one HTTPS listener, and shuts all of it down cleanly.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/api"
	"flotilla.dev/internal/agentapi"
	"flotilla.dev/internal/apiserver"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/access"
	"flotilla.dev/internal/auth/ldap"
	"flotilla.dev/internal/auth/oidc"
	"flotilla.dev/internal/auth/rbac"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/doorbell"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/gcpace"
	"flotilla.dev/internal/gitops"
	"flotilla.dev/internal/leader"
	"flotilla.dev/internal/metrics"
	"flotilla.dev/internal/pki"
	"flotilla.dev/internal/proxy"
	"flotilla.dev/internal/secrets"
	"flotilla.dev/internal/store"
	"flotilla.dev/internal/store/postgres"
	"flotilla.dev/internal/store/sqlite"
	"flotilla.dev/internal/store/sqlstore"
	"flotilla.dev/internal/tunnel"
	"flotilla.dev/internal/web"
)

// Config is what `flotilla server` is started with.
type Config struct {
	// Listen is the HTTPS address.
	Listen string
	// DataDir holds the SQLite database (unless DB is set), certificates and the lock file.
	DataDir string
	// DB is a PostgreSQL URL; empty means the embedded SQLite in DataDir.
	DB string
	// SQLiteSynchronous is sqlite.SyncFull (default) or sqlite.SyncNormal.
	SQLiteSynchronous string
	// BootstrapToken, if set, is made an admin token; otherwise one is generated on first
	// start and printed once.
	BootstrapToken string
	// KEKFile / KEK give the key-encryption key that wraps the server's keys in the database
	// (a file, or the value from FLOTILLA_KEY_ENCRYPTION_KEY); by default DataDir/keys/kek,
	// made on first start. Every replica on one PostgreSQL database needs the same one.
	KEKFile, KEK string
	// RotateKeys makes new credential-signing and Secret keys at start.
	RotateKeys bool
	// KeyGrace is how long a rotated-out key still verifies credentials and opens Secrets;
	// 0 means CredentialTTL + CredentialGrace, so no credential that may still be renewed
	// stops verifying.
	KeyGrace time.Duration
	// CredentialTTL is how long a cluster credential is valid; CredentialGrace how long after
	// expiry it may still be renewed.
	CredentialTTL, CredentialGrace time.Duration
	// TLSSANs are extra host names and addresses for the serving certificate.
	TLSSANs []string
	// TLSCertFile/TLSKeyFile/TLSCAFile replace the generated certificates.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// HistoryWindow is how long watch and pagination history is kept before compaction.
	HistoryWindow time.Duration
	// Fleet tunes the fleet model (agent poll interval, offline detection, status writes).
	Fleet  fleet.Config
	Logger *slog.Logger

	// RenderBudget bounds each render of a GitRepo's bundle; GitRepoSyncTimeout bounds one
	// GitRepo's whole sync. Zero values mean the defaults.
	RenderBudget       bundle.Budget
	GitRepoSyncTimeout time.Duration
	// Out receives the lines meant for the operator (CA checksum, a generated token).
	Out io.Writer
	// LDAP configures password logins of ldap users against a directory; no URL, none.
	LDAP ldap.Config

	// AuditRetention is how long audit records are kept (0: audit.DefaultRetention);
	// AuditLogFile also receives them as JSON lines ("-" for standard output);
	// AuditQueueSize bounds the records waiting to be written (0: audit.DefaultQueueSize).
	AuditRetention time.Duration
	AuditLogFile   string
	AuditQueueSize int
	// OIDC configures logins through an OpenID Connect provider; no Issuer, none.
	OIDC oidc.Config
	// SessionTTL is how long a login lasts (0: auth.DefaultSessionTTL); MaxTokenTTL caps the
	// API tokens users make (0: auth.DefaultMaxTokenTTL).
	SessionTTL, MaxTokenTTL time.Duration
	// MaxTunnels bounds the agent tunnels open at once (0: tunnel.DefaultMax); TunnelIdle
	// closes one no request used for that long (0: tunnel.DefaultIdle); TunnelWait is how
	// long a call to a cluster waits for its agent to open its tunnel (0: 30s).
	MaxTunnels             int
	TunnelIdle, TunnelWait time.Duration
	// InlineContent is how many bytes of content archives a changed desired-state answer
	// carries for the deployments its cluster has not applied (0:
	// agentapi.DefaultInlineContent; negative: none).
	InlineContent int
	// ProxyBodyTimeout and ProxyWriteTimeout are the budgets of a proxied call's request body
	// and of each write of its answer to a slow client (0: 2m each; see proxy.Config).
	ProxyBodyTimeout, ProxyWriteTimeout time.Duration
	// ExternalURL is the server's address as agents and users reach it (https://HOST[:PORT]),
	// written into the agents' install command and the kubeconfigs the server makes; empty
	// means the address each request was made to.
	ExternalURL string

	// Doorbell is the UDP address of the datagram doorbell: empty means Listen's (the API's
	// host and port, over UDP), DoorbellOff none.
	Doorbell string
	// DoorbellRingRate bounds rings and "changed, come now" answers per second (0:
	// doorbell.DefaultRingRate): the rate at which a change pulls agents to the API.
	// DoorbellInterval is how often agents ping (0: doorbell.DefaultInterval);
	// DoorbellSourceRate bounds datagrams per second from one address (0:
	// doorbell.DefaultSourceRate); DoorbellBudget those of all pings (0:
	// doorbell.DefaultBudget), DoorbellKeepAliveBudget those of all keepalives (0:
	// doorbell.DefaultKeepAliveBudget).
	DoorbellRingRate, DoorbellSourceRate, DoorbellBudget, DoorbellKeepAliveBudget float64
	DoorbellInterval                                                              time.Duration
	// LeaderRetry is how often a replica on PostgreSQL that does not lead tries to take
	// over, which bounds failover time (0: 1s).
	LeaderRetry time.Duration
}

// ParseExternalURL checks an external URL: https, a host, nothing else (no path, query,
// fragment or credentials), and answers it without a trailing slash.
func ParseExternalURL(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return "", fmt.Errorf("external URL %.200q: want https://HOST or https://HOST:PORT", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("external URL %.200q: port %q is not a port", s, p)
		}
	}
	return "https://" + u.Host, nil
}

// DoorbellOff as Config.Doorbell turns the doorbell off.
const DoorbellOff = "off"

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Listen: "127.0.0.1:8443", DataDir: "flotilla-data", HistoryWindow: 5 * time.Minute}
}

// Server is a running server.
type Server struct {
	cfg Config
	// dash is the dashboard, nil when its templates failed.
	dash  *web.Handler
	log   *slog.Logger
	store storeAll
	auth  *auth.Authenticator
	// authz is the index of roles, bindings and projects every decision reads.
	authz  *rbac.Authorizer
	fleet  *fleet.Fleet
	access *access.Index
	agents *agentapi.Server
	// tunnels are the agents' open tunnels; proxy forwards /k8s/clusters/… through them.
	tunnels *tunnel.Server
	// bell is the datagram doorbell once Serve opened it (nil when off); bellKeys the
	// secrets its cluster keys derive from.
	bell     atomic.Pointer[doorbell.Server]
	bellKeys *auth.Ring
	proxy    *proxy.Proxy
	secrets  *secrets.Keeper
	gitops   *gitops.Controller
	// elector says whether this replica runs the work that must run once per fleet.
	elector *leader.Elector
	metrics *metrics.Metrics
	tls     *pki.Bundle
	ready   atomic.Bool
	ln      net.Listener
	http    *http.Server
	audit   *audit.Log

	// credKeys signs cluster credentials; it follows rotations by other replicas.
	credKeys *auth.Ring
	// loginKeys seals OIDC login states and codes.
	loginKeys *auth.Ring
	// ldap checks ldap users' passwords; nil without Config.LDAP.
	ldap *ldap.Provider
	oidc *oidc.Handler
}

// storeAll is what both drivers provide.
type storeAll interface {
	store.Store
	store.Agents
	store.Summaries
}

// New opens the store and prepares everything; Serve starts listening.
func New(ctx context.Context, cfg Config) (*Server, error) {
	def := DefaultConfig()
	if cfg.Listen == "" {
		cfg.Listen = def.Listen
	}
	if cfg.DataDir == "" {
		cfg.DataDir = def.DataDir
	}
	if cfg.HistoryWindow == 0 {
		cfg.HistoryWindow = def.HistoryWindow
	}
	ext, err := ParseExternalURL(cfg.ExternalURL)
	if err != nil {
		return nil, err
	}
	cfg.ExternalURL = ext
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: metrics.New()}
	if cfg.LDAP.Enabled() {
		cfg.LDAP.Logger = cfg.Logger
		var err error
		if s.ldap, err = ldap.New(cfg.LDAP); err != nil {
			return nil, err
		}
	}
	scfg := sqlstore.DefaultConfig()
	scfg.Logger = cfg.Logger
	scfg.Observe = func(op string, d time.Duration, err error) {
		// A refused write or a missing object is an answer, not a failure of the store.
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrAlreadyExists) {
			err = nil
		}
		s.metrics.ObserveStore(op, d, err)
	}
	scfg.ObserveBatch = s.metrics.ObserveBatch
	scfg.Summaries = map[string]store.Summarizer{api.KindCluster: fleet.SummarizeCluster}
	start := time.Now()
	if cfg.DB == "" {
		st, err := sqlite.OpenWith(ctx, cfg.DataDir, scfg, sqlite.Options{Synchronous: cfg.SQLiteSynchronous})
		if err != nil {
			return nil, err
		}
		s.store = st
	} else {
		st, err := postgres.Open(ctx, cfg.DB, scfg)
		if err != nil {
			return nil, err
		}
		s.store = st
	}
	s.log.Info("store open", "driver", driverName(cfg.DB), "took", time.Since(start).Round(time.Millisecond))
	if cfg.DB == "" {
		s.elector = leader.Always()
	} else {
		s.elector = leader.NewPostgres(leader.Config{URL: cfg.DB, Retry: cfg.LeaderRetry, Check: cfg.LeaderRetry, Logger: cfg.Logger})
	}
	s.metrics.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_leader",
		Help: "1 while this replica runs the work that must run once per fleet (git sync, rollout status, offline sweep, compaction)"},
		func() float64 {
			if s.elector.Leading() {
				return 1
			}
			return 0
		}))
	s.metrics.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_gc_percent",
		Help: "The percent of the live heap the server lets the heap grow by before collecting (its own pacing; 0 when GOGC or GOMEMLIMIT leaves it to the runtime)"},
		func() float64 { return float64(gcpace.Percent()) }))
	s.metrics.RegisterObjectCounts(s.store.Count)

	if cfg.TLSCertFile != "" {
		s.tls, err = pki.LoadFiles(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSCAFile)
	} else {
		s.tls, err = pki.Ensure(filepath.Join(cfg.DataDir, "tls"), append(cfg.TLSSANs, hostOf(cfg.Listen)))
	}
	if err != nil {
		s.store.Close()
		return nil, fmt.Errorf("preparing TLS: %w", err)
	}

	s.auth = auth.NewAuthenticator(s.store)
	login := auth.LoginConfig{Logger: cfg.Logger, SessionTTL: cfg.SessionTTL, MaxTokenTTL: cfg.MaxTokenTTL,
		IsAdmin: s.mayManageUsers, IsAdministrator: s.isAdministrator}
	if s.ldap != nil {
		login.Providers = append(login.Providers, s.ldap)
	}
	s.auth.ConfigureLogin(login)
	// A login has no token to name its caller by: name it in its audit record once it worked.
	s.auth.OnSession(func(ctx context.Context, id auth.Identity) { audit.Annotate(ctx, id.User, id.Groups, "", "", "") })
	fcfg := cfg.Fleet
	fcfg.Logger = cfg.Logger
	fcfg.Observe = s.metrics.ObserveReconcile
	fcfg.Leading = s.elector.Leading
	fcfg.Replicated = cfg.DB != ""
	// A deleted or replaced cluster's tunnel is closed at once (the registry is made below,
	// before the model runs).
	fcfg.Gone = func(ns, name string) { s.tunnels.Close(ns + "/" + name) }
	// Whatever wakes a held poll rings the agent's doorbell too.
	fcfg.Changed = func(uid string) {
		if b := s.bell.Load(); b != nil {
			b.Ring(uid)
		}
	}
	fcfg.AllChanged = func() {
		if b := s.bell.Load(); b != nil {
			b.RingAll()
		}
	}
	s.fleet = fleet.New(s.store, fcfg)
	s.access = access.New(s.store, cfg.Logger)
	// One index for the API's decisions and every cluster's compiled objects.
	s.authz = s.access.Authorizer()
	s.fleet.SetAccess(s.access.Authorizer(), rbac.DefaultCompileOptions(), s.access.Ready)
	s.access.Subscribe(s.fleet.AccessChanged)
	s.metrics.RegisterFleet(func() metrics.FleetStats {
		c, b, d, q := s.fleet.Stats()
		return metrics.FleetStats{ClustersByState: c, BundlesByState: b, DeploymentsByState: d, QueueDepth: map[string]int{"fleet-status": q}}
	})
	credCfg, secretKeys, err := s.openKeys(ctx)
	if err != nil {
		s.store.Close()
		return nil, err
	}
	if cfg.OIDC.Logger == nil {
		cfg.OIDC.Logger = cfg.Logger
	}
	// OIDC login states and codes are sealed with a ring every replica shares, so that a
	// login may start, return and be redeemed on different replicas.
	cfg.OIDC.Keys = s.loginKeys
	if s.oidc, err = oidc.New(cfg.OIDC, s.auth); err != nil {
		s.store.Close()
		return nil, err
	}
	if s.agents, err = agentapi.New(ctx, s.store, s.fleet, cfg.Logger, credCfg); err != nil {
		s.store.Close()
		return nil, err
	}
	s.agents.Metrics = s.metrics
	if cfg.InlineContent != 0 {
		s.agents.InlineContent = max(cfg.InlineContent, 0)
	}
	s.tunnels = tunnel.NewServer(tunnel.Config{Max: cfg.MaxTunnels, Idle: cfg.TunnelIdle, Logger: cfg.Logger,
		Wanted: func(cluster string) {
			if b := s.bell.Load(); b != nil {
				b.RingTunnel(cluster)
			}
		}})
	s.agents.Tunnels = s.tunnels
	s.metrics.Registry.MustRegister(s.tunnels.Collectors()...)
	s.proxy = proxy.New(proxy.Config{Auth: s.auth, Authz: s.authz, Tunnels: s.tunnels, Store: s.store,
		Labels: s.fleet.Labels, ClusterGroups: s.fleet.ClusterGroupsOf, Wait: cfg.TunnelWait, LastSeen: s.fleet.LastSeen, PollInterval: s.fleet.Interval, Logger: cfg.Logger,
		BodyTimeout: cfg.ProxyBodyTimeout, WriteTimeout: cfg.ProxyWriteTimeout, Tokens: s.auth, CAPEM: s.tls.CAPEM, ExternalURL: cfg.ExternalURL,
		Replicated: cfg.DB != ""})
	s.secrets = secrets.New(s.store, secretKeys)
	s.gitops = gitops.New(gitops.Config{Store: s.store, Contents: s.store, Secrets: s.secrets,
		Dir: filepath.Join(cfg.DataDir, "git"), Logger: cfg.Logger, RenderBudget: cfg.RenderBudget, SyncTimeout: cfg.GitRepoSyncTimeout,
		Leading: s.elector.Leading})
	generated, err := s.auth.Bootstrap(ctx, cfg.BootstrapToken)
	if errors.Is(err, auth.ErrBootstrapRevoked) {
		cfg.Logger.Warn("not accepting the bootstrap token", "reason", err)
		err = nil
	}
	if err != nil {
		s.store.Close()
		return nil, err
	}
	fmt.Fprintf(cfg.Out, "CA checksum (sha256): %s\n", s.tls.Checksum)
	if generated != "" {
		fmt.Fprintf(cfg.Out, "Admin token (shown once, keep it safe): %s\n", generated)
	}
	return s, nil
}

// openKeys loads (or makes, or moves out of the database) the credential and Secret keys,
// rotating them if asked.
func (s *Server) openKeys(ctx context.Context) (agentapi.CredentialConfig, *auth.Ring, error) {
	cfg := s.cfg
	creds := agentapi.CredentialConfig{TTL: cfg.CredentialTTL, Grace: cfg.CredentialGrace}
	if creds.TTL <= 0 {
		creds.TTL = agentapi.DefaultCredentialTTL
	}
	if creds.Grace <= 0 {
		creds.Grace = agentapi.DefaultCredentialGrace
	}
	grace := cfg.KeyGrace
	if grace <= 0 {
		grace = creds.TTL + creds.Grace
	}
	keys, err := auth.OpenKeys(ctx, auth.KeysConfig{Store: s.store, DataDir: cfg.DataDir, KEKFile: cfg.KEKFile, KEK: cfg.KEK, Grace: grace, Logger: s.log})
	if err != nil {
		return creds, nil, err
	}
	if creds.Keys, err = keys.Ring(ctx, "agent-credentials"); err != nil {
		return creds, nil, err
	}
	secretKeys, err := keys.Ring(ctx, "secret-encryption")
	if err != nil {
		return creds, nil, err
	}
	if s.loginKeys, err = keys.Ring(ctx, "oidc-login"); err != nil {
		return creds, nil, err
	}
	// What it seals lives minutes: a rotated-out key must not open (or forge) states for the
	// credentials' grace of weeks.
	s.loginKeys.LimitGrace(cfg.OIDC.SealedLifetime())
	if cfg.Doorbell != DoorbellOff {
		if s.bellKeys, err = keys.Ring(ctx, "doorbell"); err != nil {
			return creds, nil, err
		}
		// A rotated-out key still answers the agents holding it, telling them to fetch the
		// new one, which they do at their next ping: a day covers agents that were away.
		s.bellKeys.LimitGrace(bellGrace)
	}
	if cfg.RotateKeys {
		for _, r := range []*auth.Ring{creds.Keys, secretKeys, s.loginKeys, s.bellKeys} {
			if r == nil {
				continue
			}
			k, err := r.Rotate(ctx)
			if err != nil {
				return creds, nil, err
			}
			s.log.Info("rotated a key; the previous one stays valid for the grace period", "key", r.Name(), "id", k.ID, "grace", grace)
		}
	}
	s.credKeys = creds.Keys
	return creds, secretKeys, nil
}

func driverName(db string) string {
	if db == "" {
		return "sqlite"
	}
	return "postgres"
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil || h == "" || h == "0.0.0.0" || h == "::" {
		return "localhost"
	}
	return h
}

// Store returns the server's store.
func (s *Server) Store() store.Store { return s.store }

// CAChecksum returns the sha256 of the CA's PEM.
func (s *Server) CAChecksum() string { return s.tls.Checksum }

// Doorbell returns the datagram doorbell once Serve has started; nil when it is off.
func (s *Server) Doorbell() *doorbell.Server { return s.bell.Load() }

// Addr returns the listening address once Serve has started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.adminOnly(s.metrics.Handler()))
	mux.Handle("/debug/pprof/", s.adminOnly(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/profile", s.adminOnly(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/trace", s.adminOnly(http.HandlerFunc(pprof.Trace)))
	mux.Handle("/debug/pprof/symbol", s.adminOnly(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/cmdline", s.adminOnly(http.HandlerFunc(pprof.Cmdline)))
	resources := apiserver.New(s.store, s.auth, s.log)
	resources.SetHooks(api.KindRegistrationToken, s.agents.TokenHooks())
	resources.SetHooks(api.KindBundle, agentapi.NewBundleHooks(s.store))
	resources.SetHooks(api.KindSecret, s.secrets)
	resources.SetLiveStatus(api.KindCluster, clusterTunnels{s.tunnels})
	if err := resources.EnableAccess(context.Background(), apiserver.Access{Authorizer: s.authz, ClusterGroups: s.fleet.ClusterGroupsOf}, s.auth.UserHooks()); err != nil {
		s.log.Error("storing the built-in roles", "err", err)
	}
	resources.Register(mux)
	s.auth.RegisterHandlers(mux)
	s.oidc.Register(mux)
	mux.Handle("POST "+api.PathRotateKeys, s.adminOnly(http.HandlerFunc(s.rotateKeys)))
	mux.Handle("GET "+api.PathAudit, s.adminOnly(s.audit.Handler()))
	mux.Handle("GET "+api.PathBackup, s.adminOnly(http.HandlerFunc(s.backup)))
	s.agents.Register(mux)
	s.proxy.Register(mux)
	s.gitops.Register(mux)
	full := s.audit.Middleware(s.metrics.Instrument(mux))
	// The dashboard makes its logins, reads and changes through full, as its user.
	dash, err := web.New(web.Config{API: full, Auth: s.auth, Fleet: s.fleet, ClusterView: resources.ClusterView,
		TunnelOpen: s.tunnels.IsOpen, ServerURL: s.cfg.ExternalURL, OIDC: s.cfg.OIDC.Issuer != "", LDAP: s.ldap != nil, CAChecksum: s.tls.Checksum, Logger: s.log})
	if err != nil {
		s.log.Error("the dashboard's templates", "err", err)
	} else {
		dash.Register(mux)
		s.dash = dash
	}
	return full
}

// mayManageUsers: admin tokens, and users allowed to update users everywhere, manage other
// users' passwords and tokens.
func (s *Server) mayManageUsers(id *auth.Identity) bool {
	if id.Admin {
		return true
	}
	return s.authz.Decide(rbac.Subject{User: id.User, Groups: id.Groups}, rbac.Request{Verb: api.VerbUpdate, Kind: api.KindUser}).Allowed
}

// rotateKeys makes new credential, Secret and login keys while serving: agents are asked to renew,
// Secrets are sealed again in the background, other replicas follow within 30 s.
func (s *Server) rotateKeys(w http.ResponseWriter, r *http.Request) {
	ck, err := s.credKeys.Rotate(r.Context())
	if err != nil {
		s.log.Error("rotating the credential key", "err", err)
		apiserver.WriteError(w, fmt.Errorf("rotating the credential key failed"))
		return
	}
	sk, err := s.secrets.Rotate(r.Context())
	if err != nil {
		s.log.Error("rotating the secret key", "err", err)
		apiserver.WriteError(w, fmt.Errorf("rotating the secret key failed"))
		return
	}
	lk, err := s.loginKeys.Rotate(r.Context())
	if err != nil {
		s.log.Error("rotating the login key", "err", err)
		apiserver.WriteError(w, fmt.Errorf("rotating the login key failed"))
		return
	}
	bellKey := ""
	if s.bellKeys != nil {
		bk, err := s.bellKeys.Rotate(r.Context())
		if err != nil {
			s.log.Error("rotating the doorbell key", "err", err)
			apiserver.WriteError(w, fmt.Errorf("rotating the doorbell key failed"))
			return
		}
		bellKey = bk.ID
	}
	s.log.Info("rotated the credential, secret, login and doorbell keys", "credentialKey", ck.ID, "secretKey", sk.ID, "loginKey", lk.ID, "doorbellKey", bellKey)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.KeyRotation{CredentialKey: ck.ID, SecretKey: sk.ID})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() || !s.fleet.Ready() {
		http.Error(w, "starting\n", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := s.store.Revision(ctx); err != nil {
		http.Error(w, "store unavailable\n", http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ok\n")
}

// Audit returns the audit log once Serve has started.
func (s *Server) Audit() *audit.Log { return s.audit }

// identify names the caller of a call whose handler did not tell the audit log. Agent calls
// carry no user: their bearer is a cluster credential or a registration token, and looking
// it up as a user's token would cost every registration a database read for nothing.
func (s *Server) identify(r *http.Request) (string, []string) {
	if strings.HasPrefix(r.URL.Path, api.AgentPrefix+"/") {
		return "", nil
	}
	id, err := s.auth.Authenticate(r.Context(), auth.BearerToken(r))
	if err != nil {
		return "", nil
	}
	return id.User, id.Groups
}

// isAdministrator: admin tokens, and subjects bound globally to a role granting everything.
func (s *Server) isAdministrator(id *auth.Identity) bool {
	return id.Admin || s.authz.IsAdmin(rbac.Subject{User: id.User, Groups: id.Groups})
}

func (s *Server) adminOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.auth.Authenticate(r.Context(), auth.BearerToken(r))
		if err == nil && !s.isAdministrator(id) {
			err = fmt.Errorf("%w: %s is not an admin", auth.ErrForbidden, id.User)
		}
		if err != nil {
			apiserver.WriteError(w, err)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Serve listens and serves until ctx ends, then shuts down: in-flight requests get a few
// seconds, watch streams end, and the store finishes its queued writes before closing.
func (s *Server) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		s.store.Close()
		return fmt.Errorf("listening on %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	if s.cfg.Doorbell != DoorbellOff {
		addr := s.cfg.Doorbell
		if addr == "" {
			addr = ln.Addr().String()
		}
		bell, err := doorbell.Listen(addr, doorbell.Config{Secrets: bellSecrets(s.bellKeys), Interval: s.cfg.DoorbellInterval, RingRate: s.cfg.DoorbellRingRate,
			SourceRate: s.cfg.DoorbellSourceRate, Budget: s.cfg.DoorbellBudget,
			KeepAliveBudget: s.cfg.DoorbellKeepAliveBudget, Clusters: bellFleet{s.fleet}, Tunnels: s.tunnels, Logger: s.log})
		if err != nil {
			ln.Close()
			s.store.Close()
			return err
		}
		s.bell.Store(bell)
		s.agents.Doorbell = bell
		s.fleet.SetDoorbell(bell)
		s.metrics.Registry.MustRegister(bellCollectors(bell)...)
	}
	if s.audit, err = audit.New(audit.Config{Store: s.store, Retention: s.cfg.AuditRetention, File: s.cfg.AuditLogFile,
		QueueSize: s.cfg.AuditQueueSize, Logger: s.log, Identify: s.identify}); err != nil {
		ln.Close()
		s.store.Close()
		return err
	}
	s.metrics.Registry.MustRegister(s.audit.Collectors()...)
	cert := s.tls.Cert
	// Send the CA along with the leaf, so a client that pins the CA by checksum can verify
	// the chain from the handshake alone.
	if len(s.tls.CAPEM) > 0 {
		if ca, err := pki.DER(s.tls.CAPEM); err == nil {
			cert.Certificate = append(cert.Certificate[:1:1], ca)
		}
	}
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	s.http = &http.Server{
		Handler:           s.handler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if b := s.bell.Load(); b != nil {
		go b.Serve(baseCtx)
		s.log.Info("doorbell listening", "address", "udp://"+b.Addr().String())
	}
	// Work that must run once per fleet runs on the leader only (on SQLite, this process).
	go s.elector.Run(baseCtx)
	go s.elector.Lead(baseCtx, s.compactor)
	go s.elector.Lead(baseCtx, func(ctx context.Context) { s.gitops.Run(ctx) })
	go s.elector.Lead(baseCtx, s.audit.Run)
	go s.access.Run(baseCtx)
	go s.fleet.Run(baseCtx)
	go s.agents.Run(baseCtx)
	go s.secrets.Run(baseCtx, s.log)
	go s.credKeys.Follow(baseCtx, 30*time.Second, s.log)
	go s.loginKeys.Follow(baseCtx, 30*time.Second, s.log)
	if s.bellKeys != nil {
		go s.bellKeys.Follow(baseCtx, 30*time.Second, s.log)
	}
	go s.auth.FollowRevocations(baseCtx, s.log)
	if s.ldap != nil && s.cfg.LDAP.BindDN != "" && s.cfg.LDAP.RefreshInterval > 0 {
		// Once per fleet: every replica would read the directory for the same users.
		go s.elector.Lead(baseCtx, func(ctx context.Context) { s.auth.RefreshGroups(ctx, s.ldap, s.cfg.LDAP.RefreshInterval, s.log) })
	}
	if s.dash != nil {
		go s.dash.Run(baseCtx)
	}
	s.ready.Store(true)
	if s.cfg.ExternalURL != "" {
		s.log.Info("serving", "address", "https://"+ln.Addr().String(), "externalURL", s.cfg.ExternalURL)
	} else {
		s.log.Info("serving", "address", "https://"+ln.Addr().String(), "externalURL", "unset: install commands and kubeconfigs name the address each request was made to (--external-url)")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.http.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		s.audit.Close()
		s.store.Close()
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	s.ready.Store(false)
	// Watch streams would hold Shutdown for its whole timeout: end them first.
	cancelBase()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = s.http.Shutdown(sctx)
	// Handlers are done: every record is queued, and the queue is written before the store closes.
	if cerr := s.audit.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if cerr := s.store.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	s.log.Info("stopped")
	return nil
}

// compactor forgets history older than the window: it remembers the revision at each tick
// and compacts to the one seen a window ago.
func (s *Server) compactor(ctx context.Context) {
	interval := s.cfg.HistoryWindow / 5
	if interval < time.Second {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var seen []int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rev, err := s.store.Revision(ctx)
		if err != nil {
			continue
		}
		seen = append(seen, rev)
		if len(seen) <= 5 {
			continue
		}
		target := seen[0]
		seen = seen[1:]
		if err := s.store.Compact(ctx, target); err != nil && ctx.Err() == nil {
			s.log.Warn("compacting history", "revision", target, "err", err)
		}
	}
}

// Run is New followed by Serve.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}
