// Package vmm runs firecracker processes for the agent: spawn one per VM
// with firecracker's flags, wait for its API socket, stop it (SIGTERM,
// grace, SIGKILL), and find the live ones again after the agent restarts.
//
// Each VMM runs in its own session so that it outlives the agent; its
// handle (pid, start time, socket) is saved as vmm.json in the VM's run dir
// and checked against /proc on recovery, so a recycled pid is never taken
// for a VMM. When systemd is PID 1 the process is also placed in a
// transient scope fc-<vm-id>.scope; otherwise, where the cgroup v2
// hierarchy is writable, in a group of its own
// (<cgroup2>/nexus/<owner>/fc-<id>, owner being the agent's instance id).
package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/jail"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/keyed"
	"github.com/nexus-microvm/nexus/internal/sysmon"
)

// handleVersion is bumped when the vmm.json format changes.
const handleVersion = 1

// handleFile is the name of the saved handle in a VM's run dir.
const handleFile = "vmm.json"

// Handle describes one VMM process; it is saved as vmm.json.
type Handle struct {
	Version    int       `json:"version"`
	VMID       string    `json:"vm_id"`
	PID        int       `json:"pid"`
	StartTicks uint64    `json:"start_ticks"`
	Bin        string    `json:"bin"`
	APISock    string    `json:"api_sock"`
	StartedAt  time.Time `json:"started_at"`
	Vcpu       int       `json:"vcpu"`
	MemMib     int       `json:"mem_mib"`
	Scope      string    `json:"scope,omitempty"`
	Cgroup     string    `json:"cgroup,omitempty"`
	// Jail says how the VMM is confined; nil: it runs as the agent does.
	Jail *JailInfo `json:"jail,omitempty"`
}

// Exit reports that a VMM process ended.
type Exit struct {
	VMID   string
	PID    int
	Status string // "exit status 0", "signal: killed", "gone" for adopted processes
	At     time.Time
	// Expected is true when the agent ended the process itself (a stop).
	Expected bool
}

// Scoper places a process in a systemd transient scope, with limits when
// lim is not nil.
type Scoper interface {
	Attach(ctx context.Context, unit string, pid int, lim *Limits) error
}

// Config configures a Supervisor.
type Config struct {
	Bin           string // firecracker (or firecracker-sim) binary
	Layout        hostlayout.Layout
	Logger        *slog.Logger
	SocketTimeout time.Duration // how long spawn waits for the API socket
	Scoper        Scoper        // nil: supervise directly
	// Env is added to the VMM's environment (which is otherwise minimal).
	Env []string
	// Owner is the agent's instance id: cgroups live under a directory of
	// that name, so agents sharing a host never touch each other's.
	Owner string
	// Jail, when set, confines every VMM (jail.go).
	Jail *JailConfig
}

// MaxSocketPath is the longest path a unix socket can be bound at
// (sun_path is 108 bytes with the terminating NUL).
const MaxSocketPath = 107

// ErrInvalidID is returned for a VM id that is unsafe as a path or --id.
var ErrInvalidID = errors.New("invalid vm id")

type proc struct {
	h      Handle
	child  bool // started by this agent process, so we reap it
	exited bool
	status string
	// gone, for a child, is closed once it is reaped (by the watch loop
	// on SIGCHLD, or anyone's probe): a stop waits on it, not on a timer.
	gone     chan struct{}
	stopping bool // the agent itself is ending it
	// watch, while a spawn waits for the VMM's socket: its exit ends the
	// wait at once (reap), so the wait needs no timer to notice it.
	watch *sockWatch
}

// Supervisor spawns, tracks and stops VMM processes.
type Supervisor struct {
	cfg   Config
	log   *slog.Logger
	exits chan Exit

	mu    sync.Mutex
	procs map[string]*proc // by VM id, live or recently exited
	locks keyed.Mutex      // serialises operations on one VM

	cgroups string // cgroup2 dir for per-VMM groups ("" when unavailable)

	// createsLogFiles: the VMM creates its logger and metrics files when
	// they are missing (firecracker 1.14 and later).
	createsLogFiles atomic.Bool

	jail *jailState // nil: VMMs run as the agent does
}

