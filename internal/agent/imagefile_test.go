package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
)

// sparseImage writes a 1 GiB sparse file: a few data regions, one of them
// explicit zeros (allocated, but nothing to copy), holes elsewhere.
func sparseImage(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	for _, w := range []struct {
		off  int64
		data []byte
	}{
		{0, random(4096)},
		{100 << 20, random(1 << 20)},
		{512 << 20, make([]byte, 256<<10)}, // allocated zeros
		{700<<20 + 123, random(10)},        // unaligned, inside a block
		{1<<30 - 4096, random(4096)},
	} {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func statOf(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// TestSparseCopy: the copy has the same bytes and occupies no more disk
// than the source (the explicit zeros not at all).
func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	srcPath, dstPath := filepath.Join(dir, "src.ext4"), filepath.Join(dir, "dst.ext4")
	sparseImage(t, srcPath)
	src, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srcSum := fileSum(t, srcPath)
	for _, tc := range []struct {
		name string
		copy func(dst *os.File) (string, error)
	}{
		{"sparseCopy", func(dst *os.File) (string, error) {
			return agentapi.DriveSparse, sparseCopy(context.Background(), dst, src, 1<<30)
		}},
		{"copyInto", func(dst *os.File) (string, error) {
			m, err := copyInto(context.Background(), dst, src, 1<<30)
			return string(m), err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(dstPath)
			dst, err := os.OpenFile(dstPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			method, err := tc.copy(dst)
			took := time.Since(start)
			dst.Close()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fileSum(t, dstPath), srcSum; got != want {
				t.Fatalf("copy sha256 = %s; want %s", got, want)
			}
			sfi, dfi := statOf(t, srcPath), statOf(t, dstPath)
			if dfi.Size() != sfi.Size() {
				t.Fatalf("copy size = %d; want %d", dfi.Size(), sfi.Size())
			}
			sa, da := DiskUsage(sfi), DiskUsage(dfi)
			t.Logf("%s (%s): 1 GiB file, source %d KiB on disk, copy %d KiB, %s", tc.name, method, sa>>10, da>>10, took)
			if method == agentapi.DriveSparse && da > sa-(256<<10) {
				t.Fatalf("sparse copy occupies %d bytes; want at most the source's %d minus its 256 KiB of explicit zeros", da, sa)
			}
			if da > 4<<20 {
				t.Fatalf("copy of a 1 GiB sparse file occupies %d bytes: it ballooned", da)
			}
		})
	}
}

// TestOpenBeneath: what a request names is opened only when it resolves,
// symlinks followed, to a regular file under the root.
func TestOpenBeneath(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "images")
	outside := filepath.Join(base, "secret")
	for _, d := range []string{root, filepath.Join(root, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(root, "vmlinux"), filepath.Join(root, "sub", "rootfs.ext4"), outside} {
		if err := os.WriteFile(f, []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(outside, filepath.Join(root, "escape")))
	must(os.Symlink("sub/rootfs.ext4", filepath.Join(root, "alias")))
	must(os.Symlink(base, filepath.Join(root, "up")))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644))

	for _, tc := range []struct {
		name, path string
		status     int
		code       string
		resolved   string
	}{
		{"inside", filepath.Join(root, "vmlinux"), 0, "", filepath.Join(root, "vmlinux")},
		{"symlink inside", filepath.Join(root, "alias"), 0, "", filepath.Join(root, "sub", "rootfs.ext4")},
		{"dot-dot", root + "/sub/../../secret", 400, "invalid_path", ""},
		{"dot-dot staying inside", root + "/sub/../vmlinux", 400, "invalid_path", ""},
		{"outside", outside, 403, "path_not_allowed", ""},
		{"symlink escape", filepath.Join(root, "escape"), 403, "path_not_allowed", ""},
		{"symlinked dir escape", filepath.Join(root, "up", "secret"), 403, "path_not_allowed", ""},
		{"directory", filepath.Join(root, "sub"), 400, "not_regular_file", ""},
		{"fifo", filepath.Join(root, "fifo"), 400, "not_regular_file", ""},
		{"missing", filepath.Join(root, "nope"), 400, "file_not_found", ""},
		{"relative", "vmlinux", 400, "invalid_path", ""},
		{"empty", "", 400, "invalid_path", ""},
		{"nul", filepath.Join(root, "vm\x00linux"), 400, "invalid_path", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, resolved, _, err := openBeneath(tc.path, []string{root}, "host_path")
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("openBeneath(%q) = %v; want it opened", tc.path, err)
				}
				f.Close()
				if resolved != tc.resolved {
					t.Fatalf("resolved = %q; want %q", resolved, tc.resolved)
				}
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("openBeneath(%q) opened %s; want %d %s", tc.path, resolved, tc.status, tc.code)
			}
			var e *apierr.Error
			if !errors.As(err, &e) || e.Status != tc.status || e.Code != tc.code || e.Message == "" {
				t.Fatalf("openBeneath(%q) = %v; want %d %s", tc.path, err, tc.status, tc.code)
			}
		})
	}
}

// TestSumCache: the checksum is computed once per file version; a rewrite
// that keeps size and mtime is still noticed (ctime moved).
func TestSumCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, []byte("first version"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newSumCache()
	ctx := context.Background()
	sum := func() (string, bool) {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		s, cached, err := c.sum(ctx, path, f, fi)
		if err != nil {
			t.Fatal(err)
		}
		return s, cached
	}
	s1, cached := sum()
	if s1 != fileSum(t, path) || cached {
		t.Fatalf("first sum = %s cached=%v; want %s, computed", s1, cached, fileSum(t, path))
	}
	if s, cached := sum(); s != s1 || !cached {
		t.Fatalf("second sum = %s cached=%v; want the cached %s", s, cached, s1)
	}
	old := statOf(t, path).ModTime()
	time.Sleep(10 * time.Millisecond) // a ctime the clock can tell apart
	if err := os.WriteFile(path, []byte("other version"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	if s, cached := sum(); s == s1 || cached || s != fileSum(t, path) {
		t.Fatalf("after a same-size rewrite with the old mtime: %s cached=%v; want the new sum", s, cached)
	}

	// Concurrent callers of one version all get the same answer.
	if err := os.WriteFile(path, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var wg sync.WaitGroup
	sums := make([]string, 8)
	for i := range sums {
		wg.Go(func() { sums[i], _, _ = c.sum(ctx, path, f, fi) })
	}
	wg.Wait()
	for _, s := range sums {
		if s != fileSum(t, path) {
			t.Fatalf("concurrent sums %v; want all %s", sums, fileSum(t, path))
		}
	}
}
