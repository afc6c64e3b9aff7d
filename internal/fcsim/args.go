package fcsim

import (
	"fmt"
	"strings"
)

// argSpec is one of firecracker's command-line arguments.
type argSpec struct {
	takesValue bool
	def        string
	requires   string
	forbids    string
}

var argSpecs = map[string]argSpec{
	"api-sock":                  {takesValue: true, def: "/run/firecracker.socket"},
	"id":                        {takesValue: true, def: "anonymous-instance"},
	"seccomp-filter":            {takesValue: true, forbids: "no-seccomp"},
	"no-seccomp":                {forbids: "seccomp-filter"},
	"start-time-us":             {takesValue: true},
	"start-time-cpu-us":         {takesValue: true},
	"parent-cpu-time-us":        {takesValue: true},
	"config-file":               {takesValue: true},
	"metadata":                  {takesValue: true},
	"no-api":                    {requires: "config-file"},
	"log-path":                  {takesValue: true},
	"level":                     {takesValue: true},
	"module":                    {takesValue: true},
	"show-level":                {},
	"show-log-origin":           {},
	"metrics-path":              {takesValue: true},
	"boot-timer":                {},
	"version":                   {},
	"snapshot-version":          {},
	"describe-snapshot":         {takesValue: true},
	"http-api-max-payload-size": {takesValue: true, def: "51200"},
	"mmds-size-limit":           {takesValue: true},
	"enable-pci":                {},
}

// argHelp is printed by --help, in firecracker's format.
var argHelp = [][2]string{
	{"api-sock", "Path to unix domain socket used by the API. [default: \"/run/firecracker.socket\"]"},
	{"boot-timer", "Whether or not to load boot timer device for logging elapsed time since InstanceStart command."},
	{"config-file", "Path to a file that contains the microVM configuration in JSON format."},
	{"describe-snapshot", "Print the data format version of the provided snapshot state file."},
	{"enable-pci", "Enables PCIe support."},
	{"http-api-max-payload-size", "Http API request payload max size, in bytes. [default: \"51200\"]"},
	{"id", "MicroVM unique identifier. [default: \"anonymous-instance\"]"},
	{"level", "Set the logger level."},
	{"log-path", "Path to a fifo or a file used for configuring the logger on startup."},
	{"metadata", "Path to a file that contains metadata in JSON format to add to the mmds."},
	{"metrics-path", "Path to a fifo or a file used for configuring the metrics on startup."},
	{"mmds-size-limit", "Mmds data store limit, in bytes."},
	{"module", "Set the logger module filter."},
	{"no-api", "Optional parameter which allows starting and using a microVM without an active API socket."},
	{"no-seccomp", "Optional parameter which allows starting and using a microVM without seccomp filtering. Not recommended."},
	{"parent-cpu-time-us", "Parent process CPU time (wall clock, microseconds). This parameter is optional."},
	{"seccomp-filter", "Optional parameter which allows specifying the path to a custom seccomp filter. For advanced users."},
	{"show-level", "Whether or not to output the level in the logs."},
	{"show-log-origin", "Whether or not to include the file path and line number of the log's origin."},
	{"snapshot-version", "Print the supported data format version."},
	{"start-time-cpu-us", "Process start CPU time (wall clock, microseconds). This parameter is optional."},
	{"start-time-us", "Process start time (wall clock, microseconds). This parameter is optional."},
	{"version", "Print the binary version number."},
}

// arguments are the parsed flags: values of flags that take one, and "" for
// boolean flags that are present.
type arguments struct {
	vals  map[string]string
	help  bool
	extra []string // after "--"
}

func (a *arguments) value(name string) (string, bool) {
	v, ok := a.vals[name]
	if !ok {
		v = argSpecs[name].def
		ok = v != ""
	}
	return v, ok
}

func (a *arguments) flag(name string) bool {
	_, ok := a.vals[name]
	return ok
}

// argError is firecracker's arg_parser error; it exits 153.
type argError struct{ msg string }

func (e *argError) Error() string { return e.msg }

// parseArgs parses argv (without the program name) like firecracker's
// utils::arg_parser: "--name value" only, unknown and repeated flags are
// errors, --help and --version win over everything else.
func parseArgs(argv []string) (*arguments, error) {
	a := &arguments{vals: map[string]string{}}
	args := argv
	for i, s := range argv {
		if s == "--" {
			args, a.extra = argv[:i], argv[i+1:]
			break
		}
	}
	for _, s := range args {
		if s == "--help" {
			a.help = true
			return a, nil
		}
	}
	for _, s := range args {
		if s == "--version" {
			a.vals["version"] = ""
			return a, nil
		}
	}
	for i := 0; i < len(args); i++ {
		s := args[i]
		name, ok := strings.CutPrefix(s, "--")
		if !ok {
			return nil, &argError{fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", s)}
		}
		spec, known := argSpecs[name]
		if !known {
			return nil, &argError{fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", name)}
		}
		if _, dup := a.vals[name]; dup {
			return nil, &argError{fmt.Sprintf("The argument '%s' was provided more than once.", name)}
		}
		v := ""
		if spec.takesValue {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				return nil, &argError{fmt.Sprintf("The argument '%s' requires a value, but none was supplied.", name)}
			}
			i++
			v = args[i]
		}
		a.vals[name] = v
	}
	// Firecracker checks constraints in the arguments' (sorted) order.
	for _, h := range argHelp {
		name := h[0]
		if _, set := a.vals[name]; !set {
			continue
		}
		spec := argSpecs[name]
		if spec.forbids != "" && a.flag(spec.forbids) {
			return nil, &argError{fmt.Sprintf("Argument '%s' cannot be used together with argument '%s'.", spec.forbids, name)}
		}
		if spec.requires != "" && !a.flag(spec.requires) {
			return nil, &argError{fmt.Sprintf("Argument '%s' required, but not found.", spec.requires)}
		}
	}
	return a, nil
}

// helpText is firecracker's --help output after the version line.
func helpText() string {
	width := 0
	names := make([]string, len(argHelp))
	for i, h := range argHelp {
		n := "  --" + h[0]
		if argSpecs[h[0]].takesValue {
			n += " <" + h[0] + ">"
		}
		names[i] = n
		width = max(width, len(n))
	}
	var sb strings.Builder
	sb.WriteString("optional arguments:\n")
	for i, h := range argHelp {
		fmt.Fprintf(&sb, "%-*s   %s\n", width, names[i], h[1])
	}
	return sb.String()
}
