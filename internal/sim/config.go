package sim

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"flotilla.dev/api"
	"flotilla.dev/client"
	"flotilla.dev/internal/tunnel"
)

// Config says what to simulate and how to measure it.
type Config struct {
	// Server is the server's URL; CAChecksum pins its CA (or CAData gives it). Several
	// replicas' URLs, separated by commas, spread the simulated clusters over them (each
	// connection starts at another replica and moves on when it cannot reach it); figures
	// scraped from /metrics are the first replica's.
	Server     string
	CAChecksum string
	CAData     []byte
	// RegistrationToken is what every simulated cluster registers with. When empty, Run
	// creates one with AdminToken.
	RegistrationToken string
	// AdminToken reads /metrics, makes the bundle change and watches its rollup.
	AdminToken string

	// Clusters is how many clusters to simulate.
	Clusters int
	// Prefix names the run: cluster i's client ID is Prefix-i, and every cluster gets the
	// label RunLabel=Prefix. Running again with the same prefix re-registers the same
	// clusters, which the server must recognise.
	Prefix string
	// Labels spreads labels over the clusters (see LabelSpec).
	Labels LabelSpec
	// Ramp is how many clusters start registering per second; 0 means all at once, as fast
	// as the server takes them.
	Ramp float64

	// Connections bounds the connections to the server; Workers bounds the requests in
	// flight.
	Connections int
	Workers     int
	// PollInterval is used when the server does not say when to poll again.
	PollInterval time.Duration
	// ReportDelay gathers status changes into one report, as the agent does.
	ReportDelay time.Duration
	// ReadyDelay is how long an applied deployment takes to become ready; until then it is
	// reported NotReady (when ReadyDelay exceeds ReportDelay).
	ReadyDelay time.Duration
	// Heartbeat is how often a cluster reports its inventory although nothing changed; 0
	// turns heartbeats off.
	Heartbeat time.Duration
	// FailFraction of the clusters report ErrApplied instead of Ready; OfflineFraction of
	// them go silent after their first poll. Which ones is decided by the cluster's index.
	FailFraction, OfflineFraction float64
	// LongPoll, when set, makes LongPollFraction of the clusters poll as the agent does:
	// each poll but the first (and the first after a failure) is held by the server, which
	// answers at once when the cluster's desired state changes, for up to the poll-after
	// it gave last, at most LongPoll (the agent's PollWait); the next poll starts
	// poll-after after the previous one started. 0: short polls only, as agents before
	// long polls. Each held poll costs the simulator a goroutine and an HTTP/2 stream
	// (some 20 KB), and the server about as much.
	LongPoll         time.Duration
	LongPollFraction float64
	// DoorbellFraction of the clusters use the server's datagram doorbell when it offers
	// one, as the agent does (pinging as often as the server says, polling when it rings,
	// holding no poll); the others poll over HTTPS only, for a comparison in one run. 0:
	// none. DoorbellPerSocket clusters share one UDP socket.
	DoorbellFraction  float64
	DoorbellPerSocket int
	// ColdTunnels, when set, makes Run call that many clusters of each group (doorbell,
	// HTTPS only) through the proxy with no tunnel open, timing the first byte.
	ColdTunnels int
	// PingStorm is how long Run sends doorbell pings as fast as they go, to measure the
	// server's CPU per datagram (0: not).
	PingStorm time.Duration
	// MinBackoff and MaxBackoff bound retries after a failed call, jittered as the agent's.
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one call.
	RequestTimeout time.Duration

	// MaxTunnels bounds the clusters that open their agent tunnel when the server asks
	// (the real agent end, serving NewKubeAPI); 0 opens none. Each open tunnel costs a
	// connection and a few goroutines here. TunnelIdle closes a tunnel no request used for
	// that long (0: the agent's default), except those of clusters kept by KeepTunnels.
	MaxTunnels int
	TunnelIdle time.Duration
	// Tunnels, when set, makes Run label that many clusters to keep their tunnel once the
	// fleet polls, and measure the tunnels' cost (OpenTunnels; its CPU over Duration, at
	// most a minute).
	Tunnels int

	// Run's phases. Baseline is how long the bare-HTTPS reference is measured (0: not).
	Baseline time.Duration
	// ChangeBundle, when set, is the name of a bundle Run applies once every cluster has
	// registered and polled, targeting ChangeSelector (default RunLabel=Prefix), with
	// content of ChangeSize bytes; Run measures how long it takes to reach every targeted
	// cluster and for all of them to report.
	ChangeBundle   string
	ChangeSelector string
	ChangeSize     int
	// ChangeRollout, if set, is the rollout strategy of the bundles Change applies: a
	// change of an existing bundle then reaches the clusters partition by partition.
	ChangeRollout *api.RolloutStrategy
	// Duration is how long the fleet keeps running idle after the change, to measure an
	// idle fleet's cost.
	Duration time.Duration
	// PollStorm is how long Run sends unchanged polls as fast as they are answered, to
	// measure the cost of one (0: not).
	PollStorm time.Duration
	// Timeout bounds each phase's wait.
	Timeout time.Duration

	// Progress receives a progress line every ProgressInterval; nil for none.
	Progress         io.Writer
	ProgressInterval time.Duration
	Logger           *slog.Logger
}