// New returns a Supervisor. Call Recover to adopt VMMs of a previous agent
// process and Run to watch for exits.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SocketTimeout == 0 {
		cfg.SocketTimeout = 5 * time.Second
	}
	// No binary: a supervisor that only finds and stops VMMs (`nexus down`).
	if cfg.Bin != "" {
		bin, err := exec.LookPath(cfg.Bin)
		if err != nil {
			return nil, fmt.Errorf("vmm binary %q: %w", cfg.Bin, err)
		}
		if cfg.Bin, err = filepath.Abs(bin); err != nil {
			return nil, fmt.Errorf("vmm binary %q: %w", bin, err)
		}
	}
	sup := &Supervisor{
		cfg:   cfg,
		log:   cfg.Logger,
		exits: make(chan Exit, 256),
		procs: map[string]*proc{},
	}
	if cfg.Scoper == nil {
		sup.cgroups = cgroupRoot(cfg.Owner)
	}
	if cfg.Jail != nil {
		if err := sup.initJail(*cfg.Jail); err != nil {
			return nil, err
		}
	}
	return sup, nil
}

// Bin is the absolute path of the VMM binary.
func (s *Supervisor) Bin() string { return s.cfg.Bin }

// Exits delivers one Exit per VMM that ended on its own or was stopped.
// Slow readers lose events rather than block the supervisor.
func (s *Supervisor) Exits() <-chan Exit { return s.exits }

// SpawnOptions are the per-VM inputs of Spawn.
type SpawnOptions struct {
	Vcpu   int
	MemMib int
	// NetNS, when set, is a mounted network namespace the VMM is started
	// in (isolated network mode): its TAP lives there.
	NetNS string
	// OnStart, when set, is called once the new VMM's process has started,
	// before the wait for its socket: work that needs no socket (its TAP)
	// is done while the VMM gets ready. A VMM already running gets none.
	OnStart func()
	// OnSocket, when set, is given the connection that found the new
	// VMM's API socket up, instead of its being closed; it is then the
	// callee's to close. A VMM that was already running gives none.
	OnSocket func(net.Conn)
}

