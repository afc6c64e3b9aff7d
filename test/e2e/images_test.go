package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// imagesDir is the agent's FC_IMAGES_DIR (its default, under the run dir).
func (a *agentProc) imagesDir(t testing.TB) string {
	t.Helper()
	d := filepath.Join(a.runDir, "images")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// writeSparse makes a sparse file of size bytes with 1 MiB of data at each
// of offsets, and returns its sha256.
func writeSparse(t *testing.T, path string, size int64, offsets ...int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1)
	}
	for _, off := range offsets {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	return sumFile(t, path)
}

func sumFile(t *testing.T, path string) string {
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

func diskUsage(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func addImage(cl *nexus.Client, req apitypes.CreateImageRequest) (apitypes.Image, error) {
	var img apitypes.Image
	return img, cl.Do(context.Background(), "POST", "/v1/images", nil, req, &img)
}

func mustImage(t *testing.T, cl *nexus.Client, req apitypes.CreateImageRequest) apitypes.Image {
	t.Helper()
	img, err := addImage(cl, req)
	if err != nil {
		t.Fatalf("register %s: %v", req.Name, err)
	}
	return img
}

func listImages(t *testing.T, cl *nexus.Client) []apitypes.Image {
	t.Helper()
	var l apitypes.ImageList
	if err := cl.Do(context.Background(), "GET", "/v1/images", nil, nil, &l); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func wantCode(t *testing.T, err error, status int, code string) *apierr.Error {
	t.Helper()
	var e *apierr.Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code || e.Message == "" {
		t.Fatalf("got %v; want %d %s with a message", err, status, code)
	}
	return e
}

// vmmFiles returns the files the VM's firecracker process holds open:
// path → access mode (os.O_RDONLY, os.O_RDWR …).
func vmmFiles(t *testing.T, runDir, vmID string) map[string]int {
	t.Helper()
	for _, pid := range vmmPIDs(runDir) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmd), vmID) {
			continue
		}
		out := map[string]int{}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err != nil || !strings.HasPrefix(link, "/") {
				continue
			}
			info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
			for _, line := range strings.Split(string(info), "\n") {
				if v, ok := strings.CutPrefix(line, "flags:"); ok {
					flags, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
					out[link] = int(flags) & syscall.O_ACCMODE
				}
			}
		}
		return out
	}
	t.Fatalf("no vmm process of vm %s", vmID)
	return nil
}

