package manager

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Defaults for a VM created without vcpu or mem_mib.
const (
	DefaultVcpu   = 1
	DefaultMemMib = 128
)

// CreateOptions tune CreateVM.
type CreateOptions struct {
	// ID is the new VM's id; empty picks one. The API chooses it up front
	// so the audit row of the create names the VM.
	ID string
	// Wait makes CreateVM return only once the VM runs (or failed, with the
	// reason). Without it CreateVM returns the requested VM and boots it in
	// the background.
	Wait bool
	// TemplateID, TemplateConfig and Overrides are recorded on the VM when
	// it comes from a template.
	TemplateID      string
	TemplateVersion int
	TemplateConfig  []byte
	Overrides       []byte
	// PoolID puts the VM into a warm pool from its first moment.
	PoolID string
}

// CreateVM validates req, places the VM on a host, stores it as requested
// and, unless start is false, boots it: requested → running.
func (s *VMs) CreateVM(ctx context.Context, scope Scope, req apitypes.CreateVMRequest, opt CreateOptions) (store.VM, error) {
	project := s.projectOf(scope, req.Project)
	if !scope.Sees(project) {
		return store.VM{}, newErr(KindForbidden, "forbidden", "this token cannot create VMs in project %q", project).
			suggest("omit project, or use a token of that project")
	}
	if err := checkTags(req.Tags); err != nil {
		return store.VM{}, err
	}
	if usesRawPaths(req.VMConfig) && !scope.Admin {
		return store.VM{}, newErr(KindForbidden, "raw_path_refused", "raw host paths (kernel_path, initrd_path, rootfs_path, extra_drives[].path) need an admin token").
			suggest("boot from registered images (kernel_image_id, initrd_image_id, rootfs_image_id): nexus image ls")
	}
	cfg, err := s.resolveConfig(ctx, project, req.VMConfig)
	if err != nil {
		return store.VM{}, err
	}
	start := req.Start == nil || *req.Start
	expiresAt, onExpiry, err := parseTTL(s.now(), req.Expiry)
	if err != nil {
		return store.VM{}, err
	}
	if err := checkNetwork(req.VMConfig); err != nil {
		return store.VM{}, err
	}

	id := opt.ID
	if id == "" {
		id = uuid.NewString()
	} else if !hostlayout.ValidVMID(id) {
		return store.VM{}, invalid("invalid vm id %q", id)
	}
	specJSON, err := marshal(spec{VMConfig: cfg.VMConfig})
	if err != nil {
		return store.VM{}, err
	}
	desired := store.VMRunning
	if !start {
		desired = store.VMStopped
	}
	vm := store.VM{
		ID: id, Name: req.Name, Project: project,
		State: store.VMRequested, DesiredState: desired,
		TAP: hostlayout.TapName(id), MAC: hostlayout.GuestMAC(id).String(),
		VCPU: *cfg.Vcpu, MemMiB: *cfg.MemMib,
		KernelPath: cfg.kernelPath, RootfsPath: cfg.rootfsPath, InitrdPath: cfg.initrdPath,
		KernelImageID: cfg.KernelImageID, RootfsImageID: cfg.RootfsImageID, InitrdImageID: cfg.InitrdImageID,
		BootArgs: cfg.BootArgs, Spec: specJSON, Tags: req.Tags,
		TemplateID: opt.TemplateID, TemplateVersion: opt.TemplateVersion, TemplateConfig: opt.TemplateConfig, Overrides: opt.Overrides,
		ExpiresAt: expiresAt, OnExpiry: onExpiry, PoolID: opt.PoolID,
	}
	if cfg.NIC != nil && cfg.NIC.Disabled {
		vm.TAP, vm.MAC = "", ""
	}
	// The lock is taken before the row exists, so no stop, delete or
	// reconciler pass can act on the VM until its boot is underway, and a
	// lock that cannot be had leaves no row behind.
	unlock, err := s.lockVM(ctx, vm.ID)
	if err != nil {
		return store.VM{}, err
	}
	vm, host, err := s.placement.create(ctx, vm, req.HostID)
	s.recent.put(vm) // the zero VM on an error: put keeps none
	if err != nil {
		unlock()
		if errors.Is(err, store.ErrConflict) {
			return store.VM{}, conflict("name_taken", "a VM named %q already exists in project %q", req.Name, project).
				suggest("pick another name or delete the existing VM")
		}
		if _, ok := AsError(err); ok {
			return store.VM{}, err
		}
		return store.VM{}, fmt.Errorf("create vm %s: %w", req.Name, err)
	}
	// The address came with the row (placement): a VM created stopped
	// shows it too, and a full subnet was refused before anything existed.
	if a := addressText(vm); a != "" {
		s.event(ctx, vm.ID, store.LevelInfo, "requested on host %s, address %s", host.Name, a)
	} else {
		s.event(ctx, vm.ID, store.LevelInfo, "requested on host %s", host.Name)
	}
	if !start {
		defer unlock()
		return s.setState(ctx, vm.ID, store.VMStopped, "")
	}
	// The boot must finish even if the caller disconnects: it keeps the
	// request's values, not its cancellation.
	bootCtx := context.WithoutCancel(ctx)
	if !opt.Wait {
		s.goBackground(func() {
			defer unlock()
			_, _ = s.boot(bootCtx, vm)
		})
		return vm, nil
	}
	defer unlock()
	booted, err := s.boot(bootCtx, vm)
	if err != nil {
		return store.VM{}, s.discardFailed(booted, err)
	}
	return booted, nil
}

