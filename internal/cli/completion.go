package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// Dynamic completion asks the manager (with the command's flags,
// environment and context) for names: VMs, templates, images, snapshots,
// hosts. It gives up quietly after two seconds or on any error, so a
// shell never hangs on a manager that is down.

func (c *clientFlags) complete(cmd *cobra.Command, toComplete string, names func(context.Context, *nexus.Client) ([]string, error)) ([]string, cobra.ShellCompDirective) {
	cl, err := c.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	all, err := names(ctx, cl)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	var out []string
	for _, n := range all {
		if strings.HasPrefix(n, toComplete) {
			out = append(out, n)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeVMs completes VM names (every argument: actions take several).
func (c *clientFlags) completeVMs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return c.complete(cmd, toComplete, func(ctx context.Context, cl *nexus.Client) ([]string, error) {
		l, err := cl.ListVMs(ctx, nexus.ListVMsOptions{Project: c.project, Limit: 1000})
		var n []string
		for _, vm := range l.Items {
			n = append(n, vm.Name)
		}
		return without(n, args), err
	})
}

func (c *clientFlags) completeTemplates(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return c.complete(cmd, toComplete, func(ctx context.Context, cl *nexus.Client) ([]string, error) {
		l, err := cl.ListTemplates(ctx, c.project)
		var n []string
		for _, t := range l.Items {
			n = append(n, t.Name)
		}
		return without(n, args), err
	})
}

func (c *clientFlags) completeImages(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return c.complete(cmd, toComplete, func(ctx context.Context, cl *nexus.Client) ([]string, error) {
		l, err := cl.ListImages(ctx, c.project, "")
		var n []string
		for _, i := range l.Items {
			n = append(n, i.Name)
		}
		return without(n, args), err
	})
}

func (c *clientFlags) completeSnapshots(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return c.complete(cmd, toComplete, func(ctx context.Context, cl *nexus.Client) ([]string, error) {
		l, err := cl.ListSnapshots(ctx, nexus.ListSnapshotsOptions{Project: c.project})
		var n []string
		for _, s := range l.Items {
			n = append(n, s.ID)
		}
		return without(n, args), err
	})
}

func (c *clientFlags) completeHosts(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return c.complete(cmd, toComplete, func(ctx context.Context, cl *nexus.Client) ([]string, error) {
		l, err := cl.Hosts(ctx)
		var n []string
		for _, h := range l.Items {
			n = append(n, h.Name)
		}
		return without(n, args), err
	})
}

// without drops names already on the command line.
func without(names, args []string) []string {
	seen := map[string]bool{}
	for _, a := range args {
		seen[a] = true
	}
	out := names[:0]
	for _, n := range names {
		if !seen[n] {
			out = append(out, n)
		}
	}
	return out
}
