package cli

import (
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
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
			var sec apitypes.TokenSecret
			err = c.Do(cmd.Context(), "POST", "/v1/tokens", nil, apitypes.CreateTokenRequest{Owner: owner, Role: role, Project: project}, &sec)
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
			c, err := cf.client()
			if err != nil {
				return err
			}
			var l apitypes.TokenList
			if err := c.Do(cmd.Context(), "GET", "/v1/tokens", url.Values{"all": {fmt.Sprint(all)}}, nil, &l); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, l.Items)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tOWNER\tROLE\tPROJECT\tCREATED\tLAST USED\tREVOKED")
			for _, t := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Owner, t.Role, t.Project,
					t.CreatedAt.Local().Format(time.DateTime), when(t.LastUsedAt), when(t.RevokedAt))
			}
			return tw.Flush()
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
			return eachRef(args, stdout, "revoked", func(id string) error {
				return c.Do(cmd.Context(), "DELETE", "/v1/tokens/"+url.PathEscape(id), nil, nil, nil)
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
			var sec apitypes.TokenSecret
			if err := c.Do(cmd.Context(), "POST", "/v1/tokens/"+url.PathEscape(args[0])+"/rotate", nil, nil, &sec); err != nil {
				return describe(err)
			}
			return printSecret(cmd, &cf, stdout, sec)
		},
	}
	cmd.AddCommand(create, ls, revoke, rotate)
	return cmd
}

func printSecret(cmd *cobra.Command, cf *clientFlags, stdout io.Writer, sec apitypes.TokenSecret) error {
	if cf.output == "json" {
		return printJSON(stdout, sec)
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
			c, err := cf.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if vm != "" {
				id, err := resolve(cmd.Context(), c, cf.project, vm)
				if err != nil {
					return err
				}
				q.Set("vm_id", id)
			}
			if actor != "" {
				q.Set("actor", actor)
			}
			if since != "" {
				if _, err := time.Parse(time.RFC3339, since); err != nil {
					return fmt.Errorf("--since %q: use RFC 3339, e.g. 2026-11-01T00:00:00Z", since)
				}
				q.Set("since", since)
			}
			var items []apitypes.AuditEntry
			for {
				var l apitypes.AuditList
				if err := c.Do(cmd.Context(), "GET", "/v1/audit", q, nil, &l); err != nil {
					return describe(err)
				}
				items = append(items, l.Items...)
				if len(l.Items) < 1000 {
					break
				}
				q.Set("after_id", fmt.Sprint(l.Items[len(l.Items)-1].ID))
			}
			if cf.output == "json" {
				return printJSON(stdout, items)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tAT\tACTOR\tACTION\tRESOURCE\tRESULT\tREQUEST")
			for _, a := range items {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.At.Local().Format("2006-01-02 15:04:05.000"),
					a.Actor, a.Action, a.ResourceID, a.Result, a.RequestID)
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVar(&vm, "vm", "", "VM name or id (a deleted VM: its id)")
	ls.Flags().StringVar(&actor, "actor", "", "only calls by this actor")
	ls.Flags().StringVar(&since, "since", "", "only calls at or after this RFC 3339 time")
	cmd.AddCommand(ls)
	return cmd
}
