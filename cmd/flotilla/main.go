// Command flotilla is the Flotilla server, its command-line client and its load simulator.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"flotilla.dev/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx)
	stop()
	os.Exit(code)
}
