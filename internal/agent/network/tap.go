package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// tapFlags are the flags firecracker opens its TAP with. Creating the device
// with the same ones (and without IFF_MULTI_QUEUE, which must match on every
// later TUNSETIFF) makes the persistent TAP attachable by firecracker.
const tapFlags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR

// Tap is one link with the TAP prefix, as ListTaps sees it.
type Tap struct {
	Name  string
	Index int
	// IsTap: a tuntap in TAP mode. A link with our prefix that is something
	// else is listed too, so inventory can report the conflict.
	IsTap bool
	// Master is the name of the link it is enslaved to, "" if none.
	Master string
	// Attached: enslaved to our bridge.
	Attached bool
	// Up: administratively up.
	Up bool
	// InUse: carrier is on, which for a TAP means a process (firecracker)
	// holds it open. The kernel shows carrier only while the link is up.
	InUse bool
	// Ours: the link carries this agent's mark (owner.go) and is not
	// enslaved to another bridge. Only such TAPs are ever changed or
	// deleted.
	Ours bool
	// VMID is the VM named in our mark, "" when not Ours.
	VMID string
}

// EnsureTap makes the persistent TAP name exist for vmID, marked as ours,
// not multi-queue, attached to the bridge and up, ready for firecracker to
// open. EnsureBridge must have run. Calling it again is a no-op. A link of
// that name that is not ours (no mark, another agent's mark, another VM's)
// or not a single-queue TAP is left alone and reported as ErrLinkConflict:
// deleting or taking over an unknown device is an operator's call.
func (n *Network) EnsureTap(ctx context.Context, name, vmID string) (err error) {
	wrap := func(step string, err error) error {
		return fmt.Errorf("create tap %s: %s: %w", name, step, err)
	}
	if err := validTapName(name); err != nil {
		return wrap("validate name", err)
	}
	if err := validVMID(vmID); err != nil {
		return wrap("validate vm id", err)
	}
	unlock := n.taps.Lock(name)
	defer unlock()
	if err := ctxErr(ctx); err != nil {
		return wrap("start", err)
	}
	// The usual case first: no link of that name yet.
	if added, err := n.addTap(name, vmID); added || err != nil {
		return err
	}

	// It exists: check it is ours, then make it so.
	br, err := n.bridge()
	if err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}

	link, err := n.h.LinkByName(name)
	switch {
	case isNotFound(err):
		// Gone since addTap met it: made as addTap makes it, once.
		if added, err := n.addTap(name, vmID); added || err != nil {
			return err
		}
		return wrap("add", fmt.Errorf("%w: a link named %s keeps coming and going; left alone", ErrLinkConflict, name))
	case err != nil:
		return wrap("look up", err)
	default:
		if err := checkTap(link); err != nil {
			return wrap("existing link", err)
		}
		if alias := link.Attrs().Alias; alias != n.tapMark(vmID) {
			return wrap("existing link", fmt.Errorf("%w: %s belongs to %s; left alone (remove or rename it to let the agent create its TAP)",
				ErrLinkConflict, name, n.describeTapOwner(alias)))
		}
	}

	// Ours, left in the delete group by an agent that died deleting it:
	// out of the group, or the next batch of deletions takes it along.
	if link.Attrs().Group == n.delGroup {
		if err := n.h.LinkSetGroup(link, 0); err != nil {
			return wrap("leave the delete group", err)
		}
	}
	if master := link.Attrs().MasterIndex; master != br.Attrs().Index {
		if master != 0 {
			return wrap("attach to "+n.cfg.Bridge, fmt.Errorf("%w: %s is attached to another master (index %d); left alone",
				ErrLinkConflict, name, master))
		}
		if err := ctxErr(ctx); err != nil {
			return wrap("attach to "+n.cfg.Bridge, err)
		}
		if err := n.h.LinkSetMasterByIndex(link, br.Attrs().Index); err != nil {
			return wrap("attach to "+n.cfg.Bridge, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := n.h.LinkSetUp(link); err != nil {
			return wrap("set up", err)
		}
	}
	return nil
}

// bridge looks up the bridge TAPs attach to, and notes its index.
func (n *Network) bridge() (netlink.Link, error) {
	br, err := n.h.LinkByName(n.cfg.Bridge)
	if isNotFound(err) {
		return nil, fmt.Errorf("find bridge %s: %w: run EnsureBridge first", n.cfg.Bridge, ErrNoBridge)
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", n.cfg.Bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("find bridge %s: %w: it is a %s", n.cfg.Bridge, ErrLinkConflict, br.Type())
	}
	n.bridgeIndex.Store(int32(br.Attrs().Index))
	return br, nil
}

// addTap creates the TAP name for vmID when no link of that name exists,
// in one netlink round trip besides the device's own creation: the TAP is
// made with TUN_EXCL (added is false, and nothing is done, when a link of
// that name exists: EnsureTap then checks it), then one RTM_SETLINK by
// name marks it, attaches it to the bridge and sets it up. Looking the
// links up, marking, attaching and raising one call at a time took six
// round trips more: a tenth of the agent's CPU per create. A failure
// leaves nothing: the TAP is ours (TUN_EXCL), so it is deleted.
func (n *Network) addTap(name, vmID string) (added bool, err error) {
	brIndex := n.bridgeIndex.Load()
	if brIndex == 0 {
		br, err := n.bridge()
		if err != nil {
			return false, fmt.Errorf("create tap %s: %w", name, err)
		}
		brIndex = int32(br.Attrs().Index)
	}
	err = n.inNS(func() error { return noForkWhile(func() error { return openPersistentTap(name) }) })
	if errors.Is(err, unix.EBUSY) {
		return false, nil // a link of that name exists
	}
	if err != nil {
		return false, fmt.Errorf("create tap %s: add: %w", name, err)
	}
	mark := n.tapMark(vmID)
	err = n.setTap(name, mark, brIndex)
	if err != nil {
		// The bridge may have been made again since its index was noted.
		if br, berr := n.bridge(); berr != nil {
			err = berr
		} else if int32(br.Attrs().Index) != brIndex {
			err = n.setTap(name, mark, int32(br.Attrs().Index))
		}
	}
	if err != nil {
		if derr := n.h.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}}); derr != nil && !isNotFound(derr) {
			n.log.Warn("rollback: delete tap", "tap", name, "error", derr)
		}
		return true, fmt.Errorf("create tap %s: mark, attach to %s and set up: %w", name, n.cfg.Bridge, err)
	}
	n.log.Debug("created tap", "tap", name, "vm_id", vmID, "bridge", n.cfg.Bridge)
	return true, nil
}

