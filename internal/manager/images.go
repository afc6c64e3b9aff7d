package manager

// The image registry: kernels, initrds and root filesystems registered
// once, by path under FC_IMAGES_DIR on the hosts, with their size and
// SHA-256. Registered images are immutable: each boot checks the file
// still has its checksum (the agents cache checksums by file identity,
// size, mtime and ctime), and a rootfs is copied into the VM's run dir so
// no VM ever writes the shared file. Kernels and initrds are only read.
//
// Shared images, usable by every project, are stored with project "" and
// shown as "*" (apitypes.SharedProject).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// inspectTimeout bounds registration: every ready host reads the whole
// file once to checksum it.
const inspectTimeout = 10 * time.Minute

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ImageView renders an image for the API.
func ImageView(img store.Image) apitypes.Image {
	p := img.Project
	if p == "" {
		p = apitypes.SharedProject
	}
	return apitypes.Image{
		ID: img.ID, Kind: string(img.Kind), Name: img.Name, Project: p, HostPath: img.HostPath,
		SHA256: img.SHA256, Size: img.Size, ReadOnly: img.ReadOnly, CreatedAt: img.CreatedAt,
	}
}

// shared reports whether an image is visible to every project.
func shared(img store.Image) bool { return img.Project == "" || img.Project == apitypes.SharedProject }

// defaultProject is the project of a call that names none.
func (s *core) defaultProject(scope Scope, requested string) string {
	if requested != "" {
		return requested
	}
	if scope.Project == "" || scope.Project == "*" {
		return s.cfg.DefaultProject
	}
	return scope.Project
}

