package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr, token, output, project, ca string
}

func (c *clientFlags) add(cmd *cobra.Command, e env) {
	fs := cmd.PersistentFlags()
	strFlag(fs, &c.addr, "addr", e, "NEXUS_ADDR", "http://127.0.0.1:8080", "manager URL")
	strFlag(fs, &c.token, "token", e, "NEXUS_TOKEN", "", "API token")
	strFlag(fs, &c.ca, "ca", e, "NEXUS_CA", "", "CA bundle to check an https manager against (default: the system's roots)")
	fs.StringVarP(&c.output, "output", "o", "table", "output: table or json")
	fs.StringVar(&c.project, "project", "", "project (default: the token's)")
}

func (c *clientFlags) client() (*nexus.Client, error) {
	if c.output != "table" && c.output != "json" {
		return nil, fmt.Errorf("--output %q: use table or json", c.output)
	}
	if c.token == "" {
		return nil, errors.New("no API token: set NEXUS_TOKEN (nexus up wrote one to .nexus/admin.token) or pass --token")
	}
	if c.ca != "" {
		r, err := pki.NewReloader(pki.Files{CA: c.ca}, nil)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		tr := jsonhttp.NewTransport()
		r.ConfigureTransport(tr)
		return nexus.New(c.addr, c.token, nexus.WithHTTPClient(&http.Client{Transport: tr})), nil
	}
	return nexus.New(c.addr, c.token), nil
}

// vmRef returns a client and the id of the VM named (or identified) by ref.
func (c *clientFlags) vmRef(ctx context.Context, ref string) (*nexus.Client, string, error) {
	cl, err := c.client()
	if err != nil {
		return nil, "", err
	}
	id, err := resolve(ctx, cl, c.project, ref)
	return cl, id, err
}

// describe renders an API error as one line with what to do.
func describe(err error) error {
	var e *apierr.Error
	if !errors.As(err, &e) {
		return err
	}
	msg := e.Message
	if msg == "" {
		msg = e.Code
	}
	if e.FaultMessage != "" {
		msg += ": " + e.FaultMessage
	}
	if e.Suggestion != "" {
		msg += " (" + e.Suggestion + ")"
	}
	return fmt.Errorf("%s", msg)
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// resolve turns a VM name or id into an id.
func resolve(ctx context.Context, c *nexus.Client, project, ref string) (string, error) {
	if uuidRE.MatchString(ref) {
		return ref, nil
	}
	l, err := c.ListVMs(ctx, nexus.ListVMsOptions{Name: ref, Project: project})
	if err != nil {
		return "", describe(err)
	}
	if len(l.Items) == 0 {
		return "", fmt.Errorf("no VM named %q (nexus vm ls lists them)", ref)
	}
	return l.Items[0].ID, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newVMCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "vm", Short: "Create, list, start, stop and delete microVMs"}
	cf.add(cmd, e)
	cmd.AddCommand(vmCreateCmd(&cf, stdout), vmListCmd(&cf, stdout), vmGetCmd(&cf, stdout), vmLogsCmd(&cf, stdout), vmEventsCmd(&cf, stdout))
	for _, a := range []struct{ verb, short string }{
		{"start", "Start stopped VMs"}, {"stop", "Stop VMs (stopping → stopped)"},
		{"pause", "Pause running VMs"}, {"resume", "Resume paused VMs"},
	} {
		cmd.AddCommand(vmActionCmd(&cf, stdout, a.verb, a.short))
	}
	cmd.AddCommand(vmRmCmd(&cf, stdout))
	return cmd
}

func vmCreateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.CreateVMRequest
	var vcpu, mem int
	var tags []string
	var noStart, noWait bool
	var template string
	var count int
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a VM and boot it",
		Example: `  nexus vm create --name web --kernel-path /srv/fc/images/vmlinux --rootfs-path /srv/fc/images/rootfs.ext4
  nexus vm create --name guest --kernel-image-id 3f2a… --initrd-image 77c0… --rootfs-image-id 9c1b…
  nexus vm create --name job-1 --kernel-image-id 3f2a… --rootfs-image-id 9c1b… --vcpu 2 --mem 512 --tag team=ci
  nexus vm create --name worker --template web --count 20`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if req.Name == "" {
				return errors.New("--name is required")
			}
			if cmd.Flags().Changed("vcpu") {
				req.Vcpu = &vcpu
			}
			if cmd.Flags().Changed("mem") {
				req.MemMib = &mem
			}
			req.Project = cf.project
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
			if noStart {
				f := false
				req.Start = &f
			}
			if template != "" {
				return createFromTemplate(cmd, c, cf, template, count, req, !noWait, stdout)
			} else if count != 0 {
				return errors.New("--count needs --template")
			}
			vm, err := c.CreateVM(cmd.Context(), req, !noWait)
			if err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, vm)
			}
			fmt.Fprintf(stdout, "%s\t%s\t%s\n", vm.ID, vm.Name, vm.State)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&req.Name, "name", "", "VM name (unique in the project)")
	fs.IntVar(&vcpu, "vcpu", 1, "vCPUs")
	fs.IntVar(&mem, "mem", 128, "memory in MiB")
	fs.StringVar(&req.KernelImageID, "kernel-image-id", "", "registered kernel image")
	fs.StringVar(&req.KernelPath, "kernel-path", "", "kernel path on the host (dev mode)")
	fs.StringVar(&req.InitrdImageID, "initrd-image", "", "registered initrd image (id; with --template also a name)")
	fs.StringVar(&req.InitrdImageID, "initrd-image-id", "", "the same as --initrd-image")
	fs.StringVar(&req.InitrdPath, "initrd-path", "", "initrd path on the host (dev mode, admins)")
	fs.StringVar(&req.RootfsImageID, "rootfs-image-id", "", "registered rootfs image")
	fs.StringVar(&req.RootfsPath, "rootfs-path", "", "rootfs path on the host (dev mode)")
	fs.StringVar(&req.BootArgs, "boot-args", "", "kernel command line")
	fs.StringVar(&req.HostID, "host", "", "pin to a host (id or name)")
	fs.StringSliceVar(&tags, "tag", nil, "key=value tag (repeatable)")
	fs.BoolVar(&noStart, "no-start", false, "create stopped")
	fs.BoolVar(&noWait, "no-wait", false, "return at once instead of waiting until the VM runs")
	fs.StringVar(&template, "template", "", "create from this template (name or id); the config flags given override it")
	fs.IntVar(&count, "count", 0, "with --template: create this many VMs, NAME-1 … NAME-N (1-100, all or none)")
	return cmd
}

func vmTable(w io.Writer, vms []apitypes.VM) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tIP\tVCPU\tMEM\tPROJECT\tAGE")
	for _, v := range vms {
		ip := v.IP
		if ip == "" {
			ip = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dM\t%s\t%s\n", v.ID, v.Name, v.State, ip, v.Vcpu, v.MemMib, v.Project, age(v.CreatedAt))
	}
	tw.Flush()
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func vmListCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var state, host string
	var tags []string
	var all bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			o := nexus.ListVMsOptions{Project: cf.project, State: state, HostID: host, Tags: map[string]string{}}
			for _, t := range tags {
				k, v, ok := strings.Cut(t, "=")
				if !ok || k == "" {
					return fmt.Errorf("--tag %q: use key=value", t)
				}
				o.Tags[k] = v
			}
			var vms []apitypes.VM
			for {
				l, err := c.ListVMs(cmd.Context(), o)
				if err != nil {
					return describe(err)
				}
				vms = append(vms, l.Items...)
				if !all || l.NextCursor == "" {
					break
				}
				o.Cursor = l.NextCursor
			}
			if cf.output == "json" {
				return printJSON(stdout, vms)
			}
			vmTable(stdout, vms)
			return nil
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only VMs in this state")
	cmd.Flags().StringVar(&host, "host", "", "only VMs on this host id")
	cmd.Flags().StringSliceVar(&tags, "tag", nil, "key=value (repeatable)")
	cmd.Flags().BoolVar(&all, "all", true, "follow pages to the end")
	return cmd
}

func vmGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME|ID",
		Short: "Show one VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := cf.vmRef(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			vm, err := c.GetVM(cmd.Context(), id)
			if err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, vm)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			for _, kv := range [][2]string{
				{"id", vm.ID}, {"name", vm.Name}, {"project", vm.Project}, {"state", vm.State},
				{"desired", vm.DesiredState}, {"host", vm.HostID + " " + vm.HostAddr},
				{"vcpu / mem", fmt.Sprintf("%d / %d MiB", vm.Vcpu, vm.MemMib)},
				{"tap / mac", vm.Tap + " " + vm.MAC}, {"ip", ipText(vm)}, {"guest", guestText(vm)},
				{"socket", vm.APISock}, {"log", vm.LogPath},
				{"console", vm.ConsolePath}, {"created", vm.CreatedAt.Format(time.RFC3339)}, {"error", vm.LastError},
			} {
				if strings.TrimSpace(kv[1]) != "" {
					fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
				}
			}
			return tw.Flush()
		},
	}
}

// ipText is a VM's address for people: 172.20.0.2/16 via 172.20.0.1.
func ipText(vm apitypes.VM) string {
	if vm.IP == "" {
		return ""
	}
	s := vm.IP
	if _, bits, ok := strings.Cut(vm.Subnet, "/"); ok {
		s += "/" + bits
	}
	if vm.Gateway != "" {
		s += " via " + vm.Gateway
	}
	return s
}

// guestText says whether the guest is up: started, and ready how long after.
func guestText(vm apitypes.VM) string {
	switch {
	case vm.GuestReadyAt != nil && vm.BootedAt != nil:
		return fmt.Sprintf("ready %s after its start", vm.GuestReadyAt.Sub(*vm.BootedAt).Round(time.Millisecond))
	case vm.GuestReadyAt != nil:
		return "ready"
	case vm.BootedAt != nil:
		return fmt.Sprintf("started %s ago, not ready", time.Since(*vm.BootedAt).Round(time.Second))
	}
	return ""
}

