package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// templateRolloutCmd returns `nexus template rollout`: move a group of a
// template's VMs to another version in place.
func templateRolloutCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Move a group of a template's VMs to another version in place, canaries first",
		Long: `A group is the VMs of a template in its project that carry the tag
group=<name> (nexus vm create --tag group=ci, or instantiate with tags).
A group rollout moves them to another version of the template in place:
each VM is stopped, its config rewritten from the version (with its own
overrides on top) and started again, keeping its id, name, address and
disks. The canaries go first; once they run (for --min-healthy-time), the
rest, --max-parallel at a time: no more VMs than that are down at once. A
VM that does not run again within --progress-deadline fails the step; with
--auto-revert every VM already moved goes back to its old config. With
--auto-promote=false the rollout stops once its canaries run (state
awaiting_promotion) until 'nexus template rollout promote TEMPLATE GROUP'.`,
	}
	cmd.AddCommand(groupRolloutStartCmd(cf, stdout), groupRolloutStatusCmd(cf, stdout),
		groupRolloutActionCmd(cf, stdout, "pause", "Pause the rollout after the step under way", (*nexus.Client).PauseGroupRollout),
		groupRolloutActionCmd(cf, stdout, "resume", "Resume a paused rollout", (*nexus.Client).ResumeGroupRollout),
		groupRolloutActionCmd(cf, stdout, "promote", "Promote the running canaries of a rollout awaiting promotion: it goes on with the rest", (*nexus.Client).PromoteGroupRollout),
		groupRolloutActionCmd(cf, stdout, "abort", "Abort the rollout: every VM it moved goes back to its old config", (*nexus.Client).AbortGroupRollout))
	return cmd
}

func groupRolloutStartCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.GroupRolloutRequest
	var canary int
	var autoPromote bool
	cmd := &cobra.Command{
		Use:   "start TEMPLATE GROUP --version N",
		Short: "Start a rollout of a group",
		Example: `  nexus template rollout start web ci --version 3 --canary 1 --max-parallel 2 --progress-deadline 1m --auto-revert
  nexus template rollout start web ci --version 3 --canary 2 --auto-promote=false   # then: nexus template rollout promote web ci`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("canary") {
				req.Canary = &canary
			}
			if cmd.Flags().Changed("auto-promote") {
				req.AutoPromote = &autoPromote
			}
			r, err := c.StartGroupRollout(cmd.Context(), args[0], args[1], cf.project, req)
			if err != nil {
				return describe(err)
			}
			return one(p, r, groupRolloutDetail, groupRolloutID, groupRolloutID)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&req.TemplateVersion, "version", 0, "the template version to move to")
	fs.IntVar(&canary, "canary", 1, "VMs moved first")
	fs.IntVar(&req.MaxParallel, "max-parallel", 1, "VMs down (being replaced) at once")
	fs.StringVar(&req.MinHealthyTime, "min-healthy-time", "", "how long a step's VMs must stay running before the next step (default 0s)")
	fs.StringVar(&req.ProgressDeadline, "progress-deadline", "", "how long a VM may take to run again (default 5m)")
	fs.BoolVar(&req.AutoRevert, "auto-revert", false, "on a failed step, move every VM already moved back to its old config")
	fs.BoolVar(&autoPromote, "auto-promote", true, "go on once the canaries run; false: wait for 'nexus template rollout promote'")
	_ = cmd.MarkFlagRequired("version")
	return cmd
}

func groupRolloutStatusCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use: "status TEMPLATE GROUP", Short: "Show the group's newest rollout and its progress", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			r, err := c.GetGroupRollout(cmd.Context(), args[0], args[1], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, r, groupRolloutDetail, groupRolloutID, groupRolloutID)
		},
	}
}

func groupRolloutActionCmd(cf *clientFlags, stdout io.Writer, action, short string,
	do func(*nexus.Client, context.Context, string, string, string) (apitypes.GroupRollout, error)) *cobra.Command {
	return &cobra.Command{
		Use: action + " TEMPLATE GROUP", Short: short, Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			r, err := do(c, cmd.Context(), args[0], args[1], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, r, groupRolloutDetail, groupRolloutID, groupRolloutID)
		},
	}
}

func groupRolloutDetail(r apitypes.GroupRollout) [][2]string {
	return [][2]string{
		{"id", r.ID}, {"template", r.TemplateID}, {"group", r.Group}, {"to version", fmt.Sprint(r.ToVersion)},
		{"state", r.State}, {"phase", r.Phase},
		{"progress", fmt.Sprintf("%d of %d on version %d, %d old, %d down", r.New, r.Total, r.ToVersion, r.Old, r.Down)},
		{"strategy", fmt.Sprintf("canary %d, max_parallel %d, min_healthy_time %s, progress_deadline %s, auto_revert %t, auto_promote %t",
			r.Canary, r.MaxParallel, r.MinHealthyTime, r.ProgressDeadline, r.AutoRevert, r.AutoPromote)},
		{"message", r.Message}, {"started", r.CreatedAt.Format(time.RFC3339)}, {"updated", r.UpdatedAt.Format(time.RFC3339)},
	}
}

func groupRolloutID(r apitypes.GroupRollout) string { return r.ID }
