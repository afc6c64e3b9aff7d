// Package netnsutil runs code on an OS thread inside another network
// namespace and brings the thread back. It imports nothing of Nexus.
package netnsutil

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a fresh goroutine locked to its thread and switched to
// ns, then switches the thread back to where it was. What fn creates on
// that thread — a TAP (opening /dev/net/tun), a socket, a forked child
// process — belongs to ns. Exiting still locked is not enough: Go discards
// such a thread, except the main thread, which it parks instead — still
// in ns, keeping that namespace alive for the life of the process. Only
// when the way back fails does the goroutine exit locked, so the thread
// is never reused in a foreign namespace.
func Do(ns netns.NsHandle, fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter network namespace: %w", err)
		}
		return nil
	}, fn)
}

// New makes a fresh, unnamed network namespace and returns a handle on
// it; the thread that made it (and was moved into it) goes back, as in
// Do. The namespace lives while the handle is open or anything is in it.
func New() (netns.NsHandle, error) {
	ns := netns.None()
	err := onThread(func() error { return nil }, func() (err error) {
		ns, err = netns.New()
		return err
	})
	if err != nil {
		return netns.None(), fmt.Errorf("new network namespace: %w", err)
	}
	return ns, nil
}

// onThread runs enter and then fn on a fresh goroutine locked to its
// thread, and puts the thread back in its namespace (see Do). fn runs only
// if enter succeeded.
func onThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
			return // still locked: the thread goes away with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
