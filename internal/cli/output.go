package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"text/template"

	"golang.org/x/term"
	"sigs.k8s.io/yaml"
)

// Output formats of every command that prints resources (-o):
//
//	table  columns for people (default)
//	wide   more columns
//	json   the API's JSON: an array for lists, an object for one resource
//	yaml   the same as YAML
//	name   one name per line
//
// --format '{{.name}} {{.state}}' prints each resource through a Go
// template over its JSON fields; -q prints ids only. Data goes to stdout;
// notes, progress and errors to stderr.
var outputFormats = []string{"table", "wide", "json", "yaml", "name"}

// column is one column of a table.
type column[T any] struct {
	head string
	wide bool // only with -o wide
	val  func(T) string
}

// printer renders resources in the format the flags chose.
type printer struct {
	format string
	tmpl   *template.Template
	quiet  bool
	out    io.Writer
	// noHeader leaves out tables' header row (later rows of a watch).
	noHeader bool
}

// newPrinter checks the output flags.
func newPrinter(out io.Writer, format, tmpl string, quiet bool) (*printer, error) {
	p := &printer{format: format, quiet: quiet, out: out}
	if !contains(outputFormats, format) {
		return nil, usageErrorf("--output %q: use one of %s", format, strings.Join(outputFormats, ", "))
	}
	if tmpl != "" {
		t, err := template.New("format").Funcs(template.FuncMap{"json": toJSON}).Option("missingkey=zero").Parse(tmpl)
		if err != nil {
			return nil, usageErrorf("--format: %v", err)
		}
		p.tmpl = t
	}
	return p, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// machine reports whether the output is for programs (json, yaml, a
// template or ids), where notes must stay off stdout.
func (p *printer) machine() bool {
	return p.quiet || p.tmpl != nil || p.format == "json" || p.format == "yaml" || p.format == "name"
}

// list prints resources.
func list[T any](p *printer, items []T, cols []column[T], id, name func(T) string) error {
	switch {
	case p.quiet:
		for _, it := range items {
			fmt.Fprintln(p.out, id(it))
		}
		return nil
	case p.tmpl != nil:
		for _, it := range items {
			if err := p.template(it); err != nil {
				return err
			}
		}
		return nil
	}
	switch p.format {
	case "json":
		if items == nil {
			items = []T{}
		}
		return writeJSON(p.out, items)
	case "yaml":
		if items == nil {
			items = []T{}
		}
		return writeYAML(p.out, items)
	case "name":
		for _, it := range items {
			fmt.Fprintln(p.out, name(it))
		}
		return nil
	}
	tw := tabwriter.NewWriter(p.out, 0, 4, 2, ' ', 0)
	var heads []string
	for _, c := range cols {
		if !c.wide || p.format == "wide" {
			heads = append(heads, c.head)
		}
	}
	if !p.noHeader {
		fmt.Fprintln(tw, strings.Join(heads, "\t"))
	}
	for _, it := range items {
		var vals []string
		for _, c := range cols {
			if !c.wide || p.format == "wide" {
				vals = append(vals, orDash(c.val(it)))
			}
		}
		fmt.Fprintln(tw, strings.Join(vals, "\t"))
	}
	return tw.Flush()
}

// one prints a single resource: as key: value lines in table and wide
// formats (detail lists them), like list otherwise.
func one[T any](p *printer, it T, detail func(T) [][2]string, id, name func(T) string) error {
	if p.quiet || p.tmpl != nil || p.format == "name" {
		return list(p, []T{it}, nil, id, name)
	}
	switch p.format {
	case "json":
		return writeJSON(p.out, it)
	case "yaml":
		return writeYAML(p.out, it)
	}
	tw := tabwriter.NewWriter(p.out, 0, 4, 2, ' ', 0)
	for _, kv := range detail(it) {
		if strings.TrimSpace(kv[1]) != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
	}
	return tw.Flush()
}

// created prints one new resource: an object in json and yaml (as get
// does), a row of the list's table otherwise.
func created[T any](p *printer, it T, cols []column[T], id, name func(T) string) error {
	if !p.quiet && p.tmpl == nil && (p.format == "json" || p.format == "yaml") {
		return one(p, it, nil, id, name)
	}
	return list(p, []T{it}, cols, id, name)
}

// template runs --format over v's JSON fields.
func (p *printer) template(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var m any
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	if err := p.tmpl.Execute(p.out, m); err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	fmt.Fprintln(p.out)
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeYAML(w io.Writer, v any) error {
	b, err := yaml.Marshal(v) // through JSON: the API's field names
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// isTerminal reports whether w is a terminal (progress is shown only
// there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
