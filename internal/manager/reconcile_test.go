package manager

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/store"
)

// The plan is a pure function of the store's view, the host's inventory
// and the clock; these tests run it on a fake clock, without agents.

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newPlanner(t *testing.T) (*Reconciler, *fakeClock) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "n.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	clk := &fakeClock{t: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	s := New(ctx, Config{}, st, slog.New(slog.DiscardHandler))
	s.SetClock(clk.now)
	return s.NewReconciler(ReconcilerConfig{OrphanGrace: 10 * time.Second, StuckGrace: 20 * time.Second,
		MaxRetries: 3, RetryBase: time.Second, RetryMax: 8 * time.Second}), clk
}

const (
	vmA   = "11111111-1111-4111-8111-111111111111"
	ghost = "99999999-9999-4999-8999-999999999999"
)

func running(clk *fakeClock) store.VM {
	return store.VM{ID: vmA, Name: "a", HostID: "h1", State: store.VMRunning, DesiredState: store.VMRunning,
		TAP: "tap-11111111111", UpdatedAt: clk.t.Add(-time.Hour)}
}

func healthyInv() agentapi.Inventory {
	return agentapi.Inventory{
		VMMs:    []agentapi.VMM{{VMID: vmA, PID: 42}},
		Taps:    []agentapi.Tap{{Name: "tap-11111111111", VMID: vmA}},
		Sockets: []agentapi.Socket{{VMID: vmA, Live: true}},
		RunDirs: []agentapi.RunDir{{VMID: vmA}},
	}
}

func names(plan []action) []string {
	var out []string
	for _, a := range plan {
		out = append(out, a.name)
	}
	slices.Sort(out)
	return out
}

func TestPlanVM(t *testing.T) {
	t.Parallel()
	r, clk := newPlanner(t)
	h := store.Host{ID: "h1", Name: "h1"}
	future := clk.t.Add(5 * time.Second)
	past := clk.t.Add(-time.Minute)
	noVMM := healthyInv()
	noVMM.VMMs, noVMM.Sockets = nil, nil
	noTap := healthyInv()
	noTap.Taps = nil
	noSock := healthyInv()
	noSock.Sockets = nil
	for _, tc := range []struct {
		name string
		vm   func(store.VM) store.VM
		inv  agentapi.Inventory
		want []string
	}{
		{"healthy: nothing", nil, healthyInv(), nil},
		{"left paused by an interrupted snapshot: resume", func(v store.VM) store.VM { v.State = store.VMPaused; return v }, healthyInv(), []string{"resume"}},
		{"paused on purpose: nothing", func(v store.VM) store.VM { v.State, v.DesiredState = store.VMPaused, store.VMPaused; return v }, healthyInv(), nil},
		{"vmm gone: restart", nil, noVMM, []string{"restart"}},
		{"tap gone: restart", nil, noTap, []string{"restart"}},
		{"socket gone: restart", nil, noSock, []string{"restart"}},
		{"backing off: wait", func(v store.VM) store.VM { v.Retries, v.NextAttemptAt = 1, &future; return v }, noVMM, nil},
		{"retries spent: give up", func(v store.VM) store.VM { v.Retries, v.NextAttemptAt = 3, &past; return v }, noVMM, []string{"give_up"}},
		{"stable again: forget retries", func(v store.VM) store.VM { v.Retries, v.NextAttemptAt = 2, &past; return v }, healthyInv(), []string{"reset_retries"}},
		{"boot in progress: leave it", func(v store.VM) store.VM {
			v.State, v.UpdatedAt = store.VMConfigured, clk.t.Add(-5*time.Second)
			return v
		}, noVMM, nil},
		{"boot abandoned: redo", func(v store.VM) store.VM {
			v.State, v.UpdatedAt = store.VMConfigured, clk.t.Add(-time.Minute)
			return v
		}, noVMM, []string{"restart"}},
		{"created stopped: nothing", func(v store.VM) store.VM {
			v.State, v.DesiredState, v.UpdatedAt = store.VMRequested, store.VMStopped, clk.t.Add(-time.Hour)
			return v
		}, agentapi.Inventory{}, nil},
		{"interrupted stop: finish", func(v store.VM) store.VM { v.State, v.DesiredState = store.VMStopping, store.VMStopped; return v }, noVMM, []string{"finish_stop"}},
		{"interrupted delete: finish", func(v store.VM) store.VM { v.State, v.DesiredState = store.VMDeleting, store.VMDeleting; return v }, healthyInv(), []string{"finish_delete"}},
		{"stopped but vmm alive: stop it", func(v store.VM) store.VM { v.State, v.DesiredState = store.VMStopped, store.VMStopped; return v }, healthyInv(), []string{"stop_stray"}},
		{"failed and gone: leave it", func(v store.VM) store.VM { v.State = store.VMFailed; return v }, agentapi.Inventory{RunDirs: []agentapi.RunDir{{VMID: vmA}}}, nil},
		{"our restart's boot failed: retry", func(v store.VM) store.VM { v.State, v.Retries, v.NextAttemptAt = store.VMFailed, 1, &past; return v }, agentapi.Inventory{}, []string{"restart"}},
		{"our restarts spent: stay failed", func(v store.VM) store.VM { v.State, v.Retries, v.NextAttemptAt = store.VMFailed, 3, &past; return v }, agentapi.Inventory{}, nil},
		{"running but asked to stop: stop", func(v store.VM) store.VM { v.DesiredState = store.VMStopped; return v }, healthyInv(), []string{"stop_unwanted"}},
		{"paused VM's restart interrupted: redo", func(v store.VM) store.VM {
			v.State, v.DesiredState, v.UpdatedAt = store.VMRequested, store.VMPaused, clk.t.Add(-time.Minute)
			return v
		}, noVMM, []string{"restart"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := running(clk)
			if tc.vm != nil {
				vm = tc.vm(vm)
			}
			known := map[string]store.VM{vm.ID: vm}
			got := names(r.plan(h, tc.inv, []store.VM{vm}, known, nil))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("plan = %v; want %v", got, tc.want)
			}
		})
	}
}

