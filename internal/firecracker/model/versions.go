package model

import (
	"strconv"
	"strings"
)

// Every difference between Firecracker release lines that Nexus cares about
// lives in this file. Nexus targets the v1.16.x line; main (1.17.0-dev)
// adds a few fields that v1.16 rejects as unknown.

// TargetVersion is the release line Nexus is built and tested against.
const TargetVersion = "1.16.1"

// SimSuffix marks the version string of firecracker-sim, which never
// pretends to be the real thing.
const SimSuffix = "-sim"

// Version is a parsed Firecracker version ("1.16.1", "1.17.0-dev", "1.16.1-sim").
type Version struct {
	Major, Minor, Patch int
	Pre                 string // "dev", "sim", "" …
}

// ParseVersion accepts "v1.16.1", "1.16.1-sim", "Firecracker v1.16.1".
func ParseVersion(s string) (Version, bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "Firecracker ")
	s = strings.TrimPrefix(s, "v")
	var v Version
	core, pre, _ := strings.Cut(s, "-")
	v.Pre = pre
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return Version{}, false
	}
	nums := []*int{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return Version{}, false
		}
		*nums[i] = n
	}
	return v, true
}

func (v Version) String() string {
	s := strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// IsSim reports whether the version is firecracker-sim's.
func (v Version) IsSim() bool { return v.Pre == "sim" || strings.HasSuffix(v.Pre, "sim") }

// MinVersion is the oldest release line the typed client knows; older
// versions are treated as having its features.
const MinVersion = "1.5.0"

// Features is what a given Firecracker version supports, as far as Nexus
// needs to know. Each field names the release that brought it.
type Features struct {
	// SnapshotVersion is the snapshot format the binary writes ("v10.0.0");
	// before v1.7 formats were named after the Firecracker release.
	SnapshotVersion string
	// VhostUserBlock: drives with a vhost-user `socket` (v1.6).
	VhostUserBlock bool
	// HugePages: machine-config huge_pages "2M" (v1.7).
	HugePages bool
	// NetworkOverrides: snapshot load accepts network_overrides, so a
	// restored VM can get its own TAP (v1.12).
	NetworkOverrides bool
	// PCI: the --enable-pci flag (v1.13).
	PCI bool
	// ImdsCompat: mmds-config imds_compat (v1.13).
	ImdsCompat bool
	// LoadTrackDirtyPages: snapshot load takes track_dirty_pages; before
	// v1.13 the field is enable_diff_snapshots (now deprecated).
	LoadTrackDirtyPages bool
	// Serial: PUT /serial (v1.14).
	Serial bool
	// Pmem: virtio-pmem devices, /pmem/{id} (v1.14).
	Pmem bool
	// MemoryHotplug: virtio-mem, /hotplug/memory (v1.14).
	MemoryHotplug bool
	// BalloonHinting: free page hinting and reporting (v1.14).
	BalloonHinting bool
	// CreatesLogFiles: the logger and metrics files are created when
	// missing; before v1.14 they must exist (v1.14).
	CreatesLogFiles bool
	// Hotplug: a PUT of drive/net/pmem after boot is a PCI hotplug and
	// DELETE a hot-unplug (needs --enable-pci); before v1.16 it is "not
	// supported after starting" (v1.16).
	Hotplug bool
	// VsockOverride: snapshot load accepts vsock_override (v1.16).
	VsockOverride bool
	// NetMTU: network-interfaces mtu (v1.16).
	NetMTU bool
	// SerialRateLimiter: PUT /serial rate_limiter (v1.16).
	SerialRateLimiter bool
	// PmemRateLimiter: pmem rate_limiter (v1.16).
	PmemRateLimiter bool
	// ClockRealtime: snapshot load clock_realtime (v1.16).
	ClockRealtime bool
	// MetricsEmitID: PUT /metrics accepts emit_id and properties (main).
	MetricsEmitID bool
	// TransparentHugePages: huge_pages "Transparent" (main).
	TransparentHugePages bool
	// SnapshotLoadHugePages: snapshot load accepts huge_pages (main).
	SnapshotLoadHugePages bool
}

// FeaturesOf returns the features of version v.
func FeaturesOf(v Version) Features {
	f := Features{
		VhostUserBlock:        v.AtLeast(1, 6),
		HugePages:             v.AtLeast(1, 7),
		NetworkOverrides:      v.AtLeast(1, 12),
		PCI:                   v.AtLeast(1, 13),
		ImdsCompat:            v.AtLeast(1, 13),
		LoadTrackDirtyPages:   v.AtLeast(1, 13),
		Serial:                v.AtLeast(1, 14),
		Pmem:                  v.AtLeast(1, 14),
		MemoryHotplug:         v.AtLeast(1, 14),
		BalloonHinting:        v.AtLeast(1, 14),
		CreatesLogFiles:       v.AtLeast(1, 14),
		Hotplug:               v.AtLeast(1, 16),
		VsockOverride:         v.AtLeast(1, 16),
		NetMTU:                v.AtLeast(1, 16),
		SerialRateLimiter:     v.AtLeast(1, 16),
		PmemRateLimiter:       v.AtLeast(1, 16),
		ClockRealtime:         v.AtLeast(1, 16),
		MetricsEmitID:         v.AtLeast(1, 17),
		TransparentHugePages:  v.AtLeast(1, 17),
		SnapshotLoadHugePages: v.AtLeast(1, 17),
	}
	f.SnapshotVersion = snapshotVersionOf(v)
	return f
}

// snapshotVersionOf is the snapshot format each release line writes
// (persist.rs's SNAPSHOT_VERSION).
func snapshotVersionOf(v Version) string {
	switch {
	case v.AtLeast(1, 17):
		return "v11.0.0"
	case v.AtLeast(1, 16):
		return "v10.0.0"
	case v.AtLeast(1, 15):
		return "v9.0.0"
	case v.AtLeast(1, 13):
		return "v8.0.0"
	case v.AtLeast(1, 12):
		return "v6.0.0"
	case v.AtLeast(1, 11):
		return "v5.0.0"
	case v.AtLeast(1, 10) && v.Patch >= 1:
		return "v4.0.0"
	case v.AtLeast(1, 9):
		return "v3.0.0"
	case v.AtLeast(1, 8):
		return "v2.0.0"
	case v.AtLeast(1, 7):
		return "v1.0.0"
	}
	return "v" + strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + ".0"
}

// Exit codes of the firecracker process that callers may want to explain.
const (
	ExitOK         = 0
	ExitError      = 1
	ExitUnexpected = 2
	ExitSeccomp    = 148
	ExitBadLevel   = 152
	ExitBadArgs    = 153
)

// DefaultBootArgs are the kernel arguments firecracker uses when boot_args
// is absent.
const DefaultBootArgs = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"

// MaxVcpus is the largest vcpu_count firecracker accepts.
const MaxVcpus = 32
