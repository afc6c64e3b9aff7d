package manager

import (
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestGroupRolloutSteps drives a group rollout pass by pass: a VM a dead
// manager left half moved (stopped, its row "moving") is moved again
// first, as the canary; then max_parallel at a time; a VM's own
// instantiation overrides stay on top of the new version.
func TestGroupRolloutSteps(t *testing.T) {
	e, _, _, _ := imagesEnv(t)
	tags := map[string]string{GroupTag: "g"}
	vms, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "g", Count: 3, Tags: tags}, TemplateInstanceOptions{Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	over, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "o", Tags: tags,
		Overrides: &apitypes.TemplateConfig{MemMib: intp(80)}}, TemplateInstanceOptions{Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Templates.UpdateTemplate(e.ctx, All, "web", "", "test", apitypes.UpdateTemplateRequest{
		Config: apitypes.TemplateConfig{KernelImageID: "k", RootfsImageID: "r", MemMib: intp(96)}}); err != nil {
		t.Fatal(err)
	}
	r, err := e.m.Groups.StartGroupRollout(e.ctx, All, "web", "", "g", "alice", apitypes.GroupRolloutRequest{TemplateVersion: 2, Canary: intp(1), MaxParallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := e.st.ListGroupRolloutVMs(e.ctx, r.ID)
	if err != nil || len(rows) != 4 {
		t.Fatalf("rollout VMs = %d, %v; want 4", len(rows), err)
	}
	// A manager died in the middle of moving the last VM: it is stopped.
	half := rows[3].VMID
	if _, err := e.m.VMs.StopVM(e.ctx, All, half); err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetGroupRolloutVM(e.ctx, r.ID, half, gvMoving, ""); err != nil {
		t.Fatal(err)
	}
	onV2 := func() map[string]store.VM {
		t.Helper()
		out := map[string]store.VM{}
		for _, row := range rows {
			vm, err := e.st.GetVM(e.ctx, row.VMID)
			if err != nil {
				t.Fatal(err)
			}
			if vm.TemplateVersion == 2 {
				if vm.State != store.VMRunning {
					t.Fatalf("VM %s is on version 2 but %s", vm.Name, vm.State)
				}
				out[vm.ID] = vm
			}
		}
		return out
	}
	pass := func(wantOnV2 int, wantState, wantPhase string) map[string]store.VM {
		t.Helper()
		e.m.Groups.RolloutGroups(e.ctx)
		got, err := e.st.GetGroupRollout(e.ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		moved := onV2()
		if len(moved) != wantOnV2 || got.State != wantState || got.Phase != wantPhase {
			t.Fatalf("after a pass: %d VMs on version 2, rollout %s/%s (%s); want %d, %s/%s", len(moved), got.State, got.Phase, got.Message,
				wantOnV2, wantState, wantPhase)
		}
		return moved
	}
	if moved := pass(1, RolloutRunning, phaseCanary); moved[half].ID == "" {
		t.Fatalf("the canary is not the VM left half moved: %v", moved)
	}
	pass(3, RolloutRunning, phaseRolling)
	pass(4, RolloutRunning, phaseRolling)
	moved := pass(4, RolloutSucceeded, phaseRolling)
	for _, vm := range vms {
		if m := moved[vm.ID]; m.MemMiB != 96 || m.Name != vm.Name || m.IP != vm.IP {
			t.Fatalf("VM %s after the rollout: %+v; want 96 MiB, same name and address", vm.Name, m)
		}
	}
	if m := moved[over[0].ID]; m.MemMiB != 80 {
		t.Fatalf("VM with overrides: %d MiB; want its own 80 on top of version 2", m.MemMiB)
	}
	if _, err := e.m.Groups.StartGroupRollout(e.ctx, All, "web", "", "g", "alice", apitypes.GroupRolloutRequest{TemplateVersion: 2}); err == nil {
		t.Fatal("a rollout of a group already on the version was accepted")
	}
}
