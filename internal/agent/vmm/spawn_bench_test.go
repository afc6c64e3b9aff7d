package vmm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkSpawnOverExec is what the supervisor's Spawn (run dir, files,
// cgroup, handle, socket wait) costs over starting the same VMM binary
// bare and polling its socket, interleaved in one run.
func BenchmarkSpawnOverExec(b *testing.B) {
	testutil.RequireRoot(b)
	dir, err := os.MkdirTemp("", "nxb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	layout := hostlayout.Layout{RunDir: filepath.Join(dir, "run")}
	sup, err := New(Config{Bin: simtest.Binary(b), Layout: layout, Owner: fmt.Sprintf("%012x", rand.Int64N(1<<48))})
	if err != nil {
		b.Fatal(err)
	}
	sup.SetCreatesLogFiles(true)
	defer sup.ReleaseCgroups()
	ctx := context.Background()
	var bare, spawn []time.Duration
	// The benchmark's own CPU (user and system) while it starts bare and
	// while the supervisor spawns, per start: what the agent pays.
	var bareCPU, spawnCPU time.Duration
	for range b.N {
		id := uuid.NewString()
		vmDir := filepath.Join(dir, "bare", id)
		if err := os.MkdirAll(vmDir, 0o750); err != nil {
			b.Fatal(err)
		}
		sock := filepath.Join(vmDir, "fc.sock")
		c0 := selfCPU(b)
		start := time.Now()
		cmd := exec.Command(sup.cfg.Bin, firecracker.Args{APISock: sock, ID: id}.Argv()...)
		cmd.Dir = vmDir
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		for {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
		bare = append(bare, time.Since(start))
		bareCPU += selfCPU(b) - c0
		_ = cmd.Process.Kill()
		_ = cmd.Wait()

		id = uuid.NewString()
		c0 = selfCPU(b)
		start = time.Now()
		if _, _, err := sup.Spawn(ctx, id, SpawnOptions{Vcpu: 1, MemMib: 128}); err != nil {
			b.Fatal(err)
		}
		spawn = append(spawn, time.Since(start))
		spawnCPU += selfCPU(b) - c0
		if err := sup.Stop(ctx, id, 0); err != nil {
			b.Fatal(err)
		}
		_ = os.RemoveAll(layout.VMDir(id))
	}
	testutil.ReportLatency(b, "bare-exec", bare)
	testutil.ReportLatency(b, "spawn", spawn)
	b.ReportMetric(float64(bareCPU.Microseconds())/1000/float64(b.N), "bare-exec-cpu-ms/op")
	b.ReportMetric(float64(spawnCPU.Microseconds())/1000/float64(b.N), "spawn-cpu-ms/op")
}

// selfCPU is the CPU time this process has used, user and system.
func selfCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
