package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// VMService is the VM lifecycle as the VM routes use it (manager.VMs).
type VMService interface {
	CreateVM(ctx context.Context, scope manager.Scope, req apitypes.CreateVMRequest, opt manager.CreateOptions) (store.VM, error)
	GetVM(ctx context.Context, scope manager.Scope, id string) (store.VM, error)
	GetVMByName(ctx context.Context, scope manager.Scope, project, name string) (store.VM, error)
	ListVMs(ctx context.Context, scope manager.Scope, f store.VMFilter) ([]store.VM, string, error)
	StartVM(ctx context.Context, scope manager.Scope, id string) (store.VM, error)
	StopVM(ctx context.Context, scope manager.Scope, id string) (store.VM, error)
	PauseVM(ctx context.Context, scope manager.Scope, id string) (store.VM, error)
	ResumeVM(ctx context.Context, scope manager.Scope, id string) (store.VM, error)
	DeleteVM(ctx context.Context, scope manager.Scope, id string) error
	ForceDeleteVM(ctx context.Context, scope manager.Scope, id string) error
	ExtendTTL(ctx context.Context, scope manager.Scope, id string, req apitypes.ExtendTTLRequest) (store.VM, error)
	Bulk(ctx context.Context, scope manager.Scope, action string, ids []string) ([]apitypes.BulkResult, error)
	PatchDrive(ctx context.Context, scope manager.Scope, id, driveID string, rl *apitypes.RateLimiter) error
	Events(ctx context.Context, scope manager.Scope, id string, afterID int64, limit int) ([]store.VMEvent, error)
	Logs(ctx context.Context, scope manager.Scope, id, source string, tail int) (agentapi.LogLines, error)
	StreamLogs(ctx context.Context, scope manager.Scope, id, source string) (*http.Response, error)
	// StreamLogsFrom resumes a stream (Last-Event-ID) or starts it a tail back.
	StreamLogsFrom(ctx context.Context, scope manager.Scope, id string, o agentapi.StreamOptions) (*http.Response, error)
	// VMStats are the VM's values of its agent's /metrics series (the console's charts).
	VMStats(ctx context.Context, scope manager.Scope, id string) (agentapi.VMStats, error)
	TailPath(ctx context.Context, scope manager.Scope, path string, tail int) (agentapi.LogLines, error)
	Metrics(ctx context.Context, scope manager.Scope, id string) (agentapi.MetricsRecord, error)
	// View renders a VM with its host's current address.
	View(vm store.VM) apitypes.VM
}

type vmIDPath struct {
	ID string `path:"id" maxLength:"64" doc:"VM id"`
}

type createVMInput struct {
	// A string, not a bool: huma fills defaults into zero values, so a bool
	// defaulting to true could never be false.
	Wait string `query:"wait" enum:"true,false" default:"true" doc:"answer once the VM runs (or failed, with the reason); false answers at once with state requested"`
	Body apitypes.CreateVMRequest
}

// vmOutput answers a create: 201 with the new VM's address.
type vmOutput struct {
	Location string `header:"Location" doc:"the new VM: /v1/vms/{id}"`
	Body     apitypes.VMCreated
}

type vmItemOutput struct {
	Body apitypes.VMItem
}

type okOutput struct {
	Body apitypes.OK
}

func ok() *okOutput { return &okOutput{Body: apitypes.OK{OK: true}} }

func (s *Server) createVM(ctx context.Context, in *createVMInput) (*vmOutput, error) {
	vm, err := s.vms.CreateVM(ctx, scope(ctx), in.Body, manager.CreateOptions{ID: newID(ctx), Wait: in.Wait != "false"})
	if err != nil {
		return nil, err
	}
	auditAfter(ctx, vm)
	v := s.vms.View(vm)
	return &vmOutput{Location: "/v1/vms/" + v.ID, Body: apitypes.VMCreated{VM: v, Item: v}}, nil
}

type listVMsInput struct {
	Project string   `query:"project" maxLength:"63"`
	Name    string   `query:"name" maxLength:"63" doc:"exact name (within project, default: the token's or \"default\")"`
	State   string   `query:"state" enum:"requested,configured,running,paused,stopping,stopped,failed,deleting" required:"false"`
	HostID  string   `query:"host_id" maxLength:"64"`
	Tag     []string `query:"tag" doc:"key=value; repeat to require several"`
	Limit   int      `query:"limit" minimum:"0" maximum:"1000" doc:"page size (default 100)"`
	Cursor  string   `query:"cursor" maxLength:"512" doc:"next_cursor of the previous page"`
}

type vmListOutput struct {
	Body apitypes.VMList
}

