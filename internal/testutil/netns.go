package testutil

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nexus-microvm/nexus/internal/netnsutil"
)

// netnsEnv marks a test process re-executed inside its own network namespace.
const netnsEnv = "NEXUS_TEST_NETNS"

// IsolateNetwork runs the calling test binary in a network namespace of its
// own, so tests that create bridges, TAPs and NAT (and the processes they
// start) never touch the host's networking and cannot meet tests of other
// packages running at the same time. Call it first in TestMain: as root it
// re-executes the binary in a new namespace and exits with its code; in
// that child, or when not root, it returns and the tests run here.
func IsolateNetwork() {
	if os.Getenv(netnsEnv) == "1" {
		if lo, err := netlink.LinkByName("lo"); err == nil {
			_ = netlink.LinkSetUp(lo)
		}
		return
	}
	if os.Geteuid() != 0 {
		return
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ee):
		os.Exit(ee.ExitCode())
	}
	fmt.Fprintln(os.Stderr, "testutil: cannot re-run the tests in a network namespace:", err)
	os.Exit(1)
}

// Isolated reports whether this process runs in IsolateNetwork's namespace.
func Isolated() bool { return os.Getenv(netnsEnv) == "1" }

// postgresSocketDir is where Debian's Postgres listens on a unix socket.
const postgresSocketDir = "/var/run/postgresql"

// reachPostgres rewrites a loopback Postgres URL to the server's unix
// socket when the tests run in their own network namespace, whose loopback
// is not the host's.
func reachPostgres(u string) string {
	if !Isolated() {
		return u
	}
	pu, err := url.Parse(u)
	if err != nil || (pu.Hostname() != "127.0.0.1" && pu.Hostname() != "localhost" && pu.Hostname() != "::1") {
		return u
	}
	if _, err := os.Stat(postgresSocketDir); err != nil {
		return u
	}
	q := pu.Query()
	q.Set("host", postgresSocketDir)
	pu.RawQuery = q.Encode()
	return pu.String()
}

// NewNetNS makes a fresh, unnamed network namespace (netnsutil.New) with
// its loopback up.
func NewNetNS() (netns.NsHandle, error) {
	ns, err := netnsutil.New()
	if err != nil {
		return netns.None(), err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return netns.None(), fmt.Errorf("netlink in the new namespace: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		ns.Close()
		return netns.None(), fmt.Errorf("lo up in the new namespace: %w", err)
	}
	return ns, nil
}
