package cli

import (
	"io"

	"github.com/spf13/cobra"
)

// newTemplateCmd returns the command, or nil while it does not exist yet.
func newTemplateCmd(e env, stdout io.Writer) *cobra.Command { return nil }
