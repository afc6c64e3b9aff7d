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
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/internal/version"
)

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
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "error:", err)
	// cobra's own refusals (unknown commands and flags, wrong numbers of
	// arguments) are usage errors.
	var ee *exitError
	code := exitCode(err)
	if !errors.As(err, &ee) && isUsageError(err) {
		code = exitUsage
	}
	if code == exitUsage && cmd != nil && cmd.Runnable() && !strings.Contains(err.Error(), "--help") {
		fmt.Fprintf(stderr, "usage: %s (see '%s --help')\n", cmd.UseLine(), cmd.CommandPath())
	}
	return code
}

func isUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires at most",
		"required flag", "flag needs an argument", "invalid argument", "bad flag syntax", "if any flags in the group"} {
		if strings.HasPrefix(msg, p) || strings.Contains(msg, " "+p) {
			return true
		}
	}
	return false
}

// strictGroups makes every command that only groups others refuse an
// unknown subcommand (cobra would print help and succeed): `nexus vm
// frobnicate` is a usage error, exit 2, with suggestions.
func strictGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictGroups(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return usageErrorf("%s (run '%s --help' for its commands)", msg, cmd.CommandPath())
	}
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
  nexus context add local --addr http://127.0.0.1:8080 --token-file .nexus/admin.token
  nexus vm create --name web --kernel-path vmlinux --rootfs-path rootfs.ext4

Client commands print tables; -o json|yaml|wide|name, --format TEMPLATE and
-q (ids only) choose otherwise. Exit codes: 0 ok, 1 error, 2 usage, 3 not
found, 4 conflict, 5 not allowed (token), 6 manager unavailable.`,
		Version:       version.Get().Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newAgentCmd(e, stdout, stderr), newManagerCmd(e, stdout, stderr), newUpCmd(e, stdout, stderr), newDownCmd(e, stdout, stderr),
		newVMCmd(e, stdout), newHostCmd(e, stdout), newTokenCmd(e, stdout), newAuditCmd(e, stdout), newQuotaCmd(e, stdout),
		newImageCmd(e, stdout), newTemplateCmd(e, stdout), newSnapshotCmd(e, stdout), newPoolCmd(e, stdout), newContextCmd(e, os.Stdin, stdout), newCertCmd(e, stdout),
		newVersionCmd(stdout))
	root.SetVersionTemplate(versionTemplate())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{code: exitUsage, err: err} })
	root.InitDefaultCompletionCmd()
	strictGroups(root)
	return root
}
