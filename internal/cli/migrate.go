package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/internal/store"
)

// newMigrateCmd is `nexus manager migrate`: apply the store's migrations,
// or with --dry-run show the pending ones and change nothing.
func newMigrateCmd(dsn *string, stdout io.Writer) *cobra.Command {
	var dry bool
	var out string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the store's migrations and exit (--dry-run: show the pending ones, change nothing)",
		Long: `Apply the store's pending migrations and exit. A manager also applies
them at start; running this first, from the new release, is the first step
of an upgrade (docs/upgrading.md). Managers of the previous release keep
working on the migrated database: migrations only expand the schema.

With --dry-run it lists the pending migrations and the SQL each would run,
and changes nothing (no version table is created, no SQLite file).`,
		Example: `  nexus manager migrate --dry-run
  nexus manager migrate --dry-run -o json
  nexus manager migrate`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out != "text" && out != "json" {
				return usageErrorf("--output %q: use text or json", out)
			}
			if !dry {
				if err := store.Migrate(cmd.Context(), *dsn); err != nil {
					return err
				}
				fmt.Fprintln(stdout, "migrations applied")
				return nil
			}
			all, err := store.Migrations(cmd.Context(), *dsn)
			if err != nil {
				return err
			}
			var pending []store.Migration
			var current int64
			for _, m := range all {
				if m.Applied {
					current = max(current, m.Version)
				} else {
					pending = append(pending, m)
				}
			}
			if out == "json" {
				if pending == nil {
					pending = []store.Migration{}
				}
				return writeJSON(stdout, struct {
					Current int64             `json:"current_version"`
					Pending []store.Migration `json:"pending"`
				}{current, pending})
			}
			if len(pending) == 0 {
				fmt.Fprintf(stdout, "nothing to do: the database is at version %d, this build's latest\n", current)
				return nil
			}
			fmt.Fprintf(stdout, "%d pending migration(s); the database is at version %d (dry run: nothing applied)\n", len(pending), current)
			for _, m := range pending {
				fmt.Fprintf(stdout, "\n%s\n", m.File)
				for _, l := range strings.Split(m.Up, "\n") {
					fmt.Fprintf(stdout, "  %s\n", l)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "list the pending migrations and their SQL; apply nothing")
	cmd.Flags().StringVarP(&out, "output", "o", "text", "with --dry-run: text or json")
	return cmd
}
