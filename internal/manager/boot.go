package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/guest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
)

// DefaultBootArgs give a console on ttyS0 (the console log) and keep the
// guest from rebooting forever on panic. internal/guest owns them: it
// composes them with the root device and ip= for the guest images.
const DefaultBootArgs = guest.DefaultBootArgs

// boot runs address → tap → prepare drives → spawn with logger, metrics,
// machine, boot source, drives, network and InstanceStart (one request)
// for vm, then records it running. On failure the steps already done are undone (VMM
// stopped, TAP deleted), the row says failed with last_error, and the
// error says which step failed and why. The caller holds the VM's lock.
func (s *VMs) boot(ctx context.Context, vm store.VM) (store.VM, error) {
	ag := s.agentFor(ctx, vm)
	sp := decodeSpec(vm)
	nic := sp.NIC == nil || !sp.NIC.Disabled
	r := &hostRun{c: s.core, vm: vm, ag: ag, fc: ag.Firecracker(vm.ID), isolated: netMode(sp) == ModeIsolated}
	var drives []firecracker.Drive // from prepareDrives (images.go)
	var addr netip.Prefix          // the guest's address for ip=, when its host has a subnet
	var gw netip.Addr
	var cmdline string // the kernel command line (guest.VM.CommandLine)

	steps := []step{
		// First, and without an undo: the address is the VM's for its
		// life, and it is confirmed (or moved, when the host's subnet
		// changed) before anything is made on the host.
		{name: "assign address", do: func(ctx context.Context) error {
			if !nic {
				return nil
			}
			h, err := s.st.GetHost(ctx, r.vm.HostID)
			if err != nil {
				return fmt.Errorf("host %s: %w", r.vm.HostID, err)
			}
			if _, _, ok := hostNet(h); !ok {
				return nil // an agent that reports no subnet: the guest gets no ip=
			}
			before := addressText(r.vm)
			cur, err := s.assignAddress(ctx, r.vm, h)
			if err != nil {
				return err
			}
			r.vm = cur
			if now := addressText(cur); before != "" && now != before {
				s.event(ctx, cur.ID, store.LevelWarn, "address moved from %s to %s: host %s's bridge is now %s via %s", before, now, h.Name, h.Subnet, h.Gateway)
			}
			addr, gw = guestAddr(cur)
			if r.isolated {
				// The guest sees its namespace, not the bridge.
				addr, gw = netip.PrefixFrom(IsolatedGuest, IsolatedGateway.Bits()), IsolatedGateway.Addr()
			}
			return nil
		}},
		r.tapStep(nic),
		// Before the VMM exists: images are checked (and copied) first, so
		// a file swapped after its check never reaches the VMM, and the
		// drives are known when the configuration goes out with the spawn.
		{name: "prepare drives", do: func(ctx context.Context) (err error) {
			drives, err = s.images.prepareDrives(ctx, &r.vm, sp)
			if runDirMissing(err) {
				// An agent of the release before makes the run dir only when
				// it spawns: spawn first; the calls then follow in a batch.
				if _, err = r.spawn(ctx, nic && !r.isolated, false, nil); err == nil {
					drives, err = s.images.prepareDrives(ctx, &r.vm, sp)
				}
			}
			if err != nil {
				return err
			}
			// The command line, now that the root drive is known; the
			// boot's event shows it with the boot source step.
			g := guest.VM{UserArgs: r.vm.BootArgs, Addr: addr, Gateway: gw}
			for _, d := range drives {
				if d.IsRootDevice {
					// Firecracker attaches the root drive first: /dev/vda.
					g.RootDevice, g.RootReadOnly = "/dev/vda", d.IsReadOnly != nil && *d.IsReadOnly
				}
			}
			if cmdline, err = g.CommandLine(); err != nil {
				return invalid("vm %s: %v", r.vm.ID, err).suggest("shorten boot_args")
			}
			return nil
		}, undo: func(ctx context.Context) error {
			if r.spawned.PID == 0 {
				return nil
			}
			return r.ag.Stop(ctx, r.vm.ID, agentapi.StopRequest{}) // spawned for an older agent
		}},
		// The VMM, and with it (one request) the configuration and the
		// start: the agent makes the calls once the VMM is up.
		r.spawnStep(false, nic),
		r.loggerStep(),
		r.metricsStep(),
		{name: "configure machine", fc: func(ctx context.Context, fc *firecracker.Client) error {
			return fc.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: vm.VCPU, MemSizeMib: vm.MemMiB})
		}},
		{name: "configure boot source", fc: func(ctx context.Context, fc *firecracker.Client) error {
			return fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: r.vm.KernelPath, InitrdPath: r.vm.InitrdPath, BootArgs: cmdline})
		}, detail: func() string { return cmdline }},
		{name: "configure drives", fc: func(ctx context.Context, fc *firecracker.Client) error {
			for _, d := range drives {
				if err := fc.PutDrive(ctx, d); err != nil {
					return fmt.Errorf("drive %s: %w", d.DriveID, err)
				}
			}
			return nil
		}},
		{name: "configure network", fc: func(ctx context.Context, fc *firecracker.Client) error {
			if !nic {
				return nil
			}
			// Recorded before the spawn answers: on the bridge, the TAP it
			// makes is named for the VM (the agent refuses any other).
			tap := r.tap
			if !r.isolated {
				tap = agentapi.TapResponse{Tap: hostlayout.TapName(vm.ID), MAC: hostlayout.GuestMAC(vm.ID).String()}
			}
			ni := firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: tap.Tap, GuestMAC: tap.MAC}
			if sp.NIC != nil {
				ni.MTU = sp.NIC.MTU
				ni.RxRateLimiter = fcRateLimiter(sp.NIC.RxRateLimiter)
				ni.TxRateLimiter = fcRateLimiter(sp.NIC.TxRateLimiter)
			}
			return fc.PutNetworkInterface(ctx, ni)
		}},
		// No "configured" is recorded between the configuration and the
		// start: they go to the host with the spawn, a round trip and a
		// write fewer per boot. The VM goes from requested to running.
		{name: "start instance", fc: func(ctx context.Context, fc *firecracker.Client) error {
			return fc.InstanceStart(ctx)
		}},
		// Retries stay: the reconciler clears them once the VM has been
		// stable for a while, so a crash loop still ends in failed.
		// Boot-to-ready counts from the start call, the last the host
		// answered; the guest's readiness line may come back before the
		// answer does (guestReady keeps it).
		r.runningStep(func() (time.Time, bool) { return r.answeredAt, false }),
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout)
	defer cancel()
	if err := r.run(ctx, "boot", steps); err != nil {
		return r.vm, s.failed(r.vm, err, s.stepError)
	}
	return r.vm, nil
}

