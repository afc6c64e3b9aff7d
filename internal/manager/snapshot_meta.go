package manager

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// snapshotMeta is what the catalog keeps of a snapshot beyond its files
// (store.Snapshot.Meta): enough to restore it as a new VM and to boot that
// VM cold later.
type snapshotMeta struct {
	VMName             string           `json:"vm_name"`
	FirecrackerVersion string           `json:"firecracker_version"`
	SnapshotVersion    string           `json:"snapshot_version"`
	Source             snapshotSource   `json:"source"`
	Net                *snapshotNet     `json:"net,omitempty"`
	Drives             []snapshotDrive  `json:"drives"`
	Allocated          int64            `json:"allocated_bytes"`
	FileAllocated      map[string]int64 `json:"file_allocated,omitempty"` // by absolute path
	PausedMs           int64            `json:"paused_ms"`
	// GuestReady: the guest had said it was ready when the snapshot was
	// taken, so a VM restored from it is ready as soon as it runs (a
	// guest does not print the line again).
	GuestReady bool `json:"guest_ready,omitempty"`
}

// snapshotSource is the source VM's configuration when the snapshot was
// taken.
type snapshotSource struct {
	Vcpu           int               `json:"vcpu"`
	MemMib         int               `json:"mem_mib"`
	KernelPath     string            `json:"kernel_path,omitempty"`
	KernelImageID  string            `json:"kernel_image_id,omitempty"`
	InitrdPath     string            `json:"initrd_path,omitempty"`
	InitrdImageID  string            `json:"initrd_image_id,omitempty"`
	RootfsPath     string            `json:"rootfs_path,omitempty"`
	RootfsImageID  string            `json:"rootfs_image_id,omitempty"`
	BootArgs       string            `json:"boot_args,omitempty"`
	Spec           apitypes.VMConfig `json:"spec"`
	Tags           map[string]string `json:"tags,omitempty"`
	TemplateID     string            `json:"template_id,omitempty"`
	TemplateConfig json.RawMessage   `json:"template_config,omitempty"`
	Overrides      json.RawMessage   `json:"overrides,omitempty"`
	// IP is the source's address: the guest keeps it in the saved state.
	IP string `json:"ip,omitempty"`
}

// snapshotNet is the network interface saved in the device state. Its
// guest MAC cannot change on restore.
type snapshotNet struct {
	IfaceID  string `json:"iface_id"`
	GuestMAC string `json:"guest_mac"`
	TAP      string `json:"tap"` // the source's, which a restore overrides
}

