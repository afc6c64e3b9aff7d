package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/guest"
	"github.com/nexus-microvm/nexus/internal/store"
)

// bootStep is one named step of the boot sequence. The sequence is data so
// that a failure names its step and the rollback is uniform.
type bootStep struct {
	name string
	do   func(ctx context.Context) error
}

// DefaultBootArgs give a console on ttyS0 (the console log) and keep the
// guest from rebooting forever on panic. internal/guest owns them: it
// composes them with the root device and ip= for the guest images.
const DefaultBootArgs = guest.DefaultBootArgs

// boot runs tap → spawn → logger, metrics, machine-config, boot-source,
// drives, network-interfaces → InstanceStart for vm, recording state as it
// goes. On failure the agent stops whatever was started (process, TAP,
// socket), the row says failed with last_error, and the error says which
// step failed and why. The caller holds the VM's lock.
func (s *Service) boot(ctx context.Context, vm store.VM) (store.VM, error) {
	ag := s.agentFor(ctx, vm)
	sp := decodeSpec(vm)
	fc := ag.Firecracker(vm.ID)
	var spawned agentapi.SpawnResponse
	var tap agentapi.TapResponse
	var drives []firecracker.Drive // from prepareDrives (images.go)

	steps := []bootStep{
		{"create tap", func(ctx context.Context) (err error) {
			if sp.NIC != nil && sp.NIC.Disabled {
				return nil
			}
			tap, err = ag.Tap(ctx, vm.ID)
			return err
		}},
		{"spawn vmm", func(ctx context.Context) (err error) {
			spawned, err = ag.Spawn(ctx, vm.ID, agentapi.SpawnRequest{Vcpu: vm.VCPU, MemMib: vm.MemMiB})
			if err != nil {
				return err
			}
			// On a failed write keep vm as it was: rollback needs its host.
			cur, err := s.update(ctx, vm.ID, func(v *store.VM) error {
				v.APISock, v.LogPath = spawned.APISock, spawned.LogPath
				if tap.Tap != "" {
					v.TAP, v.MAC = tap.Tap, tap.MAC
				}
				return nil
			})
			if err != nil {
				return err
			}
			vm = cur
			s.event(ctx, vm.ID, store.LevelInfo, "vmm started (pid %d)", spawned.PID)
			return nil
		}},
		// Before firecracker opens any file: images are checked (and copied)
		// first, so a file swapped after its check never reaches the VMM.
		{"prepare drives", func(ctx context.Context) (err error) {
			drives, err = s.prepareDrives(ctx, &vm, sp)
			return err
		}},
		{"configure logger", func(ctx context.Context) error {
			return fc.PutLogger(ctx, firecracker.Logger{LogPath: spawned.LogPath, Level: "Info", ShowLevel: firecracker.Bool(true)})
		}},
		{"configure metrics", func(ctx context.Context) error {
			return fc.PutMetrics(ctx, firecracker.Metrics{MetricsPath: spawned.MetricsPath})
		}},
		{"configure machine", func(ctx context.Context) error {
			return fc.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: vm.VCPU, MemSizeMib: vm.MemMiB})
		}},
		{"configure boot source", func(ctx context.Context) error {
			args := vm.BootArgs
			if args == "" {
				args = DefaultBootArgs
			}
			return fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: vm.KernelPath, BootArgs: args})
		}},
		{"configure drives", func(ctx context.Context) error {
			for _, d := range drives {
				if err := fc.PutDrive(ctx, d); err != nil {
					return fmt.Errorf("drive %s: %w", d.DriveID, err)
				}
			}
			return nil
		}},
		{"configure network", func(ctx context.Context) error {
			if tap.Tap == "" {
				return nil
			}
			ni := firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: tap.Tap, GuestMAC: tap.MAC}
			if sp.NIC != nil {
				ni.MTU = sp.NIC.MTU
				ni.RxRateLimiter = fcRateLimiter(sp.NIC.RxRateLimiter)
				ni.TxRateLimiter = fcRateLimiter(sp.NIC.TxRateLimiter)
			}
			if err := fc.PutNetworkInterface(ctx, ni); err != nil {
				return err
			}
			return nil
		}},
		{"record configured", func(ctx context.Context) error {
			cur, err := s.setState(ctx, vm.ID, store.VMConfigured, "")
			if err != nil {
				return err
			}
			vm = cur
			s.event(ctx, vm.ID, store.LevelInfo, "configured")
			return nil
		}},
		{"start instance", func(ctx context.Context) error {
			return fc.InstanceStart(ctx)
		}},
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout)
	defer cancel()
	for _, st := range steps {
		if err := st.do(ctx); err != nil {
			serr := s.stepError(vm, st.name, err)
			s.rollback(vm, st.name, serr)
			return vm, serr
		}
	}
	cur, err := s.update(ctx, vm.ID, func(v *store.VM) error {
		// Retries stay: the reconciler clears them once the VM has been
		// stable for a while, so a crash loop still ends in failed.
		v.State, v.LastError = store.VMRunning, ""
		return nil
	})
	if err != nil {
		serr := s.stepError(vm, "record running", err)
		s.rollback(vm, "record running", serr)
		return vm, serr
	}
	s.event(ctx, cur.ID, store.LevelInfo, "running")
	return cur, nil
}

// rollback stops what boot started and marks the VM failed. It runs on the
// service's context: the caller may be gone, the cleanup must still happen.
func (s *Service) rollback(vm store.VM, step string, cause *Error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), s.cfg.StopGrace+30*time.Second)
	defer cancel()
	if vm.HostAddr != "" {
		if err := s.agentFor(ctx, vm).Stop(ctx, vm.ID, agentapi.StopRequest{}); err != nil {
			s.log.Error("rollback failed; the reconciler will retry", "vm_id", vm.ID, "step", step, "err", err)
			s.event(ctx, vm.ID, store.LevelError, "rollback after failed %s did not finish: %v", step, err)
		}
	}
	_, _ = s.update(ctx, vm.ID, func(v *store.VM) error {
		v.State, v.LastError = store.VMFailed, cause.Error()
		return nil
	})
	s.event(ctx, vm.ID, store.LevelError, "%s failed: %s", step, cause.Error())
}

// stepError turns an agent or firecracker failure into a service error
// that names the VM and the step and says what to do.
func (s *Service) stepError(vm store.VM, step string, err error) *Error {
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
