package api

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// AuditLog is where audit rows go and are read back (store.Store).
type AuditLog interface {
	BeginAudit(ctx context.Context, e store.AuditEntry) (int64, error)
	CompleteAudit(ctx context.Context, id int64, result store.AuditResult, after json.RawMessage, errText string) error
	ListAudit(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error)
	CountDenial(ctx context.Context, e store.AuditEntry) error
}

type newIDKey struct{}

// newID is the id a create operation must give what it creates: chosen
// before the call so that its audit row names the resource from the start.
func newID(ctx context.Context) string {
	id, _ := ctx.Value(newIDKey{}).(string)
	return id
}

// afterKey carries, from the audit to the handler, a slot for the VM as
// the call left it: the audit row's after-summary is then made from it
// instead of a read of the row (a create's handler has the VM at hand).
type afterKey struct{}

type afterSlot struct{ vm *store.VM }

// auditAfter hands the audit the VM as the call left it.
func auditAfter(ctx context.Context, vm store.VM) {
	if slot, ok := ctx.Value(afterKey{}).(*afterSlot); ok {
		slot.vm = &vm
	}
}

func mutating(pol policy, op *huma.Operation) bool {
	return op.Method != http.MethodGet && op.Method != http.MethodHead && pol.NoAudit == ""
}

// anonymous is the actor of a call without valid credentials.
const anonymous = "anonymous"

// deny answers a refused call and, for a mutating one, leaves an audit row
// with result denied. An anonymous caller's denials are counted, not
// listed: one row per source address, action and minute (CountDenial), so
// a flood of them costs the database a row a minute. The guard has
// already refused ids longer than their bound (checkPathBounds), and the
// store truncates every field.
func (s *Server) deny(ctx huma.Context, pol policy, actor string, e *apierr.Error) {
	if mutating(pol, ctx.Operation()) {
		if actor == anonymous {
			err := s.audit.CountDenial(context.WithoutCancel(ctx.Context()), store.AuditEntry{
				Actor: actor, Action: pol.Action, Resource: pol.Resource, ResourceID: ctx.Param("id"),
				RequestID: httpmw.RequestID(ctx.Context()), Error: e.Message, Source: sourceOf(ctx),
			})
			if err != nil {
				s.log.Error("audit: could not count denial", "request_id", httpmw.RequestID(ctx.Context()), "action", pol.Action, "err", err)
			}
		} else {
			id := s.beginAudit(ctx, pol, actor, ctx.Param("id"))
			s.completeAudit(ctx.Context(), id, store.AuditDenied, nil, e.Message)
		}
	}
	s.writeHumaErr(ctx, e)
}

// sourceOf is the caller's IP address (the connection's peer: a header
// such as X-Forwarded-For is the caller's to forge).
func sourceOf(ctx huma.Context) string {
	host, _, err := net.SplitHostPort(ctx.RemoteAddr())
	if err != nil {
		return ctx.RemoteAddr()
	}
	return host
}

// audited runs next, wrapped in a pending audit row that is completed with
// the result and a summary of the resource after the call.
func (s *Server) audited(ctx huma.Context, pol policy, actor string, next func(huma.Context)) {
	if !mutating(pol, ctx.Operation()) {
		next(ctx)
		return
	}
	rid := ctx.Param("id")
	if pol.Creates {
		rid = uuid.NewString()
		ctx = huma.WithValue(ctx, newIDKey{}, rid)
	}
	id := s.beginAudit(ctx, pol, actor, rid)
	slot := &afterSlot{}
	if pol.Resource == "vm" {
		ctx = huma.WithValue(ctx, afterKey{}, slot)
	}
	next(ctx)
	status := ctx.Status()
	result := store.AuditSuccess
	errText := ""
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		result = store.AuditDenied
	case status >= 400:
		result = store.AuditFailure
		errText = http.StatusText(status)
	}
	var after json.RawMessage
	if slot.vm != nil && slot.vm.ID == rid {
		after = vmSummary(*slot.vm)
	} else {
		after = s.summarize(ctx.Context(), pol.Resource, rid)
	}
	s.completeAudit(ctx.Context(), id, result, after, errText)
}

func (s *Server) beginAudit(ctx huma.Context, pol policy, actor, resourceID string) int64 {
	c := ctx.Context()
	var before json.RawMessage
	if !pol.Creates { // a create's id is new: there is nothing before it
		before = s.summarize(c, pol.Resource, resourceID)
	}
	id, err := s.audit.BeginAudit(context.WithoutCancel(c), store.AuditEntry{
		Actor: actor, Action: pol.Action, Resource: pol.Resource, ResourceID: resourceID,
		RequestID: httpmw.RequestID(c), Before: before, Source: sourceOf(ctx),
	})
	if err != nil {
		// The call still runs: refusing every mutation while the audit
		// table is unwritable would turn a storage hiccup into an outage.
		// The failure is logged loudly instead.
		s.log.Error("audit: could not record call", "request_id", httpmw.RequestID(c), "action", pol.Action, "err", err)
		return 0
	}
	return id
}

func (s *Server) completeAudit(ctx context.Context, id int64, result store.AuditResult, after json.RawMessage, errText string) {
	if id == 0 {
		return
	}
	if err := s.audit.CompleteAudit(context.WithoutCancel(ctx), id, result, after, errText); err != nil {
		s.log.Error("audit: could not complete row", "audit_id", id, "err", err)
	}
}

