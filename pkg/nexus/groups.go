package nexus

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// StartGroupRollout moves a group of VMs of a template (the template's
// VMs tagged group=<group>) to another version of it in place; the
// manager carries it out in the background: poll GetGroupRollout.
func (c *Client) StartGroupRollout(ctx context.Context, template, group, projectName string, req apitypes.GroupRolloutRequest) (apitypes.GroupRollout, error) {
	var it apitypes.GroupRolloutItem
	return it.Item, c.Do(ctx, http.MethodPost, path("/v1/templates/", template, "/groups/", group, "/rollout"), project(projectName), req, &it)
}

// GetGroupRollout returns the group's newest rollout with its progress.
func (c *Client) GetGroupRollout(ctx context.Context, template, group, projectName string) (apitypes.GroupRollout, error) {
	var it apitypes.GroupRolloutItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/templates/", template, "/groups/", group, "/rollout"), project(projectName), nil, &it)
}

// PauseGroupRollout pauses the group's rollout after the step under way.
func (c *Client) PauseGroupRollout(ctx context.Context, template, group, projectName string) (apitypes.GroupRollout, error) {
	return c.controlGroupRollout(ctx, template, group, projectName, "pause")
}

// ResumeGroupRollout resumes a paused group rollout.
func (c *Client) ResumeGroupRollout(ctx context.Context, template, group, projectName string) (apitypes.GroupRollout, error) {
	return c.controlGroupRollout(ctx, template, group, projectName, "resume")
}

// PromoteGroupRollout moves a group rollout awaiting promotion (started
// with auto_promote false, its canaries running) on to the rest of the group.
func (c *Client) PromoteGroupRollout(ctx context.Context, template, group, projectName string) (apitypes.GroupRollout, error) {
	return c.controlGroupRollout(ctx, template, group, projectName, "promote")
}

// AbortGroupRollout moves every VM the rollout moved back to its old config.
func (c *Client) AbortGroupRollout(ctx context.Context, template, group, projectName string) (apitypes.GroupRollout, error) {
	return c.controlGroupRollout(ctx, template, group, projectName, "abort")
}

func (c *Client) controlGroupRollout(ctx context.Context, template, group, projectName, action string) (apitypes.GroupRollout, error) {
	var it apitypes.GroupRolloutItem
	return it.Item, c.Do(ctx, http.MethodPost, path("/v1/templates/", template, "/groups/", group, "/rollout/"+action), project(projectName), nil, &it)
}
