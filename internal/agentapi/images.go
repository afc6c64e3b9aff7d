package agentapi

import (
	"context"
	"net/http"
)

// ImageInspectRequest is the body of POST /agent/v1/images/inspect.
type ImageInspectRequest struct {
	// Path is absolute, or relative to the host's FC_IMAGES_DIR. It must
	// resolve (symlinks followed) to a regular file under FC_IMAGES_DIR.
	Path string `json:"path"`
}

// ImageInfo describes an image file on one host: the answer of
// POST /agent/v1/images/inspect.
type ImageInfo struct {
	Path   string `json:"path"` // canonical: absolute, symlinks resolved
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Cached is true when the checksum came from the agent's cache (the
	// file's identity, size, mtime and ctime are unchanged since it was
	// last hashed).
	Cached bool `json:"cached"`
}

// DriveRequest is the body of POST /agent/v1/vms/{id}/drives: make the
// file a drive of the VM opens.
type DriveRequest struct {
	DriveID string `json:"drive_id"` // firecracker drive id; names the copy
	// Source is the absolute host path of the image (or, in dev mode, of
	// the file the user named).
	Source string `json:"source"`
	// SHA256, when set, marks a registered image: Source must lie under
	// FC_IMAGES_DIR and still have this checksum, or the agent answers 409
	// image_changed.
	SHA256 string `json:"sha256,omitempty"`
	// ReadOnly attaches Source itself, read-only, instead of a private copy.
	ReadOnly bool `json:"read_only,omitempty"`
}

// How a drive was prepared (DriveInfo.Method).
const (
	DriveReflink  = "reflink"  // copy-on-write clone (FICLONE)
	DriveSparse   = "sparse"   // byte copy of the data extents, holes kept
	DriveExisting = "existing" // the VM's copy from an earlier boot, reused
	DriveInPlace  = "in_place" // read-only: the source itself
)

// DriveInfo is the answer of POST /agent/v1/vms/{id}/drives.
type DriveInfo struct {
	// Path is what firecracker opens: for a copy, relative to the VM's run
	// dir (firecracker's working directory), so a VM restored elsewhere
	// opens its own copy; for a read-only drive, the canonical source.
	Path     string `json:"path"`
	HostPath string `json:"host_path"` // absolute
	Method   string `json:"method"`
	Size     int64  `json:"size"`
	// Allocated and SourceAllocated are the bytes of disk the file and its
	// source occupy (st_blocks × 512): a sparse copy stays small.
	Allocated       int64 `json:"allocated"`
	SourceAllocated int64 `json:"source_allocated"`
	DurationMs      int64 `json:"duration_ms"`
}

// InspectImage canonicalises and checks an image path on the agent's
// host and returns its size and SHA-256 (computed, or cached).
func (c *Client) InspectImage(ctx context.Context, req ImageInspectRequest) (ImageInfo, error) {
	var r ImageInfo
	return r, c.do(ctx, http.MethodPost, "/images/inspect", req, &r)
}

// PrepareDrive makes a drive file for the VM: a private sparse-aware copy
// in its run dir (reused when it exists), or the source read-only.
func (c *Client) PrepareDrive(ctx context.Context, vmID string, req DriveRequest) (DriveInfo, error) {
	var r DriveInfo
	return r, c.do(ctx, http.MethodPost, vmPath(vmID, "/drives"), req, &r)
}
