// Package manager is the control plane's service layer: VM lifecycle and
// its orchestration through the agents, placement, logs and metrics. It
// knows the store and the agent API; it knows nothing of HTTP, which the
// api package adds on top.
package manager

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/keyed"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Modes of NEXUS_MODE.
const (
	ModeDev  = "dev"
	ModeProd = "prod"
)

// Config configures the Service.
type Config struct {
	Mode      string        // dev (default) or prod
	JoinToken string        // presented to agents, and by agents when they register
	StopGrace time.Duration // SIGTERM → SIGKILL on stop
	// VcpuOvercommit and MemOvercommit scale a host's capacity for
	// placement (1.0 = no overcommit).
	VcpuOvercommit float64
	MemOvercommit  float64
	// HeartbeatTimeout marks a host unreachable when it has not reported
	// for this long.
	HeartbeatTimeout time.Duration
	// BootTimeout bounds one boot sequence (tap, spawn, configure, start).
	BootTimeout time.Duration
	// DefaultProject is used when neither the request nor the caller names one.
	DefaultProject string
	// Metrics, when set, receives the services' metrics.
	Metrics prometheus.Registerer
	// AgentTransport, when set, carries every call to the agents (tests
	// inject faults at this boundary); nil: a transport of its own.
	AgentTransport http.RoundTripper
}

// Manager is the control plane's services, one per resource, over one
// store and one pool of agent clients. The HTTP layer talks to each
// service through an interface of its own; the services reach each other
// only through the fields they are given. It is safe for concurrent use;
// operations on one VM are serialised, different VMs proceed in parallel.
type Manager struct {
	VMs       *VMs
	Images    *Images
	Templates *Templates
	Snapshots *Snapshots
	Pools     *Pools
	Groups    *Groups
	Hosts     *Hosts
	Tokens    *Tokens
	Placement *Placement
	core      *core
}

// core is what every service shares: configuration, the store, agent
// clients, per-VM locks, the clock and the background work group.
type core struct {
	cfg    Config
	st     store.Store
	log    *slog.Logger
	agents *agentPool
	now    func() time.Time

	// ctx outlives requests: work that must finish even if the caller goes
	// away (a boot that already started, a rollback) runs on it.
	ctx context.Context

	locks keyed.Mutex

	hostAddrs sync.Map // host id → current agent URL

	bg sync.WaitGroup // background work (async boots) that Wait lets finish

	instance string // this manager's identity in per-VM leases

	addrLocks keyed.Mutex // one address assignment per host at a time (guestnet.go)

	recent *recentRows // the VM rows written last, to write again without a read

	stepSeconds  *prometheus.HistogramVec // see steps.go
	readySeconds prometheus.Histogram     // boot-to-ready, see guestnet.go
}

// VMs is the VM lifecycle: create, boot, start, stop, pause, resume,
// delete, bulk actions, drives, logs, metrics and events.
type VMs struct {
	*core
	placement *Placement
	images    *Images
}

// Images is the image registry.
type Images struct {
	*core
	hosts *Hosts
}

// Templates are named VM configurations and their instantiation.
type Templates struct {
	*core
	images *Images
	vms    *VMs
}

// Snapshots are VM snapshots: create, catalog, delete, restore into new VMs.
type Snapshots struct {
	*core
	vms       *VMs
	placement *Placement
}

// Hosts is the host registry: registration, heartbeats, drain, removal.
type Hosts struct {
	*core
	// changed is called when a host registers, is drained, undrained or
	// removed, here or (through HostChannel) by another manager: the
	// placement's list of hosts is read again.
	changed func()
}

// Tokens manages API tokens.
type Tokens struct {
	*core
	// OnChange, when set, is called synchronously after a token is
	// revoked or rotated (the local authentication cache), so the change is
	// effective before the call answers; other managers hear it by Notify.
	OnChange func(tokenID string)
}

// Placement chooses hosts for new VMs; the store decides whether they fit.
type Placement struct {
	*core
	hosts    *Hosts
	allocs   allocCache
	hostList hostCache
}

// New returns the services. ctx is their lifetime.
func New(ctx context.Context, cfg Config, st store.Store, log *slog.Logger) *Manager {
	if cfg.Mode == "" {
		cfg.Mode = ModeDev
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 3 * time.Second
	}
	if cfg.VcpuOvercommit == 0 {
		cfg.VcpuOvercommit = 8
	}
	if cfg.MemOvercommit == 0 {
		cfg.MemOvercommit = 1
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 30 * time.Second
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 60 * time.Second
	}
	if cfg.DefaultProject == "" {
		cfg.DefaultProject = "default"
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &core{
		cfg: cfg, st: st, log: log, now: time.Now, ctx: ctx, instance: uuid.NewString(),
		agents: newAgentPool(cfg.JoinToken, cfg.AgentTransport), stepSeconds: newStepMetrics(), readySeconds: newReadyMetric(),
		recent: newRecentRows(),
	}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(c.stepSeconds, c.readySeconds)
	}
	m := &Manager{core: c, Hosts: &Hosts{core: c}, Tokens: &Tokens{core: c}}
	m.Placement = &Placement{core: c, hosts: m.Hosts}
	m.Hosts.changed = m.Placement.hostList.drop
	m.Images = &Images{core: c, hosts: m.Hosts}
	m.VMs = &VMs{core: c, placement: m.Placement, images: m.Images}
	m.Templates = &Templates{core: c, images: m.Images, vms: m.VMs}
	m.Snapshots = &Snapshots{core: c, vms: m.VMs, placement: m.Placement}
	m.Pools = newPools(c, m.VMs, m.Templates, m.Snapshots)
	m.Groups = &Groups{core: c, vms: m.VMs, templates: m.Templates}
	return m
}