// RunLabel is the label every simulated cluster carries, with the run's prefix as value.
const RunLabel = "flotilla.dev/sim"

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Prefix:            "sim",
		Connections:       8,
		Workers:           128,
		PollInterval:      30 * time.Second,
		ReportDelay:       500 * time.Millisecond,
		LongPoll:          30 * time.Second,
		LongPollFraction:  1,
		DoorbellFraction:  1,
		DoorbellPerSocket: 256,
		Heartbeat:         10 * time.Minute,
		MinBackoff:        time.Second,
		MaxBackoff:        time.Minute,
		RequestTimeout:    time.Minute,
		ChangeSize:        1024,
		MaxTunnels:        tunnel.DefaultMax,
		Timeout:           30 * time.Minute,
		ProgressInterval:  2 * time.Second,
	}
}

func (c *Config) complete() error {
	def := DefaultConfig()
	if c.Server == "" {
		return errors.New("no server URL")
	}
	if _, err := client.Servers(c.Server); err != nil {
		return err
	}
	if c.Clusters <= 0 {
		return errors.New("the number of clusters must be positive")
	}
	if c.Clusters > 1<<31-1 {
		return errors.New("too many clusters")
	}
	if c.FailFraction < 0 || c.FailFraction > 1 || c.OfflineFraction < 0 || c.OfflineFraction > 1 || c.LongPollFraction < 0 || c.LongPollFraction > 1 ||
		c.DoorbellFraction < 0 || c.DoorbellFraction > 1 {
		return errors.New("fractions must be between 0 and 1")
	}
	if c.MaxTunnels < 0 || c.Tunnels < 0 {
		return errors.New("tunnel counts must not be negative")
	}
	if c.Tunnels > c.MaxTunnels {
		return fmt.Errorf("%d tunnels to keep open, but at most %d tunnels (MaxTunnels)", c.Tunnels, c.MaxTunnels)
	}
	if c.Prefix == "" {
		c.Prefix = def.Prefix
	}
	setD := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Connections <= 0 {
		c.Connections = def.Connections
	}
	if c.Workers <= 0 {
		c.Workers = def.Workers
	}
	if c.DoorbellPerSocket <= 0 {
		c.DoorbellPerSocket = def.DoorbellPerSocket
	}
	setD(&c.PollInterval, def.PollInterval)
	setD(&c.MinBackoff, def.MinBackoff)
	setD(&c.MaxBackoff, def.MaxBackoff)
	setD(&c.RequestTimeout, def.RequestTimeout)
	setD(&c.Timeout, def.Timeout)
	setD(&c.ProgressInterval, def.ProgressInterval)
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if c.ChangeSize <= 0 {
		c.ChangeSize = def.ChangeSize
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
