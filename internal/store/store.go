package store

import (
	"context"
	"encoding/json"
	"net/netip"
	"time"
)

// Store is everything the manager persists. It is safe for concurrent use.
// Consumers should depend on the narrow interfaces it is made of (or their
// own, narrower still).
type Store interface {
	VMStore
	EventStore
	TemplateStore
	ImageStore
	SnapshotStore
	PoolStore
	GroupRolloutStore
	HostStore
	TokenStore
	AuditStore
	QuotaStore
	LeaseStore
	Notifier
	StatsStore

	// Engine is "sqlite" or "postgres".
	Engine() string
	// Ping checks that the database answers (readiness).
	Ping(ctx context.Context) error
	// Close releases the connections.
	Close() error
}

// VMStore keeps VMs.
type VMStore interface {
	// CreateVM stores a new VM and returns it as stored: an empty ID gets a
	// random UUID, zero CreatedAt/UpdatedAt get the store's clock, and
	// Generation is 1. A taken (project, name) or ID is ErrConflict.
	CreateVM(ctx context.Context, vm VM) (VM, error)
	// CreateVMWithin is CreateVM for a VM placed on vm.HostID that must
	// fit: with the VMs already there (except those in the free states) it
	// may hold at most limit, or nothing is stored and the answer is
	// ErrNoCapacity. The check and the insert are one transaction that
	// locks the host's row, so managers sharing the store never place past
	// a host's limit together. A host that does not exist is ErrNotFound,
	// one that is not ready (draining, unreachable) ErrHostNotReady: the
	// host's state is decided here too, so a VM is never placed on a host
	// whose drain has been stored, whatever its manager last read.
	// A VM with Subnet and Gateway set and no IP gets the lowest free
	// address of that subnet on the host in the same transaction (as
	// AssignAddress would); a full subnet is ErrExhausted.
	CreateVMWithin(ctx context.Context, vm VM, limit Resources, free ...VMState) (VM, error)
	GetVM(ctx context.Context, id string) (VM, error)
	GetVMByName(ctx context.Context, project, name string) (VM, error)
	// ListVMs pages through the matching VMs, newest first (created_at,
	// then id, descending). The cursor is opaque and stable: VMs created
	// while paging do not shift later pages. nextCursor is "" on the last
	// page. A malformed cursor is ErrInvalid.
	ListVMs(ctx context.Context, f VMFilter) (items []VM, nextCursor string, err error)
	// ListHostVMStates returns every VM placed on hostID with only what a
	// reconcile pass plans from filled in: ID, HostID, State,
	// DesiredState, TAP, LastError, Retries, NextAttemptAt, Generation
	// and UpdatedAt. Whoever acts on one reads the whole row again. Not
	// paged: a host's VMs are bounded by its capacity.
	ListHostVMStates(ctx context.Context, hostID string) ([]VM, error)
	// ListOrphanPoolVMs returns the ids of up to limit VMs that belong to
	// a pool that no longer exists (a pool delete that failed halfway).
	ListOrphanPoolVMs(ctx context.Context, limit int) ([]string, error)
	// ListExpiredVMs returns up to limit VMs whose ExpiresAt is at or
	// before at, earliest first (the reconciler's expiry sweep).
	ListExpiredVMs(ctx context.Context, at time.Time, limit int) ([]VM, error)
	// UpdateVM reads the VM, applies mutate to it and writes it back only if
	// nobody else wrote in between (same Generation); on a concurrent change
	// it re-reads and re-applies, a few times, then returns ErrStale. mutate
	// may therefore run more than once and must only change the VM it is
	// given. An error from mutate aborts the update and is returned wrapped.
	// ID, CreatedAt, Generation and UpdatedAt are the store's to set. A
	// mutation that changes nothing writes nothing (Generation stays).
	UpdateVM(ctx context.Context, id string, mutate func(*VM) error) (VM, error)
	// UpdateVMFrom is UpdateVM starting from cur, the VM as its caller
	// last read or wrote it: if nobody wrote it since (same Generation),
	// the write needs no read first; otherwise it goes on as UpdateVM. A
	// mutation that refuses cur (returns an error) is given the VM as
	// stored before its error counts: cur may be stale. A mutation may
	// thus run more than once, and must start each run afresh.
	UpdateVMFrom(ctx context.Context, cur VM, mutate func(*VM) error) (VM, error)
	// DeleteVM removes the VM and its events; a missing VM is ErrNotFound
	// (callers that treat delete as idempotent ignore it).
	DeleteVM(ctx context.Context, id string) error
	// AssignAddress gives the VM an address of its host's VM subnet and
	// returns the VM as stored. A VM that has one in subnet, with gateway,
	// keeps it (stop/start, restarts); one whose address lies in subnet
	// under another gateway keeps the address when it is still free;
	// otherwise it gets the lowest free address of subnet other than its
	// network, broadcast and gateway addresses. No two VMs of one host
	// ever hold the same address, whichever managers assign them at once
	// (a unique index decides). The address goes with the VM's row. A VM
	// without a host or a subnet that is not an IPv4 prefix of length
	// 1-30 with gateway inside is ErrInvalid; a full subnet ErrExhausted.
	AssignAddress(ctx context.Context, vmID string, subnet netip.Prefix, gateway netip.Addr) (VM, error)
	// AllocationsByHost sums the VMs placed on each host (host_id set),
	// skipping VMs in excludeStates — the scheduler decides which states
	// hold resources. Hosts without VMs are absent from the map.
	AllocationsByHost(ctx context.Context, excludeStates ...VMState) (map[string]Allocation, error)
}

