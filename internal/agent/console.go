package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/guest"
)

// The agent owns each VM's console log, so it is the one to notice the
// guest's readiness line (guest.ReadyLine) or its failure line (guest.Failure,
// a kernel panic included) and report it to the manager. An agent may host
// hundreds of VMs, so one goroutine and one ticker serve them all; a VM's
// console is read often just after its VMM starts, less often later, not
// at all once its guest has said either line or watchWindow has passed, and
// only the bytes written since the last read are read.

// Console watching bounds.
const (
	// watchTick is the shared ticker's period: the finest interval.
	watchTick = 25 * time.Millisecond
	// watchWindow is how long a console is watched for a first line;
	// a guest that says nothing in that time (an image without Nexus's
	// init) is left alone.
	watchWindow = 10 * time.Minute
	// watchReadMax bounds one read of one console: a guest printing
	// megabytes is read in steps, never all at once.
	watchReadMax = 256 << 10
)

// watchInterval is how long after its last read a console is read again:
// the older the watch, the less often (a real kernel takes seconds to
// boot, a simulated guest milliseconds).
func watchInterval(age time.Duration) time.Duration {
	switch {
	case age < 2*time.Second:
		return watchTick
	case age < 15*time.Second:
		return 100 * time.Millisecond
	case age < time.Minute:
		return 500 * time.Millisecond
	}
	return 2 * time.Second
}

// GuestReport is what a guest said on its console.
type GuestReport struct {
	VMID   string
	PID    int // the VMM the console belongs to
	Ready  bool
	Reason string // why it failed, when not Ready
	At     time.Time
}

// consoleWatcher watches the consoles of VMMs started by this agent.
type consoleWatcher struct {
	path func(vmID string) string
	now  func() time.Time

	mu      sync.Mutex
	enabled bool
	vms     map[string]*consoleWatch
	wake    chan struct{} // a watch was added while the loop slept

	reports chan GuestReport
}

type consoleWatch struct {
	pid     int
	off     int64
	partial []byte
	started time.Time
	next    time.Time
	final   bool // the VMM exited: read what is left, then stop
}

func newConsoleWatcher(path func(vmID string) string) *consoleWatcher {
	return &consoleWatcher{path: path, now: time.Now, vms: map[string]*consoleWatch{},
		wake: make(chan struct{}, 1), reports: make(chan GuestReport, 1024)}
}

// enable turns watching on: only an agent that reports to a manager
// watches consoles.
func (w *consoleWatcher) enable() {
	w.mu.Lock()
	w.enabled = true
	w.mu.Unlock()
}

// Reports carries what guests said, first line per VMM only.
func (w *consoleWatcher) Reports() <-chan GuestReport { return w.reports }

// watch starts watching vmID's console for the VMM pid just started:
// what the console already holds (earlier runs) is skipped.
func (w *consoleWatcher) watch(vmID string, pid int) {
	var off int64
	if fi, err := os.Stat(w.path(vmID)); err == nil {
		off = fi.Size()
	}
	now := w.now()
	w.mu.Lock()
	if !w.enabled {
		w.mu.Unlock()
		return
	}
	w.vms[vmID] = &consoleWatch{pid: pid, off: off, started: now, next: now}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// forget stops watching vmID (the agent stopped or deleted it).
func (w *consoleWatcher) forget(vmID string) {
	w.mu.Lock()
	delete(w.vms, vmID)
	w.mu.Unlock()
}

// ended reads vmID's console once more and stops watching it: its VMM
// pid exited on its own, maybe after a panic line still unread.
func (w *consoleWatcher) ended(vmID string, pid int) {
	w.mu.Lock()
	if cw, ok := w.vms[vmID]; ok && cw.pid == pid {
		cw.final, cw.next = true, time.Time{}
	}
	w.mu.Unlock()
}

// watching reports how many consoles are watched (tests).
func (w *consoleWatcher) watching() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.vms)
}

// run reads the due consoles every watchTick while there are any, and
// sleeps, its ticker stopped, while there are none, until ctx ends.
func (w *consoleWatcher) run(ctx context.Context) {
	t := time.NewTicker(watchTick)
	defer t.Stop()
	for {
		w.mu.Lock()
		idle := len(w.vms) == 0
		w.mu.Unlock()
		if idle {
			t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
			t.Reset(watchTick)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.pass(ctx)
	}
}

// pass reads every due console once.
func (w *consoleWatcher) pass(ctx context.Context) {
	now := w.now()
	type due struct {
		id string
		cw consoleWatch
	}
	var todo []due
	w.mu.Lock()
	for id, cw := range w.vms {
		if now.Sub(cw.started) > watchWindow && !cw.final {
			delete(w.vms, id)
			continue
		}
		if !now.Before(cw.next) {
			todo = append(todo, due{id, *cw})
		}
	}
	w.mu.Unlock()
	for _, d := range todo {
		cw := d.cw
		rep, more, done := w.read(d.id, &cw)
		w.mu.Lock()
		cur, ok := w.vms[d.id]
		if !ok || cur.pid != cw.pid {
			w.mu.Unlock()
			continue // forgotten, or a new VMM, while this one was read
		}
		if done || (cur.final && !more) {
			delete(w.vms, d.id)
		} else {
			cur.off, cur.partial = cw.off, cw.partial
			cur.next = now.Add(watchInterval(now.Sub(cw.started)))
			if more {
				cur.next = now // the console holds more than one read takes
			}
		}
		w.mu.Unlock()
		if done {
			rep.At = now
			select {
			case w.reports <- rep:
			case <-ctx.Done():
				return
			}
		}
	}
}

// read reads the console's new bytes from cw.off and looks for the
// guest's first line. done: a line was found (rep); more: the console has
// more than one read took.
func (w *consoleWatcher) read(vmID string, cw *consoleWatch) (rep GuestReport, more, done bool) {
	f, err := os.Open(w.path(vmID))
	if err != nil {
		return rep, false, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return rep, false, false
	}
	if fi.Size() < cw.off {
		cw.off, cw.partial = 0, nil // truncated or replaced: start over
	}
	if fi.Size() == cw.off {
		return rep, false, false
	}
	n := min(fi.Size()-cw.off, watchReadMax)
	buf := make([]byte, n)
	got, err := f.ReadAt(buf, cw.off)
	if err != nil && !errors.Is(err, io.EOF) {
		return rep, false, false
	}
	buf = buf[:got]
	cw.off += int64(got)
	more = fi.Size() > cw.off
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			cw.partial = append(cw.partial, buf...)
			if len(cw.partial) > maxLineBytes {
				cw.partial = nil // a line without end is nobody's status line
			}
			return rep, more, false
		}
		line := string(append(cw.partial, buf[:i]...))
		cw.partial, buf = nil, buf[i+1:]
		if guest.IsReady(line) {
			return GuestReport{VMID: vmID, PID: cw.pid, Ready: true}, more, true
		}
		if reason, failed := guest.Failure(line); failed {
			return GuestReport{VMID: vmID, PID: cw.pid, Reason: reason}, more, true
		}
	}
}
