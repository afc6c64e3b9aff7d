package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

func TestProxyTimeoutHeaderAgrees(t *testing.T) {
	if agentapi.HeaderProxyTimeout != HeaderTimeout {
		t.Fatalf("agentapi.HeaderProxyTimeout = %q; the proxy reads %q", agentapi.HeaderProxyTimeout, HeaderTimeout)
	}
}

func writeAt(t *testing.T, path string, off int64, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(s), off); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, off int64, n int) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSnapshotSwapRestore runs, through the agent with firecracker-sim, what
// the manager does for a VM whose writable drive has an absolute path (a
// dev-mode raw path): the snapshot preserves a copy of the drive; the
// restored VM loads paused (firecracker reopens the absolute path named in
// the state file), is switched to its own copy, and only then resumes. The
// guest continues from the snapshot and writes its own disk.
func TestSnapshotSwapRestore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	src, kernel, rootfs := e.newVM()
	e.boot(ctx, src, kernel, rootfs)
	writeAt(t, rootfs, 0, "snap")
	fc := e.client.Firecracker(src)
	console := e.layout.ConsolePath(src)
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := simtest.ReadCounter(console); n < 1 && time.Now().Before(deadline); n, _ = simtest.ReadCounter(console) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := fc.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	saved, err := simtest.ReadCounter(console)
	if err != nil {
		t.Fatal(err)
	}
	sid := uuid.NewString()
	paths, err := e.client.PrepareSnapshot(ctx, src, sid, agentapi.PrepareSnapshotRequest{
		Copies: []agentapi.SnapshotCopy{{Src: rootfs, Dst: "drives/rootfs.ext4"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := fc.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{SnapshotPath: paths.StatePath, MemFilePath: paths.MemPath}); err != nil {
		t.Fatal(err)
	}
	files, err := e.client.SnapshotFiles(ctx, src, sid)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]agentapi.SnapshotFile{}
	for _, f := range files.Files {
		got[f.Rel] = f
	}
	if len(got) != 3 || got["mem"].Size != 128<<20 || got["mem"].Allocated != 0 || got["drives/rootfs.ext4"].Size != 8<<20 || got["vmstate"].Size == 0 {
		t.Fatalf("snapshot files %+v", files.Files)
	}
	if err := fc.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	writeAt(t, rootfs, 0, "gone") // the source keeps writing its disk

	dst := uuid.NewString()
	tap, err := e.client.Tap(ctx, dst, agentapi.TapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := e.client.Spawn(ctx, dst, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128})
	if err != nil {
		t.Fatal(err)
	}
	err = e.client.RestoreDrives(ctx, dst, agentapi.RestoreDrivesRequest{SourceVMID: src, SnapshotID: sid,
		Files: []agentapi.RestoreFile{{Name: "drives/rootfs.ext4"}}})
	if err != nil {
		t.Fatal(err)
	}
	fc2 := e.client.Firecracker(dst)
	steps := []func() error{
		func() error { return fc2.PutLogger(ctx, firecracker.Logger{LogPath: sp.LogPath}) },
		func() error {
			return fc2.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{
				SnapshotPath: paths.StatePath, MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: paths.MemPath},
				NetworkOverrides: []firecracker.NetworkOverride{{IfaceID: "eth0", HostDevName: tap.Tap}}, ResumeVM: firecracker.Bool(false),
			})
		},
		func() error {
			return fc2.PatchDrive(ctx, firecracker.PartialDrive{DriveID: "rootfs", PathOnHost: "drives/rootfs.ext4"})
		},
		func() error { return fc2.Resume(ctx) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("restore step %d: %v", i, err)
		}
	}
	cfg, err := fc2.GetVMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Drives) != 1 || cfg.Drives[0].PathOnHost != "drives/rootfs.ext4" || len(cfg.NetworkInterfaces) != 1 ||
		cfg.NetworkInterfaces[0].HostDevName != tap.Tap || cfg.NetworkInterfaces[0].GuestMAC == tap.MAC {
		t.Fatalf("restored config %+v (its TAP %s; the MAC stays the source's)", cfg, tap.Tap)
	}
	own := filepath.Join(e.layout.VMDir(dst), "drives/rootfs.ext4")
	if s := readAt(t, own, 0, 4); s != "snap" {
		t.Fatalf("restored VM's disk starts with %q; want the snapshot's content", s)
	}
	console2 := e.layout.ConsolePath(dst)
	deadline = time.Now().Add(5 * time.Second)
	for n, _ := simtest.ReadCounter(console2); n <= saved && time.Now().Before(deadline); n, _ = simtest.ReadCounter(console2) {
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := os.ReadFile(console2)
	first := strings.Index(string(out), simtest.CounterPrefix)
	if first < 0 || !strings.HasPrefix(string(out[first:]), simtest.CounterPrefix+strconv.Itoa(saved+1)+"\n") {
		t.Fatalf("restored console %q; want it to continue at %d", out, saved+1)
	}

	// Deleting the snapshot keeps the live source's run dir.
	if err := e.client.DeleteSnapshot(ctx, src, sid); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(paths.Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir left: %v", err)
	}
	if _, err := os.Stat(e.layout.VMDir(src)); err != nil {
		t.Fatalf("run dir of the live source went with its snapshot: %v", err)
	}
	for _, id := range []string{src, dst} {
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

func wantAgentError(t *testing.T, what string, err error, status int) {
	t.Helper()
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Status != status || ae.Message == "" {
		t.Fatalf("%s: %v; want %d with a message", what, err, status)
	}
}

// TestSnapshotPathRules: names in snapshot requests stay inside their
// directories, symlinks included; refused requests leave no snapshot dir.
func TestSnapshotPathRules(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vm := uuid.NewString()
	vmDir := e.layout.VMDir(vm)
	if err := os.MkdirAll(filepath.Join(vmDir, "drives"), 0o750); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(vmDir, "drives/rootfs.ext4")
	if err := os.WriteFile(disk, []byte("disk"), 0o640); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(e.dir, "secret")
	os.WriteFile(outside, []byte("secret"), 0o600)
	os.Symlink(outside, filepath.Join(vmDir, "drives/link.ext4"))
	os.MkdirAll(filepath.Join(vmDir, "drives/adir"), 0o750)
	token := filepath.Join(e.layout.RunDir, "agent.token")
	os.WriteFile(token, []byte("secret"), 0o600)

	prep := []struct {
		name     string
		src, dst string
		status   int
	}{
		{"dst vmstate", "drives/rootfs.ext4", "vmstate", 400},
		{"dst escapes", "drives/rootfs.ext4", "../x", 400},
		{"dst absolute", "drives/rootfs.ext4", "/tmp/x", 400},
		{"dst unclean", "drives/rootfs.ext4", "drives//x", 400},
		{"dst reserved in run dir", "drives/rootfs.ext4", "sock/fc.sock", 400},
		{"src escapes", "../" + vm + "/drives/rootfs.ext4", "drives/x", 400},
		{"src reserved", "logs/fc.log", "drives/x", 400},
		{"src symlink outside", "drives/link.ext4", "drives/x", 403},
		{"src missing", "drives/none.ext4", "drives/x", 409},
		{"src directory", "drives/adir", "drives/x", 409},
		{"src agent file", token, "drives/x", 403},
	}
	for _, tc := range prep {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.PrepareSnapshot(ctx, vm, uuid.NewString(), agentapi.PrepareSnapshotRequest{
				Copies: []agentapi.SnapshotCopy{{Src: tc.src, Dst: tc.dst}},
			})
			wantAgentError(t, "prepare", err, tc.status)
			if entries, _ := os.ReadDir(e.layout.SnapshotsDir(vm)); len(entries) != 0 {
				t.Fatalf("refused prepare left %v", entries)
			}
		})
	}
	_, err := e.client.PrepareSnapshot(ctx, vm, "-x", agentapi.PrepareSnapshotRequest{})
	wantAgentError(t, "bad snapshot id", err, 400)
	_, err = e.client.PrepareSnapshot(ctx, uuid.NewString(), uuid.NewString(), agentapi.PrepareSnapshotRequest{})
	wantAgentError(t, "no run dir", err, 404)
	_, err = e.client.PrepareSnapshot(ctx, vm, uuid.NewString(), agentapi.PrepareSnapshotRequest{Copies: []agentapi.SnapshotCopy{
		{Src: "drives/rootfs.ext4", Dst: "drives/a"}, {Src: "drives/rootfs.ext4", Dst: "drives/a"},
	}})
	wantAgentError(t, "duplicate dst", err, 400)

	// A good snapshot dir, then restores with bad names.
	sid := uuid.NewString()
	if _, err := e.client.PrepareSnapshot(ctx, vm, sid, agentapi.PrepareSnapshotRequest{
		Copies: []agentapi.SnapshotCopy{{Src: "drives/rootfs.ext4", Dst: "drives/rootfs.ext4"}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.PrepareSnapshot(ctx, vm, sid, agentapi.PrepareSnapshotRequest{}); err == nil {
		t.Fatal("prepare of an existing snapshot dir succeeded")
	}
	target := uuid.NewString()
	os.MkdirAll(e.layout.VMDir(target), 0o750)
	for _, tc := range []struct {
		name   string
		req    agentapi.RestoreDrivesRequest
		status int
	}{
		{"escapes", agentapi.RestoreDrivesRequest{SourceVMID: vm, SnapshotID: sid, Files: []agentapi.RestoreFile{{Name: "../../x"}}}, 400},
		{"reserved", agentapi.RestoreDrivesRequest{SourceVMID: vm, SnapshotID: sid, Files: []agentapi.RestoreFile{{Name: "sock/fc.sock"}}}, 400},
		{"state file", agentapi.RestoreDrivesRequest{SourceVMID: vm, SnapshotID: sid, Files: []agentapi.RestoreFile{{Name: "mem"}}}, 400},
		{"bad source id", agentapi.RestoreDrivesRequest{SourceVMID: "../x", SnapshotID: sid}, 400},
		{"no snapshot", agentapi.RestoreDrivesRequest{SourceVMID: vm, SnapshotID: uuid.NewString()}, 404},
		{"missing file", agentapi.RestoreDrivesRequest{SourceVMID: vm, SnapshotID: sid, Files: []agentapi.RestoreFile{{Name: "drives/none"}}}, 409},
	} {
		t.Run("restore "+tc.name, func(t *testing.T) {
			wantAgentError(t, "restore-drives", e.client.RestoreDrives(ctx, target, tc.req), tc.status)
		})
	}
	// A read-only file is linked, a writable one copied.
	err = e.client.RestoreDrives(ctx, target, agentapi.RestoreDrivesRequest{SourceVMID: vm, SnapshotID: sid,
		Files: []agentapi.RestoreFile{{Name: "drives/rootfs.ext4", ReadOnly: true}}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(filepath.Join(e.layout.SnapshotDir(vm, sid), "drives/rootfs.ext4"))
	b, _ := os.Stat(filepath.Join(e.layout.VMDir(target), "drives/rootfs.ext4"))
	if !os.SameFile(a, b) {
		t.Fatal("read-only restore was not a hard link")
	}
	hs, err := e.client.Snapshots(ctx)
	if err != nil || len(hs.Items) != 1 || hs.Items[0].SnapshotID != sid || hs.Items[0].VMID != vm {
		t.Fatalf("host snapshots %+v, %v", hs.Items, err)
	}
}

// TestSnapshotDeleteGC: deleting the last snapshot of a deleted VM (its
// run dir holds only snapshots/) removes the run dir; a live VM's stays;
// deleting twice is fine.
func TestSnapshotDeleteGC(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	live, gone := uuid.NewString(), uuid.NewString()
	s1, s2 := uuid.NewString(), uuid.NewString()
	for _, id := range []string{live, gone} {
		for _, sid := range []string{s1, s2} {
			os.MkdirAll(e.layout.SnapshotDir(id, sid), 0o750)
			os.WriteFile(filepath.Join(e.layout.SnapshotDir(id, sid), "vmstate"), []byte("x"), 0o640)
		}
	}
	os.MkdirAll(e.layout.LogsDir(live), 0o750)
	for _, id := range []string{live, gone} {
		for _, sid := range []string{s1, s1, s2} {
			if err := e.client.DeleteSnapshot(ctx, id, sid); err != nil {
				t.Fatal(err)
			}
			if sid == s1 {
				if _, err := os.Stat(e.layout.VMDir(id)); err != nil {
					t.Fatalf("run dir of %s went while a snapshot is left", id)
				}
			}
		}
	}
	if _, err := os.Stat(e.layout.LogsDir(live)); err != nil {
		t.Fatalf("live VM's run dir lost: %v", err)
	}
	if _, err := os.Stat(e.layout.VMDir(gone)); !os.IsNotExist(err) {
		t.Fatalf("deleted VM's run dir left after its last snapshot: %v", err)
	}
}

// TestCopyFile: copies keep holes, replace the target atomically and
// leave no temporary file behind, also when they fail.
func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt(bytes.Repeat([]byte("a"), 8192), 0)
	f.WriteAt([]byte("middle"), 32<<20)
	f.Close()
	dst := filepath.Join(dir, "dst.img")
	os.WriteFile(dst, []byte("old content"), 0o600)

	m, err := CopyFile(context.Background(), dst, src)
	if err != nil || (m != CopySparse && m != CopyReflink) {
		t.Fatalf("CopyFile = %s, %v", m, err)
	}
	sfi, _ := os.Stat(src)
	dfi, _ := os.Stat(dst)
	if dfi.Size() != 64<<20 || readAt(t, dst, 0, 1) != "a" || readAt(t, dst, 32<<20, 6) != "middle" || readAt(t, dst, 16<<20, 1) != "\x00" {
		t.Fatal("copy differs from the source")
	}
	if DiskUsage(dfi) > DiskUsage(sfi)+1<<20 {
		t.Fatalf("copy occupies %d bytes, source %d: holes were filled", DiskUsage(dfi), DiskUsage(sfi))
	}
	if m, err := LinkOrCopy(context.Background(), filepath.Join(dir, "link.img"), src); err != nil || m != CopyLink {
		t.Fatalf("LinkOrCopy = %s, %v", m, err)
	}
	if _, err := CopyFile(context.Background(), filepath.Join(dir, "d2"), dir); err == nil {
		t.Fatal("copying a directory succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := CopyFile(ctx, filepath.Join(dir, "d3"), src); err == nil && m != CopyReflink {
		t.Fatal("a canceled copy succeeded")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file %s left", e.Name())
		}
	}
	if err := os.Remove(filepath.Join(dir, "d2")); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("failed copy left its target: %v", err)
	}
}
