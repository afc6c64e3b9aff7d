package fcsim

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/netnsutil"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

func TestMain(m *testing.M) { simtest.Main(m) }

// inproc is the simulator running inside the test process through Run.
type inproc struct {
	dir    string
	sock   string
	stdout *testutil.SyncBuffer
	client *firecracker.Client
	done   chan int
}

// startInProc runs Run on a socket in a fresh temp dir with extra args.
func startInProc(t *testing.T, extra ...string) *inproc {
	t.Helper()
	dir := t.TempDir()
	p := &inproc{dir: dir, sock: filepath.Join(dir, "fc.sock"), stdout: &testutil.SyncBuffer{}, done: make(chan int, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	args := append([]string{"--api-sock", p.sock, "--id", "test-vm"}, extra...)
	go func() { p.done <- Run(ctx, args, p.stdout, &testutil.SyncBuffer{}, func(string) string { return "" }) }()
	waitSocket(t, p.sock, p.done)
	p.client = firecracker.NewUnix(p.sock, firecracker.WithTimeout(5*time.Second))
	t.Cleanup(func() {
		p.client.CloseIdleConnections()
		cancel()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Error("in-process simulator did not stop")
		}
	})
	return p
}

func waitSocket(t testing.TB, sock string, exited <-chan int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		select {
		case code := <-exited:
			t.Fatalf("simulator exited with %d before its socket was ready", code)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("socket %s not ready after 5s", sock)
}

// proc is firecracker-sim running as a real process.
type proc struct {
	cmd     *exec.Cmd
	dir     string
	sock    string
	console string
	client  *firecracker.Client
	waited  chan struct{}
	ns      netns.NsHandle // the process's network namespace, when it has its own
}

type procOpts struct {
	dir   string   // run dir (default: a new temp dir)
	args  []string // extra args
	env   []string
	netns bool // run in a fresh network namespace (root)
}

// startProc execs the binary with --api-sock dir/fc.sock and stdout in
// dir/console.log, and waits for the socket.
func startProc(t testing.TB, o procOpts) *proc {
	t.Helper()
	dir := o.dir
	if dir == "" {
		dir = t.TempDir()
	}
	p := &proc{dir: dir, sock: filepath.Join(dir, "fc.sock"), console: filepath.Join(dir, "console.log"), waited: make(chan struct{})}
	out, err := os.OpenFile(p.console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	args := append([]string{"--api-sock", p.sock, "--id", "proc-vm"}, o.args...)
	p.cmd = exec.Command(simtest.Binary(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.Env = append(os.Environ(), o.env...)
	if o.netns {
		p.ns = startInNewNetns(t, p.cmd)
	} else if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	go func() {
		p.cmd.Wait()
		exited <- p.cmd.ProcessState.ExitCode()
		close(p.waited)
	}()
	t.Cleanup(func() {
		p.kill()
		if p.client != nil {
			p.client.CloseIdleConnections()
		}
		if p.ns.IsOpen() {
			p.ns.Close()
		}
	})
	waitSocket(t, p.sock, exited)
	p.client = firecracker.NewUnix(p.sock, firecracker.WithTimeout(5*time.Second))
	return p
}

func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.waited
}

// wait waits for the process to exit by itself.
func (p *proc) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.waited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("process did not exit within %s", d)
		return -1
	}
}

// startInNewNetns starts cmd in a new network namespace (netnsutil): the
// child is forked from a thread that has switched into it. The test keeps
// a handle so it can create devices there; when the handle is closed and
// the process is gone, the namespace and every device in it disappear.
func startInNewNetns(t testing.TB, cmd *exec.Cmd) netns.NsHandle {
	t.Helper()
	ns, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netnsutil.Do(ns, cmd.Start); err != nil {
		ns.Close()
		t.Fatal(err)
	}
	return ns
}

// inNetns runs f on a thread inside ns (netnsutil.Do).
func inNetns(t testing.TB, ns netns.NsHandle, f func()) {
	t.Helper()
	if err := netnsutil.Do(ns, func() error { f(); return nil }); err != nil {
		t.Error(err)
	}
}

// bootConfig configures a minimal VM (kernel + rootfs) through c.
func bootConfig(t testing.TB, c *firecracker.Client, dir string) {
	t.Helper()
	ctx := context.Background()
	must(t, c.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 64}))
	must(t, c.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: simtest.WriteKernel(t, dir), BootArgs: "console=ttyS0"}))
	must(t, c.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", PathOnHost: simtest.WriteRootfs(t, dir, 16), IsRootDevice: true}))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// faultOf returns the status and fault message of a failed call.
func faultOf(t testing.TB, err error) (int, string) {
	t.Helper()
	if err == nil {
		t.Fatal("call succeeded; want an error")
	}
	ae, ok := firecracker.IsAPIError(err)
	if !ok {
		t.Fatalf("error %v is not an API error", err)
	}
	return ae.StatusCode, ae.FaultMessage
}

func wantFault(t testing.TB, err error, status int, phrase string) {
	t.Helper()
	got, msg := faultOf(t, err)
	if got != status || !strings.Contains(msg, phrase) {
		t.Fatalf("got %d %q; want %d containing %q", got, msg, status, phrase)
	}
}

// waitCounter waits until the console shows counter >= n.
func waitCounter(t testing.TB, console func() ([]byte, error), n int, d time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, err := console()
		if err != nil {
			t.Fatal(err)
		}
		c, err := simtest.LastCounter(b)
		if err == nil && c >= n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("console counter did not reach %d within %s (last: %d, %v)", n, d, c, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
