package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is a jail's chroot directory as the agent (root, on the host) sees
// it. A jailed process may own parts of it (the jailer even hands it the
// root directory), so every name is resolved inside it (os.Root) and
// nothing it plants — a symlink to /etc, say — can make the agent create,
// link or remove anything outside.
type Dir struct {
	Path     string // the chroot directory on the host
	UID, GID int    // the jailed VMM's identity
}

// ErrCrossDevice means a file cannot be hard-linked into the jail because
// it lives on another filesystem than the run dir.
var ErrCrossDevice = errors.New("on another filesystem than the jail")

func (d Dir) open() (*os.Root, error) {
	r, err := os.OpenRoot(d.Path)
	if err != nil {
		return nil, fmt.Errorf("jail %s: %w", d.Path, err)
	}
	return r, nil
}

// MkdirAll makes the directory rel (a name inside the jail) and its
// parents. Directories it creates are root's with mode 0755 (whatever the
// umask), so the VMM can traverse but not change them; with owned, rel
// itself is the VMM's (0700): a directory it creates files in (its API
// socket, vsock sockets).
func (d Dir) MkdirAll(rel string, owned bool) error {
	r, err := d.open()
	if err != nil {
		return err
	}
	defer r.Close()
	return d.mkdirAll(r, rel, owned)
}

func (d Dir) mkdirAll(r *os.Root, rel string, owned bool) error {
	if rel == "." || rel == "" {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		err := r.Mkdir(p, 0o755)
		switch {
		case err == nil:
			if err := r.Chmod(p, 0o755); err != nil {
				return fmt.Errorf("jail %s: chmod %s: %w", d.Path, p, err)
			}
		case errors.Is(err, os.ErrExist):
			fi, serr := r.Stat(p)
			if serr != nil || !fi.IsDir() {
				return fmt.Errorf("jail %s: %s exists and is not a directory", d.Path, p)
			}
		default:
			return fmt.Errorf("jail %s: mkdir %s: %w", d.Path, p, err)
		}
	}
	if owned {
		if err := r.Chown(rel, d.UID, d.GID); err != nil {
			return fmt.Errorf("jail %s: chown %s: %w", d.Path, rel, err)
		}
		if err := r.Chmod(rel, 0o700); err != nil {
			return fmt.Errorf("jail %s: chmod %s: %w", d.Path, rel, err)
		}
	}
	return nil
}

// Link hard-links the open file src at rel inside the jail (making the
// parents), so the VMM opens exactly that inode. The open descriptor is
// linked, not a path: a file swapped after the caller checked it is never
// the one linked. Something else already at rel is replaced; the same
// file there is success. Across filesystems it fails with ErrCrossDevice.
func (d Dir) Link(rel string, src *os.File) error {
	r, err := d.open()
	if err != nil {
		return err
	}
	defer r.Close()
	dir, base := filepath.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if err := d.mkdirAll(r, dir, false); err != nil {
		return err
	}
	parent, err := openDir(r, dir)
	if err != nil {
		return fmt.Errorf("jail %s: open %s: %w", d.Path, dir, err)
	}
	defer parent.Close()
	pfd := int(parent.Fd())
	var want unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &want); err != nil {
		return fmt.Errorf("jail %s: link %s: %w", d.Path, rel, err)
	}
	from := "/proc/self/fd/" + strconv.Itoa(int(src.Fd()))
	for range 2 {
		err = unix.Linkat(unix.AT_FDCWD, from, pfd, base, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EXDEV) {
			return fmt.Errorf("jail %s: link %s: %w", d.Path, rel, ErrCrossDevice)
		}
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("jail %s: link %s: %w", d.Path, rel, err)
		}
		var have unix.Stat_t
		if unix.Fstatat(pfd, base, &have, unix.AT_SYMLINK_NOFOLLOW) == nil && have.Dev == want.Dev && have.Ino == want.Ino {
			return nil
		}
		if err := unix.Unlinkat(pfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("jail %s: replace %s: %w", d.Path, rel, err)
		}
	}
	return fmt.Errorf("jail %s: link %s: %w", d.Path, rel, err)
}

// Create makes a new regular file at rel inside the jail (a copy of a file
// that cannot be linked), replacing what is there, and returns it open for
// writing. The caller fills and closes it.
func (d Dir) Create(rel string, perm os.FileMode) (*os.File, error) {
	r, err := d.open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	dir, _ := filepath.Split(rel)
	if err := d.mkdirAll(r, strings.TrimSuffix(dir, "/"), false); err != nil {
		return nil, err
	}
	if err := r.Remove(rel); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("jail %s: replace %s: %w", d.Path, rel, err)
	}
	f, err := r.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, fmt.Errorf("jail %s: create %s: %w", d.Path, rel, err)
	}
	return f, nil
}

// LinkOut hard-links the unix socket the VMM made at rel to host (a path
// outside the jail, in a directory only the agent writes): the agent and
// its callers then reach the socket at its usual host path. A socket's
// inode is what a connect finds, so the link works as the original does.
// Anything but a socket at rel is refused.
func (d Dir) LinkOut(rel, host string) error {
	r, err := d.open()
	if err != nil {
		return err
	}
	defer r.Close()
	dir, base := filepath.Split(rel)
	parent, err := openDir(r, strings.TrimSuffix(dir, "/"))
	if err != nil {
		return fmt.Errorf("jail %s: open %s: %w", d.Path, dir, err)
	}
	defer parent.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(parent.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("jail %s: %s: %w", d.Path, rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("jail %s: %s is not a socket", d.Path, rel)
	}
	if err := os.Remove(host); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("link socket to %s: %w", host, err)
	}
	if err := unix.Linkat(int(parent.Fd()), base, unix.AT_FDCWD, host, 0); err != nil {
		return fmt.Errorf("link socket %s to %s: %w", rel, host, err)
	}
	return nil
}

// Exists reports whether rel exists inside the jail (not following a
// final symlink).
func (d Dir) Exists(rel string) bool {
	r, err := d.open()
	if err != nil {
		return false
	}
	defer r.Close()
	_, err = r.Lstat(rel)
	return err == nil
}

func openDir(r *os.Root, rel string) (*os.File, error) {
	if rel == "" {
		rel = "."
	}
	return r.OpenFile(rel, os.O_RDONLY|unix.O_DIRECTORY, 0)
}
