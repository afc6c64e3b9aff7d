package manager

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// The rollout's step decisions, pass by pass: a real SQLite store, a
// hollow agent booting firecracker-sim, and the leader's pool loop
// (RefillPools) called by the test instead of the reconciler, so each
// pass is one step made to the end (makeVersion waits for its VMs).

// rolloutEnv is an env with template web (version 1: 64 MiB, version 2:
// 96 MiB) and a pool warm of size VMs of version 1, full.
func rolloutEnv(t *testing.T, size int) (*env, store.Pool) {
	t.Helper()
	e, _, _, _ := imagesEnv(t)
	p, err := e.m.Pools.CreatePool(e.ctx, All, "", apitypes.CreatePoolRequest{Name: "warm", TemplateID: "web", Size: size})
	if err != nil {
		t.Fatal(err)
	}
	e.m.Pools.RefillPools(e.ctx)
	if c := e.poolCounts(p.ID); c.paused[1] != size || c.total != size {
		t.Fatalf("the pool after its first refill: %+v; want %d paused VMs of version 1", c, size)
	}
	if _, err := e.m.Templates.UpdateTemplate(e.ctx, All, "web", "", "test", apitypes.UpdateTemplateRequest{
		Config: apitypes.TemplateConfig{KernelImageID: "k", RootfsImageID: "r", MemMib: intp(96)}}); err != nil {
		t.Fatal(err)
	}
	return e, p
}

// counts is a pool's VMs: paused by template version, and all of them.
type counts struct {
	paused map[int]int
	total  int
}

func (e *env) poolCounts(poolID string) counts {
	e.t.Helper()
	vms, err := e.m.Pools.poolVMs(e.ctx, poolID)
	if err != nil {
		e.t.Fatal(err)
	}
	c := counts{paused: map[int]int{}}
	for _, vm := range vms {
		if vm.State == store.VMDeleting {
			continue
		}
		c.total++
		if vm.State == store.VMPaused {
			c.paused[vm.TemplateVersion]++
		}
	}
	return c
}

