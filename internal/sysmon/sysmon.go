// Package sysmon eases the Go runtime's monitor thread, sysmon, in the
// long-running servers (manager, agent, up).
//
// Whenever the process wakes from idle, sysmon polls every 20 µs for a
// millisecond and more (to hand a P blocked in a syscall to other work),
// each poll a nanosleep and two context switches. On a virtualised host,
// where a context switch is dear, that was a sixth of the agent's and the
// manager's CPU per create and half their context switches. A timer slack
// of a millisecond on that one thread lets the kernel wake it about once a
// millisecond instead: other threads, their timers and the processes they
// start (the VMMs) keep their slack. What sysmon does late by up to a
// millisecond: take back a P stuck in a syscall while every other P is
// busy too. Preemption (10 ms) and the network poll (10 ms) barely move.
package sysmon

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Slack is the timer slack Quiet gives the monitor thread.
const Slack = time.Millisecond

// Quiet sets the timer slack of this process's monitor thread to slack and
// returns the thread's id. It needs Linux 4.6 or later and CAP_SYS_NICE (a
// thread's slack is set through /proc, as for another process's); without
// them it changes nothing and says why.
func Quiet(slack time.Duration) (int, error) {
	if slack <= 0 {
		return 0, fmt.Errorf("sysmon: slack %v: want a positive duration", slack)
	}
	tid, err := thread()
	if err != nil {
		return 0, err
	}
	ns := strconv.FormatInt(slack.Nanoseconds(), 10)
	if err := os.WriteFile(slackPath(tid), []byte(ns), 0); err != nil {
		return 0, fmt.Errorf("sysmon: set the timer slack of thread %d: %w", tid, err)
	}
	return tid, nil
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

// thread finds the monitor thread. The runtime starts it before anything
// else, even package init, so it is the process's oldest thread after the
// main one: the earliest start time, then (within one clock tick) the
// lowest id. Only a wrap of thread ids in that tick could mislead it, and
// then another thread of ours gets the slack, which costs it little.
func thread() (int, error) {
	pid := os.Getpid()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, fmt.Errorf("sysmon: list threads: %w", err)
	}
	best, bestStart := 0, uint64(0)
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || tid == pid {
			continue
		}
		start, err := startTime(tid)
		if err != nil {
			continue // a thread that just ended
		}
		if best == 0 || start < bestStart || start == bestStart && tid < best {
			best, bestStart = tid, start
		}
	}
	if best == 0 {
		return 0, errors.New("sysmon: no thread but the main one")
	}
	return best, nil
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
