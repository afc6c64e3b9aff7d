package firecracker

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

// Features is what a given Firecracker version supports, as far as Nexus
// needs to know.
type Features struct {
	// SnapshotVersion is the snapshot format the binary writes.
	SnapshotVersion string
	// Hotplug: a PUT of drive/net/pmem after boot is a PCI hotplug (needs
	// --enable-pci); before v1.16 it is "not supported after starting".
	Hotplug bool
	// NetworkOverrides: snapshot load accepts network_overrides, so a
	// restored VM can get its own TAP.
	NetworkOverrides bool
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
		Hotplug:          v.AtLeast(1, 16),
		NetworkOverrides: v.AtLeast(1, 12),
	}
	switch {
	case v.AtLeast(1, 17):
		f.SnapshotVersion = "v11.0.0"
		f.MetricsEmitID = true
		f.TransparentHugePages = true
		f.SnapshotLoadHugePages = true
	case v.AtLeast(1, 16):
		f.SnapshotVersion = "v10.0.0"
	case v.AtLeast(1, 15):
		f.SnapshotVersion = "v9.0.0"
	default:
		f.SnapshotVersion = "v8.0.0"
	}
	return f
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
