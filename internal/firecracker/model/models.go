// Package model is Firecracker's external interface without a transport:
// the JSON models of every API endpoint (from the OpenAPI file
// src/firecracker/swagger/firecracker.yaml), the command-line flags of the
// firecracker binary, the endpoint table and the differences between
// release lines. Package firecracker re-exports all of it next to its
// typed client; firecracker-sim imports this package alone, so that its
// binary carries no HTTP client, TLS or crypto code (startup time and
// memory per simulated VM).
//
// It imports only the standard library's strings and strconv.
package model

// Instance states reported by GET /.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// Action types for PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionFlushMetrics   = "FlushMetrics"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
)

// VM states for PATCH /vm.
const (
	VMStatePaused  = "Paused"
	VMStateResumed = "Resumed"
)

// Snapshot types for PUT /snapshot/create.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// FirecrackerVersion is the answer of GET /version.
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// Error is Firecracker's error body.
type Error struct {
	FaultMessage string `json:"fault_message"`
}

// MachineConfig is the body of PUT /machine-config and the answer of GET.
// Optional fields omitted on PUT are reset to their defaults by firecracker.
type MachineConfig struct {
	VcpuCount       int    `json:"vcpu_count"`
	MemSizeMib      int    `json:"mem_size_mib"`
	Smt             *bool  `json:"smt,omitempty"`
	TrackDirtyPages *bool  `json:"track_dirty_pages,omitempty"`
	HugePages       string `json:"huge_pages,omitempty"`
	CPUTemplate     string `json:"cpu_template,omitempty"` // deprecated upstream
}

// MachineConfigPatch is the body of PATCH /machine-config: any subset.
type MachineConfigPatch struct {
	VcpuCount       *int    `json:"vcpu_count,omitempty"`
	MemSizeMib      *int    `json:"mem_size_mib,omitempty"`
	Smt             *bool   `json:"smt,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// TokenBucket is one bucket of a rate limiter. Size 0 means unlimited.
type TokenBucket struct {
	Size         int64  `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64  `json:"refill_time"` // milliseconds
}

// RateLimiter limits bandwidth (bytes) and ops independently.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string       `json:"drive_id"`
	PartUUID     string       `json:"partuuid,omitempty"`
	IsRootDevice bool         `json:"is_root_device"`
	CacheType    string       `json:"cache_type,omitempty"` // Unsafe | Writeback
	IsReadOnly   *bool        `json:"is_read_only,omitempty"`
	PathOnHost   string       `json:"path_on_host,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
	IOEngine     string       `json:"io_engine,omitempty"` // Sync | Async
	Socket       string       `json:"socket,omitempty"`    // vhost-user-block
}

// PartialDrive is the body of PATCH /drives/{drive_id}.
type PartialDrive struct {
	DriveID     string       `json:"drive_id"`
	PathOnHost  string       `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Pmem is the body of PUT /pmem/{id}.
