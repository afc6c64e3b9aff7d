package vmm

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agent/jail"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

func TestMain(m *testing.M) {
	// The supervisor re-executes this test binary as the jail helper.
	jail.RunIfHelper()
	lateListenerIfAsked()
	simtest.Main(m)
}

// jailedSupervisor is a supervisor in jail mode on a run dir of its own,
// with a uid range no other test uses.
func jailedSupervisor(t *testing.T) (*Supervisor, hostlayout.Layout, string) {
	t.Helper()
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("", "nxj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	layout := hostlayout.Layout{RunDir: filepath.Join(dir, "run")}
	owner := fmt.Sprintf("%012x", rand.Int64N(1<<48))
	sup, err := New(Config{Bin: simtest.Binary(t), Layout: layout, Owner: owner,
		Jail: &JailConfig{UIDBase: 2_100_000_000 + rand.IntN(1_000_000)*10, UIDCount: 10}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, h := range sup.List() {
			_ = sup.Stop(context.Background(), h.VMID, 0)
		}
		sup.ReleaseCgroups()
	})
	return sup, layout, owner
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		t.Fatalf("stat %s: %v", a, err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		t.Fatalf("stat %s: %v", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// mountsUnder lists the host's mount points under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// TestJailedVMM starts firecracker-sim in jail mode and checks, from the
// host, what confines it: its identity and privileges, its root, its
// namespaces, its cgroup's limits; that it cannot open a host file; and
// that a stop leaves no process, mount, chroot or cgroup behind.
func TestJailedVMM(t *testing.T) {
	sup, layout, owner := jailedSupervisor(t)
	ctx := context.Background()
	id := uuid.NewString()
	h, _, err := sup.Spawn(ctx, id, SpawnOptions{Vcpu: 1, MemMib: 128})
	if err != nil {
		t.Fatal(err)
	}
	if h.Jail == nil || h.Jail.UID < sup.jail.cfg.UIDBase || h.Jail.UID >= sup.jail.cfg.UIDBase+10 {
		t.Fatalf("handle jail %+v: want a uid of the range", h.Jail)
	}
	if h.APISock != layout.SockPath(id) {
		t.Fatalf("api socket %s, want %s", h.APISock, layout.SockPath(id))
	}

	st := procStatus(t, h.PID)
	uid, gid := strconv.Itoa(h.Jail.UID), strconv.Itoa(h.Jail.GID)
	for k, want := range map[string]string{
		"Uid": strings.Repeat(uid+" ", 3) + uid, "Gid": strings.Repeat(gid+" ", 3) + gid,
		"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapInh": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Groups": "",
	} {
		if st[k] != want {
			t.Errorf("/proc/%d/status %s = %q, want %q", h.PID, k, st[k], want)
		}
	}
	if ns := strings.Fields(st["NSpid"]); len(ns) != 2 || ns[1] != "1" {
		t.Errorf("NSpid %q: want PID 1 of a PID namespace of its own", st["NSpid"])
	}
	for _, ns := range []string{"mnt", "pid"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", h.PID, ns))
		if err != nil || its == mine {
			t.Errorf("%s namespace %q (ours %q): want its own", ns, its, mine)
		}
	}

	// Its root is the chroot, which holds its socket and its devices and
	// nothing of the host.
	procRoot := fmt.Sprintf("/proc/%d/root", h.PID)
	if !sameFile(t, procRoot, h.Jail.Root) {
		t.Errorf("root of pid %d is not the chroot %s", h.PID, h.Jail.Root)
	}
	if !sameFile(t, procRoot+layout.SockPath(id), layout.SockPath(id)) {
		t.Errorf("the API socket on the host is not the one in the jail")
	}
	for _, host := range []string{"/etc/passwd", "/proc/self", layout.VMDir(id) + "/vmm.json", simtest.Binary(t)} {
		if _, err := os.Lstat(procRoot + host); err == nil {
			t.Errorf("%s is visible inside the jail", host)
		}
	}
	var tun syscall.Stat_t
	if err := syscall.Stat(procRoot+"/dev/net/tun", &tun); err != nil || tun.Mode&syscall.S_IFMT != syscall.S_IFCHR ||
		tun.Rdev != 10<<8|200 || int(tun.Uid) != h.Jail.UID {
		t.Errorf("/dev/net/tun in the jail: %+v, %v", tun, err)
	}
	if m := mountsUnder(t, filepath.Dir(layout.RunDir)); len(m) != 0 {
		t.Errorf("the jail's mounts reached the host's mount table: %v", m)
	}

	// Asked to open a host file, it finds nothing: there is no host.
	secret := filepath.Join(filepath.Dir(layout.RunDir), "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fc := firecracker.NewUnix(h.APISock)
	err = fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: secret})
	if fe, ok := firecracker.IsAPIError(err); !ok || !strings.Contains(fe.FaultMessage, "No such file or directory") {
		t.Errorf("the jailed VMM was asked to open %s: %v; want no such file", secret, err)
	}
	// A file linked into its jail is what it can open.
	if err := exposeOwn(h.Jail.Dir(), secret, sup.jail.execName); err != nil {
		t.Fatal(err)
	}
	if err := fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: secret}); err != nil {
		t.Errorf("a file linked into the jail: %v", err)
	}

	// Its cgroup carries the limits of its size.
	limited := false
	for _, dir := range CgroupDirs(owner, id) {
		for file, want := range map[string]string{"memory.max": "201326592", "memory.limit_in_bytes": "201326592", "cpu.max": "125000 100000", "cpu.cfs_quota_us": "125000"} {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
				if got := strings.TrimSpace(string(b)); got != want {
					t.Errorf("%s/%s = %s, want %s", dir, file, got, want)
				}
				limited = limited || strings.HasPrefix(file, "memory")
			}
		}
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if !strings.Contains("\n"+string(procs), "\n"+strconv.Itoa(h.PID)+"\n") {
			t.Errorf("pid %d is not in its group %s (%q)", h.PID, dir, procs)
		}
	}
	if !limited && len(sup.MissingLimits()) == 0 {
		t.Errorf("no memory limit in any of %v", CgroupDirs(owner, id))
	}
	// Tasks: RLIMIT_NPROC of its own uid.
	if limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", h.PID)); err != nil ||
		!strings.Contains(strings.Join(strings.Fields(string(limits)), " "), "Max processes 66 66 processes") {
		t.Errorf("/proc/%d/limits: %v\n%s", h.PID, err, limits)
	}

	if err := sup.Stop(ctx, id, time.Second); err != nil {
		t.Fatal(err)
	}
	if alive(h.PID, h.StartTicks, id) {
		t.Errorf("pid %d alive after stop", h.PID)
	}
	if _, err := os.Stat(filepath.Dir(h.Jail.Root)); !os.IsNotExist(err) {
		t.Errorf("jail %s left after stop: %v", h.Jail.Root, err)
	}
	for _, dir := range CgroupDirs(owner, id) {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left after stop", dir)
		}
	}
	if m := mountsUnder(t, filepath.Dir(layout.RunDir)); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// TestJailUIDs: every live VMM has a uid of its own; a uid comes back to
