package manager

// Rollouts move a template pool to another version of its template, a
// few VMs at a time, in the leader's pool loop (RefillPools), so a
// rollout survives a manager restart and a leader change: every decision
// is made from the store (the rollout row and the pool's VMs) on each
// pass.
//
// The strategy is surge: new VMs are made next to the old ones, and an
// old VM is deleted only once a new one has stayed paused-ready for
// min_healthy_time, so the pool never has fewer than size ready VMs
// because of a rollout (it needs room for size + max_parallel VMs). The
// canaries come first; the rest, max_parallel at a time, once they are
// healthy (with auto_promote false, once a promote says so). A new VM
// that fails to boot, fails later, or takes longer than
// progress_deadline to become paused-ready fails the step: with
// auto_revert the new VMs go and the pool is back on its old version at
// full size; without, the rollout stops (failed) where it is.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Rollout states and phases.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutReverting = "reverting"
	RolloutSucceeded = "succeeded"
	RolloutFailed    = "failed"
	RolloutReverted  = "reverted"
	RolloutAborted   = "aborted"
	// RolloutAwaitingPromotion: the canaries are healthy and the rollout
	// (auto_promote false) waits for a promote; phase stays canary.
	RolloutAwaitingPromotion = "awaiting_promotion"

	phaseCanary  = "canary"
	phaseRolling = "rolling"
	phaseRevert  = "revert" // reverting after a failure: ends reverted
	phaseAbort   = "abort"  // reverting on request: ends aborted
)

// MaxRolloutWait bounds min_healthy_time and progress_deadline.
const MaxRolloutWait = time.Hour

// MaxReadyLine bounds a rollout's ready_line; readyLineTail is how many
// of a new VM's last console lines are searched for it, and
// readyLinePoll how often while it boots.
const (
	MaxReadyLine  = 256
	readyLineTail = 1000
	readyLinePoll = 100 * time.Millisecond
)

func rolloutDuration(field, v string, def, lo time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo || d > MaxRolloutWait {
		return 0, invalid("%s %q: want a duration from %s to %s, like 30s", field, v, lo, MaxRolloutWait)
	}
	return d, nil
}

// StartRollout validates req and stores a running rollout of the pool to
// req.TemplateVersion; the leader's pool loop carries it out.
func (s *Pools) StartRollout(ctx context.Context, scope Scope, ref, project, actor string, req apitypes.RolloutRequest) (store.Rollout, error) {
	p, err := s.GetPool(ctx, scope, ref, project)
	if err != nil {
		return store.Rollout{}, err
	}
	if p.TemplateID == "" {
		return store.Rollout{}, invalid("pool %s is made from a snapshot: only template pools have versions to roll out", p.Name)
	}
	canary := 1
	if req.Canary != nil {
		canary = *req.Canary
	}
	if canary < 0 || canary > p.Size {
		return store.Rollout{}, invalid("canary must be between 0 and the pool's size (%d)", p.Size)
	}
	if req.MaxParallel == 0 {
		req.MaxParallel = 1
	}
	if req.MaxParallel < 1 || req.MaxParallel > p.Size {
		return store.Rollout{}, invalid("max_parallel must be between 1 and the pool's size (%d)", p.Size)
	}
	minHealthy, err := rolloutDuration("min_healthy_time", req.MinHealthyTime, 0, 0)
	if err != nil {
		return store.Rollout{}, err
	}
	deadline, err := rolloutDuration("progress_deadline", req.ProgressDeadline, 5*time.Minute, time.Second)
	if err != nil {
		return store.Rollout{}, err
	}
	if req.TemplateVersion < 1 {
		return store.Rollout{}, invalid("template_version is required (1 or more)").suggest("list the versions: nexus template versions " + p.TemplateID)
	}
	if req.TemplateVersion == p.TemplateVersion {
		return store.Rollout{}, invalid("pool %s is already on version %d", p.Name, p.TemplateVersion)
	}
	if _, err := s.templates.GetTemplateVersion(ctx, All, p.TemplateID, p.Project, req.TemplateVersion); err != nil {
		return store.Rollout{}, err
	}
	if len(req.ReadyLine) > MaxReadyLine || strings.ContainsAny(req.ReadyLine, "\r\n") {
		return store.Rollout{}, invalid("ready_line: want at most %d bytes of one console line", MaxReadyLine)
	}
	autoPromote := req.AutoPromote == nil || *req.AutoPromote
	if !autoPromote && canary == 0 {
		return store.Rollout{}, invalid("auto_promote false needs canaries to promote: canary must be 1 or more")
	}
	phase := phaseCanary
	if canary == 0 {
		phase = phaseRolling
	}
	r, err := s.st.CreateRollout(ctx, store.Rollout{
		PoolID: p.ID, FromVersion: p.TemplateVersion, ToVersion: req.TemplateVersion, Canary: canary, MaxParallel: req.MaxParallel,
		MinHealthy: minHealthy, ProgressDeadline: deadline, AutoRevert: req.AutoRevert, AutoPromote: autoPromote,
		ReadyLine: req.ReadyLine, State: RolloutRunning, Phase: phase, Actor: actor,
	})
	if errors.Is(err, store.ErrConflict) {
		return store.Rollout{}, conflict("rollout_active", "pool %s already has a rollout under way", p.Name).
			suggest("pause, resume or abort it: nexus pool rollout abort " + p.Name)
	}
	if err != nil {
		return store.Rollout{}, fmt.Errorf("start rollout of pool %s: %w", p.Name, err)
	}
	s.kick()
	return r, nil
}