// projectOf is the project a new resource goes to: the requested one, or
// the scope's own, or the default project.
func (s *core) projectOf(scope Scope, requested string) string {
	if requested != "" {
		return requested
	}
	if scope.Project == "" || scope.Project == "*" {
		return s.cfg.DefaultProject
	}
	return scope.Project
}

// discardFailed removes every trace of a VM whose create the caller is
// told failed: its host objects (process, TAP, socket, run dir, cgroup)
// and its row, so retrying with the same name works. firecracker's last
// log lines go into the error first, since the log goes with the run dir.
// Only a create that was answered with success (or wait=false) and failed
// later keeps its VM, in failed, for the user to inspect. If the host
// cannot be reached, the row goes anyway and the reconciler removes what
// is left there as orphans.
func (s *VMs) discardFailed(vm store.VM, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), s.cfg.StopGrace+30*time.Second)
	defer cancel()
	e, ok := AsError(cause)
	if !ok {
		e = &Error{Kind: KindInternal, Code: "internal", Message: "vm " + vm.ID, Err: cause}
	} else {
		c := *e
		e = &c
	}
	if vm.HostAddr != "" {
		ag := s.agentFor(ctx, vm)
		// A VMM that never started has no log: the call then fails, and
		// the error goes without lines.
		if ll, err := ag.Logs(ctx, vm.ID, "fc", logTailLines); err == nil {
			e.LogTail = ll.Lines
		}
		if err := ag.Delete(ctx, vm.ID); err != nil {
			s.log.Warn("failed create: host objects left for the reconciler", "vm_id", vm.ID, "err", err)
		}
	}
	if err := s.st.DeleteVM(ctx, vm.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("failed create: could not delete the vm row", "vm_id", vm.ID, "err", err)
		return e
	}
	s.recent.forget(vm.ID)
	if e.Suggestion == "" {
		e.Suggestion = "nothing was left behind; fix the request and create it again"
	}
	return e
}

// logTailLines is how much of firecracker's log a failed create returns.
const logTailLines = 20

func usesRawPaths(c apitypes.VMConfig) bool {
	if c.KernelPath != "" || c.InitrdPath != "" || c.RootfsPath != "" {
		return true
	}
	for _, d := range c.ExtraDrives {
		if d.Path != "" {
			return true
		}
	}
	return false
}

// resolvedConfig is a VMConfig with defaults and image paths resolved.
type resolvedConfig struct {
	apitypes.VMConfig
	kernelPath string
	initrdPath string
	rootfsPath string
}

