package manager

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/nexus-microvm/nexus/internal/store"
)

// resolveFile turns an image id or a raw path into a host path. Raw paths
// are for dev mode; prod mode takes registered images only.
func (s *Service) resolveFile(ctx context.Context, project, what string, kind store.ImageKind, imageID, path string, required bool) (string, error) {
	switch {
	case imageID != "" && path != "":
		return "", invalid("give either %s_image_id or %s_path, not both", what, what)
	case imageID != "":
		img, err := s.st.GetImage(ctx, imageID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && img.Project != "" && img.Project != "*" && img.Project != project) {
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

// GetVM returns one VM the scope can see.
func (s *Service) GetVM(ctx context.Context, scope Scope, id string) (store.VM, error) {
	vm, err := s.st.GetVM(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !scope.Sees(vm.Project)) {
		// 404, not 403: ids of other projects must not be probeable.
		return store.VM{}, notFound("vm", id)
	}
	if err != nil {
		return store.VM{}, fmt.Errorf("get vm %s: %w", id, err)
	}
	return vm, nil
}

// prepareDrives runs on the VM's host before its drives are configured
// (for example, copying a rootfs image into the VM's run dir so the VM
// never writes the shared image). It may rewrite vm's drive paths.
func (s *Service) prepareDrives(ctx context.Context, vm *store.VM) error {
	return nil
}
