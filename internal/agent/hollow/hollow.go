// Package hollow is a simulated host for the agent, for tests and scale
// benchmarks: the agent's whole API and inventory over VMMs that are
// firecracker-sim running inside the agent's process (goroutines, not
// processes) and TAPs that exist only in memory. Files — run dirs, API
// sockets, logs, drive copies, snapshots — are real, under the run dir.
// It needs no root, so one machine can host many hollow agents (Kubernetes'
// kubemark calls them hollow nodes), and manager tests run anywhere.
package hollow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/fcsim"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/keyed"
)

// VMMVersion is what a hollow agent reports as its VMM: simulated, and
// hollow, so the fleet's host list says so.
var VMMVersion = "hollow/" + fcsim.Version

// Network is an in-memory bridge and its TAPs.
type Network struct {
	bridge string
	mu     sync.Mutex
	taps   map[string]string // TAP name → VM id
}

// NewNetwork returns an empty in-memory network with the given bridge name.
func NewNetwork(bridge string) *Network {
	if bridge == "" {
		bridge = network.DefaultBridge
	}
	return &Network{bridge: bridge, taps: map[string]string{}}
}

// EnsureBridge reports the bridge; there is nothing to make.
func (n *Network) EnsureBridge(context.Context) (network.Bridge, error) {
	gw := network.DefaultGateway
	return network.Bridge{Name: n.bridge, Gateway: gw, Subnet: gw.Masked(), NAT: network.NATNone}, nil
}

// EnsureTap records vmID's TAP; a TAP of that name for another VM is a
// conflict, as on a real host.
func (n *Network) EnsureTap(_ context.Context, name, vmID string) error {
	if !strings.HasPrefix(name, hostlayout.TapPrefix) || len(name) > 15 {
		return fmt.Errorf("create tap %s: %w", name, network.ErrInvalidName)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if owner, ok := n.taps[name]; ok && owner != vmID {
		return fmt.Errorf("create tap %s: %w: it belongs to vm %s", name, network.ErrLinkConflict, owner)
	}
	n.taps[name] = vmID
	return nil
}

// SetTapOwner checks that vmID's TAP is recorded: hollow VMMs are never
// jailed, and an in-memory TAP has no owner to change.
func (n *Network) SetTapOwner(_ context.Context, name, vmID string, _, _ int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if owner, ok := n.taps[name]; !ok || owner != vmID {
		return fmt.Errorf("set owner of tap %s: %w", name, network.ErrNoTap)
	}
	return nil
}

// DeleteTap forgets a TAP; a missing one is success.
func (n *Network) DeleteTap(_ context.Context, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.taps, name)
	return nil
}

