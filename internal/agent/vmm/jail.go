package vmm

import (
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/jail"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// Jail mode (docs/security.md): every VMM runs as a uid and gid of its own
// from a configured range, in a chroot under $FC_RUN_DIR/jail that holds
// only its socket, its logs and metrics, the files it was given (hard
// links) and its device nodes, in new mount and PID namespaces, in its
// cgroup with limits from the VM's size, with no capabilities and
// no_new_privs. The helper (package jail) or firecracker's jailer sets
// that up between fork and exec; the supervisor prepares the chroot, the
// uid and the cgroups, and finds the API socket the VMM made in its jail.

// Defaults of the jail uid range: above the ranges login.defs, subuid and
// systemd (system, dynamic, container) hand out, below the "foreign" range.
const (
	DefaultJailUIDBase  = 2_000_000_000
	DefaultJailUIDCount = 65536
)

// JailConfig turns jail mode on.
type JailConfig struct {
	// UIDBase and UIDCount are the uid (and gid) range; each live VMM has
	// one of them to itself. Agents sharing a host need distinct ranges.
	UIDBase, UIDCount int
	// Jailer is firecracker's jailer binary; empty: the agent's helper
	// confines the VMM itself, with the same layout and steps.
	Jailer string
	// Helper is the nexus-jail binary; empty: nexus-jail next to this
	// executable, else this executable re-executed as nexus-jail.
	Helper string
}

// JailInfo is how a VMM is confined; it is saved in its handle.
type JailInfo struct {
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
	Root   string `json:"root"` // the chroot directory on the host
	Jailer bool   `json:"jailer,omitempty"`
}

// Dir is the VMM's chroot as the agent handles it.
func (j *JailInfo) Dir() jail.Dir { return jail.Dir{Path: j.Root, UID: j.UID, GID: j.GID} }

type jailState struct {
	cfg      JailConfig
	helper   string
	base     string // canonical chroot base: $FC_RUN_DIR/jail
	execName string // the VMM binary's name, as the jailer derives it
	exec     string // the VMM binary, symlinks resolved
	v2       map[string]bool
	// Under Supervisor.mu: uids of spawns in flight, and where the next
	// search starts (uids are handed out round-robin, so a freed uid is
	// not reused at once).
	reserved map[int]string
	next     int

	scanMu    sync.Mutex
	scanned   map[int]bool // foreignUIDs' last scan
	scannedAt time.Time
}

// JailUIDRange validates a uid range.
func JailUIDRange(base, count int) error {
	switch {
	case base <= 0:
		return fmt.Errorf("jail uid base %d: must be above 0 (a jailed VMM never runs as root)", base)
	case count <= 0:
		return fmt.Errorf("jail uid count %d: must be positive", count)
	case base+count-1 > 1<<31-2 || base+count < base:
		return fmt.Errorf("jail uid range %d+%d: beyond the largest usable uid", base, count)
	}
	return nil
}

func (s *Supervisor) initJail(cfg JailConfig) error {
	if err := JailUIDRange(cfg.UIDBase, cfg.UIDCount); err != nil {
		return err
	}
	if s.cfg.Bin == "" {
		return errors.New("jail mode needs the VMM binary")
	}
	real, err := filepath.EvalSymlinks(s.cfg.Bin)
	if err != nil {
		return fmt.Errorf("jail: vmm binary: %w", err)
	}
	if err := checkStatic(real); err != nil {
		return err
	}
	base := filepath.Join(s.cfg.Layout.RunDir, jail.BaseDirName)
	if err := os.MkdirAll(base, 0o700); err != nil {
		return fmt.Errorf("jail: chroot base: %w", err)
	}
	if base, err = filepath.EvalSymlinks(base); err != nil {
		return fmt.Errorf("jail: chroot base: %w", err)
	}
	j := &jailState{cfg: cfg, base: base, exec: real, execName: filepath.Base(real), reserved: map[int]string{},
		v2: v2Controllers(s.cgroups)}
	if cfg.Jailer != "" {
		p, err := exec.LookPath(cfg.Jailer)
		if err != nil {
			return fmt.Errorf("jailer %q: %w", cfg.Jailer, err)
		}
		if j.cfg.Jailer, err = filepath.Abs(p); err != nil {
			return err
		}
	}
	if j.helper, err = findHelper(cfg.Helper); err != nil {
		return err
	}
	s.jail = j
	return nil
}

// checkStatic refuses a dynamically linked VMM binary: its chroot holds
// no dynamic loader and no libc, so it could not even start there.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("jail: vmm binary %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("jail mode: the VMM binary %s is dynamically linked, and its chroot has no dynamic loader or libc: "+
				"use a static binary (firecracker releases are; build firecracker-sim with CGO_ENABLED=0, as `make build` does)", bin)
		}
	}
	return nil
}

