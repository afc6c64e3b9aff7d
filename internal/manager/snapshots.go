package manager

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
)

// Snapshots (PRD F5): a running or paused VM's state, memory and drives,
// written on its host under $FC_RUN_DIR/vms/<vm>/snapshots/<sid>/ and
// recorded in the catalog; InstantiateSnapshot (snapshot_restore.go)
// turns one into a new VM on the same host. A snapshot outlives its VM
// until it is deleted itself.

// SnapshotOptions tune CreateSnapshot.
type SnapshotOptions struct {
	// ID is the new snapshot's id; empty picks one. The API chooses it up
	// front so the audit row names the snapshot.
	ID string
	// Resume resumes a VM that was running once the snapshot is written
	// (nil: true). A VM that was paused before stays paused.
	Resume *bool
}

// CreateSnapshot pauses the VM (if it runs), has firecracker write its
// state and memory, preserves its drives next to them, resumes it (unless
// told not to) and records the snapshot. It is serialised with the VM's
// other operations. A failed snapshot leaves no files and the VM as it
// was.
func (s *Snapshots) CreateSnapshot(ctx context.Context, scope Scope, vmID string, opt SnapshotOptions) (store.Snapshot, error) {
	sid := opt.ID
	if sid == "" {
		sid = uuid.NewString()
	} else if !hostlayout.ValidVMID(sid) {
		return store.Snapshot{}, invalid("invalid snapshot id %q", sid)
	}
	vm, unlock, err := s.vms.lockedVM(ctx, scope, vmID)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer unlock()
	if vm.State != store.VMRunning && vm.State != store.VMPaused {
		return store.Snapshot{}, conflict("vm_not_running", "cannot snapshot vm %s (%s): it is %s; only a running or paused VM has a state to save", vm.ID, vm.Name, vm.State).
			suggest("start it first (nexus vm start " + vm.ID + "); a stopped VM's disks are all its state")
	}
	// The project's quota, before the guest is paused and gigabytes are
	// written: its memory alone goes into the snapshot. The catalog's
	// insert checks again, with the real size.
	if err := s.st.CheckQuota(ctx, vm.Project, store.Usage{Snapshots: 1, SnapshotBytes: int64(vm.MemMiB) << 20}); err != nil {
		return store.Snapshot{}, err
	}
	// Past this point the guest may be paused: finish, resume and clean up
	// even if the caller goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout(vm.MemMiB))
	defer cancel()
	ag := s.agentFor(ctx, vm)
	fc := ag.Firecracker(vm.ID, proxyDeadline(vm.MemMiB))

	wasRunning := vm.State == store.VMRunning
	var (
		meta     snapshotMeta
		files    agentapi.SnapshotFiles
		sn       store.Snapshot
		pausedAt time.Time
	)
	steps := []step{
		{name: "inspect", do: func(ctx context.Context) (err error) {
			meta, err = s.inspectForSnapshot(ctx, fc, vm)
			return err
		}},
		{name: "pause",
			do: func(ctx context.Context) error {
				pausedAt = s.now()
				if !wasRunning {
					return nil
				}
				// Recorded before the pause, desired state untouched: a
				// manager that dies before resuming leaves "paused, wants
				// running", which the reconciler resumes.
				if _, err := s.setState(ctx, vm.ID, store.VMPaused, ""); err != nil {
					return err
				}
				if err := fc.Pause(ctx); err != nil {
					_, _ = s.setState(ctx, vm.ID, store.VMRunning, "")
					return s.snapshotStepError(vm, "snapshot "+sid, "pause", err)
				}
				return nil
			},
			undo: func(ctx context.Context) error {
				if wasRunning {
					s.resumeAfterSnapshot(ctx, fc, vm, sid)
				}
				return nil
			},
		},
		{name: "write state and memory",
			do: func(ctx context.Context) (err error) {
				if files, err = s.writeSnapshot(ctx, ag, fc, vm, sid, meta.Drives); err != nil {
					s.discardSnapshot(vm, sid) // what it wrote before failing
				}
				return err
			},
			undo: func(context.Context) error { s.discardSnapshot(vm, sid); return nil },
		},
		{name: "record in catalog", do: func(ctx context.Context) (err error) {
			if wasRunning {
				meta.PausedMs = s.now().Sub(pausedAt).Milliseconds()
			}
			sn = catalogEntry(vm, sid, files, &meta)
			if sn.Meta, err = marshal(meta); err == nil {
				sn, err = s.st.CreateSnapshot(ctx, sn)
			}
			if err != nil {
				return fmt.Errorf("snapshot %s of vm %s: record in the catalog: %w", sid, vm.ID, err)
			}
			return nil
		}},
	}
	if err := s.runSteps(ctx, vm.ID, "snapshot "+sid, steps); err != nil {
		return store.Snapshot{}, unwrapStep(err)
	}

	// The snapshot is good whatever happens now: a failed resume is
	// reported with it, not undone.
	resume := wasRunning && (opt.Resume == nil || *opt.Resume)
	var resumeErr error
	if resume {
		if resumeErr = fc.Resume(ctx); resumeErr == nil {
			_, _ = s.setState(ctx, vm.ID, store.VMRunning, "")
		}
	}
	if wasRunning && (!resume || resumeErr != nil) {
		if _, err := s.update(ctx, vm.ID, func(v *store.VM) error {
			v.State, v.DesiredState = store.VMPaused, store.VMPaused
			return nil
		}); err != nil {
			s.log.Error("snapshot: could not record the VM as paused", "vm_id", vm.ID, "err", err)
		}
	}
	s.event(ctx, vm.ID, store.LevelInfo, "snapshot %s written: %d bytes, %d on disk; guest paused %d ms",
		sid, sn.Size, meta.Allocated, meta.PausedMs)
	if resumeErr != nil {
		e := s.snapshotStepError(vm, "snapshot "+sid, "resume", resumeErr)
		e.Message = fmt.Sprintf("snapshot %s was written, but %s", sid, e.Message)
		s.event(ctx, vm.ID, store.LevelError, "resume after snapshot %s failed: %s", sid, e.Error())
		return sn, e
	}
	return sn, nil
}

