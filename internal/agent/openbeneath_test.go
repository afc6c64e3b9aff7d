package agent

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"
)

// TestLogsRefuseSymlinks: a link planted in one VM's run dir, to another
// VM's file, is never followed by the logs and metrics endpoints (403);
// the VM's own files still read.
func TestLogsRefuseSymlinks(t *testing.T) {
	e := newEnv(t)
	victim, thief, own := uuid.NewString(), uuid.NewString(), uuid.NewString()
	for _, id := range []string{victim, thief, own} {
		if err := os.MkdirAll(filepath.Join(e.layout.VMDir(id), "logs"), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	secret := "victim-secret-line"
	for _, p := range []string{e.layout.ConsolePath(victim), e.layout.LogPath(victim), e.layout.MetricsPath(victim)} {
		if err := os.WriteFile(p, []byte(`{"x":"`+secret+`"}`+"\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	// The thief's log and metrics are links to the victim's files.
	for _, l := range [][2]string{
		{e.layout.ConsolePath(victim), e.layout.LogPath(thief)},
		{e.layout.ConsolePath(victim), e.layout.ConsolePath(thief)},
		{e.layout.MetricsPath(victim), e.layout.MetricsPath(thief)},
	} {
		if err := os.Symlink(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.layout.LogPath(own), []byte("own line\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		"/agent/v1/vms/" + thief + "/logs?source=fc",
		"/agent/v1/vms/" + thief + "/logs?source=console",
		"/agent/v1/vms/" + thief + "/metrics",
	} {
		resp, raw := e.do("GET", path, testToken, nil)
		if resp.StatusCode != http.StatusForbidden || strings.Contains(string(raw), secret) {
			t.Errorf("GET %s through a link: %d %s; want 403 without the victim's data", path, resp.StatusCode, raw)
		}
	}
	// A linked logs dir is refused too.
	if err := os.RemoveAll(filepath.Join(e.layout.VMDir(thief), "logs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(e.layout.VMDir(victim), "logs"), filepath.Join(e.layout.VMDir(thief), "logs")); err != nil {
		t.Fatal(err)
	}
	if resp, raw := e.do("GET", "/agent/v1/vms/"+thief+"/logs?source=console", testToken, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a linked logs dir: %d %s; want 403", resp.StatusCode, raw)
	}
	if resp, raw := e.do("GET", "/agent/v1/vms/"+own+"/logs?source=fc", testToken, nil); resp.StatusCode != http.StatusOK || !strings.Contains(string(raw), "own line") {
		t.Errorf("own log: %d %s", resp.StatusCode, raw)
	}
}

// TestOpenNoLinks covers both ways openNoLinks opens: openat2, and the
// component walk of kernels without it.
func TestOpenNoLinks(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "a", "logs"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "a", "logs", "f"), []byte("ok"), 0o640); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("no"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{outside, "a/logs/out"}, {filepath.Join(root, "a", "logs"), "b"}, {"f", "a/logs/rel"}} {
		if err := os.Symlink(l[0], filepath.Join(root, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, "a", "logs", "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	read := func(f *os.File) string { b, _ := io.ReadAll(f); f.Close(); return string(b) }
	if f, err := openNoLinks(root, "a/logs/f"); err != nil || read(f) != "ok" {
		t.Fatalf("a plain file: %v", err)
	}
	for _, rel := range []string{"a/logs/out", "b/f", "a/logs/rel", "a/logs/fifo", "../x", "a/../../x", "a/logs"} {
		if f, err := openNoLinks(root, rel); !errors.Is(err, errSymlink) {
			if f != nil {
				f.Close()
			}
			t.Errorf("openNoLinks(%q) = %v; want errSymlink", rel, err)
		}
	}
	if _, err := openNoLinks(root, "a/logs/missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v; want not exist", err)
	}
	// The walk without openat2.
	dirfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	for rel, wantErr := range map[string]error{"a/logs/f": nil, "a/logs/out": unix.ELOOP, "b/f": unix.ENOTDIR, "a/logs/rel": unix.ELOOP} {
		fd, err := openNoFollow(dirfd, rel, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK)
		if fd >= 0 {
			unix.Close(fd)
		}
		if !errors.Is(err, wantErr) && !(wantErr == nil && err == nil) {
			t.Errorf("openNoFollow(%q) = %v; want %v", rel, err, wantErr)
		}
	}
}
