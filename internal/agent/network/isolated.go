package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// Isolated network mode: a VM's TAP lives in a network namespace of its
// own, bind-mounted in its run dir (hostlayout.NetNSPath), and its VMM is
// started inside it. A veth pair joins the namespace to the bridge: the
// host side ("vh-…", marked nexus/<owner>/veth/<vm-id>) is a bridge port,
// the namespace side ("eth0") holds the VM's own address of the bridge
// subnet (HostAddr: unique per VM, the address other hosts reach it at).
// Inside, the TAP holds the guest's gateway address; the guest keeps the
// same MAC and address in every clone, and the namespace translates:
// guest → HostAddr on the way out (then the bridge's NAT as for any VM),
// HostAddr → guest for TCP and UDP on the way in. ICMP to HostAddr is
// answered by the namespace itself (a guest need not run a network stack
// for its path to be checked). Nothing of it is shared between VMs, so
// clones of one snapshot never collide.

// IsolatedUplink is the namespace side of the veth.
const IsolatedUplink = "eth0"

// isoTable is the nf_tables table inside a VM's namespace (the namespace
// is ours entirely, and the table goes with it).
const isoTable = "nexus-iso"

// Isolated describes one VM's namespace.
type Isolated struct {
	VMID   string
	NSPath string // where the namespace is (to be) bind-mounted
	Tap    string // the VM's TAP, inside the namespace
	// HostAddr is the VM's address on the bridge (its host's subnet).
	HostAddr netip.Addr
	// Guest is the guest's address; GuestGateway the TAP's, with the
	// guest network's prefix length.
	Guest        netip.Addr
	GuestGateway netip.Prefix
}

func (n *Network) vethMark(vmID string) string { return markPrefix + n.cfg.Owner + "/veth/" + vmID }

// EnsureIsolated makes vmID's namespace, veth pair, TAP and translation
// exist as c says. Calling it again is a no-op. EnsureBridge must have
// run. A link named like the VM's veth that is not ours is a conflict,
// left alone; on failure, whatever this call made is removed again.
func (n *Network) EnsureIsolated(ctx context.Context, c Isolated) (err error) {
	veth := hostlayout.VethName(c.VMID)
	wrap := func(step string, err error) error {
		return fmt.Errorf("isolated network of vm %s: %s: %w", c.VMID, step, err)
	}
	if err := validVMID(c.VMID); err != nil {
		return wrap("validate", err)
	}
	if err := validTapName(c.Tap); err != nil {
		return wrap("validate", err)
	}
	if !c.HostAddr.Is4() || !c.Guest.Is4() || !c.GuestGateway.Addr().Is4() || !c.GuestGateway.Contains(c.Guest) {
		return wrap("validate", fmt.Errorf("%w: host %s, guest %s, gateway %s", ErrInvalidName, c.HostAddr, c.Guest, c.GuestGateway))
	}
	unlock := n.taps.Lock(veth)
	defer unlock()
	if err := ctxErr(ctx); err != nil {
		return wrap("start", err)
	}
	br, err := n.h.LinkByName(n.cfg.Bridge)
	if isNotFound(err) {
		return wrap("find bridge", fmt.Errorf("%w: run EnsureBridge first", ErrNoBridge))
	}
	if err != nil {
		return wrap("find bridge", err)
	}
	gw, err := n.bridgeAddr(br)
	if err != nil {
		return wrap("bridge address", err)
	}
	if gw.Contains(c.Guest) || c.GuestGateway.Contains(gw.Addr()) {
		return wrap("validate", fmt.Errorf("%w: the guest network %s overlaps the bridge's %s", ErrInvalidName, c.GuestGateway.Masked(), gw.Masked()))
	}
	if existing, err := n.h.LinkByName(veth); err == nil {
		if existing.Attrs().Alias != n.vethMark(c.VMID) {
			return wrap("existing link", fmt.Errorf("%w: %s belongs to %s; left alone", ErrLinkConflict, veth, describeOwner(existing.Attrs().Alias)))
		}
	} else if !isNotFound(err) {
		return wrap("look up veth", err)
	}

	madeNS, err := ensureNetNS(c.NSPath)
	if err != nil {
		return wrap("namespace", err)
	}
	// On failure, what this call made goes again; a veth or namespace
	// that was there before (a running VM's, ensured again) stays.
	madeVeth := false
	defer func() {
		if err != nil && (madeVeth || madeNS) {
			_ = n.deleteIsolatedLocked(c.VMID, c.NSPath, madeVeth, madeNS)
		}
	}()
	ns, err := netns.GetFromPath(c.NSPath)
	if err != nil {
		return wrap("open namespace", err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return wrap("netlink in namespace", err)
	}
	defer nh.Close()

	host, err := n.h.LinkByName(veth)
	if isNotFound(err) {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: IsolatedUplink, PeerNamespace: netlink.NsFd(int(ns))}
		if err := n.h.LinkAdd(v); err != nil {
			return wrap("add veth", err)
		}
		madeVeth = true
		if host, err = n.h.LinkByName(veth); err != nil {
			return wrap("look up veth", err)
		}
		// The mark first: a veth we made is never without it for longer
		// than this call.
		if err := n.h.LinkSetAlias(host, n.vethMark(c.VMID)); err != nil {
			return wrap("mark veth", err)
		}
	} else if err != nil {
		return wrap("look up veth", err)
	}
	// Ours, left in the delete group by an agent that died deleting it:
	// out of the group. Should that fail, the next batch's look at the
	// group takes it out; failing here would delete a veth this call did
	// not make (the cleanup below).
	if host.Attrs().Group == n.delGroup {
		_ = n.h.LinkSetGroup(host, 0)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := n.h.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			return wrap("attach veth", err)
		}
	}
	if err := n.h.LinkSetUp(host); err != nil {
		return wrap("veth up", err)
	}

	// Inside: lo, eth0 with the VM's bridge address and a default route
	// via the bridge, the TAP with the guest's gateway.
	if lo, err := nh.LinkByName("lo"); err == nil {
		_ = nh.LinkSetUp(lo)
	}
	up, err := nh.LinkByName(IsolatedUplink)
	if err != nil {
		return wrap("find "+IsolatedUplink+" in namespace", err)
	}
	if err := nh.AddrReplace(up, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(c.HostAddr, gw.Bits()))}); err != nil {
		return wrap("address "+IsolatedUplink, err)
	}
	if err := nh.LinkSetUp(up); err != nil {
		return wrap(IsolatedUplink+" up", err)
	}
	if err := nh.RouteReplace(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.IP(gw.Addr().AsSlice())}); err != nil {
		return wrap("default route", err)
	}
	tap, err := nh.LinkByName(c.Tap)
	if isNotFound(err) {
		t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: c.Tap}, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags | netlink.TUNTAP_TUN_EXCL}
		// A TAP is born in the namespace of the thread that opens
		// /dev/net/tun.
		if err := runInNS(ns, func() error { return noForkWhile(func() error { return nh.LinkAdd(t) }) }); err != nil {
			return wrap("add tap", err)
		}
		if tap, err = nh.LinkByName(c.Tap); err != nil {
			return wrap("look up tap", err)
		}
		if err := nh.LinkSetAlias(tap, n.tapMark(c.VMID)); err != nil {
			return wrap("mark tap", err)
		}
	} else if err != nil {
		return wrap("look up tap", err)
	}
	if err := nh.AddrReplace(tap, &netlink.Addr{IPNet: ipNet(c.GuestGateway)}); err != nil {
		return wrap("address tap", err)
	}
	if err := nh.LinkSetUp(tap); err != nil {
		return wrap("tap up", err)
	}
	if err := runInNS(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return wrap("enable forwarding", err)
	}
	if err := installIsoNAT(ns, c); err != nil {
		return wrap("translation", err)
	}
	return nil
}

