package apitypes

import "time"

// CreateSnapshotRequest is the body of POST /v1/vms/{id}/snapshots.
type CreateSnapshotRequest struct {
	Resume *bool `json:"resume,omitempty" doc:"resume the VM once the snapshot is written (default true); a VM that was paused before stays paused"`
}

// SnapshotFile is one file of a snapshot on its host.
type SnapshotFile struct {
	Path           string `json:"path" doc:"absolute path on the snapshot's host"`
	Size           int64  `json:"size" doc:"apparent size in bytes"`
	AllocatedBytes int64  `json:"allocated_bytes" doc:"bytes the file occupies on disk (the memory file is sparse)"`
}

// SnapshotCreated is the answer of POST /v1/vms/{id}/snapshots.
type SnapshotCreated struct {
	SnapshotID     string         `json:"snapshot_id"`
	Size           int64          `json:"size" doc:"apparent bytes of all files"`
	AllocatedBytes int64          `json:"allocated_bytes" doc:"bytes on disk of all files"`
	Files          []SnapshotFile `json:"files"`
	PausedMs       int64          `json:"paused_ms" doc:"how long the guest was paused for the snapshot"`
	Item           Snapshot       `json:"item" doc:"the snapshot, as GET /v1/snapshots/{id} shows it"`
}

// SnapshotDrive is one drive of the source VM and how the snapshot keeps it.
type SnapshotDrive struct {
	DriveID  string `json:"drive_id"`
	Path     string `json:"path" doc:"path_on_host in the source VM (relative paths are relative to its run dir)"`
	ReadOnly bool   `json:"read_only"`
	Root     bool   `json:"root"`
	Copy     string `json:"copy" doc:"the preserved copy, relative to the snapshot dir; a restored VM gets it under the same name in its own run dir"`
	// Swapped: the source VM used an absolute path, which the state file
	// records; a restore opens it during load and switches the drive to
	// the VM's own copy before the guest runs, so it must still exist.
	Swapped bool `json:"swapped,omitempty" doc:"absolute path in the source: a restore opens it while loading, then switches to the VM's own copy before the guest runs"`
}

// Snapshot is one catalog entry: a paused VM's state, memory and drives
// on its host.
type Snapshot struct {
	ID                 string            `json:"id"`
	VMID               string            `json:"vm_id" doc:"the source VM (it may since have been deleted)"`
	VMName             string            `json:"vm_name"`
	Project            string            `json:"project"`
	HostID             string            `json:"host_id" doc:"snapshots stay on their host; restores run there"`
	Dir                string            `json:"dir"`
	StatePath          string            `json:"state_path"`
	MemPath            string            `json:"mem_path"`
	Size               int64             `json:"size"`
	AllocatedBytes     int64             `json:"allocated_bytes"`
	Files              []SnapshotFile    `json:"files"`
	FirecrackerVersion string            `json:"firecracker_version" doc:"of the VMM that wrote it (GET /version)"`
	SnapshotVersion    string            `json:"snapshot_version" doc:"snapshot format version; a restore needs the same major and no newer minor"`
	MAC                string            `json:"mac,omitempty" doc:"the guest MAC saved in the device state: every VM restored from this snapshot has it"`
	IfaceID            string            `json:"iface_id,omitempty"`
	Config             VMConfig          `json:"config" doc:"the source VM's configuration"`
	Tags               map[string]string `json:"tags"`
	Drives             []SnapshotDrive   `json:"drives"`
	TemplateID         string            `json:"template_id,omitempty"`
	PausedMs           int64             `json:"paused_ms" doc:"how long the guest was paused for the snapshot"`
	CreatedAt          time.Time         `json:"created_at"`
}

// SnapshotItem wraps one snapshot: GET /v1/snapshots/{id} → {item:{…}}.
type SnapshotItem struct {
	Item Snapshot `json:"item"`
}

// SnapshotList is GET /v1/snapshots and GET /v1/vms/{id}/snapshots.
type SnapshotList struct {
	Items []Snapshot `json:"items"`
}

// InstantiateSnapshotRequest is the body of POST
// /v1/snapshots/{id}/instantiate.
type InstantiateSnapshotRequest struct {
	Name    string            `json:"name" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"the new VM's name, unique within the snapshot's project"`
	Tags    map[string]string `json:"tags,omitempty" doc:"default: the source VM's tags"`
	Count   int               `json:"count,omitempty" minimum:"1" maximum:"100" doc:"how many clones (default 1), named name-1 … name-N; all are made or none"`
	Network *NetworkSpec      `json:"network,omitempty" doc:"the clones' network mode is the source's (a snapshot of an isolated VM gives isolated clones, each in its own namespace); another is 409"`
	Expiry
}

// RestoredVM is the answer of POST /v1/snapshots/{id}/instantiate: the
// new VM, running, as {item} like GET /v1/vms/{id} (its fields are also at
// the top level, deprecated), and what the caller must know about it.
type RestoredVM struct {
	VM
	Item       VM       `json:"item"`
	SnapshotID string   `json:"snapshot_id"`
	IDs        []string `json:"ids" doc:"every VM made (count), in name order"`
	Items      []VM     `json:"items" doc:"every VM made (count), in name order"`
	Notices    []string `json:"notices" doc:"constraints of a restored VM (its guest MAC is the snapshot's)"`
}
