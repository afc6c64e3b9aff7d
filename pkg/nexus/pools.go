package nexus

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// CreatePool creates a warm pool of paused VMs of a template or snapshot.
func (c *Client) CreatePool(ctx context.Context, req apitypes.CreatePoolRequest) (apitypes.Pool, error) {
	var it apitypes.PoolItem
	return it.Item, c.Do(ctx, http.MethodPost, "/v1/pools", nil, req, &it)
}

// ListPools lists the pools of a project ("": the token's), with their
// state and refill lag.
func (c *Client) ListPools(ctx context.Context, projectName string) (apitypes.PoolList, error) {
	var l apitypes.PoolList
	return l, c.Do(ctx, http.MethodGet, "/v1/pools", project(projectName), nil, &l)
}

// GetPool returns a pool by id or name.
func (c *Client) GetPool(ctx context.Context, ref, projectName string) (apitypes.Pool, error) {
	var it apitypes.PoolItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/pools/", ref), project(projectName), nil, &it)
}

// DeletePool deletes a pool and its unclaimed VMs.
func (c *Client) DeletePool(ctx context.Context, ref, projectName string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/pools/", ref), project(projectName), nil, nil)
}

// ClaimPool takes one running VM from a pool; req may set its ttl.
func (c *Client) ClaimPool(ctx context.Context, ref, projectName string, req apitypes.ClaimRequest) (apitypes.Claimed, error) {
	var out apitypes.Claimed
	return out, c.Do(ctx, http.MethodPost, path("/v1/pools/", ref, "/claim"), project(projectName), req, &out)
}

// StartRollout moves a template pool to another version of its template
// (canaries first, then max_parallel at a time); the manager carries it
// out in the background: poll GetRollout.
func (c *Client) StartRollout(ctx context.Context, ref, projectName string, req apitypes.RolloutRequest) (apitypes.Rollout, error) {
	var it apitypes.RolloutItem
	return it.Item, c.Do(ctx, http.MethodPost, path("/v1/pools/", ref, "/rollout"), project(projectName), req, &it)
}

// GetRollout returns the pool's newest rollout with its progress.
func (c *Client) GetRollout(ctx context.Context, ref, projectName string) (apitypes.Rollout, error) {
	var it apitypes.RolloutItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/pools/", ref, "/rollout"), project(projectName), nil, &it)
}

// PauseRollout, ResumeRollout and AbortRollout control the pool's
// rollout; an aborted one returns the pool to its old version.
func (c *Client) PauseRollout(ctx context.Context, ref, projectName string) (apitypes.Rollout, error) {
	return c.controlRollout(ctx, ref, projectName, "pause")
}

// ResumeRollout resumes a paused rollout.
func (c *Client) ResumeRollout(ctx context.Context, ref, projectName string) (apitypes.Rollout, error) {
	return c.controlRollout(ctx, ref, projectName, "resume")
}

// PromoteRollout moves a rollout awaiting promotion (started with
// auto_promote false, its canaries healthy) on to the rest of the pool.
func (c *Client) PromoteRollout(ctx context.Context, ref, projectName string) (apitypes.Rollout, error) {
	return c.controlRollout(ctx, ref, projectName, "promote")
}

// AbortRollout returns the pool to the version it had before the rollout.
func (c *Client) AbortRollout(ctx context.Context, ref, projectName string) (apitypes.Rollout, error) {
	return c.controlRollout(ctx, ref, projectName, "abort")
}

func (c *Client) controlRollout(ctx context.Context, ref, projectName, action string) (apitypes.Rollout, error) {
	var it apitypes.RolloutItem
	return it.Item, c.Do(ctx, http.MethodPost, path("/v1/pools/", ref, "/rollout/"+action), project(projectName), nil, &it)
}