func (e *env) rollout(poolID string) store.Rollout {
	e.t.Helper()
	r, err := e.st.LatestRollout(e.ctx, poolID)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) auditActions(poolID string) map[string]int {
	e.t.Helper()
	rows, err := e.st.ListAudit(e.ctx, store.AuditFilter{ResourceID: poolID, Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for _, r := range rows {
		out[r.Action]++
	}
	return out
}

// A rollout of 6 VMs, canary 2, max_parallel 3: the canaries alone
// first, then at most max_parallel new VMs a step; old VMs go only as
// healthy new ones stand in, so the pool never has fewer than size ready
// (more than the size - max_parallel the issue asks) nor more than
// size + max_parallel VMs; it ends with every VM of version 2.
func TestRolloutSteps(t *testing.T) {
	const size, canary, maxParallel = 6, 2, 3
	e, p := rolloutEnv(t, size)
	r, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(canary), MaxParallel: maxParallel})
	if err != nil || r.State != RolloutRunning || r.Phase != phaseCanary || !r.AutoPromote || r.FromVersion != 1 {
		t.Fatalf("start: %+v, %v", r, err)
	}
	e.m.Pools.RefillPools(e.ctx)
	c := e.poolCounts(p.ID)
	if c.paused[2] != canary || c.paused[1] != size || e.rollout(p.ID).Phase != phaseCanary {
		t.Fatalf("after the first step: %+v, %+v; want %d canaries beside the %d old VMs", c, e.rollout(p.ID), canary, size)
	}
	phases := []string{phaseCanary}
	for pass := 0; e.rollout(p.ID).State == RolloutRunning; pass++ {
		if pass == 10 {
			t.Fatalf("not done after %d passes: %+v, %+v", pass, e.rollout(p.ID), e.poolCounts(p.ID))
		}
		before := e.poolCounts(p.ID)
		e.m.Pools.RefillPools(e.ctx)
		c := e.poolCounts(p.ID)
		if made := c.paused[2] - before.paused[2]; made > maxParallel {
			t.Fatalf("pass %d made %d new VMs; want at most max_parallel %d", pass, made, maxParallel)
		}
		if ready := c.paused[1] + c.paused[2]; ready < size {
			t.Fatalf("pass %d left %d ready VMs (%+v); want at least size %d", pass, ready, c, size)
		}
		if c.total > size+maxParallel {
			t.Fatalf("pass %d: %d VMs in the pool; want at most size + max_parallel = %d", pass, c.total, size+maxParallel)
		}
		if ph := e.rollout(p.ID).Phase; ph != phases[len(phases)-1] {
			phases = append(phases, ph)
		}
	}
	r = e.rollout(p.ID)
	if r.State != RolloutSucceeded || strings.Join(phases, ",") != "canary,rolling" {
		t.Fatalf("rollout %+v through phases %v; want succeeded after canary then rolling", r, phases)
	}
	if c := e.poolCounts(p.ID); c.paused[2] != size || c.total != size {
		t.Fatalf("the pool after the rollout: %+v; want %d VMs, all of version 2", c, size)
	}
	if got, _ := e.st.GetPool(e.ctx, p.ID); got.TemplateVersion != 2 {
		t.Fatalf("pool version %d; want 2", got.TemplateVersion)
	}
	for _, a := range []string{"pool.rollout.step", "pool.rollout.promote", "pool.rollout.succeeded"} {
		if e.auditActions(p.ID)[a] == 0 {
			t.Errorf("no audit row %s: %v", a, e.auditActions(p.ID))
		}
	}
	// Bad strategies are refused and change nothing.
	for _, bad := range []apitypes.RolloutRequest{
		{TemplateVersion: 1, Canary: intp(0), AutoPromote: boolp(false)},
		{TemplateVersion: 1, Canary: intp(size + 1)},
		{TemplateVersion: 1, MaxParallel: size + 1},
		{TemplateVersion: 2},
	} {
		if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", bad); !isKind(err, KindInvalid) {
			t.Errorf("start %+v = %v; want invalid", bad, err)
		}
	}
	if e.rollout(p.ID).ID != r.ID {
		t.Fatal("a refused rollout was stored")
	}
}

func boolp(b bool) *bool { return &b }

// slowPause makes every pause through the agent take d longer.
type slowPause struct {
	base http.RoundTripper
	d    time.Duration
}

func (s slowPause) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPatch && strings.HasSuffix(req.URL.Path, "/proxy/vm") {
		time.Sleep(s.d)
	}
	return s.base.RoundTrip(req)
}

// A canary that takes longer than progress_deadline to become
// paused-ready fails the step: with auto_revert the slow VM goes and the
// pool is back on version 1 at full size (reverted); without, the
// rollout stops failed and the pool refills as usual.
func TestRolloutProgressDeadline(t *testing.T) {
	const size = 3
	e, p := rolloutEnv(t, size)
	e.faults.base = slowPause{base: http.DefaultTransport, d: 1200 * time.Millisecond}
	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2,
		ProgressDeadline: "1s", AutoRevert: true}); err != nil {
		t.Fatal(err)
	}
	e.m.Pools.RefillPools(e.ctx)
	r := e.rollout(p.ID)
	if r.State != RolloutReverting || r.Phase != phaseRevert || !strings.Contains(r.Message, "progress deadline") {
		t.Fatalf("after the slow canary: %+v; want reverting for the progress deadline", r)
	}
	if c := e.poolCounts(p.ID); c.paused[2] != 0 || c.paused[1] != size {
		t.Fatalf("after the slow canary: %+v; want it deleted and the %d old VMs kept", c, size)
	}
	e.faults.base = http.DefaultTransport
	e.m.Pools.RefillPools(e.ctx)
	if r := e.rollout(p.ID); r.State != RolloutReverted {
		t.Fatalf("after the revert pass: %+v; want reverted", r)
	}
	if c := e.poolCounts(p.ID); c.paused[1] != size || c.total != size {
		t.Fatalf("the reverted pool: %+v; want %d VMs of version 1", c, size)
	}
	if a := e.auditActions(p.ID); a["pool.rollout.failed"] != 1 || a["pool.rollout.reverted"] != 1 {
		t.Fatalf("audit rows %v; want one failed, one reverted", a)
	}

	// Without auto_revert: failed, where it is; the pool refills as usual.
	e.faults.base = slowPause{base: http.DefaultTransport, d: 1200 * time.Millisecond}
	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2,
		ProgressDeadline: "1s"}); err != nil {
		t.Fatal(err)
	}
	e.m.Pools.RefillPools(e.ctx)
	if r := e.rollout(p.ID); r.State != RolloutFailed || r.Phase != phaseCanary {
		t.Fatalf("without auto_revert: %+v; want failed at the canary", r)
	}
	e.faults.base = http.DefaultTransport
	e.m.Pools.RefillPools(e.ctx)
	if c := e.poolCounts(p.ID); c.paused[1] != size || c.total != size {
		t.Fatalf("the pool after a failed rollout: %+v; want %d VMs of version 1", c, size)
	}
}

