package store

import (
	"bytes"
	"encoding/json"
	"maps"
	"time"
)

// VMState is a VM's lifecycle state (DESIGN.md §2). The store records both
// the observed state and the desired one; the reconciler moves one to the
// other.
type VMState string

// The VM states of the contract.
const (
	VMRequested  VMState = "requested"
	VMConfigured VMState = "configured"
	VMRunning    VMState = "running"
	VMPaused     VMState = "paused"
	VMStopping   VMState = "stopping"
	VMStopped    VMState = "stopped"
	VMFailed     VMState = "failed"
	VMDeleting   VMState = "deleting"
)

// VM is one microVM: what was asked for, where it was placed, what was last
// observed, and the reconciler's bookkeeping.
type VM struct {
	ID           string
	Name         string
	Project      string
	State        VMState // last observed
	DesiredState VMState

	// Placement and host-side names, filled once the VM is scheduled.
	HostID   string
	HostAddr string
	APISock  string
	TAP      string
	MAC      string
	LogPath  string

	VCPU          int
	MemMiB        int
	KernelPath    string
	RootfsPath    string
	KernelImageID string
	RootfsImageID string
	InitrdPath    string
	InitrdImageID string
	BootArgs      string
	// Spec is the full create request (extra drives, NIC, rate limits, …)
	// as the API received it; the store does not interpret it.
	Spec json.RawMessage

	TemplateID      string
	TemplateVersion int             // 0 unless created from a template
	TemplateConfig  json.RawMessage // nil unless created from a template
	Overrides       json.RawMessage // nil unless created from a template
	Tags            map[string]string

	// The VM's address on its host's bridge (AssignAddress): IP is unique
	// among the host's VMs; Subnet ("172.20.0.0/16") and Gateway are the
	// host's when it was assigned. All "" without one (no network
	// interface, or a host that reports no subnet).
	IP      string
	Subnet  string
	Gateway string

	// The current boot: the VMM's pid, when the guest was started
	// (InstanceStart, or a snapshot load) and when it said it was ready.
	// A new VMM resets them.
	VMMPID       int
	BootedAt     *time.Time
	GuestReadyAt *time.Time

	// Time to live: at ExpiresAt (nil: never) the reconciler stops or
	// deletes the VM, per OnExpiry ("stop" or "delete"; "" when there is no
	// expiry).
	ExpiresAt *time.Time
	OnExpiry  string

	// PoolID is the warm pool that holds the VM until it is claimed ("":
	// none).
	PoolID string

	// Reconciler bookkeeping: the last failure, how often it was retried and
	// the earliest time of the next attempt (nil: no backoff pending).
	LastError     string
	Retries       int
	NextAttemptAt *time.Time

	// Generation is 1 on create and bumped by every write UpdateVM makes.
	Generation int64
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// Clone returns a copy of v that shares no map, slice or pointer with it.
func (v VM) Clone() VM { return v.clone() }

// clone returns a deep copy, so UpdateVM can tell whether a mutation
// changed anything and a caller's mutation never aliases stored values.
func (v VM) clone() VM {
	c := v
	c.Spec = bytes.Clone(v.Spec)
	c.TemplateConfig = bytes.Clone(v.TemplateConfig)
	c.Overrides = bytes.Clone(v.Overrides)
	c.Tags = maps.Clone(v.Tags)
	c.NextAttemptAt = copyTime(v.NextAttemptAt)
	c.BootedAt = copyTime(v.BootedAt)
	c.GuestReadyAt = copyTime(v.GuestReadyAt)
	c.ExpiresAt = copyTime(v.ExpiresAt)
	return c
}

func copyTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// The actions of a VM's OnExpiry.
const (
	ExpiryStop   = "stop"
	ExpiryDelete = "delete"
)

// VMFilter selects VMs for ListVMs. Zero fields match everything.
type VMFilter struct {
	Project      string
	State        VMState
	DesiredState VMState
	HostID       string
	PoolID       string
	// Tags must all be present with exactly these values.
	Tags map[string]string
	// Limit caps the page size: 0 means DefaultLimit, more than MaxLimit
	// means MaxLimit.
	Limit int
	// Cursor is the NextCursor of the previous page; empty starts at the
	// newest VM.
	Cursor string
}

// Page sizes of the List methods.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Allocation is what the VMs placed on one host add up to.
type Allocation struct {
	VMs    int
	VCPU   int
	MemMiB int
}

// Event levels used by the manager. The store accepts any string.
const (
	LevelInfo  = "info"
	LevelWarn  = "warn"
	LevelError = "error"
)

// VMEvent is one line of a VM's history, shown by GET /v1/vms/{id}/events.
type VMEvent struct {
	ID      int64
	VMID    string
	At      time.Time
	Level   string
	Message string
}

// Template is a named, reusable VM configuration.
type Template struct {
	ID      string
	Name    string
	Project string
	Owner   string
	Config  json.RawMessage
	// Version is the current version: 1 on create, bumped by every
	// UpdateTemplate, which keeps the old config as a TemplateVersion.
	Version   int
	CreatedAt time.Time
}

// TemplateVersion is one immutable config a template had.
type TemplateVersion struct {
	TemplateID string
	Version    int
	Config     json.RawMessage
	Owner      string // who made this version
	CreatedAt  time.Time
}

// Pool keeps Size paused VMs of one template or snapshot ready to be
// claimed; it refills when fewer than MinReady are.
type Pool struct {
	ID         string
	Name       string
	Project    string
	TemplateID string
	// TemplateVersion is the version its new VMs are made from (0: a
	// snapshot pool).
	TemplateVersion int
	SnapshotID      string
	Size            int
	MinReady        int
	OnEmpty         string // "create" or "fail"
	// ShortSince is when the pool last fell below Size ready VMs (nil:
	// full), for its refill lag.
	ShortSince *time.Time
	Claims     int64
	CreatedAt  time.Time
}

// Rollout moves a pool from one template version to another, a few VMs at
// a time (manager/rollout.go). The durations are whole milliseconds.
type Rollout struct {
	ID               string
	PoolID           string
	FromVersion      int
	ToVersion        int
	Canary           int
	MaxParallel      int
	MinHealthy       time.Duration
	ProgressDeadline time.Duration
	AutoRevert       bool
	// AutoPromote false: the rollout waits in awaiting_promotion once its
	// canaries are healthy.
	AutoPromote bool
	// ReadyLine: a new VM counts healthy only once its console shows it.
	ReadyLine string
	State     string // running, paused, awaiting_promotion, reverting; then succeeded, failed, reverted, aborted
	Phase     string // canary, rolling, revert, abort
	Message   string
	Actor     string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// TemplateFilter selects templates. Zero fields match everything.
type TemplateFilter struct {
	Project string
}

// ImageKind is what an image boots as.
type ImageKind string

// The image kinds.
const (
	ImageKernel ImageKind = "kernel"
	ImageInitrd ImageKind = "initrd"
	ImageRootfs ImageKind = "rootfs"
)

// Image is a registered kernel, initrd or rootfs file on the hosts. Project "" is a
// global image, visible to every project.
type Image struct {
	ID        string
	Project   string
	Kind      ImageKind
	Name      string
	HostPath  string
	SHA256    string
	Size      int64
	ReadOnly  bool
	CreatedAt time.Time
}

// ImageFilter selects images. Zero fields match everything; with Project
// set, IncludeGlobal also returns the global images (project "").
type ImageFilter struct {
	Project       string
	IncludeGlobal bool
	Kind          ImageKind
}

// SnapshotFile is one file of a snapshot, as reported to API clients.
type SnapshotFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// Snapshot is a paused VM's state and memory written to its host.
type Snapshot struct {
	ID        string
	VMID      string
	Project   string
	HostID    string
	Dir       string
	StatePath string
	MemPath   string
	Size      int64
	Files     []SnapshotFile
	// Meta holds what instantiation needs: the source VM's configuration and
	// the firecracker version that wrote the snapshot.
	Meta      json.RawMessage
	CreatedAt time.Time
}

// SnapshotFilter selects snapshots. Zero fields match everything.
type SnapshotFilter struct {
	VMID    string
	Project string
	HostID  string
}

// HostState is a host's availability for scheduling.
type HostState string

// The host states.
const (
	HostReady       HostState = "ready"
	HostUnreachable HostState = "unreachable"
	HostDraining    HostState = "draining"
)

// Resources is an amount of vCPU and memory (a host's capacity, or what is
// allocated on it).
type Resources struct {
	VCPU   int `json:"vcpu"`
	MemMiB int `json:"mem_mib"`
}

// Host is one agent in the fleet.
type Host struct {
	ID        string
	Name      string
	Addr      string
	State     HostState
	Capacity  Resources
	Allocated Resources // as last reported by the agent
	VMs       int       // as last reported by the agent
	Version   string
	// VMM is the VMM version the agent runs ("1.16.1"; "-sim" for
	// firecracker-sim).
	VMM string
	// Subnet ("172.20.0.0/16") and Gateway ("172.20.0.1") are the VM
	// bridge's, as the agent reported them; "" when it reported none.
	Subnet     string
	Gateway    string
	LastSeenAt time.Time
	CreatedAt  time.Time
}

// HostRegistration is what an agent says when it (re)joins the fleet.
type HostRegistration struct {
	Name     string
	Addr     string
	Capacity Resources
	Version  string
	VMM      string
	Subnet   string
	Gateway  string
}

// Heartbeat is an agent's periodic report. A zero At means "now".
type Heartbeat struct {
	Capacity  Resources
	Allocated Resources
	VMs       int
	At        time.Time
}

// APIToken is a bearer token's record. The secret itself is never stored:
// Prefix is a non-secret lookup key and Hash the verifier.
type APIToken struct {
	ID         string
	Prefix     string
	Hash       string
	Owner      string
	Role       string
	Project    string
	CreatedAt  time.Time
	LastUsedAt *time.Time
	RevokedAt  *time.Time
}

// TokenFilter selects tokens. Zero fields match everything except revoked
// tokens, which need IncludeRevoked.
type TokenFilter struct {
	Owner          string
	Project        string
	IncludeRevoked bool
}

// AuditResult is the outcome of an audited call.
type AuditResult string

// The audit results. An entry is pending from BeginAudit until
// CompleteAudit; one that stays pending marks a call that never finished
// (a crash, a timeout), which is exactly what an audit must not lose.
const (
	AuditPending AuditResult = "pending"
	AuditSuccess AuditResult = "success"
	AuditFailure AuditResult = "failure"
	AuditDenied  AuditResult = "denied"
)

// AuditEntry is one mutating call, allowed or denied.
type AuditEntry struct {
	ID          int64
	At          time.Time
	Actor       string
	Action      string
	Resource    string
	ResourceID  string
	RequestID   string
	Result      AuditResult
	Before      json.RawMessage // nil when not recorded
	After       json.RawMessage // nil when not recorded
	Error       string
	CompletedAt *time.Time
	// Source is the caller's address (its IP, without the port).
	Source string
	// Count is how many calls the entry stands for: 1, or more for an
	// aggregated denial (CountDenial).
	Count int64
}

// The audit's field bounds: the store truncates longer values (at a UTF-8
// boundary), so no caller can make a row larger than about 6 KB plus its
// before/after summaries, which the manager writes itself.
const (
	MaxAuditActor      = 256
	MaxAuditAction     = 64
	MaxAuditResource   = 64
	MaxAuditResourceID = 256
	MaxAuditRequestID  = 128
	MaxAuditSource     = 64
	MaxAuditError      = 4096
)

// AuditFilter selects audit entries, oldest first. Zero fields match
// everything; AfterID pages (pass the last ID seen).
type AuditFilter struct {
	ResourceID string
	Resource   string
	Actor      string // the whole actor, or its owner part before " ("
	Since      time.Time
	AfterID    int64
	Limit      int
}

// Lease is a named, expiring claim, used to elect one reconciler among
// managers that share a database.
type Lease struct {
	Name      string
	Holder    string
	ExpiresAt time.Time
}

// GroupRollout moves a group of VMs (the VMs of TemplateID in Project
// tagged group=Group) to ToVersion of the template, in place.
type GroupRollout struct {
	ID               string
	Project          string
	TemplateID       string
	Group            string
	ToVersion        int
	Canary           int
	MaxParallel      int
	MinHealthy       time.Duration
	ProgressDeadline time.Duration
	AutoRevert       bool
	// AutoPromote false: the rollout waits in awaiting_promotion once its
	// canaries run, until a promote.
	AutoPromote bool
	State       string // running, paused, awaiting_promotion, reverting; then succeeded, failed, reverted, aborted
	Phase       string // canary, rolling, revert, abort
	Message     string
	Actor       string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// GroupRolloutVM is one VM of a group rollout: its place in the order,
// the version and config it had before (what a revert restores) and how
// far it got (pending, moving, moved, failed, reverting, reverted, gone).
type GroupRolloutVM struct {
	RolloutID   string
	VMID        string
	Position    int
	FromVersion int
	Restart     bool // it ran (or was meant to) when the rollout began: started again after each rewrite
	OldConfig   json.RawMessage
	State       string
	Message     string
	UpdatedAt   time.Time
}
