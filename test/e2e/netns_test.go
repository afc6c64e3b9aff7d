package e2e

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A host of the test fleet is a network namespace of its own, joined to the
// test's namespace (where the manager runs) by a veth pair, with a default
// route through it: each agent has its own bridge, TAPs, NAT and
// forwarding, as on separate machines.

// execEnv names, for the test binary re-executed as a launcher, the
// program to exec inside the namespace passed as fd 3.
const execEnv = "NEXUS_E2E_EXEC"

// netnsFDEnv, for the launcher, names the fd of the namespace when it is
// not 3 (a browser's DevTools pipes are fds 3 and 4).
const netnsFDEnv = "NEXUS_E2E_NETNS_FD"

// runLauncher, when the test binary runs as a launcher, enters the network
// namespace on fd 3 (or netnsFDEnv's) and execs the program: the whole
// process (and its children, the VMMs) then lives in that namespace. It
// does not return.
func runLauncher() {
	bin := os.Getenv(execEnv)
	if bin == "" {
		return
	}
	fd := 3
	if v := os.Getenv(netnsFDEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "launcher:", netnsFDEnv, err)
			os.Exit(2)
		}
		fd = n
	}
	runtime.LockOSThread()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		fmt.Fprintln(os.Stderr, "launcher: setns:", err)
		os.Exit(2)
	}
	_ = unix.Close(fd)
	if keep := os.Getenv(capsEnv); keep != "" {
		if err := keepOnlyCaps(keep); err != nil {
			fmt.Fprintln(os.Stderr, "launcher: capabilities:", err)
			os.Exit(2)
		}
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, execEnv+"=") || strings.HasPrefix(kv, capsEnv+"=") || strings.HasPrefix(kv, netnsFDEnv+"=") {
			continue
		}
		env = append(env, kv)
	}
	err := syscall.Exec(bin, append([]string{bin}, os.Args[1:]...), env)
	fmt.Fprintln(os.Stderr, "launcher: exec:", err)
	os.Exit(2)
}

// capsEnv, for the launcher, lists the capabilities (numbers, comma
// separated) the program may have: every other one leaves the bounding
// set before the exec, so a root program runs with exactly those.
const capsEnv = "NEXUS_E2E_CAPS"

// keepOnlyCaps drops from this thread's bounding set every capability not
// in the comma-separated list keep.
func keepOnlyCaps(keep string) error {
	want := map[int]bool{}
	for _, f := range strings.Split(keep, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%s=%q: %w", capsEnv, keep, err)
		}
		want[n] = true
	}
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return err
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if !want[c] {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("drop %d: %w", c, err)
			}
		}
	}
	return nil
}

var hostSeq atomic.Int32

// hostNet is one simulated host's network namespace.
type hostNet struct {
	ns      netns.NsHandle
	nl      *netlink.Handle // netlink inside the namespace
	outer   string          // veth end in the test's namespace
	hostIP  string          // the test's side (the manager's address for this host)
	agentIP string          // the host's side
}

func newHostNet(t testing.TB) *hostNet {
	t.Helper()
	i := hostSeq.Add(1)
	if i > 250 {
		t.Fatal("too many test hosts")
	}
	h := &hostNet{
		outer:   fmt.Sprintf("nxh%da", i),
		hostIP:  fmt.Sprintf("10.201.%d.1", i),
		agentIP: fmt.Sprintf("10.201.%d.2", i),
	}
	var err error
	if h.ns, h.nl, err = newNetNS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.close)
	inner := fmt.Sprintf("nxh%db", i)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.outer}, PeerName: inner}
	must := func(what string, err error) {
		if err != nil {
			t.Fatalf("host net %d: %s: %v", i, what, err)
		}
	}
	must("add veth", netlink.LinkAdd(veth))
	peer, err := netlink.LinkByName(inner)
	must("find peer", err)
	must("move peer", netlink.LinkSetNsFd(peer, int(h.ns)))
	out, err := netlink.LinkByName(h.outer)
	must("find veth", err)
	must("address", netlink.AddrAdd(out, mustAddr(h.hostIP+"/24")))
	must("up", netlink.LinkSetUp(out))
	in, err := h.nl.LinkByName(inner)
	must("find inner", err)
	must("inner address", h.nl.AddrAdd(in, mustAddr(h.agentIP+"/24")))
	must("inner up", h.nl.LinkSetUp(in))
	must("default route", h.nl.RouteAdd(&netlink.Route{LinkIndex: in.Attrs().Index, Gw: net.ParseIP(h.hostIP)}))
	return h
}

// newNetNS makes a network namespace with its loopback up
// (testutil.NewNetNS) and a netlink handle that works in it.
func newNetNS() (netns.NsHandle, *netlink.Handle, error) {
	ns, err := testutil.NewNetNS()
	if err != nil {
		return 0, nil, err
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return 0, nil, err
	}
	return ns, nl, nil
}

// nsFile returns a duplicate of a namespace fd for a child's ExtraFiles
// (close-on-exec here: the child gets it through ExtraFiles only).
func nsFile(ns netns.NsHandle) (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "netns"), nil
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// file returns a duplicate of the namespace fd for a child's ExtraFiles.
func (h *hostNet) file() (*os.File, error) { return nsFile(h.ns) }

// hasLink reports whether a link of that name exists in the host.
func (h *hostNet) hasLink(name string) bool {
	_, err := h.nl.LinkByName(name)
	return err == nil
}

// close removes the veth (its peer goes with it) and drops our references:
// the namespace, its bridge and TAPs vanish once no process is left in it.
func (h *hostNet) close() {
	if l, err := netlink.LinkByName(h.outer); err == nil {
		_ = netlink.LinkDel(l)
	}
	if h.nl != nil {
		h.nl.Close()
	}
	h.ns.Close()
}
