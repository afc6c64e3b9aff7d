package manager

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/store"
)

// ReconcileChannel carries "reconcile host X now" between managers: an
// agent's event may reach a manager that is not the reconciler.
const ReconcileChannel = "nexus_reconcile"

// leaseName is the lease that elects one reconciler among managers.
const leaseName = "reconciler"

// ReconcilerConfig tunes the reconciler.
type ReconcilerConfig struct {
	Interval time.Duration // periodic pass (NEXUS_RECONCILE_INTERVAL)
	Holder   string        // this manager's identity in the lease
	LeaseTTL time.Duration // how long a silent leader keeps the lease
	// OrphanGrace is how long a resource must stay unclaimed by any VM
	// before it is removed (a VM being created is claimed from its row).
	OrphanGrace time.Duration
	// StuckGrace is how long a VM may stay requested/configured before its
	// boot is considered abandoned (a manager died mid-create) and redone.
	StuckGrace time.Duration
	// MaxRetries restarts of a VM whose VMM keeps dying before it is
	// marked failed; the delay between them doubles from RetryBase.
	MaxRetries int
	RetryBase  time.Duration
	RetryMax   time.Duration
	// HostParallel bounds concurrent actions on one host; HostsParallel
	// bounds hosts reconciled at once (default 32: a host's pass mostly
	// waits on its agent and the store, so a pass over 100 hosts is as
	// long as a few host passes, not 13 rounds of 8).
	HostParallel  int
	HostsParallel int
	// ExpiryInterval is how often the leader looks for VMs whose time to
	// live is over (default 1s, at most Interval): one indexed query.
	ExpiryInterval time.Duration
	Metrics        prometheus.Registerer
}

func (c *ReconcilerConfig) defaults() {
	if c.Interval <= 0 {
		c.Interval = 15 * time.Second
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = max(3*c.Interval, 10*time.Second)
	}
	if c.OrphanGrace <= 0 {
		c.OrphanGrace = 30 * time.Second
	}
	if c.StuckGrace <= 0 {
		c.StuckGrace = 20 * time.Second
	}
	if c.MaxRetries <= 0 {
		c.MaxRetries = 5
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.HostParallel <= 0 {
		c.HostParallel = 4
	}
	if c.HostsParallel <= 0 {
		c.HostsParallel = 32
	}
	if c.ExpiryInterval <= 0 {
		c.ExpiryInterval = time.Second
	}
	c.ExpiryInterval = min(c.ExpiryInterval, c.Interval)
}

// Reconciler moves observed state toward desired state across the fleet
// and removes what belongs to no VM. Only the lease holder acts.
type Reconciler struct {
	s     *VMs // the VM lifecycle the reconciler drives
	hosts *Hosts
	pools *Pools
	// poolKick asks for a refill pass now (a claim took a VM).
	poolKick chan struct{}
	// groups and groupKick drive group rollouts (groups.go).
	groups    *Groups
	groupKick chan struct{}
	cfg       ReconcilerConfig
	leader    atomic.Bool
	// Triggers are merged: a burst of exit reports becomes one pass per
	// host (or one pass of everything), not one per report.
	kick     chan struct{}
	pendMu   sync.Mutex
	pendAll  bool
	pendHost map[string]bool

	mu      sync.Mutex
	orphans map[string]time.Time // host/resource → first seen unclaimed
	silent  map[string]bool      // draining hosts already marked lost
	last    PassStats

	mActions *prometheus.CounterVec
	mPass    prometheus.Histogram
	mLeader  prometheus.Gauge
}

// PassStats describes the last reconcile pass.
type PassStats struct {
	At       time.Time
	Duration time.Duration
	Hosts    int
	VMs      int
	Actions  int
	Errors   int
}

// NewReconciler returns the fleet's reconciler.
func (m *Manager) NewReconciler(cfg ReconcilerConfig) *Reconciler {
	cfg.defaults()
	r := &Reconciler{s: m.VMs, hosts: m.Hosts, pools: m.Pools, poolKick: make(chan struct{}, 1), cfg: cfg, kick: make(chan struct{}, 1), pendHost: map[string]bool{}, orphans: map[string]time.Time{}}
	m.Pools.Kick = func() {
		select {
		case r.poolKick <- struct{}{}:
		default: // a pass is queued already
		}
	}
	r.groups, r.groupKick = m.Groups, make(chan struct{}, 1)
	m.Groups.Kick = func() {
		select {
		case r.groupKick <- struct{}{}:
		default:
		}
	}
	r.mActions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nexus_reconciler_actions_total", Help: "Reconciler actions by kind and result.",
	}, []string{"action", "result"})
	r.mPass = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nexus_reconciler_pass_seconds", Help: "Duration of reconcile passes.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	r.mLeader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nexus_reconciler_leader", Help: "1 while this manager holds the reconciler lease.",
	})
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(r.mActions, r.mPass, r.mLeader)
	}
	return r
}

