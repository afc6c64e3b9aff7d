package vmm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// The watch wakes a wait when a socket is bound in its directory, and
// only then: a wait with nothing created ends at its deadline, false.
func TestSockWatch(t *testing.T) {
	dir := t.TempDir()
	w, err := watchSockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	start := time.Now()
	if w.wait(20 * time.Millisecond) {
		t.Fatal("woke with nothing created")
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("woke after %s, before the deadline", d)
	}
	go func() {
		time.Sleep(10 * time.Millisecond)
		l, err := net.Listen("unix", filepath.Join(dir, "fc.sock"))
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { l.Close() })
	}()
	if !w.wait(10 * time.Second) {
		t.Fatal("the socket's creation did not wake the wait")
	}
	// Woken at the bind: the socket exists, though it may not listen yet
	// (waitSocket polls for that short while).
	if _, err := os.Stat(filepath.Join(dir, "fc.sock")); err != nil {
		t.Fatalf("woken before the socket exists: %v", err)
	}
}

// The agent holds at most maxWatches inotify instances, closing ones
// included (they count against a per-user limit other software needs);
// past that a spawn polls, and a watch is to be had again once one has
// closed.
//
// The count is the process's: this test holds every watch, so no test of
// this package may spawn beside it (none calls t.Parallel).
func TestSockWatchesAreBounded(t *testing.T) {
	dir := t.TempDir()
	// Watches of earlier tests may still be closing.
	deadline := time.Now().Add(10 * time.Second)
	for watches.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d watches still open before the test", watches.Load())
		}
		time.Sleep(time.Millisecond)
	}
	var held []*sockWatch
	for len(held) < maxWatches {
		w, err := watchSockDir(dir)
		if err != nil {
			t.Fatalf("watch %d of %d: %v", len(held)+1, maxWatches, err)
		}
		held = append(held, w)
	}
	if w, err := watchSockDir(dir); !errors.Is(err, errTooManyWatches) {
		w.close()
		t.Fatalf("watch %d: %v; want errTooManyWatches", maxWatches+1, err)
	}
	held[0].close()
	deadline = time.Now().Add(10 * time.Second)
	for {
		w, err := watchSockDir(dir)
		if err == nil {
			w.close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no watch after one closed: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	for _, w := range held[1:] {
		w.close()
	}
}

// A VMM that exits before binding its socket ends the spawn's wait when
// its SIGCHLD is handled (Run), not when the wait next wakes: with a wake
// that never comes the spawn still fails at once, with the VMM's status
// and the last lines it printed, and leaves neither handle nor socket.
func TestSpawnEndsWhenTheVMMExitsBeforeItsSocket(t *testing.T) {
	// Neither a deadline nor a wake ends the wait: only the exit can.
	sup := scriptedVMM(t, "echo 'no kvm here'\nsleep 0.05\nexit 3", time.Hour)
	layout := sup.cfg.Layout
	watchLoop(t, sup) // SIGCHLD only

	id := uuid.NewString()
	done := make(chan error, 1)
	go func() {
		_, _, err := sup.Spawn(context.Background(), id, SpawnOptions{Vcpu: 1, MemMib: 128})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "vmm exited before its API socket was ready (exit status 3)") || !strings.Contains(err.Error(), "no kvm here") {
			t.Fatalf("spawn: %v; want the VMM's exit before its socket, with its output", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("spawn still waiting for the socket of a VMM that exited")
	}
	for _, f := range []string{filepath.Join(layout.VMDir(id), handleFile), layout.SockPath(id)} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind (%v)", f, err)
		}
	}
}

// A caller who leaves while the VMM has not bound its socket ends the
// spawn's wait at once too, and the VMM is stopped.
func TestSpawnEndsWhenItsCallerLeaves(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	sup := scriptedVMM(t, "echo $$ > "+pidFile+"\nexec sleep 60", 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := sup.Spawn(ctx, uuid.NewString(), SpawnOptions{Vcpu: 1, MemMib: 128})
		done <- err
	}()
	var pid int
	for pid == 0 {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("spawn: %v; want it cancelled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("spawn still waiting for the socket after its caller left")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the VMM (pid %d) still runs: %v", pid, err)
	}
}

