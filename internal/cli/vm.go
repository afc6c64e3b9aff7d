package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

func newVMCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, list, start, stop and delete microVMs",
		Long: `Create, list, start, stop and delete microVMs. A VM is named by its name (in
your project) or its id everywhere.`,
	}
	cf.add(cmd, e)
	cmd.AddCommand(vmCreateCmd(&cf, stdout), vmListCmd(&cf, stdout), vmGetCmd(&cf, stdout), vmLogsCmd(&cf, stdout), vmEventsCmd(&cf, stdout))
	for _, a := range []struct{ verb, short string }{
		{"start", "Start stopped VMs"}, {"stop", "Stop VMs (stopping → stopped)"},
		{"pause", "Pause running VMs"}, {"resume", "Resume paused VMs"},
	} {
		cmd.AddCommand(vmActionCmd(&cf, stdout, a.verb, a.short))
	}
	cmd.AddCommand(vmRmCmd(&cf, stdout), vmTTLCmd(&cf, stdout))
	return cmd
}

// addExpiryFlags adds --ttl and --on-expiry (create, instantiate, restore, claim).
func addExpiryFlags(fs *pflag.FlagSet, e *apitypes.Expiry) {
	fs.StringVar(&e.TTL, "ttl", "", `time to live ("90s", "2h"; 1s-8760h): then the VM is stopped or deleted`)
	fs.StringVar(&e.OnExpiry, "on-expiry", "", "with --ttl: stop or delete (default delete)")
}

func vmTTLCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var onExpiry string
	cmd := &cobra.Command{
		Use:               "ttl NAME|ID DURATION",
		Short:             "Make a VM expire DURATION from now (extend or shorten its time to live)",
		Example:           "  nexus vm ttl scratch 4h\n  nexus vm ttl scratch 30m --on-expiry stop",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			id, err := resolve(cmd.Context(), c, cf.project, args[0])
			if err != nil {
				return describe(err)
			}
			vm, err := c.ExtendTTL(cmd.Context(), id, args[1], onExpiry)
			if err != nil {
				return describe(err)
			}
			return one(p, vm, vmDetail, vmID, vmName)
		},
	}
	cmd.Flags().StringVar(&onExpiry, "on-expiry", "", "also change what happens then: stop or delete")
	return cmd
}

func vmCreateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.CreateVMRequest
	var vcpu, mem int
	var tags []string
	var noStart, noWait bool
	var template string
	var count int
	var netMode string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a VM and boot it",
		Example: `  nexus vm create --name web --kernel-path /srv/fc/images/vmlinux --rootfs-path /srv/fc/images/rootfs.ext4
  nexus vm create --name guest --kernel-image-id 3f2a… --initrd-image 77c0… --rootfs-image-id 9c1b…
  nexus vm create --name job-1 --kernel-image-id 3f2a… --rootfs-image-id 9c1b… --vcpu 2 --mem 512 --tag team=ci
  nexus vm create --name worker --template web --count 20
  nexus vm create --name scratch --template web --ttl 2h --on-expiry stop`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if req.Name == "" {
				return usageErrorf("--name is required")
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
					return usageErrorf("--tag %q: use key=value", t)
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
			if netMode != "" {
				req.Network = &apitypes.NetworkSpec{Mode: netMode}
			}
			if template != "" {
				return createFromTemplate(cmd, c, cf, template, count, req, !noWait, stdout)
			} else if count != 0 {
				return usageErrorf("--count needs --template")
			}
			p, err := cf.printer(stdout)
			if err != nil {
				return err
			}
			vm, err := c.CreateVM(cmd.Context(), req, !noWait)
			if err != nil {
				return describe(err)
			}
			return created(p, vm, vmColumns, vmID, vmName)
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
	addExpiryFlags(fs, &req.Expiry)
	fs.StringVar(&netMode, "network", "", "network mode: bridge (default) or isolated (own namespace, fixed guest address 192.168.127.2)")
	return cmd
}