// Leader reports whether this manager reconciles now.
func (r *Reconciler) Leader() bool { return r.leader.Load() }

// LastPass returns the statistics of the last pass.
func (r *Reconciler) LastPass() PassStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Trigger asks for a pass of one host ("" = all) as soon as possible.
func (r *Reconciler) Trigger(hostID string) {
	r.pendMu.Lock()
	if hostID == "" {
		r.pendAll = true
	} else {
		r.pendHost[hostID] = true
	}
	r.pendMu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default: // a pass is already queued; it will see this host too
	}
}

// pending takes the hosts asked for so far: all, or a set.
func (r *Reconciler) pending() (bool, []string) {
	r.pendMu.Lock()
	defer r.pendMu.Unlock()
	all := r.pendAll
	hosts := make([]string, 0, len(r.pendHost))
	for h := range r.pendHost {
		hosts = append(hosts, h)
	}
	r.pendAll, r.pendHost = false, map[string]bool{}
	return all, hosts
}

// Run holds or contends for the lease and reconciles every Interval and on
// triggers, until ctx ends; then it releases the lease.
func (r *Reconciler) Run(ctx context.Context) {
	// Run returns only once its helpers have: the lease is released before
	// whoever waits for Run closes the store.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.s.st.Listen(ctx, ReconcileChannel, r.Trigger) })
	wg.Go(func() { r.keepLease(ctx) })
	wg.Go(func() { r.leaderLoop(ctx, nil, func(ctx context.Context) { r.expireDue(ctx) }) })
	wg.Go(func() { r.leaderLoop(ctx, r.poolKick, r.pools.RefillPools) })
	wg.Go(func() { r.leaderLoop(ctx, r.groupKick, r.groups.RolloutGroups) })
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		all := false
		var hosts []string
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			all = true
			r.pending() // a full pass covers whatever was asked
		case <-r.kick:
			all, hosts = r.pending()
		}
		if !r.leader.Load() {
			continue
		}
		if all || len(hosts) > 3 {
			r.Pass(ctx, "")
			continue
		}
		for _, h := range hosts {
			r.Pass(ctx, h)
		}
	}
}

// leaderLoop runs f every ExpiryInterval, and whenever kick fires (nil:
// never), while this manager leads; one run at a time. The expiry sweep
// and the pool refill use it: neither may wait for the (much longer)
// full pass.
func (r *Reconciler) leaderLoop(ctx context.Context, kick <-chan struct{}, f func(context.Context)) {
	t := time.NewTicker(r.cfg.ExpiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		if r.leader.Load() {
			f(ctx)
		}
	}
}

