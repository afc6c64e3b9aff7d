package api

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// SnapshotService is what the snapshot routes use (manager.Snapshots).
type SnapshotService interface {
	CreateSnapshot(ctx context.Context, scope manager.Scope, vmID string, opt manager.SnapshotOptions) (store.Snapshot, error)
	GetSnapshot(ctx context.Context, scope manager.Scope, id string) (store.Snapshot, error)
	ListSnapshots(ctx context.Context, scope manager.Scope, f store.SnapshotFilter) ([]store.Snapshot, error)
	ListVMSnapshots(ctx context.Context, scope manager.Scope, vmID string) ([]store.Snapshot, error)
	DeleteSnapshot(ctx context.Context, scope manager.Scope, id string) error
	InstantiateSnapshot(ctx context.Context, scope manager.Scope, sid string, req apitypes.InstantiateSnapshotRequest, opt manager.InstantiateOptions) (manager.Restored, error)
}

// snapshotRoutes registers the snapshots' routes. Reads are for viewers;
// create, delete and instantiate for operators of the snapshot's project
// (the source VM's). A snapshot of another project answers 404.
func (s *Server) snapshotRoutes() {

	register(s, "create-snapshot", http.MethodPost, "/v1/vms/{id}/snapshots",
		"Snapshot a running or paused VM: pause, write state, memory and drive copies on its host, resume",
		creates(op("snapshot.create", "snapshot")), s.createSnapshot, http.StatusCreated)
	register(s, "list-vm-snapshots", http.MethodGet, "/v1/vms/{id}/snapshots", "A VM's snapshots (also after the VM was deleted)", viewer, s.listVMSnapshots)
	register(s, "list-snapshots", http.MethodGet, "/v1/snapshots", "List snapshots", viewer, s.listSnapshots)
	register(s, "get-snapshot", http.MethodGet, "/v1/snapshots/{id}", "Get a snapshot", viewer, s.getSnapshot)
	register(s, "delete-snapshot", http.MethodDelete, "/v1/snapshots/{id}", "Delete a snapshot and its files",
		op("snapshot.delete", "snapshot"), s.deleteSnapshot)
	register(s, "instantiate-snapshot", http.MethodPost, "/v1/snapshots/{id}/instantiate",
		"Restore a snapshot as a new VM on its host; the guest continues where the snapshot left it",
		creates(op("snapshot.instantiate", "vm")), s.instantiateSnapshot, http.StatusCreated)
}

type createSnapshotInput struct {
	ID   string `path:"id" maxLength:"64" doc:"VM id"`
	Body *apitypes.CreateSnapshotRequest
}

type createSnapshotOutput struct {
	Location string `header:"Location" doc:"the new snapshot: /v1/snapshots/{id}"`
	Body     apitypes.SnapshotCreated
}

func (s *Server) createSnapshot(ctx context.Context, in *createSnapshotInput) (*createSnapshotOutput, error) {
	opt := manager.SnapshotOptions{ID: newID(ctx)}
	if in.Body != nil {
		opt.Resume = in.Body.Resume
	}
	sn, err := s.snapshots.CreateSnapshot(ctx, scope(ctx), in.ID, opt)
	if err != nil {
		return nil, err
	}
	v := manager.SnapshotView(sn)
	return &createSnapshotOutput{Location: "/v1/snapshots/" + v.ID, Body: apitypes.SnapshotCreated{
		SnapshotID: v.ID, Size: v.Size, AllocatedBytes: v.AllocatedBytes, Files: v.Files, PausedMs: v.PausedMs, Item: v,
	}}, nil
}

type snapshotListOutput struct {
	Body apitypes.SnapshotList
}

func snapshotList(sns []store.Snapshot) *snapshotListOutput {
	out := &snapshotListOutput{Body: apitypes.SnapshotList{Items: make([]apitypes.Snapshot, 0, len(sns))}}
	for _, sn := range sns {
		out.Body.Items = append(out.Body.Items, manager.SnapshotView(sn))
	}
	return out
}

func (s *Server) listVMSnapshots(ctx context.Context, in *vmIDPath) (*snapshotListOutput, error) {
	sns, err := s.snapshots.ListVMSnapshots(ctx, scope(ctx), in.ID)
	if err != nil {
		return nil, err
	}
	return snapshotList(sns), nil
}

type listSnapshotsInput struct {
	VMID    string `query:"vm_id" maxLength:"64" doc:"only snapshots of this VM"`
	HostID  string `query:"host_id" maxLength:"64"`
	Project string `query:"project" maxLength:"63"`
}

func (s *Server) listSnapshots(ctx context.Context, in *listSnapshotsInput) (*snapshotListOutput, error) {
	sns, err := s.snapshots.ListSnapshots(ctx, scope(ctx), store.SnapshotFilter{VMID: in.VMID, HostID: in.HostID, Project: in.Project})
	if err != nil {
		return nil, err
	}
	return snapshotList(sns), nil
}

type snapshotIDPath struct {
	ID string `path:"id" maxLength:"64" doc:"snapshot id"`
}

type snapshotItemOutput struct {
	Body apitypes.SnapshotItem
}

func (s *Server) getSnapshot(ctx context.Context, in *snapshotIDPath) (*snapshotItemOutput, error) {
	sn, err := s.snapshots.GetSnapshot(ctx, scope(ctx), in.ID)
	if err != nil {
		return nil, err
	}
	return &snapshotItemOutput{Body: apitypes.SnapshotItem{Item: manager.SnapshotView(sn)}}, nil
}

func (s *Server) deleteSnapshot(ctx context.Context, in *snapshotIDPath) (*okOutput, error) {
	return ok(), s.snapshots.DeleteSnapshot(ctx, scope(ctx), in.ID)
}

type instantiateSnapshotInput struct {
	ID   string `path:"id" maxLength:"64" doc:"snapshot id"`
	Body apitypes.InstantiateSnapshotRequest
}

type instantiateSnapshotOutput struct {
	Location string `header:"Location" doc:"the new VM: /v1/vms/{id}"`
	Body     apitypes.RestoredVM
}

func (s *Server) instantiateSnapshot(ctx context.Context, in *instantiateSnapshotInput) (*instantiateSnapshotOutput, error) {
	r, err := s.snapshots.InstantiateSnapshot(ctx, scope(ctx), in.ID, in.Body, manager.InstantiateOptions{ID: newID(ctx)})
	if err != nil {
		return nil, err
	}
	v := s.vms.View(r.VM)
	out := &instantiateSnapshotOutput{Location: "/v1/vms/" + v.ID, Body: apitypes.RestoredVM{
		VM: v, Item: v, SnapshotID: in.ID, Notices: r.Notices, IDs: []string{}, Items: []apitypes.VM{},
	}}
	for _, vm := range r.VMs {
		out.Body.IDs = append(out.Body.IDs, vm.ID)
		out.Body.Items = append(out.Body.Items, s.vms.View(vm))
	}
	if len(r.VMs) > 1 {
		s.auditSiblings(ctx, "snapshot.instantiate", r.VMs[1:])
	}
	return out, nil
}
