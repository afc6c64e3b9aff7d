package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCertCommands: `nexus cert init` makes a CA once, `nexus cert issue`
// a certificate of it for a host, and both say what is wrong otherwise.
func TestCertCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	run := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), args, func(string) string { return "" }, &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := run("cert", "issue", "--ca-dir", dir, "--host", "h1"); code == 0 || !strings.Contains(out, "nexus cert init") {
		t.Fatalf("issue without a CA: %d %q; want an error saying how to make one", code, out)
	}
	if code, out := run("cert", "init", "--ca-dir", dir); code != 0 {
		t.Fatalf("init: %d %q", code, out)
	}
	if code, out := run("cert", "init", "--ca-dir", dir); code == 0 || !strings.Contains(out, "already exists") {
		t.Fatalf("second init: %d %q; want refused", code, out)
	}
	if code, out := run("cert", "issue", "--ca-dir", dir); code == 0 || !strings.Contains(out, "--host") {
		t.Fatalf("issue without --host: %d %q", code, out)
	}
	code, out := run("cert", "issue", "--ca-dir", dir, "--host", "h1", "--san", "10.0.0.7,h1.internal")
	if code != 0 || !strings.Contains(out, "--tls-cert "+filepath.Join(dir, "h1.crt")) {
		t.Fatalf("issue: %d %q", code, out)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "h1.crt"), filepath.Join(dir, "h1.key"))
	if err != nil {
		t.Fatal(err)
	}
	if l := pair.Leaf; strings.Join(l.DNSNames, ",") != "h1,h1.internal" || len(l.IPAddresses) != 1 {
		t.Fatalf("issued for %v %v", l.DNSNames, l.IPAddresses)
	}
	if fi, err := os.Stat(filepath.Join(dir, "h1.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v %v; want 0600", fi.Mode(), err)
	}
}