// Spawn starts the VMM for vmID and waits until its API socket accepts
// connections. If a live VMM for vmID exists, Spawn returns its handle and
// true. ctx bounds the wait, not the process: the VMM lives on.
func (s *Supervisor) Spawn(ctx context.Context, vmID string, opts SpawnOptions) (Handle, bool, error) {
	if !hostlayout.ValidVMID(vmID) {
		return Handle{}, false, fmt.Errorf("spawn vm %q: %w", vmID, ErrInvalidID)
	}
	if s.cfg.Bin == "" {
		return Handle{}, false, fmt.Errorf("spawn vm %s: this supervisor has no VMM binary", vmID)
	}
	defer s.locks.Lock(vmID)()

	if h, ok := s.live(vmID); ok {
		return h, true, nil
	}
	// A live VMM this supervisor does not track (its handle was lost, or
	// an agent died mid-spawn) must be adopted, not doubled.
	if h, ok := s.adopt(vmID); ok {
		return h, true, nil
	}
	l := s.cfg.Layout
	// The run dir (which the drives, prepared before, may have made) and
	// its sock dir; then the logs dir, which only a spawn makes: a first
	// spawn makes it, and nothing of an earlier VMM can be there.
	if err := os.MkdirAll(l.SockDir(vmID), 0o750); err != nil {
		return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
	}
	err := os.Mkdir(l.LogsDir(vmID), 0o750)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
	}
	fresh := err == nil
	sock := l.SockPath(vmID)
	if len(sock) > MaxSocketPath {
		return Handle{}, false, fmt.Errorf("spawn vm %s: API socket path %s is %d bytes, unix sockets allow %d: use a shorter FC_RUN_DIR", vmID, sock, len(sock), MaxSocketPath)
	}
	// firecracker refuses to start when anything exists at the socket path.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Handle{}, false, fmt.Errorf("spawn vm %s: remove stale socket: %w", vmID, err)
	}
	// Firecracker before v1.14 opens its log and metrics paths without
	// O_CREAT, so they must exist; every release writes them from offset 0
	// without truncating, so what an earlier VMM of this VM wrote is
	// emptied first: its lines would otherwise trail the new ones, and the
	// last metrics line would be a stale record. Firecracker opens them
	// when it is configured, after its socket is up, so for a VMM outside
	// a jail this is done while it starts; a jail links them in first.
	prepareFiles := func() error {
		if fresh && s.jail == nil && s.createsLogFiles.Load() {
			return nil // a jail links them in: they must exist
		}
		for _, f := range []string{l.LogPath(vmID), l.MetricsPath(vmID)} {
			fh, err := os.OpenFile(f, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
			if err != nil {
				return err
			}
			fh.Close()
		}
		return nil
	}
	if s.jail != nil {
		if err := prepareFiles(); err != nil {
			return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
		}
	}
	console, err := os.OpenFile(l.ConsolePath(vmID), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return Handle{}, false, fmt.Errorf("spawn vm %s: console log: %w", vmID, err)
	}
	defer console.Close()

	var info *JailInfo
	if s.jail != nil {
		uid, release, err := s.allocUID(vmID)
		if err != nil {
			return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
		}
		defer release() // the handle holds the uid once tracked
		if info, err = s.prepareJail(l, vmID, uid); err != nil {
			_ = s.removeJail(vmID)
			return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
		}
	}
	// Without systemd, the VMM is born in a cgroup of its own (clone3 with
	// CLONE_INTO_CGROUP): moving it there afterwards would take the
	// cgroup write lock, milliseconds per VMM and serialised across spawns.
	cg, cgfd := s.cgroupFor(vmID)
	var v1 []string
	lim := LimitsFor(opts.Vcpu, opts.MemMib)
	if info != nil && s.cfg.Scoper == nil {
		var missing []string
		v1, missing, err = applyLimits(cg, s.jail.v2, s.cfg.Owner, vmID, lim)
		if err == nil && len(missing) > 0 {
			s.log.Debug("jailed vmm without some cgroup limits: no hierarchy takes them", "vm_id", vmID, "limits", missing)
		}
		if err != nil {
			if cgfd != nil {
				cgfd.Close()
			}
			s.cleanupJail(vmID)
			return Handle{}, false, fmt.Errorf("spawn vm %s: cgroup limits: %w", vmID, err)
		}
	}
	newCmd := func() (*exec.Cmd, error) {
		if info != nil {
			return s.jailCommand(sock, vmID, info, v1, lim, console)
		}
		return s.command(l, sock, vmID, console), nil
	}
	cmd, err := newCmd()
	if err != nil {
		if cgfd != nil {
			cgfd.Close()
		}
		s.cleanupJail(vmID)
		return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
	}
	if cgfd != nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgfd.Fd())
	}
	// The VMM gets the agent's own timer slack, not that of a thread the
	// runtime's monitor started (package sysmon).
	start := func(cmd *exec.Cmd) error {
		if opts.NetNS == "" {
			return sysmon.OwnSlack(cmd.Start)
		}
		return startInNetNS(opts.NetNS, cmd)
	}
	// Watched before the VMM starts, so its socket cannot come first.
	var watch *sockWatch
	if info == nil {
		if watch, err = watchSockDir(l.SockDir(vmID)); err != nil {
			s.log.Debug("waiting for the vmm socket by polling", "vm_id", vmID, "err", err)
			watch = nil
		}
	}
	defer watch.close()
	err = start(cmd)
	if cgfd != nil {
		cgfd.Close()
		// A jailed VMM never starts outside a group that limits it.
		v2Limits := info != nil && (s.jail.v2["memory"] || s.jail.v2["cpu"])
		if err != nil && !v2Limits {
			// A kernel without CLONE_INTO_CGROUP: start it the plain way.
			cgroupRemove(s.cgroups, vmID)
			cg = ""
			if cmd, err = newCmd(); err == nil {
				err = start(cmd)
			}
		}
	}
	if err != nil {
		if info != nil {
			s.cleanupJail(vmID)
		}
		return Handle{}, false, fmt.Errorf("spawn vm %s: start %s: %w", vmID, cmd.Path, err)
	}
	pid := cmd.Process.Pid
	// We reap with wait4 in the watch loop, not with cmd.Wait, so that one
	// goroutine watches every VMM instead of one blocked thread per VMM.
	_ = cmd.Process.Release()

	h := Handle{
		Version: handleVersion, VMID: vmID, PID: pid, Bin: s.cfg.Bin, APISock: sock,
		StartedAt: time.Now().UTC(), Vcpu: opts.Vcpu, MemMib: opts.MemMib, Cgroup: cg, Jail: info,
	}
	if pi, err := readProc(pid); err == nil {
		h.StartTicks = pi.startTicks
	}
	p := &proc{h: h, child: true, watch: watch, gone: make(chan struct{})}
	s.mu.Lock()
	s.procs[vmID] = p
	s.mu.Unlock()
	fail := func(err error) (Handle, bool, error) {
		s.kill(p, 0)
		_ = os.Remove(sock)
		_ = os.Remove(filepath.Join(l.VMDir(vmID), handleFile))
		if info != nil {
			s.cleanupJail(vmID)
		}
		return Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
	}
	// The scope comes first, before the wait: systemd must not count the
	// VMM as the agent's.
	if s.cfg.Scoper != nil {
		unit := "fc-" + vmID + ".scope"
		var scopeLim *Limits
		if info != nil {
			scopeLim = &lim
		}
		if err := s.cfg.Scoper.Attach(ctx, unit, pid, scopeLim); err != nil {
			s.log.Warn("systemd scope not created; supervising directly", "vm_id", vmID, "err", err)
		} else {
			p.h.Scope = unit
		}
	}
	// The handle comes before the wait: an agent that dies during it must
	// leave a VMM it can find and stop again. It, the VMM's files and the
	// caller's OnStart are done while the VMM gets ready, in this
	// goroutine: a hand-off to another would cost a wake-up.
	if err := writeHandle(l.VMDir(vmID), p.h); err != nil {
		return fail(err)
	}
	if s.jail == nil {
		if err := prepareFiles(); err != nil {
			return fail(err)
		}
	}
	if opts.OnStart != nil {
		opts.OnStart()
	}
	conn, err := s.waitSocket(ctx, p, watch)
	s.mu.Lock()
	p.watch = nil // closing
	s.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	if opts.OnSocket != nil {
		opts.OnSocket(conn)
	} else {
		conn.Close()
	}
	if info != nil {
		s.log.Info("vmm started", "vm_id", vmID, "pid", pid, "sock", sock, "uid", info.UID, "chroot", info.Root)
	} else {
		s.log.Info("vmm started", "vm_id", vmID, "pid", pid, "sock", sock)
	}
	return p.h, false, nil
}

