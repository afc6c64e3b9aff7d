package apitypes

import "time"

// CreatePoolRequest is the body of POST /v1/pools.
type CreatePoolRequest struct {
	Name       string `json:"name" minLength:"1" maxLength:"40" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"unique within the project; the pool's VMs are named NAME-<8 hex>"`
	Project    string `json:"project,omitempty" maxLength:"63" doc:"default: the token's project"`
	TemplateID string `json:"template_id,omitempty" maxLength:"253" doc:"the pool's VMs boot from this template (id or name), then pause; one of template_id and snapshot_id"`
	SnapshotID string `json:"snapshot_id,omitempty" maxLength:"64" doc:"the pool's VMs are restored from this snapshot, then pause"`
	Size       int    `json:"size" minimum:"1" maximum:"100" doc:"how many paused VMs the pool keeps ready"`
	MinReady   int    `json:"min_ready,omitempty" minimum:"1" maximum:"100" doc:"the pool refills to size when fewer than this are ready (default: size)"`
	OnEmpty    string `json:"on_empty,omitempty" enum:"create,fail" doc:"a claim of an empty pool: create makes a VM the normal way (slower), fail answers 503 pool_empty (default create)"`
}

// Pool is a warm pool as the API shows it.
type Pool struct {
	ID               string     `json:"id"`
	Name             string     `json:"name"`
	Project          string     `json:"project"`
	TemplateID       string     `json:"template_id,omitempty"`
	SnapshotID       string     `json:"snapshot_id,omitempty"`
	Size             int        `json:"size"`
	MinReady         int        `json:"min_ready"`
	OnEmpty          string     `json:"on_empty"`
	Ready            int        `json:"ready" doc:"paused VMs ready to be claimed"`
	Creating         int        `json:"creating" doc:"VMs being made for the pool (booting or restoring, then pausing)"`
	State            string     `json:"state" enum:"ready,refilling,empty" doc:"ready: size VMs ready; refilling: fewer; empty: none"`
	ShortSince       *time.Time `json:"short_since,omitempty" doc:"when the pool last fell below size"`
	RefillLagSeconds float64    `json:"refill_lag_seconds" doc:"how long the pool has been below size (0 when full)"`
	Claims           int64      `json:"claims" doc:"claims served from the pool so far"`
	CreatedAt        time.Time  `json:"created_at"`
}

// PoolItem is {item: pool}.
type PoolItem struct {
	Item Pool `json:"item"`
}

// PoolList is GET /v1/pools.
type PoolList struct {
	Items []Pool `json:"items"`
}

// ClaimRequest is the optional body of POST /v1/pools/{id}/claim.
type ClaimRequest struct {
	Expiry
}

// Claimed is the answer of a claim: the VM, running.
type Claimed struct {
	Item     VM    `json:"item"`
	FromPool bool  `json:"from_pool" doc:"true: a warm VM was resumed; false: the pool was empty and the VM was made the normal way (on_empty create)"`
	WaitedMs int64 `json:"waited_ms" doc:"how long the claim took in the manager"`
}
