package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

func newTokenCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "token", Short: "Create, list, revoke and rotate API tokens (admin)"}
	cf.add(cmd, e)

	var owner, role, project string
	create := &cobra.Command{
		Use:     "create",
		Short:   "Create a token; its secret is printed once",
		Example: "  nexus token create --owner ci-bot --role operator --project team-a",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if owner == "" {
				return usageErrorf("--owner is required")
			}
			sec, err := c.CreateToken(cmd.Context(), apitypes.CreateTokenRequest{Owner: owner, Role: role, Project: project})
			if err != nil {
				return describe(err)
			}
			return printSecret(cmd, &cf, stdout, sec)
		},
	}
	create.Flags().StringVar(&owner, "owner", "", "who or what uses the token")
	create.Flags().StringVar(&role, "role", "viewer", "viewer, operator or admin")
	create.Flags().StringVar(&project, "project", "", `project the token acts in ("*" for all)`)

	var all bool
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List tokens (never their secrets)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			l, err := c.ListTokens(cmd.Context(), all)
			if err != nil {
				return describe(err)
			}
			return list(p, l.Items, tokenColumns, func(t apitypes.Token) string { return t.ID }, func(t apitypes.Token) string { return t.Owner })
		},
	}
	ls.Flags().BoolVar(&all, "all", false, "include revoked tokens")

	revoke := &cobra.Command{
		Use:   "revoke ID…",
		Short: "Revoke tokens, effective at once on every manager",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, &cf, stdout, args, "revoked", func(id string) (string, error) {
				return id, c.RevokeToken(cmd.Context(), id)
			})
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate ID",
		Short: "Give a token a new secret (printed once); the old one stops working",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			sec, err := c.RotateToken(cmd.Context(), args[0])
			if err != nil {
				return describe(err)
			}
			return printSecret(cmd, &cf, stdout, sec)
		},
	}
	cmd.AddCommand(create, ls, revoke, rotate)
	return cmd
}

var tokenColumns = []column[apitypes.Token]{
	{head: "ID", val: func(t apitypes.Token) string { return t.ID }},
	{head: "OWNER", val: func(t apitypes.Token) string { return t.Owner }},
	{head: "ROLE", val: func(t apitypes.Token) string { return t.Role }},
	{head: "PROJECT", val: func(t apitypes.Token) string { return t.Project }},
	{head: "SCOPE", val: func(t apitypes.Token) string {
		if t.Project == "*" {
			return "all projects"
		}
		return "project " + t.Project // an admin of one project administers it only
	}},
	{head: "CREATED", val: func(t apitypes.Token) string { return t.CreatedAt.Local().Format(time.DateTime) }},
	{head: "LAST USED", val: func(t apitypes.Token) string { return when(t.LastUsedAt) }},
	{head: "REVOKED", val: func(t apitypes.Token) string { return when(t.RevokedAt) }},
}

// printSecret prints a new secret alone on stdout (or in -o json|yaml),
// its note on stderr: nexus token create … > token.txt keeps only it.
func printSecret(cmd *cobra.Command, cf *clientFlags, stdout io.Writer, sec apitypes.TokenSecret) error {
	p, err := cf.printer(stdout)
	if err != nil {
		return err
	}
	if p.format == "json" || p.format == "yaml" || p.tmpl != nil {
		return one(p, sec, nil, func(s apitypes.TokenSecret) string { return s.ID }, func(s apitypes.TokenSecret) string { return s.ID })
	}
	if p.quiet {
		fmt.Fprintln(stdout, sec.ID)
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "token %s (the secret is shown once; keep it safe):\n", sec.ID)
	fmt.Fprintln(stdout, sec.Token)
	return nil
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

func newAuditCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "audit", Short: "Read the audit trail"}
	cf.add(cmd, e)
	var vm, actor, since string
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List audited calls, oldest first (a VM's complete history with --vm)",
		Example: "  nexus audit ls --vm web\n  nexus audit ls --actor alice --since 2026-11-01T00:00:00Z -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			o := nexus.AuditOptions{Actor: actor}
			if vm != "" {
				if o.VMID, err = resolve(cmd.Context(), c, cf.project, vm); err != nil {
					return err
				}
			}
			if since != "" {
				if o.Since, err = time.Parse(time.RFC3339, since); err != nil {
					return usageErrorf("--since %q: use RFC 3339, e.g. 2026-11-01T00:00:00Z", since)
				}
			}
			var items []apitypes.AuditEntry
			for a, err := range c.AuditEntries(cmd.Context(), o) {
				if err != nil {
					return describe(err)
				}
				items = append(items, a)
			}
			return list(p, items, auditColumns, func(a apitypes.AuditEntry) string { return fmt.Sprint(a.ID) },
				func(a apitypes.AuditEntry) string { return fmt.Sprint(a.ID) })
		},
	}
	ls.Flags().StringVar(&vm, "vm", "", "VM name or id (a deleted VM: its id)")
	_ = ls.RegisterFlagCompletionFunc("vm", cf.completeVMs)
	ls.Flags().StringVar(&actor, "actor", "", "only calls by this actor")
	ls.Flags().StringVar(&since, "since", "", "only calls at or after this RFC 3339 time")
	cmd.AddCommand(ls)
	return cmd
}

var auditColumns = []column[apitypes.AuditEntry]{
	{head: "ID", val: func(a apitypes.AuditEntry) string { return fmt.Sprint(a.ID) }},
	{head: "AT", val: func(a apitypes.AuditEntry) string { return a.At.Local().Format("2006-01-02 15:04:05.000") }},
	{head: "ACTOR", val: func(a apitypes.AuditEntry) string { return a.Actor }},
	{head: "ACTION", val: func(a apitypes.AuditEntry) string { return a.Action }},
	{head: "RESOURCE", val: func(a apitypes.AuditEntry) string { return a.ResourceID }},
	{head: "RESULT", val: func(a apitypes.AuditEntry) string {
		if a.Count > 1 {
			return fmt.Sprintf("%s ×%d", a.Result, a.Count) // aggregated anonymous denials
		}
		return a.Result
	}},
	{head: "SOURCE", wide: true, val: func(a apitypes.AuditEntry) string { return a.Source }},
	{head: "REQUEST", val: func(a apitypes.AuditEntry) string { return a.RequestID }},
	{head: "ERROR", wide: true, val: func(a apitypes.AuditEntry) string { return firstLine(a.Error) }},
}