func vmActionCmd(cf *clientFlags, stdout io.Writer, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " NAME|ID…",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return forEach(cmd.Context(), c, cf.project, args, stdout, func(id string) error {
				return c.VMAction(cmd.Context(), id, verb)
			})
		},
	}
}

func vmRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm NAME|ID…",
		Aliases: []string{"delete"},
		Short:   "Delete VMs (process, TAP, socket and run dir go too)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return forEach(cmd.Context(), c, cf.project, args, stdout, func(id string) error {
				if force {
					return c.Do(cmd.Context(), "DELETE", "/v1/vms/"+url.PathEscape(id), url.Values{"force": {"true"}}, nil, nil)
				}
				return c.DeleteVM(cmd.Context(), id)
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even if the VM's host is unreachable")
	return cmd
}

// forEach runs op for each VM reference, printing each outcome; it fails
// if any failed.
func forEach(ctx context.Context, c *nexus.Client, project string, refs []string, stdout io.Writer, op func(id string) error) error {
	return eachRef(refs, stdout, "ok", func(ref string) error {
		id, err := resolve(ctx, c, project, ref)
		if err != nil {
			return err
		}
		return op(id)
	})
}

// eachRef runs op for each argument, printing "<ref>\t<done>" or the
// error, and fails if any failed: one bad name does not stop the rest.
func eachRef(refs []string, stdout io.Writer, done string, op func(ref string) error) error {
	failed := 0
	for _, ref := range refs {
		if err := op(ref); err != nil {
			failed++
			fmt.Fprintf(stdout, "%s\terror: %v\n", ref, describe(err))
			continue
		}
		fmt.Fprintf(stdout, "%s\t%s\n", ref, done)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d failed", failed, len(refs))
	}
	return nil
}

func vmLogsCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var tail int
	var source string
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME|ID",
		Short: "Print a VM's firecracker log (or --source console for the guest console)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := cf.vmRef(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			l, err := c.Logs(cmd.Context(), id, source, tail)
			if err != nil {
				return describe(err)
			}
			if cf.output == "json" && !follow {
				return printJSON(stdout, l)
			}
			for _, line := range l.Lines {
				fmt.Fprintln(stdout, line)
			}
			if !follow {
				return nil
			}
			return describeNil(c.FollowLogs(cmd.Context(), id, source, func(line string) { fmt.Fprintln(stdout, line) }))
		},
	}
	cmd.Flags().IntVarP(&tail, "tail", "n", 100, "lines to show")
	cmd.Flags().StringVar(&source, "source", "fc", "fc (firecracker's log) or console (guest serial console)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	return cmd
}

func describeNil(err error) error {
	if err == nil {
		return nil
	}
	return describe(err)
}

func vmEventsCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "events NAME|ID",
		Short: "Show a VM's history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := cf.vmRef(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			l, err := c.Events(cmd.Context(), id)
			if err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, l.Items)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			for _, ev := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", ev.At.Local().Format("15:04:05.000"), ev.Level, ev.Message)
			}
			return tw.Flush()
		},
	}
}

func newHostCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "host", Short: "Inspect the fleet's hosts"}
	cf.add(cmd, e)
	cmd.AddCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List hosts with capacity and allocation",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			l, err := c.Hosts(cmd.Context())
			if err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, l.Items)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tVMS\tVCPU (ALLOC/TOTAL)\tMEM MiB (ALLOC/TOTAL)\tVMM\tADDR\tLAST SEEN")
			sim := false
			for _, h := range l.Items {
				vmmName := h.VMM
				if h.Simulated {
					vmmName += " (simulated)"
					sim = true
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%d/%d\t%s\t%s\t%s ago\n", h.ID, h.Name, h.State, h.VMs,
					h.Allocated.Vcpu, h.Capacity.Vcpu, h.Allocated.MemMib, h.Capacity.MemMib, vmmName, h.Addr, age(h.LastSeenAt))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if sim {
				fmt.Fprintln(cmd.ErrOrStderr(), "note: simulated hosts report 64× their real vCPUs and memory (a firecracker-sim VM costs about 1 MiB)")
			}
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "rm HOST…",
		Short: "Forget hosts that hold no VMs",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return eachRef(args, stdout, "removed", func(h string) error {
				return c.Do(cmd.Context(), "DELETE", "/v1/hosts/"+url.PathEscape(h), nil, nil, nil)
			})
		},
	})
	for _, a := range []struct{ verb, short string }{
		{"drain", "Stop placing new VMs on hosts (their VMs keep running)"},
		{"undrain", "Place new VMs on hosts again"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   a.verb + " HOST…",
			Short: a.short,
			Args:  cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := cf.client()
				if err != nil {
					return err
				}
				return eachRef(args, stdout, a.verb+"ed", func(h string) error {
					return c.Do(cmd.Context(), "POST", "/v1/hosts/"+url.PathEscape(h)+"/"+a.verb, nil, nil, nil)
				})
			},
		})
	}
	return cmd
}
