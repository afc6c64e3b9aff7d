package vmm

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
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