// SetCreatesLogFiles tells the supervisor that its VMM binary creates its
// logger and metrics files itself (firecracker.Features.CreatesLogFiles):
// a first spawn then leaves them to it.
func (s *Supervisor) SetCreatesLogFiles(v bool) { s.createsLogFiles.Store(v) }

// cleanupJail removes what a jailed spawn made besides the process: its
// chroot and its cgroup v1 groups (the v2 group goes with cgroupRemove).
func (s *Supervisor) cleanupJail(vmID string) {
	_ = s.removeJail(vmID)
	removeV1(s.cfg.Owner, vmID)
	cgroupRemove(s.cgroups, vmID)
}

// command is the VMM's command line, environment and stdio, in its own
// session: the VMM must survive the agent's exit and its signals.
func (s *Supervisor) command(l hostlayout.Layout, sock, vmID string, console *os.File) *exec.Cmd {
	args := firecracker.Args{APISock: sock, ID: vmID}
	cmd := exec.Command(s.cfg.Bin, args.Argv()...)
	cmd.Dir = l.VMDir(vmID)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.cfg.Env...)
	cmd.Stdout = console
	cmd.Stderr = console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// cgroupFor makes the VM's cgroup and opens it for CLONE_INTO_CGROUP; no
// file when cgroups are unavailable (or systemd places the VMM instead).
func (s *Supervisor) cgroupFor(vmID string) (string, *os.File) {
	if s.cfg.Scoper != nil || s.cgroups == "" {
		return "", nil
	}
	dir, f, err := cgroupOpen(s.cgroups, vmID)
	if err != nil {
		s.log.Warn("vmm stays in the agent's cgroup", "vm_id", vmID, "err", err)
		return "", nil
	}
	return dir, f
}

