// Package hostlayout is the agent's host layout from DESIGN.md section 1:
// where a VM's socket, logs, metrics and snapshots live under FC_RUN_DIR,
// and how a VM's TAP name and guest MAC derive from its id. Agent and
// manager both use it so they can never disagree.
package hostlayout

import (
	"crypto/sha256"
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

// TapPrefix starts the name of every TAP the agent creates.
const TapPrefix = "tap-"

// Layout resolves paths under one run dir.
type Layout struct {
	RunDir string // FC_RUN_DIR, absolute
}

// VMsDir holds one directory per VM.
func (l Layout) VMsDir() string { return filepath.Join(l.RunDir, "vms") }

// VMDir is the VM's run dir.
func (l Layout) VMDir(id string) string { return filepath.Join(l.VMsDir(), id) }

// SockDir holds the VM's API socket; ?sock= must resolve inside it.
func (l Layout) SockDir(id string) string { return filepath.Join(l.VMDir(id), "sock") }

// SockPath is the firecracker API socket.
func (l Layout) SockPath(id string) string { return filepath.Join(l.SockDir(id), "fc.sock") }

// LogsDir holds fc.log and console.log.
func (l Layout) LogsDir(id string) string { return filepath.Join(l.VMDir(id), "logs") }

// LogRel and MetricsRel are fc.log and metrics.json relative to the VM's
// run dir, which is firecracker's working directory (the root of its
// jail, when jailed): the manager names them so in the calls it sends
// with the spawn, before the agent has said where the run dir is.
const (
	LogRel     = "logs/fc.log"
	MetricsRel = "metrics.json"
)

// LogPath is firecracker's logger output.
func (l Layout) LogPath(id string) string { return filepath.Join(l.VMDir(id), LogRel) }

// ConsolePath is the guest serial console (firecracker's stdout).
func (l Layout) ConsolePath(id string) string { return filepath.Join(l.LogsDir(id), "console.log") }

// MetricsPath is firecracker's metrics output (JSON lines).
func (l Layout) MetricsPath(id string) string { return filepath.Join(l.VMDir(id), MetricsRel) }

// SnapshotsDir holds the VM's snapshots.
func (l Layout) SnapshotsDir(id string) string { return filepath.Join(l.VMDir(id), "snapshots") }

// SnapshotDir holds one snapshot's vmstate and mem files.
func (l Layout) SnapshotDir(id, snapID string) string {
	return filepath.Join(l.SnapshotsDir(id), snapID)
}

// ImagesDir is the default FC_IMAGES_DIR.
func (l Layout) ImagesDir() string { return filepath.Join(l.RunDir, "images") }

// NetNSPath is where an isolated VM's network namespace is bind-mounted:
// inside its run dir, so it is the agent's by location and goes with it.
func (l Layout) NetNSPath(id string) string { return filepath.Join(l.VMDir(id), "netns") }

// VethPrefix starts the host side of an isolated VM's veth pair.
const VethPrefix = "vh-"

// VethName is the host side of an isolated VM's veth pair: "vh-" + the
// first 11 hex characters of the VM id, like its TAP's name.
func VethName(vmID string) string { return VethPrefix + strings.TrimPrefix(TapName(vmID), TapPrefix) }

// TapName is "tap-" + the first 11 hex characters of the VM id (Linux
// interface names are at most 15 bytes). Dashes of a UUID are skipped.
func TapName(vmID string) string {
	hex := strings.Map(func(r rune) rune {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f':
			return r
		case r >= 'A' && r <= 'F':
			return r + ('a' - 'A')
		}
		return -1
	}, vmID)
	if len(hex) > 11 {
		hex = hex[:11]
	}
	return TapPrefix + hex
}

// GuestMAC is a locally administered unicast MAC derived from the VM id:
// stable across restarts, distinct for distinct ids with high probability.
func GuestMAC(vmID string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(vmID))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac
}

// ValidVMID reports whether id is a VM id: a UUID in canonical lower-case
// form. That makes it safe as a path element and a firecracker --id, and
// keeps TAP names (its first 11 hex digits) distinct.
func ValidVMID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, r := range id {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
				return false
			}
		}
	}
	return true
}

// String describes the layout for logs.
func (l Layout) String() string { return fmt.Sprintf("run dir %s", l.RunDir) }
