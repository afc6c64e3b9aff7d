package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
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
from it records the template, its version and the overrides it was given;
deleting the template leaves its VMs as they are. Every update stores the
whole config as the template's next version; versions never change.`,
	}
	cf.add(cmd, e)
	cmd.AddCommand(templateCreateCmd(&cf, stdout), templateListCmd(&cf, stdout), templateGetCmd(&cf, stdout),
		templateRmCmd(&cf, stdout), templateInstantiateCmd(&cf, stdout), templateUpdateCmd(&cf, stdout),
		templateVersionsCmd(&cf, stdout), templateDiffCmd(&cf, stdout), templateRolloutCmd(&cf, stdout))
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
				if err := readConfigFile(file, &req.Config); err != nil {
					return err
				}
			}
			cfl.apply(cmd.Flags(), &req.Config)
			req.Project = cf.project
			p, err := cf.printer(stdout)
			if err != nil {
				return err
			}
			t, err := c.CreateTemplate(cmd.Context(), req)
			if err != nil {
				return describe(err)
			}
			return created(p, t, templateColumns, templateID, templateName)
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
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			l, err := c.ListTemplates(cmd.Context(), cf.project)
			if err != nil {
				return describe(err)
			}
			return list(p, l.Items, templateColumns, templateID, templateName)
		},
	}
}

func templateGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "get NAME|ID",
		Short:             "Show a template and its config",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeTemplates,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			t, err := c.GetTemplate(cmd.Context(), args[0], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, t, func(t apitypes.Template) [][2]string {
				cfg, _ := json.Marshal(t.Config)
				return [][2]string{
					{"id", t.ID}, {"name", t.Name}, {"project", t.Project}, {"owner", t.Owner},
					{"version", fmt.Sprint(t.Version)}, {"created", t.CreatedAt.Format(time.RFC3339)}, {"config", string(cfg)},
				}
			}, templateID, templateName)
		},
	}
}

func templateRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "rm NAME|ID…",
		Aliases:           []string{"delete"},
		Short:             "Delete templates (VMs made from them keep running)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: cf.completeTemplates,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, cf, stdout, args, "deleted", func(ref string) (string, error) {
				return ref, c.DeleteTemplate(cmd.Context(), ref, cf.project)
			})
		},
	}
}

func templateInstantiateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.InstantiateRequest
	var cfl configFlags
	var tags []string
	var noWait bool
	cmd := &cobra.Command{
		Use:               "instantiate NAME|ID",
		Aliases:           []string{"run"},
		ValidArgsFunction: cf.completeTemplates,
		Short:             "Create VMs from a template (flags given override its config)",
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
	addExpiryFlags(fs, &req.Expiry)
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

// instantiate creates VMs from a template and prints them. With several
// VMs and a terminal on stderr it shows how many run while it waits.
func instantiate(cmd *cobra.Command, c *nexus.Client, cf *clientFlags, ref string, req apitypes.InstantiateRequest, wait bool, stdout io.Writer) error {
	if req.Name == "" {
		return usageErrorf("--name is required")
	}
	p, err := cf.printer(stdout)
	if err != nil {
		return err
	}
	start := time.Now()
	stderr := cmd.ErrOrStderr()
	if wait && req.Count > 1 && isTerminal(stderr) {
		stop := showProgress(cmd.Context(), c, req, stderr)
		defer stop()
	}
	out, err := c.InstantiateTemplate(cmd.Context(), ref, cf.project, req, wait)
	if err != nil {
		return describe(err)
	}
	if err := list(p, out.Items, vmColumns, vmID, vmName); err != nil {
		return err
	}
	if len(out.Items) > 1 && !p.machine() {
		fmt.Fprintf(stderr, "%s from template %s in %s\n", plural(len(out.Items), "VM"), ref, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// showProgress prints "k/N running" on one terminal line every half
// second while an instantiation of N VMs (named NAME-1 … NAME-N) waits;
// stop ends it and clears the line.
func showProgress(ctx context.Context, c *nexus.Client, req apitypes.InstantiateRequest, w io.Writer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		running := map[string]bool{}
		for {
			select {
			case <-ctx.Done():
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
			}
			for i := 1; i <= req.Count; i++ {
				name := fmt.Sprintf("%s-%d", req.Name, i)
				if running[name] {
					continue
				}
				if vm, err := c.GetVM(ctx, name); err == nil && vm.State == "running" {
					running[name] = true
				}
			}
			fmt.Fprintf(w, "\r\033[K%d/%d running", len(running), req.Count)
		}
	}()
	return func() { cancel(); <-done }
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
		return usageErrorf("--template takes registered images only: use --kernel-image-id / --initrd-image / --rootfs-image-id to override")
	case req.HostID != "" || req.Start != nil:
		return usageErrorf("--host and --no-start do not apply to --template")
	}
	over := apitypes.TemplateConfig{
		Vcpu: req.Vcpu, MemMib: req.MemMib, KernelImageID: req.KernelImageID, InitrdImageID: req.InitrdImageID, RootfsImageID: req.RootfsImageID,
		BootArgs: req.BootArgs,
	}
	in := apitypes.InstantiateRequest{Name: req.Name, Tags: req.Tags, Count: count, Expiry: req.Expiry}
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
			return nil, usageErrorf("--tag %q: use key=value", t)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[k] = v
	}
	return m, nil
}

var templateColumns = []column[apitypes.Template]{
	{head: "ID", val: func(t apitypes.Template) string { return t.ID }},
	{head: "NAME", val: func(t apitypes.Template) string { return t.Name }},
	{head: "PROJECT", val: func(t apitypes.Template) string { return t.Project }},
	{head: "VCPU", val: func(t apitypes.Template) string { return configVcpu(t.Config) }},
	{head: "MEM", val: func(t apitypes.Template) string { return configMem(t.Config) }},
	{head: "KERNEL", val: func(t apitypes.Template) string { return t.Config.KernelImageID }},
	{head: "INITRD", val: func(t apitypes.Template) string { return t.Config.InitrdImageID }},
	{head: "ROOTFS", val: func(t apitypes.Template) string { return t.Config.RootfsImageID }},
	{head: "VERSION", val: func(t apitypes.Template) string { return fmt.Sprint(t.Version) }},
	{head: "OWNER", wide: true, val: func(t apitypes.Template) string { return t.Owner }},
	{head: "AGE", val: func(t apitypes.Template) string { return age(t.CreatedAt) }},
}

func templateID(t apitypes.Template) string   { return t.ID }
func templateName(t apitypes.Template) string { return t.Name }

// readConfigFile decodes a JSON config object, refusing unknown fields.
func readConfigFile(file string, c *apitypes.TemplateConfig) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("--config-file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	*c = apitypes.TemplateConfig{}
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("--config-file %s: %w", file, err)
	}
	return nil
}

func templateUpdateCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var cfl configFlags
	var file string
	cmd := &cobra.Command{
		Use:   "update NAME|ID",
		Short: "Change a template: its new config becomes the next version",
		Long: `update starts from the template's current config (or the whole config
of --config-file), applies the flags given and stores the result as the
template's next version. VMs and pools keep the version they were made of.`,
		Example: `  nexus template update web --kernel-image vmlinux-6.6
  nexus template update db --config-file db.json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeTemplates,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			var req apitypes.UpdateTemplateRequest
			if file != "" {
				if err := readConfigFile(file, &req.Config); err != nil {
					return err
				}
			} else {
				t, err := c.GetTemplate(cmd.Context(), args[0], cf.project)
				if err != nil {
					return describe(err)
				}
				req.Config = t.Config
			}
			cfl.apply(cmd.Flags(), &req.Config)
			t, err := c.UpdateTemplate(cmd.Context(), args[0], cf.project, req)
			if err != nil {
				return describe(err)
			}
			return created(p, t, templateColumns, templateID, templateName)
		},
	}
	fs := cmd.Flags()
	cfl.add(fs, "kernel-image", "rootfs-image")
	fs.StringVarP(&file, "config-file", "f", "", "JSON file with the whole new config object (flags given override its fields)")
	return cmd
}

func templateVersionsCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var before, limit int
	cmd := &cobra.Command{
		Use:               "versions NAME|ID",
		Short:             "List a template's versions, newest first",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeTemplates,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			l, err := c.ListTemplateVersions(cmd.Context(), args[0], cf.project, before, limit)
			if err != nil {
				return describe(err)
			}
			return list(p, l.Items, templateVersionColumns, versionNumber, versionNumber)
		},
	}
	cmd.Flags().IntVar(&before, "before", 0, "only versions below this one")
	cmd.Flags().IntVar(&limit, "limit", 100, "the most versions to list (at most 1000)")
	return cmd
}

func templateDiffCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "diff NAME|ID FROM TO",
		Short:             "Show the config fields that differ between two versions",
		Example:           `  nexus template diff web 1 2`,
		Args:              cobra.ExactArgs(3),
		ValidArgsFunction: cf.completeTemplates,
		RunE: func(cmd *cobra.Command, args []string) error {
			from, err1 := strconv.Atoi(args[1])
			to, err2 := strconv.Atoi(args[2])
			if err1 != nil || err2 != nil || from < 1 || to < 1 {
				return usageErrorf("FROM and TO are version numbers (1 or more), got %q and %q", args[1], args[2])
			}
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			d, err := c.DiffTemplate(cmd.Context(), args[0], cf.project, from, to)
			if err != nil {
				return describe(err)
			}
			if p.machine() {
				return one(p, d, nil, func(apitypes.TemplateDiff) string { return d.TemplateID }, func(apitypes.TemplateDiff) string { return d.TemplateID })
			}
			return list(p, d.Changes, templateChangeColumns, changeField, changeField)
		},
	}
}

var templateVersionColumns = []column[apitypes.TemplateVersion]{
	{head: "VERSION", val: versionNumber},
	{head: "VCPU", val: func(v apitypes.TemplateVersion) string { return configVcpu(v.Config) }},
	{head: "MEM", val: func(v apitypes.TemplateVersion) string { return configMem(v.Config) }},
	{head: "KERNEL", val: func(v apitypes.TemplateVersion) string { return v.Config.KernelImageID }},
	{head: "ROOTFS", val: func(v apitypes.TemplateVersion) string { return v.Config.RootfsImageID }},
	{head: "OWNER", val: func(v apitypes.TemplateVersion) string { return v.Owner }},
	{head: "AGE", val: func(v apitypes.TemplateVersion) string { return age(v.CreatedAt) }},
}

func versionNumber(v apitypes.TemplateVersion) string { return fmt.Sprint(v.Version) }

var templateChangeColumns = []column[apitypes.TemplateChange]{
	{head: "FIELD", val: changeField},
	{head: "FROM", val: func(c apitypes.TemplateChange) string { return orDash(string(c.From)) }},
	{head: "TO", val: func(c apitypes.TemplateChange) string { return orDash(string(c.To)) }},
}

func changeField(c apitypes.TemplateChange) string { return c.Field }

// configVcpu and configMem show a config's vCPUs and memory, defaults
// included.
func configVcpu(c apitypes.TemplateConfig) string {
	if c.Vcpu != nil {
		return fmt.Sprint(*c.Vcpu)
	}
	return "1"
}

func configMem(c apitypes.TemplateConfig) string {
	if c.MemMib != nil {
		return fmt.Sprintf("%dM", *c.MemMib)
	}
	return "128M"
}