// inspectForSnapshot asks the VM's firecracker what the snapshot must
// record and refuses what it cannot keep, before the guest is touched.
func (s *Snapshots) inspectForSnapshot(ctx context.Context, fc *firecracker.Client, vm store.VM) (snapshotMeta, error) {
	ver, err := fc.Version(ctx)
	if err != nil {
		return snapshotMeta{}, s.snapshotStepError(vm, "snapshot", "read firecracker version", err)
	}
	v, ok := firecracker.ParseVersion(ver.FirecrackerVersion)
	if !ok {
		return snapshotMeta{}, fmt.Errorf("snapshot vm %s: firecracker reports an unreadable version %q", vm.ID, ver.FirecrackerVersion)
	}
	cfg, err := fc.GetVMConfig(ctx)
	if err != nil {
		return snapshotMeta{}, s.snapshotStepError(vm, "snapshot", "read vm config", err)
	}
	drives, err := planDrives(vm, cfg.Drives)
	if err != nil {
		return snapshotMeta{}, err
	}
	if len(cfg.Pmem) > 0 || cfg.Vsock != nil || len(cfg.NetworkInterfaces) > 1 {
		return snapshotMeta{}, conflict("vm_not_snapshottable", "vm %s (%s) has devices Nexus cannot restore (pmem, vsock or more than one network interface)", vm.ID, vm.Name)
	}
	sp := decodeSpec(vm)
	m := snapshotMeta{
		VMName: vm.Name, FirecrackerVersion: ver.FirecrackerVersion, SnapshotVersion: firecracker.FeaturesOf(v).SnapshotVersion,
		Drives: drives, GuestReady: vm.GuestReadyAt != nil,
		Source: snapshotSource{
			Vcpu: vm.VCPU, MemMib: vm.MemMiB, KernelPath: vm.KernelPath, KernelImageID: vm.KernelImageID,
			InitrdPath: vm.InitrdPath, InitrdImageID: vm.InitrdImageID,
			RootfsPath: vm.RootfsPath, RootfsImageID: vm.RootfsImageID, BootArgs: vm.BootArgs, Spec: sp.VMConfig,
			Tags: maps.Clone(vm.Tags), TemplateID: vm.TemplateID, TemplateConfig: vm.TemplateConfig, Overrides: vm.Overrides,
			IP: vm.IP,
		},
	}
	if len(cfg.NetworkInterfaces) == 1 {
		n := cfg.NetworkInterfaces[0]
		m.Net = &snapshotNet{IfaceID: n.IfaceID, GuestMAC: firstNonEmpty(n.GuestMAC, vm.MAC), TAP: n.HostDevName}
	}
	return m, nil
}

