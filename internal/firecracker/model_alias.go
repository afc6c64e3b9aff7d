// This file re-exports package model, so that callers keep writing
// firecracker.X; TestModelReexported fails when model gains a name that is
// missing here.

package firecracker

import "github.com/nexus-microvm/nexus/internal/firecracker/model"

// Types of Firecracker's interface (see package model).
type (
	Args                    = model.Args
	Phase                   = model.Phase
	Endpoint                = model.Endpoint
	InstanceInfo            = model.InstanceInfo
	FirecrackerVersion      = model.FirecrackerVersion
	Error                   = model.Error
	MachineConfig           = model.MachineConfig
	MachineConfigPatch      = model.MachineConfigPatch
	BootSource              = model.BootSource
	TokenBucket             = model.TokenBucket
	RateLimiter             = model.RateLimiter
	Drive                   = model.Drive
	PartialDrive            = model.PartialDrive
	Pmem                    = model.Pmem
	PartialPmem             = model.PartialPmem
	NetworkInterface        = model.NetworkInterface
	PartialNetworkInterface = model.PartialNetworkInterface
	Logger                  = model.Logger
	Metrics                 = model.Metrics
	InstanceActionInfo      = model.InstanceActionInfo
	VM                      = model.VM
	SnapshotCreateParams    = model.SnapshotCreateParams
	MemoryBackend           = model.MemoryBackend
	NetworkOverride         = model.NetworkOverride
	VsockOverride           = model.VsockOverride
	SnapshotLoadParams      = model.SnapshotLoadParams
	Balloon                 = model.Balloon
	BalloonUpdate           = model.BalloonUpdate
	BalloonStatsUpdate      = model.BalloonStatsUpdate
	BalloonStats            = model.BalloonStats
	BalloonStartCmd         = model.BalloonStartCmd
	BalloonHintingStatus    = model.BalloonHintingStatus
	MmdsConfig              = model.MmdsConfig
	Vsock                   = model.Vsock
	EntropyDevice           = model.EntropyDevice
	SerialDevice            = model.SerialDevice
	CPUConfig               = model.CPUConfig
	CpuidLeafModifier       = model.CpuidLeafModifier
	CpuidRegisterModifier   = model.CpuidRegisterModifier
	MsrModifier             = model.MsrModifier
	ArmRegisterModifier     = model.ArmRegisterModifier
	VcpuFeatures            = model.VcpuFeatures
	MemoryHotplugConfig     = model.MemoryHotplugConfig
	MemoryHotplugSizeUpdate = model.MemoryHotplugSizeUpdate
	MemoryHotplugStatus     = model.MemoryHotplugStatus
	FullVMConfig            = model.FullVMConfig
	Version                 = model.Version
	Features                = model.Features
)

// Constants of Firecracker's interface (see package model).
const (
	MaxPayloadSize       = model.MaxPayloadSize
	PhaseAny             = model.PhaseAny
	PhasePre             = model.PhasePre
	PhasePost            = model.PhasePost
	PhasePreOrHotplug    = model.PhasePreOrHotplug
	StateNotStarted      = model.StateNotStarted
	StateRunning         = model.StateRunning
	StatePaused          = model.StatePaused
	ActionInstanceStart  = model.ActionInstanceStart
	ActionFlushMetrics   = model.ActionFlushMetrics
	ActionSendCtrlAltDel = model.ActionSendCtrlAltDel
	VMStatePaused        = model.VMStatePaused
	VMStateResumed       = model.VMStateResumed
	SnapshotFull         = model.SnapshotFull
	SnapshotDiff         = model.SnapshotDiff
	TargetVersion        = model.TargetVersion
	SimSuffix            = model.SimSuffix
	MinVersion           = model.MinVersion
	DefaultBootArgs      = model.DefaultBootArgs
	MaxVcpus             = model.MaxVcpus
	ExitOK               = model.ExitOK
	ExitError            = model.ExitError
	ExitUnexpected       = model.ExitUnexpected
	ExitSeccomp          = model.ExitSeccomp
	ExitBadLevel         = model.ExitBadLevel
	ExitBadArgs          = model.ExitBadArgs
)

// Endpoints lists every endpoint of the Firecracker API (model.Endpoints).
var Endpoints = model.Endpoints

// Bool returns a pointer to b, for the optional fields of the models.
func Bool(b bool) *bool { return model.Bool(b) }

// Int returns a pointer to i, for the optional fields of the models.
func Int(i int) *int { return model.Int(i) }

// ParseVersion is model.ParseVersion.
func ParseVersion(s string) (Version, bool) { return model.ParseVersion(s) }

// FeaturesOf is model.FeaturesOf.
func FeaturesOf(v Version) Features { return model.FeaturesOf(v) }

// ValidInstanceID is model.ValidInstanceID.
func ValidInstanceID(id string) bool { return model.ValidInstanceID(id) }

// ValidID is model.ValidID.
func ValidID(id string) bool { return model.ValidID(id) }

// Lookup is model.Lookup.
func Lookup(method, path string) (Endpoint, string, bool) { return model.Lookup(method, path) }
