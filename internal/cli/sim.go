package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/internal/sim"
)

func newSimCmd(g *globals) *cobra.Command {
	cfg := sim.DefaultConfig()
	var labelSpec, jsonFile, caChecksum, adminToken string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate a fleet of clusters against a server and measure it",
		Long: `Simulate N clusters against a Flotilla server. Each simulated cluster has its own identity
and credential and makes exactly the calls a real agent makes: it registers, polls its
desired state when the server says, fetches content it has not got, reports status (every
applied deployment is Ready after --ready-delay, or ErrApplied for --fail-fraction of the
clusters) and heartbeats; --offline-fraction of them go silent after their first poll.
As the agent, they long-poll: the server holds each poll until the cluster's desired state
changes or its poll-after passes (at most --long-poll), which costs the simulator (and the
server) a goroutine and a stream per cluster; --long-poll 0 makes short polls only.
They share --connections HTTP/2 connections and --workers requests in flight.

The run goes through phases and reports on each: the bare-HTTPS baseline (a trivial
handler on loopback with the same connection settings, which every rate is compared
with), registration and first poll of every cluster, a bundle change (--change-bundle:
applied to every simulated cluster, or --change-selector, then timed until every one has
it and reported), an idle fleet (--duration) and a storm of unchanged polls
(--poll-storm). With --tunnels N, N clusters are labelled to keep their agent tunnel
open (flotilla.dev/tunnel=always) once the fleet polls, and the open tunnels' memory,
goroutines and idle CPU are measured on both sides. Every simulated cluster the server
asks for its tunnel (a kubectl call through /k8s/clusters/NAME/…) opens it with the real
agent code and serves a small Kubernetes-like API: /version, and the pods of any
namespace, listed or watched. The server's memory is read from its /metrics, which needs the admin
token (--admin-token or FLOTILLA_TOKEN); so does the bundle change, and creating a
registration token when --token is not given.

Label spec: "env=prod:50,dev:50;region=eu,us,ap" gives each cluster one value per key,
by weight; "group=@10000" puts consecutive blocks of 10,000 clusters in groups b0, b1, ….
Every simulated cluster also carries ` + sim.RunLabel + `=PREFIX.`,
		Example: `  flotilla sim --server https://127.0.0.1:8443 --ca-checksum SHA --admin-token T \
      --clusters 10000 --labels 'env=prod:80,dev:20;region=eu,us,ap' \
      --change-bundle sim-change --duration 30s --poll-storm 5s --json sim.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ls, err := sim.ParseLabelSpec(labelSpec)
			if err != nil {
				return err
			}
			cfg.Labels = ls
			conf, err := g.loadConfig()
			if err != nil {
				return err
			}
			cfg.Server = first(g.server, os.Getenv("FLOTILLA_SERVER"), conf.Server)
			if cfg.Server == "" {
				return errors.New("no server: pass --server or set FLOTILLA_SERVER")
			}
			cfg.AdminToken = first(adminToken, os.Getenv("FLOTILLA_TOKEN"))
			if cfg.AdminToken == "" && cfg.Server == conf.Server {
				cfg.AdminToken = conf.Token
			}
			cfg.CAChecksum = caChecksum
			if caFile := first(g.caFile, os.Getenv("FLOTILLA_CA_FILE")); caFile != "" {
				if cfg.CAData, err = os.ReadFile(caFile); err != nil {
					return fmt.Errorf("reading CA file: %w", err)
				}
			} else if cfg.CAChecksum == "" && conf.CA != "" && cfg.Server == conf.Server {
				cfg.CAData = []byte(conf.CA)
			}
			if cfg.CAChecksum == "" && len(cfg.CAData) == 0 {
				return errors.New("no CA: pass --ca-checksum (printed by the server on first start) or --ca-file")
			}
			if !quiet {
				cfg.Progress = g.errOut
			}
			s, err := sim.New(cfg)
			if err != nil {
				return err
			}
			rep, runErr := s.Run(cmd.Context())
			if rep != nil {
				rep.WriteTable(g.out)
				if jsonFile != "" {
					data, _ := json.MarshalIndent(rep, "", "  ")
					if err := os.WriteFile(jsonFile, append(data, '\n'), 0o644); err != nil {
						return errors.Join(runErr, fmt.Errorf("writing %s: %w", jsonFile, err))
					}
				}
			}
			return runErr
		},
	}
	f := cmd.Flags()
	// --token here is the registration token; the admin token has its own flag.
	f.StringVar(&cfg.RegistrationToken, "token", "", "registration token the clusters register with (default: create one with the admin token)")
	f.StringVar(&adminToken, "admin-token", "", "admin token, for /metrics and the bundle change (env FLOTILLA_TOKEN)")
	f.StringVar(&caChecksum, "ca-checksum", "", "sha256 checksum of the server's CA, as agents pin it")
	f.IntVar(&cfg.Clusters, "clusters", 1000, "number of simulated clusters")
	f.StringVar(&labelSpec, "labels", "", `label spec, e.g. "env=prod:50,dev:50;region=eu,us,ap"`)
	f.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "run name: client IDs are PREFIX-i; the same prefix re-registers the same clusters")
	f.Float64Var(&cfg.Ramp, "ramp", 0, "clusters starting to register per second (0: all at once)")
	f.IntVar(&cfg.Connections, "connections", cfg.Connections, "HTTP/2 connections shared by the fleet")
	f.IntVar(&cfg.Workers, "workers", cfg.Workers, "requests in flight at most")
	f.DurationVar(&cfg.PollInterval, "poll-interval", cfg.PollInterval, "poll interval when the server does not give one")
	f.DurationVar(&cfg.ReadyDelay, "ready-delay", 0, "how long an applied deployment takes to become Ready (reported NotReady meanwhile)")
	f.DurationVar(&cfg.ReportDelay, "report-delay", cfg.ReportDelay, "how long status changes are gathered before a report, as the agent does")
	f.DurationVar(&cfg.Heartbeat, "heartbeat", cfg.Heartbeat, "heartbeat (inventory report) interval; 0 for none")
	f.Float64Var(&cfg.FailFraction, "fail-fraction", 0, "fraction of clusters whose deployments report ErrApplied")
	f.Float64Var(&cfg.OfflineFraction, "offline-fraction", 0, "fraction of clusters that go silent after their first poll")
	f.DurationVar(&cfg.LongPoll, "long-poll", cfg.LongPoll, "longest a poll is held open, as the agent's (it holds each for the server's poll-after, at most this); 0: short polls only")
	f.Float64Var(&cfg.LongPollFraction, "long-poll-fraction", cfg.LongPollFraction, "fraction of clusters that long-poll")
	f.Float64Var(&cfg.DoorbellFraction, "doorbell-fraction", cfg.DoorbellFraction, "fraction of clusters that use the server's UDP doorbell, as the agent does (the others poll HTTPS only, for a comparison in one run); 0: none")
	f.IntVar(&cfg.DoorbellPerSocket, "doorbell-per-socket", cfg.DoorbellPerSocket, "simulated clusters sharing one UDP socket for the doorbell")
	f.IntVar(&cfg.ColdTunnels, "cold-tunnels", 0, "after the idle phase, call this many clusters of each group (doorbell, HTTPS only) through the proxy with no tunnel open and time the first byte")
	f.DurationVar(&cfg.PingStorm, "ping-storm", 0, "at the end, send doorbell pings as fast as they are answered for this long, to measure the server's CPU per datagram; 0 to skip")
	f.DurationVar(&cfg.MinBackoff, "min-backoff", cfg.MinBackoff, "first retry delay after a failed call")
	f.DurationVar(&cfg.MaxBackoff, "max-backoff", cfg.MaxBackoff, "longest retry delay")
	f.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "timeout of one call")
	f.DurationVar(&cfg.Baseline, "baseline", 3*time.Second, "how long to measure the bare-HTTPS baseline; 0 to skip")
	f.StringVar(&cfg.ChangeBundle, "change-bundle", "", "apply a bundle of this name after registration and time it reaching the fleet")
	f.StringVar(&cfg.ChangeSelector, "change-selector", "", "label selector of the change's target (default: every simulated cluster)")
	f.IntVar(&cfg.ChangeSize, "change-size", cfg.ChangeSize, "bytes of payload in the changed bundle")
	f.DurationVar(&cfg.Duration, "duration", 0, "how long to keep the fleet running idle after the change, measuring its cost (the second half on its own too: give twice the server's history window, 5m by default, to measure it past the change's wake)")
	f.DurationVar(&cfg.PollStorm, "poll-storm", 0, "how long to send unchanged polls as fast as they are answered; 0 to skip")
	f.IntVar(&cfg.MaxTunnels, "max-tunnels", cfg.MaxTunnels, "the most clusters that open their agent tunnel when the server asks (a small Kubernetes-like API behind each); 0: none")
	f.DurationVar(&cfg.TunnelIdle, "tunnel-idle", 0, "close a simulated agent's tunnel no request used for this long (default: the agent's)")
	f.IntVar(&cfg.Tunnels, "tunnels", 0, "label this many clusters to keep their tunnel open once the fleet polls, and measure what the open tunnels cost")
	f.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "longest wait for each phase")
	f.DurationVar(&cfg.ProgressInterval, "progress", cfg.ProgressInterval, "progress line interval")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress lines")
	f.StringVar(&jsonFile, "json", "", "also write the report as JSON to this file")
	return cmd
}