// Abort returns the pool to its old version: the canaries made go, the
// old VMs stay, and the rollout ends aborted; nothing else is allowed
// after.
func TestRolloutAbort(t *testing.T) {
	const size = 3
	e, p := rolloutEnv(t, size)
	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(2),
		MinHealthyTime: "1h"}); err != nil {
		t.Fatal(err)
	}
	e.m.Pools.RefillPools(e.ctx)
	if c := e.poolCounts(p.ID); c.paused[2] != 2 {
		t.Fatalf("canaries: %+v; want 2", c)
	}
	r, err := e.m.Pools.ControlRollout(e.ctx, All, "warm", "", "abort")
	if err != nil || r.State != RolloutReverting || r.Phase != phaseAbort {
		t.Fatalf("abort: %+v, %v", r, err)
	}
	e.m.Pools.RefillPools(e.ctx)
	if r := e.rollout(p.ID); r.State != RolloutAborted {
		t.Fatalf("after the abort pass: %+v; want aborted", r)
	}
	if c := e.poolCounts(p.ID); c.paused[1] != size || c.total != size {
		t.Fatalf("the aborted pool: %+v; want %d VMs of version 1", c, size)
	}
	for _, action := range []string{"pause", "resume", "promote", "abort"} {
		if _, err := e.m.Pools.ControlRollout(e.ctx, All, "warm", "", action); !isKind(err, KindConflict) {
			t.Errorf("%s an aborted rollout = %v; want a conflict", action, err)
		}
	}
}

