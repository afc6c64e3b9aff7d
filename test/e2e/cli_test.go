package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestCLI drives the commands a user types: tables by default, -o json,
// names or ids, one-line errors with the suggestion, and exit codes.
func TestCLI(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	kernel := simtest.WriteKernel(t, c.dir)
	run := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bins.nexus, args...)
		cmd.Env = append(os.Environ(), "NEXUS_ADDR="+c.url(), "NEXUS_TOKEN="+c.admin)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	must := func(args ...string) string {
		t.Helper()
		out, code := run(args...)
		if code != 0 {
			t.Fatalf("nexus %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}

	out := must("vm", "create", "--name", "cli-a", "--kernel-path", kernel, "--tag", "team=ci")
	if !strings.Contains(out, "cli-a\trunning") {
		t.Fatalf("create:\n%s", out)
	}
	must("vm", "create", "--name", "cli-b", "--kernel-path", kernel, "--no-start")
	if ls := must("vm", "ls"); !strings.Contains(ls, "NAME") || !strings.Contains(ls, "cli-a") || !strings.Contains(ls, "stopped") {
		t.Fatalf("ls:\n%s", ls)
	}
	var vms []apitypes.VM
	if err := json.Unmarshal([]byte(must("vm", "ls", "-o", "json", "--tag", "team=ci")), &vms); err != nil || len(vms) != 1 || vms[0].Name != "cli-a" {
		t.Fatalf("ls -o json --tag: %+v, %v", vms, err)
	}
	if get := must("vm", "get", "cli-a"); !strings.Contains(get, "state:") || !strings.Contains(get, "running") {
		t.Fatalf("get by name:\n%s", get)
	}
	must("vm", "pause", "cli-a")
	must("vm", "resume", "cli-a")
	if ev := must("vm", "events", "cli-a"); !strings.Contains(ev, "paused") || !strings.Contains(ev, "resumed") {
		t.Fatalf("events:\n%s", ev)
	}
	if logs := must("vm", "logs", "cli-a", "-n", "3"); len(strings.Split(strings.TrimSpace(logs), "\n")) != 3 {
		t.Fatalf("logs -n 3:\n%s", logs)
	}
	if hosts := must("host", "ls"); !strings.Contains(hosts, "host-0") || !strings.Contains(hosts, "ready") {
		t.Fatalf("host ls:\n%s", hosts)
	}

	// Errors: one line, the suggestion included, a non-zero exit.
	out, code := run("vm", "resume", "cli-b")
	if code == 0 || !strings.Contains(out, "cli-b\terror:") || !strings.Contains(out, "1 of 1 failed") {
		t.Fatalf("resume of a stopped VM: exit %d\n%s", code, out)
	}
	out, code = run("vm", "get", "nope")
	if code == 0 || !strings.Contains(out, `no VM named "nope"`) {
		t.Fatalf("get unknown: exit %d\n%s", code, out)
	}
	out, code = run("vm", "create", "--name", "x")
	if code == 0 || !strings.Contains(out, "kernel is required") {
		t.Fatalf("create without kernel: exit %d\n%s", code, out)
	}
	cmd := exec.Command(bins.nexus, "vm", "ls")
	cmd.Env = append(os.Environ(), "NEXUS_ADDR="+c.url(), "NEXUS_TOKEN=")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "NEXUS_TOKEN") {
		t.Fatalf("no token: %v\n%s", err, b)
	}

	// rm goes on past a bad name and reports it.
	out, code = run("vm", "rm", "cli-a", "nope", "cli-b")
	if code == 0 || !strings.Contains(out, "cli-a\tok") || !strings.Contains(out, "cli-b\tok") || !strings.Contains(out, "nope\terror") {
		t.Fatalf("rm: exit %d\n%s", code, out)
	}
	c.assertNoLeaks(vms[0].ID)
}
