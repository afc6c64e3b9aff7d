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
	tid, err := thread()
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
	t.Cleanup(func() { _ = os.WriteFile(slackPath(got), []byte(strconv.FormatInt(before.Nanoseconds(), 10)), 0) })
	return got
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
	// A process started now (as the agent starts a VMM) keeps the slack
	// it would have had: it inherits its starting thread's, never sysmon's.
	out, err := exec.Command("cat", "/proc/self/timerslack_ns").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != strconv.FormatInt(before[os.Getpid()].Nanoseconds(), 10) {
		t.Errorf("a child's slack is %s ns; want the process's %v", got, before[os.Getpid()])
	}
	if _, err := Quiet(0); err == nil {
		t.Error("Quiet(0) succeeded; want an error")
	}
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
	tid, err := thread()
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