// ListTaps lists the TAPs, all attached, up and ours.
func (n *Network) ListTaps(_ context.Context, prefix string) ([]network.Tap, error) {
	if prefix == "" {
		prefix = hostlayout.TapPrefix
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]network.Tap, 0, len(n.taps))
	for name, id := range n.taps {
		if strings.HasPrefix(name, prefix) {
			out = append(out, network.Tap{Name: name, IsTap: true, Master: n.bridge, Attached: true, Up: true, Ours: true, VMID: id})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// BridgeName is the bridge's name.
func (n *Network) BridgeName() string { return n.bridge }

// Backend is always none: nothing leaves a hollow host.
func (n *Network) Backend() network.NATBackend { return network.NATNone }

// Gateway is the bridge address hollow hosts report.
func Gateway() netip.Prefix { return network.DefaultGateway }

// noHostTapEnv tells firecracker-sim to keep TAPs in memory instead of
// opening the host's (fcsim.NoHostTapEnv).
const noHostTapEnv = fcsim.NoHostTapEnv

// VMMs runs firecracker-sim in-process, one goroutine group per VM.
type VMMs struct {
	layout hostlayout.Layout
	getenv func(string) string
	exits  chan vmm.Exit
	nextID atomic.Int64

	mu   sync.Mutex
	vms  map[string]*sim
	lock keyed.Mutex
}

type sim struct {
	h      vmm.Handle
	cancel context.CancelFunc
	done   chan struct{} // closed when the simulator returned
	code   int
	killed bool
}

// NewVMMs returns in-process VMMs under layout's run dir. getenv passes
// firecracker-sim's tuning variables (nil: none); the simulator never
// touches a host TAP (FC_SIM_NO_HOST_TAP).
func NewVMMs(layout hostlayout.Layout, getenv func(string) string) *VMMs {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	v := &VMMs{layout: layout, exits: make(chan vmm.Exit, 256), vms: map[string]*sim{}}
	v.getenv = func(k string) string {
		if k == noHostTapEnv {
			return "1"
		}
		return getenv(k)
	}
	v.nextID.Store(1 << 22) // above any real pid, so a hollow pid is never a real one
	return v
}

// Exits reports VMMs that ended on their own.
func (v *VMMs) Exits() <-chan vmm.Exit { return v.exits }

// Spawn starts vmID's simulator and waits for its API socket. A live one
// is returned as is, with true.
func (v *VMMs) Spawn(ctx context.Context, vmID string, opts vmm.SpawnOptions) (vmm.Handle, bool, error) {
	if !hostlayout.ValidVMID(vmID) {
		return vmm.Handle{}, false, fmt.Errorf("spawn vm %q: %w", vmID, vmm.ErrInvalidID)
	}
	defer v.lock.Lock(vmID)()
	if h, ok := v.Get(vmID); ok {
		return h, true, nil
	}
	l := v.layout
	for _, d := range []string{l.SockDir(vmID), l.LogsDir(vmID)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return vmm.Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
		}
	}
	sock := l.SockPath(vmID)
	_ = os.Remove(sock)
	console, err := os.OpenFile(l.ConsolePath(vmID), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return vmm.Handle{}, false, fmt.Errorf("spawn vm %s: console log: %w", vmID, err)
	}
	// The simulator lives on the agent's lifetime, not the request's.
	sctx, cancel := context.WithCancel(context.Background())
	s := &sim{cancel: cancel, done: make(chan struct{}), h: vmm.Handle{
		VMID: vmID, PID: int(v.nextID.Add(1)), Bin: "hollow", APISock: sock, StartedAt: time.Now().UTC(),
		Vcpu: opts.Vcpu, MemMib: opts.MemMib,
	}}
	argv := firecracker.Args{APISock: sock, ID: vmID}.Argv()
	go func() {
		defer close(s.done)
		defer console.Close()
		// Relative paths (drives/rootfs.ext4) resolve in the VM's run dir,
		// as they do for a VMM process started there.
		getenv := func(k string) string {
			if k == fcsim.WorkDirEnv {
				return l.VMDir(vmID)
			}
			return v.getenv(k)
		}
		s.code = fcsim.Run(sctx, argv, console, console, getenv)
		v.mu.Lock()
		killed := s.killed
		if v.vms[vmID] == s {
			delete(v.vms, vmID)
		}
		v.mu.Unlock()
		if !killed {
			select {
			case v.exits <- vmm.Exit{VMID: vmID, PID: s.h.PID, Status: fmt.Sprintf("exit status %d", s.code), At: time.Now().UTC()}:
			default:
			}
		}
	}()
	v.mu.Lock()
	v.vms[vmID] = s
	v.mu.Unlock()
	if err := waitSocket(ctx, sock, s.done); err != nil {
		v.kill(s)
		_ = os.Remove(sock)
		return vmm.Handle{}, false, fmt.Errorf("spawn vm %s: %w", vmID, err)
	}
	return s.h, false, nil
}

func waitSocket(ctx context.Context, sock string, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return errors.New("the simulated VMM exited before its API socket was ready")
		case <-ctx.Done():
			return fmt.Errorf("waiting for API socket %s: %w", sock, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// kill ends a simulator as SIGKILL would, and waits for it.
func (v *VMMs) kill(s *sim) {
	v.mu.Lock()
	s.killed = true
	v.mu.Unlock()
	s.cancel()
	<-s.done
}

// Stop ends vmID's simulator and removes its socket. No live VMM is not
// an error.
func (v *VMMs) Stop(_ context.Context, vmID string, _ time.Duration) error {
	if !hostlayout.ValidVMID(vmID) {
		return fmt.Errorf("stop vm %q: %w", vmID, vmm.ErrInvalidID)
	}
	defer v.lock.Lock(vmID)()
	v.mu.Lock()
	s, ok := v.vms[vmID]
	v.mu.Unlock()
	if ok {
		v.kill(s)
	}
	if err := os.Remove(v.layout.SockPath(vmID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop vm %s: %w", vmID, err)
	}
	return nil
}

// Kill ends vmID's simulator behind the agent's back, as a crash would:
// the agent reports the exit (tests of the reconciler).
func (v *VMMs) Kill(vmID string) bool {
	v.mu.Lock()
	s, ok := v.vms[vmID]
	v.mu.Unlock()
	if ok {
		s.cancel()
		<-s.done
	}
	return ok
}

// StopAll ends every simulator (the agent is going away).
func (v *VMMs) StopAll() {
	v.mu.Lock()
	all := make([]*sim, 0, len(v.vms))
	for _, s := range v.vms {
		all = append(all, s)
	}
	v.mu.Unlock()
	for _, s := range all {
		v.kill(s)
	}
}

// Get returns the handle of vmID's live simulator.
func (v *VMMs) Get(vmID string) (vmm.Handle, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.vms[vmID]
	if !ok {
		return vmm.Handle{}, false
	}
	return s.h, true
}

// List returns the live simulators, sorted by VM id.
func (v *VMMs) List() []vmm.Handle {
	v.mu.Lock()
	out := make([]vmm.Handle, 0, len(v.vms))
	for _, s := range v.vms {
		out = append(out, s.h)
	}
	v.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].VMID < out[j].VMID })
	return out
}
