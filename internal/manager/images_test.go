package manager

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// imagesEnv is an env with a kernel and a rootfs registered from the
// hollow agent's images dir, and a template over them.
func imagesEnv(t *testing.T) (*env, store.Image, store.Image, store.Template) {
	t.Helper()
	e := newEnv(t)
	dir := filepath.Join(e.ag.RunDir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	simtest.WriteKernel(t, dir)
	simtest.WriteRootfs(t, dir, 8)
	k, err := e.m.Images.CreateImage(e.ctx, All, "", apitypes.CreateImageRequest{Kind: "kernel", Name: "k", HostPath: "vmlinux"})
	if err != nil {
		t.Fatalf("register kernel: %v", err)
	}
	r, err := e.m.Images.CreateImage(e.ctx, All, "", apitypes.CreateImageRequest{Kind: "rootfs", Name: "r", HostPath: "rootfs.ext4"})
	if err != nil {
		t.Fatalf("register rootfs: %v", err)
	}
	tmpl, err := e.m.Templates.CreateTemplate(e.ctx, All, "", "test", apitypes.CreateTemplateRequest{Name: "web",
		Config: apitypes.TemplateConfig{KernelImageID: "k", RootfsImageID: "r", MemMib: intp(64)}})
	if err != nil {
		t.Fatalf("create template: %v", err)
	}
	return e, k, r, tmpl
}

func intp(i int) *int { return &i }

func TestImagesAndTemplates(t *testing.T) {
	e, k, r, tmpl := imagesEnv(t)
	if k.Size == 0 || len(k.SHA256) != 64 || r.Kind != store.ImageRootfs {
		t.Fatalf("images %+v %+v", k, r)
	}
	// Registration refuses what is not under the images dir, and names.
	for name, req := range map[string]apitypes.CreateImageRequest{
		"outside the images dir": {Kind: "kernel", Name: "x", HostPath: e.kernel},
		"bad kind":               {Kind: "initrdx", Name: "x", HostPath: "vmlinux"},
		"bad name":               {Kind: "kernel", Name: "../x", HostPath: "vmlinux"},
		"taken name":             {Kind: "kernel", Name: "k", HostPath: "vmlinux"},
		"wrong checksum":         {Kind: "kernel", Name: "y", HostPath: "vmlinux", SHA256: strings.Repeat("0", 64)},
	} {
		if _, err := e.m.Images.CreateImage(e.ctx, All, "", req); err == nil {
			t.Errorf("%s: registered", name)
		}
	}
	imgs, err := e.m.Images.ListImages(e.ctx, All, "", "")
	if err != nil || len(imgs) != 2 {
		t.Fatalf("images = %d, %v", len(imgs), err)
	}

	vms, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "w", Count: 3}, TemplateInstanceOptions{Wait: true})
	if err != nil || len(vms) != 3 {
		t.Fatalf("instantiate 3 = %d, %v", len(vms), err)
	}
	for _, vm := range vms {
		if vm.State != store.VMRunning || vm.TemplateID != tmpl.ID || vm.RootfsImageID != r.ID {
			t.Errorf("vm %+v", vm)
		}
	}
	// In use: the images and the template cannot go.
	if _, err := e.m.Images.DeleteImage(e.ctx, All, "k", ""); !isKind(err, KindConflict) {
		t.Errorf("delete a kernel in use = %v; want a conflict", err)
	}
	for _, vm := range vms {
		if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.m.Templates.DeleteTemplate(e.ctx, All, "web", ""); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"k", "r"} {
		if _, err := e.m.Images.DeleteImage(e.ctx, All, ref, ""); err != nil {
			t.Errorf("delete image %s: %v", ref, err)
		}
	}
	e.assertHostEmpty()
}

