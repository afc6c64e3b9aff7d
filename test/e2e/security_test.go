package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/pki/pkitest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// capsArg is the launcher's list of the capabilities the agent documents
// for jail mode, and their mask as /proc shows it.
func capsArg() (string, uint64) {
	var parts []string
	var mask uint64
	for _, c := range agent.Capabilities(true) {
		parts = append(parts, strconv.Itoa(c.Bit))
		mask |= 1 << uint(c.Bit)
	}
	return strings.Join(parts, ","), mask
}

// procStatus reads /proc/<pid>/status into a map.
func procStatus(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

func sameInode(t testing.TB, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if syscall.Stat(a, &sa) != nil || syscall.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// TestSecureFleet runs the production configuration end to end: manager
// and agent in prod mode with mutual TLS (certificates from `nexus manager
// bootstrap --ca-dir` and `nexus cert issue`), the agent with exactly the
// capabilities it documents (not full root), every VMM jailed. A VM boots
// from registered images and a user sees what they always see — logs,
// console, metrics, pause and resume, a snapshot restored as a second VM
// that continues the guest — while each VMM runs as its own uid with no
// capabilities in its chroot. The certificates rotate while the VMs run.
// Deleting everything leaves no process, chroot, mount, cgroup, TAP or
// run dir.
func TestSecureFleet(t *testing.T) {
	keep, mask := capsArg()
	c := newClusterWith(t, clusterOpts{engine: "sqlite", agents: 1, tls: true, mgrArgs: []string{"--mode", "prod"},
		env: []string{"NEXUS_MODE=prod", "FC_JAIL_UID_BASE=2140000000", "FC_JAIL_UID_COUNT=100", capsEnv + "=" + keep}})
	ctx := context.Background()
	a := c.agents[0]

	// The agent: exactly its documented capabilities; TLS; jail mode on
	// by default in prod.
	if eff := procStatus(t, a.cmd.Process.Pid)["CapEff"]; eff != fmt.Sprintf("%016x", mask) {
		t.Fatalf("agent CapEff %s; want %016x (%s)", eff, mask, keep)
	}
	h, err := c.agentClient(a).Health(ctx)
	if err != nil || h.Jail != "helper" || !h.TLS || !h.MutualTLS {
		t.Fatalf("agent health %+v, %v; want jail helper with mutual TLS", h, err)
	}
	if resp, err := http.Get("http://" + a.net.agentIP + ":9090/agent/v1/health"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), "HTTPS") {
			t.Fatalf("plain HTTP to the agent: %d %q", resp.StatusCode, b)
		}
	}

	// Images (prod mode boots registered images only).
	dir := a.imagesDir(t)
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644); err != nil {
		t.Fatal(err)
	}
	simtest.WriteRootfs(t, dir, 16)
	kernel := mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: filepath.Join(dir, "vmlinux"), Project: "*"})
	rootfs := mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "rootfs", Name: "base", HostPath: filepath.Join(dir, "rootfs.ext4"), Project: "*"})
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "jailed", VMConfig: apitypes.VMConfig{
		MemMib: intp(64), KernelImageID: kernel.ID, RootfsImageID: rootfs.ID}}, true)
	if err != nil || vm.State != "running" {
		t.Fatalf("create: %v %+v", err, vm)
	}
	if vm.APISock != a.layout().SockPath(vm.ID) || vm.LogPath != a.layout().LogPath(vm.ID) {
		t.Fatalf("vm paths %s, %s: jail mode must not change them", vm.APISock, vm.LogPath)
	}

	// The VMM, seen from the host.
	jailRoot := filepath.Join(a.runDir, "jail", "firecracker-sim", vm.ID, "root")
	checkJailed := func(id string, root string) int {
		t.Helper()
		pid := vmmPIDOf(t, c, a, id)
		st := procStatus(t, pid)
		uid, _ := strconv.Atoi(strings.Fields(st["Uid"])[0])
		if uid < 2140000000 || uid >= 2140000100 || st["Uid"] != strings.TrimSpace(strings.Repeat(strconv.Itoa(uid)+" ", 4)) {
			t.Errorf("vmm %d Uid %q; want one uid of the range", pid, st["Uid"])
		}
		for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"} {
			if st[k] != want {
				t.Errorf("vmm %d %s = %s, want %s", pid, k, st[k], want)
			}
		}
		if !sameInode(t, fmt.Sprintf("/proc/%d/root", pid), root) {
			t.Errorf("vmm %d: its root is not its chroot %s", pid, root)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/etc/passwd", pid)); err == nil {
			t.Errorf("vmm %d sees the host's /etc/passwd", pid)
		}
		owner, _ := agent.ReadInstanceID(a.runDir)
		limited := false
		for _, d := range vmm.CgroupDirs(owner, id) {
			for _, f := range []string{"memory.max", "memory.limit_in_bytes"} {
				if b, err := os.ReadFile(filepath.Join(d, f)); err == nil {
					limited = true
					if got := strings.TrimSpace(string(b)); got != strconv.Itoa((64+64)<<20) {
						t.Errorf("%s/%s = %s; want guest memory + 64 MiB", d, f, got)
					}
				}
			}
		}
		if !limited {
			t.Errorf("vmm of %s has no memory limit in %v", id, vmm.CgroupDirs(owner, id))
		}
		return uid
	}
	uid1 := checkJailed(vm.ID, jailRoot)

	// What a user sees is unchanged.
	waitCounter(t, c, vm.ID, 1)
	fcLog, err := c.client.Logs(ctx, vm.ID, "fc", 100)
	if err != nil || !strings.Contains(strings.Join(fcLog.Lines, "\n"), "InstanceStart") {
		t.Fatalf("firecracker log: %v %q", err, fcLog.Lines)
	}
	for _, action := range []string{"pause", "resume"} {
		if err := c.client.VMAction(ctx, vm.ID, action); err != nil {
			t.Fatalf("%s: %v", action, err)
		}
	}
	var rec map[string]any
	eventually(t, 10*time.Second, "a metrics record", func() error {
		return c.client.Do(ctx, "GET", "/v1/metrics/recent", map[string][]string{"id": {vm.ID}}, nil, &rec)
	})

	// Snapshot, and a second jailed VM restored from it.
	snap, err := createSnapshot(c.client, vm.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	saved := counters(t, c, vm.ID)
	restored, err := restoreSnapshot(c.client, snap.SnapshotID, "restored")
	if err != nil {
		t.Fatal(err)
	}
	waitCounter(t, c, restored.ID, saved[len(saved)-1])
	uid2 := checkJailed(restored.ID, filepath.Join(a.runDir, "jail", "firecracker-sim", restored.ID, "root"))
	if uid2 == uid1 {
		t.Fatalf("two VMMs share uid %d", uid1)
	}

	// Rotation while the VMs run: new certificates for manager and agent
	// (the CLI replaces the files), served from the next connection on.
	mgrAddr := fmt.Sprintf("127.0.0.1:%d", c.port)
	agentAddr := a.net.agentIP + ":9090"
	m0 := pkitest.ServedSerial(t, mgrAddr, c.tls.mgr)
	a0 := pkitest.ServedSerial(t, agentAddr, c.tls.mgr)
	for _, args := range [][]string{
		{"cert", "issue", "--ca-dir", c.tls.caDir, "--host", "manager", "--san", "127.0.0.1," + a.net.hostIP},
		{"cert", "issue", "--ca-dir", c.tls.caDir, "--host", a.name, "--san", a.net.agentIP},
	} {
		if out, err := exec.Command(bins.nexus, args...).CombinedOutput(); err != nil {
			t.Fatalf("nexus %v: %v\n%s", args, err, out)
		}
	}
	eventually(t, 5*time.Second, "rotated certificates served", func() error {
		m, ag := pkitest.ServedSerial(t, mgrAddr, c.tls.mgr), pkitest.ServedSerial(t, agentAddr, c.tls.mgr)
		if m == m0 || ag == a0 {
			return fmt.Errorf("still %s / %s", m, ag)
		}
		return nil
	})
	for _, action := range []string{"stop", "start"} {
		if err := c.client.VMAction(ctx, vm.ID, action); err != nil {
			t.Fatalf("%s after the rotation: %v", action, err)
		}
	}
	checkJailed(vm.ID, jailRoot)

	// Everything goes, and nothing is left.
	for _, id := range []string{vm.ID, restored.ID} {
		if err := c.client.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(vm.ID, restored.ID)
	c.assertHostsEmpty()
}

// vmmPIDOf is the pid of vmID's VMM, from agent a's inventory.
func vmmPIDOf(t testing.TB, c *cluster, a *agentProc, vmID string) int {
	t.Helper()
	inv, err := c.agentClient(a).Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range inv.VMMs {
		if v.VMID == vmID {
			return v.PID
		}
	}
	t.Fatalf("no vmm of vm %s in %+v", vmID, inv.VMMs)
	return 0
}
