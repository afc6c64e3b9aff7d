package network

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ipForwardPath is per network namespace: it shows the namespace of the
// thread that opens it.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Bridge describes the bridge as EnsureBridge left it.
type Bridge struct {
	Name  string
	Index int
	// Gateway is the host's address on the bridge: Config.Gateway, or the
	// operator's address when the bridge already had one.
	Gateway netip.Prefix
	// Subnet is Gateway masked: the VM subnet that NAT covers.
	Subnet netip.Prefix
	// Uplink is the interface NAT masquerades out of; "" without NAT.
	Uplink string
	NAT    NATBackend
}

// EnsureBridge makes the host ready for TAPs: the bridge exists and is up,
// carries the gateway address, IPv4 forwarding is on, and (unless the
// backend is none) the VM subnet is masqueraded out of the uplink. It only
// changes what differs, so calling it before every TAP is cheap and safe.
func (n *Network) EnsureBridge(ctx context.Context) (Bridge, error) {
	n.bridgeMu.Lock()
	defer n.bridgeMu.Unlock()

	name := n.cfg.Bridge
	wrap := func(step string, err error) error {
		return fmt.Errorf("ensure bridge %s: %s: %w", name, step, err)
	}
	if err := ctxErr(ctx); err != nil {
		return Bridge{}, wrap("start", err)
	}
	link, err := n.ensureBridgeLink()
	if err != nil {
		return Bridge{}, wrap("create", err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := n.h.LinkSetUp(link); err != nil {
			return Bridge{}, wrap("set up", err)
		}
	}
	gw, err := n.ensureGateway(link)
	if err != nil {
		// A bridge of ours without an address serves nothing: a bridge we
		// have only just made goes again, so a refused start leaves no trace.
		if errors.Is(err, ErrSubnetInUse) && link.Attrs().Alias == n.bridgeMark() && len(n.portsOf(link)) == 0 {
			_ = n.h.LinkDel(link)
		}
		return Bridge{}, wrap("address", err)
	}
	br := Bridge{Name: name, Index: link.Attrs().Index, Gateway: gw, Subnet: gw.Masked(), NAT: n.backend}
	n.bridgeIndex.Store(int32(br.Index)) // what a TAP attaches to (addTap)

	if err := ctxErr(ctx); err != nil {
		return br, wrap("forwarding", err)
	}
	if err := n.ensureForwarding(); err != nil {
		return br, wrap("enable ipv4 forwarding", err)
	}

	if err := ctxErr(ctx); err != nil {
		return br, wrap("nat", err)
	}
	if n.backend == NATNone {
		// Configuration says no NAT: remove what an earlier run installed so
		// the host matches it. This bridge's nft table only; iptables
		// leftovers need RemoveNAT (running iptables on every call is not
		// worth it).
		if _, err := n.removeNFTables(); err != nil && !errors.Is(err, errNFTablesUnavailable) {
			return br, wrap("remove stale nat table", err)
		}
		return br, nil
	}
	uplink, err := n.uplink()
	if err != nil {
		return br, wrap("find uplink", err)
	}
	br.Uplink = uplink
	rules := natRules{subnet: br.Subnet, bridge: name, uplink: uplink}
	switch n.backend {
	case NATNFTables:
		err = n.installNFTables(rules)
	case NATIptables:
		err = n.installIptables(ctx, rules)
	}
	if err != nil {
		return br, wrap(fmt.Sprintf("install %s nat %s via %s", n.backend, br.Subnet, uplink), err)
	}
	return br, nil
}

// ensureBridgeLink returns the bridge, creating it (with our mark) if
// missing. A link of that name that is not a bridge, or a bridge another
// agent marked, is a conflict we do not resolve. An unmarked bridge is the
// operator's: we use it but never delete it.
func (n *Network) ensureBridgeLink() (netlink.Link, error) {
	name := n.cfg.Bridge
	link, err := n.h.LinkByName(name)
	if err == nil {
		return n.checkBridgeLink(link)
	}
	if !isNotFound(err) {
		return nil, fmt.Errorf("look up: %w", err)
	}
	// A fixed MAC keeps the gateway's MAC stable for the guests: without
	// one the bridge takes the lowest MAC of its ports, which changes as
	// TAPs come and go and leaves stale ARP entries in every guest.
	mac, err := randomMAC()
	if err != nil {
		return nil, err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}}
	if err := n.h.LinkAdd(br); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// Someone else created it since our lookup: theirs, not ours.
			return n.ensureBridgeLinkExisting()
		}
		return nil, fmt.Errorf("add link: %w", err)
	}
	link, err = n.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up after add: %w", err)
	}
	// The kernel takes no alias in the creating request; the mark follows
	// at once. A crash in between leaves an unmarked bridge, which we then
	// treat as an operator's: used, never deleted.
	if err := n.h.LinkSetAlias(link, n.bridgeMark()); err != nil {
		return nil, fmt.Errorf("set mark: %w", err)
	}
	link.Attrs().Alias = n.bridgeMark()
	n.log.Info("created bridge", "bridge", name, "mac", mac.String(), "mark", n.bridgeMark())
	return link, nil
}