// Instantiating N VMs makes all or none: a failure of the last VM's boot
// deletes the ones already running.
func TestInstantiateAllOrNothing(t *testing.T) {
	e, _, _, _ := imagesEnv(t)
	e.faults.add(t, &fault{method: "POST", suffix: "/spawn", nth: 3, status: 500, body: `{"error":"spawn_failed","status":500,"message":"injected"}`})
	vms, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "w", Count: 3}, TemplateInstanceOptions{Wait: true})
	if err == nil || len(vms) != 0 {
		t.Fatalf("instantiate = %d VMs, %v; want an error and none", len(vms), err)
	}
	if !strings.Contains(err.Error(), "deleted again") && !strings.Contains(err.Error(), "nothing was left") {
		t.Errorf("the error does not say what became of the others: %v", err)
	}
	if n := e.rows(); n != 0 {
		t.Errorf("%d VM rows left", n)
	}
	e.assertHostEmpty()
	// Overrides and their checks.
	if _, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "o",
		Overrides: &apitypes.TemplateConfig{Vcpu: intp(3)}}, TemplateInstanceOptions{Wait: true}); !isKind(err, KindInvalid) {
		t.Errorf("an odd vcpu override = %v; want invalid", err)
	}
	e.faults.clear()
	vms, err = e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "o",
		Overrides: &apitypes.TemplateConfig{Vcpu: intp(2)}}, TemplateInstanceOptions{Wait: true})
	if err != nil || len(vms) != 1 || vms[0].VCPU != 2 {
		t.Fatalf("instantiate with an override = %+v, %v", vms, err)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vms[0].ID); err != nil {
		t.Fatal(err)
	}
}