func (s *VMs) resolveConfig(ctx context.Context, project string, c apitypes.VMConfig) (resolvedConfig, error) {
	r := resolvedConfig{VMConfig: c}
	if r.Vcpu == nil {
		r.Vcpu = firecracker.Int(DefaultVcpu)
	}
	if r.MemMib == nil {
		r.MemMib = firecracker.Int(DefaultMemMib)
	}
	if err := checkVcpu("vcpu", *r.Vcpu); err != nil {
		return r, err
	}
	if err := checkMem("mem_mib", *r.MemMib); err != nil {
		return r, err
	}
	if err := checkBootArgs("boot_args", r.BootArgs); err != nil {
		return r, err
	}
	var err error
	if r.kernelPath, err = s.images.resolveFile(ctx, project, "kernel", store.ImageKernel, c.KernelImageID, c.KernelPath, true); err != nil {
		return r, err
	}
	if r.initrdPath, err = s.images.resolveFile(ctx, project, "initrd", store.ImageInitrd, c.InitrdImageID, c.InitrdPath, false); err != nil {
		return r, err
	}
	if r.rootfsPath, err = s.images.resolveFile(ctx, project, "rootfs", store.ImageRootfs, c.RootfsImageID, c.RootfsPath, false); err != nil {
		return r, err
	}
	if err := checkCommandLine("boot_args", r.BootArgs, r.rootfsPath != "", r.NIC == nil || !r.NIC.Disabled); err != nil {
		return r, err
	}
	seen := map[string]bool{"rootfs": r.rootfsPath != ""}
	for i, d := range r.ExtraDrives {
		if !firecracker.ValidID(d.DriveID) {
			return r, invalid("extra_drives[%d].drive_id %q: use letters, digits and _", i, d.DriveID)
		}
		if seen[d.DriveID] {
			return r, invalid("extra_drives[%d].drive_id %q is used twice", i, d.DriveID)
		}
		seen[d.DriveID] = true
		p, err := s.images.resolveFile(ctx, project, fmt.Sprintf("extra_drives[%d]", i), store.ImageRootfs, d.ImageID, d.Path, true)
		if err != nil {
			return r, err
		}
		r.ExtraDrives[i].Path = p
	}
	return r, nil
}

// GetVM returns one VM the scope can see.
func (s *VMs) GetVM(ctx context.Context, scope Scope, id string) (store.VM, error) {
	vm, err := s.st.GetVM(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !scope.Sees(vm.Project)) {
		// 404, not 403: ids of other projects must not be probeable.
		return store.VM{}, notFound("vm", id)
	}
	if err != nil {
		return store.VM{}, fmt.Errorf("get vm %s: %w", id, err)
	}
	return vm, nil
}

// lockedVM checks the caller may see the VM, takes its lock and reads it
// again: an operation decides on the state read under the lock.
func (s *VMs) lockedVM(ctx context.Context, scope Scope, id string) (store.VM, func(), error) {
	if _, err := s.GetVM(ctx, scope, id); err != nil {
		return store.VM{}, nil, err
	}
	unlock, err := s.lockVM(ctx, id)
	if err != nil {
		return store.VM{}, nil, err
	}
	vm, err := s.GetVM(ctx, scope, id)
	if err != nil {
		unlock()
		return vm, nil, err
	}
	return vm, unlock, nil
}

// GetVMByName finds a VM by name in project (default: the scope's own
// project, or the default project).
func (s *VMs) GetVMByName(ctx context.Context, scope Scope, project, name string) (store.VM, error) {
	if project == "" {
		project = scope.Project
		if project == "" || project == "*" {
			project = s.cfg.DefaultProject
		}
	}
	if !scope.Sees(project) {
		return store.VM{}, notFound("vm", name)
	}
	vm, err := s.st.GetVMByName(ctx, project, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.VM{}, notFound("vm", name)
	}
	if err != nil {
		return store.VM{}, fmt.Errorf("get vm %s/%s: %w", project, name, err)
	}
	return vm, nil
}

// ListVMs pages through the VMs the scope can see.
func (s *VMs) ListVMs(ctx context.Context, scope Scope, f store.VMFilter) ([]store.VM, string, error) {
	p, ok := scope.filterProject(f.Project)
	if !ok {
		return nil, "", nil
	}
	f.Project = p
	items, next, err := s.st.ListVMs(ctx, f)
	if errors.Is(err, store.ErrInvalid) {
		return nil, "", invalid("invalid cursor").suggest("pass next_cursor from the previous page unchanged")
	}
	return items, next, err
}

// StartVM boots a stopped or failed VM again (a fresh VMM with the same
// disks). Starting a running VM does nothing.
func (s *VMs) StartVM(ctx context.Context, scope Scope, id string) (store.VM, error) {
	vm, unlock, err := s.lockedVM(ctx, scope, id)
	if err != nil {
		return vm, err
	}
	defer unlock()
	return s.startLocked(context.WithoutCancel(ctx), vm) // a started start must finish
}

