package manager

// Group rollouts move a group of long-lived VMs to another version of
// their template in place. A group is the VMs of one template in one
// project that carry the tag group=<name> (any version; VMs of a warm pool
// are the pool's and do not count). A step stops a VM, rewrites its
// config from the target version (what CreateVM would resolve from it,
// with the VM's own instantiation overrides on top) and starts it again:
// same id, name, address and disks. The canaries go first; once they run
// (and stayed running for min_healthy_time), the rest, max_parallel at a
// time, so no more than max_parallel VMs of the rollout are down at once.
// With auto_promote false the rollout waits in awaiting_promotion once
// the canaries run, until a promote (the rest) or an abort (back).
// A VM that does not run again within progress_deadline fails the step:
// with auto_revert every VM already moved gets its old config back and is
// restarted; without, the rollout stops (failed) where it is.
//
// The rollout, its VMs and each VM's old config live in the store
// (group_rollout, group_rollout_vm); the leading reconciler drives them
// (RolloutGroups), one step per pass, deciding from the store alone, so a
// rollout survives a manager restart or a leader change. Moving a VM is
// idempotent (stop if not stopped, write the config, start), so a step a
// dead manager left half done is simply done again.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// MaxGroupVMs is the most VMs one group rollout moves.
const MaxGroupVMs = 100

// GroupTag is the tag that puts a VM into a group.
const GroupTag = "group"

// The steps of a VM in a group rollout (group_rollout_vm.state).
const (
	gvPending      = "pending"
	gvMoving       = "moving"
	gvMoved        = "moved"
	gvFailed       = "failed"
	gvReverting    = "reverting"
	gvReverted     = "reverted"
	gvRevertFailed = "revert_failed"
	gvGone         = "gone" // deleted meanwhile: nothing to move
)

// Groups are rollouts of VM groups.
type Groups struct {
	*core
	vms       *VMs
	templates *Templates
	// Kick, when set, asks for a rollout pass now.
	Kick func()
}

func (s *Groups) kick() {
	if s.Kick != nil {
		s.Kick()
	}
}

// groupVMConfig is what a group rollout rewrites on a VM, and what a
// revert restores (stored as group_rollout_vm.old_config).
type groupVMConfig struct {
	VCPU            int             `json:"vcpu"`
	MemMiB          int             `json:"mem_mib"`
	KernelPath      string          `json:"kernel_path,omitempty"`
	RootfsPath      string          `json:"rootfs_path,omitempty"`
	InitrdPath      string          `json:"initrd_path,omitempty"`
	KernelImageID   string          `json:"kernel_image_id,omitempty"`
	RootfsImageID   string          `json:"rootfs_image_id,omitempty"`
	InitrdImageID   string          `json:"initrd_image_id,omitempty"`
	BootArgs        string          `json:"boot_args,omitempty"`
	Spec            json.RawMessage `json:"spec,omitempty"`
	TemplateVersion int             `json:"template_version"`
	TemplateConfig  json.RawMessage `json:"template_config,omitempty"`
}

func configOf(vm store.VM) groupVMConfig {
	return groupVMConfig{VCPU: vm.VCPU, MemMiB: vm.MemMiB, KernelPath: vm.KernelPath, RootfsPath: vm.RootfsPath, InitrdPath: vm.InitrdPath,
		KernelImageID: vm.KernelImageID, RootfsImageID: vm.RootfsImageID, InitrdImageID: vm.InitrdImageID, BootArgs: vm.BootArgs,
		Spec: vm.Spec, TemplateVersion: vm.TemplateVersion, TemplateConfig: vm.TemplateConfig}
}

func (c groupVMConfig) apply(v *store.VM) {
	v.VCPU, v.MemMiB, v.KernelPath, v.RootfsPath, v.InitrdPath = c.VCPU, c.MemMiB, c.KernelPath, c.RootfsPath, c.InitrdPath
	v.KernelImageID, v.RootfsImageID, v.InitrdImageID, v.BootArgs = c.KernelImageID, c.RootfsImageID, c.InitrdImageID, c.BootArgs
	v.Spec, v.TemplateVersion, v.TemplateConfig = c.Spec, c.TemplateVersion, c.TemplateConfig
}

