package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// RegisterHost records an agent joining the fleet (or re-joining after a
// restart) and returns its host record.
func (s *Hosts) RegisterHost(ctx context.Context, r apitypes.RegisterHostRequest) (store.Host, error) {
	name, addr := r.Name, r.Addr
	if name == "" || addr == "" {
		return store.Host{}, invalid("name and addr are required")
	}
	reg := store.HostRegistration{
		Name: name, Addr: addr, Version: r.Version, VMM: r.VMM,
		Capacity: store.Resources{VCPU: r.Capacity.Vcpu, MemMiB: r.Capacity.MemMib},
	}
	if r.Network != nil {
		subnet, gw, err := parseHostNetwork(r.Network)
		if err != nil {
			return store.Host{}, err.suggest("set FC_BRIDGE_CIDR to the bridge's address and prefix, e.g. 172.20.0.1/16")
		}
		reg.Subnet, reg.Gateway = subnet.String(), gw.String()
	}
	h, err := s.st.UpsertHost(ctx, reg)
	if err != nil {
		return h, fmt.Errorf("register host %s: %w", name, err)
	}
	s.hostAddrs.Store(h.ID, h.Addr)
	s.hostChanged()
	// Other managers sharing the store drop their cached address of it.
	if err := s.st.Notify(ctx, HostChannel, h.ID); err != nil {
		s.log.Warn("could not tell other managers of a host's new address", "host_id", h.ID, "err", err)
	}
	s.log.Info("host registered", "host_id", h.ID, "name", name, "addr", addr, "subnet", h.Subnet, "gateway", h.Gateway)
	return h, nil
}

// HostChannel carries the ids of hosts that registered (perhaps at a new
// address), were drained, undrained or removed, to every manager sharing
// the store.
const HostChannel = "nexus_hosts"

// Forget drops the cached address of a host and the placement's list of
// hosts (HostChannel's listener): the next use reads the store.
func (s *Hosts) Forget(hostID string) {
	s.hostAddrs.Delete(hostID)
	s.hostChanged()
}

func (s *Hosts) hostChanged() {
	if s.changed != nil {
		s.changed()
	}
}

// Heartbeat records an agent's periodic report.
func (s *Hosts) Heartbeat(ctx context.Context, hostID string, total, allocated apitypes.Resources, vms int) error {
	err := s.st.Heartbeat(ctx, hostID, store.Heartbeat{
		Capacity:  store.Resources{VCPU: total.Vcpu, MemMiB: total.MemMib},
		Allocated: store.Resources{VCPU: allocated.Vcpu, MemMiB: allocated.MemMib},
		VMs:       vms,
	})
	if errors.Is(err, store.ErrNotFound) {
		return notFound("host", hostID).suggest("register again: the host was removed")
	}
	return err
}

// HeartbeatInterval is how often agents should report: a third of the
// timeout, so one lost heartbeat never makes a host unreachable.
func (s *Hosts) HeartbeatInterval() time.Duration {
	return max(s.cfg.HeartbeatTimeout/3, 200*time.Millisecond)
}

// SetHostDraining drains a host (no new VMs; its VMs keep running) or
// makes it ready again. ref is a host id or name.
func (s *Hosts) SetHostDraining(ctx context.Context, ref string, drain bool) error {
	hosts, err := s.ListHosts(ctx)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if h.ID != ref && h.Name != ref {
			continue
		}
		state := store.HostReady
		if drain {
			state = store.HostDraining
		}
		if err := s.st.SetHostState(ctx, h.ID, state); err != nil {
			return fmt.Errorf("set host %s %s: %w", h.Name, state, err)
		}
		s.hostChanged()
		_ = s.st.Notify(ctx, HostChannel, h.ID)
		s.log.Info("host state set", "host", h.Name, "state", state)
		return nil
	}
	return notFound("host", ref).suggest("list hosts: nexus host ls")
}