// GetRollout returns the pool's newest rollout.
func (s *Pools) GetRollout(ctx context.Context, scope Scope, ref, project string) (store.Pool, store.Rollout, error) {
	p, err := s.GetPool(ctx, scope, ref, project)
	if err != nil {
		return p, store.Rollout{}, err
	}
	r, err := s.st.LatestRollout(ctx, p.ID)
	if errors.Is(err, store.ErrNotFound) {
		return p, r, notFound("rollout of pool", p.Name).suggest("start one: nexus pool rollout start " + p.Name + " --version N")
	}
	if err != nil {
		return p, r, fmt.Errorf("get rollout of pool %s: %w", p.Name, err)
	}
	return p, r, nil
}

// ControlRollout pauses, resumes, promotes or aborts the pool's rollout.
// Promote moves a rollout awaiting promotion on to the rest of the pool;
// abort returns the pool to the version it had before the rollout.
func (s *Pools) ControlRollout(ctx context.Context, scope Scope, ref, project, action string) (store.Rollout, error) {
	p, r, err := s.GetRollout(ctx, scope, ref, project)
	if err != nil {
		return r, err
	}
	from, state, phase, err := rolloutTransition(action, r.Phase)
	if err != nil {
		return r, err
	}
	n, err := s.st.SetRolloutState(ctx, r.ID, from, state, phase, action+" requested")
	if errors.Is(err, store.ErrConflict) {
		if cur, gerr := s.st.GetRollout(ctx, r.ID); gerr == nil {
			r = cur // the state that refused, not the one read before
		}
		return r, refusedAction(action, from, r.State, r.Phase, r.AutoPromote, "nexus pool rollout status "+p.Name)
	}
	if err != nil {
		return r, fmt.Errorf("%s rollout %s: %w", action, r.ID, err)
	}
	if action == "promote" {
		for _, vm := range s.newVMs(ctx, p.ID, n.ToVersion) {
			s.event(ctx, vm, store.LevelInfo, "rollout %s of pool %s: canaries promoted; rolling out the rest, %d at a time", n.ID, p.Name, n.MaxParallel)
		}
	}
	s.kick()
	return n, nil
}

// rolloutTransition is what a pause, resume, promote or abort asks of a
// rollout (of a pool or a group): the states it may leave, and the state
// and phase it goes to.
func rolloutTransition(action, phase string) (from []string, state, next string, err error) {
	switch action {
	case "pause":
		return []string{RolloutRunning}, RolloutPaused, phase, nil
	case "resume":
		return []string{RolloutPaused}, RolloutRunning, phase, nil
	case "promote":
		return []string{RolloutAwaitingPromotion}, RolloutRunning, phaseRolling, nil
	case "abort":
		return []string{RolloutRunning, RolloutPaused, RolloutAwaitingPromotion}, RolloutReverting, phaseAbort, nil
	}
	return nil, "", "", invalid("unknown rollout action %q", action)
}