// keepLease renews the lease well within its TTL; a manager that stops
// renewing (it died) loses it when the TTL runs out.
func (r *Reconciler) keepLease(ctx context.Context) {
	t := time.NewTicker(max(r.cfg.LeaseTTL/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		held, err := r.s.st.AcquireLease(ctx, leaseName, r.cfg.Holder, r.cfg.LeaseTTL)
		if err != nil && ctx.Err() == nil {
			r.s.log.Warn("reconciler lease: store unreachable", "err", err)
			held = false
		}
		if held != r.leader.Load() {
			r.leader.Store(held)
			if held {
				r.s.log.Info("reconciler: this manager now reconciles the fleet", "holder", r.cfg.Holder)
				r.Trigger("")
			} else {
				r.s.log.Info("reconciler: lease lost", "holder", r.cfg.Holder)
			}
		}
		if held {
			r.mLeader.Set(1)
		} else {
			r.mLeader.Set(0)
		}
		select {
		case <-ctx.Done():
			if r.leader.Load() {
				c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = r.s.st.ReleaseLease(c, leaseName, r.cfg.Holder)
				cancel()
			}
			return
		case <-t.C:
		}
	}
}

// Pass reconciles one host, or every host when hostID is "".
func (r *Reconciler) Pass(ctx context.Context, hostID string) PassStats {
	start := time.Now() // the duration is measured on the monotonic clock
	st := PassStats{At: r.s.now()}
	s := r.s
	if ids, err := s.st.MarkHostsUnreachable(ctx, s.now().Add(-s.cfg.HeartbeatTimeout)); err == nil {
		for _, id := range ids {
			r.hostLost(ctx, id)
		}
	}
	r.drainingLost(ctx)
	hosts, err := r.hosts.ListHosts(ctx)
	if err != nil {
		s.log.Error("reconcile: list hosts", "err", err)
		return st
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, r.cfg.HostsParallel)
	for _, h := range hosts {
		if hostID != "" && h.ID != hostID {
			continue
		}
		if h.State == store.HostUnreachable {
			continue // its VMs are marked; nothing is started elsewhere
		}
		st.Hosts++
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			vms, n, e := r.reconcileHost(ctx, h)
			mu.Lock()
			st.VMs += vms
			st.Actions += n
			st.Errors += e
			mu.Unlock()
		}()
	}
	wg.Wait()
	st.Duration = time.Since(start)
	r.mPass.Observe(st.Duration.Seconds())
	r.mu.Lock()
	r.last = st
	r.mu.Unlock()
	if st.Actions > 0 || st.Errors > 0 {
		s.log.Info("reconcile pass", "hosts", st.Hosts, "vms", st.VMs, "actions", st.Actions, "errors", st.Errors, "ms", st.Duration.Milliseconds())
	}
	return st
}

// hostVMs loads the VMs the store places on one host: a pass over one
// host reads that host's rows only, however large the fleet.
func (r *Reconciler) hostVMs(ctx context.Context, hostID string) ([]store.VM, error) {
	// What planning needs of each row, not the rows: at thousands of VMs
	// reading and decoding whole rows (spec, tags, template config) was
	// most of a pass. act reads the row whole before it does anything.
	return r.s.st.ListHostVMStates(ctx, hostID)
}

// drainingLost marks the VMs of draining hosts that went silent: the store
// keeps such a host "draining" (the operator's intent), so it is not among
// the hosts MarkHostsUnreachable returns. Each silence is marked once.
func (r *Reconciler) drainingLost(ctx context.Context) {
	s := r.s
	hosts, err := s.st.ListHosts(ctx)
	if err != nil {
		return
	}
	stale := s.now().Add(-s.cfg.HeartbeatTimeout)
	r.mu.Lock()
	var lost []string
	if r.silent == nil {
		r.silent = map[string]bool{}
	}
	for _, h := range hosts {
		switch {
		case h.State != store.HostDraining || !h.LastSeenAt.Before(stale):
			delete(r.silent, h.ID) // reporting again: a later silence counts anew
		case !r.silent[h.ID]:
			r.silent[h.ID] = true
			lost = append(lost, h.ID)
		}
	}
	r.mu.Unlock()
	for _, id := range lost {
		r.hostLost(ctx, id)
	}
}