// adopt finds a live VMM of vmID that is not tracked — by its handle, or
// by its command line in /proc — and tracks it.
func (s *Supervisor) adopt(vmID string) (Handle, bool) {
	dir := s.cfg.Layout.VMDir(vmID)
	h, err := readHandle(dir)
	if err != nil || h.VMID != vmID || !alive(h.PID, h.StartTicks, vmID) {
		// Scanning /proc costs a read per process on the host: only when a
		// socket says a VMM may have run here (a first spawn has none).
		if _, err := os.Lstat(s.cfg.Layout.SockPath(vmID)); err != nil {
			return Handle{}, false
		}
		found := false
		for _, c := range scanVMMs(s.cfg.Layout) {
			if c.VMID == vmID {
				h, found = c, true
				break
			}
		}
		if !found {
			return Handle{}, false
		}
		h.Bin = s.cfg.Bin
		h.Jail = s.jailOfProcess(h.PID, vmID)
		_ = writeHandle(dir, h)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.procs[vmID]; ok && !p.exited {
		return p.h, true
	}
	s.procs[vmID] = &proc{h: h}
	s.log.Info("adopted untracked vmm", "vm_id", vmID, "pid", h.PID)
	return h, true
}

// watchWake is how often a wait on the socket watch wakes to see whether
// the VMM died before binding its socket. Its exit ends the wait sooner:
// the SIGCHLD sweep reaps it and interrupts the watch (reap); this is for
// a supervisor whose Run loop is not running.
var watchWake = 250 * time.Millisecond // a test makes it endless

// A socket that is bound but refuses connections is looked at again
// after naps of boundNap for boundNapFor after the bind, then on timers.
const (
	boundNap    = 50 * time.Microsecond
	boundNapFor = time.Millisecond
)

// waitSocket waits until the socket accepts a connection, which it
// returns, the process exits, or the deadline passes. With watch it sleeps
// until the socket appears; without (a jailed VMM binds inside its
// chroot), and between its bind and its listen, it polls.
func (s *Supervisor) waitSocket(ctx context.Context, p *proc, watch *sockWatch) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SocketTimeout)
	defer cancel()
	if watch != nil {
		// A caller who leaves, or the deadline, ends the wait at once.
		defer context.AfterFunc(ctx, watch.interrupt)()
	}
	// Polls every 200 µs while a VMM usually gets ready (a few ms), then
	// back off: a long first step would add its length to every spawn.
	const fast = 20 * time.Millisecond
	begin, delay := time.Now(), 200*time.Microsecond
	bound := false // the watch saw the socket appear
	var boundAt time.Time
	// A jailed VMM binds its socket inside its chroot (at the same path
	// there); a hard link brings it to its host path, where everyone
	// reaches it. (The jail path itself may be too long for a unix socket
	// address on the host.)
	var jailSock string
	if p.h.Jail != nil {
		rel, err := jail.Rel(p.h.APISock, s.jailExecName())
		if err != nil {
			return nil, err
		}
		jailSock = rel
	}
	for {
		if jailSock != "" && p.h.Jail.Dir().Exists(jailSock) {
			if err := p.h.Jail.Dir().LinkOut(jailSock, p.h.APISock); err != nil {
				return nil, err
			}
			jailSock = ""
		}
		if jailSock == "" {
			if c, err := net.DialTimeout("unix", p.h.APISock, time.Second); err == nil {
				return c, nil
			}
		}
		if s.reap(p) {
			return nil, fmt.Errorf("vmm exited before its API socket was ready (%s): %s",
				p.status, lastLines(s.cfg.Layout.ConsolePath(p.h.VMID), 3))
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("waiting for API socket %s: %w", p.h.APISock, err)
		}
		if watch != nil && !bound {
			// Sleep until the VMM creates its socket; wake now and then
			// to see whether it died first.
			if bound = watch.wait(watchWake); bound {
				boundAt = time.Now()
			}
			continue
		}
		if bound && time.Since(boundAt) < boundNapFor {
			// Bound but not yet listening: firecracker listens right
			// after it binds, but our waking at the bind may have put it
			// off its CPU in between (up to a third of the spawns on a
			// busy 2-core host). A timer this short would wait for the
			// network poller's next millisecond; a nap gives the CPU back
			// and looks again soon.
			sysmon.Nap(boundNap)
			continue
		}
		// Not yet listening (or no watch): poll.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for API socket %s: %w", p.h.APISock, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 2*time.Millisecond && time.Since(begin) > fast {
			delay *= 2
		}
	}
}

