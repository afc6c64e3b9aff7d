package cli

import (
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"
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
			c, err := cf.client()
			if err != nil {
				return err
			}
			req.Project = cf.project
			start := time.Now()
			var img apitypes.Image
			if err := c.Do(cmd.Context(), "POST", "/v1/images", nil, req, &img); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, img)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "registered in %s\n", time.Since(start).Round(time.Millisecond))
			imageTable(stdout, []apitypes.Image{img})
			return nil
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
			c, err := cf.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			if kind != "" {
				q.Set("kind", kind)
			}
			if cf.project != "" {
				q.Set("project", cf.project)
			}
			var l apitypes.ImageList
			if err := c.Do(cmd.Context(), "GET", "/v1/images", q, nil, &l); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, l.Items)
			}
			imageTable(stdout, l.Items)
			return nil
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "only kernel, initrd or rootfs images")
	return cmd
}

func imageGetCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME|ID",
		Short: "Show one image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var it apitypes.ImageItem
			if err := c.Do(cmd.Context(), "GET", "/v1/images/"+url.PathEscape(args[0]), projectQuery(cf), nil, &it); err != nil {
				return describe(err)
			}
			if cf.output == "json" {
				return printJSON(stdout, it.Item)
			}
			img := it.Item
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			for _, kv := range [][2]string{
				{"id", img.ID}, {"name", img.Name}, {"kind", img.Kind}, {"project", img.Project},
				{"path", img.HostPath}, {"size", fmt.Sprintf("%s (%d bytes)", humanBytes(img.Size), img.Size)},
				{"sha256", img.SHA256}, {"read-only", fmt.Sprint(img.ReadOnly)}, {"created", img.CreatedAt.Format(time.RFC3339)},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
			return tw.Flush()
		},
	}
}

func imageRmCmd(cf *clientFlags, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME|ID…",
		Aliases: []string{"delete"},
		Short:   "Remove images from the registry (the files stay on the hosts)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			return eachRef(args, stdout, "removed", func(ref string) error {
				return c.Do(cmd.Context(), "DELETE", "/v1/images/"+url.PathEscape(ref), projectQuery(cf), nil, nil)
			})
		},
	}
}

func projectQuery(cf *clientFlags) url.Values {
	if cf.project == "" {
		return nil
	}
	return url.Values{"project": {cf.project}}
}

func imageTable(w io.Writer, imgs []apitypes.Image) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tKIND\tPROJECT\tSIZE\tSHA256\tRO\tPATH")
	for _, i := range imgs {
		sum := i.SHA256
		if len(sum) > 12 {
			sum = sum[:12] + "…"
		}
		ro := "-"
		if i.ReadOnly {
			ro = "ro"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.ID, i.Name, i.Kind, i.Project, humanBytes(i.Size), sum, ro, i.HostPath)
	}
	tw.Flush()
}

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
