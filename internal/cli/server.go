package cli

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/api"
	"flotilla.dev/internal/agentapi"
	"flotilla.dev/internal/audit"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/auth/ldap"
	"flotilla.dev/internal/auth/oidc"
	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/doorbell"
	"flotilla.dev/internal/fleet"
	"flotilla.dev/internal/gcpace"
	"flotilla.dev/internal/gitops"
	"flotilla.dev/internal/server"
	"flotilla.dev/internal/tunnel"
)

// The server's collector. Most of a large fleet's heap is the fleet model, which lives as
// long as the process, and the resident memory follows the heap's peak: with Go's default
// GOGC of 100 the heap grows to twice the model between collections, and every collection
// marks the whole model (~2.4 s of CPU at a million clusters). The server paces collections
// itself (gcpace): at 25% of the live heap while collections take less than 5% of a core, as
// an idle fleet's little allocation lets them, rising towards 50% (the GOGC it ran at before)
// while a busy fleet would make them cost more: a full fleet's rollout at 100% held 1.96 GB
// at 1M clusters. And without the runtime's forced collection every two minutes
// (docs/benchmarks.md, "The fleet model's memory and load"). GOGC in the environment leaves
// the collector to the runtime; GOMEMLIMIT does too, with GOGC at serverGOGC.
var serverGC = gcpace.Config{Percent: 25, MaxPercent: 50, CPUShare: 0.05}

const serverGOGC = 50

// bootstrapToken takes the admin token from --bootstrap-token-file, the environment, or the
// --bootstrap-token flag, which still works but shows the token to anyone who can list
// processes.
func bootstrapToken(cmd *cobra.Command, cfg *server.Config, file string, log *slog.Logger) error {
	flag := cmd.Flags().Changed("bootstrap-token")
	switch {
	case file != "" && flag:
		return fmt.Errorf("give the admin token with --bootstrap-token-file or --bootstrap-token, not both")
	case file != "":
		raw, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("reading --bootstrap-token-file: %w", err)
		}
		cfg.BootstrapToken = strings.TrimSpace(string(raw))
		if cfg.BootstrapToken == "" {
			return fmt.Errorf("--bootstrap-token-file %s is empty", file)
		}
	case flag:
		log.Warn("--bootstrap-token shows the admin token in the process list; use --bootstrap-token-file or FLOTILLA_BOOTSTRAP_TOKEN")
	default:
		cfg.BootstrapToken = os.Getenv("FLOTILLA_BOOTSTRAP_TOKEN")
	}
	return nil
}

