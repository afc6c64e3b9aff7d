package manager

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// InstantiateOptions tune InstantiateSnapshot.
type InstantiateOptions struct {
	// ID is the new VM's id; empty picks one. The API chooses it up front
	// so the audit row of the instantiate names the VM.
	ID string
	// PoolID puts the VMs into a warm pool from their first moment.
	PoolID string
}

// Restored is a VM made from a snapshot and what its user must know.
type Restored struct {
	VM      store.VM   // the first (or only) VM
	VMs     []store.VM // every VM of the call, in name order
	Notices []string
}

// InstantiateSnapshot makes req.Count new VMs (default 1; named req.Name,
// or req.Name-1 … req.Name-N), on the snapshot's host, running from the
// snapshot: each with its own row, id, name and TAP; a fresh VMM that loads
// the snapshot's state and maps its memory file (privately, so all share
// one file); its own copies of the snapshot's drives. The guests continue
// where the snapshot left them, with the snapshot's MAC (see
// restoreNotices); a snapshot of an isolated VM gives isolated VMs, each in
// a namespace of its own, so the clones never collide. It is all or
// nothing: if one restore fails, the VMs of the call are deleted again.
func (s *Snapshots) InstantiateSnapshot(ctx context.Context, scope Scope, sid string, req apitypes.InstantiateSnapshotRequest, opt InstantiateOptions) (Restored, error) {
	sn, err := s.GetSnapshot(ctx, scope, sid)
	if err != nil {
		return Restored{}, err
	}
	meta, err := decodeSnapshotMeta(sn)
	if err != nil {
		return Restored{}, err
	}
	names, err := batchNames(req.Name, req.Count)
	if err != nil {
		return Restored{}, err
	}
	count := len(names)
	for _, n := range names {
		if _, err := s.st.GetVMByName(ctx, sn.Project, n); err == nil {
			return Restored{}, conflict("name_taken", "a VM named %q already exists in project %q", n, sn.Project).
				suggest("pick another name, or delete the existing VM; nothing was created")
		}
	}
	srcMode := netMode(spec{VMConfig: meta.Source.Spec})
	if meta.Net == nil {
		srcMode = ""
	}
	if req.Network != nil && req.Network.Mode != srcMode {
		return Restored{}, conflict("network_mode_fixed", "snapshot %s is of a VM in network mode %q; its clones run in that mode (the guest's network is part of the saved state), not %q", sid, firstNonEmpty(srcMode, "none"), req.Network.Mode).
			suggest("omit network, or snapshot a VM created with network.mode " + req.Network.Mode)
	}
	if _, _, err := parseTTL(s.now(), req.Expiry); err != nil {
		return Restored{}, err
	}
	ids := make([]string, count)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	if opt.ID != "" {
		if !hostlayout.ValidVMID(opt.ID) {
			return Restored{}, invalid("invalid vm id %q", opt.ID)
		}
		ids[0] = opt.ID
	}
	out := Restored{VMs: make([]store.VM, count)}
	errs := runBatch(count, func(i int) error {
		r, err := s.instantiateOne(ctx, sn, meta, names[i], ids[i], req, opt.PoolID)
		out.VMs[i] = r.VM
		if i == 0 {
			out.Notices = r.Notices
		}
		return err
	})
	if count == 1 && errs[0] != nil {
		return Restored{}, errs[0] // it left nothing: no rollback to tell
	}
	if err := s.vms.batchFailed(ctx, errs, names, ids, "snapshot "+sid); err != nil {
		return Restored{}, err
	}
	out.VM = out.VMs[0]
	return out, nil
}

