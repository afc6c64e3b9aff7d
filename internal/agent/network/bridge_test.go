package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// assertBridge checks, by reading the kernel, that the bridge exists, is a
// bridge, is up, and carries exactly the addresses want.
func assertBridge(t *testing.T, tns *testNS, name string, want ...string) netlink.Link {
	t.Helper()
	link, err := tns.h.LinkByName(name)
	if err != nil {
		t.Fatalf("bridge %s: %v", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		t.Fatalf("link %s is a %s; want bridge", name, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge %s is not up", name)
	}
	addrs, err := tns.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("addresses of %s: %v", name, err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("addresses of %s = %v; want %v", name, got, want)
	}
	return link
}

// assertNAT checks that table ip nexus holds exactly one masquerade rule
// (subnet out of uplink) and the two forward accepts, decoded from the
// kernel's copy of the rules.
func assertNAT(t *testing.T, tns *testNS, subnet, bridge, uplink string) {
	t.Helper()
	if c := tns.nexusTableCount(t); c != 1 {
		t.Fatalf("nexus tables = %d; want 1", c)
	}
	chains, err := tns.nft(t).ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	hooks := map[string]string{}
	for _, c := range chains {
		if c.Table.Name == nftTable {
			hooks[c.Name] = string(c.Type)
			switch c.Name {
			case nftPostChain:
				if *c.Hooknum != *nftables.ChainHookPostrouting || *c.Priority != *nftables.ChainPriorityNATSource {
					t.Errorf("chain %s: hook %d priority %d; want postrouting/100", c.Name, *c.Hooknum, *c.Priority)
				}
			case nftFwdChain:
				if *c.Hooknum != *nftables.ChainHookForward || c.Policy == nil || *c.Policy != nftables.ChainPolicyAccept {
					t.Errorf("chain %s: hook %d policy %v; want forward, accept", c.Name, *c.Hooknum, c.Policy)
				}
			}
		}
	}
	if want := map[string]string{nftPostChain: "nat", nftFwdChain: "filter"}; !reflect.DeepEqual(hooks, want) {
		t.Errorf("chains of ip nexus = %v; want %v", hooks, want)
	}

	var post []parsedRule
	for _, r := range tns.chainRules(t, nftPostChain) {
		post = append(post, parseRule(r))
	}
	wantPost := []parsedRule{{Saddr: netip.MustParsePrefix(subnet), OIF: uplink, Masquerade: true}}
	if !reflect.DeepEqual(post, wantPost) {
		t.Errorf("postrouting rules = %+v; want %+v", post, wantPost)
	}
	var fwd []parsedRule
	for _, r := range tns.chainRules(t, nftFwdChain) {
		fwd = append(fwd, parseRule(r))
	}
	wantFwd := []parsedRule{
		{IIF: bridge, OIF: uplink, Accept: true},
		{IIF: uplink, OIF: bridge, CtEstRel: true, Accept: true},
	}
	if !reflect.DeepEqual(fwd, wantFwd) {
		t.Errorf("forward rules = %+v; want %+v", fwd, wantFwd)
	}
}

func handles(rules []*nftables.Rule) []uint64 {
	var hs []uint64
	for _, r := range rules {
		hs = append(hs, r.Handle)
	}
	return hs
}

func TestEnsureBridge(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
	rootForward, _ := rootSnapshot()
	nw := newNet(t, tns, Config{})

	if got := nw.Backend(); got != NATNFTables {
		t.Fatalf("Backend() = %q; want nftables (this kernel has nf_tables)", got)
	}
	// A new namespace may inherit the host's setting: start from off.
	tns.writeForwarding(t, "0")

	br, err := nw.EnsureBridge(ctx)
	if err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	want := Bridge{Name: "fcbr0", Index: br.Index, Gateway: DefaultGateway,
		Subnet: netip.MustParsePrefix("172.20.0.0/16"), Uplink: "uplink0", NAT: NATNFTables}
	if br != want {
		t.Errorf("EnsureBridge = %+v; want %+v", br, want)
	}
	assertBridge(t, tns, "fcbr0", "172.20.0.1/16")
	if got := tns.readForwarding(t); got != "1" {
		t.Errorf("ip_forward in the namespace = %q; want 1", got)
	}
	assertNAT(t, tns, "172.20.0.0/16", "fcbr0", "uplink0")
	before := handles(tns.chainRules(t, nftPostChain))

	// Again: nothing duplicated, and nothing even rewritten.
	if _, err := nw.EnsureBridge(ctx); err != nil {
		t.Fatalf("EnsureBridge again: %v", err)
	}
	assertBridge(t, tns, "fcbr0", "172.20.0.1/16")
	assertNAT(t, tns, "172.20.0.0/16", "fcbr0", "uplink0")
	if after := handles(tns.chainRules(t, nftPostChain)); !slices.Equal(before, after) {
		t.Errorf("second EnsureBridge rewrote the rules: handles %v -> %v", before, after)
	}

	if after, _ := rootSnapshot(); after.IPForward != rootForward.IPForward {
		t.Errorf("root namespace ip_forward changed: %q -> %q", rootForward.IPForward, after.IPForward)
	}
}

// A new uplink (explicit, or the default route moved) replaces the rules:
// still exactly one masquerade rule, now out of the new uplink.
func TestEnsureBridgeUplinkChanges(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
	tns.addUplink(t, "uplink1", "10.98.0.2/24", false)

	if _, err := newNet(t, tns, Config{}).EnsureBridge(ctx); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	assertNAT(t, tns, "172.20.0.0/16", "fcbr0", "uplink0")

	br, err := newNet(t, tns, Config{Uplink: "uplink1"}).EnsureBridge(ctx)
	if err != nil {
		t.Fatalf("EnsureBridge with uplink1: %v", err)
	}
	if br.Uplink != "uplink1" {
		t.Errorf("Uplink = %q; want uplink1", br.Uplink)
	}
	assertNAT(t, tns, "172.20.0.0/16", "fcbr0", "uplink1")
}

// FC_UPLINK=none: bridge and forwarding, no NAT table; and a table an
// earlier configuration installed is removed.
func TestEnsureBridgeUplinkNone(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)

	if _, err := newNet(t, tns, Config{}).EnsureBridge(ctx); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	if c := tns.nexusTableCount(t); c != 1 {
		t.Fatalf("nexus tables after NAT setup = %d; want 1", c)
	}

	nw := newNet(t, tns, Config{Uplink: UplinkNone})
	if got := nw.Backend(); got != NATNone {
		t.Errorf("Backend() = %q; want none", got)
	}
	br, err := nw.EnsureBridge(ctx)
	if err != nil {
		t.Fatalf("EnsureBridge with FC_UPLINK=none: %v", err)
	}
	if br.Uplink != "" || br.NAT != NATNone {
		t.Errorf("EnsureBridge = %+v; want no uplink, NAT none", br)
	}
	assertBridge(t, tns, "fcbr0", "172.20.0.1/16")
	if c := tns.nexusTableCount(t); c != 0 {
		t.Errorf("nexus tables with FC_UPLINK=none = %d; want 0", c)
	}
	if got := tns.readForwarding(t); got != "1" {
		t.Errorf("ip_forward = %q; want 1", got)
	}
}

// An operator's bridge with its own address is used as it is: no second
// address, NAT for the operator's subnet.
func TestEnsureBridgeRespectsExistingAddress(t *testing.T) {
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "fcbr0"}}
	if err := tns.h.LinkAdd(br); err != nil {
		t.Fatalf("pre-create bridge: %v", err)
	}
	link, _ := tns.h.LinkByName("fcbr0")
	addr, _ := netlink.ParseAddr("10.50.0.1/24")
	if err := tns.h.AddrAdd(link, addr); err != nil {
		t.Fatalf("operator address: %v", err)
	}

	nw := newNet(t, tns, Config{})
	got, err := nw.EnsureBridge(context.Background())
	if err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	// The operator's bridge outlives our teardown.
	if _, err := nw.Teardown(context.Background(), true); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertBridge(t, tns, "fcbr0", "10.50.0.1/24")
	t.Cleanup(func() { delLink(t, tns, "fcbr0") }) // before nw's cleanup checks
	if _, err := nw.EnsureBridge(context.Background()); err != nil {
		t.Fatalf("EnsureBridge again: %v", err)
	}
	if want := netip.MustParsePrefix("10.50.0.1/24"); got.Gateway != want || got.Subnet != want.Masked() {
		t.Errorf("Gateway, Subnet = %s, %s; want %s, %s", got.Gateway, got.Subnet, want, want.Masked())
	}
	assertBridge(t, tns, "fcbr0", "10.50.0.1/24")
	assertNAT(t, tns, "10.50.0.0/24", "fcbr0", "uplink0")
}

func TestEnsureBridgeErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("bridge name taken by a veth", func(t *testing.T) {
		tns := newTestNS(t)
		tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
		if err := tns.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fcbr0"}, PeerName: "fcbr0p"}); err != nil {
			t.Fatalf("veth: %v", err)
		}
		nw := newNet(t, tns, Config{})
		t.Cleanup(func() { delLink(t, tns, "fcbr0") }) // before nw's cleanup, which would refuse it
		_, err := nw.EnsureBridge(ctx)
		if !errors.Is(err, ErrLinkConflict) {
			t.Fatalf("EnsureBridge = %v; want ErrLinkConflict", err)
		}
		if l, err := tns.h.LinkByName("fcbr0"); err != nil || l.Type() != "veth" {
			t.Errorf("the veth was touched: %v, %v", l, err)
		}
	})
	t.Run("no default route", func(t *testing.T) {
		tns := newTestNS(t)
		_, err := newNet(t, tns, Config{}).EnsureBridge(ctx)
		if !errors.Is(err, ErrNoUplink) {
			t.Fatalf("EnsureBridge = %v; want ErrNoUplink", err)
		}
	})
	t.Run("missing explicit uplink", func(t *testing.T) {
		tns := newTestNS(t)
		_, err := newNet(t, tns, Config{Uplink: "nosuch0"}).EnsureBridge(ctx)
		if err == nil {
			t.Fatal("EnsureBridge with a missing uplink succeeded")
		}
		t.Logf("error: %v", err)
	})
	t.Run("iptables backend without iptables", func(t *testing.T) {
		tns := newTestNS(t)
		_, err := New(Config{Owner: testOwner, NAT: NATIptables, IptablesPath: "/nonexistent/iptables", NetNS: tns.ns}, nil)
		if !errors.Is(err, ErrNoNATBackend) {
			t.Fatalf("New = %v; want ErrNoNATBackend", err)
		}
	})
}