// CreateImage registers req.HostPath as an image. Every ready host is
// asked to canonicalise the path (symlinks resolved, under its
// FC_IMAGES_DIR) and checksum the file; all must hold the same file, and
// it must match req.SHA256 when given. On any refusal nothing is
// registered. id may be empty (the store picks one).
func (s *Images) CreateImage(ctx context.Context, scope Scope, id string, req apitypes.CreateImageRequest) (store.Image, error) {
	kind := store.ImageKind(req.Kind)
	if kind != store.ImageKernel && kind != store.ImageInitrd && kind != store.ImageRootfs {
		return store.Image{}, invalid("kind must be kernel, initrd or rootfs, not %q", req.Kind)
	}
	if !nameRE.MatchString(req.Name) {
		return store.Image{}, invalid("image name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
	}
	want := strings.ToLower(req.SHA256)
	if want != "" && !sha256RE.MatchString(want) {
		return store.Image{}, invalid("sha256 must be 64 hex digits")
	}
	if req.HostPath == "" {
		return store.Image{}, invalid("host_path is required")
	}
	project := req.Project
	switch {
	case project == apitypes.SharedProject:
		if !scope.Admin {
			return store.Image{}, newErr(KindForbidden, "forbidden", "only admins register shared images (project %q)", apitypes.SharedProject).
				suggest("omit project to register the image in your own project")
		}
		project = ""
	case !scope.Sees(s.defaultProject(scope, project)):
		return store.Image{}, newErr(KindForbidden, "forbidden", "this token cannot register images in project %q", project).
			suggest("omit project, or use a token of that project")
	default:
		project = s.defaultProject(scope, project)
	}
	if _, err := s.st.GetImageByName(ctx, project, req.Name); err == nil {
		return store.Image{}, nameTaken("an image", req.Name, project)
	}

	info, err := s.inspectEverywhere(ctx, req.HostPath)
	if err != nil {
		return store.Image{}, err
	}
	if !scope.Admin {
		// Project scoping must hold for the bytes, not only the rows: a
		// file another project registered is not re-registrable here.
		all, err := s.st.ListImages(ctx, store.ImageFilter{})
		if err != nil {
			return store.Image{}, fmt.Errorf("register image %s: %w", req.Name, err)
		}
		for _, other := range all {
			if other.HostPath == info.Path && other.Project != project && other.Project != "" {
				return store.Image{}, newErr(KindForbidden, "path_registered_elsewhere", "%s is registered in another project", info.Path).
					suggest("ask an admin to share it (project \"*\"), or register your own copy under another path")
			}
		}
	}
	if want != "" && info.SHA256 != want {
		return store.Image{}, newErr(KindInvalid, "sha256_mismatch", "%s has sha256 %s, not the %s given", info.Path, info.SHA256, want).
			suggest("check that the file is the one you meant, or omit sha256 to record the file's own")
	}
	img, err := s.st.CreateImage(ctx, store.Image{
		ID: id, Project: project, Kind: kind, Name: req.Name, HostPath: info.Path,
		SHA256: info.SHA256, Size: info.Size, ReadOnly: req.ReadOnly || kind != store.ImageRootfs,
	})
	if errors.Is(err, store.ErrConflict) {
		return store.Image{}, nameTaken("an image", req.Name, project)
	}
	if err != nil {
		return store.Image{}, fmt.Errorf("register image %s: %w", req.Name, err)
	}
	s.log.Info("image registered", "image_id", img.ID, "name", img.Name, "project", img.Project, "path", img.HostPath, "size", img.Size)
	return img, nil
}

func nameTaken(what, name, project string) *Error {
	if project == "" {
		project = apitypes.SharedProject
	}
	return conflict("name_taken", "%s named %q already exists in project %q", what, name, project).
		suggest("pick another name, or delete the existing one first")
}

// inspectEverywhere asks every ready host about path, in parallel, and
// returns what they agree on.
func (s *Images) inspectEverywhere(ctx context.Context, path string) (agentapi.ImageInfo, error) {
	hosts, err := s.hosts.ListHosts(ctx)
	if err != nil {
		return agentapi.ImageInfo{}, err
	}
	var ready []store.Host
	for _, h := range hosts {
		if h.State == store.HostReady {
			ready = append(ready, h)
		}
	}
	if len(ready) == 0 {
		return agentapi.ImageInfo{}, newErr(KindNoCapacity, "no_hosts", "no ready host to check the image file on").
			suggest("start an agent (images live on the hosts, under FC_IMAGES_DIR)")
	}
	ctx, cancel := context.WithTimeout(ctx, inspectTimeout)
	defer cancel()
	infos := make([]agentapi.ImageInfo, len(ready))
	errs := make([]error, len(ready))
	var wg sync.WaitGroup
	for i, h := range ready {
		wg.Go(func() {
			infos[i], errs[i] = s.agents.get(h.Addr).InspectImage(ctx, agentapi.ImageInspectRequest{Path: path})
			if errs[i] != nil {
				errs[i] = agentRefusal(fmt.Sprintf("host %s", h.Name), store.VM{HostID: h.ID, HostAddr: h.Addr}, errs[i])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return agentapi.ImageInfo{}, err
		}
	}
	first := infos[0]
	for i, in := range infos[1:] {
		if in.Path != first.Path || in.SHA256 != first.SHA256 || in.Size != first.Size {
			return agentapi.ImageInfo{}, newErr(KindInvalid, "image_differs", "host %s has %s (sha256 %s, %d bytes) but host %s has %s (sha256 %s, %d bytes)",
				ready[0].Name, first.Path, first.SHA256, first.Size, ready[i+1].Name, in.Path, in.SHA256, in.Size).
				suggest("put the identical file at the same path under FC_IMAGES_DIR on every host")
		}
	}
	return first, nil
}

// agentRefusal turns an agent's 4xx into a service error of the same
// meaning (its code, words and suggestion kept), and anything else into
// the usual agent error.
func agentRefusal(prefix string, vm store.VM, err error) error {
	var ae *apierr.Error
	if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != http.StatusUnauthorized {
		kind := KindInvalid
		switch ae.Status {
		case http.StatusForbidden:
			kind = KindForbidden
		case http.StatusNotFound:
			kind = KindNotFound
		case http.StatusConflict:
			kind = KindConflict
		}
		return &Error{Kind: kind, Code: ae.Code, Message: prefix + ": " + ae.Message, Suggestion: ae.Suggestion, Err: err}
	}
	return agentError(prefix, vm, err)
}

// ListImages returns the images the scope may use: with project set, that
// project's and the shared ones ("*": the shared ones only); without, all
// the scope sees (a project token: its own and the shared ones).
func (s *Images) ListImages(ctx context.Context, scope Scope, kind, project string) ([]store.Image, error) {
	f := store.ImageFilter{Kind: store.ImageKind(kind)}
	onlyShared := project == apitypes.SharedProject
	if !onlyShared {
		p, ok := scope.filterProject(project)
		if !ok {
			return nil, nil
		}
		f.Project, f.IncludeGlobal = p, true
	}
	imgs, err := s.st.ListImages(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	if onlyShared {
		out := imgs[:0]
		for _, img := range imgs {
			if shared(img) {
				out = append(out, img)
			}
		}
		imgs = out
	}
	return imgs, nil
}

// GetImage finds an image the scope may use by id, or by name: in project
// (default: the scope's own), then among the shared images.
func (s *Images) GetImage(ctx context.Context, scope Scope, ref, project string) (store.Image, error) {
	img, err := s.st.GetImage(ctx, ref)
	if err == nil && (shared(img) || scope.Sees(img.Project)) {
		return img, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Image{}, fmt.Errorf("get image %s: %w", ref, err)
	}
	p := s.defaultProject(scope, project)
	for _, pr := range []string{p, ""} {
		if pr != "" && !scope.Sees(pr) {
			continue
		}
		img, err := s.st.GetImageByName(ctx, pr, ref)
		if err == nil {
			return img, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return store.Image{}, fmt.Errorf("get image %s: %w", ref, err)
		}
	}
	// 404, not 403: images of other projects must not be probeable.
	return store.Image{}, notFound("image", ref).suggest("list the images you can use: nexus image ls")
}

// DeleteImage removes an image from the registry (the file stays on the
// hosts). Shared images need an admin; an image that a VM or a template
// still uses is refused.
func (s *Images) DeleteImage(ctx context.Context, scope Scope, ref, project string) (store.Image, error) {
	img, err := s.GetImage(ctx, scope, ref, project)
	if err != nil {
		return img, err
	}
	if shared(img) && !scope.Admin {
		return img, newErr(KindForbidden, "forbidden", "only admins delete shared images").
			suggest("ask an admin")
	}
	vms, tmpls, err := s.imageUsers(ctx, img.ID)
	if err != nil {
		return img, err
	}
	if len(vms)+len(tmpls) > 0 {
		return img, conflict("image_in_use", "image %s (%s) is used by %s", img.Name, img.ID, usersText(vms, tmpls)).
			suggest("delete those VMs, snapshots and templates first; a registered image stays immutable while anything uses it")
	}
	if err := s.st.DeleteImage(ctx, img.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return img, fmt.Errorf("delete image %s: %w", img.ID, err)
	}
	return img, nil
}

// imageUsers lists the VMs (and snapshots, with the VMs) and templates
// that reference the image.
func (s *Images) imageUsers(ctx context.Context, id string) (vms, tmpls []string, err error) {
	f := store.VMFilter{Limit: store.MaxLimit}
	for {
		page, next, err := s.st.ListVMs(ctx, f)
		if err != nil {
			return nil, nil, fmt.Errorf("image %s: list vms: %w", id, err)
		}
		for _, vm := range page {
			if vm.KernelImageID == id || vm.InitrdImageID == id || vm.RootfsImageID == id || drivesUse(decodeSpec(vm).ExtraDrives, id) {
				vms = append(vms, vm.Name)
			}
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	// A snapshot's VMs cold-boot from its source's kernel (and initrd and
	// rootfs) image: those count as users too, even after the source is
	// deleted.
	snaps, err := s.st.ListSnapshots(ctx, store.SnapshotFilter{})
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: list snapshots: %w", id, err)
	}
	for _, sn := range snaps {
		if m, err := decodeSnapshotMeta(sn); err == nil && (m.Source.KernelImageID == id || m.Source.InitrdImageID == id ||
			m.Source.RootfsImageID == id || drivesUse(m.Source.Spec.ExtraDrives, id)) {
			vms = append(vms, "snapshot "+sn.ID)
		}
	}
	ts, err := s.st.ListTemplates(ctx, store.TemplateFilter{})
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: list templates: %w", id, err)
	}
	for _, t := range ts {
		c, _ := decodeTemplateConfig(t)
		if c.KernelImageID == id || c.InitrdImageID == id || c.RootfsImageID == id || drivesUse(c.ExtraDrives, id) {
			tmpls = append(tmpls, t.Name)
		}
	}
	return vms, tmpls, nil
}

func drivesUse(ds []apitypes.ExtraDrive, id string) bool {
	for _, d := range ds {
		if d.ImageID == id {
			return true
		}
	}
	return false
}

func usersText(vms, tmpls []string) string {
	list := func(what string, names []string) string {
		s := fmt.Sprintf("%d %s", len(names), what)
		if len(names) != 1 {
			s += "s"
		}
		if len(names) > 5 {
			names = append(names[:5:5], "…")
		}
		return s + " (" + strings.Join(names, ", ") + ")"
	}
	var parts []string
	if len(vms) > 0 {
		parts = append(parts, list("VM", vms))
	}
	if len(tmpls) > 0 {
		parts = append(parts, list("template", tmpls))
	}
	return strings.Join(parts, " and ")
}

// resolveFile turns an image id or a raw path into a host path. Raw paths
// are for dev mode; prod mode takes registered images only.
func (s *Images) resolveFile(ctx context.Context, project, what string, kind store.ImageKind, imageID, path string, required bool) (string, error) {
	switch {
	case imageID != "" && path != "":
		return "", invalid("give either %s_image_id or %s_path, not both", what, what)
	case imageID != "":
		img, err := s.st.GetImage(ctx, imageID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && !shared(img) && img.Project != project) {
			return "", notFound("image", imageID).suggest("list the images of project " + project + ": nexus image ls")
		}
		if err != nil {
			return "", fmt.Errorf("resolve %s image %s: %w", what, imageID, err)
		}
		if img.Kind != kind {
			return "", invalid("image %s is a %s image, not a %s", imageID, img.Kind, kind)
		}
		return img.HostPath, nil
	case path != "":
		if s.cfg.Mode == ModeProd {
			return "", newErr(KindForbidden, "raw_path_refused", "raw host paths are refused in prod mode (%s_path)", what).
				suggest("register the file with `nexus image add` and pass its id as " + what + "_image_id")
		}
		if !filepath.IsAbs(path) || filepath.Clean(path) != path {
			return "", invalid("%s path %q must be absolute and clean", what, path)
		}
		return path, nil
	case required:
		return "", invalid("%s is required: give %s_image_id (or %s_path in dev mode)", what, what, what)
	}
	return "", nil
}

// bootImage returns the registered image a booting VM uses.
func (s *Images) bootImage(ctx context.Context, what, id string) (store.Image, error) {
	img, err := s.st.GetImage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return img, conflict("image_missing", "%s image %s is no longer registered", what, id).
			suggest("register the file again and create the VM from the new image")
	}
	if err != nil {
		return img, fmt.Errorf("%s image %s: %w", what, id, err)
	}
	return img, nil
}

// prepareDrives runs on the VM's host after its VMM is spawned and before
// its drives are configured, and returns the drives to configure. A
// registered kernel and initrd are checked against their checksums; the
// rootfs and every writable extra drive become private copies in the VM's
// run dir (made on the first boot, reused on later ones, configured by a
// path relative to the run dir); read-only ones are attached in place
// after the same check.
func (s *Images) prepareDrives(ctx context.Context, vm *store.VM, sp spec) ([]firecracker.Drive, error) {
	ag := s.agentFor(ctx, *vm)
	for _, f := range []struct{ what, id string }{{"kernel", vm.KernelImageID}, {"initrd", vm.InitrdImageID}} {
		if f.id == "" {
			continue
		}
		img, err := s.bootImage(ctx, f.what, f.id)
		if err != nil {
			return nil, err
		}
		info, err := ag.InspectImage(ctx, agentapi.ImageInspectRequest{Path: img.HostPath})
		if err != nil {
			return nil, agentRefusal(f.what+" image "+img.Name, *vm, err)
		}
		if info.SHA256 != img.SHA256 {
			return nil, imageChanged(f.what, img, info.SHA256)
		}
	}
	var drives []firecracker.Drive
	if vm.RootfsPath != "" {
		d, err := s.prepareDrive(ctx, ag, vm, "rootfs", vm.RootfsImageID, vm.RootfsPath, false)
		if err != nil {
			return nil, err
		}
		d.IsRootDevice = true
		drives = append(drives, d)
	}
	for _, x := range sp.ExtraDrives {
		d, err := s.prepareDrive(ctx, ag, vm, x.DriveID, x.ImageID, x.Path, x.ReadOnly)
		if err != nil {
			return nil, err
		}
		d.RateLimiter = fcRateLimiter(x.RateLimiter)
		drives = append(drives, d)
	}
	return drives, nil
}

// prepareDrive asks the agent for one drive's file and records what it did.
func (s *Images) prepareDrive(ctx context.Context, ag *agentapi.Client, vm *store.VM, driveID, imageID, path string, readOnly bool) (firecracker.Drive, error) {
	req := agentapi.DriveRequest{DriveID: driveID, Source: path, ReadOnly: readOnly}
	what := "file " + path
	var img store.Image
	if imageID != "" {
		var err error
		if img, err = s.bootImage(ctx, driveID, imageID); err != nil {
			return firecracker.Drive{}, err
		}
		req.Source, req.SHA256, req.ReadOnly = img.HostPath, img.SHA256, readOnly || img.ReadOnly
		what = "image " + img.Name
	}
	info, err := ag.PrepareDrive(ctx, vm.ID, req)
	if err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) && ae.Code == "image_changed" {
			return firecracker.Drive{}, imageChanged(driveID, img, "").wrap(err)
		}
		return firecracker.Drive{}, agentRefusal("drive "+driveID, *vm, err)
	}
	switch info.Method {
	case agentapi.DriveInPlace:
		s.event(ctx, vm.ID, store.LevelInfo, "%s: %s attached read-only in place (%s)", driveID, what, sizeText(info.Size))
	case agentapi.DriveExisting:
		s.event(ctx, vm.ID, store.LevelInfo, "%s: reusing its copy %s from an earlier boot (%s, %s on disk)",
			driveID, info.Path, sizeText(info.Size), sizeText(info.Allocated))
	default:
		s.event(ctx, vm.ID, store.LevelInfo, "%s: copied %s to %s: %s, %s on disk (source %s on disk), %s in %d ms",
			driveID, what, info.Path, sizeText(info.Size), sizeText(info.Allocated), sizeText(info.SourceAllocated), info.Method, info.DurationMs)
	}
	return firecracker.Drive{DriveID: driveID, PathOnHost: info.Path, IsReadOnly: firecracker.Bool(req.ReadOnly)}, nil
}

// imageChanged is the refusal to boot from an image whose file no longer
// has its registered checksum.
func imageChanged(what string, img store.Image, now string) *Error {
	msg := fmt.Sprintf("%s image %s (%s): the file %s changed after it was registered (sha256 registered %s", what, img.Name, img.ID, img.HostPath, img.SHA256)
	if now != "" {
		msg += ", now " + now
	}
	return conflict("image_changed", "%s)", msg).
		suggest("registered images are immutable: restore the original file, or register the new file as a new image and use that")
}

// sizeText renders a byte count for people: 1.0 GiB, 4.0 MiB, 512 B.
func sizeText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
