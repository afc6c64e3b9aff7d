package vmm

import (
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
