package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// Exit codes of the client commands (documented in docs/cli.md).
const (
	exitFailure     = 1 // any other error
	exitUsage       = 2 // bad flags, arguments or an unknown command
	exitNotFound    = 3 // 404: no such VM, image, template, snapshot …
	exitConflict    = 4 // 409: a name in use, a state that forbids it
	exitDenied      = 5 // 401/403: no, a wrong or a too weak token
	exitUnavailable = 6 // the manager unreachable, or 429/502/503/504
)

const defaultAddr = "http://127.0.0.1:8080"

// usageErrorf is a usage error: exit code 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// clientFlags are the flags every client command shares. Where a value
// comes from: the flag, else its environment variable, else the current
// context of the config file, else the default. Secrets never appear as
// flag defaults, so --help cannot show them.
type clientFlags struct {
	e                             env
	addr, token, project, context string
	ca                            string
	output, format                string
	quiet                         bool
}

func (c *clientFlags) add(cmd *cobra.Command, e env) {
	c.e = e
	fs := cmd.PersistentFlags()
	fs.StringVar(&c.addr, "addr", "", "manager URL (env NEXUS_ADDR; default: the context's, else "+defaultAddr+")")
	fs.StringVar(&c.token, "token", "", "API token (env NEXUS_TOKEN; default: the context's)")
	fs.StringVar(&c.project, "project", "", "project (env NEXUS_PROJECT; default: the context's, else the token's)")
	fs.StringVar(&c.ca, "ca", "", "PEM file of the CA that signed the manager's certificate (env NEXUS_CA; default: the context's, else the system's)")
	fs.StringVar(&c.context, "context", "", "context of the config file to use (env NEXUS_CONTEXT; default: its current one)")
	fs.StringVarP(&c.output, "output", "o", "table", "output: "+strings.Join(outputFormats, ", "))
	fs.StringVar(&c.format, "format", "", "print each resource with a Go template over its JSON fields, e.g. '{{.name}} {{.state}}'")
	fs.BoolVarP(&c.quiet, "quiet", "q", false, "print ids only")
}

// pick returns the flag's value if given, else the env var's, else def.
func (c *clientFlags) pick(val, key, def string) string {
	if val != "" { // given as a flag (their defaults are empty)
		return val
	}
	if v := c.e(key); v != "" {
		return v
	}
	return def
}

// resolveTarget settles addr, token and project from flags, environment
// and the config file's context.
func (c *clientFlags) resolveTarget() error {
	cfg, path, err := loadConfig(c.e)
	if err != nil {
		return err
	}
	name := c.pick(c.context, "NEXUS_CONTEXT", cfg.CurrentContext)
	var ctx clientContext
	if name != "" {
		var ok bool
		if ctx, ok = cfg.find(name); !ok {
			return usageErrorf("no context %q in %s (contexts: %s)", name, path, cfg.names())
		}
	}
	c.addr = c.pick(c.addr, "NEXUS_ADDR", ctx.Addr)
	if c.addr == "" {
		c.addr = defaultAddr
	}
	c.token = c.pick(c.token, "NEXUS_TOKEN", ctx.Token)
	c.project = c.pick(c.project, "NEXUS_PROJECT", ctx.Project)
	c.ca = c.pick(c.ca, "NEXUS_CA", ctx.CA)
	return nil
}

// client checks the output flags and returns a client of the manager.
func (c *clientFlags) client() (*nexus.Client, error) {
	if _, err := c.printer(io.Discard); err != nil {
		return nil, err
	}
	if err := c.resolveTarget(); err != nil {
		return nil, err
	}
	if c.token == "" {
		return nil, &exitError{code: exitDenied, err: errors.New("no API token: set NEXUS_TOKEN, pass --token, or add a context (nexus context add); nexus up wrote one to <data-dir>/admin.token")}
	}
	opts := []nexus.Option{nexus.WithRetry(nexus.RetryPolicy{Attempts: 3, Base: 200 * time.Millisecond, Max: 2 * time.Second})}
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", c.ca)
		}
		tr := jsonhttp.NewTransport()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		opts = append(opts, nexus.WithHTTPClient(&http.Client{Transport: tr}))
	}
	return nexus.New(c.addr, c.token, opts...), nil
}

// setup is client and printer together, as most commands need both.
func (c *clientFlags) setup(w io.Writer) (*nexus.Client, *printer, error) {
	cl, err := c.client()
	if err != nil {
		return nil, nil, err
	}
	p, err := c.printer(w)
	return cl, p, err
}

// printer is the output the flags chose, writing to w.
func (c *clientFlags) printer(w io.Writer) (*printer, error) {
	return newPrinter(w, c.output, c.format, c.quiet)
}

// vmRef returns a client and the id of the VM named (or identified) by ref.
func (c *clientFlags) vmRef(ctx context.Context, ref string) (*nexus.Client, string, error) {
	cl, err := c.client()
	if err != nil {
		return nil, "", err
	}
	id, err := resolve(ctx, cl, c.project, ref)
	return cl, id, err
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// resolve turns a VM name or id into an id.
func resolve(ctx context.Context, c *nexus.Client, project, ref string) (string, error) {
	if uuidRE.MatchString(ref) {
		return ref, nil
	}
	l, err := c.ListVMs(ctx, nexus.ListVMsOptions{Name: ref, Project: project})
	if err != nil {
		return "", describe(err)
	}
	if len(l.Items) == 0 {
		return "", &exitError{code: exitNotFound, err: fmt.Errorf("no VM named %q (nexus vm ls lists them)", ref)}
	}
	return l.Items[0].ID, nil
}

// describe renders an API error as one line with what to do, keeping the
// exit code its status means.
func describe(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	var e *apierr.Error
	if !errors.As(err, &e) {
		var op *net.OpError
		if errors.As(err, &op) {
			return &exitError{code: exitUnavailable, err: err}
		}
		return err
	}
	msg := e.Message
	if msg == "" {
		msg = e.Code
	}
	if e.FaultMessage != "" {
		msg += ": " + e.FaultMessage
	}
	if e.Suggestion != "" {
		msg += " (" + e.Suggestion + ")"
	}
	if e.Status >= 500 && e.RequestID != "" {
		msg += " [request " + e.RequestID + "]"
	}
	for _, l := range e.LogTail {
		msg += "\n  firecracker: " + l
	}
	return &exitError{code: exitCodeOf(e.Status), err: errors.New(msg)}
}

func exitCodeOf(status int) int {
	switch status {
	case http.StatusBadRequest:
		return exitFailure
	case http.StatusNotFound:
		return exitNotFound
	case http.StatusConflict:
		return exitConflict
	case http.StatusUnauthorized, http.StatusForbidden:
		return exitDenied
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return exitUnavailable
	}
	return exitFailure
}

// exitCode is the exit code an error means.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}
