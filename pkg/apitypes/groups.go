package apitypes

import "time"

// GroupRolloutRequest is the body of POST
// /v1/templates/{id}/groups/{group}/rollout. A group is the VMs of the
// template in its project that carry the tag group=<group>.
type GroupRolloutRequest struct {
	TemplateVersion  int    `json:"template_version" minimum:"1" doc:"the version of the template to move the group's VMs to"`
	Canary           *int   `json:"canary,omitempty" minimum:"0" maximum:"100" doc:"VMs moved first; the rest waits until they run (default 1, at most the VMs to move)"`
	MaxParallel      int    `json:"max_parallel,omitempty" minimum:"0" maximum:"100" doc:"VMs down (being replaced) at once (default 1, at most the VMs to move)"`
	MinHealthyTime   string `json:"min_healthy_time,omitempty" maxLength:"16" doc:"how long a step's VMs must stay running before the next step (Go duration, default 0s, at most 1h)"`
	ProgressDeadline string `json:"progress_deadline,omitempty" maxLength:"16" doc:"how long a VM may take to run again before its step fails (Go duration, default 5m, 1s to 1h)"`
	AutoRevert       bool   `json:"auto_revert,omitempty" doc:"on a failed step, every VM already moved goes back to its old config and is restarted"`
	AutoPromote      *bool  `json:"auto_promote,omitempty" doc:"once the canaries run, go on with the rest (default true); false: the rollout waits in state awaiting_promotion for POST /v1/templates/{id}/groups/{group}/rollout/promote (needs canary 1 or more)"`
}

// GroupRollout is a group's in-place move to another template version.
type GroupRollout struct {
	ID               string           `json:"id"`
	TemplateID       string           `json:"template_id"`
	Project          string           `json:"project"`
	Group            string           `json:"group"`
	ToVersion        int              `json:"to_version"`
	Canary           int              `json:"canary"`
	MaxParallel      int              `json:"max_parallel"`
	MinHealthyTime   string           `json:"min_healthy_time"`
	ProgressDeadline string           `json:"progress_deadline"`
	AutoRevert       bool             `json:"auto_revert"`
	AutoPromote      bool             `json:"auto_promote" doc:"false: the rollout waits in awaiting_promotion once its canaries run"`
	State            string           `json:"state" enum:"running,paused,awaiting_promotion,reverting,succeeded,failed,reverted,aborted" doc:"awaiting_promotion: the canaries run and the rollout (auto_promote false) waits for a promote"`
	Phase            string           `json:"phase" enum:"canary,rolling,revert,abort" doc:"canary: moving the canaries; rolling: the rest; revert or abort: moving the VMs back"`
	Message          string           `json:"message,omitempty" doc:"what the last step did, or why it failed"`
	Total            int              `json:"total" doc:"VMs the rollout moves (the group's VMs not on to_version when it started)"`
	Old              int              `json:"old" doc:"of those, VMs not on to_version"`
	New              int              `json:"new" doc:"of those, VMs on to_version"`
	Down             int              `json:"down" doc:"of those, VMs the rollout restarts that are not running now"`
	VMs              []GroupRolloutVM `json:"vms" doc:"the rollout's VMs in their order"`
	Actor            string           `json:"actor,omitempty"`
	CreatedAt        time.Time        `json:"created_at"`
	UpdatedAt        time.Time        `json:"updated_at"`
}

// GroupRolloutVM is one VM of a group rollout.
type GroupRolloutVM struct {
	ID          string `json:"id"`
	Name        string `json:"name,omitempty"`
	FromVersion int    `json:"from_version" doc:"the template version it had when the rollout began"`
	Version     int    `json:"template_version" doc:"the template version it has now"`
	VMState     string `json:"vm_state,omitempty" doc:"the VM's state now (empty: deleted)"`
	Step        string `json:"step" enum:"pending,moving,moved,failed,reverting,reverted,revert_failed,gone" doc:"how far the rollout got with it"`
	Message     string `json:"message,omitempty"`
}

// GroupRolloutItem is the answer of the group rollout routes.
type GroupRolloutItem struct {
	Item GroupRollout `json:"item"`
}