// targetConfig resolves vm's config from a template version, as CreateVM
// would have: the version's config with the VM's overrides on top.
func (s *Groups) targetConfig(ctx context.Context, vm store.VM, v store.TemplateVersion) (groupVMConfig, error) {
	base, err := decodeTemplateConfig(store.Template{ID: v.TemplateID, Config: v.Config})
	if err != nil {
		return groupVMConfig{}, err
	}
	var over apitypes.TemplateConfig
	if len(vm.Overrides) > 0 {
		if err := json.Unmarshal(vm.Overrides, &over); err != nil {
			return groupVMConfig{}, fmt.Errorf("vm %s: stored overrides: %w", vm.ID, err)
		}
	}
	cfg, err := s.vms.resolveConfig(ctx, vm.Project, vmConfig(mergeConfig(base, over)))
	if err != nil {
		return groupVMConfig{}, err
	}
	if (cfg.NIC != nil && cfg.NIC.Disabled) != (vm.TAP == "") {
		return groupVMConfig{}, invalid("version %d of the template adds or removes the network interface of VM %s: a rollout in place keeps each VM's address", v.Version, vm.Name).
			suggest("make new VMs of that version instead (nexus template instantiate)")
	}
	sp, err := marshal(spec{VMConfig: cfg.VMConfig})
	if err != nil {
		return groupVMConfig{}, err
	}
	return groupVMConfig{VCPU: *cfg.Vcpu, MemMiB: *cfg.MemMib, KernelPath: cfg.kernelPath, RootfsPath: cfg.rootfsPath, InitrdPath: cfg.initrdPath,
		KernelImageID: cfg.KernelImageID, RootfsImageID: cfg.RootfsImageID, InitrdImageID: cfg.InitrdImageID, BootArgs: cfg.BootArgs,
		Spec: sp, TemplateVersion: v.Version, TemplateConfig: v.Config}, nil
}

// groupVMs returns the group's VMs: the template's VMs in its project
// tagged group=name, pools' VMs and VMs being deleted left out; at most
// MaxGroupVMs, or an error.
func (s *Groups) groupVMs(ctx context.Context, t store.Template, name string) ([]store.VM, error) {
	var out []store.VM
	f := store.VMFilter{Project: t.Project, Tags: map[string]string{GroupTag: name}, Limit: store.MaxLimit}
	for {
		page, next, err := s.st.ListVMs(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("list VMs of group %s: %w", name, err)
		}
		for _, vm := range page {
			if vm.TemplateID == t.ID && vm.PoolID == "" && vm.State != store.VMDeleting {
				out = append(out, vm)
			}
		}
		if len(out) > MaxGroupVMs {
			return nil, invalid("group %s has more than %d VMs: a rollout moves at most %d", name, MaxGroupVMs, MaxGroupVMs).
				suggest("split it into smaller groups (the group tag)")
		}
		if next == "" {
			return out, nil
		}
		f.Cursor = next
	}
}

// findGroup resolves the template and checks the group's name.
func (s *Groups) findGroup(ctx context.Context, scope Scope, ref, project, group string) (store.Template, error) {
	t, err := s.templates.GetTemplate(ctx, scope, ref, project)
	if err != nil {
		return t, err
	}
	if !nameRE.MatchString(group) {
		return t, invalid("group name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", group)
	}
	return t, nil
}

