package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestConsolePools walks the console's warm pool pages in a real Chromium
// against a real manager and agent: create a pool of 3 from a template in
// the form and watch it fill; update the template through the API; start
// a rollout in the form (after the diff it brings is shown and a version
// that does not exist is refused with what to do), pause and resume it,
// and watch its bar reach succeeded with every VM of the pool on the new
// version; claim a VM; a viewer sees the same pages without a button; a
// phone's width; delete the pool. Screenshots land in test/e2e/artifacts/.
func TestConsolePools(t *testing.T) {
	c := newCluster(t, "sqlite", 1, "--reconcile-interval", "1s", "--vcpu-overcommit", "8")
	ctx := context.Background()
	if err := os.WriteFile(filepath.Join(c.agents[0].imagesDir(t), "vmlinux"), simtest.KernelELF(), 0o644); err != nil {
		t.Fatal(err)
	}
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	cfg := func(mem int) apitypes.TemplateConfig {
		return apitypes.TemplateConfig{Vcpu: intp(1), MemMib: intp(mem), KernelImageID: "vmlinux"}
	}
	tmpl, err := c.client.CreateTemplate(ctx, apitypes.CreateTemplateRequest{Name: "web", Project: "default", Config: cfg(64)})
	if err != nil {
		t.Fatal(err)
	}
	op := c.token(t, "olga", "operator", "default")
	viewer := c.token(t, "vera", "viewer", "default")
	b := newBrowser(t, 1280, 900, c.url())
	b.signIn(c.url(), op)

	// Create a pool of 3 from the template in the form; it fills.
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/pools"))
	b.waitJS("pools page", `document.querySelector("#pool-table[data-loaded=true]") && document.querySelector('#p-source option[value="t:`+tmpl.ID+`"]')`, 30*time.Second)
	b.run(10*time.Second, chromedp.SetValue(chromedp.CSS("#p-source"), "t:"+tmpl.ID))
	b.typeInto("#p-name", "warm")
	b.typeInto("#p-size", "3")
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#p-submit")))
	row := `document.querySelector("#pool-table tr[data-pool-id]")`
	b.waitJS("pool listed", row, 20*time.Second)
	poolID := eval[string](b, row+`.dataset.poolId`)
	b.waitJS("pool fills to 3 ready", row+`.dataset.ready === "3" && `+row+`.dataset.state === "ready"`, 90*time.Second)
	if p, err := c.client.GetPool(ctx, poolID, ""); err != nil || p.Name != "warm" || p.Size != 3 || p.TemplateID != tmpl.ID || p.TemplateVersion != 1 {
		t.Fatalf("pool made in the console: %+v, %v", p, err)
	}
	b.shot("pools")
	if got := eval[string](b, row+`.querySelector("td:nth-child(3)").textContent`); got != "web v1" {
		t.Fatalf("the pool's source reads %q; want web v1", got)
	}

	// The template's next version, through the API.
	if _, err := c.client.UpdateTemplate(ctx, tmpl.ID, "", apitypes.UpdateTemplateRequest{Config: cfg(96)}); err != nil {
		t.Fatal(err)
	}

	// The pool's page: its VMs, no rollout yet, and the form offers v2
	// with what changes.
	b.run(10*time.Second, chromedp.Click(chromedp.CSS(`#pool-table tr[data-pool-id] a`)))
	b.waitJS("pool page", `document.querySelector("#pool-state")?.dataset.ready === "3" && document.querySelectorAll("#pool-vms tr[data-version='1']").length === 3`, 30*time.Second)
	b.waitJS("no rollout yet", `document.querySelector("#rollout-none")`, 10*time.Second)
	b.waitJS("v2 offered with its diff", `document.querySelector("#r-version").value === "2" &&
		document.querySelector("#r-version option[value='1']").disabled &&
		document.querySelector("#r-diff-table tr[data-field=mem_mib]")?.textContent === "mem_mib6496"`, 20*time.Second)
	if !eval[bool](b, `document.querySelector("#r-auto-promote").checked && !document.querySelector("#r-auto-revert").checked`) {
		t.Fatal("auto promote should start checked and auto revert unchecked")
	}
	if eval[bool](b, `!document.querySelector("#rollout-promote").hidden`) {
		t.Fatal("Promote is shown without a rollout awaiting promotion")
	}

	// A version the template does not have (a stale form): the API's
	// refusal is shown with what to do, and nothing starts.
	eval[bool](b, `(() => { const s = document.querySelector("#r-version"); s.add(new Option("v9", "9")); s.value = "9"; return true })()`)
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#r-submit")))
	b.waitJS("error shown with its suggestion", `/not_found/.test(document.querySelector("#r-msg .alert")?.textContent) &&
		/nexus template versions/.test(document.querySelector("#r-msg .alert .suggestion")?.textContent)`, 20*time.Second)
	if _, err := c.client.GetRollout(ctx, poolID, ""); !isStatus(err, 404) {
		t.Fatalf("rollout after a refused start: %v; want none (404)", err)
	}

	// Start the rollout to v2 in the form, pause and resume it.
	b.run(10*time.Second, chromedp.SetValue(chromedp.CSS("#r-version"), "2"))
	b.typeInto("#r-max-parallel", "2")
	b.typeInto("#r-min-healthy", "2s")
	b.typeInto("#r-deadline", "60s")
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#r-submit")))
	b.waitJS("rollout running", `document.querySelector("#rollout")?.dataset.state === "running" && !document.querySelector("#rollout-pause").disabled`, 20*time.Second)
	// (" · auto promote" once the API reports auto_promote.)
	if got := eval[string](b, `document.querySelector("#rollout-versions").textContent + " | " + document.querySelector("#rollout-strategy").textContent`); !regexp.MustCompile(`^v1 → v2 \| canary 1 · max parallel 2 · min healthy 2s · deadline 1m0s · no auto revert( · auto promote)?$`).MatchString(got) {
		t.Fatalf("rollout shows %q", got)
	}
	if !eval[bool](b, `document.querySelector("#r-submit").disabled && document.querySelector("#rollout-resume").disabled`) {
		t.Fatal("while a rollout runs, Start and Resume should be disabled")
	}
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#rollout-pause")))
	b.waitJS("paused", `document.querySelector("#rollout")?.dataset.state === "paused" && !document.querySelector("#rollout-resume").disabled && document.querySelector("#rollout-pause").disabled`, 20*time.Second)
	if r, err := c.client.GetRollout(ctx, poolID, ""); err != nil || r.State != "paused" || r.ToVersion != 2 || r.MaxParallel != 2 || r.MinHealthyTime != "2s" {
		t.Fatalf("after Pause in the console the API says %+v, %v", r, err)
	}
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#rollout-resume")))
	b.waitJS("running again", `["running", "succeeded"].includes(document.querySelector("#rollout")?.dataset.state)`, 20*time.Second)

	// The bar follows the rollout to its end; every VM is of v2.
	partial := 0
	deadline := time.Now().Add(120 * time.Second)
	for eval[string](b, `document.querySelector("#rollout")?.dataset.state`) != "succeeded" {
		if n := eval[int](b, `+document.querySelector("#rollout-bar").getAttribute("aria-valuenow")`); n > 0 && n < 3 {
			partial++
		}
		if time.Now().After(deadline) {
			b.failure()
			t.Fatalf("rollout not succeeded in the console: %s", eval[string](b, `document.querySelector("#rollout").textContent`))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if partial == 0 {
		t.Error("the progress bar never showed a rollout part way")
	}
	b.waitJS("all VMs on v2", `document.querySelector("#rollout-bar").getAttribute("aria-valuenow") === "3" &&
		/^3 of 3 ready on v2 · 0 not on v2$/.test(document.querySelector("#rollout-counts").textContent) &&
		document.querySelectorAll("#pool-vms tr[data-version='2'][data-state=paused]").length === 3 &&
		document.querySelectorAll("#pool-vms tr[data-vm-id]").length === 3 && document.querySelector("#pool-state").dataset.version === "2"`, 30*time.Second)
	if !eval[bool](b, `["pause", "resume", "abort"].every(a => document.querySelector("#rollout-" + a).disabled) && !document.querySelector("#r-submit").disabled`) {
		t.Fatal("after the rollout the control buttons should be disabled and Start enabled")
	}
	for id := range poolVMs(t, c, poolID) {
		if vm, _ := c.client.GetVM(ctx, id); vm.TemplateVersion != 2 || vm.MemMib != 96 {
			t.Fatalf("pool VM %s: version %d, %d MiB; want v2's 96", vm.Name, vm.TemplateVersion, vm.MemMib)
		}
	}
	// A VM's link leads to its page.
	b.run(10*time.Second, chromedp.Click(chromedp.CSS(`#pool-vms tr[data-vm-id] a`)))
	b.waitJS("VM page", `document.querySelector("#vm-state")?.dataset.state === "paused"`, 20*time.Second)
	b.run(10*time.Second, chromedp.NavigateBack())
	b.waitJS("back on the pool", `document.querySelector("#rollout")?.dataset.state === "succeeded"`, 20*time.Second)
	b.shot("pool")

	// Promote by hand: without auto promote the rollout waits at its
	// healthy canary, Promote shows, and a confirmed Promote finishes it.
	b.typeInto("#r-min-healthy", "0s")
	b.run(10*time.Second, chromedp.SetValue(chromedp.CSS("#r-version"), "1"))
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#r-auto-promote")))
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#r-submit")))
	b.waitJS("awaiting promotion", `document.querySelector("#rollout")?.dataset.state === "awaiting_promotion" && !document.querySelector("#rollout-promote").hidden && !document.querySelector("#rollout-promote").disabled`, 60*time.Second)
	if got := eval[string](b, `document.querySelector("#rollout-strategy").textContent`); !strings.HasSuffix(got, " · promote by hand") {
		t.Fatalf("strategy of a rollout promoted by hand shows %q", got)
	}
	if r, err := c.client.GetRollout(ctx, poolID, ""); err != nil || r.State != "awaiting_promotion" || r.ToVersion != 1 {
		t.Fatalf("the API says %+v, %v; want awaiting_promotion to v1", r, err)
	}
	b.confirm("#rollout-promote")
	b.waitJS("promoted and done", `document.querySelector("#rollout")?.dataset.state === "succeeded" && document.querySelector("#rollout-promote").hidden &&
		document.querySelector("#pool-state").dataset.version === "1" && document.querySelectorAll("#pool-vms tr[data-version='1'][data-state=paused]").length === 3`, 90*time.Second)

	// Abort asks first (Escape cancels), then takes the pool back.
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#r-auto-promote")))
	b.typeInto("#r-min-healthy", "1h")
	b.run(10*time.Second, chromedp.SetValue(chromedp.CSS("#r-version"), "2"))
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#r-submit")))
	b.waitJS("rollout to v2 running", `document.querySelector("#rollout")?.dataset.state === "running" && document.querySelector("#rollout")?.dataset.toVersion === "2" && !document.querySelector("#rollout-abort").disabled`, 20*time.Second)
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#rollout-abort")), chromedp.WaitVisible(chromedp.CSS("#confirm-ok")), chromedp.KeyEvent(kb.Escape))
	b.waitJS("dialog closed", `!document.querySelector("#confirm").open`, 10*time.Second)
	if r, err := c.client.GetRollout(ctx, poolID, ""); err != nil || r.State != "running" {
		t.Fatalf("after a cancelled Abort the API says %+v, %v; want running", r, err)
	}
	b.confirm("#rollout-abort")
	b.waitJS("aborted", `document.querySelector("#rollout")?.dataset.state === "aborted" && document.querySelector("#pool-state").dataset.version === "1" &&
		document.querySelectorAll("#pool-vms tr[data-version='1'][data-state=paused]").length === 3 && document.querySelectorAll("#pool-vms tr[data-vm-id]").length === 3`, 60*time.Second)

	// Claim a VM from the pool's page.
	b.confirm("#pool-claim")
	b.waitJS("claimed", `document.querySelector("#claim-result a")`, 30*time.Second)
	claimedName := eval[string](b, `document.querySelector("#claim-result a").textContent`)
	p, err := c.client.GetPool(ctx, poolID, "")
	if err != nil || p.Claims != 1 {
		t.Fatalf("pool after a claim in the console: %+v, %v", p, err)
	}
	claimed, err := c.client.GetVM(ctx, claimedName)
	if err != nil || claimed.State != "running" || claimed.PoolID != "" {
		t.Fatalf("claimed VM %s: %+v, %v; want running and out of the pool", claimedName, claimed, err)
	}
	b.noErrors("/rollout:") // the API's 404s: no rollout yet, and v9

	// A viewer sees pools and the rollout, and no button or form.
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#who button")))
	b.signIn(c.url(), viewer)
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/pools"))
	b.waitJS("viewer's pool list", row+`?.querySelector(".rollout-cell")?.dataset.state === "aborted"`, 20*time.Second)
	if n := eval[int](b, `document.querySelectorAll("main button, main form").length`); n != 0 {
		t.Fatalf("a viewer sees %d buttons or forms on the pool list", n)
	}
	b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/pools/"+poolID))
	b.waitJS("viewer's pool page", `document.querySelector("#rollout")?.dataset.state === "aborted" && document.querySelector("#pool-vms tr[data-vm-id]")`, 20*time.Second)
	if n := eval[int](b, `document.querySelectorAll("main button, main form").length`); n != 0 {
		t.Fatalf("a viewer sees %d buttons or forms on the pool page", n)
	}

	b.noErrors("/rollout:")

	// Back as the operator. A phone's width, with the operator's forms and buttons: nothing wider
	// than the screen but the scrolling tables.
	b.run(30*time.Second, chromedp.EmulateViewport(390, 844))
	b.run(10*time.Second, chromedp.Click(chromedp.CSS("#who button")))
	b.signIn(c.url(), op)
	for _, p := range []struct{ hash, ready string }{
		{"pools/" + poolID, `document.querySelector("#pool-vms tr[data-vm-id]") && document.querySelector("#r-diff-table") && document.querySelector("#rollout-abort")`},
		{"pools", `document.querySelector("#pool-table[data-loaded=true] button.claim") && document.querySelector("#p-source option")`},
	} {
		hash := p.hash
		b.run(30*time.Second, chromedp.Navigate(c.url()+"/ui/#/"+hash))
		b.waitJS(hash+" on a phone", p.ready, 20*time.Second)
		if w := eval[int](b, `document.documentElement.scrollWidth`); w > 390 {
			t.Errorf("#/%s is %d px wide on a 390 px screen", hash, w)
		}
		name := "pools-phone"
		if strings.Contains(hash, "/") {
			name = "pool-phone"
		}
		b.shot(name)
	}

	// The operator deletes the pool from the list, after a confirmation.
	b.run(30*time.Second, chromedp.EmulateViewport(1280, 900))
	b.waitJS("pool list", row, 20*time.Second)
	left := poolVMs(t, c, poolID)
	b.confirm("#pool-table tr[data-pool-id] button.delete")
	b.waitJS("pool gone from the list", row+` === null`, 30*time.Second)
	if _, err := c.client.GetPool(ctx, poolID, ""); !isStatus(err, 404) {
		t.Fatalf("pool after Delete in the console: %v; want 404", err)
	}
	ids := []string{claimed.ID}
	for id := range left {
		ids = append(ids, id)
		if _, err := c.client.GetVM(ctx, id); !isStatus(err, 404) {
			t.Fatalf("pool VM %s after the pool's delete: %v", id, err)
		}
	}
	b.noErrors("/rollout:")
	if err := c.client.DeleteVM(ctx, claimed.ID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(ids...)
}