// auditEach writes one completed row per VM of a bulk call, so that a
// VM's history (GET /v1/audit?vm_id=) shows bulk actions too; the bulk
// call itself has its own row.
func (s *Server) auditEach(ctx context.Context, action, resource string, res []apitypes.BulkResult) {
	p, _ := principal(ctx)
	for _, r := range res {
		id, err := s.audit.BeginAudit(context.WithoutCancel(ctx), store.AuditEntry{
			Actor: p.Actor(), Action: action, Resource: resource, ResourceID: r.ID, RequestID: httpmw.RequestID(ctx),
		})
		if err != nil {
			s.log.Error("audit: could not record bulk item", "vm_id", r.ID, "err", err)
			continue
		}
		result := store.AuditSuccess
		if !r.OK {
			result = store.AuditFailure
		}
		s.completeAudit(ctx, id, result, s.summarize(ctx, resource, r.ID), r.Error)
	}
}

// summarize returns a small JSON summary of a resource for the audit row:
// enough to see what changed, never secrets.
func (s *Server) summarize(ctx context.Context, resource, id string) json.RawMessage {
	if id == "" {
		return nil
	}
	var v any
	switch resource {
	case "vm":
		vm, err := s.vms.GetVM(ctx, manager.All, id)
		if err != nil {
			return nil
		}
		return vmSummary(vm)
	case "token":
		t, err := s.tokens.GetToken(ctx, id)
		if err != nil {
			return nil
		}
		v = map[string]any{"id": t.ID, "owner": t.Owner, "role": t.Role, "project": t.Project, "revoked": t.RevokedAt != nil}
	case "image":
		img, err := s.images.GetImage(ctx, manager.All, id, "")
		if err != nil {
			return nil
		}
		v = map[string]any{"id": img.ID, "name": img.Name, "kind": img.Kind, "project": img.Project, "sha256": img.SHA256, "size": img.Size}
	case "template":
		t, err := s.templates.GetTemplate(ctx, manager.All, id, "")
		if err != nil {
			return nil
		}
		v = map[string]any{"id": t.ID, "name": t.Name, "project": t.Project}
	case "pool":
		if s.pools == nil {
			return nil
		}
		p, err := s.pools.GetPool(ctx, manager.All, id, "")
		if err != nil {
			return nil
		}
		v = map[string]any{"id": p.ID, "name": p.Name, "project": p.Project, "size": p.Size, "claims": p.Claims}
	case "snapshot":
		sn, err := s.snapshots.GetSnapshot(ctx, manager.All, id)
		if err != nil {
			return nil
		}
		v = map[string]any{"id": sn.ID, "vm_id": sn.VMID, "project": sn.Project, "host_id": sn.HostID, "size": sn.Size}
	case "project":
		q, err := s.quotas.GetQuota(ctx, id)
		if err != nil {
			return nil
		}
		v = map[string]any{"project": q.Project, "quota": limitsOut(q.Limits)}
	default:
		return nil
	}
	b, _ := json.Marshal(v)
	return b
}

// vmSummary is a VM's audit summary.
func vmSummary(vm store.VM) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"id": vm.ID, "name": vm.Name, "project": vm.Project, "state": vm.State,
		"desired_state": vm.DesiredState, "host_id": vm.HostID})
	return b
}

type auditInput struct {
	VMID       string    `query:"vm_id" maxLength:"64" doc:"only rows about this VM"`
	ResourceID string    `query:"resource_id" maxLength:"64" doc:"only rows about this resource"`
	Actor      string    `query:"actor" maxLength:"256"`
	Since      time.Time `query:"since" doc:"RFC 3339 time"`
	AfterID    int64     `query:"after_id" minimum:"0" doc:"page: the last id of the previous page"`
	Limit      int       `query:"limit" minimum:"0" maximum:"10000" doc:"default 1000"`
}

type auditOutput struct {
	Body apitypes.AuditList
}

// listAudit exports the trail, oldest first. Admins see everything; other
// roles see the history of one VM they can see (vm_id required).
func (s *Server) listAudit(ctx context.Context, in *auditInput) (*auditOutput, error) {
	rid := in.ResourceID
	if in.VMID != "" {
		rid = in.VMID
	}
	p, _ := principal(ctx)
	if !globalAdmin(p) {
		if in.VMID == "" {
			return nil, apierr.Forbidden("only admins of every project list the whole audit trail").
				WithSuggestion("pass vm_id for the history of one of your VMs")
		}
		if _, err := s.vms.GetVM(ctx, scope(ctx), in.VMID); err != nil {
			return nil, err
		}
	}
	limit := in.Limit
	if limit == 0 {
		limit = 1000
	}
	rows, err := s.audit.ListAudit(ctx, store.AuditFilter{
		ResourceID: rid, Actor: in.Actor, Since: in.Since, AfterID: in.AfterID, Limit: limit,
	})
	if err != nil {
		return nil, err
	}
	out := &auditOutput{Body: apitypes.AuditList{Items: make([]apitypes.AuditEntry, 0, len(rows))}}
	for _, r := range rows {
		out.Body.Items = append(out.Body.Items, apitypes.AuditEntry{
			ID: r.ID, At: r.At, Actor: r.Actor, Action: r.Action, Resource: r.Resource, ResourceID: r.ResourceID,
			RequestID: r.RequestID, Result: string(r.Result), Before: r.Before, After: r.After, Error: r.Error,
			CompletedAt: r.CompletedAt, Source: r.Source, Count: r.Count,
		})
	}
	return out, nil
}
