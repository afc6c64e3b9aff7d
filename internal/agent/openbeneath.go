package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// errSymlink: a path the agent reads for a VM crosses a symbolic link (or
// names something other than a regular file).
var errSymlink = errors.New("not a regular file reached without symbolic links")

// openNoLinks opens root/rel for reading without following any symbolic
// link, at any component, and never leaving root: a link planted in one
// VM's logs dir cannot expose another VM's files or the agent's. It uses
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) and, on kernels before 5.6,
// opens component by component with O_NOFOLLOW. The file must be regular
// (a FIFO would block a reader: it is opened non-blocking and refused).
// A missing file is os.ErrNotExist.
func openNoLinks(root, rel string) (*os.File, error) {
	rel = filepath.Clean(rel)
	if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") || rel == "." {
		return nil, fmt.Errorf("open %s under %s: %w", rel, root, errSymlink)
	}
	dirfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(dirfd)
	const flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
	fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
		Flags:   flags,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		// No openat2 (an old kernel, or a seccomp filter that refuses it).
		fd, err = openNoFollow(dirfd, rel, flags)
	}
	path := filepath.Join(root, rel)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, &os.PathError{Op: "open", Path: path, Err: os.ErrNotExist}
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOTDIR):
		return nil, fmt.Errorf("open %s: %w", path, errSymlink)
	case err != nil:
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", path, errSymlink)
	}
	return f, nil
}

// openNoFollow walks rel from dirfd one component at a time, refusing a
// symbolic link at each (O_NOFOLLOW), and opens the last with flags.
func openNoFollow(dirfd int, rel string, flags int) (int, error) {
	parts := strings.Split(rel, string(filepath.Separator))
	cur := dirfd
	for i, p := range parts {
		last := i == len(parts)-1
		fl := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if last {
			fl = flags | unix.O_NOFOLLOW
		}
		next, err := unix.Openat(cur, p, fl, 0)
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

// openInVMs opens a file under the VM run dirs for reading, with no
// symbolic link anywhere below the VMs dir (openNoLinks).
func (a *Agent) openInVMs(path string) (*os.File, error) {
	root := a.cfg.Layout.VMsDir()
	rel, err := filepath.Rel(root, path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, errSymlink)
	}
	return openNoLinks(root, rel)
}
