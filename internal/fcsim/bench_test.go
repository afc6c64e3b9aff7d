package fcsim

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// reportPercentiles adds p50 and p95 of ds, in milliseconds.
func reportPercentiles(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	at := func(q float64) float64 {
		return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.95), "p95-ms")
}

// spawn starts the binary on a fresh socket and returns once the socket
// accepts connections, with the time that took.
func spawn(b *testing.B, bin, dir string, args ...string) (*exec.Cmd, string, time.Duration) {
	sock := filepath.Join(dir, "fc.sock")
	os.Remove(sock)
	cmd := exec.Command(bin, append([]string{"--api-sock", sock}, args...)...)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd, sock, time.Since(t0)
		}
		if time.Since(t0) > 5*time.Second {
			cmd.Process.Kill()
			cmd.Wait()
			b.Fatal("socket not ready after 5s")
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Kill()
	cmd.Wait()
}

// BenchmarkSpawnToSocketReady measures exec to a listening API socket.
func BenchmarkSpawnToSocketReady(b *testing.B) {
	bin, dir := simtest.Binary(b), b.TempDir()
	ds := make([]time.Duration, 0, b.N)
	for b.Loop() {
		cmd, _, d := spawn(b, bin, dir)
		b.StopTimer()
		stop(cmd)
		b.StartTimer()
		ds = append(ds, d)
	}
	reportPercentiles(b, ds)
}

// BenchmarkBootSequence measures the API time of a full configuration
// (logger, metrics, machine-config, boot-source, drive, and a network
// interface when root, in a namespace of its own) plus InstanceStart.
func BenchmarkBootSequence(b *testing.B) {
	dir := b.TempDir()
	kernel, rootfs := simtest.WriteKernel(b, dir), simtest.WriteRootfs(b, dir, 16)
	withNet := os.Geteuid() == 0
	ctx := context.Background()
	ds := make([]time.Duration, 0, b.N)
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		vmDir := filepath.Join(dir, "vm"+strconv.Itoa(i))
		must(b, os.Mkdir(vmDir, 0o755))
		var p *proc
		if withNet {
			p = startProc(b, procOpts{dir: vmDir, netns: true})
		} else {
			p = startProc(b, procOpts{dir: vmDir})
		}
		c := p.client
		b.StartTimer()
		t0 := time.Now()
		must(b, c.PutLogger(ctx, firecracker.Logger{LogPath: filepath.Join(vmDir, "fc.log"), Level: "Info"}))
		must(b, c.PutMetrics(ctx, firecracker.Metrics{MetricsPath: filepath.Join(vmDir, "metrics.json")}))
		must(b, c.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 2, MemSizeMib: 256}))
		must(b, c.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel, BootArgs: "console=ttyS0 reboot=k panic=1"}))
		must(b, c.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true}))
		if withNet {
			must(b, c.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:02"}))
		}
		must(b, c.InstanceStart(ctx))
		ds = append(ds, time.Since(t0))
		b.StopTimer()
		p.kill()
		c.CloseIdleConnections()
		if p.ns.IsOpen() {
			p.ns.Close()
		}
		os.RemoveAll(vmDir)
	}
	reportPercentiles(b, ds)
}

// BenchmarkIdleRSS reports the resident memory and the CPU use of one
// booted, idle simulator.
func BenchmarkIdleRSS(b *testing.B) {
	p := startProc(b, procOpts{})
	bootConfig(b, p.client, p.dir)
	must(b, p.client.InstanceStart(context.Background()))
	p.client.CloseIdleConnections()
	pid := p.cmd.Process.Pid
	time.Sleep(500 * time.Millisecond)
	cpu0 := cpuTicks(b, pid)
	t0 := time.Now()
	for b.Loop() {
	}
	if rest := 2*time.Second - time.Since(t0); rest > 0 {
		time.Sleep(rest)
	}
	ticks := cpuTicks(b, pid) - cpu0
	b.ReportMetric(float64(statusKiB(b, pid, "VmRSS"))/1024, "idle-rss-MiB")
	// Most of VmRSS is the binary's file pages, shared by every simulator;
	// the anonymous part is what each additional VM costs.
	b.ReportMetric(float64(statusKiB(b, pid, "RssAnon"))/1024, "idle-anon-MiB")
	// Clock ticks are 10 ms: this is CPU ms per second of idle run time.
	b.ReportMetric(float64(ticks)*10/time.Since(t0).Seconds(), "idle-cpu-ms/s")
}

// statusKiB reads a "<field>: N kB" line of /proc/<pid>/status.
func statusKiB(tb testing.TB, pid int, field string) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	must(tb, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func cpuTicks(tb testing.TB, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	must(tb, err)
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}