// reap checks whether p has exited, reaping it if it is our child.
// It reports true once p is gone.
func (s *Supervisor) reap(p *proc) bool {
	s.mu.Lock()
	if p.exited {
		s.mu.Unlock()
		return true
	}
	child, h := p.child, p.h
	s.mu.Unlock()
	// The probe — a wait4, or a read of /proc for an adopted VMM — runs
	// without the lock, so a slow /proc never holds up spawns, stops or the
	// inventory.
	status, gone := probe(child, h)
	if !gone {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.exited {
		return true // recorded by a concurrent probe
	}
	p.exited, p.status = true, status
	if p.gone != nil {
		close(p.gone)
	}
	if p.watch != nil {
		p.watch.interrupt()
	}
	select {
	case s.exits <- Exit{VMID: p.h.VMID, PID: p.h.PID, Status: p.status, At: time.Now().UTC(), Expected: p.stopping}:
	default:
	}
	return true
}

// probe reports whether the VMM h has exited, and how.
func probe(child bool, h Handle) (status string, gone bool) {
	if child {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(h.PID, &ws, syscall.WNOHANG, nil)
		switch {
		case pid == h.PID:
			return describe(ws), true
		case err != nil && errors.Is(err, syscall.ECHILD):
			// Already reaped elsewhere, or reparented: fall back to /proc.
		default:
			return "", false
		}
	}
	if alive(h.PID, h.StartTicks, h.VMID) {
		return "", false
	}
	return "gone", true
}

func describe(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	}
	return fmt.Sprintf("wait status %d", ws)
}

// live returns the handle of a live VMM for vmID.
func (s *Supervisor) live(vmID string) (Handle, bool) {
	s.mu.Lock()
	p, ok := s.procs[vmID]
	s.mu.Unlock()
	if !ok || s.reap(p) {
		return Handle{}, false
	}
	return p.h, true
}

// Get returns the handle of vmID's live VMM.
func (s *Supervisor) Get(vmID string) (Handle, bool) { return s.live(vmID) }

// List returns the VMMs not known to have exited, sorted by VM id. It
// reads the supervisor's state only: exits are recorded by the watch loop
// (at once for children, on SIGCHLD; every interval for adopted VMMs), so
// a heartbeat or an inventory costs no system call per VMM.
func (s *Supervisor) List() []Handle {
	s.mu.Lock()
	out := make([]Handle, 0, len(s.procs))
	for _, p := range s.procs {
		if !p.exited {
			out = append(out, p.h)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].VMID < out[j].VMID })
	return out
}

