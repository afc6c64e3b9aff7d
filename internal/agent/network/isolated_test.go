package network

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

func isoConfig(t *testing.T, id, host string) Isolated {
	return Isolated{VMID: id, NSPath: filepath.Join(t.TempDir(), "netns"), Tap: tapName(id),
		HostAddr: netip.MustParseAddr(host), Guest: netip.MustParseAddr("192.168.127.2"), GuestGateway: mustPrefix("192.168.127.1/30")}
}

// TestIsolated: EnsureIsolated makes the namespace (mounted at NSPath),
// the marked veth on the bridge with its peer eth0 holding the VM's
// address, the marked TAP inside with the guest's gateway and the
// translation table; a second call changes nothing; DeleteIsolated
// removes it all; a foreign link with the veth's name is left alone.
func TestIsolated(t *testing.T) {
	tns, nw := readyNet(t)
	ctx := context.Background()
	c := isoConfig(t, "vm-iso-1", "172.20.0.9")
	for range 2 {
		if err := nw.EnsureIsolated(ctx, c); err != nil {
			t.Fatalf("EnsureIsolated: %v", err)
		}
	}
	veth, err := tns.h.LinkByName(hostlayout.VethName(c.VMID))
	if err != nil || veth.Attrs().Alias != "nexus/"+nw.cfg.Owner+"/veth/"+c.VMID || veth.Attrs().MasterIndex == 0 {
		t.Fatalf("veth = %+v, %v; want a marked bridge port", veth, err)
	}
	ns, err := netns.GetFromPath(c.NSPath)
	if err != nil {
		t.Fatalf("namespace: %v", err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	addrOf := func(name string) string {
		l, err := nh.LinkByName(name)
		if err != nil {
			t.Fatalf("%s in namespace: %v", name, err)
		}
		as, _ := nh.AddrList(l, netlink.FAMILY_V4)
		var out []string
		for _, a := range as {
			out = append(out, a.IPNet.String())
		}
		return strings.Join(out, ",")
	}
	if got := addrOf(IsolatedUplink); got != "172.20.0.9/16" {
		t.Fatalf("eth0 addresses = %s; want 172.20.0.9/16", got)
	}
	if got := addrOf(c.Tap); got != "192.168.127.1/30" {
		t.Fatalf("tap addresses = %s; want 192.168.127.1/30", got)
	}
	if _, err := tns.h.LinkByName(c.Tap); err == nil {
		t.Fatalf("tap %s is in the host namespace", c.Tap)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil || len(tables) != 1 || tables[0].Name != isoTable {
		t.Fatalf("namespace tables = %v, %v; want %s", tables, err, isoTable)
	}
	veths, err := nw.ListVeths(ctx)
	if err != nil || len(veths) != 1 || veths[0].VMID != c.VMID || !veths[0].Attached {
		t.Fatalf("ListVeths = %+v, %v", veths, err)
	}
	if tap, ok := nw.IsolatedTap(c.NSPath, c.Tap, c.VMID); !ok || !tap.Up {
		t.Fatalf("IsolatedTap = %+v, %v", tap, ok)
	}

	// A guest network that overlaps the bridge's is refused, nothing made.
	bad := isoConfig(t, "vm-iso-2", "172.20.0.10")
	bad.Guest, bad.GuestGateway = netip.MustParseAddr("172.20.0.2"), mustPrefix("172.20.0.1/16")
	if err := nw.EnsureIsolated(ctx, bad); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("overlapping guest network: %v", err)
	}

	if err := nw.DeleteIsolated(ctx, c.VMID, c.NSPath); err != nil {
		t.Fatal(err)
	}
	if _, err := tns.h.LinkByName(hostlayout.VethName(c.VMID)); err == nil {
		t.Fatal("veth left")
	}
	if _, err := os.Stat(c.NSPath); !os.IsNotExist(err) {
		t.Fatalf("namespace file left: %v", err)
	}
	if err := nw.DeleteIsolated(ctx, c.VMID, c.NSPath); err != nil {
		t.Fatalf("second DeleteIsolated: %v", err)
	}

	// Not ours: a veth with the name, without the mark.
	foreign := isoConfig(t, "vm-iso-3", "172.20.0.11")
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostlayout.VethName(foreign.VMID)}, PeerName: "vhx-peer"}
	if err := tns.add(t, v); err != nil {
		t.Fatal(err)
	}
	if err := nw.EnsureIsolated(ctx, foreign); !errors.Is(err, ErrLinkConflict) {
		t.Fatalf("EnsureIsolated over a foreign veth = %v; want ErrLinkConflict", err)
	}
	if err := nw.DeleteIsolated(ctx, foreign.VMID, foreign.NSPath); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("DeleteIsolated of a foreign veth = %v; want ErrNotOurs and the link kept", err)
	}
	_ = tns.h.LinkDel(v)
}

// TestIsolatedTeardown: what nexus down does removes isolated VMs'
// namespaces (from the run dirs) and veths.
func TestIsolatedTeardown(t *testing.T) {
	tns, nw := readyNet(t)
	ctx := context.Background()
	l := hostlayout.Layout{RunDir: t.TempDir()}
	c := isoConfig(t, "0000beef-0000-4000-8000-000000000009", "172.20.0.19")
	c.NSPath = l.NetNSPath(c.VMID)
	if err := os.MkdirAll(l.VMDir(c.VMID), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := nw.EnsureIsolated(ctx, c); err != nil {
		t.Fatal(err)
	}
	removed, err := nw.RemoveIsolated(ctx, l)
	if err != nil || len(removed) != 1 {
		t.Fatalf("RemoveIsolated = %v, %v", removed, err)
	}
	if _, err := os.Stat(c.NSPath); !os.IsNotExist(err) {
		t.Fatalf("namespace left: %v", err)
	}
	// A veth whose namespace is gone already goes with Teardown.
	c2 := isoConfig(t, "0000beef-0000-4000-8000-000000000010", "172.20.0.20")
	if err := nw.EnsureIsolated(ctx, c2); err != nil {
		t.Fatal(err)
	}
	if _, err := nw.Teardown(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := tns.h.LinkByName(hostlayout.VethName(c2.VMID)); err == nil {
		t.Fatal("veth left after Teardown")
	}
	_ = removeNetNS(c2.NSPath)
	tns.assertClean(t, nw)
}

// An EnsureIsolated of a VM's network that fails part way (here its
// namespace's eth0 was renamed by hand) leaves the veth and namespace it
// found, as a running VM needs them; it removes only what it made.
func TestEnsureIsolatedFailureKeepsWhatWasThere(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	c := isoConfig(t, "g1000000000", "172.20.0.50")
	t.Cleanup(func() { _ = nw.DeleteIsolated(ctx, c.VMID, c.NSPath) })
	if err := nw.EnsureIsolated(ctx, c); err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(c.NSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	up, err := nh.LinkByName(IsolatedUplink)
	if err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetDown(up); err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetName(up, "renamed0"); err != nil {
		t.Fatal(err)
	}
	if err := nw.EnsureIsolated(ctx, c); err == nil {
		t.Fatal("EnsureIsolated without eth0 in the namespace succeeded; want an error")
	}
	if _, err := tns.h.LinkByName(hostlayout.VethName(c.VMID)); err != nil {
		t.Errorf("the veth that was there is gone after a failed ensure: %v", err)
	}
	if !isNetNS(c.NSPath) {
		t.Errorf("the namespace that was there is gone after a failed ensure")
	}
}