// findHelper resolves the nexus-jail helper: the configured one, the one
// installed next to this executable (a small binary: fastest), or this
// executable itself, which runs the helper when started under its name.
func findHelper(configured string) (string, error) {
	if configured != "" {
		p, err := exec.LookPath(configured)
		if err != nil {
			return "", fmt.Errorf("jail helper %q: %w", configured, err)
		}
		return filepath.Abs(p)
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("jail helper: %w", err)
	}
	if p := filepath.Join(filepath.Dir(self), jail.HelperName); isExecutable(p) {
		return p, nil
	}
	return self, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// JailMode describes jail mode for logs and health: "off", "helper"
// (the agent confines VMMs itself) or "jailer".
func (s *Supervisor) JailMode() string {
	switch {
	case s.jail == nil:
		return "off"
	case s.jail.cfg.Jailer != "":
		return "jailer"
	}
	return "helper"
}

// JailHelper is the helper binary in use ("" without jail mode).
func (s *Supervisor) JailHelper() string {
	if s.jail == nil {
		return ""
	}
	return s.jail.helper
}

// MissingLimits lists the cgroup limits (memory, cpu) that no hierarchy
// of this host can take for jailed VMMs.
func (s *Supervisor) MissingLimits() []string {
	if s.jail == nil || s.cfg.Scoper != nil {
		return nil
	}
	var out []string
	for _, c := range []string{"memory", "cpu"} {
		if !s.jail.v2[c] && !hasV1(c) {
			out = append(out, c)
		}
	}
	return out
}

func hasV1(controller string) bool {
	for _, m := range cgroupMounts() {
		for _, c := range m.controllers {
			if c == controller && !m.v2 {
				return true
			}
		}
	}
	return false
}

// jailExecName is the VMM binary's name in its chroot.
func (s *Supervisor) jailExecName() string {
	if s.jail == nil {
		return filepath.Base(s.cfg.Bin)
	}
	return s.jail.execName
}

// jailRoot is vmID's chroot and jailDir the directory that holds it.
func (j *jailState) jailRoot(vmID string) string { return jail.Root(j.base, j.execName, vmID) }
func (j *jailState) jailDir(vmID string) string  { return jail.InstanceDir(j.base, j.execName, vmID) }

// allocUID reserves a uid of the range for vmID: one no live or starting
// VMM of this agent has and no process on the host runs as (another agent
// with an overlapping range, anything else). The caller releases the
// reservation once the VMM's handle is tracked (or the spawn failed).
func (s *Supervisor) allocUID(vmID string) (int, func(), error) {
	foreign := s.foreignUIDs()
	s.mu.Lock()
	defer s.mu.Unlock()
	used := map[int]bool{}
	for uid := range s.jail.reserved {
		used[uid] = true
	}
	for _, p := range s.procs {
		if p.h.Jail != nil && !p.exited {
			used[p.h.Jail.UID] = true
		}
	}
	n := s.jail.cfg.UIDCount
	for i := range n {
		off := (s.jail.next + i) % n
		uid := s.jail.cfg.UIDBase + off
		if used[uid] || foreign[uid] {
			continue
		}
		s.jail.next = (off + 1) % n
		s.jail.reserved[uid] = vmID
		return uid, func() {
			s.mu.Lock()
			delete(s.jail.reserved, uid)
			s.mu.Unlock()
		}, nil
	}
	return 0, nil, fmt.Errorf("no free uid in the jail range %d–%d (%d VMMs use them): raise --jail-uid-count",
		s.jail.cfg.UIDBase, s.jail.cfg.UIDBase+n-1, len(used))
}

// foreignUIDs are the uids of the range that processes on the host run
// as, looked up at most once a second: a scan of /proc per spawn would
// cost a stat per process of the host, and spawns come in bursts. (Our own
// VMMs are known from their handles, whatever the scan says.)
func (s *Supervisor) foreignUIDs() map[int]bool {
	s.jail.scanMu.Lock()
	defer s.jail.scanMu.Unlock()
	if s.jail.scanned == nil || time.Since(s.jail.scannedAt) > time.Second {
		s.jail.scanned, s.jail.scannedAt = uidsInUse(s.jail.cfg.UIDBase, s.jail.cfg.UIDCount), time.Now()
	}
	return s.jail.scanned
}

// uidsInUse returns the uids in [base, base+count) that some process on
// the host runs as (the owner of /proc/<pid> is its effective uid).
func uidsInUse(base, count int) map[int]bool {
	out := map[int]bool{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		fi, err := os.Stat("/proc/" + e.Name())
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) >= base && int(st.Uid) < base+count {
			out[int(st.Uid)] = true
		}
	}
	return out
}

