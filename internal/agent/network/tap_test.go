package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// readyNet is a namespace with an uplink and a Network whose bridge exists.
func readyNet(t testing.TB) (*testNS, *Network) {
	t.Helper()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
	nw := newNet(t, tns, Config{})
	if _, err := nw.EnsureBridge(context.Background()); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	return tns, nw
}

// assertTap reads the TAP back: a persistent single-queue tuntap in TAP
// mode with firecracker's flags, enslaved to the bridge, up, and held open
// by a process or not. The kernel reports attached queues only for
// multi-queue TAPs; for ours, carrier (LOWER_UP) is on exactly while a
// process has it open.
func assertTap(t *testing.T, tns *testNS, name string, inUse bool) {
	t.Helper()
	link, err := tns.h.LinkByName(name)
	if err != nil {
		t.Fatalf("tap %s: %v", name, err)
	}
	tap, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s; want tuntap", name, link.Type())
	}
	if tap.Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("%s mode = %v; want tap", name, tap.Mode)
	}
	if tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("%s is multi-queue; firecracker's TUNSETIFF would get EINVAL", name)
	}
	if want := netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR; tap.Flags&want != want {
		t.Errorf("%s flags = %#x; want NO_PI|VNET_HDR", name, tap.Flags)
	}
	if tap.NonPersist {
		t.Errorf("%s is not persistent", name)
	}
	if got := link.Attrs().RawFlags&unix.IFF_LOWER_UP != 0; got != inUse {
		t.Errorf("%s carrier (held open) = %v; want %v", name, got, inUse)
	}
	br, err := tns.h.LinkByName("fcbr0")
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if tap.MasterIndex != br.Attrs().Index {
		t.Errorf("%s master index = %d; want fcbr0's %d", name, tap.MasterIndex, br.Attrs().Index)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s is not up", name)
	}
}

func TestEnsureTap(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	name := tapName("3f2a9c1e-77b0-4d1e-9a53-0f6c2a1b9e44")
	brMAC := mustLink(t, tns, "fcbr0").Attrs().HardwareAddr.String()

	if err := nw.EnsureTap(ctx, name, name); err != nil {
		t.Fatalf("EnsureTap: %v", err)
	}
	assertTap(t, tns, name, false)
	if got := mustLink(t, tns, name).Attrs().Alias; got != nw.tapMark(name) {
		t.Errorf("%s mark = %q; want %q", name, got, nw.tapMark(name))
	}
	if err := nw.EnsureTap(ctx, name, name); err != nil {
		t.Fatalf("EnsureTap again: %v", err)
	}
	assertTap(t, tns, name, false)
	if n := countPrefixed(t, tns); n != 1 {
		t.Errorf("links with the tap prefix = %d; want 1", n)
	}
	if got := mustLink(t, tns, "fcbr0").Attrs().HardwareAddr.String(); got != brMAC {
		t.Errorf("bridge MAC changed when a tap joined: %s -> %s", brMAC, got)
	}

	// Firecracker's open succeeds; a second one (a second VMM on the same
	// TAP) gets EBUSY while the first holds it.
	fd, err := tns.openTapLikeFirecracker(t, name)
	if err != nil {
		t.Fatalf("TUNSETIFF like firecracker: %v", err)
	}
	assertTap(t, tns, name, true)
	fd2, err := tns.openTapLikeFirecracker(t, name)
	if !errors.Is(err, unix.EBUSY) {
		if fd2 >= 0 {
			unix.Close(fd2)
		}
		t.Errorf("second TUNSETIFF = %v; want EBUSY", err)
	}
	// EnsureTap on a TAP in use is fine and leaves the user attached.
	if err := nw.EnsureTap(ctx, name, name); err != nil {
		t.Errorf("EnsureTap while attached: %v", err)
	}
	assertTap(t, tns, name, true)
	unix.Close(fd)
	assertTap(t, tns, name, false)

	if err := nw.DeleteTap(ctx, name); err != nil {
		t.Fatalf("DeleteTap: %v", err)
	}
	if _, err := tns.h.LinkByName(name); !isNotFound(err) {
		t.Errorf("tap after DeleteTap: %v; want not found", err)
	}
	if err := nw.DeleteTap(ctx, name); err != nil {
		t.Errorf("DeleteTap of a missing tap = %v; want nil", err)
	}
}

