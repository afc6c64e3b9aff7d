package manager

import (
	"errors"
	"strings"
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

// With auto_promote false a group rollout stops once its canaries run
// (awaiting_promotion, phase canary) and moves no other VM, pass after
// pass, until promoted; promote is refused (409 rollout_state, with a
// suggestion) in any other state and changes nothing; pause and resume
// are refused there; abort from there moves the canaries back; auto_promote
// false without canaries is refused.
func TestGroupRolloutPromoteGating(t *testing.T) {
	e, _, _, _ := imagesEnv(t)
	tags := map[string]string{GroupTag: "g"}
	if _, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "g", Count: 4, Tags: tags}, TemplateInstanceOptions{Wait: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Templates.UpdateTemplate(e.ctx, All, "web", "", "test", apitypes.UpdateTemplateRequest{
		Config: apitypes.TemplateConfig{KernelImageID: "k", RootfsImageID: "r", MemMib: intp(96)}}); err != nil {
		t.Fatal(err)
	}
	no := false
	if _, err := e.m.Groups.StartGroupRollout(e.ctx, All, "web", "", "g", "alice", apitypes.GroupRolloutRequest{TemplateVersion: 2, Canary: intp(0),
		AutoPromote: &no}); !isKind(err, KindInvalid) {
		t.Fatalf("auto_promote false with canary 0 = %v; want invalid", err)
	}
	start := func() store.GroupRollout {
		t.Helper()
		r, err := e.m.Groups.StartGroupRollout(e.ctx, All, "web", "", "g", "alice", apitypes.GroupRolloutRequest{TemplateVersion: 2, Canary: intp(2),
			MaxParallel: 2, AutoPromote: &no})
		if err != nil || r.AutoPromote {
			t.Fatalf("start: %+v, %v", r, err)
		}
		return r
	}
	r := start()
	get := func() store.GroupRollout {
		t.Helper()
		got, err := e.st.GetGroupRollout(e.ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	onV2 := func() int {
		t.Helper()
		n := 0
		vms, err := e.m.Groups.groupVMs(e.ctx, store.Template{ID: r.TemplateID, Project: r.Project}, "g")
		if err != nil {
			t.Fatal(err)
		}
		for _, vm := range vms {
			if vm.TemplateVersion == 2 {
				n++
			}
		}
		return n
	}
	refused := func(action, when string) {
		t.Helper()
		before := get()
		_, err := e.m.Groups.ControlGroupRollout(e.ctx, All, "web", "", "g", action)
		var me *Error
		if !isKind(err, KindConflict) || !errors.As(err, &me) || me.Code != "rollout_state" || me.Suggestion == "" {
			t.Fatalf("%s %s = %v; want a rollout_state conflict with a suggestion", action, when, err)
		}
		if after := get(); after.State != before.State || after.Phase != before.Phase || !after.UpdatedAt.Equal(before.UpdatedAt) {
			t.Fatalf("a refused %s changed the rollout: %+v → %+v", action, before, after)
		}
	}
	refused("promote", "before the canaries are moved")
	e.m.Groups.RolloutGroups(e.ctx) // the canaries
	if got := get(); got.State != RolloutRunning || onV2() != 2 {
		t.Fatalf("after the canary step: %s, %d on version 2; want running, 2", got.State, onV2())
	}
	e.m.Groups.RolloutGroups(e.ctx) // they run: awaiting promotion
	for range 3 {
		e.m.Groups.RolloutGroups(e.ctx)
	}
	if got := get(); got.State != RolloutAwaitingPromotion || got.Phase != phaseCanary || !strings.Contains(got.Message, "promot") || onV2() != 2 {
		t.Fatalf("awaiting: %+v, %d on version 2; want awaiting_promotion, phase canary, the 2 canaries only", got, onV2())
	}
	refused("pause", "awaiting promotion")
	refused("resume", "awaiting promotion")
	if _, err := e.m.Groups.StartGroupRollout(e.ctx, All, "web", "", "g", "alice", apitypes.GroupRolloutRequest{TemplateVersion: 2}); !isKind(err, KindConflict) {
		t.Fatalf("a second rollout while one awaits promotion = %v; want a conflict", err)
	}
	got, err := e.m.Groups.ControlGroupRollout(e.ctx, All, "web", "", "g", "promote")
	if err != nil || got.State != RolloutRunning || got.Phase != phaseRolling {
		t.Fatalf("promote: %+v, %v; want running, rolling", got, err)
	}
	refused("promote", "twice")
	for pass := 0; get().State == RolloutRunning; pass++ {
		if pass == 5 {
			t.Fatalf("not done after %d passes: %+v", pass, get())
		}
		e.m.Groups.RolloutGroups(e.ctx)
	}
	if got := get(); got.State != RolloutSucceeded || onV2() != 4 {
		t.Fatalf("after the promote: %+v, %d on version 2; want succeeded, 4", got, onV2())
	}
	if a := e.auditActions(r.TemplateID); a["template.group_rollout.awaiting_promotion"] != 1 || a["template.group_rollout.promote"] != 0 {
		t.Fatalf("audit rows %v; want one awaiting_promotion and no automatic promote", a)
	}

	// Back to version 1, aborted from awaiting_promotion: the canaries go back.
	r, err = e.m.Groups.StartGroupRollout(e.ctx, All, "web", "", "g", "alice", apitypes.GroupRolloutRequest{TemplateVersion: 1, Canary: intp(1), AutoPromote: &no})
	if err != nil {
		t.Fatal(err)
	}
	e.m.Groups.RolloutGroups(e.ctx)
	e.m.Groups.RolloutGroups(e.ctx)
	if got := get(); got.State != RolloutAwaitingPromotion || onV2() != 3 {
		t.Fatalf("%+v, %d on version 2; want awaiting_promotion with one VM on version 1", got, onV2())
	}
	if got, err := e.m.Groups.ControlGroupRollout(e.ctx, All, "web", "", "g", "abort"); err != nil || got.State != RolloutReverting {
		t.Fatalf("abort: %+v, %v", got, err)
	}
	for pass := 0; get().State == RolloutReverting; pass++ {
		if pass == 5 {
			t.Fatalf("not aborted after %d passes: %+v", pass, get())
		}
		e.m.Groups.RolloutGroups(e.ctx)
	}
	if got := get(); got.State != RolloutAborted || onV2() != 4 {
		t.Fatalf("after the abort: %+v, %d on version 2; want aborted, all 4", got, onV2())
	}
}