// With auto_promote false the rollout stops at its healthy canaries
// (awaiting_promotion, phase canary) and makes no more VMs of the new
// version, pass after pass, until promoted; a VM claimed meanwhile is made
// again of the old version; promote is refused in any other state and
// changes nothing.
func TestRolloutPromoteGating(t *testing.T) {
	const size, canary, maxParallel = 4, 2, 2
	e, p := rolloutEnv(t, size)
	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(canary),
		MaxParallel: maxParallel, AutoPromote: boolp(false)}); err != nil {
		t.Fatal(err)
	}
	promoteRefused := func(when string) {
		t.Helper()
		before := e.rollout(p.ID)
		_, err := e.m.Pools.ControlRollout(e.ctx, All, "warm", "", "promote")
		var me *Error
		if !isKind(err, KindConflict) || !errors.As(err, &me) || me.Suggestion == "" || !strings.Contains(me.Message, RolloutAwaitingPromotion) {
			t.Fatalf("promote %s = %v; want a conflict naming %s, with a suggestion", when, err, RolloutAwaitingPromotion)
		}
		if after := e.rollout(p.ID); after.State != before.State || after.Phase != before.Phase || !after.UpdatedAt.Equal(before.UpdatedAt) {
			t.Fatalf("a refused promote changed the rollout: %+v → %+v", before, after)
		}
	}
	promoteRefused("before the canaries are made")
	e.m.Pools.RefillPools(e.ctx) // the canaries
	promoteRefused("before the canaries are seen healthy")
	e.m.Pools.RefillPools(e.ctx) // healthy: awaiting promotion
	r := e.rollout(p.ID)
	if r.State != RolloutAwaitingPromotion || r.Phase != phaseCanary || !strings.Contains(r.Message, "promote") {
		t.Fatalf("after the canaries are healthy: %+v; want awaiting_promotion, phase canary", r)
	}
	for range 3 {
		e.m.Pools.RefillPools(e.ctx)
	}
	if c := e.poolCounts(p.ID); c.paused[2] != canary || c.paused[1] != size-canary || c.total != size {
		t.Fatalf("awaiting promotion: %+v; want the %d canaries and %d old VMs, nothing more", c, canary, size-canary)
	}
	if r := e.rollout(p.ID); r.State != RolloutAwaitingPromotion {
		t.Fatalf("the rollout moved on by itself: %+v", r)
	}
	for _, action := range []string{"pause", "resume"} {
		if _, err := e.m.Pools.ControlRollout(e.ctx, All, "warm", "", action); !isKind(err, KindConflict) {
			t.Errorf("%s awaiting promotion = %v; want a conflict", action, err)
		}
	}
	// A claim meanwhile: the pool is made whole with the old version.
	vm, warm, err := e.m.Pools.Claim(e.ctx, All, "warm", "", apitypes.ClaimRequest{})
	if err != nil || !warm {
		t.Fatalf("claim: %v (warm %v)", err, warm)
	}
	newBefore := e.poolCounts(p.ID).paused[2]
	e.m.Pools.RefillPools(e.ctx)
	if c := e.poolCounts(p.ID); c.total != size || c.paused[2] != newBefore {
		t.Fatalf("after a claim awaiting promotion: %+v; want %d VMs, the new ones unchanged (%d)", c, size, newBefore)
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}

	r, err = e.m.Pools.ControlRollout(e.ctx, All, "warm", "", "promote")
	if err != nil || r.State != RolloutRunning || r.Phase != phaseRolling {
		t.Fatalf("promote: %+v, %v; want running, rolling", r, err)
	}
	promoteRefused("twice")
	for pass := 0; e.rollout(p.ID).State == RolloutRunning; pass++ {
		if pass == 10 {
			t.Fatalf("not done after %d passes: %+v", pass, e.rollout(p.ID))
		}
		before := e.poolCounts(p.ID)
		e.m.Pools.RefillPools(e.ctx)
		if made := e.poolCounts(p.ID).paused[2] - before.paused[2]; made > maxParallel {
			t.Fatalf("pass %d made %d new VMs; want at most %d", pass, made, maxParallel)
		}
	}
	if r := e.rollout(p.ID); r.State != RolloutSucceeded {
		t.Fatalf("after the promote: %+v; want succeeded", r)
	}
	if c := e.poolCounts(p.ID); c.paused[2] != size || c.total != size {
		t.Fatalf("the pool: %+v; want %d VMs of version 2", c, size)
	}
	if a := e.auditActions(p.ID); a["pool.rollout.awaiting_promotion"] != 1 || a["pool.rollout.promote"] != 0 {
		t.Fatalf("audit rows %v; want one awaiting_promotion and no automatic promote", a)
	}
}

// Abort works from awaiting_promotion: the canaries go, the pool is back
// on version 1 at full size.
func TestRolloutAbortAwaitingPromotion(t *testing.T) {
	const size = 3
	e, p := rolloutEnv(t, size)
	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2, AutoPromote: boolp(false)}); err != nil {
		t.Fatal(err)
	}
	e.m.Pools.RefillPools(e.ctx)
	e.m.Pools.RefillPools(e.ctx)
	if r := e.rollout(p.ID); r.State != RolloutAwaitingPromotion {
		t.Fatalf("%+v; want awaiting_promotion", r)
	}
	if r, err := e.m.Pools.ControlRollout(e.ctx, All, "warm", "", "abort"); err != nil || r.State != RolloutReverting {
		t.Fatalf("abort: %+v, %v", r, err)
	}
	// The canary replaced an old VM: one pass makes it again, the next
	// deletes the canary.
	for pass := 0; pass < 2 && e.rollout(p.ID).State == RolloutReverting; pass++ {
		e.m.Pools.RefillPools(e.ctx)
		if c := e.poolCounts(p.ID); c.paused[1]+c.paused[2] < size {
			t.Fatalf("abort pass %d left %+v; want at least %d ready", pass, c, size)
		}
	}
	if r := e.rollout(p.ID); r.State != RolloutAborted {
		t.Fatalf("%+v; want aborted", r)
	}
	if c := e.poolCounts(p.ID); c.paused[1] != size || c.total != size {
		t.Fatalf("the aborted pool: %+v; want %d VMs of version 1", c, size)
	}
}