// refusedAction is the 409 for an action the rollout's state refused,
// with what to do next; status is the command that shows the rollout.
func refusedAction(action string, from []string, state, phase string, autoPromote bool, status string) *Error {
	e := conflict("rollout_state", "the rollout is %s; %s needs it %s", state, action, strings.Join(from, " or "))
	switch {
	case action != "promote":
		return e.suggest("see where it is: " + status)
	case autoPromote:
		return e.suggest("this rollout promotes its canaries by itself; to promote by hand, start a rollout with --auto-promote=false (auto_promote false)")
	case state == RolloutRunning && phase == phaseCanary:
		return e.suggest("wait until its canaries are healthy (state awaiting_promotion): " + status)
	default:
		return e.suggest("only a rollout awaiting promotion can be promoted: " + status)
	}
}

// newVMs are the ids of the pool's VMs of version, for their events.
func (s *Pools) newVMs(ctx context.Context, poolID string, version int) []string {
	vms, err := s.poolVMs(ctx, poolID)
	if err != nil {
		return nil
	}
	var ids []string
	for _, vm := range vms {
		if vm.TemplateVersion == version && vm.State != store.VMDeleting {
			ids = append(ids, vm.ID)
		}
	}
	return ids
}

// RolloutView renders a rollout with the pool's current counts.
func (s *Pools) RolloutView(ctx context.Context, r store.Rollout) apitypes.Rollout {
	v := apitypes.Rollout{ID: r.ID, PoolID: r.PoolID, FromVersion: r.FromVersion, ToVersion: r.ToVersion, Canary: r.Canary,
		MaxParallel: r.MaxParallel, MinHealthyTime: r.MinHealthy.String(), ProgressDeadline: r.ProgressDeadline.String(),
		AutoRevert: r.AutoRevert, AutoPromote: r.AutoPromote, ReadyLine: r.ReadyLine, State: r.State, Phase: r.Phase, Message: r.Message, Actor: r.Actor, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
	if vms, err := s.poolVMs(ctx, r.PoolID); err == nil {
		for _, vm := range vms {
			switch {
			case vm.TemplateVersion != r.ToVersion:
				v.Old++
			case vm.State == store.VMPaused:
				v.New++
			}
		}
	}
	return v
}

// activeRollout is the pool's rollout the loop drives (running,
// awaiting promotion or reverting); ok false for none.
func (s *Pools) activeRollout(ctx context.Context, p store.Pool) (store.Rollout, bool) {
	if p.TemplateID == "" {
		return store.Rollout{}, false
	}
	r, err := s.st.LatestRollout(ctx, p.ID)
	if err != nil {
		return r, false
	}
	return r, r.State == RolloutRunning || r.State == RolloutAwaitingPromotion || r.State == RolloutReverting
}

// rolloutVMs sorts a pool's VMs for a rollout pass.
type rolloutVMs struct {
	old        []store.VM // paused, of another version
	newHealthy []store.VM // paused, of the new version, for min_healthy_time
	newPending int        // of the new version, on the way to healthy
	oldPending int        // of another version, being made (a revert)
	broken     []store.VM // neither paused nor on the way (failed, stuck)
	// abandoned: left half-made by a manager that died; not the
	// version's fault, so it goes without failing the step (a version
	// whose VMs do not boot fails in the make itself).
	abandoned []store.VM
}

func (s *Pools) sortRolloutVMs(vms []store.VM, r store.Rollout) rolloutVMs {
	var out rolloutVMs
	now := s.now()
	for _, vm := range vms {
		isNew := vm.TemplateVersion == r.ToVersion
		switch {
		case vm.State == store.VMDeleting:
		case vm.State == store.VMPaused && isNew && now.Sub(vm.UpdatedAt) >= r.MinHealthy:
			out.newHealthy = append(out.newHealthy, vm)
		case vm.State == store.VMPaused && isNew:
			out.newPending++
		case vm.State == store.VMPaused:
			out.old = append(out.old, vm)
		case vm.State == store.VMRequested || vm.State == store.VMConfigured || vm.State == store.VMRunning:
			// A pass makes its VMs to the end (paused) before it returns,
			// so one still on the way at the start of a pass was left by a
			// manager that died, or is another manager's in flight: wait
			// for it as long as a make may take, then clean it up.
			switch {
			case now.Sub(vm.CreatedAt) >= min(r.ProgressDeadline, s.cfg.BootTimeout):
				out.abandoned = append(out.abandoned, vm)
			case isNew:
				out.newPending++
			default:
				out.oldPending++
			}
		default:
			out.broken = append(out.broken, vm)
		}
	}
	return out
}

// rolloutPass is one step of the pool's rollout.
func (s *Pools) rolloutPass(ctx context.Context, p store.Pool, r store.Rollout) {
	vms, err := s.poolVMs(ctx, p.ID)
	if err != nil {
		return
	}
	// A manager that died between booting a VM and pausing it (or the
	// reconciler finishing its boot) leaves it running: pause it here,
	// a new one only once its console shows the ready line (else it is
	// cleaned up as abandoned after the progress deadline).
	for i, vm := range vms {
		if vm.State == store.VMRunning && s.now().Sub(vm.CreatedAt) < r.ProgressDeadline {
			if vm.TemplateVersion == r.ToVersion && r.ReadyLine != "" && !s.consoleShows(ctx, vm, r.ReadyLine) {
				continue
			}
			if paused, err := s.vms.PauseVM(ctx, All, vm.ID); err == nil {
				vms[i] = paused
			}
		}
	}
	st := s.sortRolloutVMs(vms, r)
	var failure error
	for _, vm := range st.broken {
		if vm.TemplateVersion == r.ToVersion && failure == nil {
			failure = fmt.Errorf("VM %s of version %d is %s, not paused-ready%s", vm.Name, r.ToVersion, vm.State, lastErrorText(vm))
		}
		s.event(ctx, vm.ID, store.LevelWarn, "rollout %s of pool %s: this VM is not paused and ready; deleting it", r.ID, p.Name)
		_ = s.vms.DeleteVM(ctx, All, vm.ID)
	}
	for _, vm := range st.abandoned {
		s.event(ctx, vm.ID, store.LevelWarn, "rollout %s of pool %s: this VM was left half-made (a manager stopped); deleting it", r.ID, p.Name)
		_ = s.vms.DeleteVM(ctx, All, vm.ID)
	}
	if failure != nil && (r.State == RolloutRunning || r.State == RolloutAwaitingPromotion) {
		s.failRollout(ctx, p, r, failure)
		return
	}
	if r.State == RolloutReverting {
		s.revertPass(ctx, p, r, vms, st)
		return
	}
	// Old VMs go once healthy new ones can stand in for them.
	n := max(0, min(len(st.old), len(st.newHealthy)+len(st.old)-p.Size))
	deleted := s.deleteVMs(ctx, st.old[:n], "rollout %s of pool %s: replaced by a VM of version %d; deleting it", r.ID, p.Name, r.ToVersion)
	st.old = st.old[n:]
	if r.State == RolloutRunning && r.Phase == phaseCanary && len(st.newHealthy) >= r.Canary {
		if !r.AutoPromote {
			msg := fmt.Sprintf("%d canary VM(s) of version %d healthy; awaiting promotion (nexus pool rollout promote %s)", r.Canary, r.ToVersion, p.Name)
			if r, err = s.st.SetRolloutState(ctx, r.ID, []string{RolloutRunning}, RolloutAwaitingPromotion, phaseCanary, msg); err != nil {
				return // paused or aborted meanwhile: the next pass sees it
			}
			for _, vm := range st.newHealthy {
				s.event(ctx, vm.ID, store.LevelInfo, "rollout %s of pool %s: this canary is healthy; the rollout awaits promotion", r.ID, p.Name)
			}
			s.auditRollout(ctx, p, r, "pool.rollout.awaiting_promotion", nil, deleted, nil)
			return
		}
		msg := fmt.Sprintf("%d canary VM(s) of version %d healthy; rolling out the rest, %d at a time", r.Canary, r.ToVersion, r.MaxParallel)
		if r, err = s.st.SetRolloutState(ctx, r.ID, []string{RolloutRunning}, RolloutRunning, phaseRolling, msg); err != nil {
			return // paused or aborted meanwhile: the next pass sees it
		}
		s.auditRollout(ctx, p, r, "pool.rollout.promote", nil, deleted, nil)
		deleted = nil
	}
	if r.State == RolloutAwaitingPromotion {
		s.awaitPass(ctx, p, r, st, deleted)
		return
	}
	if len(st.old) == 0 && st.newPending == 0 && len(st.newHealthy) >= p.Size {
		if err := s.st.SetPoolTemplateVersion(ctx, p.ID, r.ToVersion); err != nil {
			return
		}
		msg := fmt.Sprintf("every VM of the pool is of version %d", r.ToVersion)
		if r, err = s.st.SetRolloutState(ctx, r.ID, []string{RolloutRunning}, RolloutSucceeded, r.Phase, msg); err == nil {
			s.auditRollout(ctx, p, r, "pool.rollout.succeeded", nil, deleted, nil)
		}
		return
	}
	limit, target := r.MaxParallel, p.Size
	if r.Phase == phaseCanary {
		limit, target = r.Canary, r.Canary
	}
	n = min(limit-st.newPending, target-len(st.newHealthy)-st.newPending)
	made, err := s.makeVersion(ctx, p, r, r.ToVersion, max(n, 0))
	if len(made) > 0 || len(deleted) > 0 || err != nil {
		s.auditRollout(ctx, p, r, "pool.rollout.step", made, deleted, err)
	}
	if len(made) > 0 || len(deleted) > 0 {
		s.kick() // the next step may be ready at once
	}
	if err != nil {
		if cur, gerr := s.st.GetRollout(ctx, r.ID); gerr == nil && cur.State == RolloutRunning {
			s.failRollout(ctx, p, cur, err)
		}
	}
}

// awaitPass keeps a pool whose canaries await promotion at its size:
// VMs claimed meanwhile are made again of the old version, max_parallel
// at a time (the new version has not been promoted past its canaries).
func (s *Pools) awaitPass(ctx context.Context, p store.Pool, r store.Rollout, st rolloutVMs, deleted []string) {
	have := len(st.old) + st.oldPending + len(st.newHealthy) + st.newPending
	n := min(r.MaxParallel-st.oldPending, p.Size-have)
	made, err := s.makeVersion(ctx, p, r, r.FromVersion, max(n, 0))
	if len(made) > 0 || len(deleted) > 0 || err != nil {
		s.auditRollout(ctx, p, r, "pool.rollout.step", made, deleted, err) // a failure is retried on the next pass
	}
}

// failRollout stops a running rollout (or one awaiting promotion):
// reverting with auto_revert, failed without.
func (s *Pools) failRollout(ctx context.Context, p store.Pool, r store.Rollout, cause error) {
	state, phase := RolloutFailed, r.Phase
	if r.AutoRevert {
		state, phase = RolloutReverting, phaseRevert
	}
	msg := fmt.Sprintf("%s step failed: %v", r.Phase, cause)
	n, err := s.st.SetRolloutState(ctx, r.ID, []string{RolloutRunning, RolloutAwaitingPromotion}, state, phase, msg)
	if err != nil {
		return
	}
	s.log.Warn("pool rollout failed", "pool", p.Name, "rollout", r.ID, "to_version", r.ToVersion, "auto_revert", r.AutoRevert, "err", cause)
	s.auditRollout(ctx, p, n, "pool.rollout.failed", nil, nil, cause)
	if state == RolloutReverting {
		s.kick()
	}
}

// revertPass brings the pool back to its old version at full size: old
// VMs are made up to size (max_parallel at a time), then the new ones go.
func (s *Pools) revertPass(ctx context.Context, p store.Pool, r store.Rollout, vms []store.VM, st rolloutVMs) {
	if len(st.old) < p.Size {
		n := min(r.MaxParallel-st.oldPending, p.Size-len(st.old)-st.oldPending)
		made, err := s.makeVersion(ctx, p, r, r.FromVersion, max(n, 0))
		if len(made) > 0 || err != nil {
			s.auditRollout(ctx, p, r, "pool.rollout.step", made, nil, err) // a failure is retried on the next pass
		}
		if len(made) > 0 {
			s.kick()
		}
		return
	}
	var gone []store.VM
	for _, vm := range vms {
		if vm.TemplateVersion == r.ToVersion && vm.State != store.VMDeleting {
			gone = append(gone, vm)
		}
	}
	deleted := s.deleteVMs(ctx, gone, "rollout %s of pool %s: going back to version %d; deleting this VM", r.ID, p.Name, r.FromVersion)
	state, action := RolloutReverted, "pool.rollout.reverted"
	if r.Phase == phaseAbort {
		state, action = RolloutAborted, "pool.rollout.aborted"
	}
	msg := fmt.Sprintf("the pool is back on version %d at full size (%s)", r.FromVersion, r.Message)
	if n, err := s.st.SetRolloutState(ctx, r.ID, []string{RolloutReverting}, state, r.Phase, msg); err == nil {
		s.auditRollout(ctx, p, n, action, nil, deleted, nil)
	}
}

// makeVersion makes n paused VMs of version into the pool, each checked
// against the progress deadline; the VMs it made (the slow ones deleted
// again) and the first failure.
func (s *Pools) makeVersion(ctx context.Context, p store.Pool, r store.Rollout, version, n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	q := p
	q.TemplateVersion = version
	made := make([]string, n)
	errs := runBatch(n, func(i int) error {
		start := s.now()
		vm, err := s.make(ctx, q, p.ID, apitypes.Expiry{}, true)
		if err != nil {
			return fmt.Errorf("a VM of version %d: %w", version, err)
		}
		// The health check on the console runs while the guest does: a
		// paused guest prints nothing.
		if version == r.ToVersion && r.ReadyLine != "" {
			if err := s.waitReadyLine(ctx, vm, r.ReadyLine, start.Add(r.ProgressDeadline)); err != nil {
				_ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, vm.ID)
				return fmt.Errorf("VM %s of version %d: %w", vm.Name, version, err)
			}
		}
		if _, err := s.vms.PauseVM(ctx, All, vm.ID); err != nil {
			_ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, vm.ID)
			return fmt.Errorf("pause VM %s of version %d: %w", vm.Name, version, err)
		}
		if took := s.now().Sub(start); took > r.ProgressDeadline {
			_ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, vm.ID)
			return fmt.Errorf("VM %s of version %d took %s to become paused-ready, more than the progress deadline (%s)",
				vm.Name, version, took.Round(time.Millisecond), r.ProgressDeadline)
		}
		made[i] = vm.ID
		s.event(ctx, vm.ID, store.LevelInfo, "rollout %s of pool %s: made of template version %d (%s)", r.ID, p.Name, version, r.Phase)
		return nil
	})
	var ids []string
	for _, id := range made {
		if id != "" {
			ids = append(ids, id)
		}
	}
	// A pool deleted meanwhile: what this step made goes too.
	if _, err := s.st.GetPool(ctx, p.ID); errors.Is(err, store.ErrNotFound) {
		for _, id := range ids {
			_ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, id)
		}
		return nil, nil
	}
	return ids, errors.Join(errs...)
}