// the pool when its VMM stops; the range running out is a clear error.
func TestJailUIDs(t *testing.T) {
	sup, _, _ := jailedSupervisor(t)
	sup.jail.cfg.UIDCount = 3
	ctx := context.Background()
	seen := map[int]string{}
	var ids []string
	for range 3 {
		id := uuid.NewString()
		h, _, err := sup.Spawn(ctx, id, SpawnOptions{Vcpu: 1, MemMib: 64})
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[h.Jail.UID]; dup {
			t.Fatalf("uid %d given to %s and %s", h.Jail.UID, other, id)
		}
		seen[h.Jail.UID] = id
		ids = append(ids, id)
	}
	_, _, err := sup.Spawn(ctx, uuid.NewString(), SpawnOptions{Vcpu: 1, MemMib: 64})
	if err == nil || !strings.Contains(err.Error(), "no free uid in the jail range") {
		t.Fatalf("a 4th VMM in a range of 3: %v", err)
	}
	if err := sup.Stop(ctx, ids[1], 0); err != nil {
		t.Fatal(err)
	}
	h, _, err := sup.Spawn(ctx, uuid.NewString(), SpawnOptions{Vcpu: 1, MemMib: 64})
	if err != nil {
		t.Fatalf("after a stop freed a uid: %v", err)
	}
	if seen[h.Jail.UID] != ids[1] {
		t.Fatalf("uid %d: want the freed one", h.Jail.UID)
	}
}