// hostLost marks the VMs of a host that stopped reporting. They are not
// started elsewhere: the host may still run them, and a VM must never run
// twice.
func (r *Reconciler) hostLost(ctx context.Context, hostID string) {
	s := r.s
	s.log.Warn("host unreachable: missed heartbeats", "host_id", hostID)
	var vms []store.VM
	f := store.VMFilter{HostID: hostID, Limit: store.MaxLimit}
	for {
		page, next, err := s.st.ListVMs(ctx, f)
		if err != nil {
			return
		}
		vms = append(vms, page...)
		if next == "" {
			break
		}
		f.Cursor = next
	}
	for _, vm := range vms {
		msg := fmt.Sprintf("host %s unreachable since %s; the VM is not started elsewhere", hostID, s.now().UTC().Format(time.RFC3339))
		_, _ = s.update(ctx, vm.ID, func(v *store.VM) error { v.LastError = msg; return nil })
		s.event(ctx, vm.ID, store.LevelWarn, "%s", msg)
		r.mActions.WithLabelValues("mark_unreachable", "ok").Inc()
	}
}

// action is one step the plan for a host decided on.
type action struct {
	name string
	vmID string
	do   func(ctx context.Context) error
}

// reconcileHost compares one host's inventory with the store and acts.
// reconcileHost reconciles one host from its own rows and inventory and
// returns how many VMs it has, and the actions taken and failed.
func (r *Reconciler) reconcileHost(ctx context.Context, h store.Host) (int, int, int) {
	s := r.s
	vms, err := r.hostVMs(ctx, h.ID)
	if err != nil {
		s.log.Error("reconcile: list vms", "host", h.Name, "err", err)
		return 0, 0, 1
	}
	snaps, err := s.st.ListSnapshots(ctx, store.SnapshotFilter{HostID: h.ID})
	if err != nil {
		s.log.Error("reconcile: list snapshots", "host", h.Name, "err", err)
		return len(vms), 0, 1
	}
	// What the store places on this host; anything else found there is an
	// orphan, wherever else its VM may live.
	known := make(map[string]store.VM, len(vms))
	for _, vm := range vms {
		known[vm.ID] = vm
	}
	keep := map[string]bool{} // run dirs that hold catalogued snapshots
	for _, sn := range snaps {
		keep[sn.HostID+"/"+sn.VMID] = true
	}
	ag := s.agents.get(h.Addr)
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	inv, err := ag.Inventory(ictx)
	cancel()
	if err != nil {
		s.log.Warn("reconcile: inventory failed", "host", h.Name, "err", err)
		return len(vms), 0, 1
	}
	plan := r.plan(h, inv, vms, known, keep)
	plan = append(plan, r.planSnapshotDirs(ctx, h, ag)...)
	if len(plan) == 0 {
		return len(vms), 0, 0
	}
	var errs atomic.Int32
	var wg sync.WaitGroup
	sem := make(chan struct{}, r.cfg.HostParallel)
	for _, a := range plan {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			actx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout)
			defer cancel()
			err := a.do(actx)
			result := "ok"
			if err != nil {
				result = "error"
				errs.Add(1)
				s.log.Warn("reconcile action failed", "action", a.name, "vm_id", a.vmID, "host", h.Name, "err", err)
			}
			r.mActions.WithLabelValues(a.name, result).Inc()
		}()
	}
	wg.Wait()
	return len(vms), len(plan), int(errs.Load())
}

