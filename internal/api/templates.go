package api

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TemplateService is what the template routes use (manager.Templates).
type TemplateService interface {
	CreateTemplate(ctx context.Context, scope manager.Scope, id, owner string, req apitypes.CreateTemplateRequest) (store.Template, error)
	GetTemplate(ctx context.Context, scope manager.Scope, ref, project string) (store.Template, error)
	ListTemplates(ctx context.Context, scope manager.Scope, project string) ([]store.Template, error)
	DeleteTemplate(ctx context.Context, scope manager.Scope, ref, project string) (store.Template, error)
	Instantiate(ctx context.Context, scope manager.Scope, ref, project string, req apitypes.InstantiateRequest, opt manager.TemplateInstanceOptions) ([]store.VM, error)
	UpdateTemplate(ctx context.Context, scope manager.Scope, ref, project, owner string, req apitypes.UpdateTemplateRequest) (store.Template, error)
	ListTemplateVersions(ctx context.Context, scope manager.Scope, ref, project string, before, limit int) ([]store.TemplateVersion, int, error)
	GetTemplateVersion(ctx context.Context, scope manager.Scope, ref, project string, version int) (store.TemplateVersion, error)
	DiffTemplate(ctx context.Context, scope manager.Scope, ref, project string, from, to int) (apitypes.TemplateDiff, error)
}

// templateRoutes registers the templates' routes. Instantiation is a VM
// create: audited as such, its row names the (first) new VM.
func (s *Server) templateRoutes() {

	register(s, "create-template", http.MethodPost, "/v1/templates", "Save a VM configuration (registered images only) under a name", creates(op("template.create", "template")), s.createTemplate, http.StatusCreated)
	register(s, "list-templates", http.MethodGet, "/v1/templates", "List templates", viewer, s.listTemplates)
	register(s, "get-template", http.MethodGet, "/v1/templates/{id}", "Get a template by id or name", viewer, s.getTemplate)
	register(s, "delete-template", http.MethodDelete, "/v1/templates/{id}", "Delete a template (its VMs keep their configuration)", op("template.delete", "template"), s.deleteTemplate)
	register(s, "update-template", http.MethodPut, "/v1/templates/{id}", "Replace a template's config: it becomes the template's next version (VMs and pools keep theirs)", op("template.update", "template"), s.updateTemplate)
	register(s, "list-template-versions", http.MethodGet, "/v1/templates/{id}/versions", "List a template's versions, newest first", viewer, s.listTemplateVersions)
	register(s, "get-template-version", http.MethodGet, "/v1/templates/{id}/versions/{version}", "Get one version of a template", viewer, s.getTemplateVersion)
	register(s, "diff-template", http.MethodGet, "/v1/templates/{id}/diff", "Compare two versions of a template field by field", viewer, s.diffTemplate)
	register(s, "instantiate-template", http.MethodPost, "/v1/templates/{id}/instantiate", "Create one or more VMs from a template, with optional overrides (all or none)", creates(op("template.instantiate", "vm")), s.instantiateTemplate, http.StatusCreated)
}

type createTemplateInput struct {
	Body apitypes.CreateTemplateRequest
}

type templateOutput struct {
	Location string `header:"Location" doc:"the new template: /v1/templates/{id}"`
	Body     apitypes.TemplateCreated
}

func (s *Server) createTemplate(ctx context.Context, in *createTemplateInput) (*templateOutput, error) {
	p, _ := principal(ctx)
	t, err := s.templates.CreateTemplate(ctx, scope(ctx), newID(ctx), p.Owner, in.Body)
	if err != nil {
		return nil, err
	}
	v := manager.TemplateView(t)
	return &templateOutput{Location: "/v1/templates/" + v.ID, Body: apitypes.TemplateCreated{Template: v, Item: v}}, nil
}

type listTemplatesInput struct {
	Project string `query:"project" maxLength:"63"`
}

type templateListOutput struct {
	Body apitypes.TemplateList
}

func (s *Server) listTemplates(ctx context.Context, in *listTemplatesInput) (*templateListOutput, error) {
	ts, err := s.templates.ListTemplates(ctx, scope(ctx), in.Project)
	if err != nil {
		return nil, err
	}
	out := &templateListOutput{Body: apitypes.TemplateList{Items: make([]apitypes.Template, 0, len(ts))}}
	for _, t := range ts {
		out.Body.Items = append(out.Body.Items, manager.TemplateView(t))
	}
	return out, nil
}

type templateRefInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
}

type templateItemOutput struct {
	Body apitypes.TemplateItem
}

func (s *Server) getTemplate(ctx context.Context, in *templateRefInput) (*templateItemOutput, error) {
	t, err := s.templates.GetTemplate(ctx, scope(ctx), in.ID, in.Project)
	if err != nil {
		return nil, err
	}
	return &templateItemOutput{Body: apitypes.TemplateItem{Item: manager.TemplateView(t)}}, nil
}

func (s *Server) deleteTemplate(ctx context.Context, in *templateRefInput) (*okOutput, error) {
	if _, err := s.templates.DeleteTemplate(ctx, scope(ctx), in.ID, in.Project); err != nil {
		return nil, err
	}
	return ok(), nil
}

type instantiateInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
	Wait    string `query:"wait" enum:"true,false" default:"true" doc:"answer once every VM runs; false answers once they are stored, booting in the background"`
	Body    apitypes.InstantiateRequest
}

type instantiateOutput struct {
	Location string `header:"Location" doc:"the first new VM: /v1/vms/{id}"`
	Body     apitypes.InstantiateResponse
}

func (s *Server) instantiateTemplate(ctx context.Context, in *instantiateInput) (*instantiateOutput, error) {
	vms, err := s.templates.Instantiate(ctx, scope(ctx), in.ID, in.Project, in.Body,
		manager.TemplateInstanceOptions{FirstID: newID(ctx), Wait: in.Wait != "false"})
	if err != nil {
		return nil, err
	}
	out := &instantiateOutput{Body: apitypes.InstantiateResponse{IDs: make([]string, 0, len(vms)), Items: make([]apitypes.VM, 0, len(vms))}}
	for _, vm := range vms {
		out.Body.IDs = append(out.Body.IDs, vm.ID)
		out.Body.Items = append(out.Body.Items, s.vms.View(vm))
	}
	out.Body.ID = out.Body.IDs[0]
	out.Location = "/v1/vms/" + out.Body.ID
	s.auditSiblings(ctx, "template.instantiate", vms[1:])
	return out, nil
}

// auditSiblings gives every VM after the first of an instantiation its own
// completed audit row (the guard's row names the first), so each VM's
// history starts with its creation.
func (s *Server) auditSiblings(ctx context.Context, action string, vms []store.VM) {
	p, _ := principal(ctx)
	for _, vm := range vms {
		id := s.beginAuditRow(ctx, store.AuditEntry{
			Actor: p.Actor(), Action: action, Resource: "vm", ResourceID: vm.ID,
			RequestID: httpmw.RequestID(ctx),
		})
		s.completeAudit(ctx, id, store.AuditSuccess, s.summarize(ctx, "vm", vm.ID), "")
	}
}

func (s *Server) beginAuditRow(ctx context.Context, e store.AuditEntry) int64 {
	id, err := s.audit.BeginAudit(context.WithoutCancel(ctx), e)
	if err != nil {
		s.log.Error("audit: could not record call", "request_id", e.RequestID, "action", e.Action, "err", err)
		return 0
	}
	return id
}

type updateTemplateInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
	Body    apitypes.UpdateTemplateRequest
}

func (s *Server) updateTemplate(ctx context.Context, in *updateTemplateInput) (*templateItemOutput, error) {
	p, _ := principal(ctx)
	t, err := s.templates.UpdateTemplate(ctx, scope(ctx), in.ID, in.Project, p.Owner, in.Body)
	if err != nil {
		return nil, err
	}
	return &templateItemOutput{Body: apitypes.TemplateItem{Item: manager.TemplateView(t)}}, nil
}

type listTemplateVersionsInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
	Before  int    `query:"before" minimum:"0" doc:"only versions below this one (next_before of the previous page); 0: from the newest"`
	Limit   int    `query:"limit" minimum:"1" maximum:"1000" default:"100" doc:"the most versions to answer"`
}

type templateVersionListOutput struct {
	Body apitypes.TemplateVersionList
}

func (s *Server) listTemplateVersions(ctx context.Context, in *listTemplateVersionsInput) (*templateVersionListOutput, error) {
	vs, next, err := s.templates.ListTemplateVersions(ctx, scope(ctx), in.ID, in.Project, in.Before, in.Limit)
	if err != nil {
		return nil, err
	}
	out := &templateVersionListOutput{Body: apitypes.TemplateVersionList{Items: make([]apitypes.TemplateVersion, 0, len(vs)), NextBefore: next}}
	for _, v := range vs {
		out.Body.Items = append(out.Body.Items, manager.TemplateVersionView(v))
	}
	return out, nil
}

type templateVersionInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Version int    `path:"version" minimum:"1" doc:"the version number"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
}

type templateVersionOutput struct {
	Body apitypes.TemplateVersionItem
}

func (s *Server) getTemplateVersion(ctx context.Context, in *templateVersionInput) (*templateVersionOutput, error) {
	v, err := s.templates.GetTemplateVersion(ctx, scope(ctx), in.ID, in.Project, in.Version)
	if err != nil {
		return nil, err
	}
	return &templateVersionOutput{Body: apitypes.TemplateVersionItem{Item: manager.TemplateVersionView(v)}}, nil
}

type diffTemplateInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
	From    int    `query:"from" required:"true" minimum:"1" doc:"the older version"`
	To      int    `query:"to" required:"true" minimum:"1" doc:"the newer version"`
}

type templateDiffOutput struct {
	Body apitypes.TemplateDiff
}

func (s *Server) diffTemplate(ctx context.Context, in *diffTemplateInput) (*templateDiffOutput, error) {
	d, err := s.templates.DiffTemplate(ctx, scope(ctx), in.ID, in.Project, in.From, in.To)
	if err != nil {
		return nil, err
	}
	return &templateDiffOutput{Body: d}, nil
}