// startLocked starts vm; the caller holds its lock. The boot runs on ctx
// (its deadline bounds the boot too).
func (s *VMs) startLocked(ctx context.Context, vm store.VM) (store.VM, error) {
	id := vm.ID
	var err error
	switch vm.State {
	case store.VMRunning:
		return s.setDesired(ctx, id, store.VMRunning)
	case store.VMPaused:
		return vm, conflict("vm_paused", "vm %s is paused", id).suggest("resume it: nexus vm resume " + id)
	case store.VMDeleting:
		return vm, conflict("vm_deleting", "vm %s is being deleted", id)
	case store.VMStopping:
		return vm, conflict("vm_stopping", "vm %s is still stopping", id).
			suggest("stop it again (nexus vm stop " + id + ") to finish the stop, then start it")
	}
	if vm, err = s.update(ctx, id, func(v *store.VM) error {
		// An explicit start forgets earlier crashes.
		v.DesiredState, v.State, v.LastError = store.VMRunning, store.VMRequested, ""
		v.Retries, v.NextAttemptAt = 0, nil
		return nil
	}); err != nil {
		return vm, err
	}
	s.event(ctx, id, store.LevelInfo, "start requested")
	// Whatever an earlier run left (a dead VMM's socket) is cleared first.
	if err := s.agentFor(ctx, vm).Stop(ctx, id, agentapi.StopRequest{}); err != nil {
		return vm, agentError("vm "+id+": clean up before start", vm, err)
	}
	return s.boot(ctx, vm)
}

// StopVM ends the VM's VMM: stopping → stopped. The TAP and socket go; the
// run dir with the disks and logs stays.
func (s *VMs) StopVM(ctx context.Context, scope Scope, id string) (store.VM, error) {
	vm, unlock, err := s.lockedVM(ctx, scope, id)
	if err != nil {
		return vm, err
	}
	defer unlock()
	return s.stopLocked(ctx, vm)
}

// stopLocked stops vm; the caller holds its lock.
func (s *VMs) stopLocked(ctx context.Context, vm store.VM) (store.VM, error) {
	id := vm.ID
	if vm.State == store.VMStopped {
		return s.setDesired(ctx, id, store.VMStopped)
	}
	if vm.State == store.VMDeleting {
		return vm, conflict("vm_deleting", "vm %s is being deleted", id)
	}
	vm, err := s.update(ctx, id, func(v *store.VM) error {
		v.DesiredState, v.State = store.VMStopped, store.VMStopping
		return nil
	})
	if err != nil {
		return vm, err
	}
	s.event(ctx, id, store.LevelInfo, "stopping")
	return s.stopOnHost(context.WithoutCancel(ctx), vm)
}

func (s *VMs) stopOnHost(ctx context.Context, vm store.VM) (store.VM, error) {
	out := vm
	err := s.runSteps(ctx, vm.ID, "stop", []step{
		{name: "stop vmm", do: func(ctx context.Context) error {
			if vm.HostAddr == "" {
				return nil
			}
			req := agentapi.StopRequest{GraceMs: int(s.cfg.StopGrace / time.Millisecond)}
			if err := s.agentFor(ctx, vm).Stop(ctx, vm.ID, req); err != nil {
				return agentError("vm "+vm.ID+": stop", vm, err).suggest("the reconciler retries the stop")
			}
			return nil
		}},
		{name: "record stopped", do: func(ctx context.Context) (err error) {
			out, err = s.update(ctx, vm.ID, func(v *store.VM) error {
				// The run is over: its guest is neither started nor ready.
				v.State, v.LastError, v.BootedAt, v.GuestReadyAt = store.VMStopped, "", nil, nil
				return nil
			})
			s.event(ctx, vm.ID, store.LevelInfo, "stopped")
			return err
		}},
	})
	return out, unwrapStep(err)
}

// unwrapStep returns the error of the step that failed.
func unwrapStep(err error) error {
	var sf *stepFailure
	if errors.As(err, &sf) {
		return sf.err
	}
	return err
}

// PauseVM pauses a running VM.
func (s *VMs) PauseVM(ctx context.Context, scope Scope, id string) (store.VM, error) {
	return s.pauseResume(ctx, scope, id, true)
}