// openPersistentTap creates a persistent single-queue TAP with the flags
// firecracker opens it with, owned by root (as the netlink library's
// create does), failing with EBUSY when a link of that name exists. The
// calling thread's namespace is the TAP's.
func openPersistentTap(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd) // persistent: the device stays, without a queue held
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(uint16(netlink.TUNTAP_MODE_TAP) | uint16(tapFlags|netlink.TUNTAP_TUN_EXCL))
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return err
	}
	for _, c := range []struct {
		req uint
		v   int
	}{{unix.TUNSETOWNER, 0}, {unix.TUNSETGROUP, 0}, {unix.TUNSETPERSIST, 1}} {
		if err := unix.IoctlSetInt(fd, c.req, c.v); err != nil {
			return err
		}
	}
	return nil
}

// setTap marks the link name, enslaves it to the bridge (its index) and
// sets it up: one RTM_SETLINK, the link found by name.
func (n *Network) setTap(name, mark string, bridgeIndex int32) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: n.rt}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(mark)))
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(bridgeIndex))))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// describeTapOwner names whoever a TAP that is not ours for this VM
// belongs to.
func (n *Network) describeTapOwner(alias string) string {
	if m, ok := parseMark(alias); ok && m.owner == n.cfg.Owner && m.kind == "vm" {
		return "vm " + m.vmID + " of this agent"
	}
	return describeOwner(alias)
}

// AdoptTap marks an unmarked TAP as vmID's. It is for TAPs of running VMs
// made by an agent version that did not mark them: the caller knows the
// TAP is ours because the VM's VMM, found in our run dir, holds it. A TAP
// with any mark, or enslaved to another bridge, is left alone.
func (n *Network) AdoptTap(ctx context.Context, name, vmID string) (bool, error) {
	if err := validTapName(name); err != nil {
		return false, fmt.Errorf("adopt tap %s: %w", name, err)
	}
	if err := validVMID(vmID); err != nil {
		return false, fmt.Errorf("adopt tap %s: %w", name, err)
	}
	unlock := n.taps.Lock(name)
	defer unlock()
	if err := ctxErr(ctx); err != nil {
		return false, fmt.Errorf("adopt tap %s: %w", name, err)
	}
	link, err := n.h.LinkByName(name)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("adopt tap %s: look up: %w", name, err)
	}
	if checkTap(link) != nil || link.Attrs().Alias != "" {
		return false, nil
	}
	if m := link.Attrs().MasterIndex; m != 0 {
		br, err := n.h.LinkByName(n.cfg.Bridge)
		if err != nil || br.Attrs().Index != m {
			return false, nil
		}
	}
	if err := n.h.LinkSetAlias(link, n.tapMark(vmID)); err != nil {
		return false, fmt.Errorf("adopt tap %s: set mark: %w", name, err)
	}
	n.log.Info("adopted unmarked tap of a running vm", "tap", name, "vm_id", vmID)
	return true, nil
}

