// Package agentapi is the agent's HTTP API as seen from the manager: the
// request and answer types of DESIGN.md section 3 and a client. The agent
// server and the manager both use these types, so they cannot drift.
package agentapi

import (
	"encoding/json"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// Prefix is the agent API's path prefix.
const Prefix = "/agent/v1"

// OK is the answer of calls that only succeed or fail.
type OK struct {
	OK bool `json:"ok"`
}

// TapResponse is the answer of POST /agent/v1/vms/{id}/tap.
// TapRequest is the optional body of POST /agent/v1/vms/{id}/tap. With
// Isolated, the TAP goes into a network namespace of the VM's own
// (docs/networking.md#isolated-mode).
type TapRequest struct {
	Isolated *IsolatedNet `json:"isolated,omitempty"`
}

// IsolatedNet is an isolated VM's addressing: its unique address on the
// bridge, and the guest's address and gateway (the same in every clone).
type IsolatedNet struct {
	HostAddr     string `json:"host_addr"`     // 172.20.0.7
	GuestAddr    string `json:"guest_addr"`    // 192.168.127.2
	GuestGateway string `json:"guest_gateway"` // 192.168.127.1/30
}

type TapResponse struct {
	Tap    string `json:"tap"`
	MAC    string `json:"mac"` // the guest MAC the manager gives firecracker
	Bridge string `json:"bridge"`
}

// SpawnRequest is the body of POST /agent/v1/vms/{id}/spawn. Vcpu and
// MemMib are recorded for capacity accounting; they do not configure the VM.
type SpawnRequest struct {
	Vcpu   int `json:"vcpu,omitempty"`
	MemMib int `json:"mem_mib,omitempty"`
	// NetNS starts the VMM inside the VM's own network namespace (made by
	// the tap call with isolated).
	NetNS bool `json:"netns,omitempty"`
	// Tap also makes the VM's TAP on the bridge, as the tap call without
	// isolated does, while the VMM starts: one call instead of two, and
	// the TAP's netlink work overlaps the VMM's start. Agents before it
	// ignore the field and answer without tap; the caller then makes the
	// TAP with the tap call.
	Tap bool `json:"tap,omitempty"`
	// Calls are firecracker calls made once the VMM's socket is up, in
	// order, each through the proxy's checks exactly as proxy-batch makes
	// them, stopping at the first that is not answered with a 2xx: a
	// boot's configuration and start ride on its spawn, one request
	// instead of two. A run of configuration calls before the start
	// (logger, metrics, machine, boot source, drives, network interfaces)
	// is sent together to a new VMM, its answers read in turn: a call
	// after a refused one of such a run may have been applied, which
	// matters not, the boot having failed. Agents before it refuse the
	// field (unknown field "calls"); the caller then spawns without and
	// sends a proxy-batch.
	Calls []firecracker.Call `json:"calls,omitempty"`
}

// SpawnResponse describes the VMM process and its files.
type SpawnResponse struct {
	PID         int    `json:"pid"`
	APISock     string `json:"api_sock"`
	LogPath     string `json:"log_path"`
	ConsolePath string `json:"console_path"`
	MetricsPath string `json:"metrics_path"`
	// AlreadyRunning is true when a live VMM for the VM existed and was
	// returned instead of starting another (spawn is idempotent).
	AlreadyRunning bool `json:"already_running"`
	// Tap is the TAP made for a request with tap.
	Tap *TapResponse `json:"tap,omitempty"`
	// Results say how each of the request's calls was answered, up to and
	// including the first that was not a 2xx (as a proxy-batch's). The
	// spawn itself succeeded whatever they say: the VMM runs.
	Results []firecracker.CallResult `json:"results,omitempty"`
}

// StopRequest is the optional body of POST /agent/v1/vms/{id}/stop.
type StopRequest struct {
	// GraceMs is how long to wait after SIGTERM before SIGKILL.
	GraceMs int `json:"grace_ms,omitempty"`
}

// VMM is one live firecracker process.
type VMM struct {
	VMID      string    `json:"vm_id"`
	PID       int       `json:"pid"`
	APISock   string    `json:"api_sock"`
	StartedAt time.Time `json:"started_at"`
	Vcpu      int       `json:"vcpu"`
	MemMib    int       `json:"mem_mib"`
}

// Tap is one TAP device with the agent's prefix. VMID is set when a run
// dir on this host maps to the TAP's name.
type Tap struct {
	Name     string `json:"name"`
	VMID     string `json:"vm_id,omitempty"`
	Attached bool   `json:"attached"`
	Up       bool   `json:"up"`
	// Kind is "" for a TAP on the bridge, "isolated" for a TAP inside a
	// VM's namespace, "veth" for the host side of an isolated VM's veth.
	Kind string `json:"kind,omitempty"`
}

// Socket is one API socket file under the run dir.
type Socket struct {
	VMID string `json:"vm_id"`
	Path string `json:"path"`
	Live bool   `json:"live"` // a process of this VM holds it
}

// RunDir is one VM run dir.
type RunDir struct {
	VMID string `json:"vm_id"`
	Path string `json:"path"`
}

// Inventory is the answer of GET /agent/v1/inventory: everything the agent
// finds on its host, each tagged with its VM id.
type Inventory struct {
	Host    string    `json:"host"`
	At      time.Time `json:"at"`
	VMMs    []VMM     `json:"vmms"`
	Taps    []Tap     `json:"taps"`
	Sockets []Socket  `json:"sockets"`
	RunDirs []RunDir  `json:"run_dirs"`
}

// Resources is an amount of vCPU and memory.
type Resources struct {
	Vcpu   int `json:"vcpu"`
	MemMib int `json:"mem_mib"`
}

// Capacity is the answer of GET /agent/v1/capacity.
type Capacity struct {
	Total     Resources `json:"capacity"`
	Allocated Resources `json:"allocated"`
	VMs       int       `json:"vms"`
	// Scale is what the host's real vCPUs and memory were multiplied by
	// to give Total: 1 for real firecracker, more for firecracker-sim,
	// whose VMs cost a small fraction of what they declare.
	Scale int `json:"scale"`
}

// Health is the answer of GET /agent/v1/health.
type Health struct {
	OK         bool   `json:"ok"`
	Name       string `json:"name"`
	Version    string `json:"version"`
	VMMVersion string `json:"vmm_version,omitempty"`
	Simulated  bool   `json:"simulated"`
	NAT        string `json:"nat"`
	// Jail is how VMMs are confined: "off", "helper" (the agent's own
	// confinement) or "jailer" (firecracker's jailer).
	Jail string `json:"jail"`
	// TLS says whether the agent serves TLS, and MutualTLS whether it
	// requires client certificates of its CA.
	TLS       bool `json:"tls"`
	MutualTLS bool `json:"mutual_tls"`
}

// LogLines is the answer of GET /agent/v1/vms/{id}/logs and /files/tail.
type LogLines struct {
	Source string   `json:"source"`
	Path   string   `json:"path"`
	Lines  []string `json:"lines"`
}

// MetricsRecord is the answer of GET /agent/v1/vms/{id}/metrics: the
// latest line firecracker wrote to the VM's metrics file.
type MetricsRecord struct {
	At     *time.Time      `json:"at,omitempty"`
	Record json.RawMessage `json:"record,omitempty"`
}

// BatchRequest is the body of POST /agent/v1/vms/{id}/proxy-batch: firecracker
// calls to run in order, each through the proxy's checks.
type BatchRequest struct {
	Calls []firecracker.Call `json:"calls"`
}

// BatchResponse says how each call was answered, up to and including the
// first that was not a 2xx.
type BatchResponse struct {
	Results []firecracker.CallResult `json:"results"`
}
