package network

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestParseMark(t *testing.T) {
	for alias, want := range map[string]mark{
		"nexus/a1b2/bridge":              {owner: "a1b2", kind: "bridge"},
		"nexus/a1b2/vm/3f2a9c1e-77b0-4d": {owner: "a1b2", kind: "vm", vmID: "3f2a9c1e-77b0-4d"},
	} {
		got, ok := parseMark(alias)
		if !ok || got != want {
			t.Errorf("parseMark(%q) = %+v, %v; want %+v", alias, got, ok, want)
		}
	}
	for _, alias := range []string{"", "nexus", "nexus/", "nexus/a/b", "nexus/a/vm/", "nexus/a b/bridge",
		"nexus/a/vm/x/y", "docker0 bridge", "nexus//bridge"} {
		if m, ok := parseMark(alias); ok {
			t.Errorf("parseMark(%q) = %+v; want not a mark", alias, m)
		}
	}
}

// Links that are not ours — whatever their names — survive everything the
// agent does: EnsureTap, DeleteTap, Teardown with the bridge.
func TestForeignLinksLeftAlone(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	ours := tapName("0001aaaa0001")
	if err := nw.EnsureTap(ctx, ours, "vm-ours"); err != nil {
		t.Fatalf("EnsureTap: %v", err)
	}

	// A loose unmarked TAP; another agent's TAP on its own bridge, held
	// open by a process; and an unmarked TAP on that foreign bridge.
	loose, theirs, onForeign := tapName("0002bbbb0002"), tapName("0003cccc0003"), tapName("0004dddd0004")
	if err := tns.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "otherbr", Alias: "nexus/other/bridge"}}); err != nil {
		t.Fatalf("other bridge: %v", err)
	}
	other := mustLink(t, tns, "otherbr")
	for _, l := range []*netlink.Tuntap{
		{LinkAttrs: netlink.LinkAttrs{Name: loose}, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags},
		{LinkAttrs: netlink.LinkAttrs{Name: theirs, MasterIndex: other.Attrs().Index}, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags},
		{LinkAttrs: netlink.LinkAttrs{Name: onForeign, MasterIndex: other.Attrs().Index}, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags},
	} {
		if err := tns.add(t, l); err != nil {
			t.Fatalf("add %s: %v", l.Name, err)
		}
	}
	if err := tns.h.LinkSetAlias(mustLink(t, tns, theirs), "nexus/other/vm/theirs"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{theirs, onForeign} {
		if err := tns.h.LinkSetUp(mustLink(t, tns, n)); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := tns.openTapLikeFirecracker(t, theirs)
	if err != nil {
		t.Fatalf("hold %s open: %v", theirs, err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		for _, n := range []string{loose, theirs, onForeign, "otherbr"} {
			delLink(t, tns, n)
		}
	})
	// A foreign port on our own bridge.
	if err := tns.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "port0", MasterIndex: mustLink(t, tns, "fcbr0").Attrs().Index},
		PeerName: "port0p"}); err != nil {
		t.Fatalf("foreign port: %v", err)
	}
	snapshot := func() map[string]netlink.LinkAttrs {
		m := map[string]netlink.LinkAttrs{}
		for _, n := range []string{loose, theirs, onForeign, "otherbr", "port0"} {
			m[n] = *mustLink(t, tns, n).Attrs()
		}
		return m
	}
	before := snapshot()

	for _, n := range []string{loose, theirs, onForeign} {
		if err := nw.EnsureTap(ctx, n, "vm-x"); !errors.Is(err, ErrLinkConflict) {
			t.Errorf("EnsureTap(%s) = %v; want ErrLinkConflict", n, err)
		}
		if err := nw.DeleteTap(ctx, n); !errors.Is(err, ErrNotOurs) {
			t.Errorf("DeleteTap(%s) = %v; want ErrNotOurs", n, err)
		}
	}
	// Our own TAP, asked for by another VM id, is not handed over either.
	if err := nw.EnsureTap(ctx, ours, "vm-other"); !errors.Is(err, ErrLinkConflict) {
		t.Errorf("EnsureTap(ours, another vm) = %v; want ErrLinkConflict", err)
	}

	taps, err := nw.ListTaps(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var listedOurs []string
	for _, tp := range taps {
		if tp.Ours {
			listedOurs = append(listedOurs, tp.Name+"="+tp.VMID)
		}
	}
	if want := []string{ours + "=vm-ours"}; !slices.Equal(listedOurs, want) {
		t.Errorf("ours in ListTaps = %v; want %v", listedOurs, want)
	}

	// The bridge is ours but has a foreign port: it stays, and says why.
	_, err = nw.Teardown(ctx, true)
	if !errors.Is(err, ErrBridgeInUse) {
		t.Errorf("Teardown with a foreign port = %v; want ErrBridgeInUse", err)
	}
	if _, err := tns.h.LinkByName(ours); !isNotFound(err) {
		t.Errorf("our tap after Teardown: %v; want gone", err)
	}
	mustLink(t, tns, "fcbr0")
	after := snapshot()
	for n, b := range before {
		a := after[n]
		if a.Index != b.Index || a.MasterIndex != b.MasterIndex || a.Alias != b.Alias || a.Flags != b.Flags {
			t.Errorf("%s was touched: %+v -> %+v", n, b, a)
		}
	}
	delLink(t, tns, "port0")
	if _, err := nw.Teardown(ctx, true); err != nil {
		t.Errorf("Teardown once the port is gone: %v", err)
	}
	if _, err := tns.h.LinkByName("fcbr0"); !isNotFound(err) {
		t.Errorf("our bridge after Teardown: %v; want gone", err)
	}
}

