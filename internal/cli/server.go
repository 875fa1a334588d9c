package cli

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/internal/bundle"
	"flotilla.dev/internal/gitops"
	"flotilla.dev/internal/server"
)

func newServerCmd(g *globals) *cobra.Command {
	cfg := server.DefaultConfig()
	var logFormat, logLevel string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the Flotilla server",
		Long: `Run the Flotilla server: the API, the agent endpoints and the controllers.

By default state lives in an embedded SQLite database in --data-dir; --db selects a
PostgreSQL database instead. On first start the server creates its CA and prints the CA's
checksum (agents pin it) and, unless --bootstrap-token is given, an admin token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			if cfg.Fleet.PollInterval <= 0 {
				return fmt.Errorf("--agent-poll-interval must be positive, not %v", cfg.Fleet.PollInterval)
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
			if cfg.BootstrapToken == "" {
				cfg.BootstrapToken = os.Getenv("FLOTILLA_BOOTSTRAP_TOKEN")
			}
			if cfg.DB == "" {
				cfg.DB = os.Getenv("FLOTILLA_DB")
			}
			return server.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "HTTPS listen address")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory (SQLite database, certificates)")
	f.StringVar(&cfg.DB, "db", "", "PostgreSQL URL (env FLOTILLA_DB); default the embedded SQLite")
	f.StringVar(&cfg.SQLiteSynchronous, "sqlite-synchronous", "full", "SQLite durability: full syncs every commit to disk; normal is faster but a power loss or OS crash can lose the last acknowledged writes")
	f.StringVar(&cfg.BootstrapToken, "bootstrap-token", "", "admin token to accept (env FLOTILLA_BOOTSTRAP_TOKEN); default: generate one on first start")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "extra host names or IPs for the serving certificate")
	f.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serving certificate (default: generated in the data directory)")
	f.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "serving key")
	f.StringVar(&cfg.TLSCAFile, "tls-ca-file", "", "CA of --tls-cert-file, given to agents")
	f.DurationVar(&cfg.HistoryWindow, "history-window", 5*time.Minute, "how long change history is kept for watches and paging")
	f.DurationVar(&cfg.Fleet.PollInterval, "agent-poll-interval", 15*time.Second, "how often agents are told to poll for changes")
	f.Float64Var(&cfg.Fleet.PollBudget, "agent-poll-budget", 2000, "polls per second the whole fleet may make; agents are told to come back later as the fleet grows")
	f.IntVar(&cfg.Fleet.MaxWaiters, "max-held-polls", 5000, "agent polls held open at once, to tell those agents of a change at once (~20 KB each)")
	f.DurationVar(&cfg.Fleet.OfflineAfter, "offline-after", 0, "a cluster not heard from for this long is Offline (default: 4 poll intervals, at least 2m; never less than 3 of the intervals a large fleet's poll budget stretches them to)")
	cfg.RenderBudget = bundle.DefaultBudget()
	addRenderBudgetFlags(f, &cfg.RenderBudget)
	f.DurationVar(&cfg.GitRepoSyncTimeout, strings.TrimPrefix(gitops.FlagSyncTimeout, "--"), gitops.DefaultSyncTimeout, "time one GitRepo's sync (fetch, scan and every render of a commit) may take")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}
