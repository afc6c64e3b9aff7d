// Package guest_test boots the real guest images that `make images`
// builds (scripts/build-images.sh) with a real kernel: under QEMU's
// microvm machine (software emulation: firecracker's device model, with
// virtio-mmio devices described by ACPI as firecracker 1.8+ does), and under
// real firecracker where /dev/kvm works and firecracker is on PATH.
//
// Each boot gets a network namespace of its own, made here and gone
// afterwards, and in it the bridge and the VM's TAP exactly as the agent
// makes them (internal/agent/network, hostlayout's TAP name and MAC). The
// kernel command line is what internal/guest composes for firecracker. The
// harness watches the serial console for the guest's readiness line, fails
// fast with the console's tail when the guest reports a failure or the
// kernel panics, and proves the host reaches the guest over the bridge.
package guest_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/guest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// readyTimeout bounds a boot under software emulation; on this 2-core
	// machine the guest is ready in a few seconds.
	readyTimeout = 90 * time.Second
	// guestAddr is the guest's address on the agent's default bridge
	// subnet (network.DefaultGateway is 172.20.0.1/16).
	guestAddr = "172.20.0.2/16"
	guestMiB  = 256
)

// images is a set that build-images.sh made (its IMAGES_MANIFEST).
type images struct {
	Kernel, Initrd, Rootfs string
}

var (
	imagesOnce sync.Once
	imagesSet  images
	imagesErr  error
	imagesTook time.Duration
)

// repoRoot is the module's root: the tests run in test/guest.
func repoRoot() (string, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("repository root: %w", err)
	}
	return root, nil
}

// guestImages builds the image set with scripts/build-images.sh into the
// repository's .cache (gitignored), once per test binary; the script keeps
// what exists, so a warm cache costs about a second. It never registers
// anything: NEXUS_ADDR and NEXUS_TOKEN are dropped from its environment.
func guestImages(tb testing.TB) images {
	tb.Helper()
	imagesOnce.Do(func() {
		start := time.Now()
		imagesSet, imagesErr = buildImages()
		imagesTook = time.Since(start)
	})
	if imagesErr != nil {
		tb.Fatalf("guest images: %v", imagesErr)
	}
	return imagesSet
}

func buildImages() (images, error) {
	root, err := repoRoot()
	if err != nil {
		return images{}, err
	}
	tmp, err := os.MkdirTemp("", "nexus-guest-manifest-")
	if err != nil {
		return images{}, err
	}
	defer os.RemoveAll(tmp)
	manifest := filepath.Join(tmp, "manifest")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts/build-images.sh"))
	cmd.Dir = root
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NEXUS_ADDR=") && !strings.HasPrefix(kv, "NEXUS_TOKEN=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"FC_IMAGES_DIR="+filepath.Join(root, ".cache/images"),
		"IMAGES_CACHE="+filepath.Join(root, ".cache/downloads"),
		"IMAGES_MANIFEST="+manifest)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return images{}, fmt.Errorf("scripts/build-images.sh: %w\n%s", err, out)
	}
	data, err := os.ReadFile(manifest)
	if err != nil {
		return images{}, fmt.Errorf("scripts/build-images.sh wrote no manifest: %w\n%s", err, out)
	}
	var set images
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "KERNEL":
			set.Kernel = v
		case "INITRD":
			set.Initrd = v
		case "ROOTFS":
			set.Rootfs = v
		}
	}
	if set.Kernel == "" || set.Initrd == "" || set.Rootfs == "" {
		return images{}, fmt.Errorf("manifest %q lacks a file", data)
	}
	// The cache is the test's own: drop the images of older recipes so it
	// does not grow with every change to the init scripts.
	old, _ := filepath.Glob(filepath.Join(root, ".cache/images/*"))
	for _, f := range old {
		if f != set.Kernel && f != set.Initrd && f != set.Rootfs {
			_ = os.Remove(f)
		}
	}
	return set, nil
}

// requireQEMU skips without qemu-system-x86_64 (scripts/setup.sh --test
// installs it), and fails on CI, where the smoke test must run.
func requireQEMU(tb testing.TB) string {
	tb.Helper()
	testutil.RequireRoot(tb)
	p, err := exec.LookPath("qemu-system-x86_64")
	if err == nil {
		return p
	}
	if testutil.OnCI() {
		tb.Fatal("qemu-system-x86_64 is not installed on CI: `scripts/setup.sh --test` installs it (package qemu-system-x86)")
	}
	tb.Skip("skipping: the guest smoke test boots a real kernel under qemu-system-x86_64; install it with `scripts/setup.sh --test`")
	return ""
}

