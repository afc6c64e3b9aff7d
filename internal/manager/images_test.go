package manager

import (
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