// RemoveHost forgets a host that holds no VMs (after draining it, or after
// it is gone for good and its VMs were deleted with force).
func (s *Hosts) RemoveHost(ctx context.Context, ref string) error {
	hosts, err := s.ListHosts(ctx)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if h.ID != ref && h.Name != ref {
			continue
		}
		vms, _, err := s.st.ListVMs(ctx, store.VMFilter{HostID: h.ID, Limit: 1})
		if err != nil {
			return err
		}
		if len(vms) > 0 {
			return conflict("host_not_empty", "host %s still holds VMs", h.Name).
				suggest("delete or move them first (nexus vm ls --host " + h.ID + ")")
		}
		snaps, err := s.st.ListSnapshots(ctx, store.SnapshotFilter{HostID: h.ID})
		if err != nil {
			return err
		}
		if len(snaps) > 0 {
			return conflict("host_not_empty", "host %s still holds %d snapshots", h.Name, len(snaps)).
				suggest("delete them first (nexus snapshot ls, nexus snapshot rm); snapshots stay on their host")
		}
		if err := s.st.DeleteHost(ctx, h.ID); err != nil {
			return fmt.Errorf("remove host %s: %w", h.Name, err)
		}
		s.hostAddrs.Delete(h.ID)
		s.hostChanged()
		_ = s.st.Notify(ctx, HostChannel, h.ID)
		return nil
	}
	return notFound("host", ref)
}

// ListHosts returns the fleet with each host's effective state: a ready
// host that missed its heartbeats shows as unreachable.
func (s *Hosts) ListHosts(ctx context.Context) ([]store.Host, error) {
	hosts, err := s.st.ListHosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	for i := range hosts {
		hosts[i].State = s.effectiveState(hosts[i])
		s.hostAddrs.Store(hosts[i].ID, hosts[i].Addr)
	}
	return hosts, nil
}

// A draining host that stops reporting is unreachable too: draining is
// what an operator wants, reachability what the host does.
func (s *Hosts) effectiveState(h store.Host) store.HostState {
	if (h.State == store.HostReady || h.State == store.HostDraining) && s.now().Sub(h.LastSeenAt) > s.cfg.HeartbeatTimeout {
		return store.HostUnreachable
	}
	return h.State
}

// freeStates are the VM states whose resources do not count against a host.
var freeStates = []store.VMState{store.VMStopped, store.VMFailed}

// create stores vm on a host and returns it: on hostID if given, else on
// the ready host with the most free memory (after overcommit) that fits
// it, trying the next one when a host has filled up since it was read.
// The fit is decided by the store, in one transaction with the insert
// (store.CreateVMWithin), so managers sharing a store never overcommit a
// host together. The allocations that rank the hosts may be a moment old
// (allocCache); a "no room anywhere" is only answered after a fresh read.
func (s *Placement) create(ctx context.Context, vm store.VM, hostID string) (store.VM, store.Host, error) {
	var full []string // hosts whose VM subnet has no free address
	for fresh := range 2 {
		hosts, err := s.hostList.get(ctx, s.hosts, fresh == 1)
		if err != nil {
			return store.VM{}, store.Host{}, err
		}
		alloc, err := s.allocs.get(ctx, s.st, fresh == 1)
		if err != nil {
			return store.VM{}, store.Host{}, fmt.Errorf("place vm: %w", err)
		}
		cands, err := s.pick(hosts, alloc, hostID, vm.VCPU, vm.MemMiB)
		if err != nil {
			if fresh == 0 {
				continue // perhaps freed, registered or undrained since the cached read
			}
			return store.VM{}, store.Host{}, err
		}
		full = full[:0]
		for _, h := range cands {
			vm.HostID, vm.HostAddr = h.ID, h.Addr
			// A VM with a network interface gets its address with its row,
			// in the same transaction (guestnet.go).
			vm.IP, vm.Subnet, vm.Gateway = "", "", ""
			if subnet, gw, ok := hostNet(h); ok && vm.TAP != "" {
				vm.Subnet, vm.Gateway = subnet.String(), gw.String()
			}
			limit := store.Resources{
				VCPU:   int(float64(h.Capacity.VCPU) * s.cfg.VcpuOvercommit),
				MemMiB: int(float64(h.Capacity.MemMiB) * s.cfg.MemOvercommit),
			}
			created, err := s.st.CreateVMWithin(ctx, vm, limit, freeStates...)
			if errors.Is(err, store.ErrNoCapacity) {
				continue // filled up since we read it: the next host
			}
			if errors.Is(err, store.ErrHostNotReady) {
				s.hostList.drop() // drained since we read it: the next host
				continue
			}
			if errors.Is(err, store.ErrExhausted) {
				full = append(full, h.Name+" ("+h.Subnet+")")
				continue
			}
			if err == nil {
				s.allocs.add(h.ID, vm.VCPU, vm.MemMiB)
			}
			return created, h, err
		}
	}
	if len(full) > 0 {
		return store.VM{}, store.Host{}, newErr(KindNoCapacity, "no_address", "no free address left in the VM subnet of host %s", strings.Join(full, ", ")).
			suggest("delete VMs there, place the VM on another host (host_id), or give the bridge a larger subnet (FC_BRIDGE_CIDR)")
	}
	if hostID != "" {
		return store.VM{}, store.Host{}, newErr(KindNoCapacity, "host_full", "host %s has no room for %d vCPU / %d MiB", hostID, vm.VCPU, vm.MemMiB).
			suggest("omit host_id, or free resources on that host")
	}
	return store.VM{}, store.Host{}, newErr(KindNoCapacity, "no_capacity", "no ready host has room for %d vCPU / %d MiB", vm.VCPU, vm.MemMiB).
		suggest("stop or delete VMs, add a host, or ask for less (nexus host ls shows free capacity)")
}