// Stop ends vmID's VMM: SIGTERM, up to grace for it to exit, then SIGKILL.
// It removes the socket and the saved handle. Stopping a VM with no live
// VMM is not an error.
func (s *Supervisor) Stop(ctx context.Context, vmID string, grace time.Duration) error {
	if !hostlayout.ValidVMID(vmID) {
		return fmt.Errorf("stop vm %q: %w", vmID, ErrInvalidID)
	}
	defer s.locks.Lock(vmID)()
	s.mu.Lock()
	p, ok := s.procs[vmID]
	s.mu.Unlock()
	if !ok {
		// Not tracked: maybe a handle from a previous agent we failed to adopt.
		if h, err := readHandle(s.cfg.Layout.VMDir(vmID)); err == nil && alive(h.PID, h.StartTicks, vmID) {
			p = &proc{h: h}
			ok = true
		}
	}
	if ok {
		if err := s.kill(p, grace); err != nil {
			return fmt.Errorf("stop vm %s: %w", vmID, err)
		}
		s.mu.Lock()
		delete(s.procs, vmID)
		s.mu.Unlock()
	}
	cgroupRemove(s.cgroups, vmID)
	removeV1(s.cfg.Owner, vmID)
	if ok && p.h.Cgroup != "" && filepath.Dir(p.h.Cgroup) != s.cgroups && strings.HasPrefix(p.h.Cgroup, cgroupBase()+"/") {
		// A group made by an agent version before per-instance groups.
		cgroupRemoveDir(p.h.Cgroup)
	}
	if err := s.removeJail(vmID); err != nil {
		return fmt.Errorf("stop vm %s: %w", vmID, err)
	}
	if ok && p.h.Jail != nil && s.jail == nil && strings.HasPrefix(p.h.Jail.Root, s.cfg.Layout.RunDir+"/") {
		// Jailed by an earlier run of the agent with jail mode on.
		if err := os.RemoveAll(filepath.Dir(p.h.Jail.Root)); err != nil {
			return fmt.Errorf("stop vm %s: remove jail: %w", vmID, err)
		}
	}
	l := s.cfg.Layout
	for _, f := range []string{l.SockPath(vmID), filepath.Join(l.VMDir(vmID), handleFile)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stop vm %s: %w", vmID, err)
		}
	}
	return nil
}

// kill sends SIGTERM, waits up to grace, then SIGKILL and waits for the
// process to be gone.
func (s *Supervisor) kill(p *proc, grace time.Duration) error {
	s.mu.Lock()
	p.stopping = true
	s.mu.Unlock()
	if s.reap(p) {
		return nil
	}
	if grace > 0 && (p.h.Jail == nil || catchesSignal(p.h.PID, syscall.SIGTERM)) {
		_ = syscall.Kill(p.h.PID, syscall.SIGTERM)
		if s.waitGone(p, grace) {
			return nil
		}
	}
	_ = syscall.Kill(p.h.PID, syscall.SIGKILL)
	if s.waitGone(p, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d did not exit after SIGKILL", p.h.PID)
}

// goneProbe is waitGone's first probe interval (a var for tests).
var goneProbe = 200 * time.Microsecond

// waitGone waits up to d for p to exit. A child's exit wakes it at once
// (the watch loop reaps it on SIGCHLD and closes p.gone); the probes on
// a timer are for adopted VMMs, and for a supervisor whose watch loop is
// not running.
func (s *Supervisor) waitGone(p *proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	delay := goneProbe
	for {
		if s.reap(p) {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		t := time.NewTimer(min(delay, left))
		select {
		case <-p.gone: // nil, never ready, for an adopted VMM
		case <-t.C:
		}
		t.Stop()
		if delay < 10*time.Millisecond {
			delay *= 2
		}
	}
}

// Recover adopts the live VMMs found under the run dir (after an agent
// restart). It never kills anything: dead handles are left for the
// manager's reconciler to clean up. It returns the adopted handles.
func (s *Supervisor) Recover() ([]Handle, error) {
	entries, err := os.ReadDir(s.cfg.Layout.VMsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("recover vmms: %w", err)
	}
	var out []Handle
	for _, e := range entries {
		if !e.IsDir() || !hostlayout.ValidVMID(e.Name()) {
			continue
		}
		h, err := readHandle(s.cfg.Layout.VMDir(e.Name()))
		if err != nil {
			continue
		}
		if h.VMID != e.Name() || !alive(h.PID, h.StartTicks, h.VMID) {
			continue
		}
		s.mu.Lock()
		if _, tracked := s.procs[h.VMID]; !tracked {
			s.procs[h.VMID] = &proc{h: h}
		}
		s.mu.Unlock()
		out = append(out, h)
	}
	defer func() {
		live := map[string]bool{}
		for _, h := range s.List() {
			live[h.VMID] = true
		}
		s.pruneAllCgroups(live)
		s.pruneJails(live)
	}()
	// VMMs without a readable handle (an agent killed between start and
	// writing it) are found by their command line.
	for _, h := range scanVMMs(s.cfg.Layout) {
		s.mu.Lock()
		_, tracked := s.procs[h.VMID]
		if !tracked {
			h.Bin = s.cfg.Bin
			h.Jail = s.jailOfProcess(h.PID, h.VMID)
			s.procs[h.VMID] = &proc{h: h}
		}
		s.mu.Unlock()
		if !tracked {
			_ = writeHandle(s.cfg.Layout.VMDir(h.VMID), h)
			out = append(out, h)
		}
	}
	return out, nil
}

// Run watches tracked VMMs until ctx ends, reaping children as soon as
// SIGCHLD arrives and checking adopted ones every interval.
func (s *Supervisor) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	// A child that exited before the signal was watched is reaped now:
	// the tick does not look at children.
	s.sweep(true)
	t := time.NewTicker(interval)
	defer t.Stop()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
			s.sweep(true)
		case <-t.C:
			// Children tell of their exit (SIGCHLD): a wait4 for each of
			// them every interval would cost a system call per VMM.
			s.sweep(false)
		case <-prune.C:
			live := map[string]bool{}
			for _, h := range s.List() {
				live[h.VMID] = true
			}
			s.pruneAllCgroups(live)
			s.pruneJails(live)
			s.sweep(true)
		}
	}
}