func TestJailerArgv(t *testing.T) {
	got := strings.Join(JailerArgv("/usr/bin/jailer", "/usr/bin/firecracker", "/srv/fc/jail", "3f2a", 2000000001, 2000000001, "/srv/fc/vms/3f2a/sock/fc.sock"), " ")
	want := "/usr/bin/jailer --id 3f2a --exec-file /usr/bin/firecracker --uid 2000000001 --gid 2000000001 --chroot-base-dir /srv/fc/jail -- --api-sock /srv/fc/vms/3f2a/sock/fc.sock"
	if got != want {
		t.Fatalf("JailerArgv = %s\nwant %s", got, want)
	}
}

func TestLimitsFor(t *testing.T) {
	for _, tc := range []struct {
		vcpu, mem int
		want      Limits
	}{
		{1, 128, Limits{MemoryBytes: 192 << 20, CPUQuotaUs: 125_000, Pids: 66}},
		{4, 1024, Limits{MemoryBytes: 1088 << 20, CPUQuotaUs: 425_000, Pids: 72}},
		{0, 0, Limits{Pids: 66}},
	} {
		if got := LimitsFor(tc.vcpu, tc.mem); got != tc.want {
			t.Errorf("LimitsFor(%d, %d) = %+v; want %+v", tc.vcpu, tc.mem, got, tc.want)
		}
	}
}

// TestJailedAdoption: an agent that restarts finds its jailed VMMs again —
// their uids, chroots and limits from their handles — and stops them
// cleanly; a new VMM does not get a uid a running one has.
func TestJailedAdoption(t *testing.T) {
	sup, layout, owner := jailedSupervisor(t)
	ctx := context.Background()
	id := uuid.NewString()
	h, _, err := sup.Spawn(ctx, id, SpawnOptions{Vcpu: 1, MemMib: 64})
	if err != nil {
		t.Fatal(err)
	}
	// The restarted agent: a new supervisor on the same run dir and range.
	sup2, err := New(Config{Bin: sup.cfg.Bin, Layout: layout, Owner: owner, Jail: &sup.jail.cfg})
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := sup2.Recover()
	if err != nil || len(adopted) != 1 || adopted[0].Jail == nil || *adopted[0].Jail != *h.Jail {
		t.Fatalf("adopted %+v, %v; want the jailed VMM with its jail %+v", adopted, err, h.Jail)
	}
	if _, err := os.Stat(h.Jail.Root); err != nil {
		t.Fatalf("the restart removed the live VMM's chroot: %v", err)
	}
	h2, _, err := sup2.Spawn(ctx, uuid.NewString(), SpawnOptions{Vcpu: 1, MemMib: 64})
	if err != nil {
		t.Fatal(err)
	}
	if h2.Jail.UID == h.Jail.UID {
		t.Fatalf("uid %d handed out twice", h.Jail.UID)
	}
	for _, x := range []Handle{h, h2} {
		if err := sup2.Stop(ctx, x.VMID, time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Dir(x.Jail.Root)); !os.IsNotExist(err) {
			t.Errorf("jail of %s left: %v", x.VMID, err)
		}
	}
}
