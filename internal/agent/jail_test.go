package agent

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

func newJailEnv(t *testing.T) *env {
	return newEnvJail(t, &vmm.JailConfig{UIDBase: 2_120_000_000 + rand.IntN(100_000)*10, UIDCount: 10})
}

// bootJailed boots id as the manager does: TAP, spawn, its own copy of
// the rootfs (a jailed VMM writes only its own files), then the
// configuration through the proxy with host paths.
func (e *env) bootJailed(ctx context.Context, id, kernel, rootfs string) agentapi.SpawnResponse {
	e.t.Helper()
	tap, err := e.client.Tap(ctx, id, agentapi.TapRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	sp, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128})
	if err != nil {
		e.t.Fatal(err)
	}
	drive, err := e.client.PrepareDrive(ctx, id, agentapi.DriveRequest{DriveID: "rootfs", Source: rootfs})
	if err != nil {
		e.t.Fatal(err)
	}
	fc := e.client.Firecracker(id)
	steps := []func() error{
		func() error { return fc.PutLogger(ctx, firecracker.Logger{LogPath: sp.LogPath, Level: "Info"}) },
		func() error { return fc.PutMetrics(ctx, firecracker.Metrics{MetricsPath: sp.MetricsPath}) },
		func() error {
			return fc.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})
		},
		func() error { return fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel}) },
		func() error {
			return fc.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: drive.Path, IsReadOnly: firecracker.Bool(false)})
		},
		func() error {
			return fc.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: tap.Tap, GuestMAC: tap.MAC})
		},
		func() error { return fc.InstanceStart(ctx) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			e.t.Fatalf("boot step %d: %v", i, err)
		}
	}
	return sp
}