// RemoveNAT and Teardown on a clean namespace are no-ops, twice.
func TestRemoveNothing(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	nw := newNet(t, tns, Config{})
	for range 2 {
		if err := nw.RemoveNAT(ctx); err != nil {
			t.Errorf("RemoveNAT: %v", err)
		}
		if _, err := nw.Teardown(ctx, true); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	}
}

// Teardown without the bridge removes NAT and TAPs, keeps the bridge.
func TestTeardownKeepsBridge(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)
	nw := newNet(t, tns, Config{})
	if _, err := nw.EnsureBridge(ctx); err != nil {
		t.Fatalf("EnsureBridge: %v", err)
	}
	if err := nw.EnsureTap(ctx, tapName("7e57ab1e0001"), tapName("7e57ab1e0001")); err != nil {
		t.Fatalf("EnsureTap: %v", err)
	}
	if _, err := nw.Teardown(ctx, false); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertBridge(t, tns, "fcbr0", "172.20.0.1/16")
	if c := tns.nexusTableCount(t); c != 0 {
		t.Errorf("nexus tables = %d; want 0", c)
	}
	if _, err := tns.h.LinkByName(tapName("7e57ab1e0001")); !isNotFound(err) {
		t.Errorf("tap after Teardown: %v; want not found", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{}, nil); err == nil || !strings.Contains(err.Error(), "owner") {
		t.Errorf("New without an owner = %v; want an owner error", err)
	}
	for name, cfg := range map[string]Config{
		"owner with a slash": {Owner: "a/b"},
		"long owner":         {Owner: strings.Repeat("o", 65)},
		"long bridge name":   {Bridge: "a-very-long-bridge-name"},
		"ipv6 gateway":       {Gateway: netip.MustParsePrefix("fd00::1/64")},
		"network as gateway": {Gateway: netip.MustParsePrefix("172.20.0.0/16")},
		"/31 gateway":        {Gateway: netip.MustParsePrefix("172.20.0.1/31")},
		"uplink is bridge":   {Uplink: "fcbr0"},
		"unknown backend":    {NAT: "pf"},
	} {
		if cfg.Owner == "" {
			cfg.Owner = testOwner
		}
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("New(%s) succeeded; want an error", name)
		}
	}
}

func delLink(t *testing.T, tns *testNS, name string) {
	t.Helper()
	if l, err := tns.h.LinkByName(name); err == nil {
		if err := tns.h.LinkDel(l); err != nil {
			t.Errorf("delete %s: %v", name, err)
		}
	}
}
