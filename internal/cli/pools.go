package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// newPoolCmd returns `nexus pool`: warm pools of paused VMs.
func newPoolCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Keep paused VMs of a template or snapshot ready, and claim them",
		Long: `A warm pool keeps SIZE paused VMs of a template or snapshot ready; a claim
resumes one and hands it out running, and the pool refills in the
background when fewer than MIN_READY are ready. An empty pool makes a VM
the normal way (--on-empty create) or refuses (--on-empty fail: 503).`,
	}
	cf.add(cmd, e)
	cmd.AddCommand(poolCreateCmd(&cf, stdout), poolListCmd(&cf, stdout), poolGetCmd(&cf, stdout), poolRmCmd(&cf, stdout), poolClaimCmd(&cf, stdout), poolRolloutCmd(&cf, stdout))
	return cmd
}

var poolColumns = []column[apitypes.Pool]{
	{head: "ID", val: func(p apitypes.Pool) string { return p.ID }},
	{head: "NAME", val: func(p apitypes.Pool) string { return p.Name }},
	{head: "STATE", val: func(p apitypes.Pool) string { return p.State }},
	{head: "READY", val: func(p apitypes.Pool) string { return fmt.Sprintf("%d/%d", p.Ready, p.Size) }},
	{head: "CREATING", val: func(p apitypes.Pool) string { return fmt.Sprint(p.Creating) }},
	{head: "LAG", val: func(p apitypes.Pool) string {
		return (time.Duration(p.RefillLagSeconds * float64(time.Second))).Round(time.Millisecond).String()
	}},
	{head: "CLAIMS", val: func(p apitypes.Pool) string { return fmt.Sprint(p.Claims) }},
	{head: "SOURCE", val: func(p apitypes.Pool) string {
		if p.TemplateID != "" {
			return fmt.Sprintf("template %s v%d", p.TemplateID, p.TemplateVersion)
		}
		return "snapshot " + p.SnapshotID
	}},
}

func poolID(p apitypes.Pool) string   { return p.ID }
func poolName(p apitypes.Pool) string { return p.Name }

func poolDetail(p apitypes.Pool) [][2]string {
	return [][2]string{
		{"id", p.ID}, {"name", p.Name}, {"project", p.Project}, {"state", p.State},
		{"ready", fmt.Sprintf("%d of %d (refills below %d)", p.Ready, p.Size, p.MinReady)}, {"creating", fmt.Sprint(p.Creating)},
		{"refill lag", fmt.Sprintf("%.3fs", p.RefillLagSeconds)}, {"on empty", p.OnEmpty}, {"claims", fmt.Sprint(p.Claims)},
		{"template", p.TemplateID}, {"template version", fmt.Sprint(p.TemplateVersion)}, {"snapshot", p.SnapshotID}, {"created", p.CreatedAt.Format(time.RFC3339)},
	}
}

func poolCreateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.CreatePoolRequest
	cmd := &cobra.Command{
		Use:   "create NAME (--template T | --snapshot S) --size N",
		Short: "Create a warm pool",
		Example: `  nexus pool create web --template web --size 5
  nexus pool create box --snapshot 5d1c… --size 10 --min-ready 4 --on-empty fail`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			req.Name, req.Project = args[0], cf.project
			pool, err := c.CreatePool(cmd.Context(), req)
			if err != nil {
				return describe(err)
			}
			return created(p, pool, poolColumns, poolID, poolName)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&req.TemplateID, "template", "", "template (name or id) the pool's VMs boot from")
	fs.StringVar(&req.SnapshotID, "snapshot", "", "snapshot the pool's VMs are restored from")
	fs.IntVar(&req.Size, "size", 1, "paused VMs to keep ready (1-100)")
	fs.IntVar(&req.MinReady, "min-ready", 0, "refill when fewer than this are ready (default: size)")
	fs.StringVar(&req.OnEmpty, "on-empty", "", "a claim of an empty pool: create (default) or fail")
	return cmd
}

func poolListCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List pools with their state and refill lag", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			l, err := c.ListPools(cmd.Context(), cf.project)
			if err != nil {
				return describe(err)
			}
			return list(p, l.Items, poolColumns, poolID, poolName)
		},
	}
}

func poolGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use: "get NAME|ID", Short: "Show a pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			pool, err := c.GetPool(cmd.Context(), args[0], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, pool, poolDetail, poolID, poolName)
		},
	}
}

func poolRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use: "rm NAME|ID…", Aliases: []string{"delete"}, Short: "Delete pools and their unclaimed VMs", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, cf, stdout, args, "deleted", func(ref string) (string, error) {
				return ref, c.DeletePool(cmd.Context(), ref, cf.project)
			})
		},
	}
}

func poolClaimCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.ClaimRequest
	cmd := &cobra.Command{
		Use: "claim NAME|ID", Short: "Take one running VM from a pool", Args: cobra.ExactArgs(1),
		Example: "  nexus pool claim box --ttl 30m",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			out, err := c.ClaimPool(cmd.Context(), args[0], cf.project, req)
			if err != nil {
				return describe(err)
			}
			if !out.FromPool {
				fmt.Fprintln(cmd.ErrOrStderr(), "note: the pool was empty; this VM was made the normal way")
			}
			return created(p, out.Item, vmColumns, vmID, vmName)
		},
	}
	addExpiryFlags(cmd.Flags(), &req.Expiry)
	return cmd
}
