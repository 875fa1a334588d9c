package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Exit codes of Main besides 0 and 1 (a bad invocation is 2, as with package flag).
const (
	// ExitRevoked: the cluster was deleted on the server or its credential refused.
	ExitRevoked = 3
	// ExitRegistration: registration is impossible (invalid token, no token, the cluster name
	// refused).
	ExitRegistration = 4
)

// Main is the flotilla-agent command: it parses args (flags, with FLOTILLA_* environment
// variables as defaults), runs the agent until ctx ends, and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, logLevel, showVersion, err := parseFlags(args, os.Getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "flotilla-agent:", err)
		return 2
	}
	if showVersion {
		fmt.Fprintln(stdout, "flotilla-agent", Version())
		return 0
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	cfg.Logger.Info("flotilla-agent starting", "version", Version(), "stateDir", cfg.StateDir, "inCluster", cfg.InCluster)
	err = Run(ctx, cfg)
	switch {
	case err == nil:
		cfg.Logger.Info("flotilla-agent stopped")
		return 0
	case errors.Is(err, ErrClusterDeleted), errors.Is(err, ErrUnauthorized):
		cfg.Logger.Error(err.Error())
		return ExitRevoked
	case errors.Is(err, ErrTokenInvalid), errors.Is(err, ErrNotRegistered), errors.Is(err, ErrClusterNameRefused):
		cfg.Logger.Error(err.Error())
		return ExitRegistration
	}
	cfg.Logger.Error("flotilla-agent failed", "err", err)
	return 1
}

// parseFlags reads the command line; getenv supplies the defaults.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (cfg Config, level slog.Level, version bool, err error) {
	fs := flag.NewFlagSet("flotilla-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	inPod := getenv("KUBERNETES_SERVICE_HOST") != ""
	var labels, logLevel, heartbeat, bell string
	fs.StringVar(&cfg.Server, "server", env("FLOTILLA_SERVER", ""), "Flotilla server URL, https://host:port, or several replicas' URLs separated by commas (env FLOTILLA_SERVER)")
	fs.StringVar(&cfg.CAChecksum, "ca-checksum", env("FLOTILLA_CA_CHECKSUM", ""), "sha256 of the server's CA certificate (PEM), printed by 'flotilla server' (env FLOTILLA_CA_CHECKSUM)")
	fs.StringVar(&cfg.Token, "token", env("FLOTILLA_TOKEN", ""), "registration token from 'flotilla token create', used once (env FLOTILLA_TOKEN)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", env("FLOTILLA_KUBECONFIG", env("KUBECONFIG", "")), "kubeconfig of the cluster to manage; in-cluster configuration when run in a pod (env FLOTILLA_KUBECONFIG, KUBECONFIG)")
	fs.StringVar(&cfg.ClusterName, "cluster-name", env("FLOTILLA_CLUSTER_NAME", ""), "name to register the cluster under, a DNS label; default: derived from the cluster's identity (env FLOTILLA_CLUSTER_NAME)")
	fs.StringVar(&labels, "labels", env("FLOTILLA_LABELS", ""), "the cluster's labels, k=v,k2=v2, sent when registering (env FLOTILLA_LABELS)")
	fs.StringVar(&cfg.StateDir, "state-dir", env("FLOTILLA_STATE_DIR", DefaultStateDir), "directory for the agent's state (env FLOTILLA_STATE_DIR)")
	fs.BoolVar(&cfg.InCluster, "in-cluster", inPod, "run as a pod of the managed cluster: in-cluster configuration, credential in a Secret (default: true in a pod)")
	fs.StringVar(&logLevel, "log-level", env("FLOTILLA_LOG_LEVEL", "info"), "debug, info, warn or error (env FLOTILLA_LOG_LEVEL)")
	fs.StringVar(&heartbeat, "heartbeat", env("FLOTILLA_HEARTBEAT", ""), "interval of heartbeat reports (default 10m) (env FLOTILLA_HEARTBEAT)")
	fs.DurationVar(&cfg.StatusInterval, "status-interval", 0, "how often every deployment is checked again (default 20s)")
	fs.DurationVar(&cfg.TunnelIdle, "tunnel-idle", 0, "close the tunnel to the server after this long without a request (default 5m)")
	fs.BoolVar(&cfg.TunnelAlways, "tunnel-always", false, "keep the tunnel open once the server asked for it, instead of closing it when idle")
	fs.StringVar(&cfg.OnClusterDeleted, "on-cluster-deleted", env("FLOTILLA_ON_CLUSTER_DELETED", OnClusterDeletedKeep), "when the cluster is deleted on the server: keep what the agent deployed, or prune it (env FLOTILLA_ON_CLUSTER_DELETED)")
	fs.StringVar(&bell, "doorbell", env("FLOTILLA_DOORBELL", "on"), "on: hear of changes by the server's UDP doorbell when it offers one (HTTPS long polls when UDP is blocked); off: HTTPS long polls only (env FLOTILLA_DOORBELL)")
	fs.BoolVar(&version, "version", false, "print the version and exit")
	if err = fs.Parse(args); err != nil {
		return
	}
	if fs.NArg() > 0 {
		return cfg, 0, false, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.Labels, err = parseLabels(labels); err != nil {
		return
	}
	if err = level.UnmarshalText([]byte(logLevel)); err != nil {
		return cfg, 0, false, fmt.Errorf("--log-level: %w", err)
	}
	switch bell {
	case "on":
	case "off":
		cfg.NoDoorbell = true
	default:
		return cfg, 0, false, fmt.Errorf("--doorbell must be on or off, not %q", bell)
	}
	if heartbeat != "" {
		if cfg.HeartbeatInterval, err = time.ParseDuration(heartbeat); err != nil {
			return cfg, 0, false, fmt.Errorf("--heartbeat: %w", err)
		}
	}
	err = cfg.validate()
	return
}

// parseLabels parses k=v,k2=v2 into valid Kubernetes labels.
func parseLabels(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not key=value", kv)
		}
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			return nil, fmt.Errorf("--labels: key %q: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			return nil, fmt.Errorf("--labels: value of %q: %s", k, strings.Join(msgs, "; "))
		}
		out[k] = v
	}
	return out, nil
}
