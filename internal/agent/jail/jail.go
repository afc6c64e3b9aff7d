// Package jail confines VMM processes the way firecracker's jailer does:
// each VMM gets its own uid and gid, a chroot that holds only its own files,
// new mount and PID namespaces, no capabilities and no_new_privs.
//
// It has three parts. Spec and HelperMain are the small program that sets a
// confinement up between fork and exec (Go cannot run code there): the
// agent starts it as `nexus-jail` (cmd/nexus-jail, or the nexus binary
// re-executed under that name) in new mount and PID namespaces; it joins
// the VMM's cgroups, pivots into the chroot and drops every privilege, then
// execs the VMM — or, with firecracker's jailer, execs the jailer, which
// does the same with its own code. Dir is the chroot seen from the host:
// the agent links the files a VMM may open into it, resolving every name
// inside it so that nothing a jailed process plants there can make the
// agent act outside. The paths of the layout (Root) follow the jailer's:
// <chroot base>/<exec name>/<vm id>/root.
//
// The package must stay small and import nothing of Nexus: the helper
// binary is built from it alone and starts once per VMM.
package jail

import (
	"fmt"
	"path/filepath"
	"strings"
)

// HelperName is the helper's program name: the name of its own binary, and
// argv[0] when the nexus binary is re-executed as the helper.
const HelperName = "nexus-jail"

// BaseDirName is the chroot base under the agent's run dir: the jailer's
// --chroot-base-dir.
const BaseDirName = "jail"

// Device numbers of the nodes a VMM needs (Documentation/admin-guide/devices.txt),
// the ones the jailer creates.
const (
	kvmMajor, kvmMinor   = 10, 232
	tunMajor, tunMinor   = 10, 200
	randMajor, randMinor = 1, 9
	miscMajor            = 10 // userfaultfd's minor is dynamic: /proc/misc
)

// DefaultNoFile is the jailer's default RLIMIT_NOFILE for the VMM.
const DefaultNoFile = 2048

// Reserved are the first elements of names inside a chroot that belong to
// the jail itself: a file the manager names may never land there (under
// dev/ it would also be hidden by the VMM's own /dev).
var Reserved = []string{"dev", "old_root"}

// Root is the chroot of vmID's VMM: <base>/<exec name>/<vm id>/root, as the
// jailer lays it out (base is the canonical chroot base dir).
func Root(base, execName, vmID string) string {
	return filepath.Join(base, execName, vmID, "root")
}

// InstanceDir is the directory of one VM's jail, removed when its VMM has
// gone: <base>/<exec name>/<vm id>.
func InstanceDir(base, execName, vmID string) string {
	return filepath.Join(base, execName, vmID)
}

// Rel is the name inside the chroot of a path given to a jailed VMM:
// firecracker resolves an absolute path from the chroot's root and a
// relative one from its working directory, which is the root too. So the
// host path /srv/fc/images/k is srv/fc/images/k in the jail, and drives/x
// is drives/x. Names that leave the chroot, or land on the jail's own
// files (devices, the binary), are refused.
func Rel(given, execName string) (string, error) {
	if given == "" || strings.ContainsRune(given, 0) {
		return "", fmt.Errorf("jail: empty or invalid path %q", given)
	}
	if filepath.Clean(given) != given {
		return "", fmt.Errorf("jail: path %q is not clean", given)
	}
	rel := strings.TrimPrefix(given, "/")
	if rel == "" || rel == "." || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("jail: path %q does not name a file inside the chroot", given)
	}
	first, _, _ := strings.Cut(rel, "/")
	for _, r := range append(Reserved, execName, execName+".pid") {
		if first == r {
			return "", fmt.Errorf("jail: path %q would land on the jail's own %s", given, r)
		}
	}
	return rel, nil
}