func vmEvents(t *testing.T, c *cluster, id string) string {
	t.Helper()
	evs, err := c.client.Events(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range evs.Items {
		b.WriteString(e.Message + "\n")
	}
	return b.String()
}

// TestImageRegistry: registration canonicalises and checksums on the
// hosts and refuses what escapes FC_IMAGES_DIR, registering nothing;
// images are per project (shared ones by admins); a VM boots from a
// sparse private copy of its rootfs and never writes the image; an image
// changed on disk refuses to boot; an image in use cannot be removed.
func TestImageRegistry(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	a := c.agents[0]
	dir := a.imagesDir(t)
	kernelPath := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernelPath, simtest.KernelELF(), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfsPath := filepath.Join(dir, "rootfs.ext4")
	rootfsSum := writeSparse(t, rootfsPath, 1<<30, 0, 300<<20, 1<<30-1<<20)
	secret := filepath.Join(c.dir, "secret")
	os.WriteFile(secret, []byte("not an image"), 0o600)
	os.Symlink(secret, filepath.Join(dir, "escape"))
	os.Symlink(c.dir, filepath.Join(dir, "up"))
	os.Mkdir(filepath.Join(dir, "subdir"), 0o755)
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644)

	opA := newClient(c.url(), c.token(t, "alice", "operator", "team-a"))
	opB := newClient(c.url(), c.token(t, "bob", "operator", "team-b"))

	// A shared kernel (admin), a rootfs of team-a (operator, relative path).
	start := time.Now()
	kernel := mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: kernelPath, Project: "*"})
	t.Logf("kernel registered in %s", time.Since(start))
	if kernel.Project != "*" || kernel.SHA256 != sumFile(t, kernelPath) || kernel.Size != int64(len(simtest.KernelELF())) || kernel.HostPath != kernelPath {
		t.Fatalf("kernel image = %+v", kernel)
	}
	start = time.Now()
	rootfs := mustImage(t, opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "base", HostPath: "rootfs.ext4", SHA256: strings.ToUpper(rootfsSum)})
	t.Logf("1 GiB sparse rootfs registered (hashed on the host) in %s", time.Since(start))
	if rootfs.Project != "team-a" || rootfs.SHA256 != rootfsSum || rootfs.Size != 1<<30 || rootfs.HostPath != rootfsPath || rootfs.ReadOnly {
		t.Fatalf("rootfs image = %+v", rootfs)
	}

	t.Run("refusals register nothing", func(t *testing.T) {
		before := len(listImages(t, c.client))
		for _, tc := range []struct {
			name   string
			cl     *nexus.Client
			req    apitypes.CreateImageRequest
			status int
			code   string
		}{
			{"relative traversal", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "../../secret"}, 400, "invalid_path"},
			{"absolute traversal", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: dir + "/../../secret"}, 400, "invalid_path"},
			{"outside", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "/etc/passwd"}, 403, "path_not_allowed"},
			{"symlink escape", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "escape"}, 403, "path_not_allowed"},
			{"symlinked dir escape", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "up/secret"}, 403, "path_not_allowed"},
			{"directory", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "subdir"}, 400, "not_regular_file"},
			{"fifo", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "fifo"}, 400, "not_regular_file"},
			{"missing", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "nope.ext4"}, 400, "file_not_found"},
			{"wrong sha256", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "rootfs.ext4", SHA256: strings.Repeat("ab", 32)}, 400, "sha256_mismatch"},
			{"bad sha256", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "rootfs.ext4", SHA256: "abc"}, 400, "invalid_request"},
			{"bad kind", opA, apitypes.CreateImageRequest{Kind: "ramdisk", Name: "x", HostPath: "rootfs.ext4"}, 400, "invalid_request"},
			{"name taken", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "base", HostPath: "rootfs.ext4"}, 409, "name_taken"},
			{"shared by an operator", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "rootfs.ext4", Project: "*"}, 403, "forbidden"},
			{"other project", opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "x", HostPath: "rootfs.ext4", Project: "team-b"}, 403, "forbidden"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := addImage(tc.cl, tc.req)
				e := wantCode(t, err, tc.status, tc.code)
				if tc.status != 409 && tc.status != 403 && e.Suggestion == "" && tc.code != "invalid_request" {
					t.Errorf("no suggestion in %+v", e)
				}
			})
		}
		status, e := rawCall(t, c, "POST", "/v1/images", `{"kind":"rootfs","name":"x","host_path":"rootfs.ext4","colour":"red"}`, c.admin)
		if status != 400 || e.Code != "invalid_request" {
			t.Fatalf("unknown field: %d %+v", status, e)
		}
		if after := len(listImages(t, c.client)); after != before {
			t.Fatalf("refused registrations changed the registry: %d → %d images", before, after)
		}
	})

	t.Run("projects", func(t *testing.T) {
		// team-b sees the shared kernel, not team-a's rootfs, not even by id.
		items := listImages(t, opB)
		if len(items) != 1 || items[0].ID != kernel.ID {
			t.Fatalf("team-b lists %+v; want only the shared kernel", items)
		}
		if err := opB.Do(ctx, "GET", "/v1/images/"+rootfs.ID, nil, nil, nil); !isStatus(err, 404) {
			t.Fatalf("team-b gets team-a's image: %v; want 404", err)
		}
		_, err := opB.CreateVM(ctx, apitypes.CreateVMRequest{Name: "steal", VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID, RootfsImageID: rootfs.ID}}, true)
		wantCode(t, err, 404, "not_found")
		if err := opB.Do(ctx, "DELETE", "/v1/images/"+kernel.ID, nil, nil, nil); !isStatus(err, 403) {
			t.Fatalf("an operator deletes a shared image: %v; want 403", err)
		}
		var it apitypes.ImageItem
		if err := opA.Do(ctx, "GET", "/v1/images/base", nil, nil, &it); err != nil || it.Item.ID != rootfs.ID {
			t.Fatalf("get by name: %+v, %v", it, err)
		}
		var l apitypes.ImageList
		if err := opA.Do(ctx, "GET", "/v1/images", url.Values{"kind": {"kernel"}}, nil, &l); err != nil || len(l.Items) != 1 || l.Items[0].ID != kernel.ID {
			t.Fatalf("?kind=kernel: %+v, %v", l, err)
		}
	})

	var vm apitypes.VM
	var gone []string // VMs deleted along the way, checked for leaks at the end
	copyPath := func(id string) string { return filepath.Join(a.layout().VMDir(id), "drives", "rootfs.ext4") }
	t.Run("private sparse copy", func(t *testing.T) {
		var err error
		start := time.Now()
		vm, err = opA.CreateVM(ctx, apitypes.CreateVMRequest{Name: "web", VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID, RootfsImageID: rootfs.ID}}, true)
		if err != nil || vm.State != "running" {
			t.Fatalf("create from images: %+v, %v", vm, err)
		}
		t.Logf("create → running with a 1 GiB rootfs copy in %s", time.Since(start))
		cp := copyPath(vm.ID)
		if sumFile(t, cp) != rootfsSum {
			t.Fatal("the VM's copy differs from the image")
		}
		src, dst := diskUsage(t, rootfsPath), diskUsage(t, cp)
		t.Logf("image %d KiB on disk, VM copy %d KiB on disk (1 GiB apparent)", src>>10, dst>>10)
		if dst > src+64<<10 {
			t.Fatalf("the copy occupies %d bytes, the image %d: the copy is not sparse", dst, src)
		}
		files := vmmFiles(t, a.runDir, vm.ID)
		if mode, ok := files[cp]; !ok || mode != os.O_RDWR {
			t.Fatalf("the VMM does not hold its copy read-write: %v", files)
		}
		if _, ok := files[rootfsPath]; ok {
			t.Fatalf("the VMM holds the shared image open: %v", files)
		}
		if ev := vmEvents(t, c, vm.ID); !strings.Contains(ev, "rootfs: copied image base to drives/rootfs.ext4: 1.0 GiB") {
			t.Fatalf("no copy event with its size:\n%s", ev)
		}
		// The guest writes its disk; a restart keeps the writes and the
		// image stays as registered.
		f, err := os.OpenFile(cp, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("guest was here"), 4096)
		f.Close()
		for _, act := range []string{"stop", "start"} {
			if err := opA.VMAction(ctx, vm.ID, act); err != nil {
				t.Fatalf("%s: %v", act, err)
			}
		}
		b := make([]byte, 14)
		f, _ = os.Open(cp)
		f.ReadAt(b, 4096)
		f.Close()
		if string(b) != "guest was here" {
			t.Fatalf("restart lost the guest's writes: %q", b)
		}
		if !strings.Contains(vmEvents(t, c, vm.ID), "rootfs: reusing its copy drives/rootfs.ext4") {
			t.Fatal("no reuse event after the restart")
		}
		if sumFile(t, rootfsPath) != rootfsSum {
			t.Fatal("the shared image changed")
		}
	})

	t.Run("read-only image in place", func(t *testing.T) {
		ro := mustImage(t, opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "base-ro", HostPath: "rootfs.ext4", ReadOnly: true})
		v, err := opA.CreateVM(ctx, apitypes.CreateVMRequest{Name: "ro", VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID, RootfsImageID: ro.ID}}, true)
		if err != nil {
			t.Fatal(err)
		}
		files := vmmFiles(t, a.runDir, v.ID)
		if mode, ok := files[rootfsPath]; !ok || mode != os.O_RDONLY {
			t.Fatalf("the VMM does not hold the read-only image read-only: %v", files)
		}
		if _, err := os.Stat(copyPath(v.ID)); !os.IsNotExist(err) {
			t.Fatal("a read-only image was copied")
		}
		if err := opA.DeleteVM(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		if err := opA.Do(ctx, "DELETE", "/v1/images/base-ro", nil, nil, nil); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, v.ID)
	})

	t.Run("changed on disk", func(t *testing.T) {
		orig, _ := os.ReadFile(kernelPath)
		mod := append([]byte(nil), orig...)
		mod[len(mod)-1] ^= 0xff // same size
		os.WriteFile(kernelPath, mod, 0o644)
		_, err := opA.CreateVM(ctx, apitypes.CreateVMRequest{Name: "k-changed", VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID}}, true)
		e := wantCode(t, err, 409, "image_changed")
		if !strings.Contains(e.Message, "kernel image vmlinux") || e.Suggestion == "" {
			t.Fatalf("refusal does not name the image or say what to do: %+v", e)
		}
		// The refused create left nothing; restored, the same name boots
		// (the checksum is recomputed: ctime moved).
		if l, _ := opA.ListVMs(ctx, nexus.ListVMsOptions{Name: "k-changed"}); len(l.Items) != 0 {
			t.Fatalf("the refused VM left a row: %+v", l.Items)
		}
		os.WriteFile(kernelPath, orig, 0o644)
		v, err := opA.CreateVM(ctx, apitypes.CreateVMRequest{Name: "k-changed", VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID}}, true)
		if err != nil {
			t.Fatalf("create after restoring the kernel: %v", err)
		}
		if err := opA.DeleteVM(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, v.ID)

		f, _ := os.OpenFile(rootfsPath, os.O_WRONLY, 0)
		f.WriteAt([]byte("tampered"), 200<<20)
		f.Close()
		_, err = opA.CreateVM(ctx, apitypes.CreateVMRequest{Name: "r-changed", VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID, RootfsImageID: rootfs.ID}}, true)
		e = wantCode(t, err, 409, "image_changed")
		if !strings.Contains(e.Message, "rootfs image base") || !strings.Contains(e.Message, "prepare drives") {
			t.Fatalf("refusal does not name the image and step: %+v", e)
		}
		if l, _ := opA.ListVMs(ctx, nexus.ListVMsOptions{Name: "r-changed"}); len(l.Items) != 0 {
			t.Fatalf("the refused VM left a row: %+v", l.Items)
		}
		// Only the running VM's run dir is on the host: the refused boot's
		// copy and dir are gone.
		if ids := vmIDsOf(c.agents[0].runDir); len(ids) != 2 || ids[0] != vm.ID {
			t.Fatalf("run dirs and vmms after the refused boot: %v; want only %s", ids, vm.ID)
		}
		// A VM that already has its copy is not affected by the change.
		if err := opA.VMAction(ctx, vm.ID, "stop"); err != nil {
			t.Fatal(err)
		}
		if err := opA.VMAction(ctx, vm.ID, "start"); err != nil {
			t.Fatalf("restart of a VM with its own copy: %v", err)
		}
	})

	t.Run("in use", func(t *testing.T) {
		err := opA.Do(ctx, "DELETE", "/v1/images/"+rootfs.ID, nil, nil, nil)
		if e := wantCode(t, err, 409, "image_in_use"); !strings.Contains(e.Message, "web") {
			t.Fatalf("in-use refusal does not name the VM: %+v", e)
		}
		if err := opA.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if err := opA.Do(ctx, "DELETE", "/v1/images/"+rootfs.ID, nil, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.client.Do(ctx, "DELETE", "/v1/images/vmlinux", nil, nil, nil); err != nil {
			t.Fatal(err)
		}
		if items := listImages(t, c.client); len(items) != 0 {
			t.Fatalf("images left: %+v", items)
		}
		if _, err := os.Stat(rootfsPath); err != nil {
			t.Fatal("removing an image from the registry removed its file")
		}
		c.assertNoLeaks(append(gone, vm.ID)...)
	})
}