// requireFirecracker skips unless a real firecracker and a usable
// /dev/kvm are present (never the case on CI or on this machine).
func requireFirecracker(tb testing.TB) string {
	tb.Helper()
	testutil.RequireRoot(tb)
	p, err := exec.LookPath("firecracker")
	if err != nil {
		tb.Skip("skipping: no firecracker on PATH (the qemu smoke test covers the guest images)")
	}
	if out, err := exec.Command(p, "--version").Output(); err != nil || strings.Contains(string(out), "-sim") {
		tb.Skipf("skipping: %s is not a real firecracker (%q, %v)", p, strings.TrimSpace(string(out)), err)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		tb.Skipf("skipping: firecracker needs a usable /dev/kvm: %v", err)
	}
	f.Close()
	return p
}

// vmm names the VMM a boot runs under.
type vmm string

const (
	vmmQEMU        vmm = "qemu"
	vmmFirecracker vmm = "firecracker"
)

// bootSpec is one boot.
type bootSpec struct {
	VMM    vmm
	Bin    string // the VMM binary
	Images images
	// NoInitrd boots the kernel alone.
	NoInitrd bool
	// ReadWrite attaches the root drive read-write (a copy of the image).
	ReadWrite bool
	// UserArgs are boot_args as a user would give them.
	UserArgs string
}

// vm is one booted guest and everything made for it.
type vm struct {
	id      string
	tap     string
	mac     net.HardwareAddr
	addr    netip.Prefix
	args    string // the kernel command line given to the VMM
	ns      netns.NsHandle
	nsIno   uint64
	net     *network.Network
	dir     string // temp dir: rootfs copy, console log, VMM config
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the VMM has been reaped
	waitErr error
	con     *console
	started time.Time
	closed  sync.Once
}

// newVMID is a random VM id in hostlayout's canonical form.
func newVMID(tb testing.TB) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	id := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	if !hostlayout.ValidVMID(id) {
		tb.Fatalf("made an invalid VM id %q", id)
	}
	return id
}