// installIsoNAT writes the namespace's table, in nft syntax:
//
//	table ip nexus-iso {
//	  chain prerouting  { type nat hook prerouting priority dstnat;
//	    iifname "eth0" ip daddr HOST meta l4proto != icmp dnat to GUEST }
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr GUEST oifname "eth0" snat to HOST }
//	}
func installIsoNAT(ns netns.NsHandle, c Isolated) error {
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: isoTable}
	pre := &nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}
	post := &nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}
	host, guest := c.HostAddr.As4(), c.Guest.As4()
	conn.AddTable(t) // create-if-missing, so the delete cannot fail
	conn.DelTable(t)
	conn.AddTable(t)
	conn.AddChain(pre)
	conn.AddChain(post)
	conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(IsolatedUplink)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: host[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Immediate{Register: 1, Data: guest[:]},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}})
	conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: guest[:]},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(IsolatedUplink)},
		&expr.Immediate{Register: 1, Data: host[:]},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}})
	return conn.Flush()
}

// DeleteIsolated removes vmID's veth (if it carries our mark) and its
// namespace at nsPath (with the TAP and table inside); the VMM must be
// gone, or it keeps the namespace alive. Missing pieces are success; a
// veth of that name that is not ours is left alone (ErrNotOurs).
func (n *Network) DeleteIsolated(ctx context.Context, vmID, nsPath string) error {
	if err := validVMID(vmID); err != nil {
		return fmt.Errorf("delete isolated network of vm %s: %w", vmID, err)
	}
	unlock := n.taps.Lock(hostlayout.VethName(vmID))
	defer unlock()
	if err := ctxErr(ctx); err != nil {
		return fmt.Errorf("delete isolated network of vm %s: %w", vmID, err)
	}
	return n.deleteIsolatedLocked(vmID, nsPath, true, true)
}