func TestPlanOrphansWaitForGrace(t *testing.T) {
	t.Parallel()
	r, clk := newPlanner(t)
	h := store.Host{ID: "h1", Name: "h1"}
	vm := running(clk)
	inv := healthyInv()
	inv.VMMs = append(inv.VMMs, agentapi.VMM{VMID: ghost, PID: 7})
	inv.RunDirs = append(inv.RunDirs, agentapi.RunDir{VMID: ghost})
	inv.Taps = append(inv.Taps, agentapi.Tap{Name: "tap-deadbeef000"})
	known := map[string]store.VM{vm.ID: vm}

	if got := names(r.plan(h, inv, []store.VM{vm}, known, nil)); len(got) != 0 {
		t.Fatalf("first sighting: plan = %v; want nothing before the grace period", got)
	}
	clk.advance(9 * time.Second)
	if got := names(r.plan(h, inv, []store.VM{vm}, known, nil)); len(got) != 0 {
		t.Fatalf("within grace: plan = %v", got)
	}
	clk.advance(2 * time.Second)
	if got, want := names(r.plan(h, inv, []store.VM{vm}, known, nil)), []string{"gc_tap", "gc_vm"}; !slices.Equal(got, want) {
		t.Fatalf("after grace: plan = %v; want %v (one gc per orphan VM, not per resource)", got, want)
	}
	// A run dir that holds a catalogued snapshot is not an orphan.
	inv2 := healthyInv()
	inv2.RunDirs = append(inv2.RunDirs, agentapi.RunDir{VMID: ghost})
	keep := map[string]bool{"h1/" + ghost: true}
	clk.advance(time.Minute)
	r.plan(h, inv2, []store.VM{vm}, known, keep)
	clk.advance(time.Minute)
	if got := names(r.plan(h, inv2, []store.VM{vm}, known, keep)); len(got) != 0 {
		t.Fatalf("snapshot holder: plan = %v; want nothing", got)
	}
	// A VM the store places on another host is an orphan here.
	elsewhere := vm
	elsewhere.HostID = "h2"
	known2 := map[string]store.VM{vm.ID: elsewhere}
	r.plan(h, healthyInv(), nil, known2, nil)
	clk.advance(time.Minute)
	if got := names(r.plan(h, healthyInv(), nil, known2, nil)); !slices.Equal(got, []string{"gc_vm"}) {
		t.Fatalf("vm placed elsewhere: plan = %v; want gc_vm", got)
	}
}

// TestActionsRecheckUnderLock: an action planned from a view that a user's
// operation has since changed does nothing; the next pass decides again.
func TestActionsRecheckUnderLock(t *testing.T) {
	t.Parallel()
	r, clk := newPlanner(t)
	ctx := context.Background()
	s := r.s
	h := store.Host{ID: "h1", Name: "h1", Addr: "http://127.0.0.1:1"} // no agent there
	mk := func(name string) store.VM {
		vm, err := s.st.CreateVM(ctx, store.VM{Name: name, Project: "p", HostID: "h1", HostAddr: h.Addr,
			State: store.VMRunning, DesiredState: store.VMRunning, VCPU: 1, MemMiB: 64})
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}
	plan := func(vm store.VM) action {
		ps := r.plan(h, agentapi.Inventory{}, []store.VM{vm}, map[string]store.VM{vm.ID: vm}, nil)
		if len(ps) != 1 || ps[0].name != "restart" {
			t.Fatalf("plan = %v; want restart", names(ps))
		}
		return ps[0]
	}
	_ = clk

	// The user stops the VM after the plan was made: the restart must not run.
	vm := mk("raced")
	a := plan(vm)
	if _, err := s.update(ctx, vm.ID, func(v *store.VM) error {
		v.State, v.DesiredState = store.VMStopped, store.VMStopped
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.do(ctx); err != nil {
		t.Fatalf("stale action: %v", err)
	}
	got, _ := s.st.GetVM(ctx, vm.ID)
	if got.State != store.VMStopped || got.DesiredState != store.VMStopped || got.Retries != 0 {
		t.Fatalf("stale restart acted: %s/%s retries %d", got.State, got.DesiredState, got.Retries)
	}

	// Unchanged, the same action does run (and, with no agent, records
	// the attempt and fails).
	vm2 := mk("unchanged")
	if err := plan(vm2).do(ctx); err == nil {
		t.Fatal("restart without an agent succeeded")
	}
	got, _ = s.st.GetVM(ctx, vm2.ID)
	if got.Retries != 1 || got.NextAttemptAt == nil {
		t.Fatalf("fresh restart did not record its attempt: retries %d", got.Retries)
	}
}