// Links that merely carry a TAP's name are neither reused nor deleted.
func TestEnsureTapConflicts(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		link func(name string) netlink.Link
	}{
		{"veth", func(n string) netlink.Link {
			return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n}, PeerName: "p" + n[4:]}
		}},
		{"tun", func(n string) netlink.Link {
			return &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: n}, Mode: netlink.TUNTAP_MODE_TUN, Flags: netlink.TUNTAP_NO_PI}
		}},
		{"multi-queue tap", func(n string) netlink.Link {
			return &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: n}, Mode: netlink.TUNTAP_MODE_TAP,
				Flags: netlink.TUNTAP_MULTI_QUEUE_DEFAULTS | netlink.TUNTAP_VNET_HDR}
		}},
	}
	tns, nw := readyNet(t)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := tapName(fmt.Sprintf("c0ff1c7%04d", i))
			link := tc.link(name)
			if err := tns.add(t, link); err != nil {
				t.Fatalf("add %s: %v", tc.name, err)
			}
			t.Cleanup(func() { delLink(t, tns, name) })
			before := mustLink(t, tns, name)

			err := nw.EnsureTap(ctx, name, name)
			if !errors.Is(err, ErrLinkConflict) {
				t.Fatalf("EnsureTap = %v; want ErrLinkConflict", err)
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("error %q does not name the device", err)
			}
			after := mustLink(t, tns, name)
			if after.Attrs().Index != before.Attrs().Index || after.Attrs().MasterIndex != 0 {
				t.Errorf("the link was touched: index %d -> %d, master %d",
					before.Attrs().Index, after.Attrs().Index, after.Attrs().MasterIndex)
			}
			if tc.name == "veth" {
				if err := nw.DeleteTap(ctx, name); !errors.Is(err, ErrLinkConflict) {
					t.Errorf("DeleteTap of a veth = %v; want ErrLinkConflict", err)
				}
				mustLink(t, tns, name)
			}
		})
	}
}

func TestEnsureTapWithoutBridge(t *testing.T) {
	tns := newTestNS(t)
	nw := newNet(t, tns, Config{Uplink: UplinkNone})
	err := nw.EnsureTap(context.Background(), tapName("b0b0b0b0b0b0"), tapName("b0b0b0b0b0b0"))
	if !errors.Is(err, ErrNoBridge) {
		t.Fatalf("EnsureTap = %v; want ErrNoBridge", err)
	}
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix = %d; want 0", n)
	}
}

// The bridge's index is noted (EnsureBridge, a TAP's create); a bridge
// made again since (a new index) is found again, and a missing one is
// reported as such, with no TAP left behind.
func TestEnsureTapAfterTheBridgeIsMadeAgain(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	first, second, third := tapName("a1a1a1a1a1a1"), tapName("a2a2a2a2a2a2"), tapName("a3a3a3a3a3a3")
	if err := nw.EnsureTap(ctx, first, first); err != nil {
		t.Fatalf("EnsureTap: %v", err)
	}
	delLink(t, tns, "fcbr0")
	if err := nw.EnsureTap(ctx, second, second); !errors.Is(err, ErrNoBridge) {
		t.Fatalf("EnsureTap without the bridge = %v; want ErrNoBridge", err)
	}
	if _, err := tns.h.LinkByName(second); !isNotFound(err) {
		t.Errorf("%s after a failed EnsureTap: %v; want none", second, err)
	}
	// Made again by another instance (an agent restarted meanwhile): this
	// one still holds the old index.
	if _, err := newNet(t, tns, Config{}).EnsureBridge(ctx); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	if err := nw.EnsureTap(ctx, third, third); err != nil {
		t.Fatalf("EnsureTap on the new bridge: %v", err)
	}
	assertTap(t, tns, third, false)
	for _, name := range []string{first, third} {
		if err := nw.DeleteTap(ctx, name); err != nil {
			t.Errorf("DeleteTap %s: %v", name, err)
		}
	}
}

func TestTapNames(t *testing.T) {
	for _, name := range []string{"eth0", "tap-", "tap-0123456789ab", "tap-a/b", "", "fcbr0"} {
		if err := validTapName(name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("validTapName(%q) = %v; want ErrInvalidName", name, err)
		}
	}
	for _, id := range []string{"3f2a9c1e-77b0-4d1e-9a53-0f6c2a1b9e44", "abc"} {
		if err := validTapName(hostlayout.TapName(id)); err != nil {
			t.Errorf("validTapName(TapName(%q)) = %v; want nil", id, err)
		}
	}
}