// StartGroupRollout validates req and stores a running rollout of the
// group to req.TemplateVersion; the leader's loop carries it out.
func (s *Groups) StartGroupRollout(ctx context.Context, scope Scope, ref, project, group, actor string, req apitypes.GroupRolloutRequest) (store.GroupRollout, error) {
	t, err := s.findGroup(ctx, scope, ref, project, group)
	if err != nil {
		return store.GroupRollout{}, err
	}
	if req.TemplateVersion < 1 {
		return store.GroupRollout{}, invalid("template_version is required (1 or more)").suggest("list the versions: nexus template versions " + t.Name)
	}
	minHealthy, err := rolloutDuration("min_healthy_time", req.MinHealthyTime, 0, 0)
	if err != nil {
		return store.GroupRollout{}, err
	}
	deadline, err := rolloutDuration("progress_deadline", req.ProgressDeadline, 5*time.Minute, time.Second)
	if err != nil {
		return store.GroupRollout{}, err
	}
	target, err := s.templates.GetTemplateVersion(ctx, All, t.ID, t.Project, req.TemplateVersion)
	if err != nil {
		return store.GroupRollout{}, err
	}
	vms, err := s.groupVMs(ctx, t, group)
	if err != nil {
		return store.GroupRollout{}, err
	}
	if len(vms) == 0 {
		return store.GroupRollout{}, notFound("group", group).
			suggest(fmt.Sprintf("a group is the VMs of template %s tagged %s=%s", t.Name, GroupTag, group))
	}
	var rows []store.GroupRolloutVM
	for _, vm := range vms {
		if vm.TemplateVersion == target.Version {
			continue
		}
		// Every VM must resolve now: a version that cannot be resolved
		// for one of them is refused before anything changes.
		if _, err := s.targetConfig(ctx, vm, target); err != nil {
			return store.GroupRollout{}, err
		}
		old, err := marshal(configOf(vm))
		if err != nil {
			return store.GroupRollout{}, err
		}
		restart := vm.DesiredState != store.VMStopped
		rows = append(rows, store.GroupRolloutVM{VMID: vm.ID, Position: len(rows), FromVersion: vm.TemplateVersion, Restart: restart, OldConfig: old, State: gvPending})
	}
	n := len(rows)
	if n == 0 {
		return store.GroupRollout{}, invalid("every VM of group %s is on version %d already", group, target.Version)
	}
	canary := 1
	if req.Canary != nil {
		canary = *req.Canary
	}
	if canary < 0 || canary > n {
		return store.GroupRollout{}, invalid("canary must be between 0 and the number of VMs to move (%d)", n)
	}
	autoPromote := req.AutoPromote == nil || *req.AutoPromote
	if !autoPromote && canary == 0 {
		return store.GroupRollout{}, invalid("auto_promote false needs canaries to promote: canary must be 1 or more")
	}
	if req.MaxParallel == 0 {
		req.MaxParallel = 1
	}
	if req.MaxParallel < 1 || req.MaxParallel > n {
		return store.GroupRollout{}, invalid("max_parallel must be between 1 and the number of VMs to move (%d)", n)
	}
	phase := phaseCanary
	if canary == 0 {
		phase = phaseRolling
	}
	r, err := s.st.CreateGroupRollout(ctx, store.GroupRollout{
		Project: t.Project, TemplateID: t.ID, Group: group, ToVersion: target.Version, Canary: canary, MaxParallel: req.MaxParallel,
		MinHealthy: minHealthy, ProgressDeadline: deadline, AutoRevert: req.AutoRevert, AutoPromote: autoPromote,
		State: RolloutRunning, Phase: phase, Actor: actor,
	}, rows)
	if errors.Is(err, store.ErrConflict) {
		return store.GroupRollout{}, conflict("rollout_active", "group %s of template %s already has a rollout under way", group, t.Name).
			suggest(fmt.Sprintf("pause, resume or abort it: nexus template rollout abort %s %s", t.Name, group))
	}
	if err != nil {
		return store.GroupRollout{}, fmt.Errorf("start rollout of group %s: %w", group, err)
	}
	s.kick()
	return r, nil
}

// GetGroupRollout returns the group's newest rollout.
func (s *Groups) GetGroupRollout(ctx context.Context, scope Scope, ref, project, group string) (store.GroupRollout, error) {
	_, r, err := s.getGroupRollout(ctx, scope, ref, project, group)
	return r, err
}

func (s *Groups) getGroupRollout(ctx context.Context, scope Scope, ref, project, group string) (store.Template, store.GroupRollout, error) {
	t, err := s.findGroup(ctx, scope, ref, project, group)
	if err != nil {
		return t, store.GroupRollout{}, err
	}
	r, err := s.st.LatestGroupRollout(ctx, t.ID, group)
	if errors.Is(err, store.ErrNotFound) {
		return t, r, notFound("rollout of group", group).suggest(fmt.Sprintf("start one: nexus template rollout start %s %s --version N", t.Name, group))
	}
	if err != nil {
		return t, r, fmt.Errorf("get rollout of group %s: %w", group, err)
	}
	return t, r, nil
}

