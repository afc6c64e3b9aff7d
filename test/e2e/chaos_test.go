package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vishvananda/netlink"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// fastReconcile makes the reconciler act in seconds, not minutes.
var fastReconcile = []string{
	"--reconcile-interval", "1s", "--orphan-grace", "2s", "--stuck-grace", "3s",
	"--heartbeat-timeout", "3s", "--lease-ttl", "3s",
}

// converge is the convergence bound the chaos scenarios must meet.
const converge = 30 * time.Second

// chaosCluster is a fleet of n hosts with fast reconciliation and some VMs.
func chaosCluster(t *testing.T, engine string, hosts, vms int, agentEnv ...string) (*cluster, []apitypes.VM) {
	t.Helper()
	return chaosClusterWith(t, newCluster(t, engine, 0, fastReconcile...), hosts, vms, agentEnv...)
}

func chaosClusterWith(t *testing.T, c *cluster, hosts, vms int, agentEnv ...string) (*cluster, []apitypes.VM) {
	t.Helper()
	for i := range hosts {
		c.startAgent(fmt.Sprintf("host-%d", i), agentEnv...)
	}
	c.waitHosts(hosts)
	kernel := simtest.WriteKernel(t, c.dir)
	var out []apitypes.VM
	for i := range vms {
		vm, err := c.client.CreateVM(context.Background(), apitypes.CreateVMRequest{
			Name: fmt.Sprintf("chaos-%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel},
		}, true)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, vm)
	}
	return c, out
}

func (c *cluster) agentOf(vm apitypes.VM) *agentProc {
	for _, a := range c.agents {
		if strings.HasSuffix(vm.HostAddr, a.net.agentIP+":9090") {
			return a
		}
	}
	c.t.Fatalf("no agent for host %s", vm.HostAddr)
	return nil
}

// vmmPID returns the VM's VMM pid as its agent reports it (0: none).
func (c *cluster) vmmPID(vm apitypes.VM) int {
	inv, err := c.agentClient(c.agentOf(vm)).Inventory(context.Background())
	if err != nil {
		return 0
	}
	for _, m := range inv.VMMs {
		if m.VMID == vm.ID {
			return m.PID
		}
	}
	return 0
}

// waitConverged waits until every VM the store holds is in its desired
// state and each host's inventory matches the store exactly: the running
// VMs have a live VMM, a socket and a TAP, and nothing else is there.
func (c *cluster) waitConverged(t *testing.T, what string, start time.Time) time.Duration {
	t.Helper()
	eventually(t, converge, what, func() error { return c.converged() })
	d := time.Since(start)
	t.Logf("%s: converged in %s", what, d.Round(time.Millisecond))
	return d
}

// allVMs pages through every VM.
func (c *cluster) allVMs() ([]apitypes.VM, error) {
	var out []apitypes.VM
	for vm, err := range c.client.VMs(context.Background(), nexus.ListVMsOptions{Limit: 1000}) {
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	return out, nil
}

func (c *cluster) converged() error {
	ctx := context.Background()
	items, err := c.allVMs()
	if err != nil {
		return err
	}
	l := apitypes.VMList{Items: items}
	want := map[string]map[string]bool{} // agent url → vm ids that must run there
	for _, vm := range l.Items {
		if vm.State != vm.DesiredState {
			return fmt.Errorf("vm %s is %s, wants %s", vm.Name, vm.State, vm.DesiredState)
		}
		if vm.State == "running" || vm.State == "paused" {
			a := c.agentOf(vm)
			if want[a.url] == nil {
				want[a.url] = map[string]bool{}
			}
			want[a.url][vm.ID] = true
		}
	}
	for _, a := range c.agents {
		if a.cmd.ProcessState != nil {
			continue // a host taken away on purpose
		}
		inv, err := c.agentClient(a).Inventory(ctx)
		if err != nil {
			return err
		}
		if len(inv.VMMs) != len(want[a.url]) || len(inv.Sockets) != len(want[a.url]) || len(inv.Taps) != len(want[a.url]) {
			return fmt.Errorf("host %s has %d vmms, %d sockets, %d taps; the store places %d running VMs there",
				a.name, len(inv.VMMs), len(inv.Sockets), len(inv.Taps), len(want[a.url]))
		}
		for _, m := range inv.VMMs {
			if !want[a.url][m.VMID] {
				return fmt.Errorf("host %s runs vmm of %s, which the store does not place there", a.name, m.VMID)
			}
		}
		for _, s := range inv.Sockets {
			if !s.Live {
				return fmt.Errorf("host %s has a dead socket of %s", a.name, s.VMID)
			}
		}
		for _, d := range inv.RunDirs {
			if !want[a.url][d.VMID] && !c.knownStopped(l.Items, d.VMID) {
				return fmt.Errorf("host %s has a run dir of unknown vm %s", a.name, d.VMID)
			}
		}
	}
	return nil
}

func (c *cluster) knownStopped(vms []apitypes.VM, id string) bool {
	for _, vm := range vms {
		if vm.ID == id {
			return true
		}
	}
	return false
}

// teardown deletes every VM and checks nothing is left on any host.
func (c *cluster) teardown(t *testing.T, vms []apitypes.VM) {
	t.Helper()
	var ids []string
	for _, vm := range vms {
		ids = append(ids, vm.ID)
	}
	res, err := c.client.Bulk(context.Background(), "delete", ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK && !strings.Contains(r.Error, "not found") {
			t.Fatalf("delete %s: %s", r.ID, r.Error)
		}
	}
	c.assertNoLeaks(ids...)
}

func TestChaosKillVMM(t *testing.T) {
	c, vms := chaosCluster(t, "sqlite", 2, 4)
	victim := vms[1]
	old := c.vmmPID(victim)
	if old == 0 {
		t.Fatal("victim has no vmm")
	}
	start := time.Now()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, converge, "the killed VMM is replaced", func() error {
		if p := c.vmmPID(victim); p == 0 || p == old {
			return fmt.Errorf("pid %d", p)
		}
		return nil
	})
	c.waitConverged(t, "SIGKILL a VMM", start)
	evs, _ := c.client.Events(context.Background(), victim.ID)
	if !strings.Contains(fmt.Sprint(evs.Items), "restarting") {
		t.Fatalf("no restart in the VM's history: %+v", evs.Items)
	}
	c.teardown(t, vms)
}