// EventStore keeps each VM's event history.
type EventStore interface {
	// AddEvent appends an event (zero At means now); an unknown VM is
	// ErrNotFound.
	AddEvent(ctx context.Context, e VMEvent) (VMEvent, error)
	// ListEvents returns the VM's last limit events, oldest first (newest
	// last). An unknown VM has no events.
	ListEvents(ctx context.Context, vmID string, limit int) ([]VMEvent, error)
	// ListEventsAfter returns the VM's first limit events after the one
	// with id afterID, oldest first (afterID 0: as ListEvents), so a
	// follower reads each event once.
	ListEventsAfter(ctx context.Context, vmID string, afterID int64, limit int) ([]VMEvent, error)
}

// TemplateStore keeps templates. (project, name) is unique.
type TemplateStore interface {
	CreateTemplate(ctx context.Context, t Template) (Template, error)
	GetTemplate(ctx context.Context, id string) (Template, error)
	GetTemplateByName(ctx context.Context, project, name string) (Template, error)
	// ListTemplates returns the matching templates, oldest first.
	ListTemplates(ctx context.Context, f TemplateFilter) ([]Template, error)
	// DeleteTemplate removes the template and its versions.
	DeleteTemplate(ctx context.Context, id string) error
	// UpdateTemplate replaces the template's config: the new config
	// becomes the next version, made by owner; the old ones stay.
	UpdateTemplate(ctx context.Context, id, owner string, config json.RawMessage) (Template, error)
	// ListTemplateVersions returns up to limit versions of a template,
	// newest first, those below before when before > 0.
	ListTemplateVersions(ctx context.Context, id string, before, limit int) ([]TemplateVersion, error)
	GetTemplateVersion(ctx context.Context, id string, version int) (TemplateVersion, error)
}

// ImageStore keeps the image registry. (project, name) is unique.
type ImageStore interface {
	CreateImage(ctx context.Context, img Image) (Image, error)
	GetImage(ctx context.Context, id string) (Image, error)
	GetImageByName(ctx context.Context, project, name string) (Image, error)
	// ListImages returns the matching images, oldest first.
	ListImages(ctx context.Context, f ImageFilter) ([]Image, error)
	DeleteImage(ctx context.Context, id string) error
}

// SnapshotStore keeps the snapshot catalog. Snapshots outlive their VM.
type SnapshotStore interface {
	CreateSnapshot(ctx context.Context, s Snapshot) (Snapshot, error)
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)
	// ListSnapshots returns the matching snapshots, oldest first.
	ListSnapshots(ctx context.Context, f SnapshotFilter) ([]Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
}

