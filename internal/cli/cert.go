package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nexus-microvm/nexus/internal/pki"
)

// defaultCADir is where `nexus cert` keeps the fleet's CA unless told.
const defaultCADir = "/etc/nexus/pki"

func caDirFlag(fs *pflag.FlagSet, p *string, e env) {
	strFlag(fs, p, "ca-dir", e, "NEXUS_CA_DIR", defaultCADir, "directory of the fleet's CA (ca.crt, ca.key)")
}

func newCertCmd(e env, stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "The fleet's small CA: create it, issue manager and agent certificates (mutual TLS)",
		Long: `Manager and agents authenticate each other with certificates of one CA
(--tls-cert, --tls-key, --tls-ca on both), on top of the join token.
` + "`nexus cert init`" + ` creates the CA (or ` + "`nexus manager bootstrap --ca-dir`" + `), and
` + "`nexus cert issue --host NAME`" + ` a certificate for one host: keep ca.key on one
machine, copy NAME.crt, NAME.key and ca.crt to the host. A certificate is
good for serving and for authenticating as a client; an agent's name
(AGENT_NAME) must be its certificate's. To rotate, issue a new one and
move it over the old files: running processes pick it up at the next
connection. See docs/security.md.`,
	}
	var dir string
	caDirFlag(cmd.PersistentFlags(), &dir, e)
	cmd.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Create the CA (never overwrites one)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ca, err := pki.CreateCA(dir, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "created CA %q in %s (%s, and %s: keep it secret)\n", ca.Cert.Subject.CommonName, dir, pki.CACertFile, pki.CAKeyFile)
			return nil
		},
	})
	var host, out string
	var sans []string
	var days int
	issue := &cobra.Command{
		Use:   "issue --host NAME [--san HOST-OR-IP]...",
		Short: "Issue a certificate for a manager or an agent host",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if host == "" {
				return usageErrorf("--host NAME is required: the host's name (an agent's AGENT_NAME)")
			}
			if days <= 0 {
				return usageErrorf("--days %d: must be positive", days)
			}
			cp, kp, err := issueCert(dir, out, host, sans, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "issued %s for %s\n  --tls-cert %s --tls-key %s --tls-ca %s\n", filepath.Base(cp), host, cp, kp, filepath.Join(dir, pki.CACertFile))
			return nil
		},
	}
	fs := issue.Flags()
	fs.StringVar(&host, "host", "", "the host's name: the certificate's common name and first DNS name")
	fs.StringSliceVar(&sans, "san", nil, "more host names or IP addresses peers reach it at (repeatable, or comma-separated)")
	fs.StringVar(&out, "out", "", "where NAME.crt and NAME.key go (default: the CA dir)")
	fs.IntVar(&days, "days", int(pki.CertValidity/(24*time.Hour)), "validity in days")
	cmd.AddCommand(issue)
	return cmd
}

// issueCert issues host's certificate with the CA of caDir into out
// (default caDir).
func issueCert(caDir, out, host string, sans []string, validity time.Duration) (string, string, error) {
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("%w (create the CA first: nexus cert init --ca-dir %s)", err, caDir)
		}
		return "", "", err
	}
	certPEM, keyPEM, err := ca.Issue(host, sans, time.Now(), validity)
	if err != nil {
		return "", "", err
	}
	if out == "" {
		out = caDir
	}
	return pki.WritePair(out, host, certPEM, keyPEM)
}

// bootstrapCA creates the CA of dir if there is none and issues the
// manager's certificate for hosts (when it has none yet).
func bootstrapCA(dir string, hosts []string, stdout io.Writer) error {
	if _, err := pki.CreateCA(dir, time.Now()); err != nil && !errors.Is(err, pki.ErrExists) {
		return err
	} else if err == nil {
		fmt.Fprintf(stdout, "created the fleet's CA in %s\n", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "manager.crt")); err == nil {
		fmt.Fprintf(stdout, "the manager's certificate exists: %s\n", filepath.Join(dir, "manager.crt"))
		return nil
	}
	if len(hosts) == 0 {
		h, _ := os.Hostname()
		hosts = []string{h}
	}
	cp, kp, err := issueCert(dir, dir, "manager", hosts, pki.CertValidity)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued the manager's certificate for %v:\n  nexus manager --tls-cert %s --tls-key %s --tls-ca %s\n", hosts, cp, kp, filepath.Join(dir, pki.CACertFile))
	fmt.Fprintf(stdout, "for each agent host: nexus cert issue --ca-dir %s --host NAME --san ADDRESS\n", dir)
	return nil
}