func TestChaosAgentRestart(t *testing.T) {
	c, vms := chaosCluster(t, "sqlite", 2, 4)
	before := map[string]int{}
	for _, vm := range vms {
		before[vm.ID] = c.vmmPID(vm)
	}
	start := time.Now()
	c.restartAgent(c.agents[0])
	c.waitConverged(t, "SIGKILL an agent and restart it", start)
	for _, vm := range vms {
		if p := c.vmmPID(vm); p != before[vm.ID] {
			t.Fatalf("vm %s: vmm %d → %d: an agent restart must not restart VMs", vm.Name, before[vm.ID], p)
		}
	}
	c.teardown(t, vms)
}

func TestChaosManagerDiesMidCreate(t *testing.T) {
	// InstanceStart takes 2 s here, so the manager can be killed while a
	// create is in flight.
	c, vms := chaosCluster(t, "sqlite", 1, 0, "FC_SIM_START_DELAY=2s")
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "interrupted", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, false)
	if err != nil {
		t.Fatal(err)
	}
	// The boot's configuration and start are one call to the agent: once
	// its VMM runs, the boot is in that call (InstanceStart takes 2 s)
	// and the VM is still requested.
	eventually(t, 10*time.Second, "boot reaches its VMM", func() error {
		v, err := c.client.GetVM(ctx, vm.ID)
		if err != nil || v.State != "requested" || c.vmmPID(v) == 0 {
			return fmt.Errorf("state %s, vmm pid %d, %v", v.State, c.vmmPID(v), err)
		}
		return nil
	})
	start := time.Now()
	c.restartManager()
	c.waitHosts(1)
	c.waitConverged(t, "SIGKILL the manager mid-create", start)
	if v, _ := c.client.GetVM(ctx, vm.ID); v.State != "running" {
		t.Fatalf("interrupted create ended %s", v.State)
	}
	c.teardown(t, append(vms, vm))
}

func TestChaosHandDeletes(t *testing.T) {
	c, vms := chaosCluster(t, "sqlite", 1, 3)
	a := c.agents[0]
	tapVM, sockVM := vms[0], vms[1]
	start := time.Now()
	if err := a.net.nl.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: hostlayout.TapName(tapVM.ID)}}); err != nil {
		t.Fatalf("delete tap by hand: %v", err)
	}
	if err := os.Remove(a.layout().SockPath(sockVM.ID)); err != nil {
		t.Fatalf("delete socket by hand: %v", err)
	}
	c.waitConverged(t, "delete a TAP and a socket by hand", start)
	if !a.net.hasLink(hostlayout.TapName(tapVM.ID)) {
		t.Fatal("the TAP was not recreated")
	}
	if _, err := os.Stat(a.layout().SockPath(sockVM.ID)); err != nil {
		t.Fatalf("the socket was not recreated: %v", err)
	}
	c.teardown(t, vms)
}