// sweep reaps every tracked process that has exited and forgets it;
// without children, it probes only the VMMs it adopted (and forgets
// children already known to have exited).
func (s *Supervisor) sweep(children bool) {
	s.mu.Lock()
	ps := make([]*proc, 0, len(s.procs))
	for _, p := range s.procs {
		if children || !p.child || p.exited {
			ps = append(ps, p)
		}
	}
	s.mu.Unlock()
	for _, p := range ps {
		if s.reap(p) {
			s.mu.Lock()
			gone := s.procs[p.h.VMID] == p
			if gone {
				delete(s.procs, p.h.VMID)
			}
			s.mu.Unlock()
			cgroupRemove(s.cgroups, p.h.VMID)
			if gone && p.h.Jail != nil {
				// Its chroot and limits go too, unless a spawn or stop of
				// the VM holds it (they tidy up themselves; the prune
				// catches the rest).
				if unlock, ok := s.locks.TryLock(p.h.VMID); ok {
					if _, alive := s.live(p.h.VMID); !alive {
						_ = s.removeJail(p.h.VMID)
						removeV1(s.cfg.Owner, p.h.VMID)
					}
					unlock()
				}
			}
			s.log.Info("vmm exited", "vm_id", p.h.VMID, "pid", p.h.PID, "status", p.status)
		}
	}
}

func writeHandle(dir string, h Handle) error {
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, handleFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return fmt.Errorf("save handle: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, handleFile)); err != nil {
		return fmt.Errorf("save handle: %w", err)
	}
	return nil
}

func readHandle(dir string) (Handle, error) {
	var h Handle
	b, err := os.ReadFile(filepath.Join(dir, handleFile))
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("read handle in %s: %w", dir, err)
	}
	if h.Version != handleVersion {
		return h, fmt.Errorf("read handle in %s: version %d, want %d", dir, h.Version, handleVersion)
	}
	return h, nil
}

// lastLines returns up to n last lines of a small file (the console log of
// a VMM that died at start), joined for an error message.
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return "no output; see " + path
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
