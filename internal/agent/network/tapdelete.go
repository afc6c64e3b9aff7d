package network

import (
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Deleting a link is the slowest thing the agent asks of the kernel: it
// waits out several RCU grace periods while holding the lock every netlink
// change takes, so a host's TAP deletions go one at a time (about 17 ms
// each on a small virtual machine). The kernel deletes all the links of a
// link group in one unregistering, whose grace periods they share: 20 TAPs
// in about 60 ms instead of 650. So deletions that arrive while one is
// under way wait for it, then go together: each TAP, already checked to
// be ours, is put in this agent's own group (deleteGroup) and the group is
// deleted. A TAP is in that group only while its deletion is under way;
// EnsureTap takes a TAP it finds there out of it (its agent died
// mid-delete), so that no later deletion takes it along.

// deleteGroup is the link group this agent's TAP deletions use: a hash of
// its owner, with the top bit set (the groups other software uses are
// small numbers; 0 is every link's default).
func deleteGroup(owner string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("nexus-tap-delete/" + owner))
	return h.Sum32() | 1<<31
}

// tapDeletes queues deletions while one is under way.
type tapDeletes struct {
	mu      sync.Mutex
	pending []*tapDelete
	running bool // a batch is being deleted
	groups  int  // batches deleted as a link group
	// batchHook, for tests, sees each batch before it is deleted.
	batchHook func(size int)
}

type tapDelete struct {
	link netlink.Link
	done chan error
	lead chan struct{} // closed: delete the pending ones, this one among them
}

// deleteLink deletes link (a TAP checked to be ours, its name locked), with
// whichever other deletions are waiting when its turn comes.
func (n *Network) deleteLink(link netlink.Link) error {
	q := &n.dels
	d := &tapDelete{link: link, done: make(chan error, 1), lead: make(chan struct{})}
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

	n.deleteBatch(batch)

	q.mu.Lock()
	if len(q.pending) > 0 {
		close(q.pending[0].lead) // the next batch's turn
	} else {
		q.running = false
	}
	q.mu.Unlock()
	return <-d.done
}

// deleteBatch deletes the batch's links: one alone by its index, several
// as this agent's link group. Where the kernel refuses the group, each
// goes alone, as before.
func (n *Network) deleteBatch(batch []*tapDelete) {
	if h := n.dels.batchHook; h != nil {
		h(len(batch))
	}
	if len(batch) == 1 {
		batch[0].done <- n.deleteOne(batch[0].link)
		return
	}
	var grouped []*tapDelete
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
	err := n.deleteGroupLinks()
	if err != nil {
		n.log.Warn("deleting TAPs as a link group failed: deleting them one by one", "taps", len(grouped), "err", err)
	} else {
		n.dels.mu.Lock()
		n.dels.groups++
		n.dels.mu.Unlock()
	}
	for _, d := range grouped {
		if err != nil {
			d.done <- n.deleteOne(d.link)
		} else {
			d.done <- nil
		}
	}
}

func (n *Network) deleteOne(link netlink.Link) error {
	if err := n.h.LinkDel(link); err != nil && !isNotFound(err) {
		return err
	}
	return nil
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
