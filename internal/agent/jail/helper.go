package jail

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spec is what the helper does for one VMM. The agent passes it as JSON in
// argv[1]; the helper lives a few milliseconds, then it is the VMM.
type Spec struct {
	// Cgroups are cgroup v1 directories (one per controller) to join
	// before anything else, so the VMM is never outside its limits. A
	// cgroup v2 group is joined at birth (the agent's clone3).
	Cgroups []string `json:"cgroups,omitempty"`
	// Jailer, when set, is firecracker's jailer: it is exec'd with Argv
	// right after the cgroups are joined and confines the VMM itself.
	Jailer string `json:"jailer,omitempty"`
	// Root is the chroot directory; the helper pivots into it.
	Root string `json:"root"`
	// Exec is the VMM binary on the host, bind-mounted read-only (in the
	// VMM's own mount namespace) at /<ExecName>.
	Exec     string `json:"exec"`
	ExecName string `json:"exec_name"`
	UID      int    `json:"uid"`
	GID      int    `json:"gid"`
	// NoFile is RLIMIT_NOFILE for the VMM (0: DefaultNoFile).
	NoFile uint64 `json:"no_file,omitempty"`
	// NProc bounds the VMM's tasks (threads) with RLIMIT_NPROC, which
	// counts per uid: each jailed VMM has a uid of its own, so this is its
	// own limit, without a cgroup migration (0: none).
	NProc uint64   `json:"nproc,omitempty"`
	Argv  []string `json:"argv"`
	Env   []string `json:"env,omitempty"`
}

// Validate refuses a spec that would not confine: root uid or gid, a
// relative root, no argv.
func (s Spec) Validate() error {
	switch {
	case s.UID <= 0 || s.GID <= 0:
		return fmt.Errorf("jail: uid %d / gid %d: a jailed VMM never runs as root", s.UID, s.GID)
	case len(s.Argv) == 0:
		return errors.New("jail: no command")
	case s.Jailer != "":
		return nil
	case !filepath.IsAbs(s.Root) || filepath.Clean(s.Root) == "/":
		return fmt.Errorf("jail: chroot %q must be an absolute directory other than /", s.Root)
	case !filepath.IsAbs(s.Exec) || s.ExecName == "" || strings.Contains(s.ExecName, "/"):
		return fmt.Errorf("jail: VMM binary %q / name %q", s.Exec, s.ExecName)
	}
	return nil
}

// RunIfHelper runs the helper and never returns when this process was
// started as it (argv[0] is HelperName): the nexus binary and test binaries
// call it first thing in main or TestMain, so the agent can re-execute
// itself as the helper when no nexus-jail binary is installed.
func RunIfHelper() {
	if filepath.Base(os.Args[0]) == HelperName {
		HelperMain()
	}
}

// HelperMain is the helper's main: it reads the spec from argv[1], sets
// up the confinement and execs the VMM. On failure it says why on stderr
// (the VMM's console log, which the agent quotes) and exits 1.
func HelperMain() {
	// no_new_privs and the capability bounding set are per thread: they
	// must be set on the thread that calls execve.
	runtime.LockOSThread()
	var s Spec
	err := errors.New("usage: nexus-jail SPEC-JSON (started by the agent)")
	if len(os.Args) == 2 {
		if err = json.Unmarshal([]byte(os.Args[1]), &s); err == nil {
			err = s.Validate()
		}
	}
	if err == nil {
		err = s.run() // returns only on failure
	}
	fmt.Fprintf(os.Stderr, "nexus-jail: %v\n", err)
	os.Exit(1)
}