// ControlGroupRollout pauses, resumes, promotes or aborts the group's
// rollout. Promote moves a rollout awaiting promotion on to the rest of
// the group; abort moves the VMs already moved back to their old config.
func (s *Groups) ControlGroupRollout(ctx context.Context, scope Scope, ref, project, group, action string) (store.GroupRollout, error) {
	t, r, err := s.getGroupRollout(ctx, scope, ref, project, group)
	if err != nil {
		return r, err
	}
	from, state, phase, err := rolloutTransition(action, r.Phase)
	if err != nil {
		return r, err
	}
	n, err := s.st.SetGroupRolloutState(ctx, r.ID, from, state, phase, action+" requested")
	if errors.Is(err, store.ErrConflict) {
		if cur, gerr := s.st.GetGroupRollout(ctx, r.ID); gerr == nil {
			r = cur // the state that refused, not the one read before
		}
		return r, refusedAction(action, from, r.State, r.Phase, r.AutoPromote, fmt.Sprintf("nexus template rollout status %s %s", t.Name, group))
	}
	if err != nil {
		return r, fmt.Errorf("%s rollout %s: %w", action, r.ID, err)
	}
	if action == "promote" {
		for _, id := range s.movedVMs(ctx, n.ID) {
			s.event(ctx, id, store.LevelInfo, "rollout %s of group %s: canaries promoted; moving the rest, %d at a time", n.ID, n.Group, n.MaxParallel)
		}
	}
	s.kick()
	return n, nil
}

// movedVMs are the ids of the rollout's VMs moved so far, for events.
func (s *Groups) movedVMs(ctx context.Context, rolloutID string) []string {
	rows, err := s.st.ListGroupRolloutVMs(ctx, rolloutID)
	if err != nil {
		return nil
	}
	var ids []string
	for _, row := range rows {
		if row.State == gvMoved {
			ids = append(ids, row.VMID)
		}
	}
	return ids
}

// GroupRolloutView renders a rollout with its VMs as they are now.
func (s *Groups) GroupRolloutView(ctx context.Context, r store.GroupRollout) apitypes.GroupRollout {
	v := apitypes.GroupRollout{ID: r.ID, TemplateID: r.TemplateID, Project: r.Project, Group: r.Group, ToVersion: r.ToVersion, Canary: r.Canary,
		MaxParallel: r.MaxParallel, MinHealthyTime: r.MinHealthy.String(), ProgressDeadline: r.ProgressDeadline.String(), AutoRevert: r.AutoRevert, AutoPromote: r.AutoPromote,
		State: r.State, Phase: r.Phase, Message: r.Message, Actor: r.Actor, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, VMs: []apitypes.GroupRolloutVM{}}
	rows, err := s.st.ListGroupRolloutVMs(ctx, r.ID)
	if err != nil {
		return v
	}
	for _, row := range rows {
		item := apitypes.GroupRolloutVM{ID: row.VMID, FromVersion: row.FromVersion, Step: row.State, Message: row.Message}
		v.Total++
		if vm, err := s.st.GetVM(ctx, row.VMID); err == nil {
			item.Name, item.Version, item.VMState = vm.Name, vm.TemplateVersion, string(vm.State)
			if vm.TemplateVersion == r.ToVersion {
				v.New++
			} else {
				v.Old++
			}
			if row.Restart && vm.State != store.VMRunning {
				v.Down++
			}
		}
		v.VMs = append(v.VMs, item)
	}
	return v
}

// RolloutGroups is one pass over the active group rollouts: one step of
// each. Only the leading reconciler runs it, one pass at a time.
func (s *Groups) RolloutGroups(ctx context.Context) {
	rs, err := s.st.ListActiveGroupRollouts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("group rollouts: list", "err", err)
		}
		return
	}
	for _, r := range rs {
		if ctx.Err() != nil {
			return
		}
		rows, err := s.st.ListGroupRolloutVMs(ctx, r.ID)
		if err != nil {
			continue
		}
		if r.State == RolloutReverting {
			s.revertPass(ctx, r, rows)
		} else {
			s.rolloutPass(ctx, r, rows)
		}
	}
}