// noForkWhile runs f, which opens /dev/net/tun, attaches a TAP's one queue
// and closes it, while no process is forked. A VMM forked meanwhile (by
// another spawn of this agent) would share the queue's descriptor until its
// exec closes it, and a VMM that attaches the TAP in that window gets
// EBUSY: on a loaded host a forked child can wait milliseconds before its
// exec. Forks take syscall.ForkLock for writing; this holds it for reading.
func noForkWhile(f func() error) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	return f()
}

// checkTap accepts a tuntap in TAP mode without multi-queue: the only kind
// firecracker's TUNSETIFF can attach to.
func checkTap(link netlink.Link) error {
	t, ok := link.(*netlink.Tuntap)
	if !ok {
		return fmt.Errorf("%w: %s is a %s, not a tap; remove it to let the agent create the tap",
			ErrLinkConflict, link.Attrs().Name, link.Type())
	}
	if t.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("%w: %s is a tun (layer 3) device, not a tap", ErrLinkConflict, t.Name)
	}
	if t.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		return fmt.Errorf("%w: %s is a multi-queue tap; firecracker needs a single-queue one", ErrLinkConflict, t.Name)
	}
	return nil
}

// DeleteTap deletes the TAP if it carries this agent's mark. A missing TAP
// is success; a link of that name that is not ours (not a tuntap, no mark,
// another agent's mark, enslaved to another bridge) is left alone and
// reported as ErrNotOurs or ErrLinkConflict.
func (n *Network) DeleteTap(ctx context.Context, name string) error {
	wrap := func(step string, err error) error {
		return fmt.Errorf("delete tap %s: %s: %w", name, step, err)
	}
	if err := validTapName(name); err != nil {
		return wrap("validate name", err)
	}
	unlock := n.taps.Lock(name)
	defer unlock()
	if err := ctxErr(ctx); err != nil {
		return wrap("start", err)
	}
	link, err := n.h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return wrap("look up", err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return wrap("check", fmt.Errorf("%w: %s is a %s, not a tap; left alone", ErrLinkConflict, name, link.Type()))
	}
	if err := n.checkOurs(link); err != nil {
		return wrap("check", err)
	}
	// Deleting works while firecracker holds the TAP: its fd just goes dead.
	if err := n.deleteLink(link); err != nil {
		return wrap("delete link", err)
	}
	n.log.Debug("deleted tap", "tap", name)
	return nil
}

// checkOurs accepts a TAP with our mark that is on our bridge or on none.
func (n *Network) checkOurs(link netlink.Link) error {
	a := link.Attrs()
	m, ok := parseMark(a.Alias)
	if !ok || m.owner != n.cfg.Owner || m.kind != "vm" {
		return fmt.Errorf("%w: %s belongs to %s; left alone", ErrNotOurs, a.Name, describeOwner(a.Alias))
	}
	if a.MasterIndex != 0 {
		br, err := n.h.LinkByName(n.cfg.Bridge)
		if err != nil || br.Attrs().Index != a.MasterIndex {
			return fmt.Errorf("%w: %s carries our mark but is attached to another bridge; left alone", ErrNotOurs, a.Name)
		}
	}
	return nil
}

