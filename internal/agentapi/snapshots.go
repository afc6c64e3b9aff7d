package agentapi

import (
	"context"
	"net/http"
	"net/url"
)

// Snapshot files on a host. A snapshot lives in its source VM's run dir,
// $FC_RUN_DIR/vms/<vm-id>/snapshots/<snap-id>/, and holds firecracker's
// state file (vmstate), its memory file (mem) and a copy of every drive
// the snapshot needs, under the drive's name relative to a VM run dir
// (drives/rootfs.ext4, …). A VM restored from it gets those copies in its
// own run dir under the same names.

// Names of firecracker's two files in a snapshot dir.
const (
	SnapshotStateFile = "vmstate"
	SnapshotMemFile   = "mem"
)

// HeaderProxyTimeout gives one relayed firecracker call (snapshot create
// or load of a large guest) a longer deadline than the proxy's default.
// It is the agent's HeaderTimeout.
const HeaderProxyTimeout = "X-Nexus-Timeout-Ms"

// SnapshotCopy is one drive file to preserve with a snapshot. Src is the
// drive's path_on_host as firecracker has it: relative to the VM's run dir
// (drives/rootfs.ext4), or absolute (a dev-mode raw path). Dst is where
// the copy goes, relative to the snapshot dir.
type SnapshotCopy struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// PrepareSnapshotRequest is the body of POST
// /agent/v1/vms/{id}/snapshots/{sid}: create the snapshot dir and copy the
// drives into it (the VM is paused, so the copies match its memory).
type PrepareSnapshotRequest struct {
	Copies []SnapshotCopy `json:"copies"`
}

// SnapshotPaths is the answer of prepare: where firecracker must write.
type SnapshotPaths struct {
	Dir       string `json:"dir"`
	StatePath string `json:"state_path"`
	MemPath   string `json:"mem_path"`
	// Methods says how each copy was made, by Dst: reflink, sparse, link.
	Methods map[string]string `json:"methods,omitempty"`
}

// SnapshotFile is one file of a snapshot dir.
type SnapshotFile struct {
	Rel  string `json:"rel"`  // relative to the snapshot dir
	Path string `json:"path"` // absolute
	Size int64  `json:"size"` // apparent size
	// Allocated is what the file really occupies on disk (st_blocks ×
	// 512): much less than Size for a sparse memory file.
	Allocated int64 `json:"allocated"`
}

// SnapshotFiles is the answer of GET /agent/v1/vms/{id}/snapshots/{sid}.
type SnapshotFiles struct {
	Dir   string         `json:"dir"`
	Files []SnapshotFile `json:"files"`
}

// RestoreFile is one file of a snapshot dir to put into a new VM's run dir
// under the same relative name. A read-only drive may be hard-linked, a
// writable one is always copied.
type RestoreFile struct {
	Name     string `json:"name"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// RestoreDrivesRequest is the body of POST
// /agent/v1/vms/{id}/restore-drives: copy drive files of snapshot
// SnapshotID of VM SourceVMID into VM {id}'s run dir.
type RestoreDrivesRequest struct {
	SourceVMID string        `json:"source_vm_id"`
	SnapshotID string        `json:"snapshot_id"`
	Files      []RestoreFile `json:"files"`
}

// HostSnapshot is one snapshot dir on a host.
type HostSnapshot struct {
	VMID       string `json:"vm_id"`
	SnapshotID string `json:"snapshot_id"`
	Dir        string `json:"dir"`
}

// HostSnapshots is the answer of GET /agent/v1/snapshots.
type HostSnapshots struct {
	Items []HostSnapshot `json:"items"`
}

func snapPath(vmID, sid string) string {
	return vmPath(vmID, "/snapshots/"+url.PathEscape(sid))
}

// PrepareSnapshot creates the snapshot dir of VM vmID and copies the
// drives into it. On failure nothing of the snapshot dir is left.
func (c *Client) PrepareSnapshot(ctx context.Context, vmID, sid string, req PrepareSnapshotRequest) (SnapshotPaths, error) {
	var r SnapshotPaths
	return r, c.do(ctx, http.MethodPost, snapPath(vmID, sid), req, &r)
}

// SnapshotFiles lists the files of a snapshot dir with their sizes.
func (c *Client) SnapshotFiles(ctx context.Context, vmID, sid string) (SnapshotFiles, error) {
	var r SnapshotFiles
	return r, c.do(ctx, http.MethodGet, snapPath(vmID, sid), nil, &r)
}

// DeleteSnapshot removes a snapshot dir (idempotent). A VM run dir left
// with nothing in it (its VM was deleted) goes too.
func (c *Client) DeleteSnapshot(ctx context.Context, vmID, sid string) error {
	return c.do(ctx, http.MethodDelete, snapPath(vmID, sid), nil, nil)
}

// RestoreDrives copies a snapshot's drive files into VM vmID's run dir.
func (c *Client) RestoreDrives(ctx context.Context, vmID string, req RestoreDrivesRequest) error {
	return c.do(ctx, http.MethodPost, vmPath(vmID, "/restore-drives"), req, nil)
}

// Snapshots lists the snapshot dirs on the host.
func (c *Client) Snapshots(ctx context.Context) (HostSnapshots, error) {
	var r HostSnapshots
	return r, c.do(ctx, http.MethodGet, "/snapshots", nil, &r)
}
