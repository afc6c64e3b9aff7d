package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// bootArgs is the kernel command line firecracker was given.
func (e *env) bootArgs(vm store.VM) string {
	e.t.Helper()
	cfg, err := e.agent.Firecracker(vm.ID).GetVMConfig(e.ctx)
	if err != nil || cfg.BootSource == nil {
		e.t.Fatalf("vm %s config: %+v, %v", vm.Name, cfg, err)
	}
	return cfg.BootSource.BootArgs
}

func (e *env) vm(id string) store.VM {
	e.t.Helper()
	vm, err := e.st.GetVM(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// Every VM with a network interface gets its own address of its host's
// subnet, which reaches the guest as ip= and stays with the VM across
// stop/start and manager restarts; a delete or a failed create frees it.
func TestAddressAllocation(t *testing.T) {
	e := newEnv(t)
	a, b := e.mustCreate("a"), e.mustCreate("b")
	if a.IP != "172.20.0.2" || b.IP != "172.20.0.3" || a.Subnet != "172.20.0.0/16" || a.Gateway != "172.20.0.1" {
		t.Fatalf("addresses a=%s b=%s (%s via %s); want 172.20.0.2 and .3 in 172.20.0.0/16 via 172.20.0.1", a.IP, b.IP, a.Subnet, a.Gateway)
	}
	if v := View(a); v.IP != a.IP || v.Gateway != "172.20.0.1" || v.Subnet != "172.20.0.0/16" {
		t.Errorf("GET shows ip %q gateway %q subnet %q", v.IP, v.Gateway, v.Subnet)
	}
	want := "console=ttyS0 reboot=k panic=1 pci=off ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off:172.20.0.1"
	if got := e.bootArgs(a); got != want {
		t.Errorf("boot args = %q; want %q", got, want)
	}
	if !strings.Contains(e.events(a.ID), "requested on host hollow-1, address 172.20.0.2/16 via 172.20.0.1") {
		t.Errorf("no address in the create event:\n%s", e.events(a.ID))
	}

	// The user's own ip= and console win; the rootfs adds root=.
	r := simRootfs(t, e)
	c, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: "c", VMConfig: apitypes.VMConfig{KernelPath: e.kernel, RootfsPath: r,
		BootArgs: "console=ttyS1 ip=10.0.0.9::10.0.0.1:255.0.0.0::eth0:off"}}, CreateOptions{Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.bootArgs(c), "reboot=k panic=1 pci=off root=/dev/vda rw console=ttyS1 ip=10.0.0.9::10.0.0.1:255.0.0.0::eth0:off"; got != want {
		t.Errorf("boot args with the user's ip= = %q; want %q", got, want)
	}

	// Kept across stop/start.
	for _, act := range []func(context.Context, Scope, string) (store.VM, error){e.m.VMs.StopVM, e.m.VMs.StartVM} {
		if _, err := act(e.ctx, All, a.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.vm(a.ID); got.IP != a.IP || !strings.Contains(e.bootArgs(got), "ip=172.20.0.2:") {
		t.Errorf("after stop/start: %s, boot args %q; want 172.20.0.2 kept", got.IP, e.bootArgs(got))
	}

	// No NIC, no address; a VM created stopped has one.
	off, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: "offline",
		VMConfig: apitypes.VMConfig{KernelPath: e.kernel, NIC: &apitypes.NIC{Disabled: true}}}, CreateOptions{Wait: true})
	if err != nil || off.IP != "" || strings.Contains(e.bootArgs(off), "ip=") {
		t.Fatalf("a VM without NIC = %+v, %v; want no address and no ip=", off, err)
	}
	no := false
	stopped, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: "later", Start: &no,
		VMConfig: apitypes.VMConfig{KernelPath: e.kernel}}, CreateOptions{Wait: true})
	if err != nil || stopped.IP != "172.20.0.5" {
		t.Fatalf("a VM created stopped = %s, %v; want 172.20.0.5", stopped.IP, err)
	}

	// A failed create leaves no address behind: the next VM gets .6.
	e.faults.add(t, &fault{method: "POST", suffix: "/spawn", nth: 1, status: 500, body: `{"error":"spawn_failed","status":500,"message":"injected"}`})
	if _, err := e.create("boom"); err == nil {
		t.Fatal("create with a failing spawn succeeded")
	}
	e.faults.clear()
	if d := e.mustCreate("d"); d.IP != "172.20.0.6" {
		t.Errorf("after a failed create the next VM has %s; want 172.20.0.6 (the failed one's freed)", d.IP)
	}
	// A delete frees the address; the lowest free one goes first.
	if err := e.m.VMs.DeleteVM(e.ctx, All, b.ID); err != nil {
		t.Fatal(err)
	}
	if f := e.mustCreate("f"); f.IP != "172.20.0.3" {
		t.Errorf("after b's delete the next VM has %s; want b's 172.20.0.3", f.IP)
	}

	// Another manager on the same store (a manager restart) sees them all.
	m2 := New(e.ctx, Config{JoinToken: joinToken, StopGrace: 50 * time.Millisecond}, e.st, nil)
	defer func() { m2.Wait(context.Background()); m2.Close() }()
	g, err := m2.VMs.CreateVM(e.ctx, All, createReq("g", e.kernel), CreateOptions{Wait: true})
	if err != nil || g.IP != "172.20.0.7" {
		t.Fatalf("a VM from a restarted manager = %s, %v; want 172.20.0.7", g.IP, err)
	}
	assertDistinct(t, e)
}