// vmColumns are the VM table's columns (-o wide adds the host's).
var vmColumns = []column[apitypes.VM]{
	{head: "ID", val: func(v apitypes.VM) string { return v.ID }},
	{head: "NAME", val: func(v apitypes.VM) string { return v.Name }},
	{head: "STATE", val: func(v apitypes.VM) string { return v.State }},
	{head: "IP", val: func(v apitypes.VM) string { return v.IP }},
	{head: "VCPU", val: func(v apitypes.VM) string { return fmt.Sprint(v.Vcpu) }},
	{head: "MEM", val: func(v apitypes.VM) string { return fmt.Sprintf("%dM", v.MemMib) }},
	{head: "PROJECT", val: func(v apitypes.VM) string { return v.Project }},
	{head: "HOST", wide: true, val: func(v apitypes.VM) string { return v.HostID }},
	{head: "TAP", wide: true, val: func(v apitypes.VM) string { return v.Tap }},
	{head: "MAC", wide: true, val: func(v apitypes.VM) string { return v.MAC }},
	{head: "TEMPLATE", wide: true, val: func(v apitypes.VM) string { return v.TemplateID }},
	{head: "AGE", val: func(v apitypes.VM) string { return age(v.CreatedAt) }},
	{head: "ERROR", wide: true, val: func(v apitypes.VM) string { return firstLine(v.LastError) }},
}

func vmID(v apitypes.VM) string   { return v.ID }
func vmName(v apitypes.VM) string { return v.Name }

func vmDetail(vm apitypes.VM) [][2]string {
	return [][2]string{
		{"id", vm.ID}, {"name", vm.Name}, {"project", vm.Project}, {"state", vm.State},
		{"desired", vm.DesiredState}, {"host", vm.HostID + " " + vm.HostAddr},
		{"vcpu / mem", fmt.Sprintf("%d / %d MiB", vm.Vcpu, vm.MemMib)},
		{"tap / mac", vm.Tap + " " + vm.MAC}, {"ip", ipText(vm)}, {"network", netText(vm)}, {"guest", guestText(vm)},
		{"socket", vm.APISock}, {"log", vm.LogPath},
		{"console", vm.ConsolePath}, {"template", vm.TemplateID}, {"tags", tagsText(vm.Tags)},
		{"created", vm.CreatedAt.Format(time.RFC3339)}, {"expires", expiryText(vm)}, {"error", vm.LastError},
	}
}

// netText is the VM's network mode and how it is reached.
func netText(vm apitypes.VM) string {
	n := vm.Network
	if n == nil || n.Mode != "isolated" {
		return ""
	}
	return fmt.Sprintf("isolated: reached at %s, guest %s, veth %s", n.Address, n.GuestAddr, n.Veth)
}

// expiryText says when and how a VM expires: "2026-12-04T13:00:00Z (delete, in 1h59m)".
func expiryText(vm apitypes.VM) string {
	if vm.ExpiresAt == nil {
		return ""
	}
	return fmt.Sprintf("%s (%s, in %s)", vm.ExpiresAt.UTC().Format(time.RFC3339), vm.OnExpiry, time.Until(*vm.ExpiresAt).Round(time.Second))
}