// ResumeVM resumes a paused VM.
func (s *VMs) ResumeVM(ctx context.Context, scope Scope, id string) (store.VM, error) {
	return s.pauseResume(ctx, scope, id, false)
}

func (s *VMs) pauseResume(ctx context.Context, scope Scope, id string, pause bool) (store.VM, error) {
	vm, unlock, err := s.lockedVM(ctx, scope, id)
	if err != nil {
		return vm, err
	}
	defer unlock()
	from, to, verb := store.VMRunning, store.VMPaused, "pause"
	if !pause {
		from, to, verb = store.VMPaused, store.VMRunning, "resume"
	}
	if vm.State == to {
		return s.setDesired(ctx, id, to)
	}
	if vm.State != from {
		return vm, conflict("vm_not_"+string(from), "cannot %s vm %s: it is %s, not %s", verb, id, vm.State, from)
	}
	// Past this point the guest changes state: finish (and record it) even
	// if the caller goes away.
	ctx = context.WithoutCancel(ctx)
	fc := s.agentFor(ctx, vm).Firecracker(id)
	if pause {
		err = fc.Pause(ctx)
	} else {
		err = fc.Resume(ctx)
	}
	if err != nil {
		return vm, s.stepError(vm, verb, err)
	}
	vm, err = s.update(ctx, id, func(v *store.VM) error {
		v.State, v.DesiredState = to, to
		return nil
	})
	s.event(ctx, id, store.LevelInfo, "%sd", verb)
	return vm, err
}

// DeleteVM stops the VM, removes its run dir on the host and its row.
func (s *VMs) DeleteVM(ctx context.Context, scope Scope, id string) error {
	return s.deleteVM(ctx, scope, id, false)
}

// ForceDeleteVM deletes a VM whose host is unreachable: the row goes even
// though nothing on the host could be removed. If the host comes back, the
// reconciler removes the VM's leftovers there as orphans.
func (s *VMs) ForceDeleteVM(ctx context.Context, scope Scope, id string) error {
	return s.deleteVM(ctx, scope, id, true)
}

func (s *VMs) deleteVM(ctx context.Context, scope Scope, id string, force bool) error {
	vm, unlock, err := s.lockedVM(ctx, scope, id)
	if err != nil {
		return err
	}
	defer unlock()
	return s.deleteLocked(ctx, vm, force)
}

// deleteLocked deletes vm; the caller holds its lock.
func (s *VMs) deleteLocked(ctx context.Context, vm store.VM, force bool) error {
	id := vm.ID
	ctx = context.WithoutCancel(ctx)
	vm, err := s.update(ctx, id, func(v *store.VM) error {
		v.State, v.DesiredState = store.VMDeleting, store.VMDeleting
		return nil
	})
	if err != nil {
		return err
	}
	return unwrapStep(s.runStepsOpt(ctx, id, "delete", []step{
		{name: "remove from host", do: func(ctx context.Context) error {
			if vm.HostAddr == "" {
				return nil
			}
			if err := s.agentFor(ctx, vm).Delete(ctx, id); err != nil {
				e := agentError("vm "+id+": delete", vm, err)
				if !force || e.Kind != KindUnavailable {
					return e.suggest("the reconciler retries; if the host is gone for good, delete with ?force=true")
				}
				s.log.Warn("vm deleted without its host", "vm_id", id, "host_id", vm.HostID, "err", err)
			}
			return nil
		}},
		{name: "delete record", do: func(ctx context.Context) error {
			if err := s.st.DeleteVM(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("delete vm %s: %w", id, err)
			}
			s.recent.forget(id)
			return nil
		}},
	}, false))
}

// Bulk runs action on each id, a few at a time, and reports each outcome.
func (s *VMs) Bulk(ctx context.Context, scope Scope, action string, ids []string) ([]apitypes.BulkResult, error) {
	var op func(context.Context, Scope, string) error
	switch action {
	case "start":
		op = func(ctx context.Context, sc Scope, id string) error { _, err := s.StartVM(ctx, sc, id); return err }
	case "stop":
		op = func(ctx context.Context, sc Scope, id string) error { _, err := s.StopVM(ctx, sc, id); return err }
	case "delete":
		op = s.DeleteVM
	default:
		return nil, invalid("unknown bulk action %q: use start, stop or delete", action)
	}
	results := make([]apitypes.BulkResult, len(ids))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i] = apitypes.BulkResult{ID: id, OK: true}
			if err := op(ctx, scope, id); err != nil {
				results[i] = apitypes.BulkResult{ID: id, Error: PublicMessage(err)}
			}
		}()
	}
	wg.Wait()
	return results, nil
}

