// Package apitypes holds the manager REST API's request and answer bodies
// (DESIGN.md section 2). The HTTP layer registers them for validation and
// the OpenAPI document; the CLI's client decodes the same types, so the two
// cannot drift. Storage models live in the store package, not here.
package apitypes

import (
	"encoding/json"
	"time"
)

// RateLimiter is firecracker's rate limiter (bandwidth in bytes, ops in
// operations; refill_time in ms; size 0 = unlimited).
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// TokenBucket is one bucket of a rate limiter.
type TokenBucket struct {
	Size         int64  `json:"size" minimum:"0"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty" minimum:"0"`
	RefillTime   int64  `json:"refill_time" minimum:"0" doc:"milliseconds to refill the bucket"`
}

// ExtraDrive is a drive beyond the root filesystem.
type ExtraDrive struct {
	DriveID     string       `json:"drive_id" minLength:"1" maxLength:"64" pattern:"^[A-Za-z0-9_]+$" doc:"firecracker drive id (letters, digits, _)"`
	ImageID     string       `json:"image_id,omitempty" doc:"a registered rootfs image"`
	Path        string       `json:"path,omitempty" doc:"host path (dev mode only)"`
	ReadOnly    bool         `json:"read_only,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NIC configures the VM's network interface on the host bridge.
type NIC struct {
	Disabled      bool         `json:"disabled,omitempty" doc:"boot without a network interface"`
	MTU           *int         `json:"mtu,omitempty" minimum:"68" maximum:"65535"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// VMConfig is what a VM is made of; templates store it too.
type VMConfig struct {
	Vcpu          *int         `json:"vcpu,omitempty" minimum:"1" maximum:"32" example:"2" doc:"vCPUs: 1 or an even number up to 32 (default 1)"`
	MemMib        *int         `json:"mem_mib,omitempty" minimum:"1" maximum:"1048576" example:"512" doc:"guest memory in MiB (default 128); at most what a host can hold"`
	KernelImageID string       `json:"kernel_image_id,omitempty" maxLength:"64" example:"3f2a9c4e-8d1b-4b7a-9a43-1c2d3e4f5a6b" doc:"a registered kernel image (id)"`
	KernelPath    string       `json:"kernel_path,omitempty" maxLength:"4096" doc:"host path of an uncompressed kernel (dev mode only, admins)"`
	InitrdImageID string       `json:"initrd_image_id,omitempty" maxLength:"64" doc:"a registered initrd image (id), loaded with the kernel"`
	InitrdPath    string       `json:"initrd_path,omitempty" maxLength:"4096" doc:"host path of an initrd (dev mode only, admins)"`
	RootfsImageID string       `json:"rootfs_image_id,omitempty" maxLength:"64" example:"9c1b7e2d-4f3a-4c8b-8e21-7a6b5c4d3e2f" doc:"a registered rootfs image (id)"`
	RootfsPath    string       `json:"rootfs_path,omitempty" maxLength:"4096" doc:"host path of a root filesystem image (dev mode only, admins)"`
	BootArgs      string       `json:"boot_args,omitempty" maxLength:"2048" example:"console=ttyS0 quiet" doc:"kernel arguments; Nexus adds its defaults, root= and ip= unless these set them, and the whole line must fit 2047 bytes"`
	ExtraDrives   []ExtraDrive `json:"extra_drives,omitempty" maxItems:"16"`
	NIC           *NIC         `json:"nic,omitempty"`
	Network       *NetworkSpec `json:"network,omitempty" doc:"how the VM's interface reaches the bridge (default mode bridge; isolated for VMs restored from a snapshot of an isolated VM)"`
}

// NetworkSpec chooses the network mode (docs/networking.md#isolated-mode).
type NetworkSpec struct {
	Mode string `json:"mode" enum:"bridge,isolated" doc:"bridge: the TAP is a bridge port and the guest has the VM's address; isolated: the TAP and the VMM live in a network namespace of the VM's own, joined to the bridge by a veth with the VM's address, and the guest has the fixed address 192.168.127.2/30 (the same in every clone)"`
}

// VMNetwork is how a VM is reached (GET /v1/vms/{id}).
type VMNetwork struct {
	Mode         string `json:"mode" enum:"bridge,isolated"`
	Address      string `json:"address,omitempty" doc:"where the VM is reached from its host's bridge (isolated: the namespace's address, translated to the guest for TCP and UDP)"`
	GuestAddr    string `json:"guest_addr,omitempty" doc:"the guest's own address (isolated: 192.168.127.2 in every VM)"`
	GuestGateway string `json:"guest_gateway,omitempty"`
	Veth         string `json:"veth,omitempty" doc:"isolated: the host side of the VM's veth pair"`
}

// CreateVMRequest is the body of POST /v1/vms.
type CreateVMRequest struct {
	Name string `json:"name" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" example:"web" doc:"unique within the project"`
	VMConfig
	Project string            `json:"project,omitempty" maxLength:"63" doc:"default: the token's project"`
	Tags    map[string]string `json:"tags,omitempty" doc:"at most 32; keys 1-63 bytes, values up to 255, printable"`
	Start   *bool             `json:"start,omitempty" doc:"boot after creating (default true)"`
	HostID  string            `json:"host_id,omitempty" maxLength:"253" doc:"pin to a host (id or name); default: the scheduler picks"`
	Expiry
}

// Expiry is a time to live, given on create, instantiate and claim.
type Expiry struct {
	TTL      string `json:"ttl,omitempty" maxLength:"32" example:"2h" doc:"time to live from now, a Go duration (\"90s\", \"2h\"), 1s to 8760h; at the end the reconciler stops or deletes the VM (on_expiry). Default: no expiry"`
	OnExpiry string `json:"on_expiry,omitempty" enum:"stop,delete" doc:"what happens at expires_at (default delete); only with ttl"`
}

// ExtendTTLRequest is the body of POST /v1/vms/{id}/ttl.
type ExtendTTLRequest struct {
	TTL      string `json:"ttl" minLength:"1" maxLength:"32" example:"1h" doc:"the VM now expires this long from now (a Go duration, 1s to 8760h)"`
	OnExpiry string `json:"on_expiry,omitempty" enum:"stop,delete" doc:"change what happens at expiry (default: keep it; delete for a VM that had no expiry)"`
}

// VM is a microVM as the API shows it.
type VM struct {
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	Project         string            `json:"project"`
	State           string            `json:"state" enum:"requested,configured,running,paused,stopping,stopped,failed,deleting"`
	DesiredState    string            `json:"desired_state"`
	HostID          string            `json:"host_id,omitempty"`
	HostAddr        string            `json:"host_addr,omitempty"`
	APISock         string            `json:"api_sock,omitempty"`
	Tap             string            `json:"tap,omitempty"`
	MAC             string            `json:"mac,omitempty"`
	LogPath         string            `json:"log_path,omitempty"`
	ConsolePath     string            `json:"console_path,omitempty"`
	Vcpu            int               `json:"vcpu"`
	MemMib          int               `json:"mem_mib"`
	KernelImageID   string            `json:"kernel_image_id,omitempty"`
	KernelPath      string            `json:"kernel_path,omitempty"`
	InitrdImageID   string            `json:"initrd_image_id,omitempty"`
	InitrdPath      string            `json:"initrd_path,omitempty"`
	RootfsImageID   string            `json:"rootfs_image_id,omitempty"`
	RootfsPath      string            `json:"rootfs_path,omitempty"`
	BootArgs        string            `json:"boot_args,omitempty" doc:"the VM's own boot_args; the guest boots with Nexus's defaults, root= and ip= added (docs/images.md)"`
	IP              string            `json:"ip,omitempty" doc:"the guest's address on its host's bridge, kept for the VM's life; none without a network interface"`
	Subnet          string            `json:"subnet,omitempty" doc:"the bridge's subnet, e.g. 172.20.0.0/16"`
	Gateway         string            `json:"gateway,omitempty" doc:"the bridge's address: the guest's default route and name server"`
	BootedAt        *time.Time        `json:"booted_at,omitempty" doc:"when the current run's guest was started (InstanceStart or snapshot load)"`
	GuestReadyAt    *time.Time        `json:"guest_ready_at,omitempty" doc:"when the guest printed its readiness line in this run; absent until then"`
	ExtraDrives     []ExtraDrive      `json:"extra_drives,omitempty"`
	NIC             *NIC              `json:"nic,omitempty"`
	TemplateID      string            `json:"template_id,omitempty"`
	TemplateVersion int               `json:"template_version,omitempty" doc:"the template version the VM was made from"`
	TemplateConfig  json.RawMessage   `json:"template_config,omitempty"`
	Overrides       json.RawMessage   `json:"overrides,omitempty"`
	Tags            map[string]string `json:"tags"`
	CreatedAt       time.Time         `json:"created_at"`
	UpdatedAt       time.Time         `json:"updated_at"`
	LastError       string            `json:"last_error,omitempty"`
	ExpiresAt       *time.Time        `json:"expires_at,omitempty" doc:"when the reconciler stops or deletes the VM (ttl); absent: never"`
	Network         *VMNetwork        `json:"network,omitempty" doc:"mode and reachable address; absent without a network interface"`
	PoolID          string            `json:"pool_id,omitempty" doc:"the warm pool holding the VM until it is claimed"`
	OnExpiry        string            `json:"on_expiry,omitempty" enum:"stop,delete" doc:"what happens at expires_at"`
}

// VMItem wraps one VM: GET /v1/vms/{id} → {item:{…}}. Every answer about
// one resource has this shape: {item: <resource>}.
type VMItem struct {
	Item VM `json:"item"`
}

// VMCreated is the answer of POST /v1/vms: {item} like GET, and, for
// clients of API v1's first release, the VM's fields at the top level too
// (deprecated: read item).
type VMCreated struct {
	VM
	Item VM `json:"item"`
}

// VMList is GET /v1/vms.
type VMList struct {
	Items      []VM   `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// OK is the answer of actions.
type OK struct {
	OK bool `json:"ok"`
}

// BulkRequest is the body of POST /v1/vms/bulk.
type BulkRequest struct {
	Action string   `json:"action" enum:"start,stop,delete"`
	IDs    []string `json:"ids" minItems:"1" maxItems:"1000"`
}

// BulkResult is one VM's outcome in a bulk action.
type BulkResult struct {
	ID    string `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// BulkResponse is the answer of POST /v1/vms/bulk.
type BulkResponse struct {
	Results []BulkResult `json:"results"`
}

// DrivePatch is the body of PATCH /v1/vms/{id}/drives/{drive_id}.
type DrivePatch struct {
	RateLimiter *RateLimiter `json:"rate_limiter"`
}

// Event is one line of a VM's history.
type Event struct {
	ID      int64     `json:"id" doc:"increasing per manager database; pass the last one read as after_id to read only newer events"`
	At      time.Time `json:"at"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
}

// EventList is GET /v1/vms/{id}/events.
type EventList struct {
	Items []Event `json:"items"`
}

// LogLines is GET /v1/vms/{id}/logs.
type LogLines struct {
	Source string   `json:"source"`
	Path   string   `json:"path"`
	Lines  []string `json:"lines"`
}

// MetricsRecent is GET /v1/metrics/recent.
type MetricsRecent struct {
	ID     string          `json:"id"`
	At     *time.Time      `json:"at,omitempty"`
	Record json.RawMessage `json:"record,omitempty"`
}

// Resources is an amount of vCPU and memory.
type Resources struct {
	Vcpu   int `json:"vcpu"`
	MemMib int `json:"mem_mib"`
}

// Host is one agent host.
type Host struct {
	ID         string       `json:"id"`
	Name       string       `json:"name"`
	Addr       string       `json:"addr"`
	State      string       `json:"state" enum:"ready,unreachable,draining"`
	Capacity   Resources    `json:"capacity"`
	Allocated  Resources    `json:"allocated"`
	VMs        int          `json:"vms"`
	LastSeenAt time.Time    `json:"last_seen_at"`
	VMM        string       `json:"vmm,omitempty" doc:"the VMM version the host runs"`
	Simulated  bool         `json:"simulated" doc:"the host runs firecracker-sim: its VMs are not real guests, and its capacity is scaled (docs/runbook.md)"`
	Network    *HostNetwork `json:"network,omitempty" doc:"the VM bridge's subnet and gateway, as the agent reported them"`
}

// HostNetwork is a host's VM bridge: the subnet its VMs get addresses
// from and the bridge's own address in it.
type HostNetwork struct {
	Subnet  string `json:"subnet" minLength:"9" maxLength:"18" doc:"the VM subnet, an IPv4 prefix of length 1-30, e.g. 172.20.0.0/16"`
	Gateway string `json:"gateway" minLength:"7" maxLength:"15" doc:"the bridge's address in the subnet, e.g. 172.20.0.1"`
}

// HostList is GET /v1/hosts.
type HostList struct {
	Items []Host `json:"items"`
}

// Health is /healthz and /readyz.
type Health struct {
	OK     bool              `json:"ok"`
	Checks map[string]string `json:"checks,omitempty"`
}

// RegisterHostRequest is what an agent sends to join the fleet.
type RegisterHostRequest struct {
	Name     string    `json:"name" minLength:"1" maxLength:"253"`
	Addr     string    `json:"addr" minLength:"1" maxLength:"512" doc:"the agent's base URL, e.g. http://10.0.0.5:9090"`
	Version  string    `json:"version,omitempty" maxLength:"64"`
	VMM      string    `json:"vmm,omitempty" maxLength:"64" doc:"the VMM version the agent runs; a -sim suffix marks firecracker-sim"`
	Capacity Resources `json:"capacity"`
	// Network is the agent's VM bridge (FC_BRIDGE_CIDR). Without it the
	// host's VMs get no address from Nexus (agents before it).
	Network *HostNetwork `json:"network,omitempty" doc:"the VM bridge: the manager gives each VM of the host an address of its subnet"`
}

// HostRegistration tells the agent its host id and heartbeat period.
type HostRegistration struct {
	ID                  string `json:"id"`
	HeartbeatIntervalMs int    `json:"heartbeat_interval_ms"`
}

// HeartbeatRequest is an agent's periodic report.
type HeartbeatRequest struct {
	Capacity  Resources `json:"capacity"`
	Allocated Resources `json:"allocated"`
	VMs       int       `json:"vms" minimum:"0"`
}

// AuditEntry is one audited call.
type AuditEntry struct {
	ID          int64           `json:"id"`
	At          time.Time       `json:"at"`
	Actor       string          `json:"actor"`
	Action      string          `json:"action"`
	Resource    string          `json:"resource"`
	ResourceID  string          `json:"resource_id"`
	RequestID   string          `json:"request_id"`
	Result      string          `json:"result" enum:"pending,success,failure,denied"`
	Before      json.RawMessage `json:"before,omitempty"`
	After       json.RawMessage `json:"after,omitempty"`
	Error       string          `json:"error,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	Source      string          `json:"source,omitempty" doc:"the caller's IP address"`
	Count       int64           `json:"count" doc:"how many calls the row stands for: 1, or more for an anonymous caller's denials of one action in one minute (aggregated)"`
}

// AuditList is GET /v1/audit.
type AuditList struct {
	Items []AuditEntry `json:"items"`
}

// CreateTokenRequest is the body of POST /v1/tokens.
type CreateTokenRequest struct {
	Owner   string `json:"owner" minLength:"1" maxLength:"128" doc:"who or what uses the token"`
	Role    string `json:"role" enum:"viewer,operator,admin"`
	Project string `json:"project" minLength:"1" maxLength:"63" doc:"the project the token acts in; \"*\" for all"`
}

// TokenSecret is the answer of create and rotate: the secret, shown once.
type TokenSecret struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// Token is a token's record, without its secret.
type Token struct {
	ID         string     `json:"id"`
	Owner      string     `json:"owner"`
	Role       string     `json:"role"`
	Project    string     `json:"project"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// TokenList is GET /v1/tokens.
type TokenList struct {
	Items []Token `json:"items"`
}

// Host event kinds.
const (
	// EventVMMExit: a VMM ended without the agent ending it.
	EventVMMExit = "vmm_exit"
	// EventGuestReady: the guest printed its readiness line
	// (guest.ReadyLine) on its console.
	EventGuestReady = "guest_ready"
	// EventGuestFailed: the guest printed a failure line or the kernel
	// panicked (guest.Failure); Reason says why.
	EventGuestFailed = "guest_failed"
)

// HostEvent is what an agent reports as soon as it sees it: a VMM exit
// (the manager reconciles at once instead of at its next pass), or what
// the guest said on its console.
type HostEvent struct {
	Kind   string    `json:"kind" enum:"vmm_exit,guest_ready,guest_failed"`
	VMID   string    `json:"vm_id" maxLength:"64"`
	PID    int       `json:"pid,omitempty" minimum:"0" doc:"the VMM's pid: a guest report of an earlier run is ignored"`
	Status string    `json:"status,omitempty" maxLength:"256" doc:"vmm_exit: how the process ended"`
	Reason string    `json:"reason,omitempty" maxLength:"512" doc:"guest_failed: the guest's or the kernel's words"`
	At     time.Time `json:"at" doc:"when the agent saw it"`
}

// ReconcilerStatus is GET /v1/reconciler: whether the manager answering
// holds the reconciler lease, and its last pass.
type ReconcilerStatus struct {
	Leader     bool      `json:"leader"`
	LastPassAt time.Time `json:"last_pass_at"`
	LastPassMs float64   `json:"last_pass_ms"`
	Hosts      int       `json:"hosts"`
	VMs        int       `json:"vms"`
	Actions    int       `json:"actions"`
	Errors     int       `json:"errors"`
}