// startVM prepares the network namespace, bridge and TAP, composes the
// kernel command line and starts the VMM. Its cleanup (registered first,
// so it runs even when a later step fails) stops and reaps the VMM,
// removes TAP, bridge, namespace and files, and checks they are gone.
func startVM(tb testing.TB, spec bootSpec) *vm {
	tb.Helper()
	v := &vm{id: newVMID(tb), addr: netip.MustParsePrefix(guestAddr), ns: netns.None(), exited: make(chan struct{})}
	v.tap, v.mac = hostlayout.TapName(v.id), hostlayout.GuestMAC(v.id)
	tb.Cleanup(func() { v.close(tb) })

	var err error
	if v.dir, err = os.MkdirTemp("", "nexus-guest-"); err != nil {
		tb.Fatal(err)
	}
	if v.ns, v.nsIno, err = newNetNS(); err != nil {
		tb.Fatal(err)
	}
	// The agent's own calls, in the namespace: bridge with the default
	// gateway, no NAT (the namespace has no uplink), then the VM's TAP.
	v.net, err = network.New(network.Config{Owner: "guesttest", Bridge: network.DefaultBridge, Gateway: network.DefaultGateway,
		Uplink: network.UplinkNone, NetNS: v.ns}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	br, err := v.net.EnsureBridge(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	if err := v.net.EnsureTap(ctx, v.tap, v.id); err != nil {
		tb.Fatal(err)
	}

	// Exactly the command line the manager gives firecracker for a VM
	// with this root drive and this address on the bridge.
	v.args, err = guest.VM{UserArgs: spec.UserArgs, RootDevice: "/dev/vda", RootReadOnly: !spec.ReadWrite,
		Addr: v.addr, Gateway: br.Gateway.Addr()}.CommandLine()
	if err != nil {
		tb.Fatal(err)
	}

	// The VM's private copy of the rootfs, as the agent makes one.
	rootfs := filepath.Join(v.dir, "rootfs.ext4")
	if out, err := exec.Command("cp", "--sparse=always", spec.Images.Rootfs, rootfs).CombinedOutput(); err != nil {
		tb.Fatalf("copy rootfs: %v: %s", err, out)
	}
	if err := os.Chmod(rootfs, 0o600); err != nil {
		tb.Fatal(err)
	}

	switch spec.VMM {
	case vmmQEMU:
		v.cmd = v.qemuCmd(spec, rootfs)
	case vmmFirecracker:
		v.cmd, err = v.firecrackerCmd(spec, rootfs)
		if err != nil {
			tb.Fatal(err)
		}
	default:
		tb.Fatalf("unknown VMM %q", spec.VMM)
	}
	if err := v.start(); err != nil {
		tb.Fatalf("start %s: %v", spec.VMM, err)
	}
	// The VMM must live in the test's namespace, never the host's.
	if ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/net", v.cmd.Process.Pid)); err != nil || ino != v.nsIno {
		tb.Fatalf("%s (pid %d) is not in the test's network namespace (%d, want %d): %v", spec.VMM, v.cmd.Process.Pid, ino, v.nsIno, err)
	}
	return v
}

// qemuCmd is QEMU's microvm machine with firecracker's devices: serial
// console on stdout, a virtio-mmio block device for root, a virtio-mmio
// NIC on the agent's TAP with the VM's MAC.
func (v *vm) qemuCmd(spec bootSpec, rootfs string) *exec.Cmd {
	ro := "on"
	if spec.ReadWrite {
		ro = "off"
	}
	args := []string{
		"-M", "microvm,acpi=on", "-m", fmt.Sprint(guestMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
		// A reboot (panic=1 after a kernel panic) ends the process, as it
		// ends firecracker.
		"-no-reboot",
		// Guest time follows the instructions executed, not the host's
		// clock. Without it, a loaded host (parallel tests, two shared
		// cores) preempts the emulator in the middle of the kernel's
		// TSC-against-PIT calibration: "tsc: Fast TSC calibration failed",
		// "Marking TSC unstable", and the boot hangs. Under firecracker the
		// guest has kvm-clock and never calibrates this way.
		"-icount", "shift=auto",
		"-kernel", spec.Images.Kernel,
		"-append", v.args,
		"-drive", "id=root,file=" + rootfs + ",format=raw,if=none,readonly=" + ro,
		"-device", "virtio-blk-device,drive=root",
		"-netdev", "tap,id=n0,ifname=" + v.tap + ",script=no,downscript=no,vhost=off",
		"-device", "virtio-net-device,netdev=n0,mac=" + v.mac.String(),
	}
	if !spec.NoInitrd {
		args = append(args, "-initrd", spec.Images.Initrd)
	}
	return exec.Command(spec.Bin, args...)
}

// firecrackerCmd boots from a config file, as `firecracker --no-api`.
func (v *vm) firecrackerCmd(spec bootSpec, rootfs string) (*exec.Cmd, error) {
	cfg := firecracker.FullVMConfig{
		BootSource: &firecracker.BootSource{KernelImagePath: spec.Images.Kernel, BootArgs: v.args},
		Drives: []firecracker.Drive{{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true,
			IsReadOnly: firecracker.Bool(!spec.ReadWrite)}},
		MachineConfig:     &firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: guestMiB},
		NetworkInterfaces: []firecracker.NetworkInterface{{IfaceID: "eth0", HostDevName: v.tap, GuestMAC: v.mac.String()}},
	}
	if !spec.NoInitrd {
		cfg.BootSource.InitrdPath = spec.Images.Initrd
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(v.dir, "vm.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, err
	}
	// Firecracker opens its log file without creating it.
	logPath := filepath.Join(v.dir, "fc.log")
	if err := os.WriteFile(logPath, nil, 0o600); err != nil {
		return nil, err
	}
	argv := firecracker.Args{ID: v.id, ConfigFile: path, NoAPI: true, LogPath: logPath}.Argv()
	return exec.Command(spec.Bin, argv...), nil
}

// start runs the VMM from a thread inside the namespace, so it is born
// there (with its TAP). That thread stays with the process until it is
// reaped: Pdeathsig fires when the thread that started a process ends.
func (v *vm) start() error {
	v.cmd.Dir = v.dir
	v.cmd.Stdin = nil // /dev/null: nobody types on the console
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	v.cmd.Stderr = &lockedWriter{w: &stderr}
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	logFile, err := os.Create(filepath.Join(v.dir, "console.log"))
	if err != nil {
		return err
	}
	v.con = newConsole(logFile)
	started := make(chan error, 1)
	go func() {
		defer close(v.exited)
		err := withNS(v.ns, func() error {
			v.started = time.Now()
			if err := v.cmd.Start(); err != nil {
				return err
			}
			started <- nil
			v.con.run(stdout) // until the VMM closes its stdout
			v.waitErr = v.cmd.Wait()
			if s := strings.TrimSpace(stderr.String()); s != "" && v.waitErr != nil {
				v.waitErr = fmt.Errorf("%w: %s", v.waitErr, s)
			}
			return nil
		})
		logFile.Close()
		select {
		case started <- err: // the VMM never started
		default:
		}
	}()
	return <-started
}

// bootError is a boot that did not reach readiness, with the console's
// last lines: what a user needs to see first.
type bootError struct {
	Reason string
	Tail   []string
}

func (e *bootError) Error() string {
	return fmt.Sprintf("guest did not become ready: %s\n--- console (last %d lines) ---\n%s",
		e.Reason, len(e.Tail), strings.Join(e.Tail, "\n"))
}

// waitReady waits for the readiness line. It returns early with a
// bootError when the guest reports a failure, the kernel panics, or the
// VMM exits; and after timeout.
func (v *vm) waitReady(timeout time.Duration) (time.Duration, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-v.con.ready:
		return v.con.readyAt.Sub(v.started), nil
	case <-v.con.failed:
		// Let the panic's trace and the reboot reach the console first,
		// briefly: the tail is the useful part of the report.
		select {
		case <-v.exited:
		case <-time.After(3 * time.Second):
		}
		return 0, &bootError{Reason: v.con.failure(), Tail: v.con.tail(40)}
	case <-v.exited:
		return 0, &bootError{Reason: fmt.Sprintf("the VMM exited before the guest was ready (%v)", v.waitErr), Tail: v.con.tail(40)}
	case <-timer.C:
		return 0, &bootError{Reason: fmt.Sprintf("no %q line on the console within %s", guest.ReadyLine, timeout), Tail: v.con.tail(40)}
	}
}

// probe proves the host reaches the guest over the bridge: an HTTP GET to
// the guest's probe listener, from inside the namespace, answered with the
// guest's fixed text. ARP and the first SYN may take a moment under
// emulation, so it retries until timeout.
func (v *vm) probe(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	target := netip.AddrPortFrom(v.addr.Addr(), guest.ProbePort).String()
	var lastErr error
	for time.Now().Before(deadline) {
		body, err := v.httpGet(target, time.Until(deadline))
		if err == nil {
			return body, nil
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond)
	}
	return "", fmt.Errorf("host → guest %s over %s: %w", target, network.DefaultBridge, lastErr)
}

func (v *vm) httpGet(target string, timeout time.Duration) (string, error) {
	conn, err := dialInNS(v.ns, target, min(timeout, 5*time.Second))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(min(timeout, 10*time.Second)))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: guest\r\n\r\n"); err != nil {
		return "", fmt.Errorf("send request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("answer %s: %q", resp.Status, body)
	}
	return string(body), nil
}

