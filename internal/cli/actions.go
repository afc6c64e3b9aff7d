package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// actionResult is one outcome of a command that acts on several
// resources; -o json prints a list of them.
type actionResult struct {
	Ref   string `json:"ref"`
	ID    string `json:"id,omitempty"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Exit  int    `json:"exit_code,omitempty"`
}

// runEach runs op for each reference and reports each outcome as it
// comes: "<ref>\t<done>" on stdout, failures on stderr (or all of them as
// one list with -o json|yaml). One failure does not stop the rest; the
// command fails if any failed, with the failures' exit code when they
// share one.
func runEach(cmd *cobra.Command, cf *clientFlags, stdout io.Writer, refs []string, done string, op func(ref string) (id string, err error)) error {
	p, err := cf.printer(stdout)
	if err != nil {
		return err
	}
	var results []actionResult
	failed, code := 0, 0
	for i, ref := range refs {
		id, err := op(ref)
		r := actionResult{Ref: ref, ID: id, OK: err == nil}
		if err != nil {
			err = describe(err)
			r.Error, r.Exit = err.Error(), exitCode(err)
			failed++
			if code == 0 || code == r.Exit {
				code = r.Exit
			} else {
				code = exitFailure
			}
		}
		results = append(results, r)
		if p.machine() && !p.quiet && p.format != "name" {
			continue // printed together below
		}
		switch {
		case !r.OK && len(refs) == 1:
			return err // the one error, said once
		case !r.OK:
			fmt.Fprintf(cmd.ErrOrStderr(), "%s\terror: %s\n", ref, r.Error)
		case p.quiet:
			fmt.Fprintln(stdout, orDash(id))
		case p.format == "name":
			fmt.Fprintln(stdout, ref)
		default:
			prefix := ""
			if len(refs) > 1 && isTerminal(stdout) {
				prefix = fmt.Sprintf("[%d/%d] ", i+1, len(refs))
			}
			fmt.Fprintf(stdout, "%s%s\t%s\n", prefix, ref, done)
		}
	}
	if p.machine() && !p.quiet && p.format != "name" {
		if p.tmpl != nil {
			for _, r := range results {
				if err := p.template(r); err != nil {
					return err
				}
			}
		} else if err := list(p, results, nil, nil, nil); err != nil {
			return err
		}
	}
	if failed > 0 {
		return &exitError{code: code, err: fmt.Errorf("%d of %d failed", failed, len(refs))}
	}
	return nil
}

// plural is "1 VM", "3 VMs".
func plural(n int, what string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", what)
	}
	return fmt.Sprintf("%d %ss", n, strings.TrimSuffix(what, "s"))
}
