package cli

import (
	"io"

	"github.com/spf13/cobra"
)

// newImageCmd returns the command, or nil while it does not exist yet.
func newImageCmd(e env, stdout io.Writer) *cobra.Command { return nil }
