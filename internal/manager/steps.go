package manager

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/store"
)

// Every multi-step operation on a host — boot, restore, snapshot, stop,
// delete — is a list of named steps run by one engine: in order, each with
// its own undo, undone in reverse when a later step fails, each step's
// duration and outcome recorded (one VM event per operation and the
// nexus_operation_step_seconds histogram). The firecracker Go SDK's named
// handler lists and flintlock's plan steps are the same idea.

// step is one named step. undo, when set, reverses what do did; it runs
// only if do succeeded and a later step failed.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error
}

// stepFailure is what runSteps returns when a step fails: which step, and
// why.
type stepFailure struct {
	step string
	err  error
}

func (f *stepFailure) Error() string { return f.step + ": " + f.err.Error() }
func (f *stepFailure) Unwrap() error { return f.err }

// newStepMetrics is the histogram of step durations, by operation, step
// and result ("ok", "failed", "undone", "undo_failed").
func newStepMetrics() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "nexus_operation_step_seconds",
		Help:    "Duration of the steps of operations on hosts (boot, restore, snapshot, stop, delete).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"operation", "step", "result"})
}

// runSteps runs steps for op on vmID. On the first failure it undoes the
// steps that succeeded, last first, on a context that outlives the
// caller's (cleanup must finish even if the caller has gone), and returns
// a *stepFailure. One event on the VM lists every step with its duration
// and outcome.
func (c *core) runSteps(ctx context.Context, vmID, op string, steps []step) error {
	return c.runStepsOpt(ctx, vmID, op, steps, true)
}

// runStepsOpt is runSteps; without eventOnSuccess a success writes no event
// (a delete: the VM's events go with its row).
func (c *core) runStepsOpt(ctx context.Context, vmID, op string, steps []step, eventOnSuccess bool) error {
	var done []int
	var report []string
	observe := func(name, result string, d time.Duration) {
		if c.stepSeconds != nil {
			c.stepSeconds.WithLabelValues(op, name, result).Observe(d.Seconds())
		}
	}
	var failure *stepFailure
	for i, st := range steps {
		if err := ctx.Err(); err != nil {
			failure = &stepFailure{step: st.name, err: fmt.Errorf("cancelled: %w", err)}
			report = append(report, st.name+" not started")
			break
		}
		// Durations are measurements, on the monotonic clock; decisions
		// (retries, graces) use c.now.
		start := time.Now()
		err := st.do(ctx)
		d := time.Since(start)
		if err != nil {
			observe(st.name, "failed", d)
			report = append(report, fmt.Sprintf("%s failed after %s", st.name, ms(d)))
			failure = &stepFailure{step: st.name, err: err}
			break
		}
		observe(st.name, "ok", d)
		report = append(report, fmt.Sprintf("%s %s", st.name, ms(d)))
		done = append(done, i)
	}
	if failure == nil {
		if eventOnSuccess {
			c.event(ctx, vmID, store.LevelInfo, "%s: %s", op, strings.Join(report, ", "))
		}
		return nil
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), c.cfg.StopGrace+30*time.Second)
	defer cancel()
	for i := len(done) - 1; i >= 0; i-- {
		st := steps[done[i]]
		if st.undo == nil {
			continue
		}
		start := time.Now()
		err := st.undo(uctx)
		d := time.Since(start)
		if err != nil {
			observe(st.name, "undo_failed", d)
			report = append(report, fmt.Sprintf("undo %s failed: %v", st.name, err))
			c.log.Error("undo failed; the reconciler removes what is left", "vm_id", vmID, "operation", op, "step", st.name, "err", err)
			continue
		}
		observe(st.name, "undone", d)
		report = append(report, "undid "+st.name)
	}
	c.event(uctx, vmID, store.LevelError, "%s: %s", op, strings.Join(report, ", "))
	return failure
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

// hostRun is the state the host steps of one boot or restore share: the
// VM as the row last said, its agent, and what the agent answered.
type hostRun struct {
	c       *core
	vm      store.VM
	ag      *agentapi.Client
	fc      *firecracker.Client
	tap     agentapi.TapResponse
	spawned agentapi.SpawnResponse
}

// tapStep creates the VM's TAP unless it has no network interface; undone
// by deleting it.
func (r *hostRun) tapStep(wanted bool) step {
	return step{name: "create tap",
		do: func(ctx context.Context) (err error) {
			if !wanted {
				return nil
			}
			r.tap, err = r.ag.Tap(ctx, r.vm.ID)
			return err
		},
		undo: func(ctx context.Context) error {
			if r.tap.Tap == "" {
				return nil
			}
			return r.ag.DeleteTap(ctx, r.tap.Tap)
		},
	}
}

