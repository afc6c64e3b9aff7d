package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// File copying for snapshots (drives preserved with a snapshot, and put
// into a restored VM's run dir). Disk images are large and mostly holes,
// so a copy never fills them in: CopyFile shares the blocks where the
// filesystem can (reflink), and otherwise copies only the data ranges.

// CopyMethod says how a file was copied.
type CopyMethod string

// The copy methods, cheapest first.
const (
	// CopyLink: a hard link (LinkOrCopy, read-only files only).
	CopyLink CopyMethod = "link"
	// CopyReflink: the copy shares the source's blocks (btrfs, xfs,
	// bcachefs): instant and no extra space until one of them is written.
	CopyReflink CopyMethod = "reflink"
	// CopySparse: the data ranges (SEEK_DATA/SEEK_HOLE) were copied with
	// copy_file_range; holes stay holes.
	CopySparse CopyMethod = "sparse"
)

// CopyFile copies the regular file src to dst with src's permission bits.
// It writes a temporary file next to dst and renames it into place, so dst
// never exists half-written, and an existing dst is replaced. The
// directory of dst must exist. ctx stops a long copy between ranges.
func CopyFile(ctx context.Context, dst, src string) (CopyMethod, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("copy %s: not a regular file (%s)", src, fi.Mode().Type())
	}
	tmp, out, err := createCopyTemp(dst, fi.Mode().Perm())
	if err != nil {
		return "", err
	}
	method, err := cloneOrCopyData(ctx, out, in, fi.Size())
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return method, nil
}

// LinkOrCopy hard-links src at dst (replacing dst), or copies it when a
// link is impossible (another filesystem). Only for files nobody writes:
// a link shares the inode.
func LinkOrCopy(ctx context.Context, dst, src string) (CopyMethod, error) {
	fi, err := os.Lstat(src)
	if err != nil {
		return "", fmt.Errorf("link %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("link %s: not a regular file (%s)", src, fi.Mode().Type())
	}
	tmp := copyTempName(dst)
	if err := os.Link(src, tmp); err == nil {
		if err := os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("link %s to %s: %w", src, dst, err)
		}
		return CopyLink, nil
	}
	return CopyFile(ctx, dst, src)
}

// DiskUsage is the space a file really occupies on disk.
func DiskUsage(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

func copyTempName(dst string) string {
	return filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-"+strconv.FormatUint(rand.Uint64(), 36))
}

func createCopyTemp(dst string, perm os.FileMode) (string, *os.File, error) {
	tmp := copyTempName(dst)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return "", nil, fmt.Errorf("copy to %s: %w", dst, err)
	}
	return tmp, f, nil
}

// cloneOrCopyData fills out (empty) with in's size bytes: reflink, or the data
// ranges.
func cloneOrCopyData(ctx context.Context, out, in *os.File, size int64) (CopyMethod, error) {
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return CopyReflink, nil
	}
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole after off
		}
		if err != nil {
			data = off // no SEEK_DATA here: everything is data
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		if err := copyFileRange(ctx, out, in, data, hole-data); err != nil {
			return "", err
		}
		off = hole
	}
	// The tail hole (and a file that is all hole) is just the size.
	if err := out.Truncate(size); err != nil {
		return "", err
	}
	return CopySparse, nil
}

// copyFileRange copies n bytes at off from in to out, in the kernel where it
// can (copy_file_range), otherwise through a buffer.
func copyFileRange(ctx context.Context, out, in *os.File, off, n int64) error {
	const chunk = 64 << 20
	roff, woff := off, off
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, chunk)), 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			// EXDEV, ENOSYS, EINVAL, EOPNOTSUPP: copy by hand.
			return copyRangeBuffered(out, in, roff, n)
		}
		if c == 0 {
			return fmt.Errorf("copy_file_range: unexpected end of file at %d", roff)
		}
		n -= int64(c)
	}
	return nil
}

func copyRangeBuffered(out, in *os.File, off, n int64) error {
	w := io.NewOffsetWriter(out, off)
	_, err := io.Copy(w, io.NewSectionReader(in, off, n))
	return err
}
