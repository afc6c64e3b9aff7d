package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/go-chi/chi/v5"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// Snapshot files on the host. Firecracker writes vmstate and mem itself
// (the manager relays PUT /snapshot/create through the proxy); the agent
// makes the snapshot dir, preserves the drives the snapshot needs next to
// them, reports sizes, puts a snapshot's drives into a restored VM's run
// dir and removes snapshot dirs. Every name a request carries is checked
// to stay where it belongs after symlinks are resolved.

// vmSnapshotRoutes adds per-VM snapshot file routes.
func (a *Agent) vmSnapshotRoutes(r chi.Router) {
	r.Post("/snapshots/{sid}", a.vm(a.snapshot(a.prepareSnapshot)))
	r.Get("/snapshots/{sid}", a.vm(a.snapshot(a.snapshotFiles)))
	r.Delete("/snapshots/{sid}", a.vm(a.snapshot(a.deleteSnapshot)))
	r.Post("/restore-drives", a.vm(a.restoreDrives))
}

// snapshotRoutes adds host-level snapshot routes.
func (a *Agent) snapshotRoutes(r chi.Router) {
	r.Get("/snapshots", a.listSnapshots)
}

type snapHandler func(w http.ResponseWriter, r *http.Request, id, sid string)

// snapshot validates the {sid} path parameter: it becomes a path element.
func (a *Agent) snapshot(h snapHandler) vmHandler {
	return func(w http.ResponseWriter, r *http.Request, id string) {
		sid := chi.URLParam(r, "sid")
		if !hostlayout.ValidVMID(sid) {
			a.fail(w, r, apierr.BadRequest("invalid snapshot id %q: use 1-64 letters, digits or '-'", sid))
			return
		}
		h(w, r, id, sid)
	}
}

// Names a snapshot's drive copies may not take: firecracker's own files
// in a snapshot dir, and what the agent keeps in a VM run dir.
var (
	reservedInSnapshot = []string{agentapi.SnapshotStateFile, agentapi.SnapshotMemFile}
	reservedInVMDir    = []string{"sock", "logs", "snapshots", "metrics.json", "vmm.json"}
)

// localName checks a relative file name from a request: clean, inside its
// base dir, and not one of the reserved first elements.
func localName(what, name string, reserved []string) error {
	if name == "" || !filepath.IsLocal(name) || filepath.Clean(name) != name || strings.ContainsRune(name, 0) {
		return apierr.BadRequest("%s %q must be a clean relative path inside its directory", what, name)
	}
	first, _, _ := strings.Cut(name, string(filepath.Separator))
	for _, r := range reserved {
		if first == r {
			return apierr.BadRequest("%s %q would replace %s", what, name, r)
		}
	}
	return nil
}

// placeFile returns the absolute path of name under dir after creating
// its parent dirs, refusing a parent that resolves outside dir (a
// symlink planted in a run dir).
func placeFile(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return "", err
	}
	if real := canonical(filepath.Dir(p)); real != canonical(dir) && !within(canonical(dir), real) {
		return "", apierr.Forbidden("%s resolves outside %s", filepath.Dir(p), dir)
	}
	return p, nil
}

// driveSource resolves a drive's path_on_host (relative to the VM's run
// dir, or absolute) to the file to copy: a regular file inside the run dir
// or, for an absolute path, under the read roots (any path in dev mode).
func (a *Agent) driveSource(id, src string) (string, error) {
	vmDir := a.cfg.Layout.VMDir(id)
	var p string
	switch {
	case filepath.IsAbs(src):
		if filepath.Clean(src) != src {
			return "", apierr.BadRequest("drive path %q is not clean", src)
		}
		p = canonical(src)
		// Inside the run dir only this VM's own files (or images) qualify:
		// never the agent's token or another VM's disks.
		if runDir := canonical(a.cfg.Layout.RunDir); within(runDir, p) && !within(canonical(vmDir), p) &&
			(a.cfg.ImagesDir == "" || !within(canonical(a.cfg.ImagesDir), p)) {
			return "", apierr.Forbidden("drive %q belongs to the agent or another VM", src)
		}
		if a.cfg.ReadRoots != nil {
			ok := false
			for _, root := range a.cfg.ReadRoots {
				ok = ok || within(canonical(root), p)
			}
			if !ok {
				return "", apierr.Forbidden("drive %q is outside the allowed image and run directories", src)
			}
		}
	default:
		if err := localName("drive path", src, reservedInVMDir); err != nil {
			return "", err
		}
		p = canonical(filepath.Join(vmDir, src))
		if !within(canonical(vmDir), p) {
			return "", apierr.Forbidden("drive %q resolves outside the run dir of vm %s", src, id)
		}
	}
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", apierr.Newf(http.StatusConflict, "drive_missing", "drive file %s of vm %s does not exist", src, id)
	}
	if err != nil {
		return "", apierr.Internal(err)
	}
	if !fi.Mode().IsRegular() {
		return "", apierr.Newf(http.StatusConflict, "drive_not_a_file", "drive %s of vm %s is not a regular file (%s); only file-backed drives can be preserved with a snapshot", src, id, fi.Mode().Type())
	}
	return p, nil
}

