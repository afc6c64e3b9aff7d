package cli

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
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
		Use:     "create NAME|ID",
		Short:   "Pause a VM, write its snapshot and resume it",
		Example: "  nexus snapshot create web\n  nexus snapshot create web --no-resume   # leave it paused",
		Args:    cobra.ExactArgs(1),
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
			var out apitypes.SnapshotCreated
			if err := c.Do(cmd.Context(), "POST", "/v1/vms/"+url.PathEscape(id)+"/snapshots", nil, req, &out); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, out)
			}
			fmt.Fprintf(stdout, "%s\t%s (%s on disk)\tpaused %d ms\n", out.SnapshotID, snapSize(out.Size), snapSize(out.AllocatedBytes), out.PausedMs)
			return nil
		},
	}
	cmd.Flags().BoolVar(&noResume, "no-resume", false, "leave the VM paused after the snapshot")
	return cmd
}

func snapshotListCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:     "ls [NAME|ID]",
		Aliases: []string{"list"},
		Short:   "List snapshots (of one VM, also after it was deleted: give its id)",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			path, q := "/v1/snapshots", url.Values{}
			if cf.project != "" {
				q.Set("project", cf.project)
			}
			if len(args) == 1 {
				id, err := resolve(cmd.Context(), c, cf.project, args[0])
				if err != nil {
					return err
				}
				path, q = "/v1/vms/"+url.PathEscape(id)+"/snapshots", nil
			}
			var l apitypes.SnapshotList
			if err := c.Do(cmd.Context(), "GET", path, q, nil, &l); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, l.Items)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tVM\tHOST\tMEM\tSIZE\tON DISK\tFIRECRACKER\tAGE")
			for _, s := range l.Items {
				mem := 0
				if s.Config.MemMib != nil {
					mem = *s.Config.MemMib
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%dM\t%s\t%s\t%s\t%s\n", s.ID, snapVM(s), s.HostID, mem,
					snapSize(s.Size), snapSize(s.AllocatedBytes), s.FirecrackerVersion, age(s.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func snapshotGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one snapshot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var it apitypes.SnapshotItem
			if err := c.Do(cmd.Context(), "GET", "/v1/snapshots/"+url.PathEscape(args[0]), nil, nil, &it); err != nil {
				return describe(err)
			}
			s := it.Item
			if cf.output == "json" {
				return printJSON(stdout, s)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
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
			for _, kv := range rows {
				if strings.TrimSpace(kv[1]) != "" {
					fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
				}
			}
			return tw.Flush()
		},
	}
}

func snapshotRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:     "rm ID…",
		Aliases: []string{"delete"},
		Short:   "Delete snapshots and their files (VMs restored from them keep running)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return eachRef(args, stdout, "ok", func(id string) error {
				return c.Do(cmd.Context(), "DELETE", "/v1/snapshots/"+url.PathEscape(id), nil, nil, nil)
			})
		},
	}
}

func snapshotRestoreCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var name string
	var tags []string
	cmd := &cobra.Command{
		Use:     "restore ID --name NAME",
		Short:   "Start a new VM from a snapshot, on the snapshot's host",
		Example: "  nexus snapshot restore 5d1c… --name web-clone",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if name == "" {
				return fmt.Errorf("--name is required")
			}
			req := apitypes.InstantiateSnapshotRequest{Name: name}
			for _, t := range tags {
				k, v, ok := strings.Cut(t, "=")
				if !ok || k == "" {
					return fmt.Errorf("--tag %q: use key=value", t)
				}
				if req.Tags == nil {
					req.Tags = map[string]string{}
				}
				req.Tags[k] = v
			}
			var out apitypes.RestoredVM
			if err := c.Do(cmd.Context(), "POST", "/v1/snapshots/"+url.PathEscape(args[0])+"/instantiate", nil, req, &out); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, out)
			}
			fmt.Fprintf(stdout, "%s\t%s\t%s\n", out.ID, out.Name, out.State)
			for _, n := range out.Notices {
				fmt.Fprintf(stdout, "note: %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the new VM's name")
	cmd.Flags().StringSliceVar(&tags, "tag", nil, "key=value tag (repeatable; default: the source VM's tags)")
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
