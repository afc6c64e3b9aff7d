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
	TemplateVersion  int        `json:"template_version,omitempty" doc:"the template version the pool makes its VMs of"`
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

// RolloutRequest is the body of POST /v1/pools/{id}/rollout.
type RolloutRequest struct {
	TemplateVersion  int    `json:"template_version" minimum:"1" doc:"the version of the pool's template to move to"`
	Canary           *int   `json:"canary,omitempty" minimum:"0" maximum:"100" doc:"VMs of the new version made first; the rest waits until they are healthy (default 1, at most size)"`
	MaxParallel      int    `json:"max_parallel,omitempty" minimum:"0" maximum:"100" doc:"new VMs under way at once after the canaries (default 1, at most size)"`
	MinHealthyTime   string `json:"min_healthy_time,omitempty" maxLength:"16" doc:"how long a new VM stays paused-ready before it counts as healthy and replaces an old one (Go duration, default 0s, at most 1h)"`
	ProgressDeadline string `json:"progress_deadline,omitempty" maxLength:"16" doc:"how long a new VM may take to become paused-ready before the step fails (Go duration, default 5m, 1s to 1h)"`
	AutoRevert       bool   `json:"auto_revert,omitempty" doc:"on a failed step, return the pool to its old version at full size"`
	ReadyLine        string `json:"ready_line,omitempty" maxLength:"256" doc:"a new VM counts healthy only once its console shows this text (a substring of one line, searched in its last 1000 lines while it boots, before it is paused; default: no console check)"`
	AutoPromote      *bool  `json:"auto_promote,omitempty" doc:"once the canaries are healthy, go on with the rest (default true); false: the rollout waits in state awaiting_promotion for POST /v1/pools/{id}/rollout/promote (needs canary 1 or more)"`
}

// Rollout is a pool's move to another template version.
type Rollout struct {
	ID               string    `json:"id"`
	PoolID           string    `json:"pool_id"`
	FromVersion      int       `json:"from_version"`
	ToVersion        int       `json:"to_version"`
	Canary           int       `json:"canary"`
	MaxParallel      int       `json:"max_parallel"`
	MinHealthyTime   string    `json:"min_healthy_time"`
	ProgressDeadline string    `json:"progress_deadline"`
	AutoRevert       bool      `json:"auto_revert"`
	ReadyLine        string    `json:"ready_line,omitempty" doc:"the console line a new VM must show to count healthy"`
	AutoPromote      bool      `json:"auto_promote" doc:"false: the rollout waits in awaiting_promotion once its canaries are healthy"`
	State            string    `json:"state" enum:"running,paused,awaiting_promotion,reverting,succeeded,failed,reverted,aborted" doc:"awaiting_promotion: the canaries are healthy and the rollout (auto_promote false) waits for a promote"`
	Phase            string    `json:"phase" enum:"canary,rolling,revert,abort" doc:"canary: making the canaries; rolling: the rest; revert or abort: going back to from_version"`
	Message          string    `json:"message,omitempty" doc:"what the last step did, or why it failed"`
	Old              int       `json:"old" doc:"VMs of the pool not of to_version"`
	New              int       `json:"new" doc:"paused-ready VMs of to_version"`
	Actor            string    `json:"actor,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

// RolloutItem is the answer of the rollout routes.
type RolloutItem struct {
	Item Rollout `json:"item"`
}