// prepareJail makes vmID's chroot for a VMM that will run as uid: a fresh
// directory (what a previous boot left is removed), its socket directory
// (the VMM's, at the socket's host path: paths mean the same inside and
// outside), its log and metrics files linked in, and for the helper a
// /dev mount point and the binary's mount point.
func (s *Supervisor) prepareJail(l hostlayout.Layout, vmID string, uid int) (*JailInfo, error) {
	j := s.jail
	if err := os.RemoveAll(j.jailDir(vmID)); err != nil {
		return nil, fmt.Errorf("remove the old jail: %w", err)
	}
	root := j.jailRoot(vmID)
	for _, d := range []string{filepath.Dir(filepath.Dir(root)), filepath.Dir(root), root} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("jail: %w", err)
		}
		if err := os.Chmod(d, 0o755); err != nil { // whatever the umask: the VMM traverses it
			return nil, fmt.Errorf("jail: %w", err)
		}
	}
	info := &JailInfo{UID: uid, GID: uid, Root: root, Jailer: j.cfg.Jailer != ""}
	d := info.Dir()
	if !info.Jailer {
		if err := d.MkdirAll("dev", false); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(root, j.execName), os.O_CREATE|os.O_WRONLY|os.O_EXCL|syscall.O_NOFOLLOW, 0o755)
		if err != nil {
			return nil, fmt.Errorf("jail: binary mount point: %w", err)
		}
		f.Close()
	}
	rel, err := jail.Rel(l.SockDir(vmID), j.execName)
	if err != nil {
		return nil, err
	}
	if err := d.MkdirAll(rel, true); err != nil {
		return nil, err
	}
	for _, p := range []string{l.LogPath(vmID), l.MetricsPath(vmID)} {
		if err := exposeOwn(d, p, j.execName); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// exposeOwn hands a file of the VM's run dir to its VMM: owned by its
// uid, linked at the same path inside the jail.
func exposeOwn(d jail.Dir, path, execName string) error {
	rel, err := jail.Rel(path, execName)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	defer f.Close()
	if err := f.Chown(d.UID, d.GID); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	return d.Link(rel, f)
}

// jailCommand starts the helper for vmID: in new mount and PID namespaces
// (the VMM is PID 1 of its own), in its own session, with the spec that
// confines and execs the VMM (or the jailer).
func (s *Supervisor) jailCommand(sock, vmID string, info *JailInfo, v1 []string, lim Limits, console *os.File) (*exec.Cmd, error) {
	j := s.jail
	spec := jail.Spec{Cgroups: v1, Root: info.Root, Exec: j.exec, ExecName: j.execName, UID: info.UID, GID: info.GID,
		NProc: uint64(lim.Pids), Env: append([]string{"PATH=/"}, s.cfg.Env...)}
	if info.Jailer {
		spec.Jailer = j.cfg.Jailer
		spec.Argv = JailerArgv(j.cfg.Jailer, j.exec, j.base, vmID, info.UID, info.GID, sock)
	} else {
		spec.Argv = append([]string{"/" + j.execName}, firecracker.Args{APISock: sock, ID: vmID}.Argv()...)
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: j.helper, Args: []string{jail.HelperName, string(b)}, Dir: "/",
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Stdout: console, Stderr: console}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID}
	return cmd, nil
}