// rolloutPass is one step of a running rollout.
func (s *Groups) rolloutPass(ctx context.Context, r store.GroupRollout, rows []store.GroupRolloutVM) {
	var todo []store.GroupRolloutVM // moving (left half done) first, then pending
	var pending []store.GroupRolloutVM
	moved, ready := 0, true
	for _, row := range rows {
		switch row.State {
		case gvMoving:
			todo = append(todo, row)
		case gvPending:
			pending = append(pending, row)
		case gvFailed:
			// A manager that died between failing a VM and the rollout.
			s.failRollout(ctx, r, fmt.Errorf("VM %s: %s", row.VMID, row.Message))
			return
		case gvMoved:
			vm, err := s.st.GetVM(ctx, row.VMID)
			if errors.Is(err, store.ErrNotFound) {
				_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvGone, "deleted during the rollout")
				continue
			}
			if err != nil {
				return
			}
			if row.Restart && vm.DesiredState != store.VMStopped && vm.State != store.VMRunning && vm.State != store.VMPaused {
				// A moved VM that stopped running (it crashed; a stop of
				// its user's is no failure) fails the rollout as its boot
				// would have.
				_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvFailed, fmt.Sprintf("%s after the move%s", vm.State, lastErrorText(vm)))
				s.failRollout(ctx, r, fmt.Errorf("VM %s of version %d is %s, not running%s", vm.Name, r.ToVersion, vm.State, lastErrorText(vm)))
				return
			}
			moved++
			if s.now().Sub(row.UpdatedAt) < r.MinHealthy {
				ready = false
			}
		}
	}
	todo = append(todo, pending...)
	if r.State == RolloutAwaitingPromotion {
		return // the canaries were watched above; the rest waits for a promote
	}
	if !ready {
		return // the loop's ticker comes back
	}
	if r.Phase == phaseCanary && (moved >= r.Canary || len(todo) == 0) {
		if !r.AutoPromote {
			msg := fmt.Sprintf("%d canary VM(s) on version %d running; awaiting promotion (nexus template rollout promote TEMPLATE %s)", moved, r.ToVersion, r.Group)
			n, err := s.st.SetGroupRolloutState(ctx, r.ID, []string{RolloutRunning}, RolloutAwaitingPromotion, phaseCanary, msg)
			if err != nil {
				return // paused or aborted meanwhile: the next pass sees it
			}
			for _, id := range s.movedVMs(ctx, r.ID) {
				s.event(ctx, id, store.LevelInfo, "rollout %s of group %s: this canary runs on version %d; the rollout awaits promotion", r.ID, r.Group, r.ToVersion)
			}
			s.auditRollout(ctx, n, "template.group_rollout.awaiting_promotion", nil)
			return
		}
		msg := fmt.Sprintf("%d canary VM(s) on version %d running; moving the rest, %d at a time", moved, r.ToVersion, r.MaxParallel)
		n, err := s.st.SetGroupRolloutState(ctx, r.ID, []string{RolloutRunning}, RolloutRunning, phaseRolling, msg)
		if err != nil {
			return // paused or aborted meanwhile: the next pass sees it
		}
		r = n
		s.auditRollout(ctx, r, "template.group_rollout.promote", nil)
	}
	if len(todo) == 0 {
		msg := fmt.Sprintf("every VM of the group is on version %d", r.ToVersion)
		if n, err := s.st.SetGroupRolloutState(ctx, r.ID, []string{RolloutRunning}, RolloutSucceeded, r.Phase, msg); err == nil {
			s.auditRollout(ctx, n, "template.group_rollout.succeeded", nil)
		}
		return
	}
	limit := r.MaxParallel
	if r.Phase == phaseCanary {
		limit = min(limit, r.Canary-moved)
	}
	batch := todo[:min(limit, len(todo))]
	target, err := s.templates.GetTemplateVersion(ctx, All, r.TemplateID, r.Project, r.ToVersion)
	if err != nil {
		s.failRollout(ctx, r, fmt.Errorf("template version %d: %w", r.ToVersion, err))
		return
	}
	var failure error
	var mu sync.Mutex
	s.each(batch, func(row store.GroupRolloutVM) {
		if err := s.moveVM(ctx, r, row, target); err != nil {
			mu.Lock()
			failure = errors.Join(failure, err)
			mu.Unlock()
		}
	})
	if failure != nil {
		s.failRollout(ctx, r, failure)
		return
	}
	s.kick() // the next step may be due at once
}

// each runs f on every row at once (a batch is at most max_parallel).
func (s *Groups) each(rows []store.GroupRolloutVM, f func(store.GroupRolloutVM)) {
	var wg sync.WaitGroup
	for _, row := range rows {
		wg.Go(func() { f(row) })
	}
	wg.Wait()
}

