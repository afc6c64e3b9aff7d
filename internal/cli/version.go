package cli

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/internal/version"
)

// newVersionCmd prints what internal/version knows of this build: the
// release stamp or module version, the commit and its time, whether the
// tree was dirty, the Go version and the platform.
func newVersionCmd(stdout io.Writer) *cobra.Command {
	var out, format string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, commit, Go version and platform",
		Example: `  nexus version
  nexus version -o json
  nexus version --format '{{.commit}}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := newPrinter(stdout, out, format, false)
			if err != nil {
				return err
			}
			v := version.Get()
			id := func(i version.Info) string { return i.Version }
			return one(p, v, func(i version.Info) [][2]string {
				return [][2]string{
					{"version", i.Version},
					{"commit", i.Commit},
					{"commit time", i.CommitTime},
					{"dirty", strconv.FormatBool(i.Dirty)},
					{"go", i.GoVersion},
					{"platform", i.Platform},
				}
			}, id, id)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "table", "output format: table, json, yaml (wide and name print as table and the version)")
	cmd.Flags().StringVar(&format, "format", "", "Go template over the JSON fields, e.g. '{{.version}} {{.commit}}'")
	return cmd
}

// versionTemplate is what --version prints: one line.
func versionTemplate() string {
	v := version.Get()
	return fmt.Sprintf("nexus %s %s %s\n", v, v.GoVersion, v.Platform)
}
