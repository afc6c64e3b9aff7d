package manager

import (
	"net/netip"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// The network modes (apitypes.NetworkSpec).
const (
	ModeBridge   = "bridge"
	ModeIsolated = "isolated"
)

// An isolated guest's network, the same in every isolated VM (and so in
// every clone of a snapshot of one): the guest has IsolatedGuest, its TAP
// inside the VM's namespace has IsolatedGateway. It must not overlap a
// bridge subnet; the agent checks.
var (
	IsolatedGuest   = netip.MustParseAddr("192.168.127.2")
	IsolatedGateway = netip.MustParsePrefix("192.168.127.1/30")
)

// netMode is the VM's network mode: "" without a network interface.
func netMode(sp spec) string {
	if sp.NIC != nil && sp.NIC.Disabled {
		return ""
	}
	if sp.Network != nil && sp.Network.Mode == ModeIsolated {
		return ModeIsolated
	}
	return ModeBridge
}

// checkNetwork validates a create's network section.
func checkNetwork(c apitypes.VMConfig) error {
	if c.Network == nil {
		return nil
	}
	switch c.Network.Mode {
	case ModeBridge, ModeIsolated:
	default:
		return invalid("network.mode %q: want bridge or isolated", c.Network.Mode)
	}
	if c.Network.Mode == ModeIsolated && c.NIC != nil && c.NIC.Disabled {
		return invalid("network.mode isolated needs a network interface").suggest("drop nic.disabled, or network")
	}
	return nil
}

// isolatedTap is the tap call's body for an isolated VM: its own address
// on the bridge (assigned with its row) and the fixed guest network.
func isolatedTap(vm store.VM) agentapi.TapRequest {
	return agentapi.TapRequest{Isolated: &agentapi.IsolatedNet{
		HostAddr: vm.IP, GuestAddr: IsolatedGuest.String(), GuestGateway: IsolatedGateway.String(),
	}}
}

// networkView is how the VM is reached.
func networkView(vm store.VM, sp spec) *apitypes.VMNetwork {
	switch netMode(sp) {
	case "":
		return nil
	case ModeIsolated:
		return &apitypes.VMNetwork{Mode: ModeIsolated, Address: vm.IP, GuestAddr: IsolatedGuest.String(),
			GuestGateway: IsolatedGateway.Addr().String(), Veth: hostlayout.VethName(vm.ID)}
	}
	return &apitypes.VMNetwork{Mode: ModeBridge, Address: vm.IP, GuestAddr: vm.IP, GuestGateway: vm.Gateway}
}
