package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestTemplateVersions: every update of a template is a new, immutable
// version; VMs and pools record the version they were made of; versions
// list, read and diff through the API, the SDK and the CLI.
func TestTemplateVersions(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { testTemplateVersions(t, engine) })
	}
}

func testTemplateVersions(t *testing.T, engine string) {
	c := newCluster(t, engine, 1, "--reconcile-interval", "1s")
	ctx := context.Background()
	dir := c.agents[0].imagesDir(t)
	os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644)
	os.WriteFile(filepath.Join(dir, "vmlinux-new"), simtest.KernelELF(), 0o644)
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	newKernel := mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux-new", HostPath: "vmlinux-new", Project: "*"})
	tok := c.token(t, "alice", "operator", "team-a")
	op := newClient(c.url(), tok)
	viewer := newClient(c.url(), c.token(t, "victor", "viewer", "team-a"))

	tmpl, err := op.CreateTemplate(ctx, apitypes.CreateTemplateRequest{Name: "web", Config: apitypes.TemplateConfig{
		Vcpu: intp(1), MemMib: intp(64), KernelImageID: "vmlinux",
	}})
	if err != nil || tmpl.Version != 1 {
		t.Fatalf("create template: %+v, %v; want version 1", tmpl, err)
	}
	inst, err := op.InstantiateTemplate(ctx, "web", "", apitypes.InstantiateRequest{Name: "v1vm"}, true)
	if err != nil || inst.Items[0].TemplateVersion != 1 {
		t.Fatalf("instantiate v1: %+v, %v; want template_version 1", inst, err)
	}

	// Bad updates are refused and make no version.
	for _, tc := range []struct {
		name, path, body string
		status           int
	}{
		{"no kernel", "/v1/templates/web", `{"config":{"vcpu":2}}`, 400},
		{"unknown image", "/v1/templates/web", `{"config":{"kernel_image_id":"nope"}}`, 404},
		{"unknown field", "/v1/templates/web", `{"config":{"kernel_image_id":"vmlinux","cpus":2}}`, 400},
		{"vcpu 64", "/v1/templates/web", `{"config":{"kernel_image_id":"vmlinux","vcpu":64}}`, 400},
		{"no body", "/v1/templates/web", ``, 400},
		{"missing template", "/v1/templates/nope", `{"config":{"kernel_image_id":"vmlinux"}}`, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if status, e := rawCall(t, c, "PUT", tc.path, tc.body, tok); status != tc.status {
				t.Fatalf("%d %+v; want %d", status, e, tc.status)
			}
		})
	}
	if _, err := viewer.UpdateTemplate(ctx, "web", "", apitypes.UpdateTemplateRequest{Config: apitypes.TemplateConfig{KernelImageID: "vmlinux"}}); !isStatus(err, 403) {
		t.Fatalf("viewer updates: %v; want 403", err)
	}
	if got, _ := op.GetTemplate(ctx, "web", ""); got.Version != 1 {
		t.Fatalf("refused updates made version %d", got.Version)
	}

	v2, err := op.UpdateTemplate(ctx, "web", "", apitypes.UpdateTemplateRequest{Config: apitypes.TemplateConfig{
		Vcpu: intp(1), MemMib: intp(96), KernelImageID: "vmlinux-new",
	}})
	if err != nil || v2.Version != 2 || v2.ID != tmpl.ID || v2.Config.KernelImageID != newKernel.ID {
		t.Fatalf("update: %+v, %v; want version 2 of the same template, the image name stored as its id", v2, err)
	}
	if vm, _ := op.GetVM(ctx, inst.ID); vm.TemplateVersion != 1 || vm.MemMib != 64 {
		t.Fatalf("the v1 VM after the update: version %d, mem %d; want 1 and 64", vm.TemplateVersion, vm.MemMib)
	}

	// A pool records the version it was made of and keeps making it after
	// the template moves on.
	pool, err := op.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "warm", TemplateID: "web", Size: 1})
	if err != nil || pool.TemplateVersion != 2 {
		t.Fatalf("create pool: %+v, %v; want template_version 2", pool, err)
	}
	if _, err := op.UpdateTemplate(ctx, "web", "", apitypes.UpdateTemplateRequest{Config: apitypes.TemplateConfig{
		Vcpu: intp(2), MemMib: intp(96), KernelImageID: "vmlinux-new", BootArgs: "console=ttyS0 quiet",
	}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "pool warm has a ready VM", func() error {
		p, err := op.GetPool(ctx, pool.ID, "")
		if err != nil || p.Ready != 1 {
			return fmt.Errorf("ready %d, %v", p.Ready, err)
		}
		return nil
	})
	for _, vm := range poolVMs(t, c, pool.ID) {
		if vm.TemplateVersion != 2 || vm.MemMib != 96 || vm.Vcpu != 1 {
			t.Fatalf("pooled VM: version %d, mem %d, vcpu %d; want version 2's", vm.TemplateVersion, vm.MemMib, vm.Vcpu)
		}
	}

	// Versions: newest first, paged, each immutable.
	l, err := op.ListTemplateVersions(ctx, "web", "", 0, 2)
	if err != nil || len(l.Items) != 2 || l.Items[0].Version != 3 || l.Items[1].Version != 2 || l.NextBefore != 2 {
		t.Fatalf("versions page 1: %+v, %v; want 3, 2 and next_before 2", l, err)
	}
	l, err = viewer.ListTemplateVersions(ctx, tmpl.ID, "", l.NextBefore, 2)
	if err != nil || len(l.Items) != 1 || l.Items[0].Version != 1 || l.NextBefore != 0 || *l.Items[0].Config.MemMib != 64 {
		t.Fatalf("versions page 2: %+v, %v; want version 1 alone", l, err)
	}
	v1, err := viewer.GetTemplateVersion(ctx, "web", "", 1)
	if err != nil || v1.Version != 1 || v1.Owner != "alice" || v1.Config.KernelImageID == newKernel.ID {
		t.Fatalf("version 1: %+v, %v", v1, err)
	}

	d, err := viewer.DiffTemplate(ctx, "web", "", 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	for _, ch := range d.Changes {
		fields = append(fields, ch.Field)
	}
	if got := strings.Join(fields, ","); got != "boot_args,kernel_image_id,mem_mib,vcpu" || string(d.Changes[0].From) != "" ||
		string(d.Changes[0].To) != `"console=ttyS0 quiet"` || string(d.Changes[2].From) != "64" || string(d.Changes[2].To) != "96" {
		t.Fatalf("diff 1..3 = %+v; want boot_args (added), kernel_image_id, mem_mib 64→96, vcpu", d.Changes)
	}
	if d, err := op.DiffTemplate(ctx, "web", "", 2, 2); err != nil || len(d.Changes) != 0 {
		t.Fatalf("diff of a version with itself = %+v, %v; want no changes", d, err)
	}

	// Bad version reads: the error contract, nothing else.
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/v1/templates/web/versions/9", 404},
		{"/v1/templates/web/versions/0", 400},
		{"/v1/templates/web/versions/x", 400},
		{"/v1/templates/nope/versions", 404},
		{"/v1/templates/web/versions?limit=0", 400},
		{"/v1/templates/web/versions?limit=1001", 400},
		{"/v1/templates/web/versions?before=-1", 400},
		{"/v1/templates/web/diff?from=1", 400},
		{"/v1/templates/web/diff?from=1&to=9", 404},
		{"/v1/templates/web/diff?from=0&to=1", 400},
		{"/v1/templates/nope/diff?from=1&to=2", 404},
	} {
		if status, e := rawCall(t, c, "GET", tc.path, "", tok); status != tc.status {
			t.Errorf("GET %s = %d %+v; want %d", tc.path, status, e, tc.status)
		}
	}
	if _, err := newClient(c.url(), c.token(t, "bob", "operator", "team-b")).ListTemplateVersions(ctx, tmpl.ID, "", 0, 0); !isStatus(err, 404) {
		t.Fatalf("another project lists versions: %v; want 404", err)
	}

	// The CLI.
	e := newCLIEnv(t, c)
	r := e.run(nil, "template", "versions", "web", "--project", "team-a")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "VERSION") || strings.Count(r.stdout, "\n") != 4 {
		t.Fatalf("nexus template versions: %+v", r)
	}
	r = e.run(nil, "template", "diff", "web", "1", "2", "--project", "team-a")
	if r.code != 0 || !strings.Contains(r.stdout, "mem_mib") || !strings.Contains(r.stdout, "64") || strings.Contains(r.stdout, "vcpu") {
		t.Fatalf("nexus template diff web 1 2: %+v", r)
	}
	r = e.run(nil, "template", "update", "web", "--mem", "128", "--project", "team-a")
	if r.code != 0 || !strings.Contains(r.stdout, "4") {
		t.Fatalf("nexus template update: %+v", r)
	}
	if got, _ := op.GetTemplate(ctx, "web", ""); got.Version != 4 || *got.Config.MemMib != 128 || *got.Config.Vcpu != 2 || got.Config.BootArgs != "console=ttyS0 quiet" {
		t.Fatalf("after the CLI update: %+v; want version 4, mem 128, the rest of version 3", got)
	}
	if r := e.run(nil, "template", "diff", "web", "1", "x"); r.code == 0 {
		t.Fatalf("nexus template diff with a bad version: %+v", r)
	}

	if err := op.DeletePool(ctx, pool.ID, ""); err != nil {
		t.Fatal(err)
	}
}
