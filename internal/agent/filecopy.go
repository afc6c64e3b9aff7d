package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// File copying for VM drives (a rootfs image copied into a VM's run dir,
// drives preserved with a snapshot and put into a restored VM's run dir).
// Disk images are large and mostly holes, so a copy never fills them in:
// it shares the blocks where the filesystem can (reflink) and otherwise
// copies only the data (copyInto, in imagefile.go).

// CopyMethod says how a file was copied.
type CopyMethod string

// The copy methods, cheapest first.
const (
	// CopyLink: a hard link (LinkOrCopy, read-only files only).
	CopyLink CopyMethod = "link"
	// CopyReflink: the copy shares the source's blocks (btrfs, xfs,
	// bcachefs): instant and no extra space until one of them is written.
	CopyReflink CopyMethod = "reflink"
	// CopySparse: only the data ranges (SEEK_DATA/SEEK_HOLE), and within
	// them only non-zero blocks, were copied; holes stay holes.
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
	m, _, err := copyFrom(ctx, dst, in, fi.Size(), fi.Mode().Perm())
	if err != nil {
		return "", fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return m, nil
}

// copyFrom copies size bytes of the open file in to dst: into a temporary
// file beside dst, synced, then renamed into place. It returns the method
// and the new file's info.
func copyFrom(ctx context.Context, dst string, in *os.File, size int64, perm os.FileMode) (CopyMethod, os.FileInfo, error) {
	tmp, out, err := createCopyTemp(dst, perm)
	if err != nil {
		return "", nil, err
	}
	method, err := copyInto(ctx, out, in, size)
	if err == nil {
		err = out.Sync()
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = out.Stat()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return "", nil, err
	}
	return method, fi, nil
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
