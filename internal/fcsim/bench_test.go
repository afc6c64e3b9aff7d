package fcsim

import (
	"context"
	"io"
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
func reportPercentiles(b *testing.B, ds []time.Duration) { reportPercentilesAs(b, ds, "") }

// reportPercentilesAs is reportPercentiles with a prefix for the unit
// ("cpu" gives p50-cpu-ms).
func reportPercentilesAs(b *testing.B, ds []time.Duration, prefix string) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	at := func(q float64) float64 {
		return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))].Microseconds()) / 1000
	}
	unit := "ms"
	if prefix != "" {
		unit = prefix + "-ms"
	}
	b.ReportMetric(at(0.50), "p50-"+unit)
	b.ReportMetric(at(0.95), "p95-"+unit)
}

// startReady starts the binary on a fresh socket and returns once the
// API answers GET /version, with the wall time and the CPU time (all
// threads, from /proc/<pid>/task/*/schedstat) that took.
func startReady(b *testing.B, bin, dir string, args ...string) (*exec.Cmd, time.Duration, time.Duration) {
	sock := filepath.Join(dir, "fc.sock")
	os.Remove(sock)
	cmd := exec.Command(bin, append([]string{"--api-sock", sock}, args...)...)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	for {
		if answered(sock) {
			return cmd, time.Since(t0), cpuTime(cmd.Process.Pid)
		}
		if time.Since(t0) > 5*time.Second {
			stop(cmd)
			b.Fatal("API not ready after 5s")
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// answered sends GET /version and reports whether a 200 came back.
func answered(sock string) bool {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "GET /version HTTP/1.1\r\n\r\n"); err != nil {
		return false
	}
	buf := make([]byte, 16)
	n, _ := io.ReadFull(c, buf)
	return n == len(buf) && strings.HasPrefix(string(buf), "HTTP/1.1 200 ")
}

// cpuTime sums the CPU time of every thread of pid.
func cpuTime(pid int) time.Duration {
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	var total time.Duration
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/schedstat")
		if err != nil {
			continue
		}
		if ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64); err == nil {
			total += time.Duration(ns)
		}
	}
	return total
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Kill()
	cmd.Wait()
}

// floorSource is the smallest Go program that does what the simulator
// must do before its API is ready: listen on a unix socket and answer.
// Its start time is the Go runtime's floor on the host, which the numbers
// of the simulator are to be read against.
const floorSource = `package main

import (
	"net"
	"os"
)

func main() {
	ln, err := net.Listen("unix", os.Args[2])
	if err != nil {
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 512)
		c.Read(buf)
		c.Write([]byte("HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n{}"))
		c.Close()
	}
}
`

func buildFloor(b *testing.B) string {
	dir := b.TempDir()
	src := filepath.Join(dir, "main.go")
	must(b, os.WriteFile(src, []byte(floorSource), 0o644))
	bin := filepath.Join(dir, "floor")
	if out, err := exec.Command("go", "build", "-o", bin, src).CombinedOutput(); err != nil {
		b.Fatalf("build the floor program: %v\n%s", err, out)
	}
	return bin
}

// BenchmarkStartToAPIReady measures exec to the first answered API call
// (GET /version), wall and CPU time, for firecracker-sim and, as the
// floor, for a minimal Go program that only listens and answers.
func BenchmarkStartToAPIReady(b *testing.B) {
	for _, bench := range []struct {
		name string
		bin  func(*testing.B) string
	}{
		{"firecracker-sim", func(b *testing.B) string { return simtest.Binary(b) }},
		{"go-floor", buildFloor},
	} {
		b.Run(bench.name, func(b *testing.B) {
			bin, dir := bench.bin(b), b.TempDir()
			wall := make([]time.Duration, 0, b.N)
			cpu := make([]time.Duration, 0, b.N)
			for b.Loop() {
				cmd, w, c := startReady(b, bin, dir)
				b.StopTimer()
				stop(cmd)
				b.StartTimer()
				wall, cpu = append(wall, w), append(cpu, c)
			}
			reportPercentiles(b, wall)
			reportPercentilesAs(b, cpu, "cpu")
		})
	}
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

// BenchmarkRSSPerVM boots 20 simulated VMs side by side (the way a scale
// test runs them), lets them idle, and reports per VM: resident memory
// (VmRSS, which counts the binary's pages shared by every VM), its
// anonymous part and the proportional set size (PSS: shared pages divided
// among the VMs sharing them), p50 and p95, plus their idle CPU use.
func BenchmarkRSSPerVM(b *testing.B) {
	const vms = 20
	dir := b.TempDir()
	kernel, rootfs := simtest.WriteKernel(b, dir), simtest.WriteRootfs(b, dir, 16)
	ctx := context.Background()
	var pids []int
	for i := 0; i < vms; i++ {
		p := startProc(b, procOpts{})
		must(b, p.client.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128}))
		must(b, p.client.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel}))
		must(b, p.client.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true,
			IsReadOnly: firecracker.Bool(true)}))
		must(b, p.client.InstanceStart(ctx))
		p.client.CloseIdleConnections()
		pids = append(pids, p.cmd.Process.Pid)
	}
	time.Sleep(500 * time.Millisecond)
	cpu0 := make([]time.Duration, len(pids))
	for i, pid := range pids {
		cpu0[i] = cpuTime(pid)
	}
	t0 := time.Now()
	for b.Loop() {
	}
	if rest := 2*time.Second - time.Since(t0); rest > 0 {
		time.Sleep(rest)
	}
	var rss, anon, pss []float64
	var idle time.Duration
	for i, pid := range pids {
		rss = append(rss, float64(statusKiB(b, pid, "VmRSS"))/1024)
		anon = append(anon, float64(statusKiB(b, pid, "RssAnon"))/1024)
		pss = append(pss, float64(rollupKiB(b, pid, "Pss"))/1024)
		idle += cpuTime(pid) - cpu0[i]
	}
	reportValues(b, rss, "rss-MiB")
	reportValues(b, anon, "anon-MiB")
	reportValues(b, pss, "pss-MiB")
	// CPU ms per second of idle run time, per VM.
	b.ReportMetric(float64(idle.Microseconds())/1000/time.Since(t0).Seconds()/vms, "idle-cpu-ms/s")
}

// reportValues adds p50 and p95 of vs under unit.
func reportValues(b *testing.B, vs []float64, unit string) {
	slices.Sort(vs)
	at := func(q float64) float64 { return vs[min(len(vs)-1, int(q*float64(len(vs))))] }
	b.ReportMetric(at(0.50), "p50-"+unit)
	b.ReportMetric(at(0.95), "p95-"+unit)
}

// rollupKiB reads a "<field>: N kB" line of /proc/<pid>/smaps_rollup.
func rollupKiB(tb testing.TB, pid int, field string) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	must(tb, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	tb.Fatalf("no %s in /proc/%d/smaps_rollup", field, pid)
	return 0
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