func newServerCmd(g *globals) *cobra.Command {
	cfg := server.DefaultConfig()
	var logFormat, logLevel, bootstrapFile string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the Flotilla server",
		Long: `Run the Flotilla server: the API, the agent endpoints and the controllers.

By default state lives in an embedded SQLite database in --data-dir; --db selects a
PostgreSQL database instead. On first start the server creates its CA and prints the CA's
checksum (agents pin it) and, unless an admin token is given (--bootstrap-token-file or
FLOTILLA_BOOTSTRAP_TOKEN), makes one and prints it once.

The server's credential-signing and Secret keys are stored in the database only wrapped by a
key-encryption key kept outside it (--key-encryption-key-file, FLOTILLA_KEY_ENCRYPTION_KEY,
or DATA_DIR/keys/kek). Back it up with the database: without it the keys cannot be read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			if cfg.Fleet.PollInterval <= 0 {
				return fmt.Errorf("--agent-poll-interval must be positive, not %v", cfg.Fleet.PollInterval)
			}
			if cfg.Fleet.BellPollInterval <= 0 {
				return fmt.Errorf("--doorbell-poll-interval must be positive, not %v", cfg.Fleet.BellPollInterval)
			}
			if cfg.DoorbellBudget <= 0 || math.IsNaN(cfg.DoorbellBudget) || math.IsInf(cfg.DoorbellBudget, 0) {
				return fmt.Errorf("--doorbell-budget must be a positive number of pings per second, not %v", cfg.DoorbellBudget)
			}
			if cfg.DoorbellKeepAliveBudget <= 0 || math.IsNaN(cfg.DoorbellKeepAliveBudget) || math.IsInf(cfg.DoorbellKeepAliveBudget, 0) {
				return fmt.Errorf("--doorbell-keepalive-budget must be a positive number of keepalives per second, not %v", cfg.DoorbellKeepAliveBudget)
			}
			if cfg.InlineContent < 0 || cfg.InlineContent > api.MaxInlineContent {
				return fmt.Errorf("--agent-inline-content must be from 0 to %d bytes, not %d", api.MaxInlineContent, cfg.InlineContent)
			}
			if cfg.InlineContent == 0 {
				cfg.InlineContent = -1 // none; 0 in the Config is the default
			}
			if cfg.Fleet.PollBudget <= 0 || math.IsNaN(cfg.Fleet.PollBudget) || math.IsInf(cfg.Fleet.PollBudget, 0) {
				return fmt.Errorf("--agent-poll-budget must be a positive number of polls per second, not %v", cfg.Fleet.PollBudget)
			}
			if err := checkRenderBudget(cfg.RenderBudget); err != nil {
				return err
			}
			if cfg.GitRepoSyncTimeout <= 0 {
				return fmt.Errorf("%s must be positive, not %v", gitops.FlagSyncTimeout, cfg.GitRepoSyncTimeout)
			}
			opts := &slog.HandlerOptions{Level: lvl}
			var h slog.Handler = slog.NewTextHandler(g.errOut, opts)
			if logFormat == "json" {
				h = slog.NewJSONHandler(g.errOut, opts)
			}
			cfg.Logger = slog.New(h)
			cfg.Out = g.out
			if err := bootstrapToken(cmd, &cfg, bootstrapFile, cfg.Logger); err != nil {
				return err
			}
			if cfg.KEKFile == "" {
				cfg.KEK = os.Getenv(auth.KEKEnv)
			}
			if cfg.CredentialTTL <= 0 || cfg.CredentialGrace < 0 || cfg.KeyGrace < 0 {
				return fmt.Errorf("--cluster-credential-ttl must be positive and the grace periods not negative")
			}
			if cfg.AuditRetention <= 0 || cfg.AuditQueueSize <= 0 {
				return fmt.Errorf("--audit-retention and --audit-queue-size must be positive")
			}
			if cfg.DB == "" {
				cfg.DB = os.Getenv("FLOTILLA_DB")
			}
			switch {
			case os.Getenv("GOGC") != "":
			case os.Getenv("GOMEMLIMIT") != "":
				debug.SetGCPercent(serverGOGC)
			default:
				defer gcpace.Start(serverGC)()
			}
			return server.Run(cmd.Context(), cfg)
		},
	}
	cmd.AddCommand(newRotateKeysCmd(g))
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "HTTPS listen address")
	f.StringVar(&cfg.ExternalURL, "external-url", os.Getenv("FLOTILLA_EXTERNAL_URL"), "the server's address as agents and users reach it, https://HOST[:PORT] (env FLOTILLA_EXTERNAL_URL): written into the dashboard's agent install command and into kubeconfigs; default the address each request was made to")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory (SQLite database, certificates)")
	f.StringVar(&cfg.DB, "db", "", "PostgreSQL URL (env FLOTILLA_DB); default the embedded SQLite")
	f.StringVar(&cfg.SQLiteSynchronous, "sqlite-synchronous", "full", "SQLite durability: full syncs every commit to disk; normal is faster but a power loss or OS crash can lose the last acknowledged writes")
	f.StringVar(&cfg.BootstrapToken, "bootstrap-token", "", "admin token to accept; visible in the process list: prefer --bootstrap-token-file or env FLOTILLA_BOOTSTRAP_TOKEN")
	f.StringVar(&bootstrapFile, "bootstrap-token-file", "", "file holding the admin token to accept (default: env FLOTILLA_BOOTSTRAP_TOKEN, else generate one on first start)")
	f.StringVar(&cfg.KEKFile, "key-encryption-key-file", "", "file holding the key-encryption key (base64 of 32 bytes) that wraps the server's keys in the database (default: env "+auth.KEKEnv+", else DATA_DIR/keys/kek, made on first start); every replica needs the same one")
	f.BoolVar(&cfg.RotateKeys, "rotate-keys", false, "make new cluster-credential and Secret keys at start; the old ones stay valid for --key-grace, agents renew, Secrets are re-encrypted in the background")
	f.DurationVar(&cfg.KeyGrace, "key-grace", 0, "how long a rotated-out key still verifies credentials and opens Secrets (default: --cluster-credential-ttl + --cluster-credential-grace)")
	f.DurationVar(&cfg.CredentialTTL, "cluster-credential-ttl", 30*24*time.Hour, "how long a cluster credential is valid; agents renew it after two thirds of that")
	f.DurationVar(&cfg.CredentialGrace, "cluster-credential-grace", 30*24*time.Hour, "how long after expiry a cluster credential may still be renewed (an agent that was offline)")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra host names or IPs for the serving certificate")
	f.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serving certificate (default: generated in the data directory)")
	f.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "serving key")
	f.StringVar(&cfg.TLSCAFile, "tls-ca-file", "", "CA of --tls-cert-file, given to agents")
	f.DurationVar(&cfg.LeaderRetry, "leader-retry", time.Second, "with several replicas on PostgreSQL: how often one that does not lead tries to take over, and how often the leader checks its database session; bounds failover time")
	f.DurationVar(&cfg.HistoryWindow, "history-window", 5*time.Minute, "how long change history is kept for watches and paging")
	f.DurationVar(&cfg.Fleet.PollInterval, "agent-poll-interval", 15*time.Second, "how often agents are told to poll for changes")
	f.Float64Var(&cfg.Fleet.PollBudget, "agent-poll-budget", 2000, "polls per second the whole fleet may make; agents are told to come back later as the fleet grows")
	f.IntVar(&cfg.InlineContent, "agent-inline-content", agentapi.DefaultInlineContent, "bytes of bundle content archives sent with a changed desired state, for the deployments its cluster has not applied yet, so that its agent need not fetch them (0: none, every archive is fetched)")
	f.IntVar(&cfg.Fleet.MaxWaiters, "max-held-polls", 5000, "agent polls held open at once, to tell those agents of a change at once (~20 KB each)")
	f.DurationVar(&cfg.Fleet.OfflineAfter, "offline-after", 0, "a cluster not heard from for this long is Offline (default: 4 poll intervals, at least 2m; never less than 3 of the intervals a large fleet's poll budget stretches them to)")
	cfg.RenderBudget = bundle.DefaultBudget()
	addRenderBudgetFlags(f, &cfg.RenderBudget)
	oidc.AddFlags(f, &cfg.OIDC)
	f.DurationVar(&cfg.SessionTTL, "session-ttl", auth.DefaultSessionTTL, "how long a login (password or OIDC) lasts")
	f.DurationVar(&cfg.MaxTokenTTL, "max-token-ttl", auth.DefaultMaxTokenTTL, "the longest TTL of an API token a user makes")
	f.IntVar(&cfg.MaxTunnels, "max-tunnels", tunnel.DefaultMax, "the most agent tunnels open at once (kubectl through Flotilla)")
	f.DurationVar(&cfg.TunnelIdle, "tunnel-idle", tunnel.DefaultIdle, "close an agent tunnel no request used for this long")
	f.DurationVar(&cfg.TunnelWait, "tunnel-wait", 30*time.Second, "how long a call to a cluster waits for its agent to open its tunnel")
	f.DurationVar(&cfg.ProxyBodyTimeout, "proxy-body-timeout", 2*time.Minute, "how long a call through the cluster proxy may take to send its request body")
	f.DurationVar(&cfg.ProxyWriteTimeout, "proxy-write-timeout", 2*time.Minute, "how long one write of a proxied answer may wait for a client that does not read it (the time between a watch's events does not count)")
	f.StringVar(&cfg.Doorbell, "doorbell", "", "UDP address of the datagram doorbell that tells agents of changes at once (default: the --listen address over UDP; \"off\" for none)")
	f.Float64Var(&cfg.DoorbellRingRate, "doorbell-ring-rate", doorbell.DefaultRingRate, "doorbell rings and \"changed, come now\" answers per second: the rate at which a change pulls agents to the API")
	f.Float64Var(&cfg.DoorbellSourceRate, "doorbell-source-rate", doorbell.DefaultSourceRate, "doorbell datagrams per second taken from one source address")
	f.DurationVar(&cfg.DoorbellInterval, "doorbell-interval", doorbell.DefaultInterval, "how often agents ping the doorbell, or keep their path to it alive between pings (keep it under the UDP timeout of NATs on the way); a fleet larger than the interval times a budget pings or keeps alive less often")
	f.Float64Var(&cfg.DoorbellBudget, "doorbell-budget", doorbell.DefaultBudget, "doorbell pings per second the whole fleet may send (each is read, checked and answered); agents are told to ping less often as the fleet grows")
	f.Float64Var(&cfg.DoorbellKeepAliveBudget, "doorbell-keepalive-budget", doorbell.DefaultKeepAliveBudget, "doorbell keepalives per second the whole fleet may send between pings (one-byte datagrams the kernel drops before the server reads them, which keep NATs open for rings); agents are told to send them less often as the fleet grows")
	f.DurationVar(&cfg.Fleet.BellPollInterval, "doorbell-poll-interval", fleet.DefaultConfig().BellPollInterval, "how often agents whose doorbell pings are answered poll over HTTPS (their pings carry their desired version; a change rings them)")
	f.DurationVar(&cfg.GitRepoSyncTimeout, strings.TrimPrefix(gitops.FlagSyncTimeout, "--"), gitops.DefaultSyncTimeout, "time one GitRepo's sync (fetch, scan and every render of a commit) may take")
	ldap.AddFlags(f, &cfg.LDAP)
	f.DurationVar(&cfg.AuditRetention, "audit-retention", audit.DefaultRetention, "how long audit records are kept in the database")
	f.StringVar(&cfg.AuditLogFile, "audit-log-file", "", "also write every audit record to this file as a JSON line (- for standard output)")
	f.IntVar(&cfg.AuditQueueSize, "audit-queue-size", audit.DefaultQueueSize, "audit records waiting to be written at most; more are dropped, counted and logged")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}

// newRotateKeysCmd rotates a running server's keys through its API.
func newRotateKeysCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-keys",
		Short: "Make a running server rotate its cluster-credential and Secret keys (admins only)",
		Long: `Make new cluster-credential and Secret keys. The old ones stay valid for the server's
--key-grace; agents are asked to renew their credentials, and Secrets are encrypted again under
the new key in the background. Other replicas on the same database follow within 30 seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.RotateKeys(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "rotated: credential key %s, secret key %s\n", r.CredentialKey, r.SecretKey)
			return nil
		},
	}
}