// Wait blocks until background work is done or ctx ends.
func (m *Manager) Wait(ctx context.Context) { m.core.Wait(ctx) }

// Close drops the idle connections to agents, once nothing calls them any
// more, so no transport goroutine outlives the manager.
func (m *Manager) Close() { m.core.agents.closeIdle() }

// SetClock replaces the clock every service reads (tests).
func (m *Manager) SetClock(now func() time.Time) { m.core.now = now }

// vmLeaseWait bounds how long an operation waits for another manager's
// operation on the same VM.
const vmLeaseWait = 10 * time.Second

// lockVM serialises operations on one VM: within this manager with a
// mutex, and across managers sharing Postgres with a lease in the store.
// An operation another manager holds for longer than vmLeaseWait is a
// 409, not an endless wait.
func (s *core) lockVM(ctx context.Context, id string) (func(), error) {
	unlock := s.locks.Lock(id)
	if !s.shared() {
		return unlock, nil
	}
	// A real wait (it sleeps), so a real deadline: not the injected clock.
	deadline := time.Now().Add(vmLeaseWait)
	for {
		held, err := s.st.AcquireLease(ctx, "vm/"+id, s.instance, s.vmLeaseTTL())
		if err != nil {
			unlock()
			return nil, fmt.Errorf("lock vm %s: %w", id, err)
		}
		if held {
			return s.holdLease(ctx, "vm/"+id, unlock), nil
		}
		if time.Now().After(deadline) {
			unlock()
			return nil, conflict("vm_busy", "another manager is working on vm %s", id).suggest("retry in a moment")
		}
		select {
		case <-ctx.Done():
			unlock()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tryLockVM takes the VM's lock only if nobody holds it (the reconciler
// leaves busy VMs for its next pass).
func (s *core) tryLockVM(ctx context.Context, id string) (func(), bool) {
	unlock, ok := s.locks.TryLock(id)
	if !ok {
		return nil, false
	}
	if !s.shared() {
		return unlock, true
	}
	held, err := s.st.AcquireLease(ctx, "vm/"+id, s.instance, s.vmLeaseTTL())
	if err != nil || !held {
		unlock()
		return nil, false
	}
	return s.holdLease(ctx, "vm/"+id, unlock), true
}

func (s *core) vmLeaseTTL() time.Duration { return s.cfg.BootTimeout + 30*time.Second }

// holdLease keeps a per-VM lease renewed while an operation runs (a large
// snapshot outlasts any fixed TTL) and returns the function that releases
// it and then the in-process lock.
func (s *core) holdLease(ctx context.Context, name string, unlock func()) func() {
	done := make(chan struct{})
	ttl := s.vmLeaseTTL()
	go func() {
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				held, err := s.st.AcquireLease(context.WithoutCancel(ctx), name, s.instance, ttl)
				if err != nil || !held {
					s.log.Error("lost the lease of an operation in progress; another manager may act on the VM", "lease", name, "err", err)
				}
			}
		}
	}()
	return sync.OnceFunc(func() {
		close(done)
		_ = s.st.ReleaseLease(context.WithoutCancel(ctx), name, s.instance)
		unlock()
	})
}

// shared reports whether other managers may share the store.
func (s *core) shared() bool { return s.st.Engine() == "postgres" }

// goBackground runs f on its own goroutine, tracked so that Wait lets it
// finish before the process closes the store.
func (s *core) goBackground(f func()) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f()
	}()
}

// Wait blocks until background work is done or ctx ends.
func (s *core) Wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("shutdown: background work still running", "err", ctx.Err())
	}
}

// Mode is dev or prod.
func (m *Manager) Mode() string { return m.core.cfg.Mode }

// JoinToken is the fleet's shared agent token.
func (m *Manager) JoinToken() string { return m.core.cfg.JoinToken }

// agentFor returns the client of the agent on vm's host at the host's
// current address (an agent may come back on another address).
func (s *core) agentFor(ctx context.Context, vm store.VM) *agentapi.Client {
	if a, ok := s.hostAddrs.Load(vm.HostID); ok {
		return s.agents.get(a.(string))
	}
	if h, err := s.st.GetHost(ctx, vm.HostID); err == nil {
		s.hostAddrs.Store(h.ID, h.Addr)
		return s.agents.get(h.Addr)
	}
	return s.agents.get(vm.HostAddr)
}

// View renders a VM for the API with its host's current address.
func (s *core) View(vm store.VM) apitypes.VM {
	if a, ok := s.hostAddrs.Load(vm.HostID); ok {
		vm.HostAddr = a.(string)
	}
	return View(vm)
}

// agentPool keeps one client per agent address.
type agentPool struct {
	token string
	mu    sync.Mutex
	byURL map[string]*agentapi.Client
	hc    *http.Client // nil: each client its own transport
}

func newAgentPool(token string, rt http.RoundTripper) *agentPool {
	p := &agentPool{token: token, byURL: map[string]*agentapi.Client{}}
	if rt != nil {
		p.hc = &http.Client{Transport: rt}
	}
	return p
}

func (p *agentPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.byURL {
		c.CloseIdle()
	}
}

func (p *agentPool) get(addr string) *agentapi.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.byURL[addr]
	if !ok {
		c = agentapi.NewClient(addr, p.token, p.hc)
		p.byURL[addr] = c
	}
	return c
}
