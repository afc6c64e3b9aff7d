package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
)

var contextNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// newContextCmd is `nexus context`: named managers with their tokens in
// the client config file, so one switch changes where every command goes.
func newContextCmd(e env, stdin io.Reader, stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "context",
		Short: "Save managers and tokens under names and switch between them",
		Long: `A context is a manager's address with a token (and optionally a project),
saved under a name in the client config file ($NEXUS_CONFIG, else
$XDG_CONFIG_HOME/nexus/config.yaml, else ~/.config/nexus/config.yaml; written
0600: it holds tokens). Client commands use the current context unless
--context or NEXUS_CONTEXT names another; --addr, --token and --project
flags, and NEXUS_ADDR, NEXUS_TOKEN and NEXUS_PROJECT, override its fields.`,
		Example: `  nexus context add local --addr http://127.0.0.1:8080 --token-file .nexus/admin.token --use
  echo "$TOKEN" | nexus context add prod --addr https://nexus.example.com --token-stdin --project team-a
  nexus context use prod
  nexus context ls`,
	}
	var out string
	cmd.PersistentFlags().StringVarP(&out, "output", "o", "table", "output: table, json or yaml")

	var c clientContext
	var tokenFile string
	var tokenStdin, use bool
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Save a context (replacing one of the same name)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c.Name = args[0]
			if !contextNameRE.MatchString(c.Name) {
				return usageErrorf("context name %q: use letters, digits, '.', '_' and '-' (at most 63)", c.Name)
			}
			if c.Addr == "" {
				return usageErrorf("--addr is required")
			}
			if !strings.HasPrefix(c.Addr, "http://") && !strings.HasPrefix(c.Addr, "https://") {
				return usageErrorf("--addr %q: use http://host:port or https://host:port", c.Addr)
			}
			switch {
			case tokenFile != "" && tokenStdin, tokenFile != "" && c.Token != "", tokenStdin && c.Token != "":
				return usageErrorf("give the token one way: --token, --token-file or --token-stdin")
			case tokenFile != "":
				raw, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--token-file: %w", err)
				}
				c.Token = strings.TrimSpace(string(raw))
			case tokenStdin:
				line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
				if err != nil && err != io.EOF {
					return fmt.Errorf("--token-stdin: %w", err)
				}
				c.Token = strings.TrimSpace(line)
			case c.Token == "":
				c.Token = e("NEXUS_TOKEN")
			}
			cfg, path, err := loadConfig(e)
			if err != nil {
				return err
			}
			replaced := false
			for i := range cfg.Contexts {
				if cfg.Contexts[i].Name == c.Name {
					cfg.Contexts[i], replaced = c, true
				}
			}
			if !replaced {
				cfg.Contexts = append(cfg.Contexts, c)
			}
			if use || cfg.CurrentContext == "" {
				cfg.CurrentContext = c.Name
			}
			if err := cfg.save(path); err != nil {
				return err
			}
			verb := "added"
			if replaced {
				verb = "replaced"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "context %s %s in %s", c.Name, verb, path)
			if cfg.CurrentContext == c.Name {
				fmt.Fprint(cmd.ErrOrStderr(), " (current)")
			}
			if c.Token == "" {
				fmt.Fprint(cmd.ErrOrStderr(), "; it has no token: commands need NEXUS_TOKEN or --token")
			}
			fmt.Fprintln(cmd.ErrOrStderr())
			return nil
		},
	}
	fs := add.Flags()
	fs.StringVar(&c.Addr, "addr", "", "the manager's URL")
	fs.StringVar(&c.Token, "token", "", "API token (visible in your shell's history: prefer --token-file or --token-stdin; default: $NEXUS_TOKEN)")
	fs.StringVar(&tokenFile, "token-file", "", "read the token from this file")
	fs.BoolVar(&tokenStdin, "token-stdin", false, "read the token from the first line of stdin")
	fs.StringVar(&c.Project, "project", "", "project for this context's commands (default: the token's)")
	fs.StringVar(&c.CA, "ca", "", "PEM file of the CA that signed the manager's certificate")
	fs.BoolVar(&use, "use", false, "make it the current context")

	useCmd := &cobra.Command{
		Use:               "use NAME",
		Short:             "Make a context the current one",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeContexts(e),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, path, err := loadConfig(e)
			if err != nil {
				return err
			}
			if _, ok := cfg.find(args[0]); !ok {
				return &exitError{code: exitNotFound, err: fmt.Errorf("no context %q in %s (contexts: %s)", args[0], path, cfg.names())}
			}
			cfg.CurrentContext = args[0]
			if err := cfg.save(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "now using context %s\n", args[0])
			return nil
		},
	}

	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List contexts (never their tokens)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := newPrinter(stdout, out, "", false)
			if err != nil {
				return err
			}
			cfg, _, err := loadConfig(e)
			if err != nil {
				return err
			}
			type row struct {
				Name     string `json:"name"`
				Current  bool   `json:"current"`
				Addr     string `json:"addr"`
				Project  string `json:"project,omitempty"`
				HasToken bool   `json:"has_token"`
				CA       string `json:"ca,omitempty"`
			}
			var rows []row
			for _, x := range cfg.Contexts {
				rows = append(rows, row{x.Name, x.Name == cfg.CurrentContext, x.Addr, x.Project, x.Token != "", x.CA})
			}
			return list(p, rows, []column[row]{
				{head: "CURRENT", val: func(r row) string {
					if r.Current {
						return "*"
					}
					return " "
				}},
				{head: "NAME", val: func(r row) string { return r.Name }},
				{head: "ADDR", val: func(r row) string { return r.Addr }},
				{head: "PROJECT", val: func(r row) string { return r.Project }},
				{head: "TOKEN", val: func(r row) string {
					if r.HasToken {
						return "set"
					}
					return ""
				}},
			}, func(r row) string { return r.Name }, func(r row) string { return r.Name })
		},
	}

	rm := &cobra.Command{
		Use:               "rm NAME…",
		Aliases:           []string{"delete"},
		Short:             "Remove contexts",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeContexts(e),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, path, err := loadConfig(e)
			if err != nil {
				return err
			}
			for _, n := range args {
				if _, ok := cfg.find(n); !ok {
					return &exitError{code: exitNotFound, err: fmt.Errorf("no context %q in %s (contexts: %s)", n, path, cfg.names())}
				}
			}
			kept := cfg.Contexts[:0]
			for _, x := range cfg.Contexts {
				if !contains(args, x.Name) {
					kept = append(kept, x)
				}
			}
			cfg.Contexts = kept
			if contains(args, cfg.CurrentContext) {
				cfg.CurrentContext = ""
			}
			return cfg.save(path)
		},
	}

	current := &cobra.Command{
		Use:   "current",
		Short: "Print the current context's name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, path, err := loadConfig(e)
			if err != nil {
				return err
			}
			if cfg.CurrentContext == "" {
				return &exitError{code: exitNotFound, err: fmt.Errorf("no current context in %s (nexus context use NAME)", path)}
			}
			fmt.Fprintln(stdout, cfg.CurrentContext)
			return nil
		},
	}
	cmd.AddCommand(add, useCmd, ls, rm, current)
	return cmd
}

func completeContexts(e env) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		cfg, _, err := loadConfig(e)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var out []string
		for _, x := range cfg.Contexts {
			if strings.HasPrefix(x.Name, toComplete) {
				out = append(out, x.Name)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