// failed marks vm failed after an operation's steps failed (and were
// undone) and returns the error for the caller, as classify words it for
// the failed step.
func (s *core) failed(vm store.VM, err error, classify func(vm store.VM, step string, err error) *Error) *Error {
	name := "boot"
	var sf *stepFailure
	if errors.As(err, &sf) {
		name, err = sf.step, sf.err
	}
	serr := classify(vm, name, err)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 30*time.Second)
	defer cancel()
	_, _ = s.update(ctx, vm.ID, func(v *store.VM) error {
		v.State, v.LastError = store.VMFailed, serr.Error()
		return nil
	})
	return serr
}

// stepError turns an agent or firecracker failure into a service error
// that names the VM and the step and says what to do.
func (s *core) stepError(vm store.VM, step string, err error) *Error {
	prefix := fmt.Sprintf("vm %s (%s): %s", vm.ID, vm.Name, step)
	if e, ok := err.(*Error); ok { // a service error keeps its kind and code
		c := *e
		c.Message = prefix + ": " + e.Message
		return &c
	}
	if fe, ok := firecracker.IsAPIError(err); ok {
		switch {
		case fe.StatusCode == http.StatusBadRequest && fe.FaultMessage != "":
			return (&Error{Kind: KindRejected, Code: "firecracker_rejected", Message: prefix + ": firecracker refused",
				Fault: fe.FaultMessage, Err: err}).suggest(suggestFor(step, fe.FaultMessage, vm))
		case fe.StatusCode == http.StatusGatewayTimeout:
			return (&Error{Kind: KindTimeout, Code: "vmm_timeout", Message: prefix + ": firecracker did not answer in time", Err: err}).
				suggest("the VMM may be hung; stop and start the VM")
		case fe.StatusCode == http.StatusForbidden:
			return (&Error{Kind: KindForbidden, Code: firstNonEmpty(fe.Code, "forbidden"), Message: prefix + ": the agent refused: " + fe.Message, Err: err}).
				suggest("boot from registered images under FC_IMAGES_DIR")
		case fe.StatusCode == http.StatusBadGateway:
			return (&Error{Kind: KindUnavailable, Code: "vmm_unreachable", Message: prefix + ": " + firstNonEmpty(fe.Message, "the VMM is not running"), Err: err}).
				suggest("see the console log: nexus vm logs --source console " + vm.ID)
		}
		return &Error{Kind: KindInternal, Code: "vmm_error", Message: prefix, Err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) {
		// The relay itself (the agent) could not be reached.
		return (&Error{Kind: KindUnavailable, Code: "agent_unreachable",
			Message: fmt.Sprintf("%s: agent %s unreachable", prefix, vm.HostAddr), Err: err}).
			suggest("check that the agent on host " + vm.HostID + " is running; the reconciler retries")
	}
	return agentError(prefix, vm, err)
}

// agentError classifies an error from an agent call.
func agentError(prefix string, vm store.VM, err error) *Error {
	var ue *agentapi.UnreachableError
	if errors.As(err, &ue) {
		return (&Error{Kind: KindUnavailable, Code: "agent_unreachable",
			Message: fmt.Sprintf("%s: agent %s unreachable", prefix, vm.HostAddr), Err: err}).
			suggest("check that the agent on host " + vm.HostID + " is running; the reconciler retries")
	}
	var ae *apierr.Error
	if errors.As(err, &ae) {
		e := &Error{Kind: KindInternal, Code: ae.Code, Message: prefix + ": " + ae.Message, Suggestion: ae.Suggestion, Err: err}
		switch {
		case ae.Status == http.StatusGatewayTimeout:
			e.Kind = KindTimeout
		case ae.Status == http.StatusBadGateway:
			e.Kind = KindUnavailable
		case ae.Status == http.StatusUnauthorized:
			e.Message = prefix + ": the agent refused the join token"
			e.Suggestion = "manager and agent must share the same join token (NEXUS_JOIN_TOKEN / AGENT_TOKEN)"
		}
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: KindTimeout, Code: "timeout", Message: prefix + ": timed out", Err: err}
	}
	return &Error{Kind: KindInternal, Code: "internal", Message: prefix, Err: err}
}

