package release

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/agent"
)

// fakeRelease is a directory with stand-ins for the three binaries.
func fakeRelease(t *testing.T) string {
	dir := t.TempDir()
	for _, b := range []string{"nexus", "nexus-jail", "firecracker-sim"} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\necho nexus test\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func install(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "scripts", "install.sh")}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestInstall installs into a staging root: the files land where the
// units expect them, settings are never overwritten, --dry-run changes
// nothing.
func TestInstall(t *testing.T) {
	from := fakeRelease(t)
	dest := filepath.Join(t.TempDir(), "root")

	out := install(t, "--from", from, "--destdir", dest, "--dry-run")
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Fatalf("--dry-run created %s (err %v)", dest, err)
	}
	if !strings.Contains(out, "+ install -m 0755 "+from+"/nexus "+dest+"/usr/local/bin/nexus") {
		t.Errorf("--dry-run does not show the steps:\n%s", out)
	}

	install(t, "--from", from, "--destdir", dest, "--prefix", "/opt/nexus")
	for path, mode := range map[string]os.FileMode{
		"opt/nexus/bin/nexus":                      0o755,
		"opt/nexus/bin/nexus-jail":                 0o755,
		"opt/nexus/bin/firecracker-sim":            0o755,
		"etc/nexus/manager.env":                    0o640,
		"etc/nexus/agent.env":                      0o600,
		"etc/nexus/pki":                            0o750 | os.ModeDir,
		"srv/fc":                                   0o711 | os.ModeDir,
		"etc/systemd/system/nexus-manager.service": 0o644,
		"etc/systemd/system/nexus-agent.service":   0o644,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
		} else if fi.Mode() != mode {
			t.Errorf("%s: mode %v; want %v", path, fi.Mode(), mode)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "etc/systemd/system/nexus-agent.service"))
	if !bytes.Contains(unit, []byte("ExecStart=/opt/nexus/bin/nexus agent")) {
		t.Errorf("the agent unit does not run the installed binary:\n%s", unit)
	}

	// Again, over edited settings: they stay.
	env := filepath.Join(dest, "etc/nexus/agent.env")
	if err := os.WriteFile(env, []byte("AGENT_TOKEN=mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	install(t, "--from", from, "--destdir", dest, "--prefix", "/opt/nexus", "--role", "agent")
	if b, _ := os.ReadFile(env); string(b) != "AGENT_TOKEN=mine\n" {
		t.Errorf("a second install overwrote agent.env: %q", b)
	}

	// Bad arguments: usage, exit 2, nothing done.
	for _, args := range [][]string{{"--role", "db"}, {"--frobnicate"}} {
		cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "scripts", "install.sh"), "--destdir", dest + "x"}, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("install.sh %v: %v; want exit 2\n%s", args, err, out)
		}
		if _, err := os.Stat(dest + "x"); !os.IsNotExist(err) {
			t.Errorf("install.sh %v created its destdir", args)
		}
	}
}

// TestSystemdUnits checks the unit files with systemd-analyze verify
// where it exists (any warning fails), and what the agent's unit must say
// everywhere: its capabilities are the agent's (agent.Capabilities) and
// stopping it never kills a VMM.
func TestSystemdUnits(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "systemd")
	agentUnit, err := os.ReadFile(filepath.Join(dir, "nexus-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	keys := unitKeys(t, agentUnit)
	if !slices.Contains(keys["KillMode"], "process") {
		t.Errorf("nexus-agent.service: KillMode %v; want process (VMMs outlive the agent)", keys["KillMode"])
	}
	var want []string
	for _, c := range agent.Capabilities(true) {
		want = append(want, c.Name)
	}
	if got := strings.Fields(strings.Join(keys["CapabilityBoundingSet"], " ")); !slices.Equal(got, want) {
		t.Errorf("nexus-agent.service: CapabilityBoundingSet %v; want agent.Capabilities(true) %v", got, want)
	}
	mgr, err := os.ReadFile(filepath.Join(dir, "nexus-manager.service"))
	if err != nil {
		t.Fatal(err)
	}
	if k := unitKeys(t, mgr); !slices.Contains(k["User"], "nexus") || !slices.Contains(k["NoNewPrivileges"], "yes") {
		t.Errorf("nexus-manager.service: User %v, NoNewPrivileges %v", k["User"], k["NoNewPrivileges"])
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: only the syntax check ran")
		return
	}
	// verify wants ExecStart to exist: point it at a binary that does.
	tmp := t.TempDir()
	for _, name := range []string{"nexus-manager.service", "nexus-agent.service"} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/nexus"), []byte("/bin/true"))
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", filepath.Join(tmp, name)).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

var unitLine = regexp.MustCompile(`^([A-Za-z]+)=(.*)$`)

// unitKeys parses a unit file: sections, Key=value lines, comments; any
// other line fails the test.
func unitKeys(t *testing.T, b []byte) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case line == "[Unit]" || line == "[Service]" || line == "[Install]":
			section = line
		case section != "" && unitLine.MatchString(line):
			m := unitLine.FindStringSubmatch(line)
			out[m[1]] = append(out[m[1]], m[2])
		default:
			t.Errorf("line %d: %q is not a section or Key=value", i+1, line)
		}
	}
	return out
}
