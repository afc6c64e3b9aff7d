package cli

import (
	"io"

	"github.com/spf13/cobra"
)

// newSnapshotCmd returns the command, or nil while it does not exist yet.
func newSnapshotCmd(e env, stdout io.Writer) *cobra.Command { return nil }