// ListTaps lists the links whose name starts with prefix (hostlayout.TapPrefix
// when empty), sorted by name, with whether each is a TAP, attached to our
// bridge, up, and ours. Callers that act on TAPs must look at Ours only.
func (n *Network) ListTaps(ctx context.Context, prefix string) ([]Tap, error) {
	if prefix == "" {
		prefix = hostlayout.TapPrefix
	}
	if err := ctxErr(ctx); err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	var links []netlink.Link
	if err := retryDump(func() (err error) { links, err = n.h.LinkList(); return err }); err != nil {
		return nil, fmt.Errorf("list taps: list links: %w", err)
	}
	names := make(map[int]string, len(links))
	brIndex := 0
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		if _, ok := l.(*netlink.Bridge); ok && a.Name == n.cfg.Bridge {
			brIndex = a.Index
		}
	}
	var taps []Tap
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, prefix) {
			continue
		}
		t, isTuntap := l.(*netlink.Tuntap)
		tap := Tap{
			Name:     a.Name,
			Index:    a.Index,
			IsTap:    isTuntap && t.Mode == netlink.TUNTAP_MODE_TAP,
			Master:   names[a.MasterIndex],
			Attached: brIndex != 0 && a.MasterIndex == brIndex,
			Up:       a.Flags&net.FlagUp != 0,
			InUse:    a.RawFlags&unix.IFF_LOWER_UP != 0,
		}
		if m, ok := parseMark(a.Alias); ok && m.owner == n.cfg.Owner && m.kind == "vm" && isTuntap &&
			(a.MasterIndex == 0 || tap.Attached) {
			tap.Ours, tap.VMID = true, m.vmID
		}
		taps = append(taps, tap)
	}
	sort.Slice(taps, func(i, j int) bool { return taps[i].Name < taps[j].Name })
	return taps, nil
}

// validVMID keeps the mark parseable: a VM id is non-empty, has no '/' and
// fits an alias with room to spare.
func validVMID(id string) error {
	if id == "" || len(id) > 64 || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("%w: vm id %q", ErrInvalidName, id)
	}
	return nil
}

// validTapName keeps the agent to its own links: a TAP name must carry the
// prefix, so no request can make it delete "eth0".
func validTapName(name string) error {
	if !strings.HasPrefix(name, hostlayout.TapPrefix) || len(name) == len(hostlayout.TapPrefix) {
		return fmt.Errorf("%w: %q does not start with %q", ErrInvalidName, name, hostlayout.TapPrefix)
	}
	if err := validLinkName(name); err != nil {
		return fmt.Errorf("%w: %q: %v", ErrInvalidName, name, err)
	}
	return nil
}

// SetTapOwner makes vmID's TAP name openable by uid and gid without
// CAP_NET_ADMIN: a jailed VMM, which runs as a uid of its own with no
// capabilities, attaches to it as its owner. The TAP must carry our mark
// for vmID; a missing TAP is ErrNoTap (a VM without a network interface).
// The agent attaches to the TAP for the two ioctls and detaches at once,
// so nobody holds it afterwards.
func (n *Network) SetTapOwner(ctx context.Context, name, vmID string, uid, gid int) error {
	wrap := func(step string, err error) error {
		return fmt.Errorf("set owner of tap %s: %s: %w", name, step, err)
	}
	if err := validTapName(name); err != nil {
		return wrap("validate name", err)
	}
	if uid < 0 || gid < 0 {
		return wrap("validate", fmt.Errorf("%w: uid %d gid %d", ErrInvalidName, uid, gid))
	}
	unlock := n.taps.Lock(name)
	defer unlock()
	if err := ctxErr(ctx); err != nil {
		return wrap("start", err)
	}
	link, err := n.h.LinkByName(name)
	if isNotFound(err) {
		return wrap("look up", ErrNoTap)
	}
	if err != nil {
		return wrap("look up", err)
	}
	if err := checkTap(link); err != nil {
		return wrap("check", err)
	}
	if err := n.checkOurs(link); err != nil {
		return wrap("check", err)
	}
	if link.Attrs().Alias != n.tapMark(vmID) {
		return wrap("check", fmt.Errorf("%w: %s is not the tap of vm %s", ErrNotOurs, name, vmID))
	}
	if t, ok := link.(*netlink.Tuntap); ok && t.Owner == uint32(uid) && t.Group == uint32(gid) {
		return nil
	}
	return n.inNS(func() error {
		return noForkWhile(func() error {
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				return wrap("open /dev/net/tun", err)
			}
			defer unix.Close(fd)
			ifr, err := unix.NewIfreq(name)
			if err != nil {
				return wrap("ifreq", err)
			}
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
			if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
				return wrap("attach", err)
			}
			if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
				return wrap("TUNSETOWNER", err)
			}
			if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid); err != nil {
				return wrap("TUNSETGROUP", err)
			}
			return nil
		})
	})
}
