package manager

// What reaches the guest and what comes back from it:
//
//   - Addresses. Every VM with a network interface gets an address of its
//     host's VM subnet, which the host's agent reports when it registers
//     (the bridge's subnet and gateway). The store chooses it (the lowest
//     free one) in the transaction that places the VM on the host
//     (Placement.create, store.CreateVMWithin), with the host's row locked
//     and a unique index on (host, address) behind it, so managers sharing
//     a database never hand one out twice. It is kept for the VM's life —
//     stop/start, restarts, agent and manager restarts — and goes with the
//     VM's row (a delete, a failed create). Each boot checks it against the
//     host's current subnet and moves it (AssignAddress) only when the
//     subnet or gateway changed.
//   - The kernel command line: guest.VM.CommandLine, from the VM's
//     boot_args, its root drive and its address.
//   - Readiness. The agent watches each new VMM's console for the guest's
//     readiness or failure line and reports it (a host event); the VM
//     records when its guest was started (booted_at) and when it said it
//     was ready (guest_ready_at), and the manager observes the difference
//     in nexus_guest_boot_to_ready_seconds. A failure is an event and the
//     VM's last_error; the VM is left running for its console to be read.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/guest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// newReadyMetric is the histogram of boot-to-ready times: from the
// guest's start (InstanceStart) to its readiness line, as the agent saw it.
func newReadyMetric() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nexus_guest_boot_to_ready_seconds",
		Help:    "Time from a guest's start (InstanceStart) to its readiness line on the console.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 16), // 10 ms … 5.5 min
	})
}

// parseHostNetwork checks an agent's report of its VM bridge: an IPv4
// subnet of prefix length 1-30 (room for a gateway and guests) and the
// bridge's address, a host address inside it.
func parseHostNetwork(n *apitypes.HostNetwork) (netip.Prefix, netip.Addr, *Error) {
	subnet, err := netip.ParsePrefix(n.Subnet)
	if err != nil {
		return subnet, netip.Addr{}, invalid("network.subnet %q: want an IPv4 prefix such as 172.20.0.0/16", n.Subnet)
	}
	gw, err := netip.ParseAddr(n.Gateway)
	switch {
	case !subnet.Addr().Is4() || subnet.Bits() < 1 || subnet.Bits() > 30:
		return subnet, gw, invalid("network.subnet %s: want an IPv4 prefix of length 1-30", subnet)
	case subnet.Masked() != subnet:
		return subnet, gw, invalid("network.subnet %s: want the network's own address, %s", subnet, subnet.Masked())
	case err != nil || !gw.Is4():
		return subnet, gw, invalid("network.gateway %q: want an IPv4 address", n.Gateway)
	}
	// guest.IPArg checks the rest as the kernel would: a usable address.
	if _, err := guest.IPArg(netip.PrefixFrom(gw, subnet.Bits()), netip.Addr{}, nil, ""); err != nil || !subnet.Contains(gw) {
		return subnet, gw, invalid("network.gateway %s: want a host address of %s", gw, subnet)
	}
	return subnet, gw, nil
}

// hostNet returns the host's VM subnet and gateway; false when its agent
// reported none.
func hostNet(h store.Host) (netip.Prefix, netip.Addr, bool) {
	subnet, err1 := netip.ParsePrefix(h.Subnet)
	gw, err2 := netip.ParseAddr(h.Gateway)
	return subnet, gw, err1 == nil && err2 == nil
}

// guestAddr is the VM's address with its subnet's prefix length and its
// gateway, as the kernel's ip= wants them; zero when it has none.
func guestAddr(vm store.VM) (netip.Prefix, netip.Addr) {
	ip, err1 := netip.ParseAddr(vm.IP)
	subnet, err2 := netip.ParsePrefix(vm.Subnet)
	gw, err3 := netip.ParseAddr(vm.Gateway)
	if err1 != nil || err2 != nil || err3 != nil {
		return netip.Prefix{}, netip.Addr{}
	}
	return netip.PrefixFrom(ip, subnet.Bits()), gw
}

// assignAddress gives vm an address of host h's subnet (or confirms the
// one it has) and returns the VM as stored; a host without a subnet
// leaves it as it is. Within this manager the assignments of one host
// take turns, so its own boots do not race each other for the lowest free
// address; across managers the store's unique index decides.
func (s *core) assignAddress(ctx context.Context, vm store.VM, h store.Host) (store.VM, error) {
	subnet, gw, ok := hostNet(h)
	if !ok {
		return vm, nil
	}
	if vm.IP != "" && vm.Subnet == subnet.String() && vm.Gateway == gw.String() {
		return vm, nil // the common case of every boot: nothing to ask the store
	}
	defer s.addrLocks.Lock(h.ID)()
	cur, err := s.st.AssignAddress(ctx, vm.ID, subnet, gw)
	switch {
	case errors.Is(err, store.ErrExhausted):
		return vm, newErr(KindNoCapacity, "no_address", "host %s has no free address left in its VM subnet %s", h.Name, subnet).
			suggest("delete VMs on that host, place the VM on another (host_id), or give the host's bridge a larger subnet (FC_BRIDGE_CIDR)")
	case errors.Is(err, store.ErrNotFound):
		return vm, notFound("vm", vm.ID)
	case err != nil:
		return vm, fmt.Errorf("vm %s: assign an address on host %s: %w", vm.ID, h.Name, err)
	}
	return cur, nil
}

// addressText is how events name a VM's address.
func addressText(vm store.VM) string {
	addr, gw := guestAddr(vm)
	if !addr.IsValid() {
		return ""
	}
	return fmt.Sprintf("%s via %s", addr, gw)
}