func TestChaosOrphans(t *testing.T) {
	c, vms := chaosCluster(t, "sqlite", 1, 2)
	a := c.agents[0]
	ag := c.agentClient(a)
	ctx := context.Background()
	// Things no VM of the store owns: a live VMM with its run dir, a TAP
	// of the agent's prefix, an empty run dir.
	ghost := uuid.NewString()
	if _, err := ag.Spawn(ctx, ghost, agentapi.SpawnRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Tap(ctx, ghost, agentapi.TapRequest{}); err != nil {
		t.Fatal(err)
	}
	strayTap := "tap-0123456789a"
	if err := a.net.nl.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: strayTap}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
		t.Fatal(err)
	}
	emptyDir := a.layout().VMDir(uuid.NewString())
	if err := os.MkdirAll(emptyDir, 0o750); err != nil {
		t.Fatal(err)
	}
	// A snapshot dir the catalog never heard of (its manager died first).
	straySnap, err := ag.PrepareSnapshot(ctx, vms[0].ID, uuid.NewString(), agentapi.PrepareSnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.waitConverged(t, "orphan process, TAPs and run dir removed", start)
	if a.net.hasLink(strayTap) || a.net.hasLink(hostlayout.TapName(ghost)) {
		t.Fatal("orphan TAP survived")
	}
	if _, err := os.Stat(emptyDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("orphan run dir survived")
	}
	eventually(t, converge, "uncatalogued snapshot dir removed", func() error {
		if _, err := os.Stat(straySnap.Dir); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s still there", straySnap.Dir)
		}
		return nil
	})
	if time.Since(start) < 2*time.Second {
		t.Fatal("orphans were removed before their grace period")
	}
	for _, vm := range vms {
		if c.vmmPID(vm) == 0 {
			t.Fatalf("vm %s lost its vmm to garbage collection", vm.Name)
		}
	}
	c.teardown(t, vms)
}

func TestChaosHostGone(t *testing.T) {
	c, vms := chaosCluster(t, "sqlite", 2, 4)
	gone := c.agents[0]
	var lost []apitypes.VM
	for _, vm := range vms {
		if c.agentOf(vm) == gone {
			lost = append(lost, vm)
		}
	}
	if len(lost) == 0 {
		t.Fatal("the scheduler put nothing on host-0: placement does not spread")
	}
	otherBefore, _ := c.agentClient(c.agents[1]).Inventory(context.Background())
	start := time.Now()
	gone.kill() // for good; its VMMs are separate processes and keep running
	ctx := context.Background()
	eventually(t, converge, "host marked unreachable and its VMs marked", func() error {
		l, err := c.client.Hosts(ctx)
		if err != nil {
			return err
		}
		for _, h := range l.Items {
			if h.Name == gone.name && h.State != "unreachable" {
				return fmt.Errorf("host %s is %s", h.Name, h.State)
			}
		}
		for _, vm := range lost {
			v, err := c.client.GetVM(ctx, vm.ID)
			if err != nil || !strings.Contains(v.LastError, "unreachable") {
				return fmt.Errorf("vm %s: last_error %q", vm.Name, v.LastError)
			}
		}
		return nil
	})
	t.Logf("stop an agent for good: host and VMs marked in %s", time.Since(start).Round(time.Millisecond))
	waitPasses(t, c.client, 3)
	otherAfter, _ := c.agentClient(c.agents[1]).Inventory(ctx)
	if len(otherAfter.VMMs) != len(otherBefore.VMMs) {
		t.Fatalf("VMs of the lost host were started elsewhere: %d → %d VMMs on host-1", len(otherBefore.VMMs), len(otherAfter.VMMs))
	}
	// A plain delete needs the host; force deletes the row without it.
	if err := c.client.DeleteVM(ctx, lost[0].ID); !isStatus(err, 502) {
		t.Fatalf("delete on a lost host: %v; want 502", err)
	}
	for _, vm := range lost {
		if err := c.client.Do(ctx, "DELETE", "/v1/vms/"+vm.ID, url.Values{"force": {"true"}}, nil, nil); err != nil {
			t.Fatalf("force delete: %v", err)
		}
	}
	if err := c.client.Do(ctx, "DELETE", "/v1/hosts/"+gone.name, nil, nil, nil); err != nil {
		t.Fatalf("remove the lost host: %v", err)
	}
	killVMMs(gone.runDir)
	var rest []apitypes.VM
	for _, vm := range vms {
		if c.agentOf(vm) != gone {
			rest = append(rest, vm)
		}
	}
	c.teardown(t, rest)
}