// spawnStep starts the VMM and records its socket and log (and TAP) on the
// row; keepMAC leaves the row's MAC as it is (a restored guest keeps the
// snapshot's). Undone by stopping the VMM (which also removes its socket
// and TAP).
func (r *hostRun) spawnStep(keepMAC bool) step {
	return step{name: "spawn vmm",
		do: func(ctx context.Context) (err error) {
			r.spawned, err = r.ag.Spawn(ctx, r.vm.ID, agentapi.SpawnRequest{Vcpu: r.vm.VCPU, MemMib: r.vm.MemMiB})
			if err != nil {
				// The agent may have started it before the call failed (a
				// timeout on the way back): make sure it is gone.
				_ = r.ag.Stop(context.WithoutCancel(ctx), r.vm.ID, agentapi.StopRequest{})
				return err
			}
			cur, err := r.c.update(ctx, r.vm.ID, func(v *store.VM) error {
				v.APISock, v.LogPath = r.spawned.APISock, r.spawned.LogPath
				// A new VMM is a new run: its guest has neither started
				// nor said it is ready, and reports of the old one no
				// longer match its pid.
				v.VMMPID, v.BootedAt, v.GuestReadyAt = r.spawned.PID, nil, nil
				if r.tap.Tap != "" {
					v.TAP = r.tap.Tap
					if !keepMAC {
						v.MAC = r.tap.MAC
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			r.vm = cur
			r.c.event(ctx, r.vm.ID, store.LevelInfo, "vmm started (pid %d)", r.spawned.PID)
			return nil
		},
		undo: func(ctx context.Context) error {
			return r.ag.Stop(ctx, r.vm.ID, agentapi.StopRequest{})
		},
	}
}

// loggerStep points firecracker's logger at the VM's fc.log.
func (r *hostRun) loggerStep() step {
	return step{name: "configure logger", do: func(ctx context.Context) error {
		return r.fc.PutLogger(ctx, firecracker.Logger{LogPath: r.spawned.LogPath, Level: "Info", ShowLevel: firecracker.Bool(true)})
	}}
}

// metricsStep points firecracker's metrics at the VM's metrics.json.
func (r *hostRun) metricsStep() step {
	return step{name: "configure metrics", do: func(ctx context.Context) error {
		return r.fc.PutMetrics(ctx, firecracker.Metrics{MetricsPath: r.spawned.MetricsPath})
	}}
}

// runningStep records the VM running with its guest started at the time
// started returns; with ready the guest counts as ready from then on (a
// snapshot of a ready guest). When the agent's report of the guest's
// readiness came first, the boot-to-ready time is observed here. The
// event says what ran.
func (r *hostRun) runningStep(event string, started func() (time.Time, bool)) step {
	return step{name: "record running", do: func(ctx context.Context) error {
		at, ready := started()
		var took time.Duration
		var measured bool
		cur, err := r.c.update(ctx, r.vm.ID, func(v *store.VM) error {
			// Retries stay: the reconciler clears them once the VM has
			// been stable for a while, so a crash loop still ends in
			// failed.
			v.State, v.LastError = store.VMRunning, ""
			v.BootedAt, measured = &at, false
			switch {
			case ready:
				v.GuestReadyAt = &at
			case v.GuestReadyAt != nil:
				ra := maxTime(*v.GuestReadyAt, at)
				v.GuestReadyAt = &ra
				took, measured = ra.Sub(at), true
			}
			return nil
		})
		if err != nil {
			return err
		}
		r.vm = cur
		r.c.event(ctx, cur.ID, store.LevelInfo, "%s", event)
		if measured {
			r.c.readyObserved(ctx, cur.ID, took)
		}
		return nil
	}}
}

// recordStep records a state on the row; what remains of the VM is the
// operation's failure handling's business, so it has no undo.
func (r *hostRun) recordStep(state store.VMState) step {
	return step{name: "record " + string(state), do: func(ctx context.Context) error {
		cur, err := r.c.setState(ctx, r.vm.ID, state, "")
		if err != nil {
			return err
		}
		r.vm = cur
		r.c.event(ctx, r.vm.ID, store.LevelInfo, "%s", state)
		return nil
	}}
}
