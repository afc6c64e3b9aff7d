package cli

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// quotaRow is one resource of a project: what it holds and its limit.
type quotaRow struct {
	Resource string `json:"resource"`
	Used     int64  `json:"used"`
	Limit    *int64 `json:"limit,omitempty"`
}

var quotaColumns = []column[quotaRow]{
	{head: "RESOURCE", val: func(r quotaRow) string { return r.Resource }},
	{head: "USED", val: func(r quotaRow) string { return strconv.FormatInt(r.Used, 10) }},
	{head: "LIMIT", val: func(r quotaRow) string {
		if r.Limit == nil {
			return "-"
		}
		return strconv.FormatInt(*r.Limit, 10)
	}},
}

func usageRows(u apitypes.ProjectUsage) []quotaRow {
	l, n := u.Limits, u.Usage
	return []quotaRow{
		{"vms", n.VMs, l.VMs}, {"vcpus", n.VCPUs, l.VCPUs}, {"mem_mib", n.MemMiB, l.MemMiB},
		{"snapshots", n.Snapshots, l.Snapshots}, {"snapshot_bytes", n.SnapshotBytes, l.SnapshotBytes},
		{"images", n.Images, l.Images}, {"templates", n.Templates, l.Templates}, {"streams", n.Streams, l.Streams},
	}
}

func newQuotaCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "quota", Short: "Show and set project quotas"}
	cf.add(cmd, e)

	get := &cobra.Command{
		Use:     "get PROJECT",
		Aliases: []string{"usage", "show"},
		Short:   "What a project holds against its quota (- is no limit)",
		Example: "  nexus quota get team-a\n  nexus quota get team-a -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			u, err := c.ProjectUsage(cmd.Context(), args[0])
			if err != nil {
				return describe(err)
			}
			if p.format == "json" || p.format == "yaml" {
				return one(p, u, nil, func(u apitypes.ProjectUsage) string { return u.Project }, func(u apitypes.ProjectUsage) string { return u.Project })
			}
			return list(p, usageRows(u), quotaColumns, func(r quotaRow) string { return r.Resource }, func(r quotaRow) string { return r.Resource })
		},
	}

	var limits apitypes.QuotaLimits
	set := &cobra.Command{
		Use:   "set PROJECT",
		Short: "Replace a project's quota (admin); a limit not given is no limit",
		Long: "Replace a project's quota: every limit given is set, every one not given is lifted.\n" +
			"Creates past a limit answer 403 quota_exceeded; what the project holds already stays.",
		Example: "  nexus quota set team-a --vms 20 --vcpus 40 --mem-mib 16384\n  nexus quota set team-a   # lifts every limit",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			req := apitypes.QuotaLimits{}
			for _, f := range []struct {
				name string
				dst  **int64
				src  *int64
			}{
				{"vms", &req.VMs, limits.VMs}, {"vcpus", &req.VCPUs, limits.VCPUs}, {"mem-mib", &req.MemMiB, limits.MemMiB},
				{"snapshots", &req.Snapshots, limits.Snapshots}, {"snapshot-bytes", &req.SnapshotBytes, limits.SnapshotBytes},
				{"images", &req.Images, limits.Images}, {"templates", &req.Templates, limits.Templates}, {"streams", &req.Streams, limits.Streams},
			} {
				if cmd.Flags().Changed(f.name) {
					if *f.src < 0 {
						return usageErrorf("--%s must not be negative", f.name)
					}
					v := *f.src
					*f.dst = &v
				}
			}
			q, err := c.SetQuota(cmd.Context(), args[0], req)
			if err != nil {
				return describe(err)
			}
			if p.format == "json" || p.format == "yaml" {
				return one(p, q, nil, func(q apitypes.Quota) string { return q.Project }, func(q apitypes.Quota) string { return q.Project })
			}
			fmt.Fprintf(stdout, "quota of %s set\n", q.Project)
			return nil
		},
	}
	limits = apitypes.QuotaLimits{VMs: new(int64), VCPUs: new(int64), MemMiB: new(int64), Snapshots: new(int64),
		SnapshotBytes: new(int64), Images: new(int64), Templates: new(int64), Streams: new(int64)}
	set.Flags().Int64Var(limits.VMs, "vms", 0, "VMs, whatever their state")
	set.Flags().Int64Var(limits.VCPUs, "vcpus", 0, "vCPUs of the project's VMs")
	set.Flags().Int64Var(limits.MemMiB, "mem-mib", 0, "memory of the project's VMs, MiB")
	set.Flags().Int64Var(limits.Snapshots, "snapshots", 0, "snapshots")
	set.Flags().Int64Var(limits.SnapshotBytes, "snapshot-bytes", 0, "bytes of the project's snapshots")
	set.Flags().Int64Var(limits.Images, "images", 0, "images registered in the project")
	set.Flags().Int64Var(limits.Templates, "templates", 0, "templates")
	set.Flags().Int64Var(limits.Streams, "streams", 0, "log streams of the project's VMs open at once (per manager)")
	cmd.AddCommand(get, set)
	return cmd
}
