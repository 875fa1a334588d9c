// Command flotilla-agent runs in (or beside) a downstream cluster: it registers the cluster
// with a Flotilla server, pulls what the cluster should run, applies it and reports back.
// See internal/agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"flotilla.dev/internal/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := agent.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