func TestListTaps(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	a, b, detached := tapName("aaaa00000001"), tapName("bbbb00000002"), tapName("cccc00000003")
	for _, n := range []string{b, a} {
		if err := nw.EnsureTap(ctx, n, n); err != nil {
			t.Fatalf("EnsureTap %s: %v", n, err)
		}
	}
	// A prefixed TAP someone left detached and down (listed, not ours),
	// and a TAP without our prefix, which must not be listed.
	for _, n := range []string{detached, "vmtap0"} {
		if err := tns.add(t, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: n}, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags}); err != nil {
			t.Fatalf("add %s: %v", n, err)
		}
	}
	t.Cleanup(func() { delLink(t, tns, "vmtap0"); delLink(t, tns, detached) })

	fd, err := tns.openTapLikeFirecracker(t, a)
	if err != nil {
		t.Fatalf("open %s like firecracker: %v", a, err)
	}
	defer unix.Close(fd)

	got, err := nw.ListTaps(ctx, hostlayout.TapPrefix)
	if err != nil {
		t.Fatalf("ListTaps: %v", err)
	}
	for i := range got {
		got[i].Index = 0
	}
	want := []Tap{
		{Name: a, IsTap: true, Master: "fcbr0", Attached: true, Up: true, InUse: true, Ours: true, VMID: a},
		{Name: b, IsTap: true, Master: "fcbr0", Attached: true, Up: true, Ours: true, VMID: b},
		{Name: detached, IsTap: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ListTaps =\n%+v\nwant\n%+v", got, want)
	}
}

// 100 create/delete cycles, four at a time, leave no TAP behind.
func TestTapChurn(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	const workers, rounds = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				name := tapName(fmt.Sprintf("%03x%08x", w, i))
				if err := nw.EnsureTap(ctx, name, name); err != nil {
					errs <- err
					continue
				}
				if err := nw.DeleteTap(ctx, name); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix after churn = %d; want 0", n)
	}
}

func mustLink(t testing.TB, tns *testNS, name string) netlink.Link {
	t.Helper()
	l, err := tns.h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// countPrefixed counts links with the TAP prefix, read from the kernel.
func countPrefixed(t testing.TB, tns *testNS) int {
	t.Helper()
	links, err := tns.h.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	n := 0
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, hostlayout.TapPrefix) {
			n++
		}
	}
	return n
}

// TestSetTapOwner: the TAP of a jailed VMM belongs to its uid and gid, the
// agent holds no queue afterwards, and only our TAP of that VM changes.
func TestSetTapOwner(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	id := "3f2a9c1e-77b0-4d1e-9a53-0f6c2a1b9e45"
	name := tapName(id)
	if err := nw.EnsureTap(ctx, name, id); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := nw.SetTapOwner(ctx, name, id, 2_130_000_001, 2_130_000_002); err != nil {
			t.Fatalf("SetTapOwner: %v", err)
		}
	}
	tt, ok := mustLink(t, tns, name).(*netlink.Tuntap)
	if !ok || tt.Owner != 2_130_000_001 || tt.Group != 2_130_000_002 {
		t.Fatalf("tap after SetTapOwner: %+v", mustLink(t, tns, name))
	}
	fd, err := tns.openTapLikeFirecracker(t, name)
	if err != nil {
		t.Fatalf("the agent still holds the tap: %v", err)
	}
	unix.Close(fd)
	if err := nw.SetTapOwner(ctx, tapName("0000aaaa-0000-0000-0000-000000000000"), "0000aaaa-0000-0000-0000-000000000000", 1, 1); !errors.Is(err, ErrNoTap) {
		t.Errorf("SetTapOwner of a missing tap: %v; want ErrNoTap", err)
	}
	if err := nw.SetTapOwner(ctx, name, "3f2a9c1e-77b0-4d1e-9a53-000000000000", 1, 1); !errors.Is(err, ErrNotOurs) {
		t.Errorf("SetTapOwner for another vm: %v; want ErrNotOurs", err)
	}
}
