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