// PoolStore keeps warm pools. (project, name) is unique.
type PoolStore interface {
	CreatePool(ctx context.Context, p Pool) (Pool, error)
	GetPool(ctx context.Context, id string) (Pool, error)
	GetPoolByName(ctx context.Context, project, name string) (Pool, error)
	// ListPools returns the pools of project ("" every project), oldest first.
	ListPools(ctx context.Context, project string) ([]Pool, error)
	DeletePool(ctx context.Context, id string) error
	// SetPoolShort records when the pool fell short of its size (nil: it
	// is full again); an earlier time is kept while it stays short.
	SetPoolShort(ctx context.Context, id string, since *time.Time) error
	// CountPoolClaim adds one to the pool's claims.
	CountPoolClaim(ctx context.Context, id string) error
	// SetPoolTemplateVersion sets the template version the pool makes.
	SetPoolTemplateVersion(ctx context.Context, id string, version int) error
	// CreateRollout stores a rollout; ErrConflict while the pool has an
	// active one (running, paused or reverting).
	CreateRollout(ctx context.Context, r Rollout) (Rollout, error)
	GetRollout(ctx context.Context, id string) (Rollout, error)
	// LatestRollout returns the pool's newest rollout (ErrNotFound: none).
	LatestRollout(ctx context.Context, poolID string) (Rollout, error)
	// SetRolloutState moves a rollout from one of the states in from to
	// state, with its phase and message; ErrConflict when it is in none of
	// them (another writer was first).
	SetRolloutState(ctx context.Context, id string, from []string, state, phase, message string) (Rollout, error)
}

// GroupRolloutStore keeps rollouts of VM groups (store/group.go).
type GroupRolloutStore interface {
	// CreateGroupRollout stores a rollout with its VMs in one transaction;
	// ErrConflict while the group has an active one (running, paused,
	// awaiting_promotion or reverting).
	CreateGroupRollout(ctx context.Context, r GroupRollout, vms []GroupRolloutVM) (GroupRollout, error)
	GetGroupRollout(ctx context.Context, id string) (GroupRollout, error)
	// LatestGroupRollout returns the group's newest rollout (ErrNotFound: none).
	LatestGroupRollout(ctx context.Context, templateID, group string) (GroupRollout, error)
	// ListActiveGroupRollouts returns the running, awaiting_promotion and
	// reverting rollouts, oldest first (at most MaxLimit).
	ListActiveGroupRollouts(ctx context.Context) ([]GroupRollout, error)
	// SetGroupRolloutState moves a rollout from one of the states in from
	// to state; ErrConflict when it is in none of them.
	SetGroupRolloutState(ctx context.Context, id string, from []string, state, phase, message string) (GroupRollout, error)
	// ListGroupRolloutVMs returns the rollout's VMs in their order.
	ListGroupRolloutVMs(ctx context.Context, rolloutID string) ([]GroupRolloutVM, error)
	// SetGroupRolloutVM records how far one VM of the rollout got.
	SetGroupRolloutVM(ctx context.Context, rolloutID, vmID, state, message string) error
}

// HostStore keeps the fleet's hosts.
type HostStore interface {
	// UpsertHost registers a host by name: the first registration creates it
	// with a new ID, later ones keep the ID and update address, capacity and
	// version. A registering host becomes ready unless an operator set it
	// draining, which survives agent restarts.
	UpsertHost(ctx context.Context, r HostRegistration) (Host, error)
	// Heartbeat records an agent's report; an unreachable host becomes ready
	// again (a draining one stays draining).
	Heartbeat(ctx context.Context, id string, hb Heartbeat) error
	GetHost(ctx context.Context, id string) (Host, error)
	// ListHosts returns every host, by name.
	ListHosts(ctx context.Context) ([]Host, error)
	SetHostState(ctx context.Context, id string, state HostState) error
	// MarkHostsUnreachable marks ready hosts not seen since seenBefore as
	// unreachable and returns their IDs.
	MarkHostsUnreachable(ctx context.Context, seenBefore time.Time) ([]string, error)
	DeleteHost(ctx context.Context, id string) error
}