// PatchDrive updates a running VM's drive rate limiter.
func (s *VMs) PatchDrive(ctx context.Context, scope Scope, id, driveID string, rl *apitypes.RateLimiter) error {
	vm, unlock, err := s.lockedVM(ctx, scope, id)
	if err != nil {
		return err
	}
	defer unlock()
	if !firecracker.ValidID(driveID) {
		return invalid("drive id %q: use letters, digits and _", driveID)
	}
	if vm.State != store.VMRunning && vm.State != store.VMPaused {
		return conflict("vm_not_running", "vm %s is %s; rate limits change only on a running VM", id, vm.State).
			suggest("start the VM first; the limit in extra_drives applies at boot")
	}
	err = s.agentFor(ctx, vm).Firecracker(id).PatchDrive(ctx, firecracker.PartialDrive{DriveID: driveID, RateLimiter: fcRateLimiter(rl)})
	if err != nil {
		return s.stepError(vm, "patch drive "+driveID, err)
	}
	s.event(ctx, id, store.LevelInfo, "drive %s rate limiter updated", driveID)
	return nil
}

// Events returns the VM's history.
func (s *VMs) Events(ctx context.Context, scope Scope, id string, afterID int64, limit int) ([]store.VMEvent, error) {
	if _, err := s.GetVM(ctx, scope, id); err != nil {
		return nil, err
	}
	return s.st.ListEventsAfter(ctx, id, afterID, limit)
}

// update wraps store.UpdateVM with error context. It starts from the row
// this manager wrote last, when it has it (recentRows).
func (s *core) update(ctx context.Context, id string, f func(*store.VM) error) (store.VM, error) {
	if cur, ok := s.recent.get(id); ok {
		return s.updateFrom(ctx, cur, f)
	}
	vm, err := s.st.UpdateVM(ctx, id, f)
	s.wrote(id, vm, err)
	return vm, updateError(id, err)
}

// updateFrom is update starting from cur, the row as the caller last
// read or wrote it (store.UpdateVMFrom).
func (s *core) updateFrom(ctx context.Context, cur store.VM, f func(*store.VM) error) (store.VM, error) {
	vm, err := s.st.UpdateVMFrom(ctx, cur, f)
	s.wrote(cur.ID, vm, err)
	return vm, updateError(cur.ID, err)
}

// wrote notes the outcome of a write of VM id for the next (recentRows).
func (s *core) wrote(id string, vm store.VM, err error) {
	switch {
	case err == nil:
		s.recent.put(vm)
	case errors.Is(err, store.ErrNotFound):
		s.recent.forget(id)
	}
}

// updateError words a failed update of VM id.
func updateError(id string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return notFound("vm", id)
	}
	if err != nil {
		return fmt.Errorf("update vm %s: %w", id, err)
	}
	return nil
}

func (s *core) setState(ctx context.Context, id string, st store.VMState, lastErr string) (store.VM, error) {
	return s.update(ctx, id, func(v *store.VM) error {
		v.State, v.LastError = st, lastErr
		return nil
	})
}

func (s *core) setDesired(ctx context.Context, id string, st store.VMState) (store.VM, error) {
	return s.update(ctx, id, func(v *store.VM) error {
		v.DesiredState = st
		return nil
	})
}

// event records a line of the VM's history; failures only get logged.
func (s *core) event(ctx context.Context, id, level, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if _, err := s.st.AddEvent(context.WithoutCancel(ctx), store.VMEvent{VMID: id, Level: level, Message: msg}); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("could not record vm event", "vm_id", id, "err", err)
	}
}

func fcRateLimiter(rl *apitypes.RateLimiter) *firecracker.RateLimiter {
	if rl == nil {
		return nil
	}
	tb := func(b *apitypes.TokenBucket) *firecracker.TokenBucket {
		if b == nil {
			return nil
		}
		return &firecracker.TokenBucket{Size: b.Size, OneTimeBurst: b.OneTimeBurst, RefillTime: b.RefillTime}
	}
	return &firecracker.RateLimiter{Bandwidth: tb(rl.Bandwidth), Ops: tb(rl.Ops)}
}
