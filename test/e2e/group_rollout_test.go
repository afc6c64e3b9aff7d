package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// TestGroupRollout: the VMs of a template tagged group=ci move to a new
// template version in place (same ids, names and addresses), canary first,
// never more than max_parallel of them down at once, and a VM of the
// template without the tag is left alone; a version whose VMs cannot boot
// fails at the canary and the VMs go back to their old version; abort in
// the middle of a rollout (across a manager restart) reverts; bad input
// changes nothing; a viewer cannot start one; with auto_promote false
// the rollout waits after its canary (across a manager restart) until a
// promote or an abort.
func TestGroupRollout(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { testGroupRollout(t, engine) })
	}
}

func testGroupRollout(t *testing.T, engine string) {
	const size, maxParallel = 6, 2
	c := newCluster(t, engine, 1, "--reconcile-interval", "1s", "--lease-ttl", "2s", "--vcpu-overcommit", "32")
	ctx := context.Background()
	dir := c.agents[0].imagesDir(t)
	os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644)
	// Not an ELF: the simulator refuses to boot it, as firecracker would.
	os.WriteFile(filepath.Join(dir, "broken"), []byte("this is not a kernel"), 0o644)
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "broken", HostPath: "broken", Project: "*"})
	cl := c.client
	cfg := func(mem int, kernel string) apitypes.TemplateConfig {
		return apitypes.TemplateConfig{Vcpu: intp(1), MemMib: intp(mem), KernelImageID: kernel}
	}
	if _, err := cl.CreateTemplate(ctx, apitypes.CreateTemplateRequest{Name: "runner", Config: cfg(64, "vmlinux")}); err != nil {
		t.Fatal(err)
	}
	made, err := cl.InstantiateTemplate(ctx, "runner", "", apitypes.InstantiateRequest{Name: "ci", Count: size, Tags: map[string]string{"group": "ci"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	lone, err := cl.InstantiateTemplate(ctx, "runner", "", apitypes.InstantiateRequest{Name: "lone"}, true)
	if err != nil {
		t.Fatal(err)
	}
	loneBefore, _ := cl.GetVM(ctx, lone.ID)
	before := map[string]apitypes.VM{} // id → the VM before any rollout
	for _, vm := range made.Items {
		before[vm.ID] = vm
	}
	if _, err := cl.UpdateTemplate(ctx, "runner", "", apitypes.UpdateTemplateRequest{Config: cfg(96, "vmlinux")}); err != nil { // version 2
		t.Fatal(err)
	}
	if _, err := cl.UpdateTemplate(ctx, "runner", "", apitypes.UpdateTemplateRequest{Config: cfg(96, "broken")}); err != nil { // version 3
		t.Fatal(err)
	}
	group := func() []apitypes.VM {
		t.Helper()
		l, err := cl.ListVMs(ctx, nexus.ListVMsOptions{Tags: map[string]string{"group": "ci"}})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	// onVersion checks every VM of the group: same id, name and address as
	// before, running, on version with mem MiB.
	onVersion := func(version, mem int) {
		t.Helper()
		vms := group()
		if len(vms) != size {
			t.Fatalf("group has %d VMs; want %d", len(vms), size)
		}
		for _, vm := range vms {
			b, ok := before[vm.ID]
			switch {
			case !ok:
				t.Fatalf("VM %s (%s) is new: a rollout in place keeps the ids", vm.ID, vm.Name)
			case vm.Name != b.Name || vm.IP != b.IP:
				t.Fatalf("VM %s: name %s, ip %s; want %s, %s as before", vm.ID, vm.Name, vm.IP, b.Name, b.IP)
			case vm.State != "running" || vm.TemplateVersion != version || vm.MemMib != mem:
				t.Fatalf("VM %s: %s, version %d, %d MiB; want running, version %d, %d MiB", vm.Name, vm.State, vm.TemplateVersion, vm.MemMib, version, mem)
			}
		}
	}
	onVersion(1, 64)

	// Bad requests: 4xx in the error contract, and nothing changes.
	for _, bad := range []struct {
		name, tmpl, group string
		req               apitypes.GroupRolloutRequest
		status            int
	}{
		{"no version", "runner", "ci", apitypes.GroupRolloutRequest{}, 400},
		{"the group's own version", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 1}, 400},
		{"canary above the VMs to move", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 2, Canary: intp(size + 1)}, 400},
		{"max_parallel above the VMs to move", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 2, MaxParallel: size + 1}, 400},
		{"min_healthy_time not a duration", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 2, MinHealthyTime: "soon"}, 400},
		{"progress_deadline too short", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 2, ProgressDeadline: "0s"}, 400},
		{"progress_deadline too long", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 2, ProgressDeadline: "2h"}, 400},
		{"bad group name", "runner", "-ci", apitypes.GroupRolloutRequest{TemplateVersion: 2}, 400},
		{"a version never made", "runner", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 9}, 404},
		{"an empty group", "runner", "nobody", apitypes.GroupRolloutRequest{TemplateVersion: 2}, 404},
		{"no such template", "nothing", "ci", apitypes.GroupRolloutRequest{TemplateVersion: 2}, 404},
	} {
		_, err := cl.StartGroupRollout(ctx, bad.tmpl, bad.group, "", bad.req)
		if !isStatus(err, bad.status) {
			t.Fatalf("%s: %+v = %v; want %d", bad.name, bad.req, err, bad.status)
		}
	}
	if _, err := cl.GetGroupRollout(ctx, "runner", "ci", ""); !isStatus(err, 404) {
		t.Fatalf("rollout of a group without one = %v; want 404", err)
	}
	if _, err := cl.PauseGroupRollout(ctx, "runner", "ci", ""); !isStatus(err, 404) {
		t.Fatalf("pause without a rollout = %v; want 404", err)
	}
	viewer := c.newClient(c.token(t, "victor", "viewer", "*"))
	if _, err := viewer.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 2}); !isStatus(err, 403) {
		t.Fatalf("a viewer starts a rollout: %v; want 403", err)
	}
	onVersion(1, 64)

	// watch polls the rollout until it is in wantState, counting the
	// group's VMs that are not running at each look.
	watch := func(wantState string, wait ...time.Duration) (apitypes.GroupRollout, int) {
		t.Helper()
		var mu sync.Mutex
		worst := 0
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // a second, faster look at the VMs, apart from the rollout's own count
			defer close(done)
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				l, err := cl.ListVMs(ctx, nexus.ListVMsOptions{Tags: map[string]string{"group": "ci"}})
				if err != nil {
					continue
				}
				down := 0
				for _, vm := range l.Items {
					if vm.State != "running" {
						down++
					}
				}
				mu.Lock()
				worst = max(worst, down)
				mu.Unlock()
			}
		}()
		var r apitypes.GroupRollout
		eventually(t, append(wait, 45*time.Second)[0], "group rollout "+wantState, func() error {
			var err error
			if r, err = cl.GetGroupRollout(ctx, "runner", "ci", ""); err != nil {
				return err
			}
			mu.Lock()
			worst = max(worst, r.Down)
			mu.Unlock()
			if r.State != wantState {
				return fmt.Errorf("state %s, phase %s (%s), %d new, %d down", r.State, r.Phase, r.Message, r.New, r.Down)
			}
			return nil
		})
		close(stop)
		<-done
		return r, worst
	}

	// A version whose VMs cannot boot: the canary fails, and it goes back.
	r, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 3, Canary: intp(1), MaxParallel: maxParallel,
		ProgressDeadline: "20s", AutoRevert: true})
	if err != nil || r.State != "running" || r.Phase != "canary" || r.Total != size || r.Old != size {
		t.Fatalf("start rollout: %+v, %v", r, err)
	}
	r, worst := watch("reverted")
	if r.Phase != "revert" || !strings.Contains(r.Message, "canary step failed") {
		t.Fatalf("reverted rollout: %+v; want it failed at the canary", r)
	}
	if worst > 1 {
		t.Fatalf("%d VMs of the group were down at once during a failed canary; want at most 1", worst)
	}
	moved := 0
	for _, v := range r.VMs {
		if v.Step != "pending" {
			moved++
		}
	}
	if moved != 1 {
		t.Fatalf("%d VMs touched by the failed rollout; want the one canary: %+v", moved, r.VMs)
	}
	onVersion(1, 64)

	// Without auto_revert the rollout stops where it failed: the canary
	// stays failed on version 3, the rest untouched.
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 3, ProgressDeadline: "20s"}); err != nil {
		t.Fatal(err)
	}
	if r, _ = watch("failed"); r.Phase != "canary" || !strings.Contains(r.Message, "canary step failed") || r.New != 1 || r.Old != size-1 {
		t.Fatalf("failed rollout: %+v; want it stopped at the canary, one VM on version 3", r)
	}
	for _, vm := range group() {
		if vm.TemplateVersion == 3 && vm.State != "failed" || vm.TemplateVersion != 3 && (vm.TemplateVersion != 1 || vm.State != "running") {
			t.Fatalf("after a failed rollout without auto_revert: VM %s is %s on version %d", vm.Name, vm.State, vm.TemplateVersion)
		}
	}

	// The real thing: canary 1, then 2 at a time (the failed canary too).
	began := time.Now()
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 2, Canary: intp(1), MaxParallel: maxParallel,
		ProgressDeadline: "20s", AutoRevert: true}); err != nil {
		t.Fatal(err)
	}
	r, worst = watch("succeeded")
	t.Logf("%d VMs moved in place, canary 1 then %d at a time, in %s; at most %d down at once", size, maxParallel, time.Since(began).Round(time.Millisecond), worst)
	if worst > maxParallel {
		t.Fatalf("%d VMs of the group were down at once; want at most max_parallel (%d)", worst, maxParallel)
	}
	if r.New != size || r.Old != 0 || r.Down != 0 {
		t.Fatalf("after the rollout: %+v; want %d new, none old or down", r, size)
	}
	onVersion(2, 96)
	if vm, err := cl.GetVM(ctx, lone.ID); err != nil || vm.TemplateVersion != 1 || vm.MemMib != 64 || vm.State != "running" ||
		vm.BootedAt == nil || loneBefore.BootedAt == nil || !vm.BootedAt.Equal(*loneBefore.BootedAt) {
		t.Fatalf("the VM without the tag: %+v, %v; want it untouched (version 1, 64 MiB, same boot)", vm, err)
	}
	ev, err := cl.Events(ctx, made.IDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ev.Items, func(e apitypes.Event) bool { return strings.Contains(e.Message, "moving to template version 2") }) {
		t.Fatalf("VM %s has no event of its move: %+v", made.IDs[0], ev.Items)
	}

	// Pause, resume, and abort in the middle (after a manager restart):
	// the canaries go back to version 2.
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 1, Canary: intp(2), MaxParallel: maxParallel,
		MinHealthyTime: "1h"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 1}); !isStatus(err, 409) {
		t.Fatalf("a second rollout of the group = %v; want 409", err)
	}
	eventually(t, 30*time.Second, "the two canaries are on version 1", func() error {
		r, err := cl.GetGroupRollout(ctx, "runner", "ci", "")
		if err != nil || r.New != 2 || r.Down != 0 || r.Phase != "canary" {
			return fmt.Errorf("%+v, %v", r, err)
		}
		return nil
	})
	// Restart once the reconciler is done with the moved VMs: a manager
	// killed in an operation holds its VM until the lease runs out (90s).
	waitPasses(t, cl, 2)
	c.restartManager()
	if r, err := cl.PauseGroupRollout(ctx, "runner", "ci", ""); err != nil || r.State != "paused" {
		t.Fatalf("pause: %+v, %v", r, err)
	}
	if _, err := cl.PauseGroupRollout(ctx, "runner", "ci", ""); !isStatus(err, 409) {
		t.Fatalf("pause a paused rollout = %v; want 409", err)
	}
	if r, err := cl.ResumeGroupRollout(ctx, "runner", "ci", ""); err != nil || r.State != "running" || r.New != 2 {
		t.Fatalf("resume: %+v, %v", r, err)
	}
	if r, err := cl.AbortGroupRollout(ctx, "runner", "ci", ""); err != nil || r.State != "reverting" {
		t.Fatalf("abort: %+v, %v", r, err)
	}
	// 2m: a VM the killed manager was working on is free again only when
	// its lease runs out; the revert waits for it rather than fail.
	if r, worst = watch("aborted", 2*time.Minute); worst > maxParallel || r.New != 0 {
		t.Fatalf("aborted: %+v, %d down at once; want every VM back, at most %d down", r, worst, maxParallel)
	}
	onVersion(2, 96)
	if _, err := cl.ResumeGroupRollout(ctx, "runner", "ci", ""); !isStatus(err, 409) {
		t.Fatalf("resume an aborted rollout = %v; want 409", err)
	}

	// Manual promote: with auto_promote false the rollout stops once its
	// canary runs, only the canary moved, until a promote (by the CLI).
	stateConflict := func(what string, err error) {
		t.Helper()
		var ae *apierr.Error
		if !errors.As(err, &ae) || ae.Status != 409 || ae.Code != "rollout_state" || ae.Suggestion == "" {
			t.Fatalf("%s = %v; want 409 rollout_state with a suggestion", what, err)
		}
	}
	no := false
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 1, Canary: intp(0), AutoPromote: &no}); !isStatus(err, 400) {
		t.Fatalf("auto_promote false with canary 0 = %v; want 400", err)
	}
	// Before its canary has run for min_healthy_time, promote is refused.
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 1, Canary: intp(1),
		MinHealthyTime: "1h", AutoPromote: &no}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the canary is on version 1", func() error {
		r, err := cl.GetGroupRollout(ctx, "runner", "ci", "")
		if err != nil || r.New != 1 || r.Down != 0 || r.State != "running" || r.Phase != "canary" {
			return fmt.Errorf("%+v, %v", r, err)
		}
		return nil
	})
	_, err = cl.PromoteGroupRollout(ctx, "runner", "ci", "")
	stateConflict("promote before the canary has run for min_healthy_time", err)
	if _, err := cl.AbortGroupRollout(ctx, "runner", "ci", ""); err != nil {
		t.Fatal(err)
	}
	watch("aborted")
	onVersion(2, 96)
	if r, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 1, Canary: intp(1), MaxParallel: maxParallel,
		ProgressDeadline: "20s", AutoPromote: &no}); err != nil || r.AutoPromote || r.State != "running" {
		t.Fatalf("start with auto_promote false: %+v, %v", r, err)
	}
	if r, worst = watch("awaiting_promotion"); r.Phase != "canary" || r.New != 1 || r.Old != size-1 || worst > 1 || !strings.Contains(r.Message, "promot") {
		t.Fatalf("awaiting promotion: %+v, %d down at once; want phase canary, only the canary moved", r, worst)
	}
	if onV1 := len(slices.DeleteFunc(group(), func(vm apitypes.VM) bool { return vm.TemplateVersion != 1 })); onV1 != 1 {
		t.Fatalf("awaiting promotion: %d VMs on version 1; want the one canary", onV1)
	}
	_, err = cl.PauseGroupRollout(ctx, "runner", "ci", "")
	stateConflict("pause awaiting promotion", err)
	_, err = cl.ResumeGroupRollout(ctx, "runner", "ci", "")
	stateConflict("resume awaiting promotion", err)
	if _, err := cl.StartGroupRollout(ctx, "runner", "ci", "", apitypes.GroupRolloutRequest{TemplateVersion: 1}); !isStatus(err, 409) {
		t.Fatalf("a second rollout while one awaits promotion = %v; want 409", err)
	}
	e := newCLIEnv(t, c)
	res := e.run(nil, "template", "rollout", "promote", "runner", "ci", "-o", "json")
	var got apitypes.GroupRollout
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &got) != nil || got.State != "running" || got.Phase != "rolling" {
		t.Fatalf("nexus template rollout promote -o json: %+v", res)
	}
	if r, worst = watch("succeeded"); worst > maxParallel || r.New != size {
		t.Fatalf("after the promote: %+v, %d down at once; want all %d on version 1, at most %d down", r, worst, size, maxParallel)
	}
	onVersion(1, 64)
	if r := e.run(nil, "template", "rollout", "promote", "runner", "ci"); r.code == 0 || !strings.Contains(r.stderr, "awaiting_promotion") {
		t.Fatalf("nexus template rollout promote of a finished rollout: %+v; want a failure naming awaiting_promotion", r)
	}

	// Another one, started by the CLI, waits across a manager restart and
	// is aborted from awaiting_promotion: the canary goes back.
	res = e.run(nil, "template", "rollout", "start", "runner", "ci", "--version", "2", "--auto-promote=false", "--progress-deadline", "20s", "-o", "json")
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &got) != nil || got.AutoPromote || got.State != "running" {
		t.Fatalf("nexus template rollout start --auto-promote=false -o json: %+v", res)
	}
	watch("awaiting_promotion")
	waitPasses(t, cl, 2)
	c.restartManager()
	waitPasses(t, cl, 2)
	if r, err := cl.GetGroupRollout(ctx, "runner", "ci", ""); err != nil || r.State != "awaiting_promotion" || r.New != 1 || r.Down != 0 {
		t.Fatalf("after a manager restart: %+v, %v; want still awaiting promotion, one VM on version 2", r, err)
	}
	if r, err := cl.AbortGroupRollout(ctx, "runner", "ci", ""); err != nil || r.State != "reverting" {
		t.Fatalf("abort awaiting promotion: %+v, %v", r, err)
	}
	if r, _ = watch("aborted", 2*time.Minute); r.New != 0 {
		t.Fatalf("aborted from awaiting promotion: %+v; want every VM back", r)
	}
	onVersion(1, 64)
	_, err = cl.PromoteGroupRollout(ctx, "runner", "ci", "")
	stateConflict("promote an aborted rollout", err)

	// Every step is in the audit trail: one row per VM moved.
	actions := map[string]int{}
	stepped := map[string]bool{}
	for e, err := range cl.AuditEntries(ctx, nexus.AuditOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		actions[e.Action]++
		if e.Action == "template.group_rollout.step" && e.Result == "success" {
			stepped[e.ResourceID] = true
		}
	}
	for _, a := range []string{"template.group_rollout", "template.group_rollout.failed", "template.group_rollout.reverted", "template.group_rollout.revert",
		"template.group_rollout.promote", "template.group_rollout.succeeded", "template.group_rollout.aborted", "template.group_rollout_abort",
		"template.group_rollout.awaiting_promotion", "template.group_rollout_promote"} {
		if actions[a] == 0 {
			t.Errorf("no audit row %s; have %v", a, actions)
		}
	}
	for _, id := range made.IDs {
		if !stepped[id] {
			t.Errorf("no audit row of the move of VM %s", id)
		}
	}
	if stepped[lone.ID] {
		t.Errorf("an audit row moves the VM without the tag")
	}

	// The CLI.
	if r := e.run(nil, "template", "rollout", "status", "runner", "ci"); r.code != 0 || !strings.Contains(r.stdout, "aborted") {
		t.Fatalf("nexus template rollout status: %+v", r)
	}
	res = e.run(nil, "template", "rollout", "status", "runner", "ci", "-o", "json")
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &got) != nil || got.State != "aborted" || got.Group != "ci" {
		t.Fatalf("nexus template rollout status -o json: %+v", res)
	}
	if r := e.run(nil, "template", "rollout", "start", "runner", "ci", "--version", "1"); r.code == 0 {
		t.Fatalf("nexus template rollout start to the group's own version: %+v", r)
	}

	for _, id := range append(made.IDs, lone.ID) {
		if err := cl.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	c.assertNoLeaks(append(made.IDs, lone.ID)...)
}
