// Package pkitest makes certificate authorities and certificates for
// tests, with package pki itself (the code under test issues them the same
// way `nexus cert` does). Use it from _test.go files only.
package pkitest

import (
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/pki"
)

// CA is a test CA in its own directory.
type CA struct {
	tb  testing.TB
	Dir string
	CA  *pki.CA
}

// NewCA creates a CA in a new directory under dir (a test's temp dir).
func NewCA(tb testing.TB, dir, name string) *CA {
	tb.Helper()
	d := filepath.Join(dir, name)
	ca, err := pki.CreateCA(d, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{tb: tb, Dir: d, CA: ca}
}

// CAFile is the CA's certificate.
func (c *CA) CAFile() string { return filepath.Join(c.Dir, pki.CACertFile) }

// Issue writes name's certificate (for name and hosts) into the CA's
// directory, replacing an earlier one (a rotation), and returns the files
// a server or client of this CA uses.
func (c *CA) Issue(name string, hosts ...string) pki.Files {
	c.tb.Helper()
	return c.IssueIn(c.Dir, name, hosts...)
}

// IssueIn is Issue into dir: dir/name.crt and dir/name.key are replaced
// the way an operator rotates them (each file moved into place).
func (c *CA) IssueIn(dir, name string, hosts ...string) pki.Files {
	c.tb.Helper()
	certPEM, keyPEM, err := c.CA.Issue(name, hosts, time.Now(), 0)
	if err != nil {
		c.tb.Fatal(err)
	}
	cp, kp, err := pki.WritePair(dir, name, certPEM, keyPEM)
	if err != nil {
		c.tb.Fatal(err)
	}
	return pki.Files{Cert: cp, Key: kp, CA: c.CAFile()}
}

// Bundle writes a CA bundle of the given CAs' certificates to path.
func Bundle(tb testing.TB, path string, cas ...*CA) {
	tb.Helper()
	var b []byte
	for _, c := range cas {
		pem, err := os.ReadFile(c.CAFile())
		if err != nil {
			tb.Fatal(err)
		}
		b = append(b, pem...)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// Transport is an HTTP transport of a client using f.
func Transport(tb testing.TB, f pki.Files) *http.Transport {
	tb.Helper()
	r, err := pki.NewReloader(f, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tr := &http.Transport{}
	r.ConfigureTransport(tr)
	return tr
}

// ServedSerial dials addr over TLS (as a client of f) and returns the
// serial number of the certificate the server presents, in hex.
func ServedSerial(tb testing.TB, addr string, f pki.Files) string {
	tb.Helper()
	r, err := pki.NewReloader(f, nil)
	if err != nil {
		tb.Fatal(err)
	}
	host, _, _ := net.SplitHostPort(addr)
	c, err := tls.Dial("tcp", addr, r.ClientConfigFor(host))
	if err != nil {
		tb.Fatalf("tls dial %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

// Serial is the serial number of the certificate in f, in hex.
func Serial(tb testing.TB, f pki.Files) string {
	tb.Helper()
	p, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return p.Leaf.SerialNumber.Text(16)
}