// moveVM moves one VM to the target version; its error fails the step.
func (s *Groups) moveVM(ctx context.Context, r store.GroupRollout, row store.GroupRolloutVM, target store.TemplateVersion) error {
	vm, err := s.st.GetVM(ctx, row.VMID)
	if errors.Is(err, store.ErrNotFound) {
		return s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvGone, "deleted during the rollout")
	}
	if err != nil {
		return fmt.Errorf("VM %s: %w", row.VMID, err)
	}
	cfg, err := s.targetConfig(ctx, vm, target)
	if err != nil {
		// Nothing was done to the VM (an image gone meanwhile): it stays
		// pending, and a revert leaves it alone.
		return fmt.Errorf("VM %s: version %d: %w", vm.Name, r.ToVersion, err)
	}
	if err = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvMoving, ""); err != nil {
		return fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	note := fmt.Sprintf("rollout %s of group %s (%s): moving to template version %d", r.ID, r.Group, r.Phase, r.ToVersion)
	err = s.replace(ctx, vm.ID, cfg, row.Restart, r.ProgressDeadline, note)
	if e, ok := AsError(err); ok && e.Kind == KindNotFound && e.Code == "not_found" {
		return s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvGone, "deleted during the rollout")
	}
	if busy(err) {
		return nil // not the version's fault: the row stays moving, and the next pass tries again
	}
	if err != nil {
		err = fmt.Errorf("VM %s did not run on version %d: %w", vm.Name, r.ToVersion, err)
		_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvFailed, PublicMessage(err))
		s.auditVM(ctx, r, vm.ID, "template.group_rollout.step", err)
		return err
	}
	if err := s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvMoved, fmt.Sprintf("on version %d", r.ToVersion)); err != nil {
		return fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	s.auditVM(ctx, r, vm.ID, "template.group_rollout.step", nil)
	return nil
}

// busy reports an operation of another manager holding the VM (one that
// died holds it until its lease runs out): worth another try, not a
// failure of the version.
func busy(err error) bool {
	e, ok := AsError(err)
	return ok && e.Kind == KindConflict && e.Code == "vm_busy"
}

// replace stops the VM, writes cfg into it and, with restart, starts it
// again, all under the VM's lock; the start must reach running within
// deadline.
func (s *Groups) replace(ctx context.Context, id string, cfg groupVMConfig, restart bool, deadline time.Duration, note string) error {
	vm, unlock, err := s.vms.lockedVM(ctx, All, id)
	if err != nil {
		return err
	}
	defer unlock()
	ctx = context.WithoutCancel(ctx) // a step under way finishes
	if vm.State == store.VMDeleting {
		return notFound("vm", id)
	}
	s.event(ctx, id, store.LevelInfo, "%s", note)
	if vm.State != store.VMStopped {
		if vm, err = s.vms.stopLocked(ctx, vm); err != nil {
			return err
		}
	}
	if vm, err = s.update(ctx, id, func(v *store.VM) error {
		cfg.apply(v)
		return nil
	}); err != nil {
		return err
	}
	s.event(ctx, id, store.LevelInfo, "config rewritten from template version %d: %d vCPU, %d MiB", cfg.TemplateVersion, cfg.VCPU, cfg.MemMiB)
	if !restart {
		return nil
	}
	start := s.now()
	bootCtx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	vm, err = s.vms.startLocked(bootCtx, vm)
	if err != nil {
		return err
	}
	if took := s.now().Sub(start); took > deadline || vm.State != store.VMRunning {
		return fmt.Errorf("it is %s after %s; the progress deadline is %s", vm.State, took.Round(time.Millisecond), deadline)
	}
	return nil
}

// failRollout stops a running (paused, or awaiting promotion) rollout
// after a failed step: reverting with auto_revert, failed without.
func (s *Groups) failRollout(ctx context.Context, r store.GroupRollout, cause error) {
	state, phase := RolloutFailed, r.Phase
	if r.AutoRevert {
		state, phase = RolloutReverting, phaseRevert
	}
	msg := fmt.Sprintf("%s step failed: %v", r.Phase, cause)
	n, err := s.st.SetGroupRolloutState(ctx, r.ID, []string{RolloutRunning, RolloutPaused, RolloutAwaitingPromotion}, state, phase, msg)
	if err != nil {
		return
	}
	s.log.Warn("group rollout failed", "group", r.Group, "rollout", r.ID, "to_version", r.ToVersion, "auto_revert", r.AutoRevert, "err", cause)
	s.auditRollout(ctx, n, "template.group_rollout.failed", cause)
	if state == RolloutReverting {
		s.kick()
	}
}