// JailerArgv is the command line of firecracker's jailer for one VMM, with
// its documented flags: the chroot <base>/<exec name>/<id>/root, the uid
// and gid, and firecracker's own flags after "--" (the jailer adds --id).
// No --cgroup: the agent made the VMM's group, with its limits, and the
// jailer is born in it. No --new-pid-ns or --daemonize: the agent starts
// it in a new PID namespace and its own session itself, so firecracker
// stays the agent's child (reaped at once, its console on stdout).
func JailerArgv(jailer, bin, base, vmID string, uid, gid int, sock string) []string {
	return append([]string{jailer,
		"--id", vmID, "--exec-file", bin, "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid),
		"--chroot-base-dir", base, "--"}, firecracker.Args{APISock: sock}.Argv()...)
}

// removeJail removes vmID's chroot once no VMM of it runs (the mounts of
// a jail live in the VMM's own namespace and went with it). Only the run
// dir's jail base is ever touched.
func (s *Supervisor) removeJail(vmID string) error {
	if s.jail == nil {
		return nil
	}
	if err := os.RemoveAll(s.jail.jailDir(vmID)); err != nil {
		return fmt.Errorf("remove jail of vm %s: %w", vmID, err)
	}
	return nil
}

// pruneJails removes the chroots of VMs with no live VMM (a VMM that
// died on its own, an agent killed mid-stop), each under its VM's lock so
// a spawn in progress keeps its new jail.
func (s *Supervisor) pruneJails(live map[string]bool) {
	if s.jail == nil {
		return
	}
	entries, err := os.ReadDir(filepath.Join(s.jail.base, s.jail.execName))
	if err != nil {
		return
	}
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !hostlayout.ValidVMID(id) || live[id] {
			continue
		}
		unlock, ok := s.locks.TryLock(id)
		if !ok {
			continue // a spawn or stop has it; it tidies up itself
		}
		if _, alive := s.live(id); !alive {
			_ = s.removeJail(id)
			removeV1(s.cfg.Owner, id)
		}
		unlock()
	}
}

// jailOfProcess rebuilds the JailInfo of a VMM found by its command line
// (no readable handle): a VMM that does not run as root was jailed.
func (s *Supervisor) jailOfProcess(pid int, vmID string) *JailInfo {
	fi, err := os.Stat("/proc/" + strconv.Itoa(pid))
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 || s.jail == nil {
		return nil
	}
	return &JailInfo{UID: int(st.Uid), GID: int(st.Gid), Root: s.jail.jailRoot(vmID), Jailer: s.jail.cfg.Jailer != ""}
}

// catchesSignal reports whether pid has a handler for sig (SigCgt in
// /proc/<pid>/status). A jailed VMM is PID 1 of its namespace: the kernel
// drops signals it does not handle, so SIGTERM would only waste the stop's
// grace period on a VMM that, like firecracker, does not catch it.
func catchesSignal(pid int, sig syscall.Signal) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return true
}