func (n *Network) ensureBridgeLinkExisting() (netlink.Link, error) {
	link, err := n.h.LinkByName(n.cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("look up: %w", err)
	}
	return n.checkBridgeLink(link)
}

// checkBridgeLink accepts a bridge that is ours or unmarked (an operator's).
func (n *Network) checkBridgeLink(link netlink.Link) (netlink.Link, error) {
	name := n.cfg.Bridge
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("%w: %s is a %s, not a bridge; remove it or set FC_BRIDGE to another name",
			ErrLinkConflict, name, link.Type())
	}
	if alias := link.Attrs().Alias; alias != n.bridgeMark() {
		if _, marked := parseMark(alias); marked {
			return nil, fmt.Errorf("%w: bridge %s belongs to %s; set FC_BRIDGE to another name",
				ErrLinkConflict, name, describeOwner(alias))
		}
	}
	return link, nil
}

// ensureGateway returns the bridge's IPv4 address, adding Config.Gateway
// only when the bridge has none: an operator's own address is respected.
func (n *Network) ensureGateway(link netlink.Link) (netip.Prefix, error) {
	addrs, err := n.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list addresses: %w", err)
	}
	var have []netip.Prefix
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok {
			if p == n.cfg.Gateway {
				return p, nil
			}
			have = append(have, p)
		}
	}
	if len(have) > 0 {
		n.log.Info("bridge already has an IPv4 address; using it instead of the configured gateway",
			"bridge", n.cfg.Bridge, "address", have[0].String(), "configured", n.cfg.Gateway.String())
		return have[0], nil
	}
	gw := n.cfg.Gateway
	// Two bridges with one subnet (two `nexus up` on their defaults) would
	// fight over the routes and each other's guests: refuse, and say how.
	all, err := n.h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range all {
		p, ok := prefixFromIPNet(a.IPNet)
		if !ok || a.LinkIndex == link.Attrs().Index || !p.Masked().Overlaps(gw.Masked()) {
			continue
		}
		owner := fmt.Sprintf("link %d", a.LinkIndex)
		if l, err := n.h.LinkByIndex(a.LinkIndex); err == nil {
			owner = l.Attrs().Name
		}
		return netip.Prefix{}, fmt.Errorf("%w: %s overlaps %s on %s; set FC_BRIDGE_CIDR to a free subnet (for example 172.21.0.1/16)",
			ErrSubnetInUse, gw.Masked(), p, owner)
	}
	ipnet := &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), 32)}
	if err := n.h.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil && !errors.Is(err, unix.EEXIST) {
		return netip.Prefix{}, fmt.Errorf("add %s: %w", gw, err)
	}
	n.log.Info("added gateway address to bridge", "bridge", n.cfg.Bridge, "address", gw.String())
	return gw, nil
}

// bridgeSubnet is the subnet of the bridge's first IPv4 address, or the
// configured gateway's when the bridge has none or is gone.
func (n *Network) bridgeSubnet() netip.Prefix {
	if link, err := n.h.LinkByName(n.cfg.Bridge); err == nil {
		if addrs, err := n.h.AddrList(link, netlink.FAMILY_V4); err == nil {
			for _, a := range addrs {
				if p, ok := prefixFromIPNet(a.IPNet); ok {
					return p.Masked()
				}
			}
		}
	}
	return n.cfg.Gateway.Masked()
}

// ensureForwarding turns on net.ipv4.ip_forward in our namespace. Turning it
// on also sets every interface's forwarding flag; we never turn it off, as
// other software on the host may rely on it.
func (n *Network) ensureForwarding() error {
	return n.inNS(func() error {
		b, err := os.ReadFile(ipForwardPath)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == "1" {
			return nil
		}
		if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
			return err
		}
		n.log.Info("enabled IPv4 forwarding", "sysctl", "net.ipv4.ip_forward")
		return nil
	})
}

