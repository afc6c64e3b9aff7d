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

// poolRolloutCmd returns `nexus pool rollout`: move a pool to another
// template version and watch or steer the move.
func poolRolloutCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Move a template pool to another version of its template, canaries first",
		Long: `A rollout replaces a template pool's VMs with VMs of another version of
its template: the canaries first, then max_parallel at a time once they
have stayed paused-ready for min_healthy_time. Old VMs go only when new
ones stand in for them, so the pool keeps its size (it needs room for
size + max_parallel VMs). A new VM that fails, or takes longer than the
progress deadline (or, with --ready-line, does not show that line on its
console before then), fails the step; with --auto-revert the pool goes
back to its old version at full size. With --auto-promote=false the rollout
stops once its canaries are healthy (state awaiting_promotion) until
'nexus pool rollout promote POOL'.`,
	}
	cmd.AddCommand(rolloutStartCmd(cf, stdout), rolloutStatusCmd(cf, stdout),
		rolloutActionCmd(cf, stdout, "pause", "Pause the rollout after the step under way", (*nexus.Client).PauseRollout),
		rolloutActionCmd(cf, stdout, "resume", "Resume a paused rollout", (*nexus.Client).ResumeRollout),
		rolloutActionCmd(cf, stdout, "promote", "Promote the healthy canaries of a rollout awaiting promotion: it goes on with the rest", (*nexus.Client).PromoteRollout),
		rolloutActionCmd(cf, stdout, "abort", "Abort the rollout: the pool returns to its old version at full size", (*nexus.Client).AbortRollout))
	return cmd
}

func rolloutStartCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.RolloutRequest
	var canary int
	var autoPromote bool
	cmd := &cobra.Command{
		Use:   "start POOL --version N",
		Short: "Start a rollout",
		Example: `  nexus pool rollout start warm --version 3 --canary 1 --max-parallel 3 --min-healthy-time 10s --auto-revert
  nexus pool rollout start warm --version 3 --canary 2 --auto-promote=false   # then: nexus pool rollout promote warm`,
		Args: cobra.ExactArgs(1),
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
			r, err := c.StartRollout(cmd.Context(), args[0], cf.project, req)
			if err != nil {
				return describe(err)
			}
			return one(p, r, rolloutDetail, rolloutID, rolloutID)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&req.TemplateVersion, "version", 0, "the template version to move to")
	fs.IntVar(&canary, "canary", 1, "VMs of the new version made first")
	fs.IntVar(&req.MaxParallel, "max-parallel", 1, "new VMs under way at once after the canaries")
	fs.StringVar(&req.MinHealthyTime, "min-healthy-time", "", "how long a new VM stays paused-ready before it counts (default 0s)")
	fs.StringVar(&req.ProgressDeadline, "progress-deadline", "", "how long a new VM may take to become paused-ready (default 5m)")
	fs.BoolVar(&req.AutoRevert, "auto-revert", false, "on a failed step, go back to the old version at full size")
	fs.StringVar(&req.ReadyLine, "ready-line", "", "a new VM counts healthy only once its console shows this text, e.g. 'nexus-guest: ready'")
	fs.BoolVar(&autoPromote, "auto-promote", true, "go on once the canaries are healthy; false: wait for 'nexus pool rollout promote'")
	_ = cmd.MarkFlagRequired("version")
	return cmd
}

func rolloutStatusCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use: "status POOL", Short: "Show the pool's newest rollout and its progress", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			r, err := c.GetRollout(cmd.Context(), args[0], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, r, rolloutDetail, rolloutID, rolloutID)
		},
	}
}

func rolloutActionCmd(cf *clientFlags, stdout io.Writer, action, short string,
	do func(*nexus.Client, context.Context, string, string) (apitypes.Rollout, error)) *cobra.Command {
	return &cobra.Command{
		Use: action + " POOL", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			r, err := do(c, cmd.Context(), args[0], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, r, rolloutDetail, rolloutID, rolloutID)
		},
	}
}

func rolloutDetail(r apitypes.Rollout) [][2]string {
	return [][2]string{
		{"id", r.ID}, {"pool", r.PoolID}, {"versions", fmt.Sprintf("%d → %d", r.FromVersion, r.ToVersion)},
		{"state", r.State}, {"phase", r.Phase}, {"progress", fmt.Sprintf("%d new ready, %d old", r.New, r.Old)},
		{"strategy", fmt.Sprintf("canary %d, max_parallel %d, min_healthy_time %s, progress_deadline %s, auto_revert %t, auto_promote %t",
			r.Canary, r.MaxParallel, r.MinHealthyTime, r.ProgressDeadline, r.AutoRevert, r.AutoPromote)},
		{"ready line", r.ReadyLine},
		{"message", r.Message}, {"started", r.CreatedAt.Format(time.RFC3339)}, {"updated", r.UpdatedAt.Format(time.RFC3339)},
	}
}

func rolloutID(r apitypes.Rollout) string { return r.ID }
