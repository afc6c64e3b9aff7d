// Package cli holds the nexus command tree: `manager`, `agent` and `up`
// start servers; `vm`, `image`, `template`, `snapshot`, `host`, `token` and
// `audit` are the client commands. main only calls Run, so tests drive the
// exact commands users type.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X …/cli.Version=…".
var Version = "0.1.0-dev"

// env reads configuration variables; tests pass their own.
type env func(string) string

func (e env) or(key, def string) string {
	if v := e(key); v != "" {
		return v
	}
	return def
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Run executes the nexus command line and returns the process exit code.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	root := newRoot(env(getenv), stdout, stderr)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "error:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRoot(e env, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "nexus",
		Short: "Firecracker microVMs as easy to run as containers",
		Long: `Nexus runs fleets of Firecracker microVMs: a manager (REST API, state store,
reconciler, scheduler, RBAC, audit) and one agent per host (bridge/TAP
networking, firecracker processes, socket proxy, inventory, cleanup).

Quick start on one host (as root):
  nexus up                      # manager + local agent + SQLite in one process
  export NEXUS_TOKEN=$(cat .nexus/admin.token)
  nexus vm create --name web --kernel-path vmlinux --rootfs-path rootfs.ext4`,
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newAgentCmd(e, stdout, stderr), newManagerCmd(e, stdout, stderr), newUpCmd(e, stdout, stderr), newDownCmd(e, stdout, stderr),
		newVMCmd(e, stdout), newHostCmd(e, stdout), newTokenCmd(e, stdout), newAuditCmd(e, stdout), newCertCmd(e, stdout))
	for _, c := range []*cobra.Command{newImageCmd(e, stdout), newTemplateCmd(e, stdout), newSnapshotCmd(e, stdout)} {
		if c != nil {
			root.AddCommand(c)
		}
	}
	return root
}
