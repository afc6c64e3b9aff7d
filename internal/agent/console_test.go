package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// consoleEnv is a watcher over console files in a temp dir, on a clock
// the test moves, driven pass by pass.
type consoleEnv struct {
	t   *testing.T
	dir string
	w   *consoleWatcher
	mu  sync.Mutex
	now time.Time
}

func newConsoleEnv(t *testing.T) *consoleEnv {
	e := &consoleEnv{t: t, dir: t.TempDir(), now: time.Unix(1_700_000_000, 0)}
	e.w = newConsoleWatcher(func(id string) string { return filepath.Join(e.dir, id+".log") })
	e.w.now = func() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now }
	e.w.enable()
	return e
}

func (e *consoleEnv) advance(d time.Duration) { e.mu.Lock(); e.now = e.now.Add(d); e.mu.Unlock() }

func (e *consoleEnv) write(id, text string) {
	e.t.Helper()
	f, err := os.OpenFile(filepath.Join(e.dir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		e.t.Fatal(err)
	}
}

// pass runs one pass after moving the clock past every interval and
// returns the reports it made.
func (e *consoleEnv) pass() []GuestReport {
	e.advance(3 * time.Second)
	e.w.pass(context.Background())
	var out []GuestReport
	for {
		select {
		case r := <-e.w.Reports():
			out = append(out, r)
		default:
			return out
		}
	}
}

func TestConsoleWatcher(t *testing.T) {
	e := newConsoleEnv(t)
	// An earlier run's lines are not this run's.
	e.write("a", "nexus-guest: ready\r\n")
	e.w.watch("a", 100)
	e.w.watch("b", 200)
	e.w.watch("c", 300)
	if got := e.pass(); len(got) != 0 {
		t.Fatalf("reports before the guests said anything: %+v", got)
	}

	// A line arrives in pieces; noise around it; a shell echoing the text
	// is not readiness.
	e.write("a", "[    0.1] Linux version 6.1\r\n~ # echo nexus-guest: ready\r\nnexus-gu")
	if got := e.pass(); len(got) != 0 {
		t.Fatalf("reports from a partial line: %+v", got)
	}
	e.write("a", "est: ready\r\n")
	e.write("b", "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n")
	e.write("c", "sim-guest: counter=1\n")
	got := e.pass()
	if len(got) != 2 {
		t.Fatalf("reports = %+v; want a's readiness and b's failure", got)
	}
	byVM := map[string]GuestReport{}
	for _, r := range got {
		byVM[r.VMID] = r
	}
	if r := byVM["a"]; !r.Ready || r.PID != 100 || r.At.IsZero() {
		t.Errorf("a's report = %+v; want ready of pid 100 with a time", r)
	}
	if r := byVM["b"]; r.Ready || r.PID != 200 || !strings.HasPrefix(r.Reason, "kernel panic: VFS: Unable to mount root fs") {
		t.Errorf("b's report = %+v; want the kernel's panic of pid 200", r)
	}
	// One report per run: a and b are no longer read; c still is.
	e.write("a", "nexus-guest: ready\n")
	if got := e.pass(); len(got) != 0 || e.w.watching() != 1 {
		t.Fatalf("after the first line: reports %+v, %d watched; want none, 1", got, e.w.watching())
	}

	// A stopped VM is forgotten; a new run is watched from where the
	// console is now.
	e.w.forget("c")
	e.write("c", "nexus-guest: ready\n")
	if got := e.pass(); len(got) != 0 {
		t.Fatalf("a forgotten console reported %+v", got)
	}
	e.w.watch("c", 301)
	e.write("c", "nexus-guest: failed: ip=dhcp: automatic configuration is not supported\n")
	if got := e.pass(); len(got) != 1 || got[0].PID != 301 || got[0].Reason != "ip=dhcp: automatic configuration is not supported" {
		t.Fatalf("new run = %+v; want its failure line", got)
	}

	// A VMM that exited is read once more, then dropped.
	e.w.watch("d", 400)
	e.write("d", "Kernel panic - not syncing: Attempted to kill init!\n")
	e.w.ended("d", 400)
	if got := e.pass(); len(got) != 1 || got[0].VMID != "d" || e.w.watching() != 0 {
		t.Fatalf("exited VMM: reports %+v, %d watched; want its panic, then none", got, e.w.watching())
	}
	e.w.watch("e", 500)
	e.w.ended("e", 500)
	if got := e.pass(); len(got) != 0 || e.w.watching() != 0 {
		t.Fatalf("silent exited VMM: reports %+v, %d watched; want none", got, e.w.watching())
	}

	// A guest that says nothing is given up after the window.
	e.w.watch("f", 600)
	e.advance(watchWindow)
	e.pass()
	if n := e.w.watching(); n != 0 {
		t.Fatalf("%d consoles watched after the window; want 0", n)
	}
}

// A console that grows faster than one read takes is read in steps, and
// the line after megabytes of output is still found.
func TestConsoleWatcherLongOutput(t *testing.T) {
	e := newConsoleEnv(t)
	e.w.watch("a", 1)
	e.write("a", strings.Repeat("x", maxLineBytes+10)+"\n"+strings.Repeat("boot noise\n", 100_000)+"nexus-guest: ready\n")
	var got []GuestReport
	for i := 0; i < 20 && len(got) == 0; i++ {
		got = e.pass()
	}
	if len(got) != 1 || !got[0].Ready {
		t.Fatalf("reports = %+v; want readiness after the noise", got)
	}
}

// A disabled watcher (an agent without a manager) watches nothing.
func TestConsoleWatcherDisabled(t *testing.T) {
	w := newConsoleWatcher(func(id string) string { return filepath.Join(t.TempDir(), id) })
	w.watch("a", 1)
	if n := w.watching(); n != 0 {
		t.Fatalf("a disabled watcher watches %d consoles", n)
	}
	// Its loop sleeps without consoles and ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not end with its context")
	}
}

// The loop sleeps without consoles, wakes for a new one, and reports a
// line within a few ticks of its being written.
func TestConsoleWatcherRun(t *testing.T) {
	e := newConsoleEnv(t)
	e.w.now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.w.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(3 * watchTick) // asleep: nothing to watch
	e.w.watch("a", 7)
	start := time.Now()
	e.write("a", "nexus-guest: ready\n")
	select {
	case r := <-e.w.Reports():
		if !r.Ready || r.VMID != "a" || r.PID != 7 {
			t.Fatalf("report %+v; want a's readiness", r)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("reported after %s; want within a few ticks", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
	}
}