// snapshotDrive is one drive of the source and how the snapshot keeps it:
//
//   - a relative path (a private copy in the source's run dir) is copied
//     into the snapshot dir under the same name; a restore copies it into
//     the new VM's run dir under that name, and firecracker, which reopens
//     drives at the paths in the state file relative to its working
//     directory (the VM's run dir), opens the new VM's own copy;
//   - an absolute writable path (a dev-mode raw path the source writes in
//     place) is copied into the snapshot as drives/<id><ext>; the state
//     file still names the absolute path, so a restore loads paused, then
//     switches the drive to the new VM's copy before the guest runs;
//   - an absolute read-only path (an image attached in place) is shared:
//     no VM writes it.
type snapshotDrive struct {
	DriveID  string `json:"drive_id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
	Root     bool   `json:"root,omitempty"`
	Copy     string `json:"copy,omitempty"`
	Swapped  bool   `json:"swapped,omitempty"`
}

// reservedDriveNames may not be a relative drive path: they are the
// agent's files in a run dir and firecracker's files in a snapshot dir.
var reservedDriveNames = []string{"sock", "logs", "snapshots", "metrics.json", "vmm.json", "vmstate", "mem"}

// safeDriveExt mirrors the agent's naming of private drive copies:
// drives/<drive id><source extension>.
var safeDriveExt = regexp.MustCompile(`^\.[A-Za-z0-9]{1,10}$`)

func driveCopyName(driveID, source string) string {
	ext := filepath.Ext(source)
	if !safeDriveExt.MatchString(ext) {
		ext = ".img"
	}
	return filepath.Join("drives", driveID+ext)
}

// planDrives decides how the snapshot keeps each of the VM's drives, as
// firecracker reports them (GET /vm/config). A drive it cannot keep is a
// conflict that names the drive.
func planDrives(vm store.VM, drives []firecracker.Drive) ([]snapshotDrive, error) {
	used := map[string]bool{}
	for _, d := range drives {
		if d.PathOnHost != "" && !filepath.IsAbs(d.PathOnHost) {
			used[d.PathOnHost] = true
		}
	}
	out := make([]snapshotDrive, 0, len(drives))
	for _, d := range drives {
		if d.Socket != "" || d.PathOnHost == "" {
			return nil, conflict("vm_not_snapshottable", "vm %s (%s): drive %s is a vhost-user drive; its backend cannot be preserved with a snapshot", vm.ID, vm.Name, d.DriveID)
		}
		sd := snapshotDrive{DriveID: d.DriveID, Path: d.PathOnHost, ReadOnly: d.IsReadOnly != nil && *d.IsReadOnly, Root: d.IsRootDevice}
		switch {
		case !filepath.IsAbs(d.PathOnHost):
			first, _, _ := strings.Cut(d.PathOnHost, "/")
			if !filepath.IsLocal(d.PathOnHost) || filepath.Clean(d.PathOnHost) != d.PathOnHost || slices.Contains(reservedDriveNames, first) {
				return nil, conflict("vm_not_snapshottable", "vm %s (%s): drive %s path %q is not a plain file name inside the VM's run dir", vm.ID, vm.Name, d.DriveID, d.PathOnHost)
			}
			sd.Copy = d.PathOnHost
		case !sd.ReadOnly:
			name := driveCopyName(d.DriveID, d.PathOnHost)
			for n := 2; used[name]; n++ {
				name = driveCopyName(d.DriveID+"_"+strconv.Itoa(n), d.PathOnHost)
			}
			used[name] = true
			sd.Copy, sd.Swapped = name, true
		}
		out = append(out, sd)
	}
	return out, nil
}

// snapshotCompatible reports whether a firecracker that writes format
// binary can load a snapshot of format file: same major, file minor not
// newer.
func snapshotCompatible(file, binary string) bool {
	f, ok1 := firecracker.ParseVersion(file)
	b, ok2 := firecracker.ParseVersion(binary)
	return ok1 && ok2 && f.Major == b.Major && f.Minor <= b.Minor
}

// restoredConfig is how a VM restored from the snapshot boots cold (a
// start after a stop): the source's kernel and boot args, and its own
// copies of the writable drives (relative to its run dir). Shared
// read-only drives keep their paths and image ids.
func restoredConfig(m snapshotMeta) (rootfsPath, rootfsImageID string, cfg apitypes.VMConfig) {
	cfg = m.Source.Spec
	cfg.Vcpu, cfg.MemMib = firecracker.Int(m.Source.Vcpu), firecracker.Int(m.Source.MemMib)
	cfg.ExtraDrives = slices.Clone(cfg.ExtraDrives)
	rootfsPath, rootfsImageID = m.Source.RootfsPath, m.Source.RootfsImageID
	byID := map[string]snapshotDrive{}
	for _, d := range m.Drives {
		byID[d.DriveID] = d
		if d.Root && d.Copy != "" {
			rootfsPath, rootfsImageID = d.Copy, ""
			cfg.RootfsPath, cfg.RootfsImageID = d.Copy, ""
		}
	}
	for i, ed := range cfg.ExtraDrives {
		if d, ok := byID[ed.DriveID]; ok && d.Copy != "" {
			cfg.ExtraDrives[i].Path, cfg.ExtraDrives[i].ImageID = d.Copy, ""
		}
	}
	return rootfsPath, rootfsImageID, cfg
}

// restoreNotices are the constraints a restored VM's user must know.
func restoreNotices(sn store.Snapshot, m snapshotMeta) []string {
	var out []string
	if m.Net != nil && netMode(spec{VMConfig: m.Source.Spec}) == ModeIsolated {
		out = append(out, fmt.Sprintf("the guest MAC %s and address %s are the snapshot's (vm %s) in every clone; each clone runs in a network namespace of its own "+
			"and is reached at its own address (network.address), so clones do not collide", m.Net.GuestMAC, IsolatedGuest, sn.VMID))
	} else if m.Net != nil {
		addr := "guest network configuration"
		if m.Source.IP != "" {
			addr = "guest address " + m.Source.IP
		}
		out = append(out, fmt.Sprintf("the guest MAC %s is the snapshot's (vm %s): firecracker restores it with the saved device state and cannot change it, "+
			"so every VM restored from this snapshot, and the source VM, show the same MAC and %s on the bridge; "+
			"give each clone its own address inside the guest before they talk on the same network. A stop and start boots cold with the VM's own MAC and address (ip)",
			m.Net.GuestMAC, sn.VMID, addr))
	}
	for _, d := range m.Drives {
		if d.Swapped {
			out = append(out, fmt.Sprintf("drive %s of the source used the absolute path %s: the restore opened it read-only while loading and switched the drive to this VM's own copy %s before the guest ran", d.DriveID, d.Path, d.Copy))
		}
	}
	return out
}

func decodeSnapshotMeta(sn store.Snapshot) (snapshotMeta, error) {
	var m snapshotMeta
	if len(sn.Meta) > 0 {
		if err := json.Unmarshal(sn.Meta, &m); err != nil {
			return m, fmt.Errorf("snapshot %s: decode catalog entry: %w", sn.ID, err)
		}
	}
	return m, nil
}

// SnapshotView renders a catalog entry for the API.
func SnapshotView(sn store.Snapshot) apitypes.Snapshot {
	m, _ := decodeSnapshotMeta(sn)
	v := apitypes.Snapshot{
		ID: sn.ID, VMID: sn.VMID, VMName: m.VMName, Project: sn.Project, HostID: sn.HostID,
		Dir: sn.Dir, StatePath: sn.StatePath, MemPath: sn.MemPath, Size: sn.Size, AllocatedBytes: m.Allocated,
		Files: make([]apitypes.SnapshotFile, 0, len(sn.Files)), FirecrackerVersion: m.FirecrackerVersion,
		SnapshotVersion: m.SnapshotVersion, Tags: maps.Clone(m.Source.Tags), TemplateID: m.Source.TemplateID,
		Drives: make([]apitypes.SnapshotDrive, 0, len(m.Drives)), PausedMs: m.PausedMs, CreatedAt: sn.CreatedAt,
	}
	if v.Tags == nil {
		v.Tags = map[string]string{}
	}
	for _, f := range sn.Files {
		v.Files = append(v.Files, apitypes.SnapshotFile{Path: f.Path, Size: f.Size, AllocatedBytes: m.FileAllocated[f.Path]})
	}
	if m.Net != nil {
		v.MAC, v.IfaceID = m.Net.GuestMAC, m.Net.IfaceID
	}
	v.Config = m.Source.Spec
	v.Config.Vcpu, v.Config.MemMib = firecracker.Int(m.Source.Vcpu), firecracker.Int(m.Source.MemMib)
	v.Config.KernelPath, v.Config.KernelImageID = m.Source.KernelPath, m.Source.KernelImageID
	v.Config.InitrdPath, v.Config.InitrdImageID = m.Source.InitrdPath, m.Source.InitrdImageID
	v.Config.RootfsPath, v.Config.RootfsImageID = m.Source.RootfsPath, m.Source.RootfsImageID
	v.Config.BootArgs = m.Source.BootArgs
	for _, d := range m.Drives {
		v.Drives = append(v.Drives, apitypes.SnapshotDrive{DriveID: d.DriveID, Path: d.Path, ReadOnly: d.ReadOnly, Root: d.Root, Copy: d.Copy, Swapped: d.Swapped})
	}
	return v
}

// snapshotTimeout bounds one snapshot create or restore: firecracker
// writes or maps the whole guest memory.
func snapshotTimeout(memMib int) time.Duration {
	return min(time.Minute+time.Duration(memMib)*20*time.Millisecond, 10*time.Minute)
}

// snapshotSuggestion says what to do about a firecracker refusal during a
// snapshot step.
func snapshotSuggestion(fault string) string {
	f := strings.ToLower(fault)
	switch {
	case strings.Contains(f, "crc") || strings.Contains(f, "magic") || strings.Contains(f, "deserializ") || strings.Contains(f, "format version"):
		return "the snapshot's state file is damaged or from an incompatible firecracker; delete the snapshot and take a new one"
	case strings.Contains(f, "memory"):
		return "the snapshot's memory file is missing, truncated or unwritable; check free space in FC_RUN_DIR, or delete the snapshot and take a new one"
	case strings.Contains(f, "no such file"):
		return "a file the snapshot needs is gone from the host (a drive with an absolute path must still exist at restore); delete the snapshot and take a new one"
	case strings.Contains(f, "too large") || strings.Contains(f, "no space"):
		return "the host ran out of space or hit a file size limit writing the snapshot; free space in FC_RUN_DIR and retry"
	case strings.Contains(f, "tap") || strings.Contains(f, "network"):
		return "the restored VM's TAP could not be opened; retry the restore"
	}
	return "see the VM's firecracker log: nexus vm logs <vm>"
}
