// Package sysmon eases the Go runtime's monitor thread, sysmon, in the
// long-running servers (manager, agent, up).
//
// Whenever the process wakes from idle, sysmon polls every 20 µs for a
// millisecond and more (to hand a P blocked in a syscall to other work),
// each poll a nanosleep and two context switches. On a virtualised host,
// where a context switch is dear, that was a sixth of the agent's and the
// manager's CPU per create and half their context switches. A timer slack
// of a millisecond on that thread lets the kernel wake it about once a
// millisecond instead. What sysmon then does up to a millisecond late:
// take back a P stuck in a syscall for other work (goroutines waiting on
// that P, or none of the other Ps idle). Preemption (10 ms) and its
// network poll (10 ms) barely move.
//
// The runtime also starts threads from sysmon (to run a P it took back),
// and a new thread inherits the slack of the thread that made it: timers
// that such a thread serves may fire up to a millisecond late, which
// matters little against the millisecond the runtime's network poller
// already rounds them to. What must not inherit it, a child process (a
// VMM) or a short sleep, runs under OwnSlack.
package sysmon

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Slack is the timer slack Quiet gives the monitor thread.
const Slack = time.Millisecond

// own is the process's own timer slack in ns, once Quiet has given the
// monitor thread another (0 before).
var own atomic.Int64

// Quiet sets the timer slack of this process's monitor thread to slack and
// returns the thread's id. It needs Linux 4.6 or later and CAP_SYS_NICE (a
// thread's slack is set through /proc, as for another process's); without
// them it changes nothing and says why.
func Quiet(slack time.Duration) (int, error) {
	if slack <= 0 {
		return 0, fmt.Errorf("sysmon: slack %v: want a positive duration", slack)
	}
	main, tid, err := thread()
	if err != nil {
		return 0, err
	}
	// The main thread's is the process's own: nothing of ours changes it.
	mine, err := SlackOf(main)
	if err != nil {
		return 0, fmt.Errorf("sysmon: read the process's timer slack: %w", err)
	}
	if mine <= 0 {
		return 0, errors.New("sysmon: the process has no timer slack (a real-time policy)")
	}
	if err := setSlack(main, tid, slack); err != nil {
		return 0, err
	}
	own.Store(mine.Nanoseconds())
	return tid, nil
}

// OwnSlack runs fn on a thread that has the process's own timer slack, not
// the monitor's: fn starts a process (whose threads would inherit the
// slack) or sleeps briefly. The thread keeps that slack afterwards. Before
// Quiet, or where it failed, fn just runs.
func OwnSlack(fn func() error) error {
	ns := own.Load()
	if ns == 0 {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(ns), 0, 0, 0)
	return fn()
}

// Nap sleeps d on a thread with the process's own timer slack. Unlike a Go
// timer, which the runtime's network poller rounds up to a millisecond
// when the process is idle, it wakes about when asked; it holds its thread
// meanwhile, so it is for waits of microseconds.
func Nap(d time.Duration) {
	_ = OwnSlack(func() error {
		ts := unix.NsecToTimespec(d.Nanoseconds())
		return unix.Nanosleep(&ts, nil)
	})
}

// SlackOf reads a thread's (or process's) timer slack.
func SlackOf(tid int) (time.Duration, error) {
	b, err := os.ReadFile(slackPath(tid))
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", slackPath(tid), err)
	}
	return time.Duration(ns), nil
}

// slackPath is the thread's timerslack_ns: /proc/<tid> serves threads too
// (the task/ directories have no such file).
func slackPath(tid int) string { return "/proc/" + strconv.Itoa(tid) + "/timerslack_ns" }

// setSlack writes tid's timer slack once /proc says tid is a thread of
// this process (of main): a thread id is only ever ours while we hold it.
func setSlack(main, tid int, slack time.Duration) error {
	dir, err := os.Open("/proc/" + strconv.Itoa(tid))
	if err != nil {
		return fmt.Errorf("sysmon: thread %d: %w", tid, err)
	}
	defer dir.Close()
	// Through the directory's descriptor: the same task as the check.
	fd := int(dir.Fd())
	status, err := readAt(fd, "status")
	if err != nil {
		return fmt.Errorf("sysmon: thread %d: %w", tid, err)
	}
	if tgid(status) != main {
		return fmt.Errorf("sysmon: thread %d is not one of this process's", tid)
	}
	f, err := unix.Openat(fd, "timerslack_ns", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sysmon: set the timer slack of thread %d: %w", tid, &os.PathError{Op: "open", Path: slackPath(tid), Err: err})
	}
	defer unix.Close(f)
	if _, err := unix.Write(f, []byte(strconv.FormatInt(slack.Nanoseconds(), 10))); err != nil {
		return fmt.Errorf("sysmon: set the timer slack of thread %d: %w", tid, &os.PathError{Op: "write", Path: slackPath(tid), Err: err})
	}
	return nil
}

func readAt(dirfd int, name string) (string, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b := make([]byte, 4096)
	n, err := f.Read(b)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// tgid is the Tgid of a /proc status text (0 when missing).
func tgid(status string) int {
	for line := range strings.Lines(status) {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// thread finds the main thread and the monitor thread, as /proc numbers
// them (its pid namespace may not be ours). The runtime starts the monitor
// before anything else, even package init, so it is the process's oldest
// thread after the main one: the earliest start time, then (within one
// clock tick) the lowest id. Only a wrap of thread ids in that tick could
// mislead it, and then another thread of ours gets the slack.
func thread() (main, tid int, err error) {
	self, err := os.Readlink("/proc/self")
	if err != nil {
		return 0, 0, fmt.Errorf("sysmon: /proc/self: %w", err)
	}
	if main, err = strconv.Atoi(self); err != nil {
		return 0, 0, fmt.Errorf("sysmon: /proc/self is %q", self)
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, 0, fmt.Errorf("sysmon: list threads: %w", err)
	}
	var bestStart uint64
	for _, e := range ents {
		id, err := strconv.Atoi(e.Name())
		if err != nil || id == main {
			continue
		}
		start, err := startTime(id)
		if err != nil {
			continue // a thread that just ended
		}
		if tid == 0 || start < bestStart || start == bestStart && id < tid {
			tid, bestStart = id, start
		}
	}
	if tid == 0 {
		return 0, 0, errors.New("sysmon: no thread but the main one")
	}
	return main, tid, nil
}

// startTime is field 22 of the thread's stat: when it started, in clock
// ticks after boot.
func startTime(tid int) (uint64, error) {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command may hold spaces and parentheses
	if i < 0 {
		return 0, fmt.Errorf("thread %d: stat without a command", tid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return 0, fmt.Errorf("thread %d: stat has %d fields", tid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}