func tagsText(tags map[string]string) string {
	var kv []string
	for k, v := range tags {
		kv = append(kv, k+"="+v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 60 {
		s = s[:59] + "…"
	}
	return s
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
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs (-w: then print each change as it happens)",
		Example: `  nexus vm ls
  nexus vm ls --state running -o wide
  nexus vm ls --tag team=ci -q | xargs nexus vm stop
  nexus vm ls -w                 # watch: one line per change, until Ctrl-C
  nexus vm ls --format '{{.name}} {{.ip}}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			o := nexus.ListVMsOptions{Project: cf.project, State: state, HostID: host, Limit: 1000}
			if o.Tags, err = parseTags(tags); err != nil {
				return err
			}
			vms, err := allVMs(cmd.Context(), c, o)
			if err != nil {
				return err
			}
			if !watch {
				return list(p, vms, vmColumns, vmID, vmName)
			}
			if interval < 100*time.Millisecond {
				return usageErrorf("--interval %s: at least 100ms", interval)
			}
			return watchVMs(cmd.Context(), c, o, p, vms, interval)
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only VMs in this state")
	cmd.Flags().StringVar(&host, "host", "", "only VMs on this host id")
	cmd.Flags().StringSliceVar(&tags, "tag", nil, "key=value (repeatable)")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "after the list, print each VM that changes (and DELETED ones) until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "with --watch: how often to look")
	return cmd
}

func allVMs(ctx context.Context, c *nexus.Client, o nexus.ListVMsOptions) ([]apitypes.VM, error) {
	var vms []apitypes.VM
	for vm, err := range c.VMs(ctx, o) {
		if err != nil {
			return nil, describe(err)
		}
		vms = append(vms, vm)
	}
	return vms, nil
}

// vmChange is one line of `vm ls -w -o json`: what happened to a VM.
type vmChange struct {
	Type string      `json:"type" enum:"ADDED,MODIFIED,DELETED"`
	Item apitypes.VM `json:"item"`
}

// watchVMs prints the list, then every VM that was added, changed or
// deleted since the last look, until ctx ends. Tables print the changed
// rows (with a header once); json and yaml print one change per line.
func watchVMs(ctx context.Context, c *nexus.Client, o nexus.ListVMsOptions, p *printer, vms []apitypes.VM, every time.Duration) error {
	seen := map[string]apitypes.VM{}
	var first []vmChange
	for _, vm := range vms {
		seen[vm.ID] = vm
		first = append(first, vmChange{"ADDED", vm})
	}
	emit := func(ch []vmChange, header bool) error {
		switch {
		case p.format == "json" && !p.quiet && p.tmpl == nil:
			for _, x := range ch {
				if err := writeJSONLine(p.out, x); err != nil {
					return err
				}
			}
			return nil
		case p.format == "yaml" && !p.quiet && p.tmpl == nil:
			for _, x := range ch {
				fmt.Fprintln(p.out, "---")
				if err := writeYAML(p.out, x); err != nil {
					return err
				}
			}
			return nil
		}
		var items []apitypes.VM
		for _, x := range ch {
			vm := x.Item
			if x.Type == "DELETED" {
				vm.State = "deleted"
			}
			items = append(items, vm)
		}
		if len(items) == 0 && !header {
			return nil
		}
		return list(p, items, vmColumns, vmID, vmName)
	}
	if err := emit(first, true); err != nil {
		return err
	}
	if p.format == "table" || p.format == "wide" {
		// Later rows come without a header: one table that grows.
		p = &printer{format: p.format, out: p.out, noHeader: true}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now, err := allVMs(ctx, c, o)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		var ch []vmChange
		live := map[string]bool{}
		for _, vm := range now {
			live[vm.ID] = true
			old, ok := seen[vm.ID]
			switch {
			case !ok:
				ch = append(ch, vmChange{"ADDED", vm})
			case !old.UpdatedAt.Equal(vm.UpdatedAt) || old.State != vm.State:
				ch = append(ch, vmChange{"MODIFIED", vm})
			}
			seen[vm.ID] = vm
		}
		for id, vm := range seen {
			if !live[id] {
				ch = append(ch, vmChange{"DELETED", vm})
				delete(seen, id)
			}
		}
		if err := emit(ch, false); err != nil {
			return err
		}
	}
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := toJSON(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, b)
	return err
}

func vmGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "get NAME|ID",
		Short:             "Show one VM",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			vm, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return describe(err)
			}
			return one(p, vm, vmDetail, vmID, vmName)
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
	done := map[string]string{"start": "started", "stop": "stopped", "pause": "paused", "resume": "resumed"}[verb]
	return &cobra.Command{
		Use:               verb + " NAME|ID…",
		Short:             short,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, cf, stdout, args, done, func(ref string) (string, error) {
				id, err := resolve(cmd.Context(), c, cf.project, ref)
				if err != nil {
					return "", err
				}
				return id, c.VMAction(cmd.Context(), id, verb)
			})
		},
	}
}

func vmRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "rm NAME|ID…",
		Aliases:           []string{"delete"},
		Short:             "Delete VMs (process, TAP, socket and run dir go too)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, cf, stdout, args, "deleted", func(ref string) (string, error) {
				id, err := resolve(cmd.Context(), c, cf.project, ref)
				if err != nil {
					return "", err
				}
				if force {
					return id, c.ForceDeleteVM(cmd.Context(), id)
				}
				return id, c.DeleteVM(cmd.Context(), id)
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even if the VM's host is unreachable")
	return cmd
}

func vmLogsCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var tail int
	var source string
	var follow bool
	cmd := &cobra.Command{
		Use:               "logs NAME|ID",
		Short:             "Print a VM's firecracker log (or --source console for the guest console)",
		Example:           "  nexus vm logs web\n  nexus vm logs web --source console -f",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if source != "fc" && source != "console" {
				return usageErrorf("--source %q: use fc or console", source)
			}
			c, id, err := cf.vmRef(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			p, err := cf.printer(stdout)
			if err != nil {
				return err
			}
			if follow {
				// The stream starts with the last lines and resumes after
				// the last line printed if the connection breaks.
				s, err := c.StreamLogs(cmd.Context(), id, nexus.StreamOptions{Source: source, Tail: tail})
				if err != nil {
					return describe(err)
				}
				defer s.Close()
				for s.Next() {
					fmt.Fprintln(stdout, s.Line().Text)
				}
				return describe(s.Err())
			}
			l, err := c.Logs(cmd.Context(), id, source, tail)
			if err != nil {
				return describe(err)
			}
			if p.format == "json" || p.format == "yaml" {
				return one(p, l, nil, nil, nil)
			}
			for _, line := range l.Lines {
				fmt.Fprintln(stdout, line)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&tail, "tail", "n", 100, "lines to show (with -f: the last lines first)")
	cmd.Flags().StringVar(&source, "source", "fc", "fc (firecracker's log) or console (guest serial console)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	return cmd
}

var eventColumns = []column[apitypes.Event]{
	{head: "ID", wide: true, val: func(e apitypes.Event) string { return fmt.Sprint(e.ID) }},
	{head: "TIME", val: func(e apitypes.Event) string { return e.At.Local().Format("15:04:05.000") }},
	{head: "LEVEL", val: func(e apitypes.Event) string { return e.Level }},
	{head: "MESSAGE", val: func(e apitypes.Event) string { return e.Message }},
}

func vmEventsCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var follow bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:               "events NAME|ID",
		Short:             "Show a VM's history (-f: then follow it)",
		Example:           "  nexus vm events web\n  nexus vm events web -f -o json   # one JSON event per line",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := cf.vmRef(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			p, err := cf.printer(stdout)
			if err != nil {
				return err
			}
			l, err := c.Events(cmd.Context(), id)
			if err != nil {
				return describe(err)
			}
			if !follow {
				return list(p, l.Items, eventColumns, eventID, eventID)
			}
			if interval < 100*time.Millisecond {
				return usageErrorf("--interval %s: at least 100ms", interval)
			}
			return followEvents(cmd, c, id, p, l.Items, interval)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until interrupted or the VM is deleted")
	cmd.Flags().DurationVar(&interval, "interval", 500*time.Millisecond, "with --follow: how often to look")
	return cmd
}

func eventID(e apitypes.Event) string { return fmt.Sprint(e.ID) }

// followEvents prints events as they are recorded: tables grow by rows,
// json prints one event per line.
func followEvents(cmd *cobra.Command, c *nexus.Client, id string, p *printer, seen []apitypes.Event, every time.Duration) error {
	ctx := cmd.Context()
	print := func(evs []apitypes.Event) error {
		if p.format == "json" && !p.quiet && p.tmpl == nil {
			for _, e := range evs {
				if err := writeJSONLine(p.out, e); err != nil {
					return err
				}
			}
			return nil
		}
		return list(p, evs, eventColumns, eventID, eventID)
	}
	if err := print(seen); err != nil {
		return err
	}
	if p.format == "table" || p.format == "wide" {
		p = &printer{format: p.format, out: p.out, noHeader: true}
	}
	var last int64
	if len(seen) > 0 {
		last = seen[len(seen)-1].ID
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		l, err := c.EventsAfter(ctx, id, last, 1000)
		switch {
		case ctx.Err() != nil:
			return nil
		case nexus.IsNotFound(err):
			fmt.Fprintln(cmd.ErrOrStderr(), "the VM was deleted")
			return nil
		case err != nil:
			return describe(err)
		}
		if len(l.Items) == 0 {
			continue
		}
		last = l.Items[len(l.Items)-1].ID
		if err := print(l.Items); err != nil {
			return err
		}
	}
}
