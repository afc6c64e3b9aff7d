package e2e

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// startUp runs `nexus up` and returns it with the lines it printed once
// it says it is ready.
func startUp(t *testing.T, dir string, port int) (*exec.Cmd, []string) {
	t.Helper()
	cmd := exec.Command(bins.nexus, "up", "--data-dir", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:"+itoa(port), "--bridge", "nxup0", "--uplink", "none", "--log-format", "json")
	// Only firecracker-sim is on PATH: up must find it next to nexus.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr, _ = os.Create(filepath.Join(dir, "up.log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, waitReady(t, out, filepath.Join(dir, "up.log"))
}

// waitReady reads what `nexus up` prints until it says it is ready, and
// returns those lines; the rest of its output is drained.
func waitReady(t testing.TB, out io.Reader, logPath string) []string {
	t.Helper()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var got []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("nexus up exited early; printed %q; log:\n%s", got, tail(string(b), 30))
			}
			got = append(got, l)
			if strings.HasPrefix(l, "nexus: ready at") {
				go func() {
					for range lines {
					}
				}()
				return got
			}
		case <-timeout:
			t.Fatalf("nexus up not ready in 30s; printed %q", got)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestUp: `nexus up` says it uses firecracker-sim, writes and prints an
// admin token (0600), serves the API with a registered local agent, and a
// second `up` on the same data dir finds the same VMs, still running.
func TestUp(t *testing.T) {
	testutil.RequireRoot(t)
	dir := shortTempDir(t)
	port := freePort(t)
	cmd, out := startUp(t, dir, port)
	text := strings.Join(out, "\n")
	if !strings.Contains(text, "using firecracker-sim") {
		t.Fatalf("up did not say it simulates:\n%s", text)
	}
	tokPath := filepath.Join(dir, "data", "admin.token")
	fi, err := os.Stat(tokPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v, mode %v", err, fi.Mode())
	}
	raw, _ := os.ReadFile(tokPath)
	token := strings.TrimSpace(string(raw))
	if !strings.Contains(text, token) {
		t.Fatal("the first up did not print the admin token")
	}
	cl := nexus.New("http://127.0.0.1:"+itoa(port), token)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, dir)
	vm, err := cl.CreateVM(ctx, apitypes.CreateVMRequest{Name: "persist", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(dir, "data", "run")
	pids := vmmPIDs(runDir)
	if len(pids) != 1 {
		t.Fatalf("vmm processes: %v", pids)
	}

	// Ctrl-C: up stops cleanly; the VM keeps running.
	_ = cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("up after Ctrl-C: %v", err)
	}
	if now := vmmPIDs(runDir); len(now) != 1 || now[0] != pids[0] {
		t.Fatalf("vmm after up stopped: %v, want %v", now, pids)
	}

	_, out = startUp(t, dir, port)
	if strings.Contains(strings.Join(out, "\n"), token) {
		t.Fatal("the second up printed the token again")
	}
	got, err := cl.GetVM(ctx, vm.ID)
	if err != nil || got.State != "running" {
		t.Fatalf("after restart: %+v, %v", got, err)
	}
	if err := cl.VMAction(ctx, vm.ID, "pause"); err != nil {
		t.Fatalf("the adopted VM does not answer: %v", err)
	}
	if err := cl.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if left := vmmPIDs(runDir); len(left) != 0 {
		t.Fatalf("vmm left after delete: %v", left)
	}
}
