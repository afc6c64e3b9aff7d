package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

// drivesDir holds a VM's private drive copies, inside its run dir.
// Firecracker is given paths relative to the run dir (its working
// directory), so a VM restored from a snapshot into another run dir opens
// its own copies.
const drivesDir = "drives"

// vmImageRoutes adds per-VM routes for preparing image-backed drives.
func (a *Agent) vmImageRoutes(r chi.Router) {
	r.Post("/drives", a.vm(a.prepareDrive))
}

// imageRoutes adds host-level image routes (checksums, file checks).
func (a *Agent) imageRoutes(r chi.Router) {
	r.Post("/images/inspect", a.inspectImage)
}

// imagesDir is FC_IMAGES_DIR (default $FC_RUN_DIR/images), absolute.
func (a *Agent) imagesDir() string {
	d := a.cfg.ImagesDir
	if d == "" {
		d = a.cfg.Layout.ImagesDir()
	}
	if abs, err := filepath.Abs(d); err == nil {
		d = abs
	}
	return d
}

// inspectImage canonicalises a path under FC_IMAGES_DIR and reports the
// file's size and SHA-256: what the manager records when an image is
// registered, and checks again before a VM boots from it.
func (a *Agent) inspectImage(w http.ResponseWriter, r *http.Request) {
	var req agentapi.ImageInspectRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	dir := a.imagesDir()
	p := req.Path
	if p != "" && !filepath.IsAbs(p) {
		if err := checkLexical("/"+p, "host_path"); err != nil {
			a.fail(w, r, err)
			return
		}
		p = filepath.Join(dir, p)
	}
	f, real, fi, err := openBeneath(p, []string{dir}, "host_path")
	if err != nil {
		a.fail(w, r, imagesDirHint(err, dir))
		return
	}
	defer f.Close()
	sum, cached, err := a.sums.sum(r.Context(), real, f, fi)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, agentapi.ImageInfo{Path: real, Size: fi.Size(), SHA256: sum, Cached: cached})
}

// imagesDirHint adds where image files belong to a refusal.
func imagesDirHint(err error, dir string) error {
	var e *apierr.Error
	if errors.As(err, &e) && e.Status < 500 && e.Suggestion == "" {
		return e.WithSuggestion(fmt.Sprintf("put the file under this host's FC_IMAGES_DIR (%s) and name it by its path there", dir))
	}
	return err
}

var safeExt = regexp.MustCompile(`^\.[A-Za-z0-9]{1,10}$`)

// driveFile names a VM's copy of a drive: the drive id and the source's
// extension (rootfs.ext4).
func driveFile(driveID, source string) string {
	ext := filepath.Ext(source)
	if !safeExt.MatchString(ext) {
		ext = ".img"
	}
	return driveID + ext
}

// prepareDrive makes the file a VM's drive opens: a private copy of the
// source in the VM's run dir (reflink or sparse copy, reused on later
// boots so the guest's writes survive a restart), or, read-only, the
// source itself. A registered image (sha256 given) must lie under
// FC_IMAGES_DIR and still have its checksum.
func (a *Agent) prepareDrive(w http.ResponseWriter, r *http.Request, id string) {
	start := time.Now()
	var req agentapi.DriveRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if !firecracker.ValidID(req.DriveID) {
		a.fail(w, r, apierr.BadRequest("drive_id %q: use letters, digits and _", req.DriveID))
		return
	}
	// Drives are prepared before the VMM is spawned (its configuration
	// goes with the spawn): the run dir may not exist yet. A copy makes
	// it; a refusal leaves none.
	vmDir := a.cfg.Layout.VMDir(id)
	file := driveFile(req.DriveID, req.Source)
	rel := filepath.Join(drivesDir, file)
	dst := filepath.Join(vmDir, rel)
	if !req.ReadOnly {
		// An earlier boot's copy holds the guest's writes: keep it.
		if fi, err := os.Lstat(dst); err == nil && fi.Mode().IsRegular() {
			writeJSON(w, http.StatusOK, agentapi.DriveInfo{Path: rel, HostPath: dst, Method: agentapi.DriveExisting,
				Size: fi.Size(), Allocated: DiskUsage(fi), DurationMs: time.Since(start).Milliseconds()})
			return
		}
	}

	roots := a.cfg.ReadRoots
	if req.SHA256 != "" {
		roots = []string{a.imagesDir()}
	}
	src, real, sfi, err := openBeneath(req.Source, roots, "drive "+req.DriveID+" source")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	defer src.Close()
	if within(canonical(a.cfg.Layout.VMsDir()), real) {
		a.fail(w, r, apierr.Newf(http.StatusForbidden, "path_not_allowed", "drive %s source %q lies in a VM run dir", req.DriveID, req.Source).
			WithSuggestion("a drive's source must be an image, not another VM's file"))
		return
	}
	if req.SHA256 != "" {
		sum, _, err := a.sums.sum(r.Context(), real, src, sfi)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if sum != req.SHA256 {
			a.fail(w, r, apierr.Newf(http.StatusConflict, "image_changed",
				"image file %s changed after it was registered: its sha256 is now %s, the registry has %s", real, sum, req.SHA256).
				WithSuggestion("registered images are immutable: restore the original file, or register the new one under another name and use that"))
			return
		}
	}
	info := agentapi.DriveInfo{Size: sfi.Size(), SourceAllocated: DiskUsage(sfi)}
	if req.ReadOnly {
		info.Path, info.HostPath, info.Method, info.Allocated = real, real, agentapi.DriveInPlace, DiskUsage(sfi)
		info.DurationMs = time.Since(start).Milliseconds()
		writeJSON(w, http.StatusOK, info)
		return
	}
	// The copy is the VM's disk: it must complete even if the caller gives up.
	method, dfi, err := copyDrive(context.WithoutCancel(r.Context()), dst, src, sfi.Size())
	if err != nil {
		a.fail(w, r, apierr.Newf(http.StatusInternalServerError, "copy_failed", "copy drive %s of vm %s from %s: %v", req.DriveID, id, real, err).
			WithSuggestion("check free space in FC_RUN_DIR on this host").WithCause(err))
		return
	}
	info.Path, info.HostPath, info.Method, info.Allocated = rel, dst, method, DiskUsage(dfi)
	info.DurationMs = time.Since(start).Milliseconds()
	a.log.Info("drive prepared", "request_id", httpmw.RequestID(r.Context()), "vm_id", id, "drive_id", req.DriveID,
		"source", real, "method", method, "size", info.Size, "allocated", info.Allocated, "ms", info.DurationMs)
	writeJSON(w, http.StatusOK, info)
}

// copyDrive copies src into a temporary file next to dst and renames it
// into place once complete and synced: dst exists only as a whole copy.
func copyDrive(ctx context.Context, dst string, src *os.File, size int64) (string, os.FileInfo, error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return "", nil, err
	}
	m, fi, err := copyFrom(ctx, dst, src, size, 0o600)
	return string(m), fi, err
}