// errSkipReport aborts the update of a guest report that is not about the
// VM's current run.
var errSkipReport = errors.New("report of another run")

// HostEvent handles an agent's report. A VMM exit goes into the VM's
// history, ends its guest's readiness and makes the reconciler (wherever
// it runs) look at that host now; a guest's readiness or failure is
// recorded on the VM when it is about the VMM the VM runs now.
func (s *Hosts) HostEvent(ctx context.Context, hostID string, ev apitypes.HostEvent) error {
	if ev.Kind != apitypes.EventVMMExit && !hostlayout.ValidVMID(ev.VMID) {
		return invalid("vm_id %q is not a VM id", ev.VMID)
	}
	var err error
	switch ev.Kind {
	case apitypes.EventGuestReady:
		err = s.guestReady(ctx, hostID, ev)
	case apitypes.EventGuestFailed:
		err = s.guestFailed(ctx, hostID, ev)
	case apitypes.EventVMMExit:
		err = s.hostExists(ctx, hostID)
	default:
		return invalid("unknown event kind %q", ev.Kind)
	}
	if ev.Kind != apitypes.EventVMMExit {
		// A report about a VM of this host's proves the host; one about
		// no VM of it is answered as before, 404 for an unknown host.
		if errors.Is(err, errSkipReport) {
			return s.hostExists(ctx, hostID)
		}
		return err
	}
	if err != nil {
		return err
	}
	if hostlayout.ValidVMID(ev.VMID) {
		if vm, err := s.st.GetVM(ctx, ev.VMID); err == nil && vm.HostID == hostID {
			s.event(ctx, ev.VMID, store.LevelWarn, "vmm exited on its own (%s)", ev.Status)
			_, _ = s.update(ctx, ev.VMID, func(v *store.VM) error {
				if v.HostID != hostID || ev.PID == 0 || v.VMMPID != ev.PID {
					return errSkipReport
				}
				v.GuestReadyAt = nil // the guest went with its VMM
				return nil
			})
		}
	}
	return s.st.Notify(ctx, ReconcileChannel, hostID)
}

// guestReady records that the VM's guest printed its readiness line. The
// agent's time is used when it lies between the guest's start and now (a
// host's clock may be off); the boot-to-ready time is observed by
// whichever comes second, this report or the boot's "record running".
func (s *Hosts) guestReady(ctx context.Context, hostID string, ev apitypes.HostEvent) error {
	now := s.now()
	var took time.Duration
	var measured bool
	_, err := s.update(ctx, ev.VMID, func(v *store.VM) error {
		measured = false
		if v.HostID != hostID {
			return errSkipReport
		}
		at := ev.At
		if at.IsZero() || at.After(now) {
			at = now
		}
		if v.State == store.VMRequested {
			// A boot configures and starts its VMM in one call and
			// records the VMM only once it runs, so its guest may say it
			// is ready first. The report is kept with its VMM's pid; the
			// boot's "record running" keeps it only if that is the VMM
			// it started (writeState), and measures it then.
			if v.GuestReadyAt != nil && (v.VMMPID == ev.PID || at.Before(*v.GuestReadyAt)) {
				return errSkipReport // known, or of an earlier run
			}
			v.VMMPID, v.GuestReadyAt = ev.PID, &at
			return nil
		}
		if v.VMMPID != ev.PID || v.GuestReadyAt != nil {
			return errSkipReport
		}
		if v.BootedAt != nil {
			at = maxTime(at, *v.BootedAt)
			took, measured = at.Sub(*v.BootedAt), true
		}
		v.GuestReadyAt = &at
		return nil
	})
	if isKind(err, KindNotFound) {
		err = errSkipReport // a VM that is gone: nothing to record
	}
	if err != nil {
		return err // errSkipReport too: a run that is over
	}
	if measured {
		s.readyObserved(ctx, ev.VMID, took)
	}
	return nil
}

// hostExists answers not found for a host that is not registered.
func (s *Hosts) hostExists(ctx context.Context, hostID string) error {
	if _, err := s.st.GetHost(ctx, hostID); errors.Is(err, store.ErrNotFound) {
		return notFound("host", hostID)
	} else if err != nil {
		return fmt.Errorf("host %s: %w", hostID, err)
	}
	return nil
}

// readyObserved records a measured boot-to-ready time.
func (s *core) readyObserved(ctx context.Context, vmID string, took time.Duration) {
	s.event(ctx, vmID, store.LevelInfo, "guest ready %s after its start", took.Round(time.Millisecond))
	s.readySeconds.Observe(took.Seconds())
}

// guestFailed records the guest's own account of a failed boot: an event
// and last_error. The VM keeps its state: its console may tell more, and
// a kernel that panicked ends its VMM anyway (panic=1), which the
// reconciler handles.
func (s *Hosts) guestFailed(ctx context.Context, hostID string, ev apitypes.HostEvent) error {
	reason := firstNonEmpty(ev.Reason, "no reason given")
	msg := "guest failed: " + reason
	_, err := s.update(ctx, ev.VMID, func(v *store.VM) error {
		if v.HostID != hostID || v.VMMPID != ev.PID {
			return errSkipReport
		}
		v.LastError = msg
		return nil
	})
	if isKind(err, KindNotFound) {
		err = errSkipReport
	}
	if err != nil {
		return err // errSkipReport too: a run that is over
	}
	s.event(ctx, ev.VMID, store.LevelError, "%s (see the console: nexus vm logs --source console %s)", msg, ev.VMID)
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func isKind(err error, k Kind) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == k
}