// plan decides what to do on one host. Every action is idempotent, so a
// plan built from a slightly stale view does no harm: the next pass
// rebuilds it until it is empty.
func (r *Reconciler) plan(h store.Host, inv agentapi.Inventory, vms []store.VM, known map[string]store.VM, keep map[string]bool) []action {
	s := r.s
	now := s.now()
	live := map[string]agentapi.VMM{}
	for _, m := range inv.VMMs {
		live[m.VMID] = m
	}
	taps := map[string]bool{}
	for _, t := range inv.Taps {
		taps[t.Name] = true
	}
	socks := map[string]bool{}
	for _, so := range inv.Sockets {
		socks[so.VMID] = true
	}
	var plan []action
	for _, vm := range vms {
		if a, ok := r.planVM(vm, live, taps, socks, now); ok {
			plan = append(plan, a)
		}
	}

	// Orphans: resources of VMs the store does not place on this host.
	claimed := func(vmID string) bool {
		vm, ok := known[vmID]
		return ok && vm.HostID == h.ID
	}
	seen := map[string]bool{}
	orphanVM := func(vmID, what string) {
		if claimed(vmID) || seen[vmID] || keep[h.ID+"/"+vmID] && what == "run dir" {
			return
		}
		if !r.orphanReady(h.ID+"/vm/"+vmID, now) {
			return
		}
		seen[vmID] = true
		plan = append(plan, action{name: "gc_vm", vmID: vmID, do: func(ctx context.Context) error {
			return r.withLock(ctx, vmID, func() error {
				if vm, err := s.st.GetVM(ctx, vmID); err == nil && vm.HostID == h.ID {
					return nil // claimed meanwhile (a create that was starting)
				}
				s.log.Info("removing orphan", "what", what, "vm_id", vmID, "host", h.Name)
				return s.agents.get(h.Addr).Delete(ctx, vmID)
			})
		}})
	}
	for _, m := range inv.VMMs {
		orphanVM(m.VMID, "process")
	}
	for _, d := range inv.RunDirs {
		orphanVM(d.VMID, "run dir")
	}
	for _, t := range inv.Taps {
		if t.VMID != "" && claimed(t.VMID) {
			continue
		}
		if t.VMID != "" {
			orphanVM(t.VMID, "tap")
			continue
		}
		name := t.Name
		if !r.orphanReady(h.ID+"/tap/"+name, now) {
			continue
		}
		plan = append(plan, action{name: "gc_tap", do: func(ctx context.Context) error {
			s.log.Info("removing orphan tap", "tap", name, "host", h.Name)
			return s.agents.get(h.Addr).DeleteTap(ctx, name)
		}})
	}
	r.forgetClaimed(h.ID, now)
	return plan
}

// planSnapshotDirs removes snapshot dirs the catalog does not know (a
// snapshot whose manager died before recording it) after the orphan grace.
func (r *Reconciler) planSnapshotDirs(ctx context.Context, h store.Host, ag *agentapi.Client) []action {
	s := r.s
	dirs, err := ag.Snapshots(ctx)
	if err != nil || len(dirs.Items) == 0 {
		return nil
	}
	// Matched by VM and snapshot id, whatever host id the catalog has: a
	// host removed and registered again gets a new id, not new snapshots.
	// One lookup per dir on the host: the fleet's catalog is not read.
	inCatalog := func(vmID, sid string) bool {
		sn, err := s.st.GetSnapshot(ctx, sid)
		return (err == nil && sn.VMID == vmID) || (err != nil && !errors.Is(err, store.ErrNotFound))
	}
	now := s.now()
	var plan []action
	for _, d := range dirs.Items {
		if inCatalog(d.VMID, d.SnapshotID) || !r.orphanReady(h.ID+"/snap/"+d.VMID+"/"+d.SnapshotID, now) {
			continue
		}
		plan = append(plan, action{name: "gc_snapshot", vmID: d.VMID, do: func(ctx context.Context) error {
			// Under the VM's lock: a snapshot still being written holds it.
			return r.withLock(ctx, d.VMID, func() error {
				if sn, err := s.st.GetSnapshot(ctx, d.SnapshotID); err == nil && sn.VMID == d.VMID {
					return nil // recorded meanwhile
				}
				s.log.Info("removing snapshot files the catalog does not know", "vm_id", d.VMID, "snapshot_id", d.SnapshotID, "host", h.Name)
				return ag.DeleteSnapshot(ctx, d.VMID, d.SnapshotID)
			})
		}})
	}
	return plan
}

