package api

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// GroupService is what the group rollout routes use (manager.Groups).
type GroupService interface {
	StartGroupRollout(ctx context.Context, scope manager.Scope, ref, project, group, actor string, req apitypes.GroupRolloutRequest) (store.GroupRollout, error)
	GetGroupRollout(ctx context.Context, scope manager.Scope, ref, project, group string) (store.GroupRollout, error)
	ControlGroupRollout(ctx context.Context, scope manager.Scope, ref, project, group, action string) (store.GroupRollout, error)
	GroupRolloutView(ctx context.Context, r store.GroupRollout) apitypes.GroupRollout
}

// groupRoutes registers the rollouts of VM groups (docs/sandboxes.md): a
// group is the VMs of a template tagged group=<name>.
func (s *Server) groupRoutes() {
	const base = "/v1/templates/{id}/groups/{group}/rollout"
	register(s, "start-group-rollout", http.MethodPost, base, "Move a group of VMs of a template (tag group=<name>) to another template version in place: canaries first, then max_parallel at a time",
		op("template.group_rollout", "template"), s.startGroupRollout, http.StatusCreated)
	register(s, "get-group-rollout", http.MethodGet, base, "The group's newest rollout with its progress", viewer, s.getGroupRollout)
	for _, action := range []string{"pause", "resume", "promote", "abort"} {
		register(s, action+"-group-rollout", http.MethodPost, base+"/"+action, groupRolloutActionDoc[action], op("template.group_rollout_"+action, "template"),
			func(ctx context.Context, in *groupRefInput) (*groupRolloutOutput, error) {
				return s.controlGroupRollout(ctx, in, action)
			})
	}
}

var groupRolloutActionDoc = map[string]string{
	"pause":   "Pause the group's rollout after the step under way",
	"resume":  "Resume a paused group rollout",
	"promote": "Promote the canaries of a group rollout awaiting promotion (auto_promote false): it goes on with the rest of the group; 409 in any other state",
	"abort":   "Abort the group's rollout: every VM it moved goes back to its old config and is restarted",
}

type groupRefInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Group   string `path:"group" maxLength:"63" doc:"the group: the template's VMs tagged group=<group>"`
	Project string `query:"project" maxLength:"63" doc:"where to look a template name up (default: the token's project)"`
}

type startGroupRolloutInput struct {
	ID      string `path:"id" maxLength:"64" doc:"template id or name"`
	Group   string `path:"group" maxLength:"63" doc:"the group: the template's VMs tagged group=<group>"`
	Project string `query:"project" maxLength:"63" doc:"where to look a template name up (default: the token's project)"`
	Body    apitypes.GroupRolloutRequest
}

type groupRolloutOutput struct {
	Body apitypes.GroupRolloutItem
}

type groupRolloutCreatedOutput struct {
	Location string `header:"Location" doc:"the rollout: /v1/templates/{id}/groups/{group}/rollout"`
	Body     apitypes.GroupRolloutItem
}

func (s *Server) startGroupRollout(ctx context.Context, in *startGroupRolloutInput) (*groupRolloutCreatedOutput, error) {
	p, _ := principal(ctx)
	r, err := s.groups.StartGroupRollout(ctx, scope(ctx), in.ID, in.Project, in.Group, p.Actor(), in.Body)
	if err != nil {
		return nil, err
	}
	return &groupRolloutCreatedOutput{Location: "/v1/templates/" + r.TemplateID + "/groups/" + r.Group + "/rollout",
		Body: apitypes.GroupRolloutItem{Item: s.groups.GroupRolloutView(ctx, r)}}, nil
}

func (s *Server) getGroupRollout(ctx context.Context, in *groupRefInput) (*groupRolloutOutput, error) {
	r, err := s.groups.GetGroupRollout(ctx, scope(ctx), in.ID, in.Project, in.Group)
	if err != nil {
		return nil, err
	}
	return &groupRolloutOutput{Body: apitypes.GroupRolloutItem{Item: s.groups.GroupRolloutView(ctx, r)}}, nil
}

func (s *Server) controlGroupRollout(ctx context.Context, in *groupRefInput, action string) (*groupRolloutOutput, error) {
	r, err := s.groups.ControlGroupRollout(ctx, scope(ctx), in.ID, in.Project, in.Group, action)
	if err != nil {
		return nil, err
	}
	return &groupRolloutOutput{Body: apitypes.GroupRolloutItem{Item: s.groups.GroupRolloutView(ctx, r)}}, nil
}