// stop ends the VMM (SIGTERM, then SIGKILL) and waits until it is reaped.
func (v *vm) stop() error {
	if v.cmd == nil || v.cmd.Process == nil {
		return nil
	}
	select {
	case <-v.exited:
		return nil
	default:
	}
	_ = v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = v.cmd.Process.Kill()
	select {
	case <-v.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) was not reaped 10s after SIGKILL", v.cmd.Path, v.cmd.Process.Pid)
	}
}

// close stops the VM and removes what was made for it, once; startVM
// registers it as a cleanup, a caller may run it earlier.
func (v *vm) close(tb testing.TB) { v.closed.Do(func() { v.cleanup(tb) }) }

// cleanup undoes startVM and proves that nothing is left: the VMM reaped,
// TAP and bridge deleted, no process or thread in the namespace, the
// temporary files removed, and no link of the VM's in the host namespace.
func (v *vm) cleanup(tb testing.TB) {
	if err := v.stop(); err != nil {
		tb.Error(err)
	}
	if v.cmd != nil && v.cmd.Process != nil {
		if err := syscall.Kill(v.cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
			tb.Errorf("left behind: VMM process %d (kill 0: %v)", v.cmd.Process.Pid, err)
		}
	}
	if v.net != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := v.net.DeleteTap(ctx, v.tap); err != nil {
			tb.Errorf("delete tap: %v", err)
		}
		if _, err := v.net.Teardown(ctx, true); err != nil {
			tb.Errorf("teardown: %v", err)
		}
		cancel()
		v.net.Close()
	}
	if v.ns.IsOpen() {
		if h, err := netlink.NewHandleAt(v.ns); err != nil {
			tb.Errorf("netlink in the test namespace: %v", err)
		} else {
			links, err := h.LinkList()
			if err != nil {
				tb.Errorf("list links: %v", err)
			}
			for _, l := range links {
				if name := l.Attrs().Name; name != "lo" {
					tb.Errorf("left behind in the test namespace: link %s (%s)", name, l.Type())
				}
			}
			h.Close()
		}
		v.ns.Close()
		if users := nsUsers(v.nsIno); len(users) > 0 {
			tb.Errorf("left behind: the test network namespace is still used by %v", users)
		}
	}
	if v.dir != "" {
		if err := os.RemoveAll(v.dir); err != nil {
			tb.Errorf("remove %s: %v", v.dir, err)
		}
		if _, err := os.Stat(v.dir); !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("left behind: %s (%v)", v.dir, err)
		}
	}
	if _, err := netlink.LinkByName(v.tap); err == nil {
		tb.Errorf("left behind: a link %s in the host namespace", v.tap)
	}
}