// run confines this process and execs the VMM, in the jailer's order:
// cgroups, mount namespace and pivot_root, device nodes, limits, then the
// identity and the privileges go, and last the exec.
func (s Spec) run() error {
	if s.NProc > 0 {
		// Set while still root, kept across the setuid and the execs (the
		// jailer's too).
		if err := unix.Setrlimit(unix.RLIMIT_NPROC, &unix.Rlimit{Cur: s.NProc, Max: s.NProc}); err != nil {
			return fmt.Errorf("limit tasks: %w", err)
		}
	}
	for _, cg := range s.Cgroups {
		// "0" in tasks moves the writing thread (cgroup v1): the one that
		// will exec the VMM; the runtime's other threads end at the exec.
		// Moving one's own thread skips the global threadgroup lock (and
		// its RCU grace period) that moving a whole process takes, which
		// concurrent spawns would queue for.
		if err := os.WriteFile(filepath.Join(cg, "tasks"), []byte("0"), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", cg, err)
		}
	}
	if s.Jailer != "" {
		return fmt.Errorf("exec jailer %s: %w", s.Jailer, syscall.Exec(s.Jailer, s.Argv, s.Env))
	}
	lastCap, err := readLastCap()
	if err != nil {
		return err
	}
	uffdMinor, hasUffd := userfaultfdMinor()

	// The agent started us in a new mount namespace: nothing mounted here
	// reaches the host's mount table (slave: host unmounts still reach us,
	// so we pin nothing), and it all goes when the VMM exits.
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make mounts slave: %w", err)
	}
	// pivot_root needs the new root to be a mount point.
	if err := unix.Mount(s.Root, s.Root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind chroot %s: %w", s.Root, err)
	}
	// The binary, read-only and shared with the host's page cache, instead
	// of the jailer's per-VM copy.
	bin := filepath.Join(s.Root, s.ExecName)
	if err := unix.Mount(s.Exec, bin, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", s.Exec, err)
	}
	if err := unix.Mount("", bin, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", bin, err)
	}
	// A private /dev holding exactly the VMM's nodes; on tmpfs, so a host
	// filesystem mounted nodev does not matter and nothing stays on disk.
	dev := filepath.Join(s.Root, "dev")
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	nodes := []struct {
		name         string
		major, minor uint32
		optional     bool
	}{
		{"kvm", kvmMajor, kvmMinor, false},
		{"net/tun", tunMajor, tunMinor, false},
		{"urandom", randMajor, randMinor, true},
	}
	if hasUffd {
		nodes = append(nodes, struct {
			name         string
			major, minor uint32
			optional     bool
		}{"userfaultfd", miscMajor, uffdMinor, true})
	}
	if err := os.Mkdir(filepath.Join(dev, "net"), 0o755); err != nil {
		return fmt.Errorf("mkdir /dev/net: %w", err)
	}
	for _, n := range nodes {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(n.major, n.minor))); err != nil {
			if n.optional {
				continue
			}
			return fmt.Errorf("mknod /dev/%s: %w", n.name, err)
		}
		if err := unix.Chown(p, s.UID, s.GID); err != nil {
			return fmt.Errorf("chown /dev/%s: %w", n.name, err)
		}
	}
	if err := pivot(s.Root); err != nil {
		return err
	}

	nofile := s.NoFile
	if nofile == 0 {
		nofile = DefaultNoFile
	}
	// Only ever lowered (raising the hard limit takes CAP_SYS_RESOURCE).
	var cur unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &cur) == nil && cur.Max < nofile {
		nofile = cur.Max
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nofile, Max: nofile}); err != nil {
		return fmt.Errorf("limit open files: %w", err)
	}
	// Privileges: the bounding set first (that needs CAP_SETPCAP), then
	// the ambient set, then the identity. Leaving uid 0 clears the
	// permitted and effective sets; the inheritable set is cleared after.
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	// Credentials are per thread in Linux, and execve keeps only the
	// calling thread (and its credentials): the raw calls on this locked
	// thread are enough, and skip Go's all-threads version, which stops
	// the world and signals every thread (milliseconds per VMM).
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(s.GID), uintptr(s.GID), uintptr(s.GID)); e != 0 {
		return fmt.Errorf("setgid %d: %w", s.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(s.UID), uintptr(s.UID), uintptr(s.UID)); e != 0 {
		return fmt.Errorf("setuid %d: %w", s.UID, e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	var got [2]unix.CapUserData
	if err := unix.Capget(&hdr, &got[0]); err != nil {
		return fmt.Errorf("check capabilities: %w", err)
	}
	if got != none {
		return fmt.Errorf("capabilities left after dropping them: %+v", got)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return fmt.Errorf("exec /%s: %w", s.ExecName, syscall.Exec("/"+s.ExecName, s.Argv, s.Env))
}

// pivot makes root the process's root directory, as the jailer does:
// bind-mounted over itself (done by the caller), pivot_root into it, and
// the old root detached, so nothing of the host's tree stays reachable.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("chdir %s: %w", root, err)
	}
	if err := unix.Mkdir("old_root", 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir old_root: %w", err)
	}
	if err := unix.PivotRoot(".", "old_root"); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	if err := unix.Unmount("old_root", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	if err := unix.Rmdir("old_root"); err != nil {
		return fmt.Errorf("rmdir old_root: %w", err)
	}
	return nil
}

// readLastCap is the highest capability number this kernel knows.
func readLastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("cap_last_cap %q", b)
	}
	return n, nil
}

// userfaultfdMinor finds /dev/userfaultfd's dynamic minor in /proc/misc,
// as the jailer does; false when the host has no such device.
func userfaultfdMinor() (uint32, bool) {
	f, err := os.Open("/proc/misc")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[1] == "userfaultfd" {
			if n, err := strconv.ParseUint(fields[0], 10, 32); err == nil {
				return uint32(n), true
			}
		}
	}
	return 0, false
}
