package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// consoleFleet is a manager and one agent whose simulated VMMs flush
// metrics often, with a kernel and rootfs image and a template.
func consoleFleet(t *testing.T) (*cluster, apitypes.Template, apitypes.Image, apitypes.Image) {
	t.Helper()
	c := newCluster(t, "sqlite", 0)
	c.startAgent("host-0", "FC_SIM_METRICS_INTERVAL=500ms")
	c.waitHosts(1)
	dir := c.agents[0].imagesDir(t)
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSparse(t, filepath.Join(dir, "rootfs.ext4"), 16<<20, 0)
	kernel := mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	rootfs := mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "rootfs", Name: "base", HostPath: "rootfs.ext4", Project: "default"})
	var tmpl apitypes.Template
	two := 2
	if err := c.client.Do(context.Background(), "POST", "/v1/templates", nil, apitypes.CreateTemplateRequest{
		Name: "web", Project: "default",
		Config: apitypes.TemplateConfig{Vcpu: &two, KernelImageID: kernel.ID, RootfsImageID: rootfs.ID},
	}, &tmpl); err != nil {
		t.Fatal(err)
	}
	return c, tmpl, kernel, rootfs
}

// TestConsole walks the web console in a real Chromium against a real
// manager and agent: sign in, watch a VM made through the API appear,
// create VMs from a template, follow a guest's console, pause and resume,
// see the charts fill; then a viewer sees no action and a forged action is
// refused. Screenshots land in test/e2e/artifacts/.
func TestConsole(t *testing.T) {
	c, tmpl, kernel, rootfs := consoleFleet(t)
	ctx := context.Background()
	op := c.token(t, "olga", "operator", "default")
	viewer := c.token(t, "vera", "viewer", "default")
	opc := newClient(c.url(), op)
	b := newBrowser(t, 1280, 900, c.url())

	b.signIn(c.url(), op)
	if role := eval[string](b, `document.querySelector("#who-role").dataset.role`); role != "operator" {
		t.Fatalf("signed in as %q; want operator", role)
	}
	b.waitJS("VM list", `document.querySelector("#vm-table[data-loaded=true]")`, 30*time.Second)

	// A VM made through the API shows up, and reaches running, without a reload.
	vm, err := opc.CreateVM(ctx, apitypes.CreateVMRequest{Name: "api-1",
		VMConfig: apitypes.VMConfig{KernelImageID: kernel.ID, RootfsImageID: rootfs.ID}, Tags: map[string]string{"team": "web"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	row := fmt.Sprintf(`document.querySelector('#vm-table tr[data-vm-id=%q]')`, vm.ID)
	b.waitJS("API-made VM listed as running", row+`?.dataset.state === "running"`, 30*time.Second)

	// The filters narrow the list: by tag on the server, by name here.
	b.typeInto("#f-tag", "team=nope")
	b.waitJS("tag filter hides it", row+` === null && document.querySelector("#vm-table[data-loaded=true]")`, 20*time.Second)
	b.typeInto("#f-tag", "team=web")
	b.waitJS("tag filter shows it", row+` !== null`, 20*time.Second)

	// Create two VMs from the template through the form.
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/create"))
	b.waitJS("templates offered", `document.querySelector('#c-template option[value="`+tmpl.ID+`"]')`, 30*time.Second)
	b.run(20*time.Second, chromedp.SetValue(chromedp.CSS("#c-template"), tmpl.ID))
	b.typeInto("#c-name", "ui")
	b.typeInto("#c-count", "2")
	b.typeInto("#c-tags", "made=console")
	b.run(20*time.Second, chromedp.Click(chromedp.CSS("#c-submit")))
	b.waitJS("two VMs created", `document.querySelectorAll("#create-result a").length === 2`, 40*time.Second)
	made, err := opc.ListVMs(ctx, nexus.ListVMsOptions{Tags: map[string]string{"made": "console"}})
	if err != nil || len(made.Items) != 2 {
		t.Fatalf("VMs created from the console: %+v, %v", made.Items, err)
	}
	for _, v := range made.Items {
		if v.TemplateID != tmpl.ID || v.Vcpu != 2 || !strings.HasPrefix(v.Name, "ui-") {
			t.Fatalf("VM %s: template %s vcpu %d; want from template %s with 2 vCPUs", v.Name, v.TemplateID, v.Vcpu, tmpl.ID)
		}
	}

	// The same again: the API's refusal is shown with what to do about it.
	b.run(20*time.Second, chromedp.Click(chromedp.CSS("#c-submit")))
	b.waitJS("error shown", `document.querySelector("#create-result .alert .suggestion") && /name_taken/.test(document.querySelector("#create-result .alert").textContent) && /request id/.test(document.querySelector("#create-result .alert").textContent)`, 30*time.Second)

	// The VM page follows the guest's console: its counter advances.
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/vms/"+vm.ID))
	counter := `(document.querySelector("#log-console")?.textContent.match(/sim-guest: counter=(\d+)/g) || []).map(s => +s.split("=")[1]).pop() || -1`
	b.waitJS("console shows the guest counter", counter+` >= 0`, 30*time.Second)
	first := eval[int](b, counter)
	b.waitJS("counter advances live", fmt.Sprintf(`%s > %d`, counter, first), 20*time.Second)

	// Pause (with confirmation): the badge and the API agree.
	b.confirm("#act-pause")
	b.waitJS("paused", `document.querySelector("#vm-state").dataset.state === "paused"`, 30*time.Second)
	if v, _ := opc.GetVM(ctx, vm.ID); v.State != "paused" {
		t.Fatalf("after pause in the console the API says %s", v.State)
	}
	time.Sleep(700 * time.Millisecond) // lines printed before the pause are still on their way
	paused := eval[int](b, counter)
	time.Sleep(1500 * time.Millisecond)
	if now := eval[int](b, counter); now != paused {
		t.Fatalf("the console kept counting while paused: %d → %d", paused, now)
	}
	b.confirm("#act-resume")
	b.waitJS("running again", `document.querySelector("#vm-state").dataset.state === "running"`, 30*time.Second)
	b.waitJS("counter resumes", fmt.Sprintf(`%s > %d`, counter, paused), 20*time.Second)

	// A snapshot from the VM page; the VM runs on.
	b.confirm("#act-snapshot")
	b.waitJS("snapshot written", `/Snapshot [0-9a-f-]+ written/.test(document.querySelector("#vm-msg").textContent)`, 40*time.Second)
	b.waitJS("running after the snapshot", `document.querySelector("#vm-state").dataset.state === "running"`, 30*time.Second)

	// The charts fill from the VM's metrics (firecracker-sim flushes every 500 ms).
	b.waitJS("charts drawn", `document.querySelectorAll("#vm-charts .uplot").length === 5 &&
		[...document.querySelectorAll("#vm-charts .chart")].every(c => +c.dataset.points >= 3)`, 40*time.Second)
	b.shot("vm")
	b.noErrors("409") // the refused second create

	// A viewer: no action buttons, no create form; a forged action is a 403.
	b.run(20*time.Second, chromedp.Click(chromedp.CSS("#who button")))
	b.signIn(c.url(), viewer)
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/vms/"+vm.ID))
	b.waitJS("viewer sees the VM", `document.querySelector("#vm-state").dataset.state === "running"`, 30*time.Second)
	if n := eval[int](b, `document.querySelectorAll("#vm-actions button").length`); n != 0 {
		t.Fatalf("a viewer sees %d action buttons", n)
	}
	forged := evalAsync[string](b, fmt.Sprintf(`fetch("/v1/vms/%s/stop", {method: "POST", headers: {Authorization: "Bearer " + sessionStorage.getItem("nexus.token")}})
		.then(async r => r.status + " " + (await r.json()).error)`, vm.ID))
	if forged != "403 forbidden" {
		t.Fatalf("forged stop as viewer: %s; want 403 forbidden", forged)
	}
	if v, _ := opc.GetVM(ctx, vm.ID); v.State != "running" {
		t.Fatalf("after the forged stop the VM is %s", v.State)
	}
	var audit apitypes.AuditList
	if err := c.client.Do(ctx, "GET", "/v1/audit", map[string][]string{"vm_id": {vm.ID}}, nil, &audit); err != nil {
		t.Fatal(err)
	}
	denied := false
	for _, a := range audit.Items {
		denied = denied || (a.Action == "vm.stop" && a.Result == string(store.AuditDenied) && strings.HasPrefix(a.Actor, "vera"))
	}
	if !denied {
		t.Fatalf("the forged stop is not in the audit trail as denied: %+v", audit.Items)
	}
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/create"))
	b.waitJS("create refused to a viewer", `document.querySelector("main h1")?.textContent === "Create" && !document.querySelector("#c-submit")`, 20*time.Second)

	// A phone's width: nothing wider than the screen but the scrolling tables.
	b.run(30*time.Second, chromedp.EmulateViewport(390, 844), chromedp.Navigate(c.url()+"/ui/#/vms"))
	b.waitJS("list on a phone", `document.querySelector("#vm-table[data-loaded=true]")`, 30*time.Second)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("the page is %d px wide on a 390 px screen", w)
	}
	// One line per VM: the columns that matter least are hidden.
	if h := eval[int](b, row+`.getBoundingClientRect().height`); h > 48 {
		t.Errorf("a VM's row is %d px high on a phone; want one line", h)
	}
	b.shot("phone")
	b.noErrors("403") // the forged call's refusal is logged by the browser

	// An admin's tour of the other pages: each loads its data, without a
	// script error.
	b.run(30*time.Second, chromedp.EmulateViewport(1280, 900))
	b.run(20*time.Second, chromedp.Click(chromedp.CSS("#who button")))
	b.signIn(c.url(), c.admin)
	for _, p := range []struct{ hash, ready string }{
		{"hosts", `document.querySelector("#host-table [role=meter]")`},
		{"templates", `document.querySelector('tr[data-template-id="` + tmpl.ID + `"]')`},
		{"images", `[...document.querySelectorAll("main td")].some(td => td.textContent === "vmlinux")`},
		{"snapshots", `document.querySelector("tr[data-snapshot-id]")`},
		{"audit", `document.querySelectorAll("#audit-table tbody tr").length > 5 && document.querySelector("#a-export")`},
		{"tokens", `[...document.querySelectorAll("main td")].some(td => td.textContent === "vera")`},
	} {
		b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/"+p.hash))
		b.waitJS(p.hash+" page", p.ready, 30*time.Second)
	}
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/hosts"))
	b.waitJS("hosts page", `document.querySelector("#host-table [role=meter]")`, 30*time.Second)
	b.shot("hosts")
	hostID := eval[string](b, `document.querySelector("#host-table tr[data-host-id]").dataset.hostId`)
	b.confirm("#host-table button.drain")
	b.waitJS("host draining", `document.querySelector("#host-table .state")?.textContent === "draining"`, 30*time.Second)
	if hl, _ := c.client.Hosts(ctx); hl.Items[0].ID != hostID || hl.Items[0].State != "draining" {
		t.Fatalf("after Drain in the console the API says %+v", hl.Items)
	}
	b.confirm("#host-table button.undrain")
	b.waitJS("host ready again", `document.querySelector("#host-table .state")?.textContent === "ready"`, 30*time.Second)
	b.noErrors("403")

	var snaps apitypes.SnapshotList
	if err := c.client.Do(ctx, "GET", "/v1/vms/"+vm.ID+"/snapshots", nil, nil, &snaps); err != nil || len(snaps.Items) != 1 {
		t.Fatalf("snapshots of the VM: %+v, %v; want the one taken in the console", snaps.Items, err)
	}
	if err := c.client.Do(ctx, "DELETE", "/v1/snapshots/"+snaps.Items[0].ID, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, v := range append(made.Items, vm) {
		if err := c.client.DeleteVM(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	c.assertNoLeaks(vm.ID, made.Items[0].ID, made.Items[1].ID)
}
