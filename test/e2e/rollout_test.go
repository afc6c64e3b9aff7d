package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// TestPoolRollout: a 10-VM pool moves to a new template version, canary
// first, never with fewer than size - max_parallel ready VMs; a version
// whose VMs cannot boot stops at the canary and reverts; a rollout
// survives a manager restart; abort returns the pool to its old version;
// with auto_promote false it waits at its healthy canaries (across a
// restart) until promoted, and abort works from there too.
func TestPoolRollout(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { testPoolRollout(t, engine) })
	}
}

func testPoolRollout(t *testing.T, engine string) {
	const size, maxParallel = 10, 3
	c := newCluster(t, engine, 1, "--reconcile-interval", "1s", "--vcpu-overcommit", "32")
	ctx := context.Background()
	dir := c.agents[0].imagesDir(t)
	os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644)
	// Not an ELF: the simulator refuses to boot it, as firecracker would.
	os.WriteFile(filepath.Join(dir, "broken"), []byte("this is not a kernel"), 0o644)
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "broken", HostPath: "broken", Project: "*"})
	cl := c.client
	cfg := func(mem int, kernel string) apitypes.TemplateConfig {
		return apitypes.TemplateConfig{Vcpu: intp(1), MemMib: intp(mem), KernelImageID: kernel}
	}
	if _, err := cl.CreateTemplate(ctx, apitypes.CreateTemplateRequest{Name: "web", Config: cfg(64, "vmlinux")}); err != nil {
		t.Fatal(err)
	}
	pool, err := cl.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "warm", TemplateID: "web", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	waitPool := func(version int) {
		t.Helper()
		eventually(t, 120*time.Second, fmt.Sprintf("pool has %d ready VMs of version %d", size, version), func() error {
			vms := poolVMs(t, c, pool.ID)
			ready := 0
			for _, vm := range vms {
				if vm.State == "paused" && vm.TemplateVersion == version {
					ready++
				}
			}
			if ready != size || len(vms) != size {
				return fmt.Errorf("%d VMs, %d of them paused of version %d", len(vms), ready, version)
			}
			return nil
		})
	}
	waitPool(1)
	if _, err := cl.UpdateTemplate(ctx, "web", "", apitypes.UpdateTemplateRequest{Config: cfg(96, "vmlinux")}); err != nil { // version 2
		t.Fatal(err)
	}
	if _, err := cl.UpdateTemplate(ctx, "web", "", apitypes.UpdateTemplateRequest{Config: cfg(96, "broken")}); err != nil { // version 3
		t.Fatal(err)
	}

	// Bad requests change nothing.
	for _, bad := range []apitypes.RolloutRequest{
		{TemplateVersion: 0},
		{TemplateVersion: 1}, // the pool's own
		{TemplateVersion: 2, Canary: intp(11)},
		{TemplateVersion: 2, MaxParallel: 11},
		{TemplateVersion: 2, MinHealthyTime: "soon"},
		{TemplateVersion: 2, ProgressDeadline: "0s"},
		{TemplateVersion: 2, ProgressDeadline: "2h"},
		{TemplateVersion: 2, ReadyLine: strings.Repeat("x", 257)},
	} {
		if _, err := cl.StartRollout(ctx, "warm", "", bad); !isStatus(err, 400) {
			t.Fatalf("rollout %+v = %v; want 400", bad, err)
		}
	}
	if _, err := cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 9}); !isStatus(err, 404) {
		t.Fatalf("rollout to a version never made = %v; want 404", err)
	}
	if _, err := cl.GetRollout(ctx, "warm", ""); !isStatus(err, 404) {
		t.Fatalf("rollout of a pool without one = %v; want 404", err)
	}
	if _, err := cl.PauseRollout(ctx, "warm", ""); !isStatus(err, 404) {
		t.Fatalf("pause without a rollout = %v; want 404", err)
	}

	// watch samples the pool's ready VMs until the rollout ends.
	watch := func(wantState string) (apitypes.Rollout, int) {
		t.Helper()
		low := size
		var r apitypes.Rollout
		eventually(t, 180*time.Second, "rollout "+wantState, func() error {
			ready := 0
			for _, vm := range poolVMs(t, c, pool.ID) {
				if vm.State == "paused" {
					ready++
				}
			}
			low = min(low, ready)
			var err error
			if r, err = cl.GetRollout(ctx, "warm", ""); err != nil {
				return err
			}
			if r.State != wantState {
				return fmt.Errorf("state %s (%s), %d ready", r.State, r.Message, ready)
			}
			return nil
		})
		return r, low
	}

	// A version that cannot boot: the canary fails and the pool reverts.
	r, err := cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 3, Canary: intp(1), MaxParallel: maxParallel, AutoRevert: true})
	if err != nil || r.State != "running" || r.Phase != "canary" || r.FromVersion != 1 {
		t.Fatalf("start rollout: %+v, %v", r, err)
	}
	if _, err := cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 2}); !isStatus(err, 409) {
		t.Fatalf("a second rollout = %v; want 409", err)
	}
	r, low := watch("reverted")
	if r.Phase != "revert" || !strings.Contains(r.Message, "canary step failed") {
		t.Fatalf("reverted rollout: %+v; want it failed at the canary", r)
	}
	if low < size-maxParallel {
		t.Fatalf("ready fell to %d during the failed rollout; want at least %d", low, size-maxParallel)
	}
	waitPool(1)
	if p, _ := cl.GetPool(ctx, pool.ID, ""); p.TemplateVersion != 1 {
		t.Fatalf("pool after the revert: version %d; want 1", p.TemplateVersion)
	}

	// The real thing: canary 1, then 3 at a time, each new VM healthy once
	// its console shows the guest's ready line, with a manager restart in
	// the middle.
	r, err = cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(1), MaxParallel: maxParallel,
		MinHealthyTime: "1s", ProgressDeadline: "30s", AutoRevert: true, ReadyLine: simtest.ReadyLine})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the canary is healthy", func() error {
		r, err := cl.GetRollout(ctx, "warm", "")
		if err != nil || r.Phase != "rolling" {
			return fmt.Errorf("%+v, %v", r, err)
		}
		return nil
	})
	c.restartManager()
	r, low = watch("succeeded")
	if low < size-maxParallel {
		t.Fatalf("ready fell to %d during the rollout; want at least %d", low, size-maxParallel)
	}
	waitPool(2)
	if p, _ := cl.GetPool(ctx, pool.ID, ""); p.TemplateVersion != 2 || r.New != size || r.Old != 0 {
		t.Fatalf("after the rollout: pool version %d, rollout %+v; want version 2, %d new and no old", p.TemplateVersion, r, size)
	}
	for _, vm := range poolVMs(t, c, pool.ID) {
		if vm.MemMib != 96 {
			t.Fatalf("VM %s has %d MiB; want version 2's 96", vm.Name, vm.MemMib)
		}
	}
	actions := map[string]int{}
	for e, err := range cl.AuditEntries(ctx, nexus.AuditOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		if e.ResourceID == pool.ID || e.ResourceID == "warm" { // the caller's rows name the pool as called
			actions[e.Action]++
		}
	}
	for _, a := range []string{"pool.rollout", "pool.rollout.failed", "pool.rollout.reverted", "pool.rollout.promote", "pool.rollout.step", "pool.rollout.succeeded"} {
		if actions[a] == 0 {
			t.Errorf("no audit row %s for the pool; have %v", a, actions)
		}
	}

	// Pause, resume and abort: the pool ends on version 2 at full size.
	if _, err := cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 1, Canary: intp(2), MinHealthyTime: "1h"}); err != nil {
		t.Fatal(err)
	}
	if r, err := cl.PauseRollout(ctx, "warm", ""); err != nil || r.State != "paused" {
		t.Fatalf("pause: %+v, %v", r, err)
	}
	if _, err := cl.PauseRollout(ctx, "warm", ""); !isStatus(err, 409) {
		t.Fatalf("pause a paused rollout = %v; want 409", err)
	}
	if r, err := cl.ResumeRollout(ctx, "warm", ""); err != nil || r.State != "running" {
		t.Fatalf("resume: %+v, %v", r, err)
	}
	eventually(t, 60*time.Second, "canaries of version 1 made", func() error {
		r, err := cl.GetRollout(ctx, "warm", "")
		if err != nil || r.Old != size || r.Phase != "canary" {
			return fmt.Errorf("%+v, %v", r, err)
		}
		n := 0
		for _, vm := range poolVMs(t, c, pool.ID) {
			if vm.TemplateVersion == 1 && vm.State == "paused" {
				n++
			}
		}
		if n != 2 {
			return fmt.Errorf("%d canaries", n)
		}
		return nil
	})
	if r, err := cl.AbortRollout(ctx, "warm", ""); err != nil || r.State != "reverting" {
		t.Fatalf("abort: %+v, %v", r, err)
	}
	watch("aborted")
	waitPool(2)
	if _, err := cl.ResumeRollout(ctx, "warm", ""); !isStatus(err, 409) {
		t.Fatalf("resume an aborted rollout = %v; want 409", err)
	}

	// The CLI.
	e := newCLIEnv(t, c)
	if r := e.run(nil, "pool", "rollout", "status", "warm"); r.code != 0 || !strings.Contains(r.stdout, "aborted") || !strings.Contains(r.stdout, "2 → 1") {
		t.Fatalf("nexus pool rollout status: %+v", r)
	}
	if r := e.run(nil, "pool", "rollout", "start", "warm", "--version", "2"); r.code == 0 {
		t.Fatalf("nexus pool rollout start to the pool's own version: %+v", r)
	}
	if _, err := cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 1, Canary: intp(0), AutoPromote: boolp(false)}); !isStatus(err, 400) {
		t.Fatalf("auto_promote false without canaries = %v; want 400", err)
	}

	// Manual promote: the rollout stops at its healthy canaries, across a
	// manager restart, until promoted; the pool keeps its size meanwhile.
	const canaries = 2
	if r := e.run(nil, "pool", "rollout", "start", "warm", "--version", "1", "--canary", "2", "--max-parallel", "3", "--auto-promote=false"); r.code != 0 ||
		!strings.Contains(r.stdout, "auto_promote false") {
		t.Fatalf("nexus pool rollout start --auto-promote=false: %+v", r)
	}
	var apiErr *nexus.APIError
	if _, err := cl.PromoteRollout(ctx, "warm", ""); !errors.As(err, &apiErr) || apiErr.Status != 409 || apiErr.Code != "rollout_state" ||
		!strings.Contains(apiErr.Message, "awaiting_promotion") || apiErr.Suggestion == "" {
		t.Fatalf("promote before the canaries are healthy = %v; want 409 rollout_state naming awaiting_promotion, with a suggestion", err)
	}
	awaiting := func() {
		t.Helper()
		eventually(t, 60*time.Second, "the rollout awaits promotion", func() error {
			r, err := cl.GetRollout(ctx, "warm", "")
			if err != nil || r.State != "awaiting_promotion" || r.Phase != "canary" || r.New != canaries || r.Old != size-canaries {
				return fmt.Errorf("%+v, %v", r, err)
			}
			return nil
		})
	}
	awaiting()
	c.restartManager()
	eventually(t, 60*time.Second, "the restarted manager leads the reconciler", func() error {
		var st apitypes.ReconcilerStatus
		if err := cl.Do(ctx, "GET", "/v1/reconciler", nil, nil, &st); err != nil || !st.Leader {
			return fmt.Errorf("leader %v, %v", st.Leader, err)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // passes of its pool loop (every second): the rollout must not move on
	awaiting()
	if ready := len(poolVMs(t, c, pool.ID)); ready != size {
		t.Fatalf("%d VMs in the pool awaiting promotion; want %d", ready, size)
	}
	if r := e.run(nil, "pool", "rollout", "promote", "warm"); r.code != 0 || !strings.Contains(r.stdout, "running") || !strings.Contains(r.stdout, "rolling") {
		t.Fatalf("nexus pool rollout promote: %+v", r)
	}
	if r := e.run(nil, "pool", "rollout", "promote", "warm"); r.code != 4 || !strings.Contains(r.stderr, "awaiting_promotion") {
		t.Fatalf("nexus pool rollout promote twice: %+v; want exit code 4 (conflict)", r)
	}
	r, low = watch("succeeded")
	if low < size-maxParallel {
		t.Fatalf("ready fell to %d during the promoted rollout; want at least %d", low, size-maxParallel)
	}
	waitPool(1)
	if _, err := cl.PromoteRollout(ctx, "warm", ""); !isStatus(err, 409) {
		t.Fatalf("promote a finished rollout = %v; want 409", err)
	}
	// Abort from awaiting_promotion: back to the old version.
	if _, err := cl.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(canaries), AutoPromote: boolp(false)}); err != nil {
		t.Fatal(err)
	}
	awaiting()
	if r, err := cl.AbortRollout(ctx, "warm", ""); err != nil || r.State != "reverting" {
		t.Fatalf("abort awaiting promotion: %+v, %v", r, err)
	}
	watch("aborted")
	waitPool(1)
	if p, _ := cl.GetPool(ctx, pool.ID, ""); p.TemplateVersion != 1 {
		t.Fatalf("pool after the abort: version %d; want 1", p.TemplateVersion)
	}
	actions = map[string]int{}
	for e, err := range cl.AuditEntries(ctx, nexus.AuditOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		if e.ResourceID == pool.ID || e.ResourceID == "warm" {
			actions[e.Action]++
		}
	}
	if actions["pool.rollout.awaiting_promotion"] != 2 || actions["pool.rollout_promote"] == 0 {
		t.Errorf("audit rows of the manual promotes: %v; want 2 pool.rollout.awaiting_promotion and pool.rollout_promote", actions)
	}
	if err := cl.DeletePool(ctx, pool.ID, ""); err != nil {
		t.Fatal(err)
	}
}

