package netnsutil

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// New makes a namespace other than this process's, with nothing but a
// loopback in it, and Do runs code in it; the threads that did so come
// back: every thread of the process is still in its own namespace after.
func TestNewAndDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN) to make network namespaces")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	for range 20 { // more than the threads the runtime keeps, so reuse shows
		ns, err := New()
		if err != nil {
			t.Fatal(err)
		}
		if ns.Equal(orig) {
			t.Fatal("New returned the process's own namespace")
		}
		var links []netlink.Link
		if err := Do(ns, func() (err error) { links, err = netlink.LinkList(); return err }); err != nil {
			t.Fatal(err)
		}
		if len(links) != 1 || links[0].Attrs().Name != "lo" {
			t.Errorf("links in a new namespace = %d (%v); want just lo", len(links), links)
		}
		ns.Close()
	}
	// Every thread the runtime may hand a goroutine to is back home.
	done := make(chan bool)
	for range 50 {
		go func() {
			cur, err := netns.Get()
			done <- err == nil && cur.Equal(orig)
			cur.Close()
		}()
	}
	for range 50 {
		if !<-done {
			t.Fatal("a goroutine ran on a thread left in another namespace")
		}
	}
}
