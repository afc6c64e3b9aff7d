package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

func TestMain(m *testing.M) { simtest.Main(m) }

func run(t *testing.T, args ...string) (*os.ProcessState, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, simtest.Binary(t), args...)
	// The error is the exit status, which the process state holds.
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState, string(out)
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		signal syscall.Signal
		output string
	}{
		{name: "version", args: []string{"--version"}, output: "Firecracker v1.16.1-sim\n"},
		{name: "unknown flag", args: []string{"--api-sock=/x"}, code: 153, output: "Found argument 'api-sock=/x' which wasn't expected, or isn't valid in this context."},
		{name: "duplicate flag", args: []string{"--id", "a", "--id", "b"}, code: 153, output: "The argument 'id' was provided more than once."},
		{name: "seccomp both ways", args: []string{"--no-seccomp", "--seccomp-filter", "f"}, code: 153, output: "cannot be used together"},
		{name: "bad level", args: []string{"--level", "loud"}, code: 152, output: "Invalid value for logger level"},
		{name: "bad id aborts", args: []string{"--id", "no spaces"}, signal: syscall.SIGABRT, output: "Invalid instance ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, out := run(t, tc.args...)
			ws := st.Sys().(syscall.WaitStatus)
			if tc.signal != 0 {
				if !ws.Signaled() || ws.Signal() != tc.signal {
					t.Fatalf("status %v; want death by %v", st, tc.signal)
				}
			} else if st.ExitCode() != tc.code {
				t.Fatalf("exit %d; want %d (output %q)", st.ExitCode(), tc.code, out)
			}
			if !strings.Contains(out, tc.output) {
				t.Fatalf("output %q lacks %q", out, tc.output)
			}
		})
	}
}

type simProc struct {
	cmd  *exec.Cmd
	dir  string
	sock string
	done chan struct{}
}

func start(t *testing.T, dir string, args ...string) *simProc {
	t.Helper()
	p := &simProc{dir: dir, sock: filepath.Join(dir, "fc.sock"), done: make(chan struct{})}
	console, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	p.cmd = exec.Command(simtest.Binary(t), append([]string{"--api-sock", p.sock, "--id", "kill-test"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = console, console
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.Dial("unix", p.sock); err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatal("socket not ready")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

// TestKillLeavesOnlyFirecrackerFiles: after SIGKILL nothing remains but
// what firecracker itself would leave: its socket and the log and metrics
// files it was told to write. It starts no child process.
func TestKillLeavesOnlyFirecrackerFiles(t *testing.T) {
	dir := t.TempDir()
	p := start(t, dir, "--log-path", filepath.Join(dir, "fc.log"), "--metrics-path", filepath.Join(dir, "metrics.json"))
	c := firecracker.NewUnix(p.sock)
	defer c.CloseIdleConnections()
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, dir)
	rootfs := simtest.WriteRootfs(t, dir, 8)
	for _, err := range []error{
		c.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 64}),
		c.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel}),
		c.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true}),
		c.InstanceStart(ctx),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if kids := children(p.cmd.Process.Pid); len(kids) > 0 {
		t.Fatalf("firecracker-sim has child processes %v", kids)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"console.log", "fc.log", "fc.sock", "metrics.json", "rootfs.ext4", "vmlinux"}
	if !slices.Equal(names, want) {
		t.Fatalf("files after SIGKILL: %v; want %v (socket, log, metrics and the test's own files)", names, want)
	}
	if err := syscall.Kill(p.cmd.Process.Pid, 0); err != syscall.ESRCH {
		t.Fatalf("process %d still exists after SIGKILL: %v", p.cmd.Process.Pid, err)
	}
}

// TestSIGTERM: firecracker installs no SIGTERM handler, so the default
// action ends it: death by the signal, no exit log line.
func TestSIGTERM(t *testing.T) {
	dir := t.TempDir()
	p := start(t, dir)
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("status %v; want death by SIGTERM", p.cmd.ProcessState)
	}
	out, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	if strings.Contains(string(out), "exiting") {
		t.Fatalf("an exit line was logged on SIGTERM:\n%s", out)
	}
	if _, err := os.Stat(p.sock); err != nil {
		t.Fatalf("the socket must stay after the process dies: %v", err)
	}
}

// TestSocketInTheWay: a file at the socket path stops the start, and stays.
func TestSocketInTheWay(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "fc.sock")
	if err := os.WriteFile(sock, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, out := run(t, "--api-sock", sock)
	if st.ExitCode() != 1 || !strings.Contains(out, "Failed to open the API socket at: "+sock+". Check that it is not already used.") {
		t.Fatalf("exit %d, output %q", st.ExitCode(), out)
	}
	if b, _ := os.ReadFile(sock); string(b) != "stale" {
		t.Fatal("the file at the socket path was changed")
	}
}

// TestCtrlAltDelExitsZero: the guest shuts down and the process exits 0
// with firecracker's exit line.
func TestCtrlAltDelExitsZero(t *testing.T) {
	dir := t.TempDir()
	p := start(t, dir)
	c := firecracker.NewUnix(p.sock)
	defer c.CloseIdleConnections()
	ctx := context.Background()
	if err := c.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: simtest.WriteKernel(t, dir)}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.SendCtrlAltDel(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after SendCtrlAltDel")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	out, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	if !strings.Contains(string(out), "[kill-test:main] Firecracker exiting successfully. exit_code=0") {
		t.Fatalf("no exit line:\n%s", out)
	}
}

// TestDependencies keeps the simulator binary small, so that it starts in
// about the time any Go program needs and thousands fit on one host: no
// HTTP client, TLS or crypto code, and of Nexus only the simulator and
// Firecracker's models.
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	allowed := map[string]bool{
		"github.com/nexus-microvm/nexus/cmd/firecracker-sim":        true,
		"github.com/nexus-microvm/nexus/internal/fcsim":             true,
		"github.com/nexus-microvm/nexus/internal/firecracker/model": true,
	}
	for _, d := range deps {
		switch {
		case d == "net/http" || strings.HasPrefix(d, "crypto/") || d == "crypto":
			t.Errorf("firecracker-sim depends on %s", d)
		case strings.HasPrefix(d, "github.com/nexus-microvm/nexus/") && !allowed[d]:
			t.Errorf("firecracker-sim depends on %s", d)
		}
	}
}