// A VMM that binds its socket and listens only a while later (past the
// naps that follow the bind) is still reached: the spawn answers, with
// its VMM up.
func TestSpawnReachesASocketThatListensLate(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	late := 10 * boundNapFor
	sup := scriptedVMM(t, fmt.Sprintf("%s=%s exec %s \"$@\"", lateListenEnv, late, self), 0)
	id := uuid.NewString()
	h, _, err := sup.Spawn(context.Background(), id, SpawnOptions{Vcpu: 1, MemMib: 128})
	if err != nil {
		t.Fatalf("spawn: %v", err)
	}
	defer func() {
		if err := sup.Stop(context.Background(), id, 0); err != nil {
			t.Error(err)
		}
	}()
	c, err := net.Dial("unix", h.APISock)
	if err != nil {
		t.Fatalf("the spawn answered, but its socket: %v", err)
	}
	c.Close()
}

// A stop sees its VMM's exit when the watch loop reaps it (SIGCHLD), not
// at its next probe: with no probe due for an hour, a VMM that ends on
// SIGTERM is stopped at once.
func TestStopSeesTheExitAtOnce(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sup := scriptedVMM(t, fmt.Sprintf("%s=0s exec %s \"$@\"", lateListenEnv, self), 0)
	was := goneProbe
	goneProbe = time.Hour
	t.Cleanup(func() { goneProbe = was })
	watchLoop(t, sup) // SIGCHLD only
	id := uuid.NewString()
	h, _, err := sup.Spawn(context.Background(), id, SpawnOptions{Vcpu: 1, MemMib: 128})
	if err != nil {
		t.Fatalf("spawn: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Stop(context.Background(), id, 30*time.Second) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stop still waiting for a VMM that ended on SIGTERM")
	}
	if err := syscall.Kill(h.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the VMM (pid %d) still runs: %v", h.PID, err)
	}
}

// lateListenEnv makes this test binary, started as a VMM, bind its
// --api-sock, wait that long, listen, and wait to be stopped.
const lateListenEnv = "NEXUS_TEST_LATE_LISTEN"

func lateListenerIfAsked() {
	wait, err := time.ParseDuration(os.Getenv(lateListenEnv))
	if err != nil {
		return
	}
	var sock string
	for i, a := range os.Args {
		if a == "--api-sock" && i+1 < len(os.Args) {
			sock = os.Args[i+1]
		}
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		err = syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock})
	}
	if err == nil {
		time.Sleep(wait)
		err = syscall.Listen(fd, 8)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "late listener:", err)
		os.Exit(2)
	}
	time.Sleep(time.Minute) // stopped by the test
	os.Exit(0)
}

// watchLoop runs sup's watch loop with no tick of its own (SIGCHLD only)
// until the test ends.
func watchLoop(t *testing.T, sup *Supervisor) {
	ctx, cancel := context.WithCancel(context.Background())
	running := make(chan struct{})
	go func() {
		defer close(running)
		sup.Run(ctx, time.Hour)
	}()
	t.Cleanup(func() { cancel(); <-running })
}

// scriptedVMM returns a supervisor whose VMM binary is a shell script of
// body, with a socket wait that never wakes on its own (watchWake) and
// the given socket timeout (0: the default).
func scriptedVMM(t *testing.T, body string, socketTimeout time.Duration) *Supervisor {
	t.Helper()
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("", "nxw") // short: the socket path must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "vmm")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sup, err := New(Config{Bin: bin, Layout: hostlayout.Layout{RunDir: filepath.Join(dir, "run")},
		Owner: fmt.Sprintf("%012x", rand.Int64N(1<<48)), SocketTimeout: socketTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sup.ReleaseCgroups)
	was := watchWake
	watchWake = time.Hour
	t.Cleanup(func() { watchWake = was })
	return sup
}