func waitCounter(t *testing.T, console string, above int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := simtest.ReadCounter(console)
		if n > above {
			return n
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(console)
			t.Fatalf("console %s: counter not above %d: %q", console, above, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestJailedLifecycle runs a jailed firecracker-sim through the agent API
// as the manager would — the same host paths as without a jail — and
// checks what a user notices: the guest boots on its own TAP (owned by
// the VMM's uid), its log and metrics arrive where they always do, a
// snapshot is written and a second jailed VMM restored from it continues
// the guest; a host file outside the VM's dirs is refused before
// firecracker sees it; deleting leaves no chroot, cgroup or mount.
func TestJailedLifecycle(t *testing.T) {
	e := newJailEnv(t)
	ctx := context.Background()
	src, kernel, rootfs := e.newVM()
	sp := e.bootJailed(ctx, src, kernel, rootfs)
	h, ok := e.sup.Get(src)
	if !ok || h.Jail == nil || h.Jail.UID == 0 {
		t.Fatalf("vmm of %s: %+v; want it jailed", src, h)
	}
	if sp.APISock != e.layout.SockPath(src) || sp.LogPath != e.layout.LogPath(src) {
		t.Fatalf("spawn answered %+v: the host paths must not change in jail mode", sp)
	}
	link, err := netlink.LinkByName(hostlayout.TapName(src))
	if err != nil {
		t.Fatal(err)
	}
	if tt, ok := link.(*netlink.Tuntap); !ok || int(tt.Owner) != h.Jail.UID || int(tt.Group) != h.Jail.GID {
		t.Fatalf("tap %+v: want it owned by the VMM's uid %d", link, h.Jail.UID)
	}
	if link.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
		t.Fatalf("tap %s has no carrier: the jailed VMM did not attach to it", link.Attrs().Name)
	}
	saved := waitCounter(t, e.layout.ConsolePath(src), 0)
	logs, err := e.client.Logs(ctx, src, "fc", 50)
	if err != nil || !strings.Contains(strings.Join(logs.Lines, "\n"), "InstanceStart") {
		t.Fatalf("firecracker log through the agent: %v %q", err, logs.Lines)
	}
	fc := e.client.Firecracker(src)
	if err := fc.FlushMetrics(ctx); err != nil {
		t.Fatal(err)
	}
	if m, err := e.client.Metrics(ctx, src); err != nil || m.Record == nil {
		t.Fatalf("metrics: %v %+v", err, m)
	}

	// A host file the VM may not see is refused by the agent; one it
	// could read but its uid cannot is refused with the reason.
	secret := filepath.Join(e.dir, "secret.img")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = fc.PatchDrive(ctx, firecracker.PartialDrive{DriveID: "rootfs", PathOnHost: secret})
	if fe, ok := firecracker.IsAPIError(err); !ok || fe.StatusCode != 403 || !strings.Contains(fe.Message, "not readable by the VM's uid") {
		t.Fatalf("a root-only host file as a drive: %v; want 403 naming the reason", err)
	}

	// Snapshot: firecracker writes into the VM's snapshot dir, as ever.
	if err := fc.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	saved = waitCounterStable(t, e.layout.ConsolePath(src), saved)
	sid := uuid.NewString()
	paths, err := e.client.PrepareSnapshot(ctx, src, sid, agentapi.PrepareSnapshotRequest{
		Copies: []agentapi.SnapshotCopy{{Src: "drives/rootfs.ext4", Dst: "drives/rootfs.ext4"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := fc.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{SnapshotPath: paths.StatePath, MemFilePath: paths.MemPath}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{paths.StatePath, paths.MemPath} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() == 0 {
			t.Fatalf("snapshot file %s: %v", p, err)
		}
		// Written, it is the agent's again: no VMM may change it later.
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm() != 0o644 {
			t.Fatalf("snapshot file %s: uid %d mode %v; want root's, 0644", p, st.Uid, fi.Mode())
		}
	}
	if err := fc.Resume(ctx); err != nil {
		t.Fatal(err)
	}

	// Restore into a second jailed VMM, with its own uid and chroot.
	dst := uuid.NewString()
	tap, err := e.client.Tap(ctx, dst, agentapi.TapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sp2, err := e.client.Spawn(ctx, dst, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128})
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := e.sup.Get(dst)
	if h2.Jail == nil || h2.Jail.UID == h.Jail.UID || h2.Jail.Root == h.Jail.Root {
		t.Fatalf("second vmm jail %+v; want its own uid and chroot (first: %+v)", h2.Jail, h.Jail)
	}
	if err := e.client.RestoreDrives(ctx, dst, agentapi.RestoreDrivesRequest{SourceVMID: src, SnapshotID: sid,
		Files: []agentapi.RestoreFile{{Name: "drives/rootfs.ext4"}}}); err != nil {
		t.Fatal(err)
	}
	fc2 := e.client.Firecracker(dst)
	if err := fc2.PutLogger(ctx, firecracker.Logger{LogPath: sp2.LogPath}); err != nil {
		t.Fatal(err)
	}
	if err := fc2.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{
		SnapshotPath: paths.StatePath, MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: paths.MemPath},
		NetworkOverrides: []firecracker.NetworkOverride{{IfaceID: "eth0", HostDevName: tap.Tap}}, ResumeVM: firecracker.Bool(true),
	}); err != nil {
		t.Fatal(err)
	}
	if n := waitCounter(t, e.layout.ConsolePath(dst), saved); n > saved+3 {
		t.Fatalf("restored guest at %d; want it to continue from %d", n, saved)
	}

	for _, id := range []string{src, dst} {
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.client.DeleteSnapshot(ctx, src, sid); err != nil {
		t.Fatal(err)
	}
	jails, _ := os.ReadDir(filepath.Join(e.layout.RunDir, "jail", filepath.Base(simtest.Binary(t))))
	if len(jails) != 0 {
		t.Errorf("chroots left: %v", jails)
	}
	for _, id := range []string{src, dst} {
		for _, dir := range vmm.CgroupDirs(e.owner, id) {
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgroup %s left", dir)
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), e.layout.RunDir) {
		t.Errorf("mounts under the run dir in the host's table:\n%s", mi)
	}
}

// waitCounterStable waits until a paused guest's console stops moving and
// returns its last counter.
func waitCounterStable(t *testing.T, console string, n int) int {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	m, err := simtest.ReadCounter(console)
	if err != nil {
		t.Fatal(err)
	}
	return max(m, n)
}

// TestJailSymlinkPlanted: a jailed VMM that plants a symlink in the part
// of its chroot it owns cannot make the agent link files outside it.
func TestJailSymlinkPlanted(t *testing.T) {
	e := newJailEnv(t)
	ctx := context.Background()
	id := uuid.NewString()
	if _, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 64}); err != nil {
		t.Fatal(err)
	}
	h, _ := e.sup.Get(id)
	// The VMM owns its socket dir in the jail: what it could do there, the
	// test does as root.
	outside := t.TempDir()
	sockDir := filepath.Join(h.Jail.Root, e.layout.SockDir(id))
	if err := os.Symlink(outside, filepath.Join(sockDir, "vsock")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sockDir, h.Jail.UID, h.Jail.GID); err != nil {
		t.Fatal(err)
	}
	d := h.Jail.Dir()
	f, err := os.Open(simtest.WriteKernel(t, e.dir))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rel := strings.TrimPrefix(e.layout.SockDir(id), "/") + "/vsock/k"
	err = d.Link(rel, f)
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("the agent followed a planted symlink out of the jail: %v in %s", entries, outside)
	}
	if err == nil {
		t.Fatalf("linking through a symlink that leaves the jail succeeded")
	}
}
