package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
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
	// detail, when set, adds what the step learnt to the operation's
	// event ("pid 1234").
	detail func() string
	// fc, instead of do, makes the step's firecracker calls with the client
	// it is given. A run of such steps goes to the host in one request
	// (the agent's proxy-batch) and each is still reported on its own;
	// they have no undo: what they set dies with the VMM.
	fc func(ctx context.Context, c *firecracker.Client) error
	// carry, when set, runs the step (as do would) with the calls of the
	// firecracker-call steps that follow it, in one request: a spawn that
	// configures and starts its VMM. It returns their results (as a batch
	// would), and an error only when the step itself failed.
	carry func(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error)
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
	return c.runWith(ctx, vmID, op, steps, nil, true)
}

// runStepsOpt is runSteps; without eventOnSuccess a success writes no event
// (a delete: the VM's events go with its row).
func (c *core) runStepsOpt(ctx context.Context, vmID, op string, steps []step, eventOnSuccess bool) error {
	return c.runWith(ctx, vmID, op, steps, nil, eventOnSuccess)
}

// batcher sends firecracker calls to a VM's host in one request.
type batcher interface {
	// record returns a client whose writes are recorded, not sent.
	record() (*firecracker.Client, *firecracker.Recorder)
	send(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error)
}

// outcome is what became of one step.
type outcome struct {
	err error
	d   time.Duration
}