// console collects the VMM's serial output line by line into a file and
// memory, and signals the readiness line and the first failure line.
type console struct {
	log       io.Writer
	mu        sync.Mutex
	lines     []string
	readyAt   time.Time
	reason    string
	ready     chan struct{}
	failed    chan struct{}
	readyOnce sync.Once
	failOnce  sync.Once
}

func newConsole(log io.Writer) *console {
	return &console{log: log, ready: make(chan struct{}), failed: make(chan struct{})}
}

func (c *console) run(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		_, _ = io.WriteString(c.log, line+"\n")
		c.mu.Lock()
		c.lines = append(c.lines, line)
		c.mu.Unlock()
		if guest.IsReady(line) {
			c.readyOnce.Do(func() {
				c.mu.Lock()
				c.readyAt = time.Now()
				c.mu.Unlock()
				close(c.ready)
			})
		}
		if reason, ok := guest.Failure(line); ok {
			c.failOnce.Do(func() {
				c.mu.Lock()
				c.reason = reason
				c.mu.Unlock()
				close(c.failed)
			})
		}
	}
	// Keep draining whatever follows a read error so the VMM never blocks.
	_, _ = io.Copy(io.Discard, r)
}

func (c *console) failure() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

func (c *console) tail(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.lines) > n {
		return append([]string(nil), c.lines[len(c.lines)-n:]...)
	}
	return append([]string(nil), c.lines...)
}

func (c *console) count(pred func(string) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, l := range c.lines {
		if pred(l) {
			n++
		}
	}
	return n
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// newNetNS makes a fresh namespace (testutil.NewNetNS) and returns its
// inode too.
func newNetNS() (netns.NsHandle, uint64, error) {
	ns, err := testutil.NewNetNS()
	if err != nil {
		return netns.None(), 0, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		ns.Close()
		return netns.None(), 0, fmt.Errorf("stat network namespace: %w", err)
	}
	return ns, st.Ino, nil
}

// withNS runs fn on the calling goroutine's thread switched into ns, then
// switches the thread back. Call it on a goroutine of its own. A thread
// that cannot go back stays locked, so Go never reuses it elsewhere; one
// left in ns would also keep the namespace alive.
func withNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter the test network namespace: %w", err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("back to the original network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// dialInNS opens a TCP connection from inside ns: a socket belongs to the
// namespace of the thread that creates it, and keeps it afterwards.
func dialInNS(ns netns.NsHandle, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var c net.Conn
		err := withNS(ns, func() (err error) {
			c, err = net.DialTimeout("tcp", addr, timeout)
			return err
		})
		if err != nil && c != nil {
			c.Close()
			c = nil
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// nsUsers lists the processes and threads whose network namespace is ino.
func nsUsers(ino uint64) []string {
	var users []string
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	for _, p := range tasks {
		if i, err := nsInode(p); err == nil && i == ino {
			users = append(users, strings.TrimSuffix(strings.TrimPrefix(p, "/proc/"), "/ns/net"))
		}
	}
	return users
}
