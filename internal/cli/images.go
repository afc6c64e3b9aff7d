package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// newImageCmd returns `nexus image`: the image registry.
func newImageCmd(e env, stdout io.Writer) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Register, list and remove kernel and rootfs images",
		Long: `Images are kernel and rootfs files under FC_IMAGES_DIR on the hosts,
registered once with their size and SHA-256 and immutable from then on:
a VM refuses to boot from a file that changed. A VM never writes a rootfs
image: it boots from a private copy in its run dir (unless the image is
read-only, then it is attached read-only). Shared images (--project "*")
are usable by every project and registered by admins.`,
	}
	cf.add(cmd, e)
	cmd.AddCommand(imageAddCmd(&cf, stdout), imageListCmd(&cf, stdout), imageGetCmd(&cf, stdout), imageRmCmd(&cf, stdout))
	return cmd
}

func imageAddCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var req apitypes.CreateImageRequest
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Register a file under FC_IMAGES_DIR as an image",
		Example: `  nexus image add --kind kernel --name vmlinux-6.1 --path vmlinux-6.1
  nexus image add --kind initrd --name initrd-6.1 --path initrd-6.1.cpio.gz
  nexus image add --kind rootfs --name busybox --path /srv/fc/images/busybox.ext4 --sha256 9f86d0…
  nexus image add --kind rootfs --name base --path base.ext4 --project '*'   # shared (admin)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			req.Project = cf.project
			start := time.Now()
			if isTerminal(cmd.ErrOrStderr()) {
				fmt.Fprintf(cmd.ErrOrStderr(), "checksumming %s on every ready host…\n", req.HostPath)
			}
			img, err := c.CreateImage(cmd.Context(), req)
			if err != nil {
				return describe(err)
			}
			if !p.machine() {
				fmt.Fprintf(cmd.ErrOrStderr(), "registered in %s\n", time.Since(start).Round(time.Millisecond))
			}
			return created(p, img, imageColumns, imageID, imageName)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&req.Kind, "kind", "", "kernel, initrd or rootfs")
	fs.StringVar(&req.Name, "name", "", "image name (unique in the project)")
	fs.StringVar(&req.HostPath, "path", "", "the file on the hosts: absolute, or relative to FC_IMAGES_DIR")
	fs.StringVar(&req.SHA256, "sha256", "", "expected SHA-256 (registration fails if the file differs)")
	fs.BoolVar(&req.ReadOnly, "read-only", false, "rootfs: attach the image itself read-only instead of a private copy")
	for _, f := range []string{"kind", "name", "path"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func imageListCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	var kind string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the images you can use",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			l, err := c.ListImages(cmd.Context(), cf.project, kind)
			if err != nil {
				return describe(err)
			}
			return list(p, l.Items, imageColumns, imageID, imageName)
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "only kernel, initrd or rootfs images")
	return cmd
}

func imageGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "get NAME|ID",
		Short:             "Show one image",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cf.completeImages,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, p, err := cf.setup(stdout)
			if err != nil {
				return err
			}
			img, err := c.GetImage(cmd.Context(), args[0], cf.project)
			if err != nil {
				return describe(err)
			}
			return one(p, img, func(img apitypes.Image) [][2]string {
				return [][2]string{
					{"id", img.ID}, {"name", img.Name}, {"kind", img.Kind}, {"project", img.Project},
					{"path", img.HostPath}, {"size", fmt.Sprintf("%s (%d bytes)", humanBytes(img.Size), img.Size)},
					{"sha256", img.SHA256}, {"read-only", fmt.Sprint(img.ReadOnly)}, {"created", img.CreatedAt.Format(time.RFC3339)},
				}
			}, imageID, imageName)
		},
	}
}

func imageRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:               "rm NAME|ID…",
		Aliases:           []string{"delete"},
		Short:             "Remove images from the registry (the files stay on the hosts)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: cf.completeImages,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return runEach(cmd, cf, stdout, args, "removed", func(ref string) (string, error) {
				return ref, c.DeleteImage(cmd.Context(), ref, cf.project)
			})
		},
	}
}

var imageColumns = []column[apitypes.Image]{
	{head: "ID", val: func(i apitypes.Image) string { return i.ID }},
	{head: "NAME", val: func(i apitypes.Image) string { return i.Name }},
	{head: "KIND", val: func(i apitypes.Image) string { return i.Kind }},
	{head: "PROJECT", val: func(i apitypes.Image) string { return i.Project }},
	{head: "SIZE", val: func(i apitypes.Image) string { return humanBytes(i.Size) }},
	{head: "SHA256", val: func(i apitypes.Image) string {
		if len(i.SHA256) > 12 {
			return i.SHA256[:12] + "…"
		}
		return i.SHA256
	}},
	{head: "RO", val: func(i apitypes.Image) string {
		if i.ReadOnly {
			return "ro"
		}
		return ""
	}},
	{head: "PATH", val: func(i apitypes.Image) string { return i.HostPath }},
	{head: "AGE", wide: true, val: func(i apitypes.Image) string { return age(i.CreatedAt) }},
}

func imageID(i apitypes.Image) string   { return i.ID }
func imageName(i apitypes.Image) string { return i.Name }

// humanBytes renders a size: 1.0G, 16.0M, 512B.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%c", float64(n)/float64(div), "KMGTP"[exp])
}