// planVM decides what one VM of the store needs on its host. Each action
// re-reads the VM under its lock and does nothing if the VM changed since
// the plan was made (act): the pass's view may be seconds old, and a
// user's stop, start or pause in between must win.
func (r *Reconciler) planVM(vm store.VM, live map[string]agentapi.VMM, taps, socks map[string]bool, now time.Time) (action, bool) {
	s := r.s
	_, running := live[vm.ID]
	do := func(name string, f func(ctx context.Context, fresh store.VM) error) (action, bool) {
		return action{name: name, vmID: vm.ID, do: func(ctx context.Context) error { return r.act(ctx, vm, f) }}, true
	}
	switch vm.State {
	case store.VMDeleting:
		return do("finish_delete", func(ctx context.Context, fresh store.VM) error {
			return s.deleteLocked(ctx, fresh, false)
		})
	case store.VMStopping:
		return do("finish_stop", func(ctx context.Context, fresh store.VM) error {
			_, err := s.stopLocked(ctx, fresh)
			return err
		})
	case store.VMStopped, store.VMFailed:
		if running || socks[vm.ID] {
			// A VMM (or its socket) outlived its stop: end it.
			return do("stop_stray", func(ctx context.Context, fresh store.VM) error {
				return s.agentFor(ctx, fresh).Stop(ctx, fresh.ID, agentapi.StopRequest{})
			})
		}
		if vm.State == store.VMFailed && vm.DesiredState == store.VMRunning && vm.Retries > 0 {
			// A restart of ours whose boot failed: try again, with backoff.
			// (Failures of a user's create or start have no retries.)
			return r.restart(vm, firstNonEmpty(vm.LastError, "restart failed"), now)
		}
		return action{}, false
	case store.VMRequested, store.VMConfigured:
		if vm.DesiredState == store.VMStopped || now.Sub(vm.UpdatedAt) < r.cfg.StuckGrace {
			return action{}, false // a boot in progress, or a create with start=false
		}
		return r.restart(vm, "boot abandoned in state "+string(vm.State), now)
	case store.VMRunning, store.VMPaused:
		if vm.DesiredState == store.VMStopped {
			// Running though someone asked it to stop (a race lost to an
			// operation of another manager): stop it.
			return do("stop_unwanted", func(ctx context.Context, fresh store.VM) error {
				_, err := s.stopLocked(ctx, fresh)
				return err
			})
		}
		healthy := running && socks[vm.ID] && (vm.TAP == "" || taps[vm.TAP])
		if healthy && vm.State == store.VMPaused && vm.DesiredState == store.VMRunning {
			// Paused by an operation that never finished (a snapshot whose
			// manager died): resume it.
			return do("resume", func(ctx context.Context, fresh store.VM) error {
				if err := s.agentFor(ctx, fresh).Firecracker(fresh.ID).Resume(ctx); err != nil {
					return s.stepError(fresh, "resume", err)
				}
				_, err := s.setState(ctx, fresh.ID, store.VMRunning, "")
				s.event(ctx, fresh.ID, store.LevelWarn, "reconciler: resumed a guest left paused by an interrupted operation")
				return err
			})
		}
		if healthy {
			if vm.Retries > 0 && vm.NextAttemptAt != nil && now.Sub(*vm.NextAttemptAt) > r.cfg.RetryMax {
				// Stable again for a while: forget old crashes.
				return do("reset_retries", func(ctx context.Context, fresh store.VM) error {
					_, err := s.update(ctx, fresh.ID, func(v *store.VM) error { v.Retries, v.NextAttemptAt = 0, nil; return nil })
					return err
				})
			}
			return action{}, false
		}
		why := "vmm process gone"
		switch {
		case running && !socks[vm.ID]:
			why = "api socket gone"
		case running:
			why = "tap " + vm.TAP + " gone"
		}
		return r.restart(vm, why, now)
	}
	return action{}, false
}