// simRootfs writes a small rootfs file for raw-path creates.
func simRootfs(t *testing.T, e *env) string {
	t.Helper()
	p := filepath.Join(e.dir, "rootfs.ext4")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertDistinct fails when two VMs of one host share an address.
func assertDistinct(t *testing.T, e *env) {
	t.Helper()
	vms, _, err := e.st.ListVMs(e.ctx, store.VMFilter{Limit: store.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, vm := range vms {
		if vm.IP == "" {
			continue
		}
		key := vm.HostID + "/" + vm.IP
		if other, dup := seen[key]; dup {
			t.Errorf("vms %s and %s share %s", other, vm.Name, vm.IP)
		}
		seen[key] = vm.Name
	}
}

// An agent that comes back (registers again) with the same bridge leaves
// every address as it was; one whose bridge moved to another subnet
// moves its VMs' addresses at their next boot, saying so; a full subnet
// refuses a create with a clear 503 and leaves nothing.
func TestAddressesAcrossHostChanges(t *testing.T) {
	e := newEnv(t)
	a := e.mustCreate("a")
	e.register("hollow-1", e.ag.URL) // the agent restarted
	if _, err := e.m.VMs.StopVM(e.ctx, All, a.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := e.m.VMs.StartVM(e.ctx, All, a.ID); err != nil || got.IP != a.IP {
		t.Fatalf("after the agent's return: %s, %v; want %s kept", got.IP, err, a.IP)
	}

	// FC_BRIDGE_CIDR changed to 10.50.0.1/29: .2-.6 for guests.
	res := apitypes.Resources{Vcpu: 64, MemMib: 64 << 10}
	if _, err := e.m.Hosts.RegisterHost(e.ctx, apitypes.RegisterHostRequest{Name: "hollow-1", Addr: e.ag.URL, Capacity: res,
		Network: &apitypes.HostNetwork{Subnet: "10.50.0.0/29", Gateway: "10.50.0.1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.VMs.StopVM(e.ctx, All, a.ID); err != nil {
		t.Fatal(err)
	}
	got, err := e.m.VMs.StartVM(e.ctx, All, a.ID)
	if err != nil || got.IP != "10.50.0.2" || !strings.Contains(e.bootArgs(got), "ip=10.50.0.2::10.50.0.1:255.255.255.248::eth0:off:10.50.0.1") {
		t.Fatalf("after the subnet moved: %s, %v, boot args %q; want 10.50.0.2", got.IP, err, e.bootArgs(got))
	}
	if !strings.Contains(e.events(a.ID), "address moved from 172.20.0.2/16 via 172.20.0.1 to 10.50.0.2/29 via 10.50.0.1") {
		t.Errorf("no event for the move:\n%s", e.events(a.ID))
	}
	for i := range 4 {
		e.mustCreate(fmt.Sprintf("fill-%d", i))
	}
	before := e.rows()
	_, err = e.create("one-too-many")
	if se, ok := AsError(err); !ok || se.Kind != KindNoCapacity || se.Code != "no_address" || se.Suggestion == "" {
		t.Fatalf("create in a full subnet = %v; want 503 no_address with a suggestion", err)
	}
	if e.rows() != before {
		t.Errorf("a refused create left a row")
	}
	assertDistinct(t, e)

	// A registration with a subnet that cannot work is refused.
	for name, n := range map[string]apitypes.HostNetwork{
		"/31":             {Subnet: "10.0.0.0/31", Gateway: "10.0.0.1"},
		"not masked":      {Subnet: "10.0.0.1/24", Gateway: "10.0.0.1"},
		"gateway outside": {Subnet: "10.0.0.0/24", Gateway: "10.0.1.1"},
		"gateway network": {Subnet: "10.0.0.0/24", Gateway: "10.0.0.0"},
		"ipv6":            {Subnet: "fd00::/64", Gateway: "fd00::1"},
		"garbage":         {Subnet: "a lot", Gateway: "of it"},
	} {
		if _, err := e.m.Hosts.RegisterHost(e.ctx, apitypes.RegisterHostRequest{Name: "bad", Addr: "http://x", Network: &n}); !isKind(err, KindInvalid) {
			t.Errorf("register with %s = %v; want invalid", name, err)
		}
	}
	if hosts, _ := e.m.Hosts.ListHosts(e.ctx); len(hosts) != 1 {
		t.Errorf("refused registrations left hosts: %d", len(hosts))
	}
}

// Two managers on one Postgres create VMs on one host at once: every VM
// gets an address and no two the same.
func TestAddressesTwoManagersOnPostgres(t *testing.T) {
	dsn := testutil.FreshPostgres(t)
	e := startEnv(t, dsn, false)
	m2st, err := store.Open(e.ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	m2 := New(e.ctx, Config{JoinToken: joinToken, StopGrace: 50 * time.Millisecond, BootTimeout: 10 * time.Second}, m2st, nil)
	defer func() { m2.Wait(context.Background()); m2.Close(); m2st.Close() }()
	const perManager = 10
	start := time.Now()
	defer func() { t.Logf("creates took %s", time.Since(start)) }()
	var wg sync.WaitGroup
	for i, m := range []*Manager{e.m, m2} {
		for j := range perManager {
			wg.Go(func() {
				if _, err := m.VMs.CreateVM(e.ctx, All, createReq(fmt.Sprintf("m%d-%d", i, j), e.kernel), CreateOptions{Wait: true}); err != nil {
					t.Errorf("create on manager %d: %v", i, err)
				}
			})
		}
	}
	wg.Wait()
	vms, _, err := e.st.ListVMs(e.ctx, store.VMFilter{Limit: 100})
	if err != nil || len(vms) != 2*perManager {
		t.Fatalf("%d VMs, %v; want %d", len(vms), err, 2*perManager)
	}
	for _, vm := range vms {
		if vm.IP == "" {
			t.Errorf("vm %s has no address", vm.Name)
		}
	}
	assertDistinct(t, e)
}

// readyCount is how many boot-to-ready times the manager observed.
func readyCount(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "nexus_guest_boot_to_ready_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no nexus_guest_boot_to_ready_seconds")
	return 0
}

func ready(vm store.VM) bool { return vm.GuestReadyAt != nil }

// A boot records its VM running only after the batch that configures and
// starts its VMM has answered, so the guest's readiness report can come
// first, while the VM is still requested. It is kept, and the boot
// measures it; a report of an earlier run that comes after it changes
// nothing.
func TestGuestReadyBeforeRunning(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newReportingEnv(t, func(c *Config) { c.Metrics = reg })
	var heldID string
	e.faults.holdBatches(t, func() {
		// The batch that starts the VMM has answered: wait until its
		// guest's report is in, while the boot has not yet recorded it.
		waitFor(t, "the report before the boot's record", func() bool {
			vms, _, err := e.m.VMs.ListVMs(e.ctx, All, store.VMFilter{})
			if err != nil || len(vms) != 1 || vms[0].State != store.VMRequested || !ready(vms[0]) {
				return false
			}
			heldID = vms[0].ID
			// An earlier run's report (older, another pid) is dropped.
			stale := apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: heldID, PID: vms[0].VMMPID + 1000, At: vms[0].GuestReadyAt.Add(-time.Second)}
			if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, stale); err != nil {
				t.Error(err)
			}
			return true
		})
	})
	vm := e.mustCreate("early")
	if vm.ID != heldID {
		t.Fatalf("held the boot of %q, created %q", heldID, vm.ID)
	}
	got := e.vm(vm.ID)
	if got.State != store.VMRunning || !ready(got) || got.BootedAt == nil || got.GuestReadyAt.Before(*got.BootedAt) {
		t.Fatalf("state %s, booted_at %v, guest_ready_at %v; want running and ready after booted", got.State, got.BootedAt, got.GuestReadyAt)
	}
	if n := readyCount(t, reg); n != 1 {
		t.Errorf("%d boot-to-ready observations; want 1", n)
	}
	if ev := e.events(vm.ID); strings.Count(ev, "guest ready ") != 1 {
		t.Errorf("events:\n%s\nwant one readiness event", ev)
	}
}

// The agent sees the simulated guest's readiness line and reports it: the
// VM records guest_ready_at after booted_at, the metric counts each boot,
// a stop clears it, a restore of a ready guest is ready at once; a
// guest's failure report is an event and last_error, the VM untouched;
// reports of an earlier run are ignored.
func TestGuestReadiness(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newReportingEnv(t, func(c *Config) { c.Metrics = reg })
	vm := e.mustCreate("web")
	waitFor(t, "guest_ready_at", func() bool { return ready(e.vm(vm.ID)) })
	got := e.vm(vm.ID)
	if got.BootedAt == nil || got.GuestReadyAt.Before(*got.BootedAt) || got.VMMPID == 0 {
		t.Fatalf("booted_at %v, guest_ready_at %v, pid %d; want ready after booted", got.BootedAt, got.GuestReadyAt, got.VMMPID)
	}
	waitFor(t, "the metric", func() bool { return readyCount(t, reg) == 1 })
	waitFor(t, "the readiness event", func() bool { return strings.Contains(e.events(vm.ID), "guest ready ") })
	if v := View(got); v.GuestReadyAt == nil || v.BootedAt == nil {
		t.Errorf("GET does not show the times: %+v", v)
	}

	stopped, err := e.m.VMs.StopVM(e.ctx, All, vm.ID)
	if err != nil || stopped.GuestReadyAt != nil || stopped.BootedAt != nil {
		t.Fatalf("after stop: %+v, %v; want no readiness", stopped, err)
	}
	if _, err := e.m.VMs.StartVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readiness of the second run", func() bool { return ready(e.vm(vm.ID)) })
	waitFor(t, "the second observation", func() bool { return readyCount(t, reg) == 2 })

	sn, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, vm.ID, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.m.Snapshots.InstantiateSnapshot(e.ctx, All, sn.ID, apitypes.InstantiateSnapshotRequest{Name: "clone"}, InstantiateOptions{})
	if err != nil || !ready(r.VM) || r.VM.IP == "" || r.VM.IP == vm.IP {
		t.Fatalf("restore of a ready guest = %+v, %v; want ready at once, with an address of its own", r.VM, err)
	}
	if !strings.Contains(strings.Join(r.Notices, " "), "guest address "+vm.IP) {
		t.Errorf("the notices do not say the guest keeps the source's address: %v", r.Notices)
	}

	// A failure report of the current run; one of an earlier run.
	cur := e.vm(vm.ID)
	for _, ev := range []apitypes.HostEvent{
		{Kind: apitypes.EventGuestFailed, VMID: vm.ID, PID: cur.VMMPID, Reason: "root device /dev/vdb did not appear"},
		{Kind: apitypes.EventGuestFailed, VMID: vm.ID, PID: cur.VMMPID + 1000, Reason: "stale"},
		{Kind: apitypes.EventGuestReady, VMID: vm.ID, PID: cur.VMMPID + 1000},
	} {
		if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, ev); err != nil {
			t.Fatal(err)
		}
	}
	after := e.vm(vm.ID)
	if after.State != store.VMRunning || after.LastError != "guest failed: root device /dev/vdb did not appear" {
		t.Errorf("after the failure report: %s, last_error %q; want running with the guest's reason", after.State, after.LastError)
	}
	if ev := e.events(vm.ID); !strings.Contains(ev, "guest failed: root device /dev/vdb did not appear") || strings.Contains(ev, "stale") {
		t.Errorf("events:\n%s", ev)
	}
	if !after.GuestReadyAt.Equal(*cur.GuestReadyAt) {
		t.Error("a report of an earlier run changed guest_ready_at")
	}
	for _, ev := range []apitypes.HostEvent{
		{Kind: "guest_bored", VMID: vm.ID},
		{Kind: apitypes.EventGuestReady, VMID: "../etc"},
	} {
		if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, ev); !isKind(err, KindInvalid) {
			t.Errorf("event %+v = %v; want invalid", ev, err)
		}
	}
	if err := e.m.Hosts.HostEvent(e.ctx, "no-such-host", apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: vm.ID}); !isKind(err, KindNotFound) {
		t.Errorf("event of an unknown host = %v; want not found", err)
	}
	if n := readyCount(t, reg); n != 2 {
		t.Errorf("%d observations; want 2 (a restore or a stale report is no boot)", n)
	}

	// A VMM that dies takes its guest's readiness with it.
	if !e.ag.VMMs.Kill(vm.ID) {
		t.Fatal("no VMM to kill")
	}
	waitFor(t, "readiness cleared by the exit report", func() bool { return !ready(e.vm(vm.ID)) })
}

// The readiness report starts from the row the boot wrote (recentRows)
// instead of reading it. Another manager's write since, or its delete,
// is found by the store and the report decides on the row as stored: the
// other write stays, and a report for a deleted VM records nothing.
func TestGuestReadyAfterAnotherWriter(t *testing.T) {
	e := newEnv(t)
	vm := e.mustCreate("web")
	if vm.State != store.VMRunning || ready(vm) {
		t.Fatalf("created %s, ready %v; want running, not ready yet", vm.State, ready(vm))
	}
	// Another manager writes the VM (it shares the store, not the rows
	// this one wrote).
	if _, err := e.st.UpdateVM(e.ctx, vm.ID, func(v *store.VM) error { v.LastError = "noted elsewhere"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: vm.ID, PID: vm.VMMPID}); err != nil {
		t.Fatal(err)
	}
	got := e.vm(vm.ID)
	if !ready(got) || got.LastError != "noted elsewhere" {
		t.Fatalf("ready %v, last_error %q; want the report recorded and the other write kept", ready(got), got.LastError)
	}
	if !strings.Contains(e.events(vm.ID), "guest ready") {
		t.Errorf("no readiness event:\n%s", e.events(vm.ID))
	}

	// Another manager restarts its VMM (a new pid, not ready yet): the
	// new run's report is recorded, though the row this manager wrote
	// last would refuse it (another pid, ready).
	booted := time.Now().UTC()
	if _, err := e.st.UpdateVM(e.ctx, vm.ID, func(v *store.VM) error {
		v.VMMPID, v.GuestReadyAt, v.BootedAt = vm.VMMPID+1, nil, &booted
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: vm.ID, PID: vm.VMMPID + 1}); err != nil {
		t.Fatal(err)
	}
	if got := e.vm(vm.ID); !ready(got) {
		t.Fatal("the report of a run another manager started was dropped")
	}

	// Another manager stops it (a new run ahead: no pid, not ready); a
	// late report of the old run changes nothing.
	if _, err := e.st.UpdateVM(e.ctx, vm.ID, func(v *store.VM) error {
		v.State, v.VMMPID, v.GuestReadyAt, v.BootedAt = store.VMStopped, 0, nil, nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: vm.ID, PID: vm.VMMPID}); err != nil {
		t.Fatal(err)
	}
	if got := e.vm(vm.ID); ready(got) || got.State != store.VMStopped {
		t.Fatalf("after another manager's stop, a late report made it %s, ready %v", got.State, ready(got))
	}

	// Another manager deletes it: the report is of nothing.
	second := e.mustCreate("api")
	if err := e.st.DeleteVM(e.ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: second.ID, PID: second.VMMPID}); err != nil {
		t.Fatalf("report of a VM deleted elsewhere: %v; want it dropped", err)
	}
	if _, err := e.st.GetVM(e.ctx, second.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the report brought the deleted VM back: %v", err)
	}
}