type Pmem struct {
	ID          string       `json:"id"`
	PathOnHost  string       `json:"path_on_host"`
	RootDevice  bool         `json:"root_device,omitempty"`
	ReadOnly    bool         `json:"read_only,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// PartialPmem is the body of PATCH /pmem/{id}.
type PartialPmem struct {
	ID          string       `json:"id"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	MTU           *int         `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// PartialNetworkInterface is the body of PATCH /network-interfaces/{iface_id}.
type PartialNetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Logger is the body of PUT /logger. Level is case-insensitive:
// Error, Warning (or Warn), Info, Debug, Trace, Off.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     *bool  `json:"show_level,omitempty"`
	ShowLogOrigin *bool  `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics. EmitID and Properties exist on
// main only (see versions.go); leave them empty for v1.16.
type Metrics struct {
	MetricsPath string            `json:"metrics_path"`
	EmitID      *bool             `json:"emit_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
}

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// VM is the body of PATCH /vm.
type VM struct {
	State string `json:"state"`
}

// SnapshotCreateParams is the body of PUT /snapshot/create.
type SnapshotCreateParams struct {
	MemFilePath  string `json:"mem_file_path"`
	SnapshotPath string `json:"snapshot_path"`
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// MemoryBackend says where a snapshot's guest memory comes from.
type MemoryBackend struct {
	BackendType string `json:"backend_type"` // File | Uffd
	BackendPath string `json:"backend_path"`
}

// NetworkOverride changes an interface's TAP on snapshot load.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride changes the vsock UDS path on snapshot load.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load. Exactly one of
// MemBackend and MemFilePath (deprecated) must be set.
type SnapshotLoadParams struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemFilePath         string            `json:"mem_file_path,omitempty"`
	MemBackend          *MemoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages     *bool             `json:"track_dirty_pages,omitempty"`
	EnableDiffSnapshots *bool             `json:"enable_diff_snapshots,omitempty"` // deprecated alias
	ResumeVM            *bool             `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime       *bool             `json:"clock_realtime,omitempty"`
	HugePages           string            `json:"huge_pages,omitempty"` // main only
}

// Balloon is the body of PUT /balloon and the answer of GET /balloon.
type Balloon struct {
	AmountMib             int   `json:"amount_mib"`
	DeflateOnOOM          bool  `json:"deflate_on_oom"`
	StatsPollingIntervalS *int  `json:"stats_polling_interval_s,omitempty"`
	FreePageHinting       *bool `json:"free_page_hinting,omitempty"`
	FreePageReporting     *bool `json:"free_page_reporting,omitempty"`
}

// BalloonUpdate is the body of PATCH /balloon.
type BalloonUpdate struct {
	AmountMib int `json:"amount_mib"`
}

// BalloonStatsUpdate is the body of PATCH /balloon/statistics.
type BalloonStatsUpdate struct {
	StatsPollingIntervalS int `json:"stats_polling_interval_s"`
}

// BalloonStats is the answer of GET /balloon/statistics.
type BalloonStats struct {
	TargetPages        int    `json:"target_pages"`
	ActualPages        int    `json:"actual_pages"`
	TargetMib          int    `json:"target_mib"`
	ActualMib          int    `json:"actual_mib"`
	SwapIn             *int64 `json:"swap_in,omitempty"`
	SwapOut            *int64 `json:"swap_out,omitempty"`
	MajorFaults        *int64 `json:"major_faults,omitempty"`
	MinorFaults        *int64 `json:"minor_faults,omitempty"`
	FreeMemory         *int64 `json:"free_memory,omitempty"`
	TotalMemory        *int64 `json:"total_memory,omitempty"`
	AvailableMemory    *int64 `json:"available_memory,omitempty"`
	DiskCaches         *int64 `json:"disk_caches,omitempty"`
	HugetlbAllocations *int64 `json:"hugetlb_allocations,omitempty"`
	HugetlbFailures    *int64 `json:"hugetlb_failures,omitempty"`
	OOMKill            *int64 `json:"oom_kill,omitempty"`
	AllocStall         *int64 `json:"alloc_stall,omitempty"`
	AsyncScan          *int64 `json:"async_scan,omitempty"`
	DirectScan         *int64 `json:"direct_scan,omitempty"`
	AsyncReclaim       *int64 `json:"async_reclaim,omitempty"`
	DirectReclaim      *int64 `json:"direct_reclaim,omitempty"`
}

// BalloonStartCmd is the body of PATCH /balloon/hinting/start.
type BalloonStartCmd struct {
	AcknowledgeOnStop *bool `json:"acknowledge_on_stop,omitempty"`
}

// BalloonHintingStatus is the answer of GET /balloon/hinting/status.
type BalloonHintingStatus struct {
	HostCmd  int  `json:"host_cmd"`
	GuestCmd *int `json:"guest_cmd,omitempty"`
}

// MmdsConfig is the body of PUT /mmds/config.
type MmdsConfig struct {
	Version           string   `json:"version,omitempty"` // V1 | V2
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       string   `json:"ipv4_address,omitempty"`
	ImdsCompat        *bool    `json:"imds_compat,omitempty"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
	VsockID  string `json:"vsock_id,omitempty"` // deprecated
}

// EntropyDevice is the body of PUT /entropy.
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// SerialDevice is the body of PUT /serial.
type SerialDevice struct {
	SerialOutPath string       `json:"serial_out_path,omitempty"`
	RateLimiter   *TokenBucket `json:"rate_limiter,omitempty"`
}

// CPUConfig is the body of PUT /cpu-config (a custom CPU template).
type CPUConfig struct {
	KvmCapabilities []string              `json:"kvm_capabilities,omitempty"`
	CpuidModifiers  []CpuidLeafModifier   `json:"cpuid_modifiers,omitempty"`
	MsrModifiers    []MsrModifier         `json:"msr_modifiers,omitempty"`
	RegModifiers    []ArmRegisterModifier `json:"reg_modifiers,omitempty"`
	VcpuFeatures    []VcpuFeatures        `json:"vcpu_features,omitempty"`
}

// CpuidLeafModifier modifies one CPUID leaf/subleaf (x86_64).
type CpuidLeafModifier struct {
	Leaf      string                  `json:"leaf"`
	Subleaf   string                  `json:"subleaf"`
	Flags     int32                   `json:"flags"`
	Modifiers []CpuidRegisterModifier `json:"modifiers"`
}

// CpuidRegisterModifier modifies one register of a CPUID leaf.
type CpuidRegisterModifier struct {
	Register string `json:"register"` // eax | ebx | ecx | edx
	Bitmap   string `json:"bitmap"`
}

// MsrModifier modifies one model-specific register (x86_64).
type MsrModifier struct {
	Addr   string `json:"addr"`
	Bitmap string `json:"bitmap"`
}

// ArmRegisterModifier modifies one ARM register (aarch64).
type ArmRegisterModifier struct {
	Addr   string `json:"addr"`
	Bitmap string `json:"bitmap"`
}

// VcpuFeatures modifies kvm_vcpu_init.features (aarch64).
type VcpuFeatures struct {
	Index  int32  `json:"index"`
	Bitmap string `json:"bitmap"`
}

// MemoryHotplugConfig is the body of PUT /hotplug/memory.
type MemoryHotplugConfig struct {
	TotalSizeMib *int `json:"total_size_mib,omitempty"`
	SlotSizeMib  *int `json:"slot_size_mib,omitempty"`
	BlockSizeMib *int `json:"block_size_mib,omitempty"`
}

// MemoryHotplugSizeUpdate is the body of PATCH /hotplug/memory.
type MemoryHotplugSizeUpdate struct {
	RequestedSizeMib *int `json:"requested_size_mib,omitempty"`
}

// MemoryHotplugStatus is the answer of GET /hotplug/memory.
type MemoryHotplugStatus struct {
	TotalSizeMib     int `json:"total_size_mib"`
	SlotSizeMib      int `json:"slot_size_mib"`
	BlockSizeMib     int `json:"block_size_mib"`
	PluggedSizeMib   int `json:"plugged_size_mib"`
	RequestedSizeMib int `json:"requested_size_mib"`
}

// FullVMConfig is the answer of GET /vm/config and the format of the file
// given to --config-file (kebab-case top-level keys).
type FullVMConfig struct {
	Balloon           *Balloon             `json:"balloon,omitempty"`
	Drives            []Drive              `json:"drives"`
	BootSource        *BootSource          `json:"boot-source,omitempty"`
	CPUConfig         *CPUConfig           `json:"cpu-config,omitempty"`
	Logger            *Logger              `json:"logger,omitempty"`
	MachineConfig     *MachineConfig       `json:"machine-config,omitempty"`
	Metrics           *Metrics             `json:"metrics,omitempty"`
	MemoryHotplug     *MemoryHotplugConfig `json:"memory-hotplug,omitempty"`
	MmdsConfig        *MmdsConfig          `json:"mmds-config,omitempty"`
	NetworkInterfaces []NetworkInterface   `json:"network-interfaces,omitempty"`
	Pmem              []Pmem               `json:"pmem,omitempty"`
	Vsock             *Vsock               `json:"vsock,omitempty"`
	Entropy           *EntropyDevice       `json:"entropy,omitempty"`
}

// Bool returns a pointer to b, for the optional fields above.
func Bool(b bool) *bool { return &b }

// Int returns a pointer to i, for the optional fields above.
func Int(i int) *int { return &i }