// restart boots a VM again after its VMM died (or its boot was abandoned
// or failed), with doubling delays; after MaxRetries the VM is failed.
func (r *Reconciler) restart(vm store.VM, why string, now time.Time) (action, bool) {
	s := r.s
	if vm.NextAttemptAt != nil && now.Before(*vm.NextAttemptAt) {
		return action{}, false // backing off
	}
	if vm.Retries >= r.cfg.MaxRetries {
		if vm.State == store.VMFailed {
			return action{}, false // already given up
		}
		return action{name: "give_up", vmID: vm.ID, do: func(ctx context.Context) error {
			return r.act(ctx, vm, func(ctx context.Context, fresh store.VM) error {
				msg := fmt.Sprintf("%s; restarted %d times, giving up", why, fresh.Retries)
				_ = s.agentFor(ctx, fresh).Stop(ctx, fresh.ID, agentapi.StopRequest{})
				_, err := s.update(ctx, fresh.ID, func(v *store.VM) error {
					v.State, v.LastError, v.NextAttemptAt = store.VMFailed, msg, nil
					return nil
				})
				s.event(ctx, fresh.ID, store.LevelError, "reconciler: %s", msg)
				return err
			})
		}}, true
	}
	return action{name: "restart", vmID: vm.ID, do: func(ctx context.Context) error {
		return r.act(ctx, vm, func(ctx context.Context, fresh store.VM) error {
			delay := min(r.cfg.RetryBase<<fresh.Retries, r.cfg.RetryMax)
			next := s.now().Add(delay)
			paused := fresh.DesiredState == store.VMPaused
			// One write before any host call: retries, backoff and a
			// desired state the plan redoes even if the host calls fail.
			cur, err := s.update(ctx, fresh.ID, func(v *store.VM) error {
				v.Retries++
				v.NextAttemptAt = &next
				v.State = store.VMRequested
				v.DesiredState = store.VMRunning
				v.LastError = why
				return nil
			})
			if err != nil {
				return err
			}
			s.event(ctx, fresh.ID, store.LevelWarn, "reconciler: %s; restarting (attempt %d)", why, cur.Retries)
			if paused {
				s.event(ctx, fresh.ID, store.LevelWarn, "reconciler: the paused guest's memory was lost with its VMM; it runs again from boot")
			}
			if err := s.agentFor(ctx, cur).Stop(ctx, fresh.ID, agentapi.StopRequest{}); err != nil {
				return agentError("vm "+fresh.ID+": clean up before restart", cur, err)
			}
			_, err = s.boot(ctx, cur)
			return err
		})
	}}, true
}

// act runs f on the VM as it is now, holding its lock — unless an
// operation holds the lock (the VM is busy) or the VM changed since the
// plan (a newer generation): then this pass leaves it to the next one.
func (r *Reconciler) act(ctx context.Context, planned store.VM, f func(context.Context, store.VM) error) error {
	unlock, ok := r.s.tryLockVM(ctx, planned.ID)
	if !ok {
		return nil
	}
	defer unlock()
	fresh, err := r.s.st.GetVM(ctx, planned.ID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if fresh.Generation != planned.Generation {
		return nil
	}
	return f(ctx, fresh)
}

// withLock runs f holding the VM's lock, unless an operation holds it:
// then the VM is busy and this pass leaves it alone. For resources of no
// VM, which have no row to re-check.
func (r *Reconciler) withLock(ctx context.Context, vmID string, f func() error) error {
	unlock, ok := r.s.tryLockVM(ctx, vmID)
	if !ok {
		return nil
	}
	defer unlock()
	return f()
}

// orphanReady reports whether key has been unclaimed for OrphanGrace.
func (r *Reconciler) orphanReady(key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	first, ok := r.orphans[key]
	if !ok {
		r.orphans[key] = now
		return r.cfg.OrphanGrace <= 0
	}
	return now.Sub(first) >= r.cfg.OrphanGrace
}

// forgetClaimed drops first-seen times not refreshed for a while (the
// resource went away or was claimed).
func (r *Reconciler) forgetClaimed(hostID string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, t := range r.orphans {
		if now.Sub(t) > 10*r.cfg.OrphanGrace+10*r.cfg.Interval {
			delete(r.orphans, k)
		}
	}
}