// hostCache is the fleet as ListHosts last read it, at most allocTTL old.
// Reading and decoding every host row was a sixth of a create's CPU at
// 100 hosts. Like allocCache it only ranks hosts: the store refuses a host
// that is not ready (CreateVMWithin), so a drain is never missed.
type hostCache struct {
	mu    sync.Mutex
	at    time.Time
	hosts []store.Host
}

func (c *hostCache) get(ctx context.Context, h *Hosts, fresh bool) ([]store.Host, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fresh || c.hosts == nil || time.Since(c.at) > allocTTL {
		hosts, err := h.ListHosts(ctx)
		if err != nil {
			return nil, err
		}
		c.hosts, c.at = hosts, time.Now()
	}
	return c.hosts, nil // read-only to callers
}

// drop forgets the list: the next create reads it again.
func (c *hostCache) drop() {
	c.mu.Lock()
	c.hosts = nil
	c.mu.Unlock()
}

// allocTTL is how old the allocations that rank hosts may be. Summing
// every host's VMs is the one part of a create that grows with the fleet
// (about a quarter of a create's CPU at 5,000 VMs); reading it at most a
// few times a second keeps a create's cost flat.
const allocTTL = 500 * time.Millisecond

// allocCache is the hosts' allocations as last read from the store, plus
// what this manager placed since. It only ranks hosts: the store decides
// every fit (CreateVMWithin), so a stale entry can send a VM to its
// second-best host, never overcommit one.
type allocCache struct {
	mu sync.Mutex
	at time.Time
	m  map[string]store.Allocation
}

func (c *allocCache) get(ctx context.Context, st store.Store, fresh bool) (map[string]store.Allocation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fresh || c.m == nil || time.Since(c.at) > allocTTL {
		m, err := st.AllocationsByHost(ctx, freeStates...)
		if err != nil {
			return nil, err
		}
		c.m, c.at = m, time.Now()
	}
	return maps.Clone(c.m), nil
}

// add counts a VM this manager just placed, until the next read.
func (c *allocCache) add(hostID string, vcpu, mem int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		return
	}
	a := c.m[hostID]
	a.VMs++
	a.VCPU += vcpu
	a.MemMiB += mem
	c.m[hostID] = a
}