// uplink is Config.Uplink, or the interface of the IPv4 default route with
// the lowest metric. It is looked up each time: DHCP or a VPN may move it.
func (n *Network) uplink() (string, error) {
	if n.cfg.Uplink != "" {
		if _, err := n.h.LinkByName(n.cfg.Uplink); err != nil {
			return "", fmt.Errorf("uplink %s (FC_UPLINK): %w", n.cfg.Uplink, err)
		}
		return n.cfg.Uplink, nil
	}
	var routes []netlink.Route
	err := retryDump(func() (err error) {
		routes, err = n.h.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	best, bestPrio := 0, -1
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx != 0 && (bestPrio < 0 || r.Priority < bestPrio) {
			best, bestPrio = idx, r.Priority
		}
	}
	if best == 0 {
		return "", fmt.Errorf("%w: set FC_UPLINK to the interface, or FC_UPLINK=none to run without NAT", ErrNoUplink)
	}
	link, err := n.h.LinkByIndex(best)
	if err != nil {
		return "", fmt.Errorf("default route's link %d: %w", best, err)
	}
	name := link.Attrs().Name
	if name == n.cfg.Bridge {
		return "", fmt.Errorf("%w: the default route goes through the bridge %s itself; set FC_UPLINK", ErrNoUplink, name)
	}
	return name, nil
}

// RemoveNAT removes the NAT this agent's bridge may have: the nft table
// "ip nexus-<bridge>", iptables rules commented "nexus:<bridge>" when an
// iptables binary exists, and what an earlier Nexus version installed for
// this bridge (legacy.go). Nothing to remove is success; other bridges'
// NAT is never touched.
func (n *Network) RemoveNAT(ctx context.Context) error {
	n.bridgeMu.Lock()
	defer n.bridgeMu.Unlock()
	return n.removeNATLocked(ctx, func(string) {})
}

// removeNATLocked removes our NAT objects and tells note what it removed.
func (n *Network) removeNATLocked(ctx context.Context, note func(string)) error {
	if err := ctxErr(ctx); err != nil {
		return fmt.Errorf("remove nat: %w", err)
	}
	var errs []error
	if gone, err := n.removeNFTables(); err != nil && !errors.Is(err, errNFTablesUnavailable) {
		errs = append(errs, fmt.Errorf("remove nat: nft table ip %s: %w", n.nftTableName(), err))
	} else if gone {
		note("nft table ip " + n.nftTableName())
	}
	if gone, err := n.removeLegacyNFTables(); err != nil && !errors.Is(err, errNFTablesUnavailable) {
		errs = append(errs, fmt.Errorf("remove nat: legacy nft table ip %s: %w", legacyNFTTable, err))
	} else if gone {
		note("nft table ip " + legacyNFTTable + " (from an earlier Nexus version, for this bridge)")
	}
	if n.iptablesPresent() {
		count, err := n.removeIptables(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove nat: iptables: %w", err))
		}
		if count > 0 {
			note(fmt.Sprintf("%d iptables rules", count))
		}
	}
	return errors.Join(errs...)
}

// deleteWidth bounds the link deletions Teardown and RemoveIsolated have
// under way at once.
const deleteWidth = 32

// atOnce runs fn(0) … fn(count-1), up to deleteWidth at a time, so that
// the link deletions they make go in batches (linkdelete.go), and returns
// their errors by index.
func atOnce(count int, fn func(i int) error) []error {
	errs := make([]error, count)
	var wg sync.WaitGroup
	slots := make(chan struct{}, deleteWidth)
	for i := range count {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			errs[i] = fn(i)
		})
	}
	wg.Wait()
	return errs
}