// instantiateOne restores one VM; a failure leaves nothing of it.
func (s *Snapshots) instantiateOne(ctx context.Context, sn store.Snapshot, meta snapshotMeta, name, id string, req apitypes.InstantiateSnapshotRequest, poolID string) (Restored, error) {
	sid := sn.ID
	expiresAt, onExpiry, err := parseTTL(s.now(), req.Expiry)
	if err != nil {
		return Restored{}, err
	}
	src := meta.Source
	rootfs, rootfsImage, cfg := restoredConfig(meta)
	specJSON, err := marshal(spec{VMConfig: cfg})
	if err != nil {
		return Restored{}, err
	}
	tags := req.Tags
	if tags == nil {
		tags = maps.Clone(src.Tags)
	}
	if err := checkTags(tags); err != nil {
		return Restored{}, err
	}
	vm := store.VM{
		ID: id, Name: name, Project: sn.Project,
		State: store.VMRequested, DesiredState: store.VMRunning,
		VCPU: src.Vcpu, MemMiB: src.MemMib,
		KernelPath: src.KernelPath, KernelImageID: src.KernelImageID,
		InitrdPath: src.InitrdPath, InitrdImageID: src.InitrdImageID,
		RootfsPath: rootfs, RootfsImageID: rootfsImage,
		BootArgs: src.BootArgs, Spec: specJSON, Tags: tags,
		TemplateID: src.TemplateID, TemplateConfig: src.TemplateConfig, Overrides: src.Overrides,
		ExpiresAt: expiresAt, OnExpiry: onExpiry, PoolID: poolID,
	}
	if meta.Net != nil {
		// The saved device state fixes the guest MAC: record the truth.
		vm.TAP, vm.MAC = hostlayout.TapName(id), meta.Net.GuestMAC
	}
	unlock, err := s.lockVM(ctx, id)
	if err != nil {
		return Restored{}, err
	}
	defer unlock()
	// On the snapshot's host: its files are there.
	vm, host, err := s.placement.create(ctx, vm, sn.HostID)
	if e, ok := AsError(err); ok && e.Kind == KindInvalid {
		return Restored{}, conflict("snapshot_host_gone", "snapshot %s is on host %s, which is no longer in the fleet", sid, sn.HostID).
			suggest("snapshots stay on their host; delete this one")
	}
	if e, ok := AsError(err); ok {
		return Restored{}, e
	}
	if errors.Is(err, store.ErrConflict) {
		return Restored{}, conflict("name_taken", "a VM named %q already exists in project %q", name, sn.Project).
			suggest("pick another name or delete the existing VM")
	}
	if err != nil {
		return Restored{}, fmt.Errorf("restore snapshot %s as vm %s: %w", sid, name, err)
	}
	lineage := fmt.Sprintf("restoring from snapshot %s of vm %s (%s), taken %s on host %s",
		sn.ID, sn.VMID, meta.VMName, sn.CreatedAt.UTC().Format(time.RFC3339), host.Name)
	if src.TemplateID != "" {
		lineage += "; the source came from template " + src.TemplateID
	}
	s.event(ctx, vm.ID, store.LevelInfo, "%s", lineage)
	notices := restoreNotices(sn, meta)
	for _, n := range notices {
		s.event(ctx, vm.ID, store.LevelWarn, "%s", n)
	}
	vm, err = s.restore(context.WithoutCancel(ctx), vm, sn, meta)
	if err != nil {
		return Restored{}, s.vms.discardFailed(vm, err)
	}
	return Restored{VM: vm, Notices: notices}, nil
}