// TestDevRawRootfsIsCopied: in dev mode a raw rootfs_path is copied too;
// the user's file is never written, and a missing one is a clear 400.
func TestDevRawRootfsIsCopied(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	user := filepath.Join(c.dir, "my-rootfs.ext4")
	sum := writeSparse(t, user, 64<<20, 0)
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "dev", VMConfig: apitypes.VMConfig{
		KernelPath: kernel, RootfsPath: user,
		ExtraDrives: []apitypes.ExtraDrive{{DriveID: "scratch", Path: user}, {DriveID: "ref", Path: user, ReadOnly: true}},
	}}, true)
	if err != nil {
		t.Fatal(err)
	}
	dir := c.agents[0].layout().VMDir(vm.ID)
	files := vmmFiles(t, c.agents[0].runDir, vm.ID)
	for path, mode := range map[string]int{
		filepath.Join(dir, "drives", "rootfs.ext4"):  os.O_RDWR,
		filepath.Join(dir, "drives", "scratch.ext4"): os.O_RDWR,
		user: os.O_RDONLY, // the read-only extra drive, in place
	} {
		if m, ok := files[path]; !ok || m != mode {
			t.Fatalf("vmm holds %v; want %s with mode %d", files, path, mode)
		}
	}
	if sumFile(t, user) != sum {
		t.Fatal("the user's file changed")
	}
	_, err = c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "missing", VMConfig: apitypes.VMConfig{KernelPath: kernel, RootfsPath: c.dir + "/nope.ext4"}}, true)
	if e := wantCode(t, err, 400, "file_not_found"); !strings.Contains(e.Message, "nope.ext4") {
		t.Fatalf("missing rootfs: %+v", e)
	}
	if l, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{Name: "missing"}); len(l.Items) != 0 {
		t.Fatalf("the refused create left a row: %+v", l.Items)
	}
	if err := c.client.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(vm.ID)
	c.assertHostsEmpty()
}