// TokenStore keeps API token records (never secrets).
type TokenStore interface {
	// CreateToken stores a token; an empty ID gets a random UUID. A taken
	// prefix is ErrConflict.
	CreateToken(ctx context.Context, t APIToken) (APIToken, error)
	GetToken(ctx context.Context, id string) (APIToken, error)
	// GetTokenByPrefix finds a token by its lookup prefix, revoked or not:
	// the caller checks RevokedAt and the hash.
	GetTokenByPrefix(ctx context.Context, prefix string) (APIToken, error)
	// ListTokens returns the matching tokens, oldest first.
	ListTokens(ctx context.Context, f TokenFilter) ([]APIToken, error)
	// RevokeToken marks the token revoked now; revoking again keeps the
	// first time and succeeds.
	RevokeToken(ctx context.Context, id string) error
	// UpdateTokenHash rotates the token's secret: new prefix (may equal the
	// old one) and hash. A revoked token is ErrConflict.
	UpdateTokenHash(ctx context.Context, id, prefix, hash string) (APIToken, error)
	// TouchTokens records last use in one batch: id → time. Times only move
	// forward; unknown IDs are ignored (the token may just have been
	// deleted).
	TouchTokens(ctx context.Context, used map[string]time.Time) error
}

// AuditStore keeps the audit trail. Entries are deleted only by
// PruneAudit, older than the retention.
type AuditStore interface {
	// BeginAudit inserts the entry as pending (zero At means now) and
	// returns its ID. Result, After, Error and CompletedAt are ignored.
	BeginAudit(ctx context.Context, e AuditEntry) (int64, error)
	// CompleteAudit records the outcome of a pending entry. A completed
	// entry cannot change again (ErrConflict); result must not be pending.
	CompleteAudit(ctx context.Context, id int64, result AuditResult, after json.RawMessage, errText string) error
	GetAudit(ctx context.Context, id int64) (AuditEntry, error)
	// ListAudit returns the matching entries ordered by ID.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
	// CountDenial records a denied call of an anonymous caller: one row per
	// (Source, Action, minute of At), whose Count goes up by one for each
	// further denial in that minute, so a flood of them adds rows at most
	// once a minute per source and action. Fields are truncated as
	// BeginAudit's are.
	CountDenial(ctx context.Context, e AuditEntry) error
	// PruneAudit deletes the entries that started before cutoff, in
	// batches, and returns how many went; younger entries are never
	// touched.
	PruneAudit(ctx context.Context, cutoff time.Time) (int64, error)
}

// QuotaStore keeps project quotas. The creates of VMs (CreateVMWithin),
// snapshots, images and templates check them in their own transaction and
// fail with a *QuotaError (errors.Is ErrQuota) when the project would pass
// a limit: managers sharing the store never pass one together.
type QuotaStore interface {
	// GetQuota returns the project's quota; one never set has no limits
	// (nil Limits, zero UpdatedAt).
	GetQuota(ctx context.Context, project string) (Quota, error)
	// PutQuota replaces the project's quota (nil: no limit); negative
	// limits are ErrInvalid. Usage over a new limit is allowed: only
	// creates are refused.
	PutQuota(ctx context.Context, q Quota) (Quota, error)
	// ProjectUsage counts what the project holds.
	ProjectUsage(ctx context.Context, project string) (Usage, error)
	// CheckQuota answers the *QuotaError a create adding add would get
	// now, without creating anything: an early refusal before costly
	// work (a snapshot's files). The create's own check still decides.
	CheckQuota(ctx context.Context, project string, add Usage) error
}

// LeaseStore elects one holder per lease name among processes sharing the
// database.
type LeaseStore interface {
	// AcquireLease atomically takes the lease if it is free or expired, or
	// renews it if holder already holds it, for ttl; held reports whether
	// holder holds it afterwards. On Postgres expiry is measured by the
	// database's clock so that replicas with skewed clocks agree.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (held bool, err error)
	// ReleaseLease frees the lease if holder holds it; otherwise it does
	// nothing.
	ReleaseLease(ctx context.Context, name, holder string) error
	// GetLease returns the lease's current record (possibly expired).
	GetLease(ctx context.Context, name string) (Lease, error)
}