// restore runs tap → spawn → version check → logger, metrics → drive
// copies → snapshot load (→ drive switch → resume) for vm, recording
// state as it goes; on failure it rolls back like a failed boot: the
// agent stops whatever was started, the row says failed with last_error.
// The caller holds the VM's lock.
func (s *Snapshots) restore(ctx context.Context, vm store.VM, sn store.Snapshot, meta snapshotMeta) (store.VM, error) {
	ag := s.agentFor(ctx, vm)
	r := &hostRun{c: s.core, vm: vm, ag: ag, fc: ag.Firecracker(vm.ID, proxyDeadline(vm.MemMiB)),
		isolated: meta.Net != nil && netMode(decodeSpec(vm)) == ModeIsolated}
	var swaps []snapshotDrive
	files := []agentapi.RestoreFile{}
	for _, d := range meta.Drives {
		if d.Copy != "" {
			files = append(files, agentapi.RestoreFile{Name: d.Copy, ReadOnly: d.ReadOnly})
		}
		if d.Swapped {
			swaps = append(swaps, d)
		}
	}

	steps := []step{
		r.tapStep(meta.Net != nil),
		r.spawnStep(true, meta.Net != nil), // the MAC stays the snapshot's
		{name: "check firecracker version", do: func(ctx context.Context) error {
			return checkRestoreVersion(ctx, r.fc, r.vm, sn, meta)
		}},
		r.loggerStep(),
		r.metricsStep(),
		{name: "copy drives", do: func(ctx context.Context) error {
			if len(files) == 0 {
				return nil
			}
			return ag.RestoreDrives(ctx, vm.ID, agentapi.RestoreDrivesRequest{SourceVMID: sn.VMID, SnapshotID: sn.ID, Files: files})
		}},
		r.recordStep(store.VMConfigured),
		{name: "load snapshot", do: func(ctx context.Context) error {
			p := firecracker.SnapshotLoadParams{
				SnapshotPath: sn.StatePath,
				// MAP_PRIVATE: the file stays unchanged, many VMs share it.
				MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: sn.MemPath},
				ResumeVM:   firecracker.Bool(len(swaps) == 0),
			}
			if meta.Net != nil {
				p.NetworkOverrides = []firecracker.NetworkOverride{{IfaceID: meta.Net.IfaceID, HostDevName: r.tap.Tap}}
			}
			return r.fc.LoadSnapshot(ctx, p)
		}},
		{name: "switch drives to the VM's copies", do: func(ctx context.Context) error {
			for _, d := range swaps {
				if err := r.fc.PatchDrive(ctx, firecracker.PartialDrive{DriveID: d.DriveID, PathOnHost: d.Copy}); err != nil {
					return fmt.Errorf("drive %s: %w", d.DriveID, err)
				}
			}
			return nil
		}},
		{name: "resume", do: func(ctx context.Context) error {
			if len(swaps) == 0 {
				return nil // loaded with resume_vm
			}
			return r.fc.Resume(ctx)
		}},
		// A snapshot of a ready guest is ready: it does not say so again.
		r.runningStep(func() (time.Time, bool) { return s.now(), meta.GuestReady }),
	}

	ctx, cancel := context.WithTimeout(ctx, max(s.cfg.BootTimeout, snapshotTimeout(vm.MemMiB)))
	defer cancel()
	what := "restore from snapshot " + sn.ID
	if err := r.run(ctx, what, steps); err != nil {
		return r.vm, s.failed(r.vm, err, func(vm store.VM, step string, err error) *Error {
			if e, ok := AsError(err); ok && e.Kind != KindInternal {
				return e // already worded (a version the VMM cannot read, say)
			}
			return s.snapshotStepError(vm, what, step, err)
		})
	}
	return r.vm, nil
}

// checkRestoreVersion refuses, with the reason, a snapshot the fresh VMM
// cannot load: a format it does not read, or an interface it cannot
// rebind to the new VM's TAP.
func checkRestoreVersion(ctx context.Context, fc *firecracker.Client, vm store.VM, sn store.Snapshot, meta snapshotMeta) error {
	ver, err := fc.Version(ctx)
	if err != nil {
		return err
	}
	v, ok := firecracker.ParseVersion(ver.FirecrackerVersion)
	if !ok {
		return fmt.Errorf("restore vm %s: firecracker reports an unreadable version %q", vm.ID, ver.FirecrackerVersion)
	}
	f := firecracker.FeaturesOf(v)
	if !snapshotCompatible(meta.SnapshotVersion, f.SnapshotVersion) {
		return conflict("snapshot_incompatible", "snapshot %s has format %s (firecracker %s); firecracker %s on host %s reads format %s: it needs the same major version and no newer minor",
			sn.ID, meta.SnapshotVersion, meta.FirecrackerVersion, ver.FirecrackerVersion, vm.HostID, f.SnapshotVersion).
			suggest("restore with the firecracker release that wrote the snapshot, or take a new snapshot")
	}
	if meta.Net != nil && !f.NetworkOverrides {
		return conflict("network_overrides_unsupported", "snapshot %s has network interface %s bound to TAP %s of vm %s; firecracker %s cannot rebind it to the new VM's TAP (network_overrides needs v1.12 or newer)",
			sn.ID, meta.Net.IfaceID, meta.Net.TAP, sn.VMID, ver.FirecrackerVersion).
			suggest("upgrade firecracker on host " + vm.HostID + " to v1.12 or newer")
	}
	return nil
}