// prepareSnapshot creates the snapshot dir and copies the drives into it.
// Any failure removes the dir: a snapshot exists whole or not at all.
func (a *Agent) prepareSnapshot(w http.ResponseWriter, r *http.Request, id, sid string) {
	var req agentapi.PrepareSnapshotRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	l := a.cfg.Layout
	if _, err := os.Stat(l.VMDir(id)); errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("vm run dir", id))
		return
	}
	type job struct{ src, dst string }
	jobs := make([]job, 0, len(req.Copies))
	seen := map[string]bool{}
	for _, c := range req.Copies {
		if err := localName("snapshot file", c.Dst, reservedInSnapshot); err != nil {
			a.fail(w, r, err)
			return
		}
		if err := localName("snapshot file", c.Dst, reservedInVMDir); err != nil {
			a.fail(w, r, err) // it becomes a name in a restored VM's run dir
			return
		}
		if seen[c.Dst] {
			a.fail(w, r, apierr.BadRequest("snapshot file %q is named twice", c.Dst))
			return
		}
		seen[c.Dst] = true
		src, err := a.driveSource(id, c.Src)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		jobs = append(jobs, job{src, c.Dst})
	}
	dir := l.SnapshotDir(id, sid)
	if err := os.MkdirAll(l.SnapshotsDir(id), 0o750); err != nil {
		a.fail(w, r, apierr.Internal(fmt.Errorf("snapshot %s of vm %s: %w", sid, id, err)))
		return
	}
	if err := os.Mkdir(dir, 0o750); err != nil {
		if errors.Is(err, os.ErrExist) {
			a.fail(w, r, apierr.Newf(http.StatusConflict, "snapshot_exists", "snapshot dir %s already exists", dir))
		} else {
			a.fail(w, r, apierr.Internal(fmt.Errorf("snapshot %s of vm %s: %w", sid, id, err)))
		}
		return
	}
	out := agentapi.SnapshotPaths{
		Dir: dir, StatePath: filepath.Join(dir, agentapi.SnapshotStateFile), MemPath: filepath.Join(dir, agentapi.SnapshotMemFile),
		Methods: map[string]string{},
	}
	for _, j := range jobs {
		dst, err := placeFile(dir, j.dst)
		var m CopyMethod
		if err == nil {
			m, err = CopyFile(r.Context(), dst, j.src)
		}
		if err != nil {
			os.RemoveAll(dir)
			a.fail(w, r, apierr.Newf(http.StatusInternalServerError, "copy_failed", "snapshot %s of vm %s: preserve drive %s: %v", sid, id, j.dst, err).WithCause(err))
			return
		}
		out.Methods[j.dst] = string(m)
	}
	writeJSON(w, http.StatusOK, out)
}