// deleteIsolatedLocked deletes vmID's veth (if it carries our mark) and,
// with removeNS, unmounts and removes its namespace at nsPath.
func (n *Network) deleteIsolatedLocked(vmID, nsPath string, removeVeth, removeNS bool) error {
	veth := hostlayout.VethName(vmID)
	var errs []error
	if removeVeth {
		link, err := n.h.LinkByName(veth)
		switch {
		case isNotFound(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("look up %s: %w", veth, err))
		case link.Attrs().Alias != n.vethMark(vmID):
			errs = append(errs, fmt.Errorf("%w: %s belongs to %s; left alone", ErrNotOurs, veth, describeOwner(link.Attrs().Alias)))
		default:
			// Its peer in the namespace goes with it; with other
			// deletions under way, in their batch (linkdelete.go).
			if err := n.deleteLink(link); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", veth, err))
			}
		}
	}
	if removeNS {
		if err := removeNetNS(nsPath); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete isolated network of vm %s: %w", vmID, err)
	}
	return nil
}

// RemoveIsolated removes the namespace and veth of every isolated VM
// with a run dir in l (nexus down); their VMMs must be stopped first. It
// removes several at a time, so that their veths go in batches, and
// returns what it removed, in the run dirs' order.
func (n *Network) RemoveIsolated(ctx context.Context, l hostlayout.Layout) ([]string, error) {
	entries, err := os.ReadDir(l.VMsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("remove isolated networks: %w", err)
	}
	var ids []string
	for _, e := range entries {
		id := e.Name()
		if _, err := os.Lstat(l.NetNSPath(id)); err == nil && hostlayout.ValidVMID(id) {
			ids = append(ids, id)
		}
	}
	var removed []string
	var errs []error
	for i, err := range atOnce(len(ids), func(i int) error { return n.DeleteIsolated(ctx, ids[i], l.NetNSPath(ids[i])) }) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "network namespace and veth of vm "+ids[i])
	}
	return removed, errors.Join(errs...)
}

// ListVeths lists the host sides of isolated VMs' veths with this agent's
// mark ("vh-…"), as Taps: Ours and VMID set, Attached to our bridge.
func (n *Network) ListVeths(ctx context.Context) ([]Tap, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, fmt.Errorf("list veths: %w", err)
	}
	var links []netlink.Link
	if err := retryDump(func() (err error) { links, err = n.h.LinkList(); return err }); err != nil {
		return nil, fmt.Errorf("list veths: %w", err)
	}
	brIndex := 0
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); ok && l.Attrs().Name == n.cfg.Bridge {
			brIndex = l.Attrs().Index
		}
	}
	var out []Tap
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, hostlayout.VethPrefix) {
			continue
		}
		m, ok := parseMark(a.Alias)
		if !ok || m.owner != n.cfg.Owner || m.kind != "veth" {
			continue
		}
		out = append(out, Tap{Name: a.Name, Index: a.Index, Attached: brIndex != 0 && a.MasterIndex == brIndex,
			Up: a.Flags&net.FlagUp != 0, Ours: true, VMID: m.vmID})
	}
	return out, nil
}

// IsolatedTap reports the TAP named tap inside the namespace at nsPath;
// ok is false when there is no such namespace or TAP of ours.
func (n *Network) IsolatedTap(nsPath, tap, vmID string) (Tap, bool) {
	if !isNetNS(nsPath) {
		return Tap{}, false
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return Tap{}, false
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Tap{}, false
	}
	defer nh.Close()
	l, err := nh.LinkByName(tap)
	if err != nil || l.Attrs().Alias != n.tapMark(vmID) {
		return Tap{}, false
	}
	a := l.Attrs()
	return Tap{Name: a.Name, Index: a.Index, IsTap: true, Attached: true, Up: a.Flags&net.FlagUp != 0,
		InUse: a.RawFlags&unix.IFF_LOWER_UP != 0, Ours: true, VMID: vmID}, true
}

// bridgeAddr is the bridge's IPv4 address with its prefix length.
func (n *Network) bridgeAddr(br netlink.Link) (netip.Prefix, error) {
	addrs, err := n.h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("bridge %s has no IPv4 address", n.cfg.Bridge)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// isNetNS reports whether path is a mounted network namespace.
func isNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// ensureNetNS bind-mounts a new network namespace at path unless one is
// mounted there already; made says whether this call made it. The agent's
// own thread returns to its namespace afterwards.
func ensureNetNS(path string) (made bool, err error) {
	if isNetNS(path) {
		return false, nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return false, err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		merr := unix.Mount(src, path, "none", unix.MS_BIND, "")
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(merr, fmt.Errorf("leave new namespace: %w", err))
			return // still locked: the thread goes away with the goroutine
		}
		runtime.UnlockOSThread()
		if merr != nil {
			merr = fmt.Errorf("bind mount at %s: %w", path, merr)
		}
		errc <- merr
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return false, err
	}
	return true, nil
}

// removeNetNS unmounts the namespace at path and removes the file; the
// namespace itself ends with its last process.
func removeNetNS(path string) error {
	if isNetNS(path) {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
