package network

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// Deleting a link is the slowest thing the agent asks of the kernel: it
// waits out several RCU grace periods while holding the lock every netlink
// change takes, so a host's link deletions go one at a time (about 17 ms
// for a TAP, 21 ms for a veth pair, on a small virtual machine). The
// kernel deletes all the links of a link group in one unregistering, whose
// grace periods they share: 20 TAPs in about 60 ms instead of 650, 20 veth
// pairs in 28 instead of 430. So deletions that arrive while one is under
// way wait for it, then go together: each link, already checked to be ours
// (a VM's TAP, or an isolated VM's veth, whose peer in the VM's namespace
// goes with it), is put in this agent's own group (deleteGroup) and the
// group is deleted, once a look at all links has found just the batch's
// links in it. A link is in that group only while its deletion is under
// way; one left there (its agent died mid-delete) is taken out of it by
// EnsureTap or EnsureIsolated or by the next batch's look, so that no
// later deletion takes it along.

// deleteGroup is the link group this agent's link deletions use: a hash of
// its owner, with the top bit set (the groups other software uses are
// small numbers; 0 is every link's default).
func deleteGroup(owner string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("nexus-tap-delete/" + owner)) // the name of old: the same group as before
	return h.Sum32() | 1<<31
}

// linkDeletes queues deletions while one is under way.
type linkDeletes struct {
	mu      sync.Mutex
	pending []*linkDelete
	running bool // a batch is being deleted
	groups  int  // batches deleted as a link group
	// off: the kernel refused a group deletion, or a link not in the
	// batch was found in the group; deletions go one by one from then on.
	off bool
	// batchHook, for tests, sees each batch before it is deleted;
	// checkHook runs before a batch's look at the group.
	batchHook func(size int)
	checkHook func()
}

// errForeignInGroup: a link that is not this agent's is in its delete
// group; deleting the group would take it along.
var errForeignInGroup = errors.New("a link not ours is in the delete group")

type linkDelete struct {
	link netlink.Link
	done chan error
	lead chan struct{} // closed: delete the pending ones, this one among them
}

// deleteLink deletes link (a TAP or veth checked to be ours, its name
// locked), with whichever other deletions are waiting when its turn comes.
func (n *Network) deleteLink(link netlink.Link) error {
	q := &n.dels
	d := &linkDelete{link: link, done: make(chan error, 1), lead: make(chan struct{})}
	q.mu.Lock()
	q.pending = append(q.pending, d)
	if q.running {
		q.mu.Unlock()
		select {
		case err := <-d.done:
			return err
		case <-d.lead:
		}
		q.mu.Lock()
	}
	q.running = true
	batch := q.pending
	q.pending = nil
	q.mu.Unlock()

	func() {
		// Even if the batch panics, the next one gets its turn.
		defer func() {
			q.mu.Lock()
			if len(q.pending) > 0 {
				close(q.pending[0].lead)
			} else {
				q.running = false
			}
			q.mu.Unlock()
		}()
		n.deleteBatch(batch)
	}()
	return <-d.done
}

// deleteBatch deletes the batch's links: one alone by its index, several
// as this agent's link group once the group is seen to hold exactly them.
// Otherwise each goes alone, as before.
func (n *Network) deleteBatch(batch []*linkDelete) {
	if h := n.dels.batchHook; h != nil {
		h(len(batch))
	}
	n.dels.mu.Lock()
	off := n.dels.off
	n.dels.mu.Unlock()
	if len(batch) == 1 || off {
		for _, d := range batch {
			d.done <- n.deleteOne(d.link)
		}
		return
	}
	var grouped []*linkDelete
	for _, d := range batch {
		err := n.h.LinkSetGroup(d.link, int(n.delGroup))
		switch {
		case isNotFound(err):
			d.done <- nil
		case err != nil:
			d.done <- n.deleteOne(d.link)
		default:
			grouped = append(grouped, d)
		}
	}
	if len(grouped) == 0 {
		return
	}
	if h := n.dels.checkHook; h != nil {
		h()
	}
	// A link not ours in the group, or the kernel refusing a group
	// deletion, turns group deletions off; anything else that keeps the
	// group from being deleted (a failed dump, a link of the batch gone
	// meanwhile) only sends this batch one by one.
	err := n.checkGroup(grouped)
	latch := errors.Is(err, errForeignInGroup)
	if err == nil {
		err = n.deleteGroupLinks()
		latch = err != nil
	}
	n.dels.mu.Lock()
	switch {
	case latch:
		n.dels.off = true
	case err == nil:
		n.dels.groups++
	}
	n.dels.mu.Unlock()
	switch {
	case latch:
		n.log.Warn("links are deleted one by one from now on", "err", err)
	case err != nil:
		n.log.Info("a batch of link deletions goes one by one", "links", len(grouped), "err", err)
	}
	for _, d := range grouped {
		if err != nil {
			d.done <- n.deleteOne(d.link)
		} else {
			d.done <- nil
		}
	}
}

// checkGroup makes sure the delete group holds the grouped links and
// nothing else, just before it is deleted: a link of ours left there (by
// an agent that died deleting it, or a deletion that failed) goes back to
// group 0; any other link there (errForeignInGroup), or a link of the
// batch missing, and the group is not deleted. (Someone else would have to pick this agent's
// group number in between for a link not ours to go with it.)
func (n *Network) checkGroup(grouped []*linkDelete) error {
	var links []netlink.Link
	if err := retryDump(func() (err error) { links, err = n.h.LinkList(); return err }); err != nil {
		return fmt.Errorf("check link group %d: %w", n.delGroup, err)
	}
	want := make(map[int]string, len(grouped))
	for _, d := range grouped {
		want[d.link.Attrs().Index] = d.link.Attrs().Name
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if a.Group != n.delGroup {
			continue
		}
		if name, ok := want[a.Index]; ok && name == a.Name {
			delete(want, a.Index)
			continue
		}
		if n.ours(l) {
			if err := n.h.LinkSetGroup(l, 0); err != nil {
				errs = append(errs, fmt.Errorf("take our link %s out of link group %d: %w", a.Name, n.delGroup, err))
			}
			continue
		}
		errs = append(errs, fmt.Errorf("%w: link group %d holds %s; left alone", errForeignInGroup, n.delGroup, a.Name))
	}
	for _, name := range want {
		errs = append(errs, fmt.Errorf("link %s left link group %d before its deletion", name, n.delGroup))
	}
	return errors.Join(errs...)
}

// ours says whether l is a link this agent deletes through its group: a
// TAP of ours, or an isolated VM's veth with our mark and the name it
// names.
func (n *Network) ours(l netlink.Link) bool {
	switch l.(type) {
	case *netlink.Tuntap:
		return n.checkOurs(l) == nil
	case *netlink.Veth:
		m, ok := parseMark(l.Attrs().Alias)
		return ok && m.owner == n.cfg.Owner && m.kind == "veth" && l.Attrs().Name == hostlayout.VethName(m.vmID)
	}
	return false
}

// deleteOne deletes link alone. One that stays (the deletion failed) is
// taken out of the delete group, lest the next batch take it along.
func (n *Network) deleteOne(link netlink.Link) error {
	err := n.h.LinkDel(link)
	if err == nil || isNotFound(err) {
		return nil
	}
	_ = n.h.LinkSetGroup(link, 0)
	return err
}

// deleteGroupLinks deletes every link in this agent's delete group: one
// RTM_DELLINK naming the group, not a link.
func (n *Network) deleteGroupLinks() error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: n.rt}
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(n.delGroup)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("delete link group %d: %w", n.delGroup, err)
	}
	return nil
}
