package agent

// The file work behind the image endpoints (images.go): opening a path only
// after resolving its symlinks and checking its prefix, SHA-256 checksums
// cached by file identity, and copies that never balloon a sparse file.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/apierr"
)

// openBeneath opens path read-only after resolving its symlinks and
// checking that it lies strictly inside one of roots (nil: anywhere) and is
// a regular file. what names the path in errors ("host_path", "source").
// The opened descriptor is checked again (/proc/self/fd and its inode), so
// a symlink swapped in after the check cannot redirect the open.
func openBeneath(path string, roots []string, what string) (*os.File, string, os.FileInfo, error) {
	if err := checkLexical(path, what); err != nil {
		return nil, "", nil, err
	}
	clean := filepath.Clean(path)
	real := canonicalRoots(roots)
	where := strings.Join(roots, ", ")
	// The plain check first: its message is the clearest for a path that
	// is simply elsewhere.
	if roots != nil && !withinAny(roots, clean) && !withinAny(real, clean) {
		return nil, "", nil, apierr.Newf(http.StatusForbidden, "path_not_allowed", "%s %q is outside %s", what, path, where)
	}
	resolved, err := filepath.EvalSymlinks(clean)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, "", nil, apierr.Newf(http.StatusBadRequest, "file_not_found", "%s %q does not exist on this host", what, path)
	case err != nil:
		return nil, "", nil, apierr.Newf(http.StatusBadRequest, "invalid_path", "%s %q: %v", what, path, unwrapPath(err))
	}
	if roots != nil && !withinAny(real, resolved) {
		return nil, "", nil, apierr.Newf(http.StatusForbidden, "path_not_allowed",
			"%s %q resolves (symlinks followed) to %s, outside %s", what, path, resolved, where)
	}
	lfi, err := os.Lstat(resolved)
	if err != nil {
		return nil, "", nil, apierr.Newf(http.StatusBadRequest, "file_not_found", "%s %q: %v", what, path, unwrapPath(err))
	}
	if !lfi.Mode().IsRegular() {
		return nil, "", nil, apierr.Newf(http.StatusBadRequest, "not_regular_file", "%s %q is a %s, not a regular file", what, path, kindOf(lfi.Mode()))
	}
	// O_NONBLOCK: a FIFO swapped in must not hang the open.
	f, err := os.OpenFile(resolved, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", nil, apierr.Newf(http.StatusBadRequest, "invalid_path", "open %s %q: %v", what, path, unwrapPath(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, "", nil, apierr.Internal(fmt.Errorf("stat %s: %w", resolved, err))
	}
	link, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if !os.SameFile(fi, lfi) || (link != "" && link != resolved) {
		f.Close()
		return nil, "", nil, apierr.Newf(http.StatusConflict, "file_changed", "%s %q changed while it was being opened", what, path).
			WithSuggestion("retry once nothing is replacing the file")
	}
	return f, resolved, fi, nil
}

// checkLexical refuses what no canonicalisation should even be tried on.
func checkLexical(path, what string) error {
	switch {
	case path == "":
		return apierr.Newf(http.StatusBadRequest, "invalid_path", "%s is empty", what)
	case strings.ContainsRune(path, 0):
		return apierr.Newf(http.StatusBadRequest, "invalid_path", "%s contains a NUL byte", what)
	case !filepath.IsAbs(path):
		return apierr.Newf(http.StatusBadRequest, "invalid_path", "%s %q must be absolute", what, path)
	}
	for _, el := range strings.Split(path, "/") {
		if el == ".." {
			return apierr.Newf(http.StatusBadRequest, "invalid_path", "%s %q must not contain '..'", what, path).
				WithSuggestion("name the file by its real path under FC_IMAGES_DIR")
		}
	}
	return nil
}

// canonicalRoots resolves the symlinks of each root; a root that cannot be
// resolved (it does not exist) stays as it is, cleaned.
func canonicalRoots(roots []string) []string {
	if roots == nil {
		return nil
	}
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		out = append(out, canonical(filepath.Clean(r)))
	}
	return out
}

func withinAny(roots []string, p string) bool {
	for _, r := range roots {
		if within(filepath.Clean(r), p) {
			return true
		}
	}
	return false
}

func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// unwrapPath drops the *PathError's repetition of the path.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// fileID identifies one version of a file: same inode, size, mtime and
// ctime. ctime cannot be set from user space, so a file rewritten and
// touched back to its old mtime still gets a new ID.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // nanoseconds
}