// pick returns the hosts that fit a VM, in order of preference, given
// their allocations as last read; or why none does.
func (s *Placement) pick(hosts []store.Host, alloc map[string]store.Allocation, hostID string, vcpu, mem int) ([]store.Host, error) {
	type cand struct {
		h        store.Host
		freeMem  float64
		freeVcpu float64
	}
	var cands []cand
	// The largest ready host: a VM bigger than it can never be placed,
	// which is the caller's mistake (400), not a shortage (503).
	var biggestVcpu, biggestMem float64
	for _, h := range hosts {
		a := alloc[h.ID]
		c := cand{h: h,
			freeVcpu: float64(h.Capacity.VCPU)*s.cfg.VcpuOvercommit - float64(a.VCPU),
			freeMem:  float64(h.Capacity.MemMiB)*s.cfg.MemOvercommit - float64(a.MemMiB),
		}
		if h.State == store.HostReady {
			biggestVcpu = max(biggestVcpu, float64(h.Capacity.VCPU)*s.cfg.VcpuOvercommit)
			biggestMem = max(biggestMem, float64(h.Capacity.MemMiB)*s.cfg.MemOvercommit)
		}
		fits := c.freeVcpu >= float64(vcpu) && c.freeMem >= float64(mem)
		if hostID != "" && (h.ID == hostID || h.Name == hostID) {
			switch {
			case h.State != store.HostReady:
				return nil, newErr(KindNoCapacity, "host_not_ready", "host %s is %s", h.Name, h.State).
					suggest("omit host_id to let the scheduler choose, or wait for the host")
			case !fits:
				return nil, newErr(KindNoCapacity, "host_full", "host %s has no room for %d vCPU / %d MiB (free %.0f vCPU / %.0f MiB)", h.Name, vcpu, mem, c.freeVcpu, c.freeMem).
					suggest("omit host_id, or free resources on that host")
			}
			return []store.Host{h}, nil
		}
		if h.State == store.HostReady && fits {
			cands = append(cands, c)
		}
	}
	if hostID != "" {
		return nil, invalid("host %q not found", hostID).suggest("list hosts: nexus host ls")
	}
	if len(cands) == 0 {
		if len(hosts) == 0 {
			return nil, newErr(KindNoCapacity, "no_hosts", "no agent has registered with this manager").
				suggest("start an agent with AGENT_MANAGER pointing here, or use `nexus up`")
		}
		if biggestMem > 0 && (float64(mem) > biggestMem || float64(vcpu) > biggestVcpu) {
			return nil, newErr(KindInvalid, "vm_too_large", "%d vCPU / %d MiB is more than any host can hold (the largest takes %.0f vCPU / %.0f MiB)",
				vcpu, mem, biggestVcpu, biggestMem).suggest("ask for less memory or fewer vCPUs")
		}
		return nil, newErr(KindNoCapacity, "no_capacity", "no ready host has room for %d vCPU / %d MiB", vcpu, mem).
			suggest("stop or delete VMs, add a host, or ask for less (nexus host ls shows free capacity)")
	}
	// Most free memory first spreads VMs across hosts; ties by name for
	// stable tests.
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].freeMem != cands[j].freeMem {
			return cands[i].freeMem > cands[j].freeMem
		}
		return cands[i].h.Name < cands[j].h.Name
	})
	out := make([]store.Host, len(cands))
	for i, c := range cands {
		out[i] = c.h
	}
	return out, nil
}

// HostView renders a host for the API.
func HostView(h store.Host) apitypes.Host {
	v := apitypes.Host{
		ID: h.ID, Name: h.Name, Addr: h.Addr, State: string(h.State),
		Capacity:   apitypes.Resources{Vcpu: h.Capacity.VCPU, MemMib: h.Capacity.MemMiB},
		Allocated:  apitypes.Resources{Vcpu: h.Allocated.VCPU, MemMib: h.Allocated.MemMiB},
		VMs:        h.VMs,
		LastSeenAt: h.LastSeenAt,
		VMM:        h.VMM,
		Simulated:  strings.HasSuffix(h.VMM, "-sim"),
	}
	if h.Subnet != "" {
		v.Network = &apitypes.HostNetwork{Subnet: h.Subnet, Gateway: h.Gateway}
	}
	return v
}

func marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return b, nil
}