// Two agents on one host (two `nexus up`): each with its own bridge and NAT
// table; each one's teardown — and FC_UPLINK=none — leaves the other's
// links and rules as they were.
func TestTwoAgentsCoexist(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
	a := newNet(t, tns, Config{Owner: "agenta", Bridge: "bra"})
	b := newNet(t, tns, Config{Owner: "agentb", Bridge: "brb", Gateway: mustPrefix("172.21.0.1/16")})
	for _, nw := range []*Network{a, b} {
		if _, err := nw.EnsureBridge(ctx); err != nil {
			t.Fatalf("EnsureBridge %s: %v", nw.BridgeName(), err)
		}
	}
	ta, tb := tapName("aaaa0000aaaa"), tapName("bbbb0000bbbb")
	if err := a.EnsureTap(ctx, ta, "vm-a"); err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureTap(ctx, tb, "vm-b"); err != nil {
		t.Fatal(err)
	}
	if got := tns.tableNames(t); !slices.Equal(got, []string{"nexus-bra", "nexus-brb"}) {
		t.Fatalf("nft tables = %v; want one per bridge", got)
	}
	// A second agent may not take over a bridge the first made.
	c := newNet(t, tns, Config{Owner: "agentc", Bridge: "bra", Uplink: UplinkNone})
	if _, err := c.EnsureBridge(ctx); !errors.Is(err, ErrLinkConflict) {
		t.Errorf("EnsureBridge on another agent's bridge = %v; want ErrLinkConflict", err)
	}

	// A third agent on its own bridge but a's subnet is refused: the two
	// bridges would fight over routes.
	d := newNet(t, tns, Config{Owner: "agentd", Bridge: "brd", Uplink: UplinkNone})
	if _, err := d.EnsureBridge(ctx); !errors.Is(err, ErrSubnetInUse) {
		t.Errorf("EnsureBridge on a used subnet = %v; want ErrSubnetInUse", err)
	}

	// a switches to FC_UPLINK=none: only its own table goes.
	aNone := newNet(t, tns, Config{Owner: "agenta", Bridge: "bra", Uplink: UplinkNone})
	if _, err := aNone.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tns.tableNames(t); !slices.Equal(got, []string{"nexus-brb"}) {
		t.Errorf("nft tables after a's FC_UPLINK=none = %v; want only b's", got)
	}
	if _, err := a.Teardown(ctx, true); err != nil {
		t.Fatalf("a's Teardown: %v", err)
	}
	if _, err := tns.h.LinkByName("bra"); !isNotFound(err) {
		t.Errorf("a's bridge after its teardown: %v", err)
	}
	mustLink(t, tns, "brb")
	if l := mustLink(t, tns, tb); l.Attrs().Alias != "nexus/agentb/vm/vm-b" {
		t.Errorf("b's tap alias = %q", l.Attrs().Alias)
	}
	if got := tns.tableNames(t); !slices.Equal(got, []string{"nexus-brb"}) {
		t.Errorf("nft tables after a's teardown = %v; want only b's", got)
	}
}