// consoleShows reports whether the VM's console (its last readyLineTail
// lines, read through its agent) contains line.
func (s *Pools) consoleShows(ctx context.Context, vm store.VM, line string) bool {
	ll, err := s.agentFor(ctx, vm).Logs(ctx, vm.ID, "console", readyLineTail)
	if err != nil {
		return false
	}
	for _, l := range ll.Lines {
		if strings.Contains(l, line) {
			return true
		}
	}
	return false
}

// waitReadyLine waits until the VM's console shows line, or fails at
// deadline (the step's progress deadline).
func (s *Pools) waitReadyLine(ctx context.Context, vm store.VM, line string, deadline time.Time) error {
	t := time.NewTicker(readyLinePoll)
	defer t.Stop()
	for !s.consoleShows(ctx, vm, line) {
		if !s.now().Before(deadline) {
			return fmt.Errorf("its console did not show the ready line %q within the progress deadline", line)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the ready line: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// deleteVMs deletes vms, batchParallel at a time (one by one, the
// deletes of a step were most of its time), each with an event; the ids
// deleted.
func (s *Pools) deleteVMs(ctx context.Context, vms []store.VM, format string, args ...any) []string {
	ok := make([]bool, len(vms))
	sem := make(chan struct{}, batchParallel)
	var wg sync.WaitGroup
	for i, vm := range vms {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.event(ctx, vm.ID, store.LevelInfo, format, args...)
			ok[i] = s.vms.DeleteVM(ctx, All, vm.ID) == nil
		})
	}
	wg.Wait()
	var ids []string
	for i, vm := range vms {
		if ok[i] {
			ids = append(ids, vm.ID)
		}
	}
	return ids
}

func lastErrorText(vm store.VM) string {
	if vm.LastError == "" {
		return ""
	}
	return ": " + vm.LastError
}

func (s *Pools) auditRollout(ctx context.Context, p store.Pool, r store.Rollout, action string, made, deleted []string, failure error) {
	after, _ := json.Marshal(map[string]any{"pool": p.Name, "rollout": r.ID, "from_version": r.FromVersion, "to_version": r.ToVersion,
		"state": r.State, "phase": r.Phase, "made": made, "deleted": deleted})
	id, err := s.st.BeginAudit(ctx, store.AuditEntry{Actor: SystemActor, Action: action, Resource: "pool", ResourceID: p.ID})
	if err != nil {
		return
	}
	result, text := store.AuditSuccess, ""
	if failure != nil {
		result, text = store.AuditFailure, failure.Error()
	}
	_ = s.st.CompleteAudit(context.WithoutCancel(ctx), id, result, after, text)
}
