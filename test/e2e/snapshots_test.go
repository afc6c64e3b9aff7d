package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// snapVM creates a running VM with a kernel and a 16 MiB sparse rootfs
// (a dev-mode absolute path) and waits until its guest counted to min.
func snapVM(t testing.TB, c *cluster, name string, memMib, min int) (apitypes.VM, string) {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(c.dir, "img-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := simtest.WriteKernel(t, dir)
	rootfs := simtest.WriteRootfs(t, dir, 16)
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{
		Name: name, VMConfig: apitypes.VMConfig{MemMib: intp(memMib), KernelPath: kernel, RootfsPath: rootfs},
		Tags: map[string]string{"role": "source"},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
	if min > 0 {
		waitCounter(t, c, vm.ID, min)
	}
	return vm, rootfs
}

func createSnapshot(cl *nexus.Client, vmID string, resume *bool) (apitypes.SnapshotCreated, error) {
	var out apitypes.SnapshotCreated
	err := cl.Do(context.Background(), "POST", "/v1/vms/"+vmID+"/snapshots", nil, apitypes.CreateSnapshotRequest{Resume: resume}, &out)
	return out, err
}

func restoreSnapshot(cl *nexus.Client, sid, name string) (apitypes.RestoredVM, error) {
	var out apitypes.RestoredVM
	err := cl.Do(context.Background(), "POST", "/v1/snapshots/"+sid+"/instantiate", nil, apitypes.InstantiateSnapshotRequest{Name: name}, &out)
	return out, err
}

func getSnapshot(cl *nexus.Client, sid string) (apitypes.Snapshot, error) {
	var it apitypes.SnapshotItem
	err := cl.Do(context.Background(), "GET", "/v1/snapshots/"+sid, nil, nil, &it)
	return it.Item, err
}

func deleteSnapshot(cl *nexus.Client, sid string) error {
	return cl.Do(context.Background(), "DELETE", "/v1/snapshots/"+sid, nil, nil, nil)
}

// counters returns every counter the guest printed, read through the API.
func counters(t testing.TB, c *cluster, vmID string) []int {
	t.Helper()
	l, err := c.client.Logs(context.Background(), vmID, "console", 10000)
	if err != nil {
		t.Fatalf("console of vm %s: %v", vmID, err)
	}
	var out []int
	for _, line := range l.Lines {
		if v, ok := strings.CutPrefix(line, simtest.CounterPrefix); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// waitCounter waits until the guest's last counter is at least min.
func waitCounter(t testing.TB, c *cluster, vmID string, min int) int {
	t.Helper()
	var last int
	eventually(t, time.Duration(min+5)*time.Second, fmt.Sprintf("vm %s counter ≥ %d", vmID, min), func() error {
		cs := counters(t, c, vmID)
		if len(cs) == 0 || cs[len(cs)-1] < min {
			return fmt.Errorf("counters %v", cs)
		}
		last = cs[len(cs)-1]
		return nil
	})
	return last
}

// assertNoSnapshotLeaks checks that no snapshot dir and no VM run dir is
// left on any host.
func (c *cluster) assertNoSnapshotLeaks() {
	c.t.Helper()
	for _, a := range c.agents {
		inv, err := c.agentClient(a).Snapshots(context.Background())
		if err != nil || len(inv.Items) != 0 {
			c.t.Errorf("host %s: snapshot dirs left: %+v, %v", a.name, inv.Items, err)
		}
		if dirs, _ := os.ReadDir(a.layout().VMsDir()); len(dirs) != 0 {
			c.t.Errorf("host %s: run dirs left: %v", a.name, dirs)
		}
	}
}

// hasTap reports whether the host has the TAP, by the agent's inventory.
func hasTap(t testing.TB, c *cluster, name string) bool {
	t.Helper()
	inv, err := c.agentClient(c.agents[0]).Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range inv.Taps {
		if tp.Name == name {
			return true
		}
	}
	return false
}

func apiErr(err error) *apierr.Error {
	var e *apierr.Error
	if errors.As(err, &e) {
		return e
	}
	return &apierr.Error{Message: fmt.Sprint(err)}
}

// TestSnapshotRestore: a running VM's snapshot restores as a new VM whose
// guest continues from the snapshotted counter while the source keeps
// running; the drive is preserved as of the snapshot although the source
// keeps writing; the restored VM is an ordinary VM afterwards (pause,
// stop, cold start, snapshot again); deleting the snapshot removes its
// files, and a deleted snapshot does not restore.
func TestSnapshotRestore(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			c := newCluster(t, engine, 1)
			ctx := context.Background()
			l := c.agents[0].layout()
			src, _ := snapVM(t, c, "src", 128, 2)
			disk := vmDisk(t, c, src.ID)
			mark(t, disk, "before-snapshot")

			// resume:false leaves the guest paused, so the counter read now
			// is exactly the saved one.
			no := false
			snap, err := createSnapshot(c.client, src.ID, &no)
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := c.client.GetVM(ctx, src.ID); v.State != "paused" {
				t.Fatalf("source after snapshot with resume:false is %s; want paused", v.State)
			}
			cs := counters(t, c, src.ID)
			saved := cs[len(cs)-1]
			if err := c.client.VMAction(ctx, src.ID, "resume"); err != nil {
				t.Fatal(err)
			}
			// The source keeps writing its disk after the snapshot.
			mark(t, disk, "after-snapshot!")

			dir := l.SnapshotDir(src.ID, snap.SnapshotID)
			wantFiles := map[string]int64{filepath.Join(dir, "vmstate"): -1, filepath.Join(dir, "mem"): 128 << 20, filepath.Join(dir, "drives/rootfs.ext4"): 16 << 20}
			if len(snap.Files) != len(wantFiles) {
				t.Fatalf("snapshot files %+v; want %v", snap.Files, wantFiles)
			}
			for _, f := range snap.Files {
				want, ok := wantFiles[f.Path]
				if !ok || (want >= 0 && f.Size != want) {
					t.Fatalf("snapshot file %+v; want one of %v", f, wantFiles)
				}
				if fi, err := os.Stat(f.Path); err != nil || fi.Size() != f.Size {
					t.Fatalf("file %s on disk: %v", f.Path, err)
				}
			}
			sn, err := getSnapshot(c.client, snap.SnapshotID)
			if err != nil {
				t.Fatal(err)
			}
			if sn.VMID != src.ID || sn.HostID != src.HostID || sn.MAC != src.MAC || !strings.HasSuffix(sn.FirecrackerVersion, "-sim") ||
				sn.SnapshotVersion == "" || *sn.Config.MemMib != 128 || sn.Config.KernelPath == "" || sn.Tags["role"] != "source" ||
				len(sn.Drives) != 1 || sn.Drives[0].Copy != "drives/rootfs.ext4" {
				t.Fatalf("catalog entry incomplete: %+v", sn)
			}
			if sn.AllocatedBytes >= 16<<20 {
				t.Fatalf("allocated %d bytes: the sparse memory and rootfs copies were filled in", sn.AllocatedBytes)
			}

			r, err := restoreSnapshot(c.client, snap.SnapshotID, "clone")
			if err != nil {
				t.Fatal(err)
			}
			if r.State != "running" || r.ID == src.ID || r.Tap != hostlayout.TapName(r.ID) || r.MAC != src.MAC ||
				r.HostID != src.HostID || r.RootfsPath != "drives/rootfs.ext4" || len(r.Notices) == 0 || !strings.Contains(r.Notices[0], src.MAC) {
				t.Fatalf("restored VM: %+v", r)
			}
			if !hasTap(t, c, r.Tap) {
				t.Fatalf("restored VM's tap %s is not on the host", r.Tap)
			}
			// The guest continues from the snapshot, not from zero.
			waitCounter(t, c, r.ID, saved+2)
			if got := counters(t, c, r.ID); got[0] != saved+1 {
				t.Fatalf("restored guest printed %v; want it to continue at %d", got, saved+1)
			}
			// The source keeps running.
			waitCounter(t, c, src.ID, saved+2)
			// The restored VM has its own disk copy, as of the snapshot.
			if got := readMark(t, vmDisk(t, c, r.ID)); got != "before-snapshot" || vmDisk(t, c, r.ID) != filepath.Join(l.VMDir(r.ID), "drives/rootfs.ext4") {
				t.Fatalf("restored disk holds %q; want the snapshot's content", got)
			}
			assertEventLike(t, c, r.ID, "restoring from snapshot "+snap.SnapshotID, "guest MAC "+src.MAC)

			// An ordinary VM: pause/resume, stop, cold start from its own
			// disk, snapshot again (now with a run-dir relative drive).
			for _, a := range []string{"pause", "resume", "stop", "start"} {
				if err := c.client.VMAction(ctx, r.ID, a); err != nil {
					t.Fatalf("%s restored VM: %v", a, err)
				}
			}
			if v, _ := c.client.GetVM(ctx, r.ID); v.State != "running" || v.MAC != hostlayout.GuestMAC(r.ID).String() {
				t.Fatalf("restored VM after cold start: %s, mac %s; want running with its own MAC", v.State, v.MAC)
			}
			if d := vmDisk(t, c, r.ID); d != filepath.Join(l.VMDir(r.ID), "drives/rootfs.ext4") || readMark(t, d) != "before-snapshot" {
				t.Fatalf("cold boot of the restored VM uses %s (%q); want its own copy", d, readMark(t, d))
			}
			snap2, err := createSnapshot(c.client, r.ID, nil)
			if err != nil {
				t.Fatalf("snapshot of the restored VM: %v", err)
			}
			sn2, _ := getSnapshot(c.client, snap2.SnapshotID)
			if len(sn2.Drives) != 1 || sn2.Drives[0].Path != "drives/rootfs.ext4" || sn2.Drives[0].Swapped {
				t.Fatalf("second-generation snapshot drives: %+v", sn2.Drives)
			}
			r2, err := restoreSnapshot(c.client, snap2.SnapshotID, "clone-of-clone")
			if err != nil || r2.State != "running" {
				t.Fatalf("restore of the restored VM's snapshot: %+v, %v", r2, err)
			}
			if v, _ := c.client.GetVM(ctx, r.ID); v.State != "running" {
				t.Fatalf("restored VM after its own snapshot: %s", v.State)
			}

			// Delete: files gone, restore → 404.
			if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("snapshot dir %s left after delete", dir)
			}
			if _, err := restoreSnapshot(c.client, snap.SnapshotID, "too-late"); !isStatus(err, 404) {
				t.Fatalf("restore of a deleted snapshot: %v; want 404", err)
			}
			if err := deleteSnapshot(c.client, snap.SnapshotID); !isStatus(err, 404) {
				t.Fatalf("second delete: %v; want 404", err)
			}
			// VMs restored from a deleted snapshot keep running.
			waitCounter(t, c, r.ID, 2)
			if err := deleteSnapshot(c.client, snap2.SnapshotID); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{src.ID, r.ID, r2.ID} {
				if err := c.client.DeleteVM(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			c.assertNoLeaks(src.ID, r.ID, r2.ID)
			c.assertNoSnapshotLeaks()
		})
	}
}

// vmDisk is the file the VM's firecracker has as its root drive.
func vmDisk(t testing.TB, c *cluster, vmID string) string {
	t.Helper()
	cfg, err := c.agentClient(c.agents[0]).Firecracker(vmID).GetVMConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range cfg.Drives {
		if d.IsRootDevice {
			if filepath.IsAbs(d.PathOnHost) {
				return d.PathOnHost
			}
			return filepath.Join(c.agents[0].layout().VMDir(vmID), d.PathOnHost)
		}
	}
	t.Fatalf("vm %s has no root drive: %+v", vmID, cfg.Drives)
	return ""
}

// mark writes a marker at the start of a disk image (the simulated guest
// never writes its disk, so the test plays the guest).
func mark(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(append([]byte(s), 0), 0); err != nil {
		t.Fatal(err)
	}
}

func readMark(t testing.TB, path string) string {
	t.Helper()
	b := make([]byte, 64)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	s, _, _ := bytes.Cut(b, []byte{0})
	return string(s)
}

// assertEventLike checks the VM's events contain each substring.
func assertEventLike(t testing.TB, c *cluster, id string, subs ...string) {
	t.Helper()
	evs, err := c.client.Events(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, e := range evs.Items {
		all = append(all, e.Message)
	}
	joined := strings.Join(all, "\n")
	for _, s := range subs {
		if !strings.Contains(joined, s) {
			t.Fatalf("events of vm %s do not mention %q:\n%s", id, s, joined)
		}
	}
}

// TestSnapshotRestoreMany: ten VMs restored from one snapshot at once run
// side by side, each with its own TAP and process, all continuing from
// the snapshot.
func TestSnapshotRestoreMany(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	src, _ := snapVM(t, c, "src", 64, 1)
	snap, err := createSnapshot(c.client, src.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := restoreSnapshot(c.client, snap.SnapshotID, fmt.Sprintf("clone-%d", i))
			if err != nil {
				errs <- fmt.Errorf("restore %d: %w", i, err)
				return
			}
			ids[i] = r.ID
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	taps := map[string]bool{}
	for _, id := range ids {
		v, err := c.client.GetVM(ctx, id)
		if err != nil || v.State != "running" || taps[v.Tap] {
			t.Fatalf("clone %s: %+v, %v (taps so far %v)", id, v, err, taps)
		}
		taps[v.Tap] = true
		if !hasTap(t, c, v.Tap) {
			t.Fatalf("tap %s of clone %s is not on the host", v.Tap, id)
		}
	}
	if pids := vmmPIDs(c.agents[0].runDir); len(pids) != n+1 {
		t.Fatalf("%d vmm processes; want %d (source + %d clones)", len(pids), n+1, n)
	}
	inv, err := c.agentClient(c.agents[0]).Inventory(ctx)
	if err != nil || len(inv.VMMs) != n+1 {
		t.Fatalf("inventory: %d vmms, %v", len(inv.VMMs), err)
	}
	for _, id := range ids {
		if cs := counters(t, c, id); len(cs) > 0 && cs[0] <= 1 {
			t.Fatalf("clone %s started counting from scratch: %v", id, cs)
		}
	}
	if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
		t.Fatal(err)
	}
	res, err := c.client.Bulk(ctx, "delete", append(ids, src.ID))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			t.Fatalf("delete %s: %s", r.ID, r.Error)
		}
	}
	c.assertNoLeaks(append(ids, src.ID)...)
	c.assertNoSnapshotLeaks()
}

// TestSnapshotOutlivesItsVM: a snapshot of a deleted VM still restores;
// the VM's run dir keeps only snapshots/ and goes with the last snapshot.
func TestSnapshotOutlivesItsVM(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	l := c.agents[0].layout()
	src, _ := snapVM(t, c, "src", 64, 1)
	s1, err := createSnapshot(c.client, src.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := createSnapshot(c.client, src.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.client.DeleteVM(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(l.VMDir(src.ID)); len(entries) != 1 || entries[0].Name() != "snapshots" {
		t.Fatalf("run dir of the deleted VM holds %v; want only snapshots/", entries)
	}
	var list apitypes.SnapshotList
	if err := c.client.Do(ctx, "GET", "/v1/vms/"+src.ID+"/snapshots", nil, nil, &list); err != nil || len(list.Items) != 2 {
		t.Fatalf("snapshots of the deleted VM: %+v, %v", list.Items, err)
	}
	r, err := restoreSnapshot(c.client, s1.SnapshotID, "phoenix")
	if err != nil || r.State != "running" {
		t.Fatalf("restore after the source was deleted: %+v, %v", r, err)
	}
	waitCounter(t, c, r.ID, 2)
	if err := deleteSnapshot(c.client, s1.SnapshotID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.VMDir(src.ID)); err != nil {
		t.Fatalf("run dir went while snapshot %s is left: %v", s2.SnapshotID, err)
	}
	if err := deleteSnapshot(c.client, s2.SnapshotID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.VMDir(src.ID)); !os.IsNotExist(err) {
		t.Fatalf("run dir of the deleted VM left after its last snapshot went: %v", err)
	}
	if err := c.client.Do(ctx, "GET", "/v1/vms/"+src.ID+"/snapshots", nil, nil, &list); !isStatus(err, 404) {
		t.Fatalf("snapshots of a deleted VM with none left: %v; want 404", err)
	}
	if err := c.client.DeleteVM(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(src.ID, r.ID)
	c.assertNoSnapshotLeaks()
}

// TestSnapshotErrors: wrong states, unknown ids, bad input and other
// projects get clear 4xx answers that change nothing; firecracker's own
// refusals (a full disk while writing, a corrupted state file while
// loading) reach the caller with fault_message, and both sides roll back.
func TestSnapshotErrors(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	l := c.agents[0].layout()
	src, _ := snapVM(t, c, "src", 64, 1)
	no := false
	idle, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "idle", VMConfig: apitypes.VMConfig{KernelPath: src.KernelPath}, Start: &no}, true)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := createSnapshot(c.client, src.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	opB := nexus.New(c.url(), c.token(t, "bob", "operator", "team-b"))

	t.Run("table", func(t *testing.T) {
		cases := []struct {
			name, method, path, body string
			status                   int
			code                     string
		}{
			{"stopped vm", "POST", "/v1/vms/" + idle.ID + "/snapshots", `{}`, 409, "vm_not_running"},
			{"unknown vm", "POST", "/v1/vms/8e3c1d6c-0000-4000-8000-000000000000/snapshots", `{}`, 404, "not_found"},
			{"unknown field", "POST", "/v1/vms/" + src.ID + "/snapshots", `{"resume":true,"diff":true}`, 400, "invalid_request"},
			{"resume not bool", "POST", "/v1/vms/" + src.ID + "/snapshots", `{"resume":"yes"}`, 400, "invalid_request"},
			{"unknown snapshot", "GET", "/v1/snapshots/8e3c1d6c-0000-4000-8000-000000000000", "", 404, "not_found"},
			{"restore unknown", "POST", "/v1/snapshots/8e3c1d6c-0000-4000-8000-000000000000/instantiate", `{"name":"x"}`, 404, "not_found"},
			{"restore no name", "POST", "/v1/snapshots/" + snap.SnapshotID + "/instantiate", `{}`, 400, "invalid_request"},
			{"restore bad name", "POST", "/v1/snapshots/" + snap.SnapshotID + "/instantiate", `{"name":"../x"}`, 400, "invalid_request"},
			{"restore name taken", "POST", "/v1/snapshots/" + snap.SnapshotID + "/instantiate", `{"name":"src"}`, 409, "name_taken"},
			{"delete unknown", "DELETE", "/v1/snapshots/nope", "", 404, "not_found"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				status, e := rawCall(t, c, tc.method, tc.path, tc.body, c.admin)
				if status != tc.status || e.Code != tc.code || e.Message == "" {
					t.Fatalf("%s %s: %d %+v; want %d %s", tc.method, tc.path, status, e, tc.status, tc.code)
				}
			})
		}
	})
	t.Run("other project", func(t *testing.T) {
		if _, err := getSnapshot(opB, snap.SnapshotID); !isStatus(err, 404) {
			t.Fatalf("get from another project: %v; want 404", err)
		}
		if _, err := restoreSnapshot(opB, snap.SnapshotID, "steal"); !isStatus(err, 404) {
			t.Fatalf("restore from another project: %v; want 404", err)
		}
		if err := deleteSnapshot(opB, snap.SnapshotID); !isStatus(err, 404) {
			t.Fatalf("delete from another project: %v; want 404", err)
		}
		var list apitypes.SnapshotList
		if err := opB.Do(ctx, "GET", "/v1/snapshots", nil, nil, &list); err != nil || len(list.Items) != 0 {
			t.Fatalf("list from another project: %+v, %v", list.Items, err)
		}
	})

	t.Run("firecracker fails to write", func(t *testing.T) {
		// A file size limit on the source's VMM: firecracker cannot write
		// the memory file (as on a full disk).
		pid := vmmPID(t, c, src.ID)
		old := setFsizeLimit(t, pid, 1<<20)
		before := waitCounter(t, c, src.ID, 1)
		_, err := createSnapshot(c.client, src.ID, nil)
		setFsizeLimit(t, pid, old.Cur)
		e := apiErr(err)
		if e.Status != 400 || e.Code != "firecracker_rejected" || !strings.Contains(e.FaultMessage, "too large") || e.Suggestion == "" {
			t.Fatalf("snapshot with a file size limit: %#v; want 400 firecracker_rejected with fault_message", e)
		}
		entries, _ := os.ReadDir(l.SnapshotsDir(src.ID))
		if len(entries) != 1 || entries[0].Name() != snap.SnapshotID {
			t.Fatalf("snapshot dirs after the failure: %v; want only %s (no partial files)", entries, snap.SnapshotID)
		}
		if v, _ := c.client.GetVM(ctx, src.ID); v.State != "running" {
			t.Fatalf("source after a failed snapshot: %s; want running", v.State)
		}
		waitCounter(t, c, src.ID, before+1) // resumed
		var list apitypes.SnapshotList
		if err := c.client.Do(ctx, "GET", "/v1/vms/"+src.ID+"/snapshots", nil, nil, &list); err != nil || len(list.Items) != 1 {
			t.Fatalf("catalog after a failed snapshot: %+v, %v", list.Items, err)
		}
	})

	t.Run("corrupted state file", func(t *testing.T) {
		state := filepath.Join(l.SnapshotDir(src.ID, snap.SnapshotID), "vmstate")
		b, err := os.ReadFile(state)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(state, b, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = restoreSnapshot(c.client, snap.SnapshotID, "broken")
		e := apiErr(err)
		if e.Status != 400 || e.Code != "firecracker_rejected" || !strings.Contains(e.FaultMessage, "CRC64") || e.Suggestion == "" {
			t.Fatalf("restore of a corrupted snapshot: %#v; want 400 firecracker_rejected with fault_message", e)
		}
		if len(e.LogTail) == 0 {
			t.Errorf("the refused restore carries no firecracker log lines: %#v", e)
		}
		list, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{Name: "broken"})
		if err != nil || len(list.Items) != 0 {
			t.Fatalf("the failed restore left a row: %+v, %v", list.Items, err)
		}
		if pids := vmmPIDs(c.agents[0].runDir); len(pids) != 1 {
			t.Fatalf("vmm processes after the failed restore: %v; want only the source's", pids)
		}
		if ids := vmIDsOf(c.agents[0].runDir); len(ids) != 2 || !slices.Contains(ids, src.ID) {
			t.Fatalf("run dirs and vmms after the failed restore: %v; want only the source's", ids)
		}
		taps := 0
		links, _ := c.agents[0].net.nl.LinkList()
		for _, lk := range links {
			if strings.HasPrefix(lk.Attrs().Name, hostlayout.TapPrefix) {
				taps++
			}
		}
		if taps != 1 {
			t.Fatalf("taps after the failed restore: %d; want only the source's", taps)
		}
	})

	if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{src.ID, idle.ID} {
		if err := c.client.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	c.assertNoLeaks(src.ID, idle.ID)
	c.assertNoSnapshotLeaks()
}

// vmmPID is the pid of the VM's VMM, from the agent's inventory.
func vmmPID(t testing.TB, c *cluster, vmID string) int {
	t.Helper()
	inv, err := c.agentClient(c.agents[0]).Inventory(context.Background())
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

// setFsizeLimit sets a process's RLIMIT_FSIZE and returns the old one.
func setFsizeLimit(t testing.TB, pid int, cur uint64) unix.Rlimit {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, nil, &old); err != nil {
		t.Fatal(err)
	}
	lim := unix.Rlimit{Cur: cur, Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	return old
}

// TestSnapshotCLI drives `nexus snapshot create / ls / restore / rm`.
func TestSnapshotCLI(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	src, _ := snapVM(t, c, "web", 64, 0)
	nexus := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bins.nexus, args...)
		cmd.Env = append(os.Environ(), "NEXUS_ADDR="+c.url(), "NEXUS_TOKEN="+c.admin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nexus %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := nexus("snapshot", "create", "web", "--no-resume", "-q")
	sid := strings.TrimSpace(out)
	if v, _ := c.client.GetVM(context.Background(), src.ID); v.State != "paused" {
		t.Fatalf("after --no-resume the VM is %s", v.State)
	}
	if ls := nexus("snapshot", "ls", "web"); !strings.Contains(ls, sid) {
		t.Fatalf("snapshot ls web:\n%s", ls)
	}
	if ls := nexus("snapshot", "ls"); !strings.Contains(ls, sid) {
		t.Fatalf("snapshot ls:\n%s", ls)
	}
	if get := nexus("snapshot", "get", sid); !strings.Contains(get, "drives/rootfs.ext4") {
		t.Fatalf("snapshot get:\n%s", get)
	}
	out = nexus("snapshot", "restore", sid, "--name", "web-2")
	if !regexp.MustCompile(`web-2\s+running`).MatchString(out) || !strings.Contains(out, "note: the guest MAC") {
		t.Fatalf("snapshot restore:\n%s", out)
	}
	clone := strings.Fields(strings.Split(out, "\n")[1])[0] // the row under the header
	if rm := nexus("snapshot", "rm", sid); !strings.Contains(rm, sid+"\tdeleted") {
		t.Fatalf("snapshot rm:\n%s", rm)
	}
	nexus("vm", "rm", "web", "web-2")
	c.assertNoLeaks(src.ID, clone)
	c.assertNoSnapshotLeaks()
}
