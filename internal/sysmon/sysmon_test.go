package sysmon

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// slacks reads every thread's timer slack.
func slacks(t *testing.T) map[int]time.Duration {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]time.Duration{}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		if d, err := SlackOf(tid); err == nil {
			out[tid] = d
		}
	}
	return out
}

// quiet runs Quiet and puts the thread's slack back after the test.
func quiet(t *testing.T) int {
	t.Helper()
	_, tid, err := thread()
	if err != nil {
		t.Fatal(err)
	}
	before, err := SlackOf(tid)
	if err != nil {
		t.Skipf("no timerslack_ns here: %v", err)
	}
	got, err := Quiet(Slack)
	if errors.Is(err, os.ErrPermission) {
		t.Skipf("needs CAP_SYS_NICE: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(slackPath(got), []byte(strconv.FormatInt(before.Nanoseconds(), 10)), 0)
		own.Store(0)
	})
	return got
}

// childSlack starts a process that prints its own timer slack.
func childSlack(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("cat", "/proc/self/timerslack_ns").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestQuietChangesOnlyTheMonitorThread(t *testing.T) {
	before := slacks(t)
	tid := quiet(t)
	after := slacks(t)
	if after[tid] != Slack {
		t.Errorf("thread %d: slack %v after Quiet; want %v", tid, after[tid], Slack)
	}
	for id, d := range before {
		if id != tid && after[id] != d {
			t.Errorf("thread %d: slack %v → %v; only thread %d should change", id, d, after[id], tid)
		}
	}
	if _, err := Quiet(0); err == nil {
		t.Error("Quiet(0) succeeded; want an error")
	}
}

// Threads the runtime starts from sysmon inherit its slack, and so would
// the processes they start: a process started under OwnSlack (as the
// agent starts a VMM) has the process's own, even from such a thread.
func TestOwnSlackKeepsChildrenOffTheMonitorsSlack(t *testing.T) {
	mine, err := SlackOf(os.Getpid())
	if err != nil {
		t.Skipf("no timerslack_ns here: %v", err)
	}
	quiet(t)
	want := strconv.FormatInt(mine.Nanoseconds(), 10)
	// This thread carries the monitor's slack, as one sysmon started
	// would: a child started from it plainly inherits that.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(Slack.Nanoseconds()), 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := childSlack(t); got != strconv.FormatInt(Slack.Nanoseconds(), 10) {
		t.Fatalf("a child of a thread with slack %v has %s ns", Slack, got)
	}
	for range 3 {
		var got string
		if err := OwnSlack(func() error { got = childSlack(t); return nil }); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("a child started under OwnSlack has slack %s ns; want the process's %s", got, want)
		}
	}
	// Nap sleeps and comes back, on a thread with the process's slack.
	Nap(50 * time.Microsecond)
}

// nanosleep is the syscall the runtime's usleep makes.
var nanosleep = map[string]string{"amd64": "35", "arm64": "101"}[runtime.GOARCH]

// While a goroutine keeps a P busy, sysmon polls: it is the thread found
// sleeping in nanosleep, and the one thread() picks.
func TestThreadIsTheOneThatPolls(t *testing.T) {
	if nanosleep == "" {
		t.Skip("no nanosleep number for " + runtime.GOARCH)
	}
	done := make(chan struct{})
	go func() {
		x := 0
		for {
			select {
			case <-done:
				return
			default:
				for i := range 1000 {
					x += i
				}
			}
		}
	}()
	defer close(done)
	seen := map[int]int{}
	for range 100 {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/syscall")
			if err != nil {
				continue
			}
			if f := strings.Fields(string(b)); len(f) > 0 && f[0] == nanosleep {
				tid, _ := strconv.Atoi(e.Name())
				seen[tid]++
			}
		}
		time.Sleep(time.Millisecond)
	}
	_, tid, err := thread()
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for id, n := range seen {
		if n > seen[most] {
			most = id
		}
	}
	if most != tid {
		t.Errorf("thread() = %d; the thread seen in nanosleep most is %d (samples per thread: %v)", tid, most, seen)
	}
}