// writeSnapshot makes the snapshot dir with the drive copies, has
// firecracker write state and memory into it, and lists the files. The
// guest is paused.
func (s *Snapshots) writeSnapshot(ctx context.Context, ag *agentapi.Client, fc *firecracker.Client, vm store.VM, sid string, drives []snapshotDrive) (agentapi.SnapshotFiles, error) {
	var req agentapi.PrepareSnapshotRequest
	for _, d := range drives {
		if d.Copy != "" {
			req.Copies = append(req.Copies, agentapi.SnapshotCopy{Src: d.Path, Dst: d.Copy})
		}
	}
	paths, err := ag.PrepareSnapshot(ctx, vm.ID, sid, req)
	if err != nil {
		return agentapi.SnapshotFiles{}, s.snapshotStepError(vm, "snapshot "+sid, "preserve drives", err)
	}
	err = fc.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{
		SnapshotPath: paths.StatePath, MemFilePath: paths.MemPath, SnapshotType: firecracker.SnapshotFull,
	})
	if err != nil {
		return agentapi.SnapshotFiles{}, s.snapshotStepError(vm, "snapshot "+sid, "write state and memory", err)
	}
	files, err := ag.SnapshotFiles(ctx, vm.ID, sid)
	if err != nil {
		return files, s.snapshotStepError(vm, "snapshot "+sid, "list files", err)
	}
	have := map[string]bool{}
	for _, f := range files.Files {
		have[f.Rel] = true
	}
	if !have[agentapi.SnapshotStateFile] || !have[agentapi.SnapshotMemFile] {
		return files, fmt.Errorf("snapshot %s of vm %s: firecracker answered but wrote no %s or %s", sid, vm.ID, agentapi.SnapshotStateFile, agentapi.SnapshotMemFile)
	}
	return files, nil
}

// catalogEntry is the catalog row of a written snapshot; it adds the
// allocated sizes to meta.
func catalogEntry(vm store.VM, sid string, files agentapi.SnapshotFiles, meta *snapshotMeta) store.Snapshot {
	sn := store.Snapshot{
		ID: sid, VMID: vm.ID, Project: vm.Project, HostID: vm.HostID,
		Dir: files.Dir, Files: make([]store.SnapshotFile, 0, len(files.Files)),
	}
	meta.FileAllocated = map[string]int64{}
	for _, f := range files.Files {
		sn.Files = append(sn.Files, store.SnapshotFile{Path: f.Path, Size: f.Size})
		sn.Size += f.Size
		meta.Allocated += f.Allocated
		meta.FileAllocated[f.Path] = f.Allocated
		switch f.Rel {
		case agentapi.SnapshotStateFile:
			sn.StatePath = f.Path
		case agentapi.SnapshotMemFile:
			sn.MemPath = f.Path
		}
	}
	return sn
}

// discardSnapshot removes a failed snapshot's files. It runs on the
// service's context: the caller may be gone, the cleanup must happen.
func (s *Snapshots) discardSnapshot(vm store.VM, sid string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 30*time.Second)
	defer cancel()
	if err := s.agentFor(ctx, vm).DeleteSnapshot(ctx, vm.ID, sid); err != nil {
		s.log.Error("snapshot: could not remove the files of a failed snapshot", "vm_id", vm.ID, "snapshot_id", sid, "err", err)
		s.event(ctx, vm.ID, store.LevelError, "files of failed snapshot %s could not be removed: %v", sid, err)
	}
}

// resumeAfterSnapshot resumes a VM that a failed snapshot paused; if even
// that fails, the row says paused.
func (s *Snapshots) resumeAfterSnapshot(ctx context.Context, fc *firecracker.Client, vm store.VM, sid string) {
	err := fc.Resume(ctx)
	if err == nil {
		_, _ = s.setState(ctx, vm.ID, store.VMRunning, "")
		return
	}
	s.event(ctx, vm.ID, store.LevelError, "resume after failed snapshot %s failed: %v", sid, err)
	_, _ = s.update(ctx, vm.ID, func(v *store.VM) error {
		v.State, v.DesiredState = store.VMPaused, store.VMPaused
		return nil
	})
}

