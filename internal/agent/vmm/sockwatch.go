package vmm

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// maxWatches bounds the inotify instances the agent holds at once,
// closing ones included: they come out of a per-user limit
// (fs.inotify.max_user_instances, 128 by default) that other software of
// root's on the host needs too. Spawns past it poll for their socket.
const maxWatches = 8

// watches counts the instances open or closing.
var watches atomic.Int32

var errTooManyWatches = errors.New("too many socket watches at once")

// sockWatch wakes a socket wait when something is created in the VMM's
// socket directory, so the wait sleeps until the VMM binds instead of
// polling: every poll is a connect, a wait4 and a timer, dozens of them
// per spawn, and on a busy host each costs a context switch.
type sockWatch struct {
	f *os.File
	// ended is set when the VMM is known to have exited (interrupt).
	ended atomic.Bool
}

// watchSockDir watches dir for new entries. It must be called before the
// VMM starts, or its socket may come before the watch.
func watchSockDir(dir string) (*sockWatch, error) {
	if watches.Add(1) > maxWatches {
		watches.Add(-1)
		return nil, errTooManyWatches
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		watches.Add(-1)
		return nil, err
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		watches.Add(-1)
		return nil, err
	}
	// A non-blocking descriptor goes to the runtime's poller, so a read
	// can have a deadline; without one, the caller polls instead.
	f := os.NewFile(uintptr(fd), "inotify")
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		(&sockWatch{f: f}).close()
		return nil, err
	}
	return &sockWatch{f: f}, nil
}

// wait returns true once something was created in the directory since the
// last wait, false when d passed first or the watch was interrupted.
func (w *sockWatch) wait(d time.Duration) bool {
	_ = w.f.SetReadDeadline(time.Now().Add(d)) // supported: watchSockDir checked
	// Checked after the deadline is set: an interrupt before it would
	// otherwise be undone by it.
	if w.ended.Load() {
		return false
	}
	var buf [512]byte
	n, err := w.f.Read(buf[:])
	return err == nil && n > 0
}

// interrupt ends a wait, and makes every later one return at once: the
// VMM exited, so no socket is coming. Safe from any goroutine.
func (w *sockWatch) interrupt() {
	w.ended.Store(true)
	_ = w.f.SetReadDeadline(time.Now())
}

// close releases the watch without waiting for it: closing an inotify
// descriptor waits for the kernel's fsnotify grace period (synchronize_srcu),
// 5-10 ms measured on a paravirtualised host, which a spawn would
// otherwise add to its VMM's start. The wait is sleep, not CPU.
func (w *sockWatch) close() {
	if w != nil {
		go func() {
			w.f.Close()
			watches.Add(-1)
		}()
	}
}
