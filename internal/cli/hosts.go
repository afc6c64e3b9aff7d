package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

var hostColumns = []column[apitypes.Host]{
	{head: "ID", val: func(h apitypes.Host) string { return h.ID }},
	{head: "NAME", val: func(h apitypes.Host) string { return h.Name }},
	{head: "STATE", val: func(h apitypes.Host) string { return h.State }},
	{head: "VMS", val: func(h apitypes.Host) string { return fmt.Sprint(h.VMs) }},
	{head: "VCPU (ALLOC/TOTAL)", val: func(h apitypes.Host) string {
		return fmt.Sprintf("%d/%d", h.Allocated.Vcpu, h.Capacity.Vcpu)
	}},
	{head: "MEM MiB (ALLOC/TOTAL)", val: func(h apitypes.Host) string {
		return fmt.Sprintf("%d/%d", h.Allocated.MemMib, h.Capacity.MemMib)
	}},
	{head: "VMM", val: func(h apitypes.Host) string {
		if h.Simulated {
			return h.VMM + " (simulated)"
		}
		return h.VMM
	}},
	{head: "ADDR", val: func(h apitypes.Host) string { return h.Addr }},
	{head: "SUBNET", wide: true, val: func(h apitypes.Host) string {
		if h.Network == nil {
			return ""
		}
		return h.Network.Subnet
	}},
	{head: "LAST SEEN", val: func(h apitypes.Host) string { return age(h.LastSeenAt) + " ago" }},
}

func hostID(h apitypes.Host) string   { return h.ID }
func hostName(h apitypes.Host) string { return h.Name }

func newHostCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "host", Short: "Inspect, drain and remove the fleet's hosts"}
	cf.add(cmd, e)
	cmd.AddCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List hosts with capacity and allocation",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			l, err := c.Hosts(cmd.Context())
			if err != nil {
				return describe(err)
			}
			if err := list(p, l.Items, hostColumns, hostID, hostName); err != nil {
				return err
			}
			for _, h := range l.Items {
				if h.Simulated && !p.machine() {
					fmt.Fprintln(cmd.ErrOrStderr(), "note: simulated hosts report 64× their real vCPUs and memory (a firecracker-sim VM costs about 1 MiB)")
					break
				}
			}
			return nil
		},
	})
	for _, a := range []struct {
		verb, short, done string
		op                func(c *nexus.Client) func(cmd *cobra.Command, ref string) error
	}{
		{"drain", "Stop placing new VMs on hosts (their VMs keep running)", "drained", func(c *nexus.Client) func(*cobra.Command, string) error {
			return func(cmd *cobra.Command, h string) error { return c.DrainHost(cmd.Context(), h) }
		}},
		{"undrain", "Place new VMs on hosts again", "undrained", func(c *nexus.Client) func(*cobra.Command, string) error {
			return func(cmd *cobra.Command, h string) error { return c.UndrainHost(cmd.Context(), h) }
		}},
		{"rm", "Forget hosts that hold no VMs (a registering agent comes back)", "removed", func(c *nexus.Client) func(*cobra.Command, string) error {
			return func(cmd *cobra.Command, h string) error { return c.RemoveHost(cmd.Context(), h) }
		}},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:               a.verb + " HOST…",
			Short:             a.short,
			Args:              cobra.MinimumNArgs(1),
			ValidArgsFunction: cf.completeHosts,
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := cf.client()
				if err != nil {
					return err
				}
				op := a.op(c)
				return runEach(cmd, &cf, stdout, args, a.done, func(h string) (string, error) { return h, op(cmd, h) })
			},
		})
	}
	return cmd
}