// snapshotStepError is stepError with the snapshot in the message and a
// suggestion that fits snapshots.
func (s *core) snapshotStepError(vm store.VM, what, step string, err error) *Error {
	e := s.stepError(vm, what+": "+step, err)
	var ae *apierr.Error
	switch {
	case e.Kind == KindRejected:
		e.Suggestion = snapshotSuggestion(e.Fault)
	case errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500:
		// The agent refused something about this VM's files: not ours.
		e.Kind = KindConflict
	}
	return e
}

// proxyDeadline lets one relayed firecracker call take as long as a
// snapshot of memMib may take.
func proxyDeadline(memMib int) firecracker.Option {
	return firecracker.WithHeader(agentapi.HeaderProxyTimeout, strconv.FormatInt(snapshotTimeout(memMib).Milliseconds(), 10))
}

// GetSnapshot returns one snapshot the scope can see.
func (s *Snapshots) GetSnapshot(ctx context.Context, scope Scope, id string) (store.Snapshot, error) {
	sn, err := s.st.GetSnapshot(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !scope.Sees(sn.Project)) {
		return store.Snapshot{}, notFound("snapshot", id).suggest("list snapshots: nexus snapshot ls")
	}
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("get snapshot %s: %w", id, err)
	}
	return sn, nil
}

// ListSnapshots returns the snapshots the scope can see, oldest first.
func (s *Snapshots) ListSnapshots(ctx context.Context, scope Scope, f store.SnapshotFilter) ([]store.Snapshot, error) {
	p, ok := scope.filterProject(f.Project)
	if !ok {
		return []store.Snapshot{}, nil
	}
	f.Project = p
	sns, err := s.st.ListSnapshots(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	return sns, nil
}

// ListVMSnapshots returns a VM's snapshots; they stay listed after the VM
// is deleted.
func (s *Snapshots) ListVMSnapshots(ctx context.Context, scope Scope, vmID string) ([]store.Snapshot, error) {
	_, verr := s.vms.GetVM(ctx, scope, vmID)
	if e, ok := AsError(verr); verr != nil && (!ok || e.Kind != KindNotFound) {
		return nil, verr
	}
	sns, err := s.ListSnapshots(ctx, scope, store.SnapshotFilter{VMID: vmID})
	if err != nil {
		return nil, err
	}
	if verr != nil && len(sns) == 0 {
		return nil, verr
	}
	return sns, nil
}

// DeleteSnapshot removes a snapshot's files on its host and its catalog
// entry. VMs restored from it keep running (their memory mapping and drive
// copies do not need it). The last snapshot of a deleted VM takes the
// VM's remaining run dir with it.
func (s *Snapshots) DeleteSnapshot(ctx context.Context, scope Scope, id string) error {
	sn, err := s.GetSnapshot(ctx, scope, id)
	if err != nil {
		return err
	}
	// Serialised with the source VM's delete, which keeps snapshots/.
	unlock, err := s.lockVM(ctx, sn.VMID)
	if err != nil {
		return err
	}
	defer unlock()
	ctx = context.WithoutCancel(ctx)
	src := store.VM{ID: sn.VMID, Name: "deleted", HostID: sn.HostID}
	if vm, err := s.st.GetVM(ctx, sn.VMID); err == nil {
		src = vm
	}
	switch _, err := s.st.GetHost(ctx, sn.HostID); {
	case errors.Is(err, store.ErrNotFound):
		s.log.Warn("snapshot's host is gone; dropping the catalog entry only", "snapshot_id", id, "host_id", sn.HostID)
	case err != nil:
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	default:
		if err := s.agentFor(ctx, src).DeleteSnapshot(ctx, sn.VMID, sn.ID); err != nil {
			return agentError("snapshot "+id+": remove files", src, err)
		}
	}
	if err := s.st.DeleteSnapshot(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	s.event(ctx, sn.VMID, store.LevelInfo, "snapshot %s deleted", id)
	return nil
}