// Teardown undoes what this agent did to the host, for `nexus down`, tests
// and an operator removing Nexus: it deletes the TAPs that carry our mark
// (running VMs lose their network), removes our NAT, and with removeBridge
// deletes the bridge if we created it (it carries our mark) and nothing
// but our TAPs is attached to it. Unmarked links, other agents' links and
// an operator's bridge are left alone. IPv4 forwarding is left on (see
// ensureForwarding). It returns what it removed, in words.
func (n *Network) Teardown(ctx context.Context, removeBridge bool) ([]string, error) {
	n.bridgeMu.Lock()
	defer n.bridgeMu.Unlock()
	n.bridgeIndex.Store(0) // looked up again by the next TAP

	var removed []string
	note := func(s string) { removed = append(removed, s) }
	var errs []error
	taps, err := n.ListTaps(ctx, "")
	if err != nil {
		errs = append(errs, fmt.Errorf("teardown: %w", err))
	}
	// Several at a time (atOnce); the list of what went keeps ListTaps'
	// order.
	taps = slices.DeleteFunc(taps, func(t Tap) bool { return !t.Ours })
	for i, err := range atOnce(len(taps), func(i int) error { return n.DeleteTap(ctx, taps[i].Name) }) {
		if err != nil {
			errs = append(errs, fmt.Errorf("teardown: %w", err))
			continue
		}
		note("tap " + taps[i].Name)
	}
	// Isolated VMs' veths (their namespaces are in the run dirs:
	// RemoveIsolated).
	veths, err := n.ListVeths(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("teardown: %w", err))
	}
	for i, err := range atOnce(len(veths), func(i int) error { return n.deleteIsolatedLocked(veths[i].VMID, "", true, false) }) {
		if err != nil {
			errs = append(errs, fmt.Errorf("teardown: %w", err))
			continue
		}
		note("veth " + veths[i].Name)
	}
	if err := n.removeNATLocked(ctx, note); err != nil {
		errs = append(errs, fmt.Errorf("teardown: %w", err))
	}
	if removeBridge {
		if gone, err := n.deleteBridge(ctx); err != nil {
			errs = append(errs, fmt.Errorf("teardown: %w", err))
		} else if gone {
			note("bridge " + n.cfg.Bridge)
		}
	}
	return removed, errors.Join(errs...)
}

// ErrBridgeInUse: the bridge is ours but links that are not our TAPs are
// attached to it; deleting it would cut them off, so it stays.
var ErrBridgeInUse = errors.New("bridge has ports that are not this agent's")

func (n *Network) deleteBridge(ctx context.Context) (bool, error) {
	name := n.cfg.Bridge
	if err := ctxErr(ctx); err != nil {
		return false, fmt.Errorf("delete bridge %s: %w", name, err)
	}
	link, err := n.h.LinkByName(name)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete bridge %s: look up: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return false, fmt.Errorf("delete bridge %s: %w: it is a %s; left alone", name, ErrLinkConflict, link.Type())
	}
	if link.Attrs().Alias != n.bridgeMark() {
		n.log.Info("bridge was not created by this agent; left in place", "bridge", name, "alias", link.Attrs().Alias)
		return false, nil
	}
	ports := n.portsOf(link)
	if ports == nil {
		return false, fmt.Errorf("delete bridge %s: cannot list its ports", name)
	}
	var foreign []string
	for _, l := range ports {
		if m, ok := parseMark(l.Attrs().Alias); ok && m.owner == n.cfg.Owner {
			continue
		}
		foreign = append(foreign, l.Attrs().Name)
	}
	if len(foreign) > 0 {
		return false, fmt.Errorf("delete bridge %s: %w: %s; left in place (detach them, then run this again)",
			name, ErrBridgeInUse, strings.Join(foreign, ", "))
	}
	if err := n.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return false, fmt.Errorf("delete bridge %s: %w", name, err)
	}
	n.log.Info("deleted bridge", "bridge", name)
	return true, nil
}

// portsOf lists the links enslaved to br; nil when the list fails.
func (n *Network) portsOf(br netlink.Link) []netlink.Link {
	var links []netlink.Link
	if err := retryDump(func() (err error) { links, err = n.h.LinkList(); return err }); err != nil {
		return nil
	}
	ports := []netlink.Link{}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l)
		}
	}
	return ports
}

// isNotFound reports a missing link, as netlink reports it by name or index.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// retryDump retries a netlink dump that the kernel interrupted because the
// table changed under it (NLM_F_DUMP_INTR): the result would be incomplete.
func retryDump(f func() error) error {
	var err error
	for range 5 {
		if err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

func prefixFromIPNet(ipn *net.IPNet) (netip.Prefix, bool) {
	if ipn == nil {
		return netip.Prefix{}, false
	}
	ip4 := ipn.IP.To4()
	if ip4 == nil {
		return netip.Prefix{}, false
	}
	ones, bits := ipn.Mask.Size()
	if bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(ip4)), ones), true
}

// randomMAC is a random locally administered unicast MAC.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random mac: %w", err)
	}
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac, nil
}