// TestProdModeRefusesRawPaths: a manager in prod mode boots registered
// images only. (Prod mode serves plain HTTP on loopback only, so it runs
// as a second manager on the cluster's Postgres, beside the one the
// agents report to.)
func TestProdModeRefusesRawPaths(t *testing.T) {
	c := newCluster(t, "postgres", 1)
	ctx := context.Background()
	port := freePort(t)
	prod := c.start("manager-prod", nil, "manager", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--database-url", c.dsn, "--join-token", c.join, "--mode", "prod")
	t.Cleanup(prod.kill)
	if m := prod.waitLog(t, "manager listening", 20*time.Second); m["mode"] != "prod" {
		t.Fatalf("second manager runs in mode %v", m["mode"])
	}
	admin := newClient(fmt.Sprintf("http://127.0.0.1:%d", port), c.admin)
	dir := c.agents[0].imagesDir(t)
	kernelPath := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernelPath, simtest.KernelELF(), 0o644)
	os.WriteFile(filepath.Join(dir, "rootfs.ext4"), make([]byte, 1<<20), 0o644)
	img := mustImage(t, admin, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux"})
	for _, cfg := range []apitypes.VMConfig{
		{KernelPath: kernelPath},
		{KernelImageID: img.ID, RootfsPath: filepath.Join(dir, "rootfs.ext4")},
		{KernelImageID: img.ID, ExtraDrives: []apitypes.ExtraDrive{{DriveID: "d", Path: kernelPath}}},
	} {
		_, err := admin.CreateVM(ctx, apitypes.CreateVMRequest{Name: "raw", VMConfig: cfg}, true)
		if e := wantCode(t, err, 403, "raw_path_refused"); !strings.Contains(e.Suggestion, "image") {
			t.Fatalf("no suggestion to use images: %+v", e)
		}
	}
	if l, _ := admin.ListVMs(ctx, nexus.ListVMsOptions{}); len(l.Items) != 0 {
		t.Fatalf("refused creates left VMs: %+v", l.Items)
	}
	vm, err := admin.CreateVM(ctx, apitypes.CreateVMRequest{Name: "ok", VMConfig: apitypes.VMConfig{KernelImageID: img.ID}}, true)
	if err != nil || vm.State != "running" {
		t.Fatalf("prod create from an image: %+v, %v", vm, err)
	}
	if err := admin.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(vm.ID)
}

// TestTemplates: a template saves a configuration of registered images;
// one call with only a name gives a running VM that shows its template's
// config and its overrides side by side; 20 VMs come from one call, all or
// none; deleting a template leaves its VMs working.
func TestTemplates(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { testTemplates(t, engine) })
	}
}

