package manager

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/agenttest"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// reconciler returns the env's reconciler on a clock the test moves.
func (e *env) reconciler() (*Reconciler, *fakeClock) {
	clk := &fakeClock{t: time.Now()}
	e.m.SetClock(clk.now)
	r := e.m.NewReconciler(ReconcilerConfig{OrphanGrace: 10 * time.Second, StuckGrace: 20 * time.Second,
		MaxRetries: 3, RetryBase: time.Second, RetryMax: 8 * time.Second})
	return r, clk
}

// A VMM that dies behind the agent's back is restarted by the next pass;
// one that keeps dying ends failed after its retries.
func TestReconcilerRestartsDeadVMM(t *testing.T) {
	e := newEnv(t)
	// The real clock (the store's too), with retries that back off for
	// milliseconds only.
	r := e.m.NewReconciler(ReconcilerConfig{OrphanGrace: time.Hour, MaxRetries: 3, RetryBase: time.Millisecond, RetryMax: 2 * time.Millisecond})
	vm := e.mustCreate("crashy")
	first, _ := e.ag.VMMs.Get(vm.ID)
	if !e.ag.VMMs.Kill(vm.ID) {
		t.Fatal("no VMM to kill")
	}
	st := r.Pass(e.ctx, "")
	if st.Actions == 0 || st.Errors != 0 {
		t.Fatalf("pass = %+v; want a restart", st)
	}
	again, ok := e.ag.VMMs.Get(vm.ID)
	if !ok || again.PID == first.PID {
		t.Fatalf("the VMM was not restarted: %+v", again)
	}
	if v, _ := e.st.GetVM(e.ctx, vm.ID); v.State != store.VMRunning || v.Retries != 1 {
		t.Fatalf("after restart: %s, retries %d", v.State, v.Retries)
	}
	if !strings.Contains(e.events(vm.ID), "reconciler:") {
		t.Errorf("no reconciler event:\n%s", e.events(vm.ID))
	}
	// Keeps failing: every restart is refused by firecracker; after the
	// retries the VM is failed and left alone.
	e.faults.add(t, &fault{method: "PUT", suffix: "/proxy/actions", nth: 0, status: 400, body: `{"fault_message":"Cannot start microvm"}`})
	for i := 0; i < 6; i++ {
		e.ag.VMMs.Kill(vm.ID)
		time.Sleep(3 * time.Millisecond) // past the backoff
		r.Pass(e.ctx, "")
	}
	v, _ := e.st.GetVM(e.ctx, vm.ID)
	if v.State != store.VMFailed || !strings.Contains(v.LastError, "Cannot start microvm") {
		t.Fatalf("after repeated failures: %s, %q; want failed with the reason", v.State, v.LastError)
	}
	if _, ok := e.ag.VMMs.Get(vm.ID); ok {
		t.Error("a failed VM's VMM is running")
	}
	e.faults.clear()
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}

// What belongs to no VM — a VMM, its TAP and run dir left by a VM whose
// row is gone — is removed, but only after the orphan grace.
func TestReconcilerRemovesOrphansAfterGrace(t *testing.T) {
	e := newEnv(t)
	r, clk := e.reconciler()
	vm := e.mustCreate("ghost")
	if err := e.st.DeleteVM(e.ctx, vm.ID); err != nil { // the row goes, behind the manager's back
		t.Fatal(err)
	}
	r.Pass(e.ctx, "")
	if inv := e.inventory(); len(inv.VMMs) != 1 {
		t.Fatalf("orphan removed before its grace: %+v", inv)
	}
	clk.advance(11 * time.Second)
	r.Pass(e.ctx, "")
	e.assertHostEmpty()
}