// snapshotFiles lists a snapshot dir's regular files with their sizes.
func (a *Agent) snapshotFiles(w http.ResponseWriter, r *http.Request, id, sid string) {
	dir := a.cfg.Layout.SnapshotDir(id, sid)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("snapshot dir", sid))
		return
	}
	out := agentapi.SnapshotFiles{Dir: dir, Files: []agentapi.SnapshotFile{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out.Files = append(out.Files, agentapi.SnapshotFile{Rel: rel, Path: p, Size: fi.Size(), Allocated: DiskUsage(fi)})
		return nil
	})
	if err != nil {
		a.fail(w, r, apierr.Internal(fmt.Errorf("snapshot %s of vm %s: list files: %w", sid, id, err)))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// deleteSnapshot removes a snapshot dir; gone already is success. When it
// was the last snapshot of a deleted VM (its run dir holds nothing else),
// the run dir goes too.
func (a *Agent) deleteSnapshot(w http.ResponseWriter, r *http.Request, id, sid string) {
	l := a.cfg.Layout
	if err := os.RemoveAll(l.SnapshotDir(id, sid)); err != nil {
		a.fail(w, r, apierr.Internal(fmt.Errorf("delete snapshot %s of vm %s: %w", sid, id, err)))
		return
	}
	// Remove only empty dirs: a live VM's run dir always has more in it.
	for _, d := range []string{l.SnapshotsDir(id), l.VMDir(id)} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) && !isNotEmpty(err) {
			a.fail(w, r, apierr.Internal(fmt.Errorf("delete snapshot %s of vm %s: %w", sid, id, err)))
			return
		}
	}
	writeJSON(w, http.StatusOK, agentapi.OK{OK: true})
}

func isNotEmpty(err error) bool {
	return errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)
}

// restoreDrives copies a snapshot's drive files into VM {id}'s run dir
// under the same relative names, so that firecracker's snapshot load,
// which reopens drives at the (relative) paths in the state file, opens
// the new VM's own copies. Read-only files are hard-linked when possible.
func (a *Agent) restoreDrives(w http.ResponseWriter, r *http.Request, id string) {
	var req agentapi.RestoreDrivesRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if !hostlayout.ValidVMID(req.SourceVMID) || !hostlayout.ValidVMID(req.SnapshotID) {
		a.fail(w, r, apierr.BadRequest("invalid source_vm_id %q or snapshot_id %q", req.SourceVMID, req.SnapshotID))
		return
	}
	l := a.cfg.Layout
	snapDir := l.SnapshotDir(req.SourceVMID, req.SnapshotID)
	if _, err := os.Stat(snapDir); errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("snapshot dir", req.SnapshotID))
		return
	}
	vmDir := l.VMDir(id)
	for _, f := range req.Files {
		if err := localName("drive file", f.Name, reservedInVMDir); err != nil {
			a.fail(w, r, err)
			return
		}
		if err := localName("drive file", f.Name, reservedInSnapshot); err != nil {
			a.fail(w, r, err)
			return
		}
		src := canonical(filepath.Join(snapDir, f.Name))
		if !within(canonical(snapDir), src) {
			a.fail(w, r, apierr.Forbidden("drive file %q resolves outside snapshot %s", f.Name, req.SnapshotID))
			return
		}
		dst, err := placeFile(vmDir, f.Name)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		copyf := CopyFile
		if f.ReadOnly {
			copyf = LinkOrCopy
		}
		if _, err := copyf(r.Context(), dst, src); err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, os.ErrNotExist) {
				status = http.StatusConflict
			}
			a.fail(w, r, apierr.Newf(status, "copy_failed", "vm %s: copy drive %s from snapshot %s: %v", id, f.Name, req.SnapshotID, err).WithCause(err))
			return
		}
	}
	// Firecracker reopens the drives at the relative paths the state file
	// recorded: a jailed VMM finds them in its chroot under those names.
	names, ro := make([]string, len(req.Files)), make([]bool, len(req.Files))
	for i, f := range req.Files {
		names[i], ro[i] = f.Name, f.ReadOnly
	}
	if err := a.exposeOwnFiles(r.Context(), id, names, ro); err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, agentapi.OK{OK: true})
}

// listSnapshots reports every snapshot dir on the host.
func (a *Agent) listSnapshots(w http.ResponseWriter, r *http.Request) {
	l := a.cfg.Layout
	out := agentapi.HostSnapshots{Items: []agentapi.HostSnapshot{}}
	vms, err := os.ReadDir(l.VMsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.Internal(err))
		return
	}
	for _, v := range vms {
		if !v.IsDir() || !hostlayout.ValidVMID(v.Name()) {
			continue
		}
		snaps, _ := os.ReadDir(l.SnapshotsDir(v.Name()))
		for _, s := range snaps {
			if s.IsDir() {
				out.Items = append(out.Items, agentapi.HostSnapshot{VMID: v.Name(), SnapshotID: s.Name(), Dir: l.SnapshotDir(v.Name(), s.Name())})
			}
		}
	}
	sort.Slice(out.Items, func(i, j int) bool { return out.Items[i].Dir < out.Items[j].Dir })
	writeJSON(w, http.StatusOK, out)
}
