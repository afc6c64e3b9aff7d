package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// newSnapshotCmd is `nexus snapshot`: create, list, show, delete and
// restore snapshots.
func newSnapshotCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Snapshot running VMs and restore snapshots as new VMs",
		Long: `A snapshot is a running (or paused) VM's state, memory and drives, written on
its host. Restoring it starts a new VM on that host whose guest continues where
the snapshot left it. Snapshots outlive their VM until deleted.`,
	}
	cf.add(cmd, e)
	cmd.AddCommand(snapshotCreateCmd(&cf, stdout), snapshotListCmd(&cf, stdout), snapshotGetCmd(&cf, stdout),
		snapshotRmCmd(&cf, stdout), snapshotRestoreCmd(&cf, stdout))
	return cmd
}

func snapshotCreateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var noResume bool
	cmd := &cobra.Command{
		Use:               "create NAME|ID",
		ValidArgsFunction: cf.completeVMs,
		Short:             "Pause a VM, write its snapshot and resume it",
		Example:           "  nexus snapshot create web\n  nexus snapshot create web --no-resume   # leave it paused",
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := cf.vmRef(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var req apitypes.CreateSnapshotRequest
			if noResume {
				f := false
				req.Resume = &f
			}
			p, err := cf.printer(stdout)
			if err != nil {
				return err
			}
			out, err := c.CreateSnapshot(cmd.Context(), id, req.Resume)
			if err != nil {
				return describe(err)
			}
			if !p.machine() {
				fmt.Fprintf(cmd.ErrOrStderr(), "the guest was paused %d ms\n", out.PausedMs)
			}
			return created(p, out.Item, snapshotColumns, snapshotID, snapshotID)
		},
	}
	cmd.Flags().BoolVar(&noResume, "no-resume", false, "leave the VM paused after the snapshot")
	return cmd
}

func snapshotListCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "ls [NAME|ID]",
		Aliases:           []string{"list"},
		Short:             "List snapshots (of one VM, also after it was deleted: give its id)",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			var l apitypes.SnapshotList
			if len(args) == 1 {
				id, err := resolve(cmd.Context(), c, cf.project, args[0])
				if err != nil {
					return err
				}
				l, err = c.VMSnapshots(cmd.Context(), id)
				if err != nil {
					return describe(err)
				}
			} else if l, err = c.ListSnapshots(cmd.Context(), nexus.ListSnapshotsOptions{Project: cf.project}); err != nil {
				return describe(err)
			}
			return list(p, l.Items, snapshotColumns, snapshotID, snapshotID)
		},
	}
}

var snapshotColumns = []column[apitypes.Snapshot]{
	{head: "ID", val: func(s apitypes.Snapshot) string { return s.ID }},
	{head: "VM", val: snapVM},
	{head: "HOST", val: func(s apitypes.Snapshot) string { return s.HostID }},
	{head: "MEM", val: func(s apitypes.Snapshot) string {
		if s.Config.MemMib != nil {
			return fmt.Sprintf("%dM", *s.Config.MemMib)
		}
		return ""
	}},
	{head: "SIZE", val: func(s apitypes.Snapshot) string { return snapSize(s.Size) }},
	{head: "ON DISK", val: func(s apitypes.Snapshot) string { return snapSize(s.AllocatedBytes) }},
	{head: "FIRECRACKER", val: func(s apitypes.Snapshot) string { return s.FirecrackerVersion }},
	{head: "PROJECT", wide: true, val: func(s apitypes.Snapshot) string { return s.Project }},
	{head: "DIR", wide: true, val: func(s apitypes.Snapshot) string { return s.Dir }},
	{head: "AGE", val: func(s apitypes.Snapshot) string { return age(s.CreatedAt) }},
}

func snapshotID(s apitypes.Snapshot) string { return s.ID }

func snapshotGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "get ID",
		Short:             "Show one snapshot",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeSnapshots,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			sn, err := c.GetSnapshot(cmd.Context(), args[0])
			if err != nil {
				return describe(err)
			}
			return one(p, sn, snapshotDetail, snapshotID, snapshotID)
		},
	}
}

func snapshotDetail(s apitypes.Snapshot) [][2]string {
	rows := [][2]string{
		{"id", s.ID}, {"vm", s.VMID + " " + s.VMName}, {"project", s.Project}, {"host", s.HostID},
		{"dir", s.Dir}, {"size", snapSize(s.Size) + " (" + snapSize(s.AllocatedBytes) + " on disk)"},
		{"firecracker", s.FirecrackerVersion + " (snapshot format " + s.SnapshotVersion + ")"},
		{"mac", s.MAC}, {"paused", fmt.Sprintf("%d ms", s.PausedMs)}, {"created", s.CreatedAt.Format(time.RFC3339)},
	}
	for _, f := range s.Files {
		rows = append(rows, [2]string{"file", fmt.Sprintf("%s  %s (%s on disk)", f.Path, snapSize(f.Size), snapSize(f.AllocatedBytes))})
	}
	for _, d := range s.Drives {
		how := "shared read-only"
		if d.Copy != "" {
			how = "copy " + d.Copy
		}
		rows = append(rows, [2]string{"drive", fmt.Sprintf("%s  %s  %s", d.DriveID, d.Path, how)})
	}
	return rows
}

func snapshotRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "rm ID…",
		Aliases:           []string{"delete"},
		Short:             "Delete snapshots and their files (VMs restored from them keep running)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: cf.completeSnapshots,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, cf, stdout, args, "deleted", func(id string) (string, error) {
				return id, c.DeleteSnapshot(cmd.Context(), id)
			})
		},
	}
}

func snapshotRestoreCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var name string
	var tags []string
	var expiry apitypes.Expiry
	var count int
	cmd := &cobra.Command{
		Use:               "restore ID --name NAME",
		ValidArgsFunction: cf.completeSnapshots,
		Short:             "Start a new VM from a snapshot, on the snapshot's host",
		Example:           "  nexus snapshot restore 5d1c… --name web-clone\n  nexus snapshot restore 5d1c… --name try-1 --ttl 2h\n  nexus snapshot restore 5d1c… --name box --count 10",
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if name == "" {
				return usageErrorf("--name is required")
			}
			p, err := cf.printer(stdout)
			if err != nil {
				return err
			}
			req := apitypes.InstantiateSnapshotRequest{Name: name, Expiry: expiry, Count: count}
			if req.Tags, err = parseTags(tags); err != nil {
				return err
			}
			out, err := c.InstantiateSnapshot(cmd.Context(), args[0], req)
			if err != nil {
				return describe(err)
			}
			if p.format == "json" || p.format == "yaml" {
				return one(p, out, nil, nil, nil) // with its notices
			}
			if len(out.Items) > 1 {
				if err := list(p, out.Items, vmColumns, vmID, vmName); err != nil {
					return err
				}
			} else if err := created(p, out.Item, vmColumns, vmID, vmName); err != nil {
				return err
			}
			for _, n := range out.Notices {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the new VM's name")
	cmd.Flags().StringSliceVar(&tags, "tag", nil, "key=value tag (repeatable; default: the source VM's tags)")
	addExpiryFlags(cmd.Flags(), &expiry)
	cmd.Flags().IntVar(&count, "count", 0, "how many clones, NAME-1 … NAME-N (1-100, all or none)")
	return cmd
}

// snapVM names a snapshot's source VM: its name, or its id.
func snapVM(s apitypes.Snapshot) string {
	if s.VMName != "" {
		return s.VMName
	}
	return s.VMID
}

// snapSize renders a byte count in binary units.
func snapSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