// A TAP left unmarked by an older agent version is adopted when the caller
// knows it is ours; marked or foreign-bridge TAPs are not.
func TestAdoptTap(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	old := tapName("01d0000001d0")
	br := mustLink(t, tns, "fcbr0")
	if err := tns.add(t, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: old, MasterIndex: br.Attrs().Index},
		Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags}); err != nil {
		t.Fatal(err)
	}
	ok, err := nw.AdoptTap(ctx, old, "vm-old")
	if err != nil || !ok {
		t.Fatalf("AdoptTap = %v, %v; want adopted", ok, err)
	}
	if got := mustLink(t, tns, old).Attrs().Alias; got != "nexus/"+testOwner+"/vm/vm-old" {
		t.Errorf("alias after adoption = %q", got)
	}
	if ok, err := nw.AdoptTap(ctx, old, "vm-other"); ok || err != nil {
		t.Errorf("AdoptTap of a marked tap = %v, %v; want left alone", ok, err)
	}
	if err := nw.EnsureTap(ctx, old, "vm-old"); err != nil {
		t.Errorf("EnsureTap of the adopted tap: %v", err)
	}
	if ok, err := nw.AdoptTap(ctx, tapName("404040404040"), "vm-gone"); ok || err != nil {
		t.Errorf("AdoptTap of a missing tap = %v, %v", ok, err)
	}
}

// The table every agent shared before ownership marks is removed only by
// the agent whose bridge its rules name.
func TestRemoveLegacyTable(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		bridge string
		gone   bool
	}{{"fcbr0", true}, {"otherbr", false}} {
		t.Run(tc.bridge, func(t *testing.T) {
			tns := newTestNS(t)
			tns.addLegacyTable(t, "fcbr0", "eth0")
			nw := newNet(t, tns, Config{Bridge: tc.bridge, Uplink: UplinkNone})
			if err := nw.RemoveNAT(ctx); err != nil {
				t.Fatalf("RemoveNAT: %v", err)
			}
			has := slices.Contains(tns.tableNames(t), legacyNFTTable)
			if has == tc.gone {
				t.Errorf("legacy table present = %v after RemoveNAT of %s; want %v", has, tc.bridge, !tc.gone)
			}
			if has {
				tns.deleteTable(t, legacyNFTTable)
			}
		})
	}
}

func (n *testNS) tableNames(tb testing.TB) []string {
	tb.Helper()
	tables, err := n.nft(tb).ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		tb.Fatalf("list nft tables: %v", err)
	}
	var names []string
	for _, t := range tables {
		names = append(names, t.Name)
	}
	slices.Sort(names)
	return names
}

func (n *testNS) deleteTable(tb testing.TB, name string) {
	tb.Helper()
	c := n.nft(tb)
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: name})
	if err := c.Flush(); err != nil {
		tb.Errorf("delete table %s: %v", name, err)
	}
}

// addLegacyTable installs "table ip nexus" as the previous version did:
// chains and comments naming bridge and uplink (the rule bodies do not
// matter to the removal, so they are plain accepts).
func (n *testNS) addLegacyTable(tb testing.TB, bridge, uplink string) {
	tb.Helper()
	c := n.nft(tb)
	tab := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: legacyNFTTable})
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: tab, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for _, r := range []struct {
		ch      *nftables.Chain
		comment string
	}{
		{post, "nexus: masquerade 172.20.0.0/16 out " + uplink},
		{fwd, "nexus: forward " + bridge + " to " + uplink},
		{fwd, "nexus: forward " + uplink + " to " + bridge + " established,related"},
	} {
		c.AddRule(&nftables.Rule{Table: tab, Chain: r.ch, Exprs: []expr.Any{&expr.Counter{}},
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
	}
	if err := c.Flush(); err != nil {
		tb.Fatalf("legacy table: %v", err)
	}
}