func (s *Server) listVMs(ctx context.Context, in *listVMsInput) (*vmListOutput, error) {
	f := store.VMFilter{Project: in.Project, State: store.VMState(in.State), HostID: in.HostID, Limit: in.Limit, Cursor: in.Cursor}
	for _, t := range in.Tag {
		k, v, found := strings.Cut(t, "=")
		if !found || k == "" {
			return nil, apierr.BadRequest("tag filter %q must be key=value", t)
		}
		if f.Tags == nil {
			f.Tags = map[string]string{}
		}
		f.Tags[k] = v
	}
	if in.Name != "" {
		vm, err := s.vms.GetVMByName(ctx, scope(ctx), in.Project, in.Name)
		out := &vmListOutput{Body: apitypes.VMList{Items: []apitypes.VM{}}}
		if err == nil {
			out.Body.Items = append(out.Body.Items, s.vms.View(vm))
		} else if me, ok := manager.AsError(err); !ok || me.Kind != manager.KindNotFound {
			return nil, err
		}
		return out, nil
	}
	items, next, err := s.vms.ListVMs(ctx, scope(ctx), f)
	if err != nil {
		return nil, err
	}
	out := &vmListOutput{Body: apitypes.VMList{Items: make([]apitypes.VM, 0, len(items)), NextCursor: next}}
	for _, vm := range items {
		out.Body.Items = append(out.Body.Items, s.vms.View(vm))
	}
	return out, nil
}

func (s *Server) getVM(ctx context.Context, in *vmIDPath) (*vmItemOutput, error) {
	vm, err := s.vms.GetVM(ctx, scope(ctx), in.ID)
	if err != nil {
		return nil, err
	}
	return &vmItemOutput{Body: apitypes.VMItem{Item: s.vms.View(vm)}}, nil
}

func (s *Server) startVM(ctx context.Context, in *vmIDPath) (*okOutput, error) {
	_, err := s.vms.StartVM(ctx, scope(ctx), in.ID)
	return ok(), err
}

func (s *Server) stopVM(ctx context.Context, in *vmIDPath) (*okOutput, error) {
	_, err := s.vms.StopVM(ctx, scope(ctx), in.ID)
	return ok(), err
}

func (s *Server) pauseVM(ctx context.Context, in *vmIDPath) (*okOutput, error) {
	_, err := s.vms.PauseVM(ctx, scope(ctx), in.ID)
	return ok(), err
}

func (s *Server) resumeVM(ctx context.Context, in *vmIDPath) (*okOutput, error) {
	_, err := s.vms.ResumeVM(ctx, scope(ctx), in.ID)
	return ok(), err
}

type extendTTLInput struct {
	ID   string `path:"id" maxLength:"64" doc:"VM id"`
	Body apitypes.ExtendTTLRequest
}

func (s *Server) extendTTL(ctx context.Context, in *extendTTLInput) (*vmItemOutput, error) {
	vm, err := s.vms.ExtendTTL(ctx, scope(ctx), in.ID, in.Body)
	if err != nil {
		return nil, err
	}
	return &vmItemOutput{Body: apitypes.VMItem{Item: s.vms.View(vm)}}, nil
}

type deleteVMInput struct {
	ID    string `path:"id" maxLength:"64"`
	Force bool   `query:"force" doc:"delete the row even if the VM's host is unreachable (its leftovers are removed as orphans if it returns)"`
}

func (s *Server) deleteVM(ctx context.Context, in *deleteVMInput) (*okOutput, error) {
	if in.Force {
		return ok(), s.vms.ForceDeleteVM(ctx, scope(ctx), in.ID)
	}
	return ok(), s.vms.DeleteVM(ctx, scope(ctx), in.ID)
}

type bulkInput struct {
	Body apitypes.BulkRequest
}

type bulkOutput struct {
	Body apitypes.BulkResponse
}

func (s *Server) bulkVMs(ctx context.Context, in *bulkInput) (*bulkOutput, error) {
	res, err := s.vms.Bulk(ctx, scope(ctx), in.Body.Action, in.Body.IDs)
	if err != nil {
		return nil, err
	}
	s.auditEach(ctx, "vm."+in.Body.Action, "vm", res)
	return &bulkOutput{Body: apitypes.BulkResponse{Results: res}}, nil
}

type patchDriveInput struct {
	ID      string `path:"id" maxLength:"64"`
	DriveID string `path:"drive_id" maxLength:"64"`
	Body    apitypes.DrivePatch
}

func (s *Server) patchDrive(ctx context.Context, in *patchDriveInput) (*okOutput, error) {
	if in.Body.RateLimiter == nil {
		return nil, apierr.BadRequest("rate_limiter is required")
	}
	return ok(), s.vms.PatchDrive(ctx, scope(ctx), in.ID, in.DriveID, in.Body.RateLimiter)
}

type eventsInput struct {
	ID      string `path:"id" maxLength:"64"`
	Limit   int    `query:"limit" minimum:"0" maximum:"10000" doc:"most recent events (default 1000); with after_id, the first events after it"`
	AfterID int64  `query:"after_id" minimum:"0" doc:"only events after this one (the id of the last event read), oldest first: poll with it to follow a VM's history"`
}

type eventsOutput struct {
	Body apitypes.EventList
}

func (s *Server) vmEvents(ctx context.Context, in *eventsInput) (*eventsOutput, error) {
	limit := in.Limit
	if limit == 0 {
		limit = 1000
	}
	evs, err := s.vms.Events(ctx, scope(ctx), in.ID, in.AfterID, limit)
	if err != nil {
		return nil, err
	}
	out := &eventsOutput{Body: apitypes.EventList{Items: make([]apitypes.Event, 0, len(evs))}}
	for _, e := range evs {
		out.Body.Items = append(out.Body.Items, apitypes.Event{ID: e.ID, At: e.At, Level: e.Level, Message: e.Message})
	}
	return out, nil
}