func testTemplates(t *testing.T, engine string) {
	// 22 one-vCPU VMs on a host that may have 2 CPUs.
	c := newCluster(t, engine, 1, "--vcpu-overcommit", "32")
	ctx := context.Background()
	a := c.agents[0]
	dir := a.imagesDir(t)
	os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644)
	rootfsPath := filepath.Join(dir, "rootfs.ext4")
	writeSparse(t, rootfsPath, 64<<20, 0)
	os.WriteFile(filepath.Join(dir, "other.ext4"), make([]byte, 4096), 0o644)
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	tokA := c.token(t, "alice", "operator", "team-a")
	opA := newClient(c.url(), tokA)
	opB := newClient(c.url(), c.token(t, "bob", "operator", "team-b"))
	viewA := newClient(c.url(), c.token(t, "victor", "viewer", "team-a"))
	rootfs := mustImage(t, opA, apitypes.CreateImageRequest{Kind: "rootfs", Name: "base", HostPath: "rootfs.ext4"})
	other := mustImage(t, opB, apitypes.CreateImageRequest{Kind: "rootfs", Name: "bobs", HostPath: "other.ext4"})

	// Bad templates are refused, and none is stored.
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"no kernel", `{"name":"t","config":{"vcpu":1}}`, 400, "invalid_request"},
		{"unknown image", `{"name":"t","config":{"kernel_image_id":"nope"}}`, 404, "not_found"},
		{"other project's image", `{"name":"t","config":{"kernel_image_id":"vmlinux","rootfs_image_id":"` + other.ID + `"}}`, 404, "not_found"},
		{"kernel as rootfs", `{"name":"t","config":{"kernel_image_id":"vmlinux","rootfs_image_id":"vmlinux"}}`, 400, "invalid_request"},
		{"vcpu 64", `{"name":"t","config":{"kernel_image_id":"vmlinux","vcpu":64}}`, 400, "invalid_request"},
		{"mem 0", `{"name":"t","config":{"kernel_image_id":"vmlinux","mem_mib":0}}`, 400, "invalid_request"},
		{"raw path", `{"name":"t","config":{"kernel_image_id":"vmlinux","kernel_path":"/bin/true"}}`, 400, "invalid_request"},
		{"raw drive path", `{"name":"t","config":{"kernel_image_id":"vmlinux","extra_drives":[{"drive_id":"d","path":"/etc/passwd"}]}}`, 400, "invalid_request"},
		{"unknown field", `{"name":"t","config":{"kernel_image_id":"vmlinux","cpus":2}}`, 400, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e := rawCall(t, c, "POST", "/v1/templates", tc.body, tokA)
			if status != tc.status || e.Code != tc.code {
				t.Fatalf("%d %+v; want %d %s", status, e, tc.status, tc.code)
			}
		})
	}
	var tl apitypes.TemplateList
	if err := opA.Do(ctx, "GET", "/v1/templates", nil, nil, &tl); err != nil || len(tl.Items) != 0 {
		t.Fatalf("refused templates were stored: %+v, %v", tl, err)
	}

	var tmpl apitypes.Template
	err := opA.Do(ctx, "POST", "/v1/templates", nil, apitypes.CreateTemplateRequest{Name: "web", Config: apitypes.TemplateConfig{
		Vcpu: intp(1), MemMib: intp(64), KernelImageID: "vmlinux", RootfsImageID: "base", BootArgs: "console=ttyS0 quiet",
	}}, &tmpl)
	if err != nil || tmpl.Project != "team-a" || tmpl.Config.RootfsImageID != rootfs.ID || tmpl.Config.KernelImageID == "vmlinux" || tmpl.Owner != "alice" {
		t.Fatalf("create template: %+v, %v; want image names stored as ids", tmpl, err)
	}
	if err := viewA.Do(ctx, "POST", "/v1/templates/web/instantiate", nil, apitypes.InstantiateRequest{Name: "x"}, nil); !isStatus(err, 403) {
		t.Fatalf("viewer instantiates: %v; want 403", err)
	}
	if err := opB.Do(ctx, "POST", "/v1/templates/"+tmpl.ID+"/instantiate", nil, apitypes.InstantiateRequest{Name: "x"}, nil); !isStatus(err, 404) {
		t.Fatalf("another project instantiates: %v; want 404", err)
	}

	// Only a name: a running VM that remembers where it came from.
	var one apitypes.InstantiateResponse
	if err := opA.Do(ctx, "POST", "/v1/templates/web/instantiate", nil, apitypes.InstantiateRequest{Name: "solo"}, &one); err != nil {
		t.Fatal(err)
	}
	solo, err := opA.GetVM(ctx, one.ID)
	if err != nil || solo.State != "running" || solo.TemplateID != tmpl.ID || solo.Vcpu != 1 || solo.MemMib != 64 || solo.BootArgs != "console=ttyS0 quiet" {
		t.Fatalf("instantiated VM: %+v, %v", solo, err)
	}
	var tc apitypes.TemplateConfig
	if err := json.Unmarshal(solo.TemplateConfig, &tc); err != nil || tc.RootfsImageID != rootfs.ID || *tc.MemMib != 64 {
		t.Fatalf("template_config = %s, %v", solo.TemplateConfig, err)
	}
	if string(solo.Overrides) != "{}" {
		t.Fatalf("overrides of a plain instantiation = %s; want {}", solo.Overrides)
	}

	// Overrides: exactly what was given shows, side by side with the config.
	body := `{"name":"big","overrides":{"vcpu":2,"mem_mib":96},"tags":{"tier":"gold"}}`
	status, e := rawCall(t, c, "POST", "/v1/templates/web/instantiate", body, tokA)
	if status != 201 {
		t.Fatalf("instantiate with overrides: %d %+v", status, e)
	}
	l, _ := opA.ListVMs(ctx, nexus.ListVMsOptions{Name: "big"})
	if len(l.Items) != 1 {
		t.Fatal("no VM big")
	}
	big := l.Items[0]
	if big.Vcpu != 2 || big.MemMib != 96 || big.Tags["tier"] != "gold" || string(big.Overrides) != `{"vcpu":2,"mem_mib":96}` || string(big.TemplateConfig) != string(solo.TemplateConfig) {
		t.Fatalf("VM with overrides: vcpu %d mem %d tags %v overrides %s config %s", big.Vcpu, big.MemMib, big.Tags, big.Overrides, big.TemplateConfig)
	}
	for _, bad := range []string{
		`{"name":"bad","overrides":{"cpus":2}}`,
		`{"name":"bad","overrides":{"vcpu":64}}`,
		`{"name":"bad","overrides":{"kernel_path":"/bin/true"}}`,
		`{"name":"bad","overrides":{"rootfs_image_id":"` + other.ID + `"}}`,
		`{"name":"bad","count":101}`,
		`{"name":"bad","count":0}`,
	} {
		if status, e := rawCall(t, c, "POST", "/v1/templates/web/instantiate", bad, tokA); status != 400 && status != 404 {
			t.Fatalf("%s: %d %+v; want 400/404", bad, status, e)
		}
	}

	// Twenty VMs in one call.
	start := time.Now()
	var many apitypes.InstantiateResponse
	if err := opA.Do(ctx, "POST", "/v1/templates/"+tmpl.ID+"/instantiate", nil, apitypes.InstantiateRequest{Name: "w", Count: 20}, &many); err != nil {
		t.Fatal(err)
	}
	t.Logf("20 VMs from one template in one call: %s", time.Since(start))
	if len(many.IDs) != 20 || many.ID != many.IDs[0] || len(many.Items) != 20 {
		t.Fatalf("answer: id %s, %d ids, %d items", many.ID, len(many.IDs), len(many.Items))
	}
	for i, v := range many.Items {
		if v.Name != fmt.Sprintf("w-%d", i+1) || v.State != "running" || v.TemplateID != tmpl.ID {
			t.Fatalf("VM %d: %s %s %s", i, v.Name, v.State, v.TemplateID)
		}
	}
	// Each VM's history starts with its creation.
	for _, id := range []string{many.IDs[0], many.IDs[19]} {
		var trail apitypes.AuditList
		if err := c.client.Do(ctx, "GET", "/v1/audit", url.Values{"vm_id": {id}}, nil, &trail); err != nil || len(trail.Items) == 0 ||
			trail.Items[0].Action != "template.instantiate" || trail.Items[0].Result != "success" || !hasPrefix(trail.Items[0].Actor, "alice") {
			t.Fatalf("audit of %s: %+v, %v", id, trail.Items, err)
		}
	}
	// A taken name makes nothing.
	if err := opA.Do(ctx, "POST", "/v1/templates/web/instantiate", nil, apitypes.InstantiateRequest{Name: "w", Count: 25}, nil); !isStatus(err, 409) {
		t.Fatalf("count over taken names: %v; want 409", err)
	}
	// A failure leaves nothing: every VM of the call fails to boot from a
	// changed image, and all are deleted again.
	f, _ := os.OpenFile(rootfsPath, os.O_WRONLY, 0)
	f.WriteAt([]byte("tampered"), 0)
	f.Close()
	err = opA.Do(ctx, "POST", "/v1/templates/web/instantiate", nil, apitypes.InstantiateRequest{Name: "fail", Count: 3}, nil)
	if e := wantCode(t, err, 409, "image_changed"); !strings.Contains(e.Message, "deleted again") {
		t.Fatalf("failed batch does not say what happened to the others: %+v", e)
	}
	all, _ := opA.ListVMs(ctx, nexus.ListVMsOptions{})
	for _, v := range all.Items {
		if strings.HasPrefix(v.Name, "fail-") {
			t.Fatalf("a failed batch left %s (%s)", v.Name, v.State)
		}
	}
	if len(all.Items) != 22 {
		t.Fatalf("%d VMs; want solo, big and w-1…w-20", len(all.Items))
	}

	// Deleting the template keeps its VMs working (they have their copies).
	if err := opA.Do(ctx, "DELETE", "/v1/templates/web", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := opA.Do(ctx, "GET", "/v1/templates/"+tmpl.ID, nil, nil, nil); !isStatus(err, 404) {
		t.Fatalf("deleted template: %v", err)
	}
	for _, act := range []string{"stop", "start"} {
		if err := opA.VMAction(ctx, solo.ID, act); err != nil {
			t.Fatalf("%s after the template was deleted: %v", act, err)
		}
	}
	if v, err := opA.GetVM(ctx, solo.ID); err != nil || v.State != "running" || v.TemplateID != tmpl.ID || len(v.TemplateConfig) == 0 {
		t.Fatalf("VM of a deleted template: %+v, %v", v, err)
	}

	ids := append([]string{solo.ID, big.ID}, many.IDs...)
	res, err := opA.Bulk(ctx, "delete", ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			t.Fatalf("delete %s: %s", r.ID, r.Error)
		}
	}
	c.assertNoLeaks(ids...)
}