// revertPass moves up to max_parallel VMs the rollout touched back to
// their old config; once none is left, the rollout ends reverted (after
// a failure) or aborted (on request).
func (s *Groups) revertPass(ctx context.Context, r store.GroupRollout, rows []store.GroupRolloutVM) {
	var todo []store.GroupRolloutVM
	var failed []string
	for _, row := range rows {
		switch row.State {
		case gvMoving, gvMoved, gvFailed, gvReverting:
			todo = append(todo, row)
		case gvRevertFailed:
			failed = append(failed, fmt.Sprintf("%s (%s)", row.VMID, row.Message))
		}
	}
	if len(todo) > 0 {
		s.each(todo[:min(r.MaxParallel, len(todo))], func(row store.GroupRolloutVM) { s.revertVM(ctx, r, row) })
		s.kick()
		return
	}
	state, action := RolloutReverted, "template.group_rollout.reverted"
	if r.Phase == phaseAbort {
		state, action = RolloutAborted, "template.group_rollout.aborted"
	}
	msg := fmt.Sprintf("every VM moved is back on its old config (%s)", r.Message)
	var cause error
	if len(failed) > 0 {
		state, action = RolloutFailed, "template.group_rollout.failed"
		cause = fmt.Errorf("%d VM(s) did not run again on their old config: %s", len(failed), strings.Join(failed, "; "))
		msg = fmt.Sprintf("revert incomplete: %v (%s)", cause, r.Message)
	}
	if n, err := s.st.SetGroupRolloutState(ctx, r.ID, []string{RolloutReverting}, state, r.Phase, msg); err == nil {
		s.auditRollout(ctx, n, action, cause)
	}
}

func (s *Groups) revertVM(ctx context.Context, r store.GroupRollout, row store.GroupRolloutVM) {
	var cfg groupVMConfig
	if err := json.Unmarshal(row.OldConfig, &cfg); err != nil {
		_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvRevertFailed, "stored old config: "+err.Error())
		return
	}
	if err := s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvReverting, ""); err != nil {
		return
	}
	note := fmt.Sprintf("rollout %s of group %s (%s): going back to template version %d", r.ID, r.Group, r.Phase, cfg.TemplateVersion)
	err := s.replace(ctx, row.VMID, cfg, row.Restart, r.ProgressDeadline, note)
	if e, ok := AsError(err); ok && e.Kind == KindNotFound && e.Code == "not_found" {
		_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvGone, "deleted during the rollout")
		return
	}
	if busy(err) {
		return // the row stays reverting: the next pass tries again
	}
	if err != nil {
		_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvRevertFailed, PublicMessage(err))
	} else {
		_ = s.st.SetGroupRolloutVM(ctx, r.ID, row.VMID, gvReverted, fmt.Sprintf("back on version %d", cfg.TemplateVersion))
	}
	s.auditVM(ctx, r, row.VMID, "template.group_rollout.revert", err)
}

// auditRollout writes a system audit row about the rollout as a whole
// (resource: the template).
func (s *Groups) auditRollout(ctx context.Context, r store.GroupRollout, action string, failure error) {
	s.audit(ctx, r, action, "template", r.TemplateID, failure)
}

// auditVM writes a system audit row about one VM's step.
func (s *Groups) auditVM(ctx context.Context, r store.GroupRollout, vmID, action string, failure error) {
	s.audit(ctx, r, action, "vm", vmID, failure)
}

func (s *Groups) audit(ctx context.Context, r store.GroupRollout, action, resource, id string, failure error) {
	after, _ := json.Marshal(map[string]any{"group": r.Group, "template_id": r.TemplateID, "rollout": r.ID, "to_version": r.ToVersion,
		"state": r.State, "phase": r.Phase})
	aid, err := s.st.BeginAudit(ctx, store.AuditEntry{Actor: SystemActor, Action: action, Resource: resource, ResourceID: id})
	if err != nil {
		return
	}
	result, text := store.AuditSuccess, ""
	if failure != nil {
		result, text = store.AuditFailure, failure.Error()
	}
	_ = s.st.CompleteAudit(context.WithoutCancel(ctx), aid, result, after, text)
}