// ready_line: a new VM counts only once its console shows the line (read
// through the agent's logs while it runs, before it is paused): the
// simulator's guest prints "nexus-guest: ready" once per boot, so a
// rollout checking for it succeeds, and one checking for a line no guest
// prints fails its canary at the progress deadline and reverts.
func TestRolloutReadyLine(t *testing.T) {
	const size = 2
	e, p := rolloutEnv(t, size)
	for _, bad := range []string{strings.Repeat("x", MaxReadyLine+1), "two\nlines"} {
		if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2, ReadyLine: bad}); !isKind(err, KindInvalid) {
			t.Errorf("ready_line %q = %v; want invalid", bad, err)
		}
	}
	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2,
		ReadyLine: "never printed by any guest", ProgressDeadline: "1s", AutoRevert: true}); err != nil {
		t.Fatal(err)
	}
	e.m.Pools.RefillPools(e.ctx)
	r := e.rollout(p.ID)
	if r.State != RolloutReverting || !strings.Contains(r.Message, "ready line") {
		t.Fatalf("a canary without the ready line: %+v; want reverting, the ready line named", r)
	}
	e.m.Pools.RefillPools(e.ctx)
	if r := e.rollout(p.ID); r.State != RolloutReverted {
		t.Fatalf("%+v; want reverted", r)
	}
	if c := e.poolCounts(p.ID); c.paused[1] != size || c.total != size {
		t.Fatalf("the reverted pool: %+v; want %d VMs of version 1", c, size)
	}

	if _, err := e.m.Pools.StartRollout(e.ctx, All, "warm", "", "alice", apitypes.RolloutRequest{TemplateVersion: 2,
		ReadyLine: "nexus-guest: ready", ProgressDeadline: "30s"}); err != nil {
		t.Fatal(err)
	}
	for pass := 0; e.rollout(p.ID).State == RolloutRunning; pass++ {
		if pass == 10 {
			t.Fatalf("not done after %d passes: %+v", pass, e.rollout(p.ID))
		}
		e.m.Pools.RefillPools(e.ctx)
	}
	if r := e.rollout(p.ID); r.State != RolloutSucceeded || r.ReadyLine != "nexus-guest: ready" {
		t.Fatalf("with the simulator's ready line: %+v; want succeeded", r)
	}
	if c := e.poolCounts(p.ID); c.paused[2] != size || c.total != size {
		t.Fatalf("the pool: %+v; want %d VMs of version 2", c, size)
	}
}

// A pool deleted while its VMs could not all be deleted (a busy VM, a
// host away) leaves them behind; the next refill pass deletes them, and
// the host holds nothing of them.
func TestRefillDeletesVMsOfDeletedPools(t *testing.T) {
	e, p := rolloutEnv(t, 3)
	if err := e.st.DeletePool(e.ctx, p.ID); err != nil { // the row only, as a failed delete leaves it
		t.Fatal(err)
	}
	if c := e.poolCounts(p.ID); c.total != 3 {
		t.Fatalf("before the pass: %+v; want the 3 VMs left behind", c)
	}
	e.m.Pools.RefillPools(e.ctx)
	if c := e.poolCounts(p.ID); c.total != 0 {
		t.Fatalf("after a refill pass: %+v; want the deleted pool's VMs gone", c)
	}
	if n := e.rows(); n != 0 {
		t.Fatalf("%d VM rows left", n)
	}
	e.assertHostEmpty()
}
