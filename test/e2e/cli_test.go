package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite test/e2e/testdata/cli/*.golden from this run (review the diff)")

// cliRun is one run of the nexus binary: what a user or a script sees.
type cliRun struct {
	stdout, stderr string
	code           int
}

// cliEnv runs the nexus binary against a cluster as its admin, with a
// config file of its own.
type cliEnv struct {
	t   *testing.T
	c   *cluster
	env []string
}

func newCLIEnv(t *testing.T, c *cluster) *cliEnv {
	return &cliEnv{t: t, c: c, env: append(os.Environ(), "NEXUS_ADDR="+c.url(), "NEXUS_TOKEN="+c.admin,
		"NEXUS_CONFIG="+filepath.Join(c.dir, "cli-config.yaml"), "NEXUS_CONTEXT=", "NEXUS_PROJECT=")}
}

func (e *cliEnv) run(extraEnv []string, args ...string) cliRun {
	e.t.Helper()
	cmd := exec.Command(bins.nexus, args...)
	cmd.Env = append(slices.Clone(e.env), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliRun{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// golden compares a run with testdata/cli/<name>.golden after removing
// what changes from run to run (ids, times, ports, paths).
func (e *cliEnv) golden(name string, r cliRun) {
	e.t.Helper()
	got := fmt.Sprintf("exit: %d\n--- stdout\n%s--- stderr\n%s", r.code, e.normalize(r.stdout), e.normalize(r.stderr))
	path := filepath.Join("testdata", "cli", name+".golden")
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			e.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatalf("%s: %v (run with -update-golden to create it)", name, err)
	}
	if string(want) != got {
		e.t.Errorf("%s differs from %s (rerun with -update-golden and review):\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

var normalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`), "<uuid>"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?`), "<time>"},
	{regexp.MustCompile(`\b\d\d:\d\d:\d\d\.\d{3}\b`), "<time>"},
	{regexp.MustCompile(`([0-9a-f]{2}:){5}[0-9a-f]{2}`), "<mac>"},
	{regexp.MustCompile(`\btap-[0-9a-z]+`), "<tap>"},
	{regexp.MustCompile(`127\.0\.0\.1:\d+|10\.\d+\.\d+\.\d+:\d+`), "<addr>"},
	{regexp.MustCompile(`"(created_at|updated_at|last_seen_at|booted_at|guest_ready_at|at)": ?"[^"]*"`), `"$1": "<time>"`},
	{regexp.MustCompile(`(?m)^(\s*(created_at|updated_at|booted_at|guest_ready_at|last_seen_at|at)): .*$`), "$1: <time>"},
	{regexp.MustCompile(`"(pid|generation)": \d+`), `"$1": 0`},
	{regexp.MustCompile(`\b\d+(\.\d+)?(ms|µs)\b`), "<duration>"},
	{regexp.MustCompile(`\b\d+(s|m|h|d)( ago)?\b`), "<age>"},
	{regexp.MustCompile(`"request_id": "[^"]*"|\[request [^\]]*\]`), "<request-id>"},
	{regexp.MustCompile(`(\S) {2,}`), "$1  "}, // column widths follow the values above
}

func (e *cliEnv) normalize(s string) string {
	s = strings.ReplaceAll(s, e.c.dir, "<dir>")
	for _, n := range normalizers {
		s = n.re.ReplaceAllString(s, n.with)
	}
	return s
}

// TestCLI drives the commands a user types and checks, for each, the exit
// code, what goes to stdout and what to stderr, in every output format
// (golden files: go test ./test/e2e -run TestCLI -update-golden rewrites
// them; review the diff).
func TestCLI(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	kernel := simtest.WriteKernel(t, c.dir)
	e := newCLIEnv(t, c)
	run := func(args ...string) cliRun { t.Helper(); return e.run(nil, args...) }

	steps := []struct {
		name string
		args []string
		code int
	}{
		{"create-table", []string{"vm", "create", "--name", "cli-a", "--kernel-path", kernel, "--tag", "team=ci"}, 0},
		{"create-json", []string{"vm", "create", "--name", "cli-b", "--kernel-path", kernel, "--no-start", "-o", "json"}, 0},
		{"ls-table", []string{"vm", "ls"}, 0},
		{"ls-wide", []string{"vm", "ls", "-o", "wide"}, 0},
		{"ls-yaml", []string{"vm", "ls", "-o", "yaml", "--tag", "team=ci"}, 0},
		{"ls-name", []string{"vm", "ls", "-o", "name"}, 0},
		{"ls-format", []string{"vm", "ls", "--format", "{{.name}} is {{.state}} with {{.vcpu}} vCPU"}, 0},
		{"ls-state", []string{"vm", "ls", "--state", "stopped", "-o", "name"}, 0},
		{"get-table", []string{"vm", "get", "cli-a"}, 0},
		{"get-name", []string{"vm", "get", "cli-a", "-o", "name"}, 0},
		{"pause", []string{"vm", "pause", "cli-a"}, 0},
		{"resume-json", []string{"vm", "resume", "cli-a", "-o", "json"}, 0},
		{"stop-name", []string{"vm", "stop", "cli-a", "-o", "name"}, 0},
		{"start-yaml", []string{"vm", "start", "cli-a", "-o", "yaml"}, 0},
		{"host-ls", []string{"host", "ls", "-o", "name"}, 0},
		{"image-ls-empty-json", []string{"image", "ls", "-o", "json"}, 0},
		{"template-ls-empty", []string{"template", "ls"}, 0},
		{"token-ls-name", []string{"token", "ls", "-o", "name"}, 0},

		// Errors: one line on stderr with what to do, nothing on stdout,
		// and the exit code of their kind.
		{"err-get-unknown", []string{"vm", "get", "nope"}, 3},
		{"err-resume-stopped", []string{"vm", "resume", "cli-b"}, 4},
		{"err-name-taken", []string{"vm", "create", "--name", "cli-a", "--kernel-path", kernel}, 4},
		{"err-no-kernel", []string{"vm", "create", "--name", "x"}, 1},
		{"err-unknown-command", []string{"vm", "frobnicate"}, 2},
		{"err-unknown-root-command", []string{"frobnicate"}, 2},
		{"err-unknown-flag", []string{"vm", "ls", "--bogus"}, 2},
		{"err-missing-arg", []string{"vm", "get"}, 2},
		{"err-bad-output", []string{"vm", "ls", "-o", "xml"}, 2},
		{"err-bad-template", []string{"vm", "ls", "--format", "{{.name"}, 2},
		{"err-wrong-token", []string{"vm", "ls", "--token", "nxs_wrong"}, 5},
		{"err-no-manager", []string{"vm", "ls", "--addr", "http://127.0.0.1:1"}, 6},

		// Several at once: every one is tried; the failures' code.
		{"rm-partial-json", []string{"vm", "rm", "cli-a", "nope", "-o", "json"}, 3},
		{"rm-quiet", []string{"vm", "rm", "cli-b", "-q"}, 0},
	}
	ids := map[string]string{}
	for _, s := range steps {
		r := run(s.args...)
		if r.code != s.code {
			t.Fatalf("nexus %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(s.args, " "), r.code, s.code, r.stdout, r.stderr)
		}
		if s.code != 0 && !strings.HasPrefix(s.name, "rm-") {
			if r.stdout != "" || !strings.HasPrefix(r.stderr, "error: ") {
				t.Errorf("%s: an error must be on stderr only, as 'error: …':\nstdout: %q\nstderr: %q", s.name, r.stdout, r.stderr)
			}
		}
		switch s.name {
		case "create-table":
			// Later outputs show the guest ready: wait for it here.
			eventually(t, 20*time.Second, "cli-a's guest ready", func() error {
				vm, err := c.client.GetVM(context.Background(), "cli-a")
				if err != nil || vm.GuestReadyAt == nil {
					return fmt.Errorf("not ready: %v", err)
				}
				return nil
			})
		case "create-json":
			var vm apitypes.VM
			if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil {
				t.Fatalf("create -o json is not a VM: %v\n%s", err, r.stdout)
			}
			ids["cli-b"] = vm.ID
		case "ls-table":
			for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
				f := strings.Fields(l)
				ids[f[1]] = f[0]
			}
		}
		e.golden(s.name, r)
	}
	if len(ids) != 2 {
		t.Fatalf("ids: %v", ids)
	}
	// -q prints ids only, one per line: what xargs wants.
	c.assertNoLeaks(ids["cli-a"], ids["cli-b"])
}

// TestCLIFollowsAndCompletes covers what runs until interrupted (ls -w,
// events -f, logs -f) and completion from a running manager.
func TestCLIFollowsAndCompletes(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	kernel := simtest.WriteKernel(t, c.dir)
	e := newCLIEnv(t, c)
	must := func(args ...string) string {
		t.Helper()
		r := e.run(nil, args...)
		if r.code != 0 {
			t.Fatalf("nexus %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	must("vm", "create", "--name", "web-1", "--kernel-path", kernel)
	must("vm", "create", "--name", "web-2", "--kernel-path", kernel, "--no-start")

	// Completion of names, from the manager.
	out := must("__complete", "vm", "stop", "web")
	if !strings.Contains(out, "web-1\n") || !strings.Contains(out, "web-2\n") || !strings.Contains(out, ":4") {
		t.Fatalf("completion of vm names:\n%s", out)
	}
	if out := must("__complete", "vm", "stop", "web-1", "w"); strings.Contains(out, "web-1\n") || !strings.Contains(out, "web-2\n") {
		t.Fatalf("completion offers names already given:\n%s", out)
	}
	if out := must("completion", "bash"); !strings.Contains(out, "__start_nexus") {
		t.Fatalf("completion bash:\n%.200s", out)
	}

	// ls -w: the list, then a line per change, until interrupted.
	w := startCLI(t, e, "vm", "ls", "-w", "--interval", "200ms", "-o", "json")
	w.waitFor(t, `"ADDED"`, "web-2")
	must("vm", "start", "web-2")
	w.waitFor(t, `"MODIFIED"`, `"running"`)
	must("vm", "rm", "web-2")
	w.waitFor(t, `"DELETED"`, "web-2")
	if code := w.stop(t); code != 0 {
		t.Fatalf("ls -w ended with %d on SIGINT", code)
	}

	// events -f: the history, then new events as they happen.
	f := startCLI(t, e, "vm", "events", "web-1", "-f", "--interval", "200ms")
	f.waitFor(t, "running")
	must("vm", "pause", "web-1")
	f.waitFor(t, "paused")
	must("vm", "rm", "web-1")
	f.waitFor(t, "the VM was deleted")
	if code := f.wait(t); code != 0 {
		t.Fatalf("events -f exit %d after the VM's deletion", code)
	}
}

// bgCLI is a nexus command left running (a watch or a follow).
type bgCLI struct {
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
}

func startCLI(t *testing.T, e *cliEnv, args ...string) *bgCLI {
	t.Helper()
	b := &bgCLI{cmd: exec.Command(bins.nexus, args...), out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	b.cmd.Env = e.env
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

// waitFor waits until the output holds every one of subs.
func (b *bgCLI) waitFor(t *testing.T, subs ...string) {
	t.Helper()
	eventually(t, 15*time.Second, "output with "+strings.Join(subs, ", "), func() error {
		out := b.out.String()
		for _, s := range subs {
			if !strings.Contains(out, s) {
				return fmt.Errorf("no %q in:\n%s", s, out)
			}
		}
		return nil
	})
}

// stop interrupts it as Ctrl-C would and returns its exit code.
func (b *bgCLI) stop(t *testing.T) int {
	t.Helper()
	_ = b.cmd.Process.Signal(os.Interrupt)
	return b.wait(t)
}

func (b *bgCLI) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("still running:\n%s", b.out.String())
	}
	return b.cmd.ProcessState.ExitCode()
}
