// Command nexus is the Nexus binary: the manager, the host agent, the
// single-host `up` mode and the CLI. See `nexus --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/nexus-microvm/nexus/internal/agent/jail"
	"github.com/nexus-microvm/nexus/internal/cli"
)

func main() {
	// Started by the agent as the jail helper (no nexus-jail installed):
	// confine and exec a VMM; never returns.
	jail.RunIfHelper()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