// An initrd goes from registration through a VM's create, a template (and
// its overrides), a snapshot and a restored VM's cold boot to firecracker's
// boot source; while any of them uses it, it cannot be removed; bad
// references and raw paths by non-admins are refused and change nothing.
func TestInitrdEndToEnd(t *testing.T) {
	e, k, r, _ := imagesEnv(t)
	dir := filepath.Join(e.ag.RunDir, "images")
	for _, name := range []string{"initrd-a.cpio.gz", "initrd-b.cpio.gz"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("initrd "+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ia, err := e.m.Images.CreateImage(e.ctx, All, "", apitypes.CreateImageRequest{Kind: "initrd", Name: "ia", HostPath: "initrd-a.cpio.gz"})
	if err != nil || ia.Kind != store.ImageInitrd || !ia.ReadOnly {
		t.Fatalf("register initrd = %+v, %v; want a read-only initrd image", ia, err)
	}
	ib, err := e.m.Images.CreateImage(e.ctx, All, "", apitypes.CreateImageRequest{Kind: "initrd", Name: "ib", HostPath: "initrd-b.cpio.gz"})
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := e.m.Images.ListImages(e.ctx, All, "initrd", ""); len(l) != 2 {
		t.Fatalf("?kind=initrd lists %d images; want 2", len(l))
	}
	// bootInitrd is the initrd firecracker was given.
	bootInitrd := func(vm store.VM) string {
		t.Helper()
		cfg, err := e.agent.Firecracker(vm.ID).GetVMConfig(e.ctx)
		if err != nil || cfg.BootSource == nil {
			t.Fatalf("vm %s config: %+v, %v", vm.Name, cfg, err)
		}
		return cfg.BootSource.InitrdPath
	}

	vm, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: "direct", VMConfig: apitypes.VMConfig{
		KernelImageID: k.ID, InitrdImageID: ia.ID, RootfsImageID: r.ID}}, CreateOptions{Wait: true})
	if err != nil || vm.InitrdImageID != ia.ID || View(vm).InitrdImageID != ia.ID {
		t.Fatalf("create with an initrd = %+v, %v", vm, err)
	}
	if got := bootInitrd(vm); got != ia.HostPath {
		t.Errorf("firecracker's initrd = %q; want %s", got, ia.HostPath)
	}

	// A template names the initrd by name; an instance overrides it.
	tmpl, err := e.m.Templates.CreateTemplate(e.ctx, All, "", "test", apitypes.CreateTemplateRequest{Name: "with-initrd",
		Config: apitypes.TemplateConfig{KernelImageID: "k", InitrdImageID: "ia", RootfsImageID: "r", MemMib: intp(64)}})
	if err != nil || TemplateView(tmpl).Config.InitrdImageID != ia.ID {
		t.Fatalf("template with an initrd = %+v, %v; want it stored by id", tmpl, err)
	}
	vms, err := e.m.Templates.Instantiate(e.ctx, All, "with-initrd", "", apitypes.InstantiateRequest{Name: "t1"}, TemplateInstanceOptions{Wait: true})
	if err != nil || vms[0].InitrdImageID != ia.ID || bootInitrd(vms[0]) != ia.HostPath {
		t.Fatalf("instance = %+v, %v; want the template's initrd", vms, err)
	}
	over, err := e.m.Templates.Instantiate(e.ctx, All, "with-initrd", "", apitypes.InstantiateRequest{Name: "t2",
		Overrides: &apitypes.TemplateConfig{InitrdImageID: "ib"}}, TemplateInstanceOptions{Wait: true})
	if err != nil || over[0].InitrdImageID != ib.ID || bootInitrd(over[0]) != ib.HostPath {
		t.Fatalf("instance with an initrd override = %+v, %v; want initrd ib", over, err)
	}
	if v := View(over[0]); !strings.Contains(string(v.Overrides), ib.ID) || !strings.Contains(string(v.TemplateConfig), ia.ID) {
		t.Errorf("the VM shows template_config %s and overrides %s; want the template's initrd and the override", v.TemplateConfig, v.Overrides)
	}

	// A snapshot keeps the source's initrd; its VMs boot cold with it.
	sn, err := e.m.Snapshots.CreateSnapshot(e.ctx, All, over[0].ID, SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := SnapshotView(sn).Config; c.InitrdImageID != ib.ID {
		t.Errorf("the snapshot's source config has initrd %q; want %s", c.InitrdImageID, ib.ID)
	}
	restored, err := e.m.Snapshots.InstantiateSnapshot(e.ctx, All, sn.ID, apitypes.InstantiateSnapshotRequest{Name: "clone"}, InstantiateOptions{})
	if err != nil || restored.VM.InitrdImageID != ib.ID {
		t.Fatalf("restore = %+v, %v; want initrd ib", restored.VM, err)
	}
	for _, act := range []func(context.Context, Scope, string) (store.VM, error){e.m.VMs.StopVM, e.m.VMs.StartVM} {
		if _, err := act(e.ctx, All, restored.VM.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := bootInitrd(restored.VM); got != ib.HostPath {
		t.Errorf("the restored VM's cold boot has initrd %q; want %s", got, ib.HostPath)
	}

	// In use by VMs, a template and a snapshot: not removable.
	if _, err := e.m.Images.DeleteImage(e.ctx, All, "ia", ""); !isKind(err, KindConflict) || !strings.Contains(err.Error(), "with-initrd") {
		t.Errorf("delete an initrd in use = %v; want a conflict naming the template", err)
	}
	for _, id := range []string{vm.ID, vms[0].ID, over[0].ID, restored.VM.ID} {
		if err := e.m.VMs.DeleteVM(e.ctx, All, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.m.Images.DeleteImage(e.ctx, All, "ib", ""); !isKind(err, KindConflict) || !strings.Contains(err.Error(), "snapshot "+sn.ID) {
		t.Errorf("delete the initrd of a snapshot's source = %v; want a conflict naming the snapshot", err)
	}
	if _, err := e.m.Templates.DeleteTemplate(e.ctx, All, "with-initrd", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Snapshots.DeleteSnapshot(e.ctx, All, sn.ID); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"ia", "ib"} {
		if _, err := e.m.Images.DeleteImage(e.ctx, All, ref, ""); err != nil {
			t.Errorf("delete unused initrd %s: %v", ref, err)
		}
	}
	e.assertHostEmpty()
}

// Bad initrd references are clear 4xx and change nothing.
func TestInitrdBadInput(t *testing.T) {
	e, k, r, _ := imagesEnv(t)
	initrd := filepath.Join(e.dir, "initrd.img")
	if err := os.WriteFile(initrd, []byte("initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	operator := Scope{Project: "default"}
	for _, tc := range []struct {
		name  string
		scope Scope
		cfg   apitypes.VMConfig
		kind  Kind
		code  string
	}{
		{"unknown initrd image", All, apitypes.VMConfig{KernelImageID: k.ID, InitrdImageID: "no-such-image"}, KindNotFound, "not_found"},
		{"a rootfs as initrd", All, apitypes.VMConfig{KernelImageID: k.ID, InitrdImageID: r.ID}, KindInvalid, "invalid_request"},
		{"a kernel as initrd", All, apitypes.VMConfig{KernelImageID: k.ID, InitrdImageID: k.ID}, KindInvalid, "invalid_request"},
		{"id and path", All, apitypes.VMConfig{KernelImageID: k.ID, InitrdImageID: k.ID, InitrdPath: initrd}, KindInvalid, "invalid_request"},
		{"relative path", All, apitypes.VMConfig{KernelPath: e.kernel, InitrdPath: "initrd.img"}, KindInvalid, "invalid_request"},
		{"raw path by an operator", operator, apitypes.VMConfig{KernelImageID: k.ID, InitrdPath: initrd}, KindForbidden, "raw_path_refused"},
		{"boot_args that leave no room", All, apitypes.VMConfig{KernelImageID: k.ID, BootArgs: strings.Repeat("x", 2000)}, KindInvalid, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.m.VMs.CreateVM(e.ctx, tc.scope, apitypes.CreateVMRequest{Name: "bad", VMConfig: tc.cfg}, CreateOptions{Wait: true})
			var se *Error
			if !errors.As(err, &se) || se.Kind != tc.kind || se.Code != tc.code {
				t.Fatalf("create = %v; want %v %s", err, tc.kind, tc.code)
			}
			if n := e.rows(); n != 0 {
				t.Errorf("%d VM rows after a refused create", n)
			}
		})
	}
	prod := newEnv(t, func(c *Config) { c.Mode = ModeProd })
	if _, err := prod.m.VMs.CreateVM(prod.ctx, All, apitypes.CreateVMRequest{Name: "bad", VMConfig: apitypes.VMConfig{KernelPath: prod.kernel, InitrdPath: initrd}},
		CreateOptions{Wait: true}); !isKind(err, KindForbidden) {
		t.Errorf("a raw initrd path in prod mode = %v; want forbidden", err)
	}
	for name, cfg := range map[string]apitypes.TemplateConfig{
		"unknown initrd":               {KernelImageID: "k", InitrdImageID: "nope"},
		"rootfs as initrd":             {KernelImageID: "k", InitrdImageID: "r"},
		"boot_args that leave no room": {KernelImageID: "k", BootArgs: strings.Repeat("x", 2000)},
	} {
		if _, err := e.m.Templates.CreateTemplate(e.ctx, All, "", "test", apitypes.CreateTemplateRequest{Name: "bad", Config: cfg}); err == nil {
			t.Errorf("template with %s: created", name)
		}
	}
	if _, err := e.m.Templates.Instantiate(e.ctx, All, "web", "", apitypes.InstantiateRequest{Name: "o",
		Overrides: &apitypes.TemplateConfig{InitrdImageID: "k"}}, TemplateInstanceOptions{Wait: true}); !isKind(err, KindInvalid) {
		t.Errorf("a kernel as the initrd override = %v; want invalid", err)
	}
	if n := e.rows(); n != 0 {
		t.Errorf("%d VM rows after refused instantiations", n)
	}
	e.assertHostEmpty()
}