// runWith runs steps; a run of firecracker-call steps (step.fc) goes to
// the host through b in one request.
func (c *core) runWith(ctx context.Context, vmID, op string, steps []step, b batcher, eventOnSuccess bool) error {
	// A step without a name is one this operation leaves out.
	steps = slices.DeleteFunc(slices.Clone(steps), func(st step) bool { return st.name == "" })
	var done []int
	var report []string
	observe := func(name, result string, d time.Duration) {
		if c.stepSeconds != nil {
			c.stepSeconds.WithLabelValues(op, name, result).Observe(d.Seconds())
		}
	}
	var failure *stepFailure
	for i := 0; i < len(steps) && failure == nil; {
		if err := ctx.Err(); err != nil {
			failure = &stepFailure{step: steps[i].name, err: fmt.Errorf("cancelled: %w", err)}
			report = append(report, steps[i].name+" not started")
			break
		}
		group := []step{steps[i]}
		var outs []outcome
		if steps[i].carry != nil && i+1 < len(steps) && steps[i+1].fc != nil {
			j := i + 2
			for j < len(steps) && steps[j].fc != nil {
				j++
			}
			group = steps[i:j]
			outs = c.runCarried(ctx, group, b)
		} else if steps[i].fc != nil {
			j := i + 1
			for j < len(steps) && steps[j].fc != nil {
				j++
			}
			group = steps[i:j]
			outs = c.runCalls(ctx, group, b)
		} else {
			// Durations are measurements, on the monotonic clock;
			// decisions (retries, graces) use c.now.
			start := time.Now()
			err := steps[i].do(ctx)
			outs = []outcome{{err: err, d: time.Since(start)}}
		}
		for k, o := range outs {
			st := group[k]
			if o.err != nil {
				observe(st.name, "failed", o.d)
				report = append(report, fmt.Sprintf("%s failed after %s", st.name, ms(o.d)))
				failure = &stepFailure{step: st.name, err: o.err}
				break
			}
			observe(st.name, "ok", o.d)
			if st.detail != nil {
				report = append(report, fmt.Sprintf("%s %s (%s)", st.name, ms(o.d), st.detail()))
			} else {
				report = append(report, fmt.Sprintf("%s %s", st.name, ms(o.d)))
			}
			done = append(done, i+k)
		}
		i += len(group)
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

// runCalls runs a group of firecracker-call steps: their calls are
// recorded in order, sent in one batch, and each step's outcome is read
// from its calls' results (the first refusal stops the rest). It returns
// an outcome for each step up to and including the first that failed.
func (c *core) runCalls(ctx context.Context, group []step, b batcher) []outcome {
	if b == nil {
		err := errors.New("firecracker-call steps need a host to send them to")
		return []outcome{{err: err}}
	}
	rc, rec := b.record()
	var calls []firecracker.Call
	owner := []int{} // call index → step index in group
	var recErr error
	recorded := len(group)
	for k, st := range group {
		if err := st.fc(ctx, rc); err != nil {
			recErr, recorded = err, k // a check refused before anything was sent
			break
		}
		for _, call := range rec.Take() {
			calls = append(calls, call)
			owner = append(owner, k)
		}
	}
	outs := make([]outcome, 0, len(group))
	if len(calls) > 0 {
		start := time.Now()
		results, err := b.send(ctx, calls)
		if err != nil {
			return []outcome{{err: err, d: time.Since(start)}}
		}
		ok := make([]bool, recorded)
		for k := range ok {
			ok[k] = true
		}
		took := make([]time.Duration, recorded)
		failedAt := -1
		for n, res := range results {
			k := owner[n]
			took[k] += time.Duration(res.Ms * float64(time.Millisecond))
			if err := res.Err(calls[n]); err != nil {
				failedAt = k
				outs = outs[:0]
				for p := range k {
					outs = append(outs, outcome{d: took[p]})
				}
				return append(outs, outcome{err: err, d: took[k]})
			}
		}
		if len(results) < len(calls) && failedAt < 0 {
			k := owner[len(results)]
			for p := range k {
				outs = append(outs, outcome{d: took[p]})
			}
			return append(outs, outcome{err: fmt.Errorf("the host answered %d of %d calls", len(results), len(calls))})
		}
		for k := range recorded {
			outs = append(outs, outcome{d: took[k]})
		}
	} else {
		for range recorded {
			outs = append(outs, outcome{})
		}
	}
	if recErr != nil {
		outs = append(outs, outcome{err: recErr})
	}
	return outs
}

// runCarried runs group[0], a step with carry, with the calls of the
// firecracker-call steps after it in one request. The calls are recorded
// before the step runs, so they may use only what earlier steps learnt.
// It returns an outcome for the carrier and for each call step up to and
// including the first that failed.
func (c *core) runCarried(ctx context.Context, group []step, b batcher) []outcome {
	head := group[0]
	var headOut *outcome
	if b == nil {
		return []outcome{{err: errors.New("a step that carries calls needs a host to send them to")}}
	}
	carrier := carrierBatch{batcher: b, carry: func(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error) {
		start := time.Now()
		res, err := head.carry(ctx, calls)
		d := time.Since(start)
		for _, r := range res {
			d -= time.Duration(r.Ms * float64(time.Millisecond)) // the calls' own time is theirs
		}
		var lost *callsLost
		if errors.As(err, &lost) {
			// The step is done; its calls never got an answer.
			headOut = &outcome{d: max(d, 0)}
			return nil, lost.err
		}
		headOut = &outcome{err: err, d: max(d, 0)}
		return res, err
	}}
	outs := c.runCalls(ctx, group[1:], carrier)
	if headOut == nil {
		// Nothing was sent: a check refused the first call before it was
		// recorded. The step still runs, alone, and the refusal follows it.
		start := time.Now()
		_, err := head.carry(ctx, nil)
		headOut = &outcome{err: err, d: time.Since(start)}
	}
	if headOut.err != nil {
		return []outcome{*headOut}
	}
	return append([]outcome{*headOut}, outs...)
}

// callsLost is a carry's error when its step succeeded but its calls got
// no answer (they went in a request of their own, and it failed).
type callsLost struct{ err error }

func (e *callsLost) Error() string { return e.err.Error() }
func (e *callsLost) Unwrap() error { return e.err }

// carrierBatch is a batcher whose calls go with another step's request.
type carrierBatch struct {
	batcher
	carry func(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error)
}

func (cb carrierBatch) send(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error) {
	return cb.carry(ctx, calls)
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
	keepMAC bool // the row's MAC stays (a restored guest keeps the snapshot's)
	// isolated: the TAP and the VMM go into a namespace of the VM's own.
	isolated bool
	// answeredAt is when the last call the host answered began, at the
	// latest (noteAnswer).
	answeredAt time.Time
}

func (r *hostRun) record() (*firecracker.Client, *firecracker.Recorder) { return r.fc.Record() }

func (r *hostRun) send(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error) {
	res, err := r.ag.ProxyBatch(ctx, r.vm.ID, calls)
	if err == nil {
		r.noteAnswer(res.Results)
	}
	return res.Results, err
}

// noteAnswer keeps when the last of the calls the host answered began, at
// the latest: the answer's arrival less that call's own time. A boot's
// start is its last call (answeredAt).
func (r *hostRun) noteAnswer(res []firecracker.CallResult) {
	if len(res) > 0 {
		r.answeredAt = r.c.now().Add(-time.Duration(res[len(res)-1].Ms * float64(time.Millisecond)))
	}
}

// run runs an operation's steps on r's host.
func (r *hostRun) run(ctx context.Context, op string, steps []step) error {
	return r.c.runWith(ctx, r.vm.ID, op, steps, r, true)
}

// tapStep creates an isolated VM's namespace with its TAP inside, which
// its VMM is started in; undone by deleting it. A VM on the bridge gets
// its TAP with its VMM (spawnStep), and a VM without a network interface
// none: for them the step is left out.
func (r *hostRun) tapStep(wanted bool) step {
	if !wanted || !r.isolated {
		return step{}
	}
	return step{name: "create tap",
		do: func(ctx context.Context) (err error) {
			if r.vm.IP == "" {
				return conflict("no_address", "vm %s: isolated network mode needs an address of its host's bridge, and host %s reports no subnet", r.vm.ID, r.vm.HostID).
					suggest("use network mode bridge, or a host whose agent reports its bridge subnet")
			}
			r.tap, err = r.ag.Tap(ctx, r.vm.ID, isolatedTap(r.vm))
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

// spawnStep starts the VMM — and, for a VM with a network interface on
// the bridge (tap), makes its TAP in the same call — and records its
// socket and log (and TAP) on the row; keepMAC leaves the row's MAC as it
// is (a restored guest keeps the snapshot's). Followed by firecracker-call
// steps, it carries their calls: the agent makes them once the VMM is up,
// in the same request. Undone by stopping the VMM (which also removes its
// socket and TAP).
func (r *hostRun) spawnStep(keepMAC, tap bool) step {
	withTap := tap && !r.isolated
	return step{name: "spawn vmm",
		do: func(ctx context.Context) error {
			_, err := r.spawn(ctx, withTap, keepMAC, nil)
			return err
		},
		carry: func(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error) {
			return r.spawn(ctx, withTap, keepMAC, calls)
		},
		detail: func() string {
			if withTap {
				return fmt.Sprintf("pid %d, %s", r.spawned.PID, r.tap.Tap)
			}
			return fmt.Sprintf("pid %d", r.spawned.PID)
		},
		undo: func(ctx context.Context) error {
			return r.ag.Stop(ctx, r.vm.ID, agentapi.StopRequest{})
		},
	}
}

// spawn starts the VMM (with its TAP on the bridge when withTap) and has
// the agent make calls once it is up; it returns their results. An agent
// of the release before that refuses a field (a rolling upgrade does
// managers first) gets what it knows: the TAP in a call of its own
// first, the calls in a proxy batch after. Spawning twice is harmless
// (the agent answers the VMM it has), and the VMM of a spawn that failed
// is stopped.
func (r *hostRun) spawn(ctx context.Context, withTap, keepMAC bool, calls []firecracker.Call) ([]firecracker.CallResult, error) {
	if r.spawned.PID != 0 {
		// Spawned already (an older agent's drives needed its run dir
		// first): the calls go on their own.
		return r.sendCalls(ctx, calls)
	}
	req := agentapi.SpawnRequest{Vcpu: r.vm.VCPU, MemMib: r.vm.MemMiB, NetNS: r.isolated, Tap: withTap, Calls: calls}
	var err error
	for attempt := 0; ; attempt++ {
		r.spawned, err = r.ag.Spawn(ctx, r.vm.ID, req)
		if attempt < 2 && req.Tap && unknownField(err, "tap") {
			if r.tap, err = r.ag.Tap(ctx, r.vm.ID, agentapi.TapRequest{}); err != nil {
				break
			}
			req.Tap = false
			continue
		}
		if attempt < 2 && req.Calls != nil && unknownField(err, "calls") {
			req.Calls = nil
			continue
		}
		break
	}
	if err == nil && req.Tap {
		if r.spawned.Tap != nil {
			r.tap = *r.spawned.Tap
		} else {
			// An agent that ignored the field (SpawnRequest.Tap): the TAP
			// takes its own call.
			r.tap, err = r.ag.Tap(ctx, r.vm.ID, agentapi.TapRequest{})
		}
	}
	if err != nil {
		// The agent may have started it before the call failed (a
		// timeout on the way back): make sure it is gone.
		_ = r.ag.Stop(context.WithoutCancel(ctx), r.vm.ID, agentapi.StopRequest{})
		r.spawned = agentapi.SpawnResponse{}
		return nil, err
	}
	r.keepMAC = keepMAC // recorded with the next state (recordStep)
	if len(calls) > 0 && req.Calls == nil {
		return r.sendCalls(ctx, calls)
	}
	r.noteAnswer(r.spawned.Results)
	return r.spawned.Results, nil
}

// sendCalls sends calls in a proxy batch of their own for a carry; a
// failure to send them is not the carrying step's.
func (r *hostRun) sendCalls(ctx context.Context, calls []firecracker.Call) ([]firecracker.CallResult, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	res, err := r.send(ctx, calls)
	if err != nil {
		return nil, &callsLost{err: err}
	}
	return res, nil
}

// unknownField reports an agent's refusal of a request field it does not
// know (an agent older than the manager).
func unknownField(err error, field string) bool {
	var ae *apierr.Error
	return errors.As(err, &ae) && ae.Status == http.StatusBadRequest && strings.Contains(ae.Message, fmt.Sprintf("unknown field %q", field))
}

// loggerStep points firecracker's logger at the VM's fc.log.
func (r *hostRun) loggerStep() step {
	return step{name: "configure logger", fc: func(ctx context.Context, fc *firecracker.Client) error {
		// Relative to the VM's run dir, firecracker's working directory
		// (its jail's root when jailed): the call is made before the
		// agent has answered where the run dir is.
		return fc.PutLogger(ctx, firecracker.Logger{LogPath: hostlayout.LogRel, Level: "Info", ShowLevel: firecracker.Bool(true)})
	}}
}

// metricsStep points firecracker's metrics at the VM's metrics.json.
func (r *hostRun) metricsStep() step {
	return step{name: "configure metrics", fc: func(ctx context.Context, fc *firecracker.Client) error {
		return fc.PutMetrics(ctx, firecracker.Metrics{MetricsPath: hostlayout.MetricsRel})
	}}
}

// recordStep records a state on the row, with what the host answered so
// far (the VM's socket, log and TAP, the VMM's pid) in the same write;
// what remains of the VM is the operation's failure handling's business,
// so it has no undo. The operation's event says the state was reached.
func (r *hostRun) recordStep(state store.VMState) step {
	return step{name: "record " + string(state), do: func(ctx context.Context) error {
		return r.writeState(ctx, state, nil)
	}}
}

// writeState writes state and what the host answered so far, and what more
// says, in one update.
func (r *hostRun) writeState(ctx context.Context, state store.VMState, more func(v *store.VM)) error {
	// r.vm is the row as this operation last wrote it: unless a report
	// came in between, the write needs no read.
	cur, err := r.c.updateFrom(ctx, r.vm, func(v *store.VM) error {
		v.State, v.LastError = state, ""
		if r.spawned.APISock != "" {
			v.APISock, v.LogPath = r.spawned.APISock, r.spawned.LogPath
		}
		if r.spawned.PID != 0 && v.VMMPID != r.spawned.PID {
			// A new VMM is a new run: reports of the old one no longer
			// match its pid. (A readiness report of this VMM that came
			// before this write carries its pid, so it stays.)
			v.VMMPID, v.BootedAt, v.GuestReadyAt = r.spawned.PID, nil, nil
		}
		if r.tap.Tap != "" {
			v.TAP = r.tap.Tap
			if !r.keepMAC {
				v.MAC = r.tap.MAC
			}
		}
		if more != nil {
			more(v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.vm = cur
	return nil
}

// runningStep records the VM running with its guest started at the time
// started returns; with ready, the guest counts as ready from then on (a
// snapshot of a ready guest). When the agent's report of the guest's
// readiness came first, the boot-to-ready time is observed here.
func (r *hostRun) runningStep(started func() (time.Time, bool)) step {
	return step{name: "record running", do: func(ctx context.Context) error {
		at, ready := started()
		var took time.Duration
		var measured bool
		err := r.writeState(ctx, store.VMRunning, func(v *store.VM) {
			v.BootedAt, measured = &at, false
			switch {
			case ready:
				v.GuestReadyAt = &at
			case v.GuestReadyAt != nil:
				ra := maxTime(*v.GuestReadyAt, at)
				v.GuestReadyAt = &ra
				took, measured = ra.Sub(at), true
			}
		})
		if err == nil && measured {
			r.c.readyObserved(ctx, r.vm.ID, took)
		}
		return err
	}}
}