func idOf(fi os.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return fileID{
		dev: st.Dev, ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
}

// maxSums bounds the checksum cache; past it the cache starts over.
const maxSums = 4096

// sumCache computes SHA-256 checksums of image files and remembers them by
// canonical path and fileID, so a 1 GiB image is hashed once, not at every
// boot. Concurrent requests for the same file version share one hash.
type sumCache struct {
	mu      sync.Mutex
	byPath  map[string]sumEntry
	flights map[sumKey]*sumFlight
}

type sumEntry struct {
	id  fileID
	sum string
}

type sumKey struct {
	path string
	id   fileID
}

type sumFlight struct {
	done chan struct{}
	sum  string
	err  error
}

func newSumCache() *sumCache {
	return &sumCache{byPath: map[string]sumEntry{}, flights: map[sumKey]*sumFlight{}}
}

// sum returns the SHA-256 of f, open at its canonical path with fstat fi,
// and whether it came from the cache. The hash runs on a duplicate of the
// descriptor, detached from ctx: a caller that gives up does not waste the
// work of the others waiting for it.
func (c *sumCache) sum(ctx context.Context, path string, f *os.File, fi os.FileInfo) (string, bool, error) {
	key := sumKey{path: path, id: idOf(fi)}
	c.mu.Lock()
	if e, ok := c.byPath[path]; ok && e.id == key.id {
		c.mu.Unlock()
		return e.sum, true, nil
	}
	fl, ok := c.flights[key]
	if !ok {
		dup, err := unix.Dup(int(f.Fd()))
		if err != nil {
			c.mu.Unlock()
			return "", false, fmt.Errorf("checksum %s: dup: %w", path, err)
		}
		fl = &sumFlight{done: make(chan struct{})}
		c.flights[key] = fl
		go c.compute(key, fl, os.NewFile(uintptr(dup), path))
	}
	c.mu.Unlock()
	select {
	case <-fl.done:
		return fl.sum, false, fl.err
	case <-ctx.Done():
		return "", false, ctx.Err()
	}
}

func (c *sumCache) compute(key sumKey, fl *sumFlight, f *os.File) {
	defer f.Close()
	h := sha256.New()
	_, err := io.Copy(h, io.NewSectionReader(f, 0, key.id.size))
	if err == nil {
		// The file must not have changed under the hash.
		if fi, serr := f.Stat(); serr != nil {
			err = serr
		} else if idOf(fi) != key.id {
			err = apierr.Newf(http.StatusConflict, "file_changed", "%s changed while it was being hashed", key.path).
				WithSuggestion("retry once nothing is writing the file")
		}
	}
	c.mu.Lock()
	delete(c.flights, key)
	if err == nil {
		fl.sum = hex.EncodeToString(h.Sum(nil))
		if len(c.byPath) >= maxSums {
			c.byPath = map[string]sumEntry{}
		}
		c.byPath[key.path] = sumEntry{id: key.id, sum: fl.sum}
	} else {
		fl.err = fmt.Errorf("checksum %s: %w", key.path, err)
	}
	c.mu.Unlock()
	close(fl.done)
}

// copyBlock is the granularity at which a sparse copy skips zeros.
const copyBlock = 4096

// copyInto fills dst (empty, on the destination filesystem) with the
// contents of src (size bytes): a copy-on-write clone when the filesystem
// supports it (btrfs, XFS), otherwise a sparse copy. It returns the method.
func copyInto(ctx context.Context, dst, src *os.File, size int64) (CopyMethod, error) {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		return CopyReflink, nil
	}
	// EOPNOTSUPP, EXDEV, EINVAL …: no clone here; copy the bytes instead.
	if err := dst.Truncate(0); err != nil {
		return "", err
	}
	return CopySparse, sparseCopy(ctx, dst, src, size)
}

// sparseCopy copies only src's data extents (SEEK_DATA/SEEK_HOLE) and,
// within them, only blocks that are not all zeros: holes stay holes and
// the copy never occupies more disk than the source. A filesystem without
// SEEK_DATA is scanned whole, still skipping zero blocks.
func sparseCopy(ctx context.Context, dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	fd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // nothing but a hole up to the end
		}
		hole := size
		if err != nil {
			data = off
		} else if h, err := unix.Seek(fd, data, unix.SEEK_HOLE); err == nil {
			hole = min(h, size)
		}
		if data >= size {
			break
		}
		if err := copyData(ctx, dst, src, data, hole, buf); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

var zeroBlock = make([]byte, copyBlock)

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// copyData copies [from, to) of src to the same offsets of dst, writing
// runs of non-zero blocks only.
func copyData(ctx context.Context, dst, src *os.File, from, to int64, buf []byte) error {
	for pos := from; pos < to; {
		if err := ctx.Err(); err != nil {
			return err // the caller gave up: stop between chunks
		}
		n := int(min(int64(len(buf)), to-pos))
		got, err := src.ReadAt(buf[:n], pos)
		if got < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the source shrank under the copy
			}
			return fmt.Errorf("read at %d: %w", pos+int64(got), err)
		}
		for i := 0; i < n; {
			end := min(i+copyBlock, n)
			if isZero(buf[i:end]) {
				i = end
				continue
			}
			j := end
			for j < n && !isZero(buf[j:min(j+copyBlock, n)]) {
				j = min(j+copyBlock, n)
			}
			if _, err := dst.WriteAt(buf[i:j], pos+int64(i)); err != nil {
				return err
			}
			i = j
		}
		pos += int64(n)
	}
	return nil
}
