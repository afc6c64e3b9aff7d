package fcsim

import (
	"context"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// TestTapDevices opens TAPs the way firecracker does, in a network
// namespace of its own: a TAP held by someone else is busy, a device that
// is not a TAP is refused, and the simulator holds its TAP while it lives.
func TestTapDevices(t *testing.T) {
	testutil.RequireRoot(t)
	p := startProc(t, procOpts{netns: true})
	ctx := context.Background()

	h, err := netlink.NewHandleAt(p.ns)
	must(t, err)
	defer h.Close()
	var held *os.File
	inNetns(t, p.ns, func() { held, err = openTap("busy0") })
	must(t, err)
	defer held.Close()

	put := func(id, dev, mac string) error {
		return p.client.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: id, HostDevName: dev, GuestMAC: mac})
	}
	prefix := "Network config error: Could not create the network device: Open tap device failed: "
	for _, tc := range []struct{ name, dev, phrase string }{
		{"held by another process", "busy0", prefix + "Error while creating ifreq structure: Resource busy (os error 16). " +
			"Invalid TUN/TAP Backend provided by busy0. Check our documentation on setting up the network devices."},
		// Every namespace has a loopback device, and it is no TAP.
		{"not a TAP", "lo", prefix + "Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by lo."},
		{"name too long", "averyveryverylongname", prefix + "Invalid interface name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantFault(t, put("eth0", tc.dev, ""), 400, tc.phrase)
		})
	}

	// As root a missing name becomes a transient TAP, held by the simulator.
	must(t, put("eth0", "tap0", "06:00:AC:10:00:02"))
	link, err := h.LinkByName("tap0")
	must(t, err)
	if _, ok := link.(*netlink.Tuntap); !ok {
		t.Fatalf("tap0 is a %s; want a tuntap", link.Type())
	}
	// Re-PUT of the same interface drops the old TAP first.
	must(t, put("eth0", "tap0", "06:00:AC:10:00:02"))
	// Another interface cannot take the TAP, nor the MAC.
	wantFault(t, put("eth1", "tap0", ""), 400, "Resource busy (os error 16)")
	wantFault(t, put("eth1", "tap9", "06:00:ac:10:00:02"), 400, "Network config error: The MAC address is already in use: 06:00:ac:10:00:02")
	var busy *os.File
	inNetns(t, p.ns, func() { busy, err = openTap("tap0") })
	if err == nil {
		busy.Close()
		t.Fatal("the simulator's TAP could be opened by another process")
	}

	// When the process dies the kernel closes its fd and the transient TAP
	// goes away.
	p.kill()
	if _, err := h.LinkByName("tap0"); err == nil {
		t.Fatal("tap0 still exists after the simulator was killed")
	}
}