// TestImageOwnershipRules: a file another project registered cannot be
// registered again by an operator (the bytes, not only the rows, are
// scoped), and an image a snapshot needs for cold boots cannot be deleted
// even after the snapshot's VM is gone.
func TestImageOwnershipRules(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	dir := c.agents[0].imagesDir(t)
	kernelPath := filepath.Join(dir, "vmlinux-b")
	if err := os.WriteFile(kernelPath, simtest.KernelELF(), 0o644); err != nil {
		t.Fatal(err)
	}
	opA := newClient(c.url(), c.token(t, "alice", "operator", "team-a"))
	opB := newClient(c.url(), c.token(t, "bob", "operator", "team-b"))
	kb := mustImage(t, opB, apitypes.CreateImageRequest{Kind: "kernel", Name: "kb", HostPath: kernelPath})
	_, err := addImage(opA, apitypes.CreateImageRequest{Kind: "kernel", Name: "mine", HostPath: kernelPath})
	wantCode(t, err, 403, "path_registered_elsewhere")

	vm, err := opB.CreateVM(ctx, apitypes.CreateVMRequest{Name: "src", VMConfig: apitypes.VMConfig{KernelImageID: kb.ID}}, true)
	if err != nil {
		t.Fatal(err)
	}
	var snap apitypes.SnapshotCreated
	if err := opB.Do(ctx, "POST", "/v1/vms/"+vm.ID+"/snapshots", nil, map[string]any{}, &snap); err != nil {
		t.Fatal(err)
	}
	if err := opB.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	err = opB.Do(ctx, "DELETE", "/v1/images/"+kb.ID, nil, nil, nil)
	if e := wantCode(t, err, 409, "image_in_use"); !strings.Contains(e.Message, snap.SnapshotID) {
		t.Fatalf("image_in_use does not name the snapshot: %s", e.Message)
	}
	if err := opB.Do(ctx, "DELETE", "/v1/snapshots/"+snap.SnapshotID, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := opB.Do(ctx, "DELETE", "/v1/images/"+kb.ID, nil, nil, nil); err != nil {
		t.Fatalf("delete after the snapshot went: %v", err)
	}
	c.assertNoLeaks(vm.ID)
}