// TestPoolRolloutLeaderChange: two managers share Postgres; the one
// holding the reconciler lease (which drives rollouts) is SIGKILLed in the
// middle of a rollout, and the other takes the lease and finishes it:
// every VM of the pool on the new version, the pool at full size.
func TestPoolRolloutLeaderChange(t *testing.T) {
	const size, maxParallel = 8, 2
	ctx := context.Background()
	args := append(slices.Clone(fastReconcile), "--vcpu-overcommit", "32")
	port2 := freePort(t)
	c := newClusterWith(t, clusterOpts{engine: "postgres", agents: 1, mgrArgs: args, ports2: []int{port2}})
	m2 := c.start("manager-2", nil, append([]string{"manager", "--listen", fmt.Sprintf("0.0.0.0:%d", port2),
		"--database-url", c.dsn, "--join-token", c.join}, args...)...)
	t.Cleanup(func() {
		m2.kill()
		if t.Failed() {
			b, _ := os.ReadFile(m2.log)
			t.Logf("--- manager-2.log ---\n%s", tail(string(b), 40))
		}
	})
	m2.waitLog(t, "manager listening", 20*time.Second)
	c2 := newClient(fmt.Sprintf("http://127.0.0.1:%d", port2), c.admin)
	leader := func(cl *nexus.Client) bool {
		var st apitypes.ReconcilerStatus
		return cl.Do(ctx, "GET", "/v1/reconciler", nil, nil, &st) == nil && st.Leader
	}

	dir := c.agents[0].imagesDir(t)
	os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644)
	mustImage(t, c.client, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"})
	cfg := func(mem int) apitypes.TemplateConfig {
		return apitypes.TemplateConfig{Vcpu: intp(1), MemMib: intp(mem), KernelImageID: "vmlinux"}
	}
	if _, err := c.client.CreateTemplate(ctx, apitypes.CreateTemplateRequest{Name: "web", Config: cfg(64)}); err != nil {
		t.Fatal(err)
	}
	pool, err := c.client.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "warm", TemplateID: "web", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.UpdateTemplate(ctx, "web", "", apitypes.UpdateTemplateRequest{Config: cfg(96)}); err != nil { // version 2
		t.Fatal(err)
	}
	eventually(t, 120*time.Second, "the pool full of version 1", func() error {
		n := 0
		for _, vm := range poolVMs(t, c, pool.ID) {
			if vm.State == "paused" && vm.TemplateVersion == 1 {
				n++
			}
		}
		if n != size {
			return fmt.Errorf("%d paused VMs of version 1", n)
		}
		return nil
	})

	// The leader is whichever took the free lease first.
	var lead, survivor *proc
	var sc *nexus.Client
	eventually(t, converge, "exactly one leader", func() error {
		l1, l2 := leader(c.client), leader(c2)
		switch {
		case l1 && !l2:
			lead, survivor, sc = c.mgr, m2, c2
		case l2 && !l1:
			lead, survivor, sc = m2, c.mgr, c.client
		default:
			return fmt.Errorf("leaders: manager-1 %v, manager-2 %v", l1, l2)
		}
		return nil
	})

	if _, err := sc.StartRollout(ctx, "warm", "", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(1), MaxParallel: maxParallel,
		MinHealthyTime: "2s", ProgressDeadline: "20s", AutoRevert: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the rollout under way past its canary", func() error {
		r, err := sc.GetRollout(ctx, "warm", "")
		if err != nil || r.State != "running" || r.Phase != "rolling" || r.New < 2 || r.Old == 0 {
			return fmt.Errorf("%+v, %v", r, err)
		}
		return nil
	})
	lead.kill() // SIGKILL: the lease is not released
	killedAt := time.Now()
	eventually(t, converge, "the other manager takes the lease", func() error {
		if !leader(sc) {
			return errors.New("not leader yet")
		}
		return nil
	})
	t.Logf("lease taken over %s after the kill", time.Since(killedAt).Round(time.Millisecond))

	var r apitypes.Rollout
	eventually(t, 120*time.Second, "the new leader finishes the rollout", func() error {
		if r, err = sc.GetRollout(ctx, "warm", ""); err != nil {
			return err
		}
		if r.State != "succeeded" {
			return fmt.Errorf("state %s, phase %s, %d new, %d old: %s", r.State, r.Phase, r.New, r.Old, r.Message)
		}
		return nil
	})
	t.Logf("rollout finished %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	eventually(t, 60*time.Second, "every VM of the pool paused, of version 2", func() error {
		var vms []apitypes.VM
		for vm, err := range sc.VMs(ctx, nexus.ListVMsOptions{}) {
			if err != nil {
				return err
			}
			if vm.PoolID == pool.ID {
				vms = append(vms, vm)
			}
		}
		if len(vms) != size {
			return fmt.Errorf("%d VMs in the pool; want %d", len(vms), size)
		}
		for _, vm := range vms {
			if vm.State != "paused" || vm.TemplateVersion != 2 || vm.MemMib != 96 {
				return fmt.Errorf("VM %s: %s, version %d, %d MiB", vm.Name, vm.State, vm.TemplateVersion, vm.MemMib)
			}
		}
		return nil
	})
	if p, err := sc.GetPool(ctx, pool.ID, ""); err != nil || p.TemplateVersion != 2 || p.Ready != size {
		t.Fatalf("pool after the rollout: %+v, %v; want version 2, %d ready", p, err, size)
	}
	if r.New != size || r.Old != 0 {
		t.Fatalf("rollout %+v; want %d new, no old", r, size)
	}
	c.client = sc
	if lead == c.mgr {
		c.mgr = survivor // the cluster's cleanup stops it
	}
	// A VM whose operation the killed manager had just finished may still
	// be under its per-VM lease (boot timeout + 30 s): its delete answers
	// 409 vm_busy until the lease runs out, then goes.
	if err := sc.DeletePool(ctx, pool.ID, ""); err != nil && !isStatus(err, 409) {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "the pool's VMs deleted", func() error {
		left := poolVMs(t, c, pool.ID)
		for id := range left {
			if err := sc.DeleteVM(ctx, id); err != nil && !isStatus(err, 404) {
				return fmt.Errorf("delete %s: %w", id, err)
			}
		}
		if len(left) != 0 {
			return fmt.Errorf("%d left", len(left))
		}
		return nil
	})
}
