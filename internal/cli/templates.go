package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// newTemplateCmd returns `nexus template`: saved VM configurations.
func newTemplateCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Save VM configurations under a name and create VMs from them",
		Long: `A template is a VM configuration (vCPUs, memory, registered kernel and
rootfs images, boot args, extra drives, NIC) saved under a name. A VM made
from it records the template and the overrides it was given; deleting the
template leaves its VMs as they are.`,
	}
	cf.add(cmd, e)
	cmd.AddCommand(templateCreateCmd(&cf, stdout), templateListCmd(&cf, stdout), templateGetCmd(&cf, stdout),
		templateRmCmd(&cf, stdout), templateInstantiateCmd(&cf, stdout))
	return cmd
}

// configFlags are the template config fields as flags; only the flags
// given are used (as a template's fields, or as overrides).
type configFlags struct {
	vcpu, mem                        int
	kernel, initrd, rootfs, bootArgs string
	kernelFlag, rootfsFlag           string
}

func (f *configFlags) add(fs *pflag.FlagSet, kernelFlag, rootfsFlag string) {
	f.kernelFlag, f.rootfsFlag = kernelFlag, rootfsFlag
	fs.IntVar(&f.vcpu, "vcpu", 1, "vCPUs")
	fs.IntVar(&f.mem, "mem", 128, "memory in MiB")
	fs.StringVar(&f.kernel, kernelFlag, "", "kernel image (name or id)")
	fs.StringVar(&f.initrd, "initrd-image", "", "initrd image (name or id)")
	fs.StringVar(&f.rootfs, rootfsFlag, "", "rootfs image (name or id)")
	fs.StringVar(&f.bootArgs, "boot-args", "", "kernel arguments (Nexus adds its defaults, root= and ip= unless given)")
}

// apply sets the fields whose flags were given on c.
func (f *configFlags) apply(fs *pflag.FlagSet, c *apitypes.TemplateConfig) {
	if fs.Changed("vcpu") {
		c.Vcpu = &f.vcpu
	}
	if fs.Changed("mem") {
		c.MemMib = &f.mem
	}
	if fs.Changed(f.kernelFlag) {
		c.KernelImageID = f.kernel
	}
	if fs.Changed("initrd-image") {
		c.InitrdImageID = f.initrd
	}
	if fs.Changed(f.rootfsFlag) {
		c.RootfsImageID = f.rootfs
	}
	if fs.Changed("boot-args") {
		c.BootArgs = f.bootArgs
	}
}

func templateCreateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.CreateTemplateRequest
	var cfl configFlags
	var file string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Save a template",
		Example: `  nexus template create --name web --kernel-image vmlinux-6.1 --rootfs-image busybox --vcpu 2 --mem 256
  nexus template create --name busybox --kernel-image vmlinux-6.1 --initrd-image initrd-6.1 --rootfs-image busybox
  nexus template create --name db --config-file db.json   # {"vcpu":4,"kernel_image_id":…,"extra_drives":[…]}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			if file != "" {
				raw, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&req.Config); err != nil {
					return fmt.Errorf("--config-file %s: %w", file, err)
				}
			}
			cfl.apply(cmd.Flags(), &req.Config)
			req.Project = cf.project
			var t apitypes.Template
			if err := c.Do(cmd.Context(), "POST", "/v1/templates", nil, req, &t); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, t)
			}
			templateTable(stdout, []apitypes.Template{t})
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&req.Name, "name", "", "template name (unique in the project)")
	cfl.add(fs, "kernel-image", "rootfs-image")
	fs.StringVarP(&file, "config-file", "f", "", "JSON file with the config object (flags given override its fields)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func templateListCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List templates",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var l apitypes.TemplateList
			if err := c.Do(cmd.Context(), "GET", "/v1/templates", projectQuery(cf), nil, &l); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, l.Items)
			}
			templateTable(stdout, l.Items)
			return nil
		},
	}
}

func templateGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME|ID",
		Short: "Show a template and its config",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var it apitypes.TemplateItem
			if err := c.Do(cmd.Context(), "GET", "/v1/templates/"+url.PathEscape(args[0]), projectQuery(cf), nil, &it); err != nil {
				return describe(err)
			}
			return printJSON(stdout, it.Item)
		},
	}
}

func templateRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME|ID…",
		Aliases: []string{"delete"},
		Short:   "Delete templates (VMs made from them keep running)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			for _, ref := range args {
				if err := c.Do(cmd.Context(), "DELETE", "/v1/templates/"+url.PathEscape(ref), projectQuery(cf), nil, nil); err != nil {
					return describe(err)
				}
				fmt.Fprintf(stdout, "%s\tdeleted\n", ref)
			}
			return nil
		},
	}
}

func templateInstantiateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.InstantiateRequest
	var cfl configFlags
	var tags []string
	var noWait bool
	cmd := &cobra.Command{
		Use:     "instantiate NAME|ID",
		Aliases: []string{"run"},
		Short:   "Create VMs from a template (flags given override its config)",
		Example: `  nexus template instantiate web --name web-a
  nexus template instantiate web --name worker --count 20 --mem 256 --tag team=ci`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var over apitypes.TemplateConfig
			cfl.apply(cmd.Flags(), &over)
			if !emptyConfig(over) {
				req.Overrides = &over
			}
			if req.Tags, err = parseTags(tags); err != nil {
				return err
			}
			return instantiate(cmd, c, cf, args[0], req, !noWait, stdout)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&req.Name, "name", "", "VM name (with --count: NAME-1 … NAME-N)")
	fs.IntVar(&req.Count, "count", 0, "how many VMs (1-100; all or none)")
	cfl.add(fs, "kernel-image", "rootfs-image")
	fs.StringSliceVar(&tags, "tag", nil, "key=value tag (repeatable)")
	fs.BoolVar(&noWait, "no-wait", false, "return once the VMs are stored instead of waiting until they run")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

// instantiate creates VMs from a template and prints one line per VM.
func instantiate(cmd *cobra.Command, c *nexus.Client, cf *clientFlags, ref string, req apitypes.InstantiateRequest, wait bool, stdout io.Writer) error {
	if req.Name == "" {
		return fmt.Errorf("--name is required")
	}
	q := url.Values{"wait": {fmt.Sprint(wait)}}
	if cf.project != "" {
		q.Set("project", cf.project)
	}
	start := time.Now()
	var out apitypes.InstantiateResponse
	if err := c.Do(cmd.Context(), "POST", "/v1/templates/"+url.PathEscape(ref)+"/instantiate", q, req, &out); err != nil {
		return describe(err)
	}
	if cf.output == "json" {
		return printJSON(stdout, out)
	}
	for _, vm := range out.Items {
		fmt.Fprintf(stdout, "%s\t%s\t%s\n", vm.ID, vm.Name, vm.State)
	}
	if len(out.Items) > 1 {
		fmt.Fprintf(cmd.ErrOrStderr(), "%d VMs from template %s in %s\n", len(out.Items), ref, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

func emptyConfig(c apitypes.TemplateConfig) bool {
	b, _ := json.Marshal(c)
	return string(b) == "{}"
}

// createFromTemplate is `nexus vm create --template T [--count N]`: the
// VM flags given become overrides of the template's config.
func createFromTemplate(cmd *cobra.Command, c *nexus.Client, cf *clientFlags, ref string, count int, req apitypes.CreateVMRequest, wait bool, stdout io.Writer) error {
	switch {
	case req.KernelPath != "" || req.InitrdPath != "" || req.RootfsPath != "":
		return fmt.Errorf("--template takes registered images only: use --kernel-image-id / --initrd-image / --rootfs-image-id to override")
	case req.HostID != "" || req.Start != nil:
		return fmt.Errorf("--host and --no-start do not apply to --template")
	}
	over := apitypes.TemplateConfig{
		Vcpu: req.Vcpu, MemMib: req.MemMib, KernelImageID: req.KernelImageID, InitrdImageID: req.InitrdImageID, RootfsImageID: req.RootfsImageID,
		BootArgs: req.BootArgs,
	}
	in := apitypes.InstantiateRequest{Name: req.Name, Tags: req.Tags, Count: count}
	if !emptyConfig(over) {
		in.Overrides = &over
	}
	return instantiate(cmd, c, cf, ref, in, wait, stdout)
}

func parseTags(tags []string) (map[string]string, error) {
	var m map[string]string
	for _, t := range tags {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--tag %q: use key=value", t)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[k] = v
	}
	return m, nil
}

func templateTable(w io.Writer, ts []apitypes.Template) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tPROJECT\tVCPU\tMEM\tKERNEL\tINITRD\tROOTFS\tAGE")
	for _, t := range ts {
		vcpu, mem := "1", "128M"
		if t.Config.Vcpu != nil {
			vcpu = fmt.Sprint(*t.Config.Vcpu)
		}
		if t.Config.MemMib != nil {
			mem = fmt.Sprintf("%dM", *t.Config.MemMib)
		}
		rootfs, initrd := t.Config.RootfsImageID, t.Config.InitrdImageID
		if rootfs == "" {
			rootfs = "-"
		}
		if initrd == "" {
			initrd = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Project, vcpu, mem, t.Config.KernelImageID, initrd, rootfs, age(t.CreatedAt))
	}
	tw.Flush()
}
