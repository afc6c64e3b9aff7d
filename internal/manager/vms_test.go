package manager

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

func TestLifecycleOnHollowHost(t *testing.T) {
	e := newEnv(t)
	vm := e.mustCreate("web")
	if vm.State != store.VMRunning || vm.TAP != hostlayout.TapName(vm.ID) || vm.APISock == "" {
		t.Fatalf("created %+v; want running with its TAP and socket", vm)
	}
	inv := e.inventory()
	if len(inv.VMMs) != 1 || inv.VMMs[0].VMID != vm.ID || len(inv.Taps) != 1 || inv.Taps[0].VMID != vm.ID {
		t.Fatalf("inventory %+v; want the VM's VMM and TAP", inv)
	}
	ev := e.events(vm.ID)
	// The TAP comes with the VMM: one agent call.
	for _, want := range []string{"boot: assign address", "spawn vmm", vm.TAP, "configure boot source", "start instance", "running"} {
		if !strings.Contains(ev, want) {
			t.Errorf("events do not mention %q:\n%s", want, ev)
		}
	}

	for _, step := range []struct {
		name string
		do   func() (store.VM, error)
		want store.VMState
	}{
		{"pause", func() (store.VM, error) { return e.m.VMs.PauseVM(e.ctx, All, vm.ID) }, store.VMPaused},
		{"pause again", func() (store.VM, error) { return e.m.VMs.PauseVM(e.ctx, All, vm.ID) }, store.VMPaused},
		{"resume", func() (store.VM, error) { return e.m.VMs.ResumeVM(e.ctx, All, vm.ID) }, store.VMRunning},
		{"stop", func() (store.VM, error) { return e.m.VMs.StopVM(e.ctx, All, vm.ID) }, store.VMStopped},
		{"stop again", func() (store.VM, error) { return e.m.VMs.StopVM(e.ctx, All, vm.ID) }, store.VMStopped},
		{"start", func() (store.VM, error) { return e.m.VMs.StartVM(e.ctx, All, vm.ID) }, store.VMRunning},
	} {
		got, err := step.do()
		if err != nil || got.State != step.want {
			t.Fatalf("%s: %s, %v; want %s", step.name, got.State, err, step.want)
		}
	}
	if _, err := e.m.VMs.StopVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.VMs.PauseVM(e.ctx, All, vm.ID); !isKind(err, KindConflict) {
		t.Errorf("pause of a stopped VM = %v; want a conflict", err)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.VMs.GetVM(e.ctx, All, vm.ID); !isKind(err, KindNotFound) {
		t.Errorf("get after delete = %v; want not found", err)
	}
	e.assertHostEmpty()
}

// A create that is answered with an error leaves nothing, whichever step
// of the boot failed and however it failed; the same name works at once.
func TestBootFailureAtEveryStepLeavesNothing(t *testing.T) {
	e := newEnv(t)
	refuse := func(msg string) (int, string) {
		return 400, fmt.Sprintf(`{"fault_message":%q}`, msg)
	}
	agentFails := func() (int, string) {
		return 500, `{"error":"spawn_failed","status":500,"message":"injected"}`
	}
	for _, tc := range []struct {
		step, method, suffix string
		resp                 func() (int, string)
		kind                 Kind
	}{
		{"spawn vmm (tap refused)", "POST", "/spawn", func() (int, string) {
			return 409, `{"error":"tap_conflict","status":409,"message":"create tap: link exists and is not the expected kind"}`
		}, KindInternal},
		{"spawn vmm", "POST", "/spawn", agentFails, KindInternal},
		{"configure logger", "PUT", "/proxy/logger", func() (int, string) { return refuse("Invalid logger path") }, KindRejected},
		{"configure metrics", "PUT", "/proxy/metrics", func() (int, string) { return refuse("Invalid metrics path") }, KindRejected},
		{"configure machine", "PUT", "/proxy/machine-config", func() (int, string) { return refuse("The memory size is invalid") }, KindRejected},
		{"configure boot source", "PUT", "/proxy/boot-source", func() (int, string) { return refuse("Invalid kernel path") }, KindRejected},
		{"configure network", "PUT", "/proxy/network-interfaces/eth0", func() (int, string) { return refuse("Could not create the network device") }, KindRejected},
		{"start instance", "PUT", "/proxy/actions", func() (int, string) { return refuse("Cannot start microvm") }, KindRejected},
		// The configuration and the start go with the spawn: an agent
		// gone while it makes them fails the spawn (the VMM it started is
		// stopped with the rest).
		{"spawn vmm (agent gone while configuring)", "PUT", "/proxy/actions", nil, KindUnavailable},
	} {
		t.Run(tc.step, func(t *testing.T) {
			f := &fault{method: tc.method, suffix: tc.suffix, nth: 1}
			if tc.resp != nil {
				f.status, f.body = tc.resp()
			}
			e.faults.add(t, f)
			_, err := e.create("boom")
			var se *Error
			if !errors.As(err, &se) || se.Kind != tc.kind || !strings.Contains(se.Message, strings.Split(tc.step, " (")[0]) {
				t.Fatalf("create = %#v; want a %v error naming %q", err, tc.kind, tc.step)
			}
			if f.hits != 1 {
				t.Fatalf("the fault was hit %d times", f.hits)
			}
			if n := e.rows(); n != 0 {
				t.Errorf("%d VM rows left after a refused create", n)
			}
			e.assertHostEmpty()
			e.faults.clear()
			vm := e.mustCreate("boom")
			if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The store fails to record a step: undone the same way.
	for _, state := range []store.VMState{store.VMRunning} {
		t.Run("record "+string(state), func(t *testing.T) {
			e.fstore.set(func(v store.VM) bool { return v.State == state })
			_, err := e.create("boom")
			e.fstore.set(nil)
			if err == nil || !strings.Contains(err.Error(), "record "+string(state)) {
				t.Fatalf("create = %v; want a failure of record %s", err, state)
			}
			if n := e.rows(); n != 0 {
				t.Errorf("%d VM rows left", n)
			}
			e.assertHostEmpty()
		})
	}
}

// A create answered at once (wait=false) that fails later keeps its VM, in
// failed with last_error, for its user to see; its host objects are gone.
func TestAsyncCreateFailureKeepsFailedVM(t *testing.T) {
	e := newEnv(t)
	e.faults.add(t, &fault{method: "PUT", suffix: "/proxy/actions", nth: 1, status: 400, body: `{"fault_message":"Cannot start microvm"}`})
	vm, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: "later", VMConfig: apitypes.VMConfig{KernelPath: e.kernel}}, CreateOptions{})
	if err != nil || vm.State != store.VMRequested {
		t.Fatalf("async create = %+v, %v", vm, err)
	}
	waitFor(t, "the boot to fail", func() bool {
		v, err := e.st.GetVM(e.ctx, vm.ID)
		return err == nil && v.State == store.VMFailed
	})
	v, _ := e.st.GetVM(e.ctx, vm.ID)
	if !strings.Contains(v.LastError, "Cannot start microvm") {
		t.Errorf("last_error = %q", v.LastError)
	}
	if inv := e.inventory(); len(inv.VMMs) != 0 || len(inv.Taps) != 0 {
		t.Errorf("host after the failed boot: %+v", inv)
	}
	if !strings.Contains(e.events(vm.ID), "undid spawn vmm") {
		t.Errorf("events do not say what was undone:\n%s", e.events(vm.ID))
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}

// Bulk reports each VM's outcome; one failure does not stop the others.
func TestBulkPartialFailure(t *testing.T) {
	e := newEnv(t)
	a, b := e.mustCreate("a"), e.mustCreate("b")
	missing := "00000000-0000-4000-8000-000000000000"
	e.faults.add(t, &fault{method: "POST", suffix: "/vms/" + b.ID + "/stop", nth: 0, status: 0})
	res, err := e.m.VMs.Bulk(e.ctx, All, "stop", []string{a.ID, b.ID, missing})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]apitypes.BulkResult{}
	for _, r := range res {
		got[r.ID] = r
	}
	if !got[a.ID].OK || got[b.ID].OK || got[missing].OK || got[missing].Error == "" || got[b.ID].Error == "" {
		t.Fatalf("bulk results %+v; want a ok, b and the missing VM failed with reasons", res)
	}
	if v, _ := e.st.GetVM(e.ctx, a.ID); v.State != store.VMStopped {
		t.Errorf("a = %s; want stopped", v.State)
	}
	e.faults.clear()
	if _, err := e.m.VMs.Bulk(e.ctx, All, "explode", []string{a.ID}); !isKind(err, KindInvalid) {
		t.Errorf("bulk with an unknown action = %v; want invalid", err)
	}
	res, err = e.m.VMs.Bulk(e.ctx, All, "delete", []string{a.ID, b.ID})
	if err != nil || !res[0].OK || !res[1].OK {
		t.Fatalf("bulk delete = %+v, %v", res, err)
	}
	e.assertHostEmpty()
}

// A project token sees and touches only its project's VMs; the zero scope
// sees nothing.
func TestScopes(t *testing.T) {
	e := newEnv(t)
	vm, err := e.m.VMs.CreateVM(e.ctx, Scope{Project: "team-a", Admin: true}, apitypes.CreateVMRequest{Name: "a", VMConfig: apitypes.VMConfig{KernelPath: e.kernel}}, CreateOptions{Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, sc := range map[string]Scope{"other project": {Project: "team-b"}, "zero": {}} {
		if _, err := e.m.VMs.GetVM(e.ctx, sc, vm.ID); !isKind(err, KindNotFound) {
			t.Errorf("%s: get = %v; want not found", name, err)
		}
		if items, _, err := e.m.VMs.ListVMs(e.ctx, sc, store.VMFilter{}); err != nil || len(items) != 0 {
			t.Errorf("%s: list = %d, %v; want nothing", name, len(items), err)
		}
		if _, err := e.m.VMs.StopVM(e.ctx, sc, vm.ID); !isKind(err, KindNotFound) {
			t.Errorf("%s: stop = %v; want not found", name, err)
		}
	}
	if _, err := e.m.VMs.CreateVM(e.ctx, Scope{Project: "team-b"}, apitypes.CreateVMRequest{Name: "x", Project: "team-a", VMConfig: apitypes.VMConfig{KernelPath: e.kernel}}, CreateOptions{Wait: true}); !isKind(err, KindForbidden) {
		t.Errorf("create in another project = %v; want forbidden", err)
	}
	if _, err := e.m.VMs.CreateVM(e.ctx, Scope{Project: "team-a"}, apitypes.CreateVMRequest{Name: "x", VMConfig: apitypes.VMConfig{KernelPath: e.kernel}}, CreateOptions{Wait: true}); !isKind(err, KindForbidden) {
		t.Errorf("raw path by a non-admin = %v; want forbidden", err)
	}
	if items, _, err := e.m.VMs.ListVMs(e.ctx, Scope{Project: "team-a"}, store.VMFilter{}); err != nil || len(items) != 1 {
		t.Errorf("team-a list = %d, %v; want its VM", len(items), err)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
}

// An agent of the release before refuses spawn's tap field (it decodes
// strictly): the boot makes the TAP with its own call and spawns again,
// as that release's manager did.
func TestBootOnAnOlderAgent(t *testing.T) {
	e := newEnv(t)
	refused := e.faults.add(t, &fault{method: "POST", suffix: "/spawn", nth: 1, status: 400,
		body: `{"error":"bad_request","status":400,"message":"invalid JSON body: json: unknown field \"tap\""}`})
	tapCall := e.faults.add(t, &fault{method: "POST", suffix: "/tap", nth: 2}) // counts the calls, answers none
	vm := e.mustCreate("old-agent")
	if refused.hits != 1 || tapCall.seen != 1 {
		t.Fatalf("spawn refused %d times, tap called %d times; want 1 and 1", refused.hits, tapCall.seen)
	}
	if vm.State != store.VMRunning || vm.TAP != hostlayout.TapName(vm.ID) {
		t.Fatalf("created %+v; want running with its TAP", vm)
	}
	inv := e.inventory()
	if len(inv.Taps) != 1 || inv.Taps[0].VMID != vm.ID || len(inv.VMMs) != 1 {
		t.Fatalf("inventory %+v; want the VM's VMM and TAP", inv)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}
