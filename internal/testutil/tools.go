package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// ToolsDir is where `scripts/setup.sh --test` puts test tools that Debian
// does not install on PATH by themselves (promtool).
const ToolsDir = "/usr/local/nexus-tools/bin"

// RequireTool returns the path of a test tool (PATH first, then ToolsDir).
// Without it the test skips, saying how to install it; on CI it fails.
func RequireTool(tb testing.TB, name, install string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := ToolsDir + "/" + name; isExec(p) {
		return p
	}
	msg := name + " is not installed: " + install
	if OnCI() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Promtool runs `promtool check metrics` on an exposition and fails the
// test with promtool's complaints, if any.
func Promtool(tb testing.TB, what string, exposition []byte) {
	tb.Helper()
	bin := RequireTool(tb, "promtool", "run scripts/setup.sh --test (it extracts promtool from Debian's prometheus package)")
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		tb.Fatalf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}