func TestDrain(t *testing.T) {
	c, _ := chaosCluster(t, "sqlite", 2, 0)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	if err := c.client.Do(ctx, "POST", "/v1/hosts/host-0/drain", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	var vms []apitypes.VM
	for i := range 4 {
		vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("d%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
		if err != nil {
			t.Fatal(err)
		}
		if c.agentOf(vm) == c.agents[0] {
			t.Fatalf("vm %s placed on the drained host", vm.Name)
		}
		vms = append(vms, vm)
	}
	if _, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "pinned", HostID: "host-0", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true); !isStatus(err, 503) {
		t.Fatalf("create pinned to a drained host: %v; want 503", err)
	}
	if err := c.client.Do(ctx, "DELETE", "/v1/hosts/host-1", nil, nil, nil); !isStatus(err, 409) {
		t.Fatalf("remove a host with VMs: %v; want 409", err)
	}
	if err := c.client.Do(ctx, "POST", "/v1/hosts/host-0/undrain", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "after", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil || c.agentOf(vm) != c.agents[0] {
		t.Fatalf("after undrain the emptier host-0 should get the VM: %+v, %v", vm.HostAddr, err)
	}
	c.teardown(t, append(vms, vm))
}

// TestTwoManagersOneReconciler: two managers share Postgres; exactly one
// reconciles, and when it dies the other takes over and heals the fleet.
func TestTwoManagersOneReconciler(t *testing.T) {
	port2 := freePort(t)
	c := newCluster(t, "postgres", 0, fastReconcile...)
	c.ports2 = []int{port2} // agents fail over to the second manager
	c, vms := chaosClusterWith(t, c, 1, 2)
	m2 := c.start("manager-2", nil, append([]string{"manager", "--listen", fmt.Sprintf("0.0.0.0:%d", port2),
		"--database-url", c.dsn, "--join-token", c.join}, fastReconcile...)...)
	t.Cleanup(func() {
		m2.kill()
		if t.Failed() {
			b, _ := os.ReadFile(m2.log)
			t.Logf("--- manager-2.log ---\n%s", tail(string(b), 40))
		}
	})
	m2.waitLog(t, "manager listening", 20*time.Second)
	c2 := newClient(fmt.Sprintf("http://127.0.0.1:%d", port2), c.admin)
	leader := func(cl *nexus.Client) bool {
		var st apitypes.ReconcilerStatus
		if err := cl.Do(context.Background(), "GET", "/v1/reconciler", nil, nil, &st); err != nil {
			return false
		}
		return st.Leader
	}
	var l1, l2 bool
	eventually(t, converge, "exactly one leader", func() error {
		if l1, l2 = leader(c.client), leader(c2); l1 == l2 {
			return fmt.Errorf("leaders: manager-1 %v, manager-2 %v", l1, l2)
		}
		return nil
	})
	if !l1 {
		t.Fatal("the first manager should have taken the free lease first")
	}
	start := time.Now()
	c.mgr.kill()
	eventually(t, converge, "the second manager takes over", func() error {
		if !leader(c2) {
			return errors.New("not leader yet")
		}
		return nil
	})
	t.Logf("reconciler failover in %s", time.Since(start).Round(time.Millisecond))
	// And it reconciles: a killed VMM is replaced.
	old := c.vmmPID(vms[0])
	_ = syscall.Kill(old, syscall.SIGKILL)
	eventually(t, converge, "the new leader restarts a killed VMM", func() error {
		if p := c.vmmPID(vms[0]); p == 0 || p == old {
			return fmt.Errorf("pid %d", p)
		}
		return nil
	})
	c.client = c2
	c.teardown(t, vms)
}

// TestDrainingHostGone: a draining host that goes silent shows unreachable
// and its VMs are marked, like a ready host's.
func TestDrainingHostGone(t *testing.T) {
	c, vms := chaosCluster(t, "sqlite", 1, 1)
	ctx := context.Background()
	if err := c.client.Do(ctx, "POST", "/v1/hosts/host-0/drain", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	c.agents[0].kill()
	eventually(t, converge, "silent draining host and its VM marked", func() error {
		l, err := c.client.Hosts(ctx)
		if err != nil || len(l.Items) != 1 || l.Items[0].State != "unreachable" {
			return fmt.Errorf("hosts %+v, %v", l.Items, err)
		}
		v, err := c.client.GetVM(ctx, vms[0].ID)
		if err != nil || !strings.Contains(v.LastError, "unreachable") {
			return fmt.Errorf("vm last_error %q, %v", v.LastError, err)
		}
		return nil
	})
	killVMMs(c.agents[0].runDir)
}