// A stop or delete interrupted after its row was written is finished by
// the reconciler; a VM running against desired stopped is stopped.
func TestReconcilerFinishesInterruptedOperations(t *testing.T) {
	e := newEnv(t)
	r, _ := e.reconciler()
	stopping, deleting, stray := e.mustCreate("stopping"), e.mustCreate("deleting"), e.mustCreate("stray")
	set := func(id string, st, desired store.VMState) {
		if _, err := e.st.UpdateVM(e.ctx, id, func(v *store.VM) error { v.State, v.DesiredState = st, desired; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	set(stopping.ID, store.VMStopping, store.VMStopped)
	set(deleting.ID, store.VMDeleting, store.VMDeleting)
	set(stray.ID, store.VMRunning, store.VMStopped)
	r.Pass(e.ctx, "")
	if v, _ := e.st.GetVM(e.ctx, stopping.ID); v.State != store.VMStopped {
		t.Errorf("interrupted stop: %s", v.State)
	}
	if _, err := e.st.GetVM(e.ctx, deleting.ID); err == nil {
		t.Error("interrupted delete: the row is still there")
	}
	if v, _ := e.st.GetVM(e.ctx, stray.ID); v.State != store.VMStopped {
		t.Errorf("running against desired stopped: %s", v.State)
	}
	inv := e.inventory()
	if len(inv.VMMs) != 0 {
		t.Errorf("VMMs left: %+v", inv.VMMs)
	}
	for _, id := range []string{stopping.ID, stray.ID} {
		if err := e.m.VMs.DeleteVM(e.ctx, All, id); err != nil {
			t.Fatal(err)
		}
	}
	e.assertHostEmpty()
}

// A host that stops reporting is marked unreachable and its VMs say so;
// nothing is started elsewhere. The agent's exit report triggers a pass.
func TestReconcilerHostLostAndExitReports(t *testing.T) {
	e := newEnv(t)
	r, clk := e.reconciler()
	vm := e.mustCreate("lonely")
	if err := e.m.Hosts.HostEvent(e.ctx, e.host.ID, apitypes.HostEvent{Kind: apitypes.EventVMMExit, VMID: vm.ID, Status: "signal: killed"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.events(vm.ID), "vmm exited on its own") {
		t.Errorf("exit report not recorded:\n%s", e.events(vm.ID))
	}
	clk.advance(time.Hour) // no heartbeat for an hour
	r.Pass(e.ctx, "")
	hosts, err := e.m.Hosts.ListHosts(e.ctx)
	if err != nil || len(hosts) != 1 || hosts[0].State != store.HostUnreachable {
		t.Fatalf("hosts = %+v, %v; want unreachable", hosts, err)
	}
	v, _ := e.st.GetVM(e.ctx, vm.ID)
	if !strings.Contains(v.LastError, "unreachable") {
		t.Errorf("last_error = %q; want the host named unreachable", v.LastError)
	}
	if _, err := e.m.VMs.CreateVM(e.ctx, All, createReq("new", e.kernel), CreateOptions{Wait: true}); !isKind(err, KindNoCapacity) {
		t.Errorf("create with only an unreachable host = %v; want no capacity", err)
	}
	// Back: a heartbeat makes it ready; drain keeps new VMs off it.
	if err := e.m.Hosts.Heartbeat(e.ctx, e.host.ID, apiRes(64, 65536), apiRes(1, 128), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Hosts.SetHostDraining(e.ctx, "hollow-1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.VMs.CreateVM(e.ctx, All, createReq("new", e.kernel), CreateOptions{Wait: true}); !isKind(err, KindNoCapacity) {
		t.Errorf("create with only a draining host = %v; want no capacity", err)
	}
	if err := e.m.Hosts.RemoveHost(e.ctx, "hollow-1"); !isKind(err, KindConflict) {
		t.Errorf("remove a host with VMs = %v; want a conflict", err)
	}
	if err := e.m.Hosts.SetHostDraining(e.ctx, "hollow-1", false); err != nil {
		t.Fatal(err)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Hosts.RemoveHost(e.ctx, "hollow-1"); err != nil {
		t.Fatalf("remove an empty host: %v", err)
	}
}

// A pass over one host reads that host's rows only: its cost does not grow
// with the VMs of other hosts.
func TestReconcilePassReadsOneHost(t *testing.T) {
	e := newEnv(t)
	r, _ := e.reconciler()
	other := agenttest.Start(t, agenttest.Options{Token: joinToken, Name: "hollow-2"})
	h2 := e.register("hollow-2", other.URL)
	onOther := func(n int, prefix string) {
		for i := range n {
			req := createReq(fmt.Sprintf("%s-%d", prefix, i), e.kernel)
			req.HostID = h2.ID
			if _, err := e.m.VMs.CreateVM(e.ctx, All, req, CreateOptions{Wait: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.mustCreate("mine")
	onOther(3, "a")
	readsFor := func() int {
		before := e.fstore.reads()
		r.Pass(e.ctx, e.host.ID)
		return e.fstore.reads() - before
	}
	first := readsFor()
	onOther(10, "b")
	if again := readsFor(); again != first || first != 1 {
		t.Fatalf("a pass of one host read %d rows, then %d after 10 more VMs elsewhere; want 1 each time", first, again)
	}
}