// suggestFor maps firecracker's fault messages to what the caller can do.
func suggestFor(step, fault string, vm store.VM) string {
	f := strings.ToLower(fault)
	switch {
	case strings.Contains(f, "vcpus"):
		return "vcpu must be between 1 and 32 (1 or an even number with SMT)"
	case strings.Contains(f, "memory size"):
		return "mem_mib must be positive (and even with huge pages)"
	case strings.Contains(f, "kernel file cannot be opened"):
		return fmt.Sprintf("the kernel %q is not readable on host %s; register it as an image or fix the path", vm.KernelPath, vm.HostID)
	case strings.Contains(f, "kernel loader"), strings.Contains(f, "elf"), strings.Contains(f, "invalid kernel"):
		return "the kernel must be an uncompressed ELF vmlinux (not a bzImage or a compressed file)"
	case strings.Contains(f, "no such file") && strings.Contains(step, "drive"):
		return "a drive file does not exist on the host; check rootfs_path / extra_drives"
	case strings.Contains(f, "network") || strings.Contains(f, "tap"):
		return "the VM's TAP device is missing or busy; start the VM again"
	case strings.Contains(f, "unknown field"):
		return "this firecracker does not know a field Nexus sent; check the firecracker version"
	}
	return "see the VM's firecracker log: nexus vm logs " + vm.ID
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// runDirMissing reports an agent's refusal to prepare a drive before the
// VM's run dir exists (agents before the spawn carried the boot's calls
// made the run dir only when spawning).
func runDirMissing(err error) bool {
	var ae *apierr.Error
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound && strings.Contains(ae.Message, "vm run dir")
}
