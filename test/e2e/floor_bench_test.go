package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// BenchmarkFloor is `make bench-floor`: Nexus's create→running against the
// floor — a minimal program that does what any control plane must for a VM
// (make its directory and TAP, spawn the same VMM binary, make the same
// firecracker calls, start it) and nothing else — interleaved in one run on the same
// machine, sequentially and 10 at once. It prints both, their ratio, and
// the control plane's CPU per create (manager and agent processes).
// NEXUS_BENCH_ENGINE=postgres runs the manager on Postgres (its CPU then
// leaves out the database server's).
func BenchmarkFloor(b *testing.B) {
	seq, conc := envInt("NEXUS_BENCH_FLOOR_N", 30), 10
	engine := os.Getenv("NEXUS_BENCH_ENGINE")
	if engine == "" {
		engine = "sqlite"
	}
	// NEXUS_BENCH_PROFILE=DIR: CPU profiles of the manager and the agent
	// during the sequential creates and deletes (*-seq.prof, *-delete.prof;
	// raise NEXUS_BENCH_FLOOR_N to fill them).
	profDir, pprofPort := os.Getenv("NEXUS_BENCH_PROFILE"), 0
	if profDir != "" {
		pprofPort = freePort(b)
		// The manager listens in the host's namespace, the agent in its own.
		b.Setenv("NEXUS_PPROF", fmt.Sprintf("0.0.0.0:%d", pprofPort))
	}
	for range b.N {
		c := newCluster(b, engine, 1)
		ctx := context.Background()
		kernel := simtest.WriteKernel(b, c.dir)
		f := newFloor(b, filepath.Join(c.dir, "floor"), kernel)

		// Warm-up, not measured: this machine's first boots of a run (of
		// the floor too) are slower and costlier than the rest (30 creates
		// measured 13 ms of CPU each, 150 measured 10).
		var ids []string
		for i := range envInt("NEXUS_BENCH_FLOOR_WARMUP", 10) {
			f.boot(b)
			vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("warm-%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, vm.ID)
		}
		warm := len(ids)
		var profiling sync.WaitGroup
		profile := func(phase string, d time.Duration) {
			if profDir == "" {
				return
			}
			profiling.Go(func() {
				profileCPU(b, fmt.Sprintf("127.0.0.1:%d", pprofPort), filepath.Join(profDir, "manager-"+phase+".prof"), d)
			})
			profiling.Go(func() {
				profileCPU(b, fmt.Sprintf("%s:%d", c.agents[0].net.agentIP, pprofPort), filepath.Join(profDir, "agent-"+phase+".prof"), d)
			})
		}
		profile("seq", time.Duration(seq)*30*time.Millisecond)
		var floorSeq, nexusSeq, floorDel []time.Duration
		var floorCPU, floorDelCPU time.Duration // the floor program's own (this process's)
		mgr0, ag0 := cpuTicks(c.mgr.cmd.Process.Pid), cpuTicks(c.agents[0].cmd.Process.Pid)
		mcs0, acs0 := ctxSwitches(c.mgr.cmd.Process.Pid), ctxSwitches(c.agents[0].cmd.Process.Pid)
		for i := range seq {
			floorSeq = append(floorSeq, f.boot(b))
			floorCPU += f.cpu
			floorDel, floorDelCPU = append(floorDel, f.del), floorDelCPU+f.delCPU
			s := time.Now()
			vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("seq-%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
			if err != nil {
				b.Fatal(err)
			}
			nexusSeq = append(nexusSeq, time.Since(s))
			ids = append(ids, vm.ID)
		}
		mgr1, ag1 := cpuTicks(c.mgr.cmd.Process.Pid), cpuTicks(c.agents[0].cmd.Process.Pid)
		mcs1, acs1 := ctxSwitches(c.mgr.cmd.Process.Pid), ctxSwitches(c.agents[0].cmd.Process.Pid)
		profiling.Wait()
		b.Logf("where a create's time goes (p50 of each boot step over the sequential creates; firecracker calls as the agent timed them, without the batch's round trip): %s",
			stepMedians(b, c, ids[warm:warm+seq]))

		var floorConc, nexusConc []time.Duration
		var mu sync.Mutex
		for round := range 3 {
			var wg sync.WaitGroup
			for range conc {
				wg.Go(func() {
					d := f.boot(b)
					mu.Lock()
					floorConc = append(floorConc, d)
					mu.Unlock()
				})
			}
			wg.Wait()
			for i := range conc {
				wg.Go(func() {
					s := time.Now()
					vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("conc-%d-%d", round, i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
					if err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					nexusConc = append(nexusConc, time.Since(s))
					ids = append(ids, vm.ID)
					mu.Unlock()
				})
			}
			wg.Wait()
		}
		f.close(b)

		// Sequential deletes of the sequential creates' VMs, one call
		// each, against the floor's teardowns timed above.
		var nexusDel []time.Duration
		profile("delete", time.Duration(seq)*20*time.Millisecond)
		mgr2, ag2 := cpuTicks(c.mgr.cmd.Process.Pid), cpuTicks(c.agents[0].cmd.Process.Pid)
		for _, id := range ids[warm : warm+seq] {
			s := time.Now()
			if err := c.client.DeleteVM(ctx, id); err != nil {
				b.Fatal(err)
			}
			nexusDel = append(nexusDel, time.Since(s))
		}
		mgr3, ag3 := cpuTicks(c.mgr.cmd.Process.Pid), cpuTicks(c.agents[0].cmd.Process.Pid)
		profiling.Wait()
		deleteAll(b, c.client, slices.Concat(ids[:warm], ids[warm+seq:]), 50)

		pct := func(d []time.Duration, q float64) float64 {
			s := slices.Clone(d)
			slices.Sort(s)
			return float64(s[int(q*float64(len(s)))].Microseconds()) / 1000
		}
		p50 := func(d []time.Duration) float64 { return pct(d, 0.5) } // s[len/2], as before
		b.ReportMetric(p50(floorSeq), "floor-seq-p50-ms")
		b.ReportMetric(p50(nexusSeq), "nexus-seq-p50-ms")
		b.ReportMetric(p50(nexusSeq)/p50(floorSeq), "ratio-seq")
		b.ReportMetric(p50(floorConc), "floor-10x-p50-ms")
		b.ReportMetric(p50(nexusConc), "nexus-10x-p50-ms")
		b.ReportMetric(p50(nexusConc)/p50(floorConc), "ratio-10x")
		// The tail of a burst: the last boots of each 10 (p95 of 30).
		b.ReportMetric(pct(floorConc, 0.95), "floor-10x-p95-ms")
		b.ReportMetric(pct(nexusConc, 0.95), "nexus-10x-p95-ms")
		b.ReportMetric(float64(mgr1-mgr0+ag1-ag0)*10/float64(seq), "cp-cpu-ms/create")
		b.ReportMetric(float64(mgr1-mgr0)*10/float64(seq), "manager-cpu-ms/create")
		b.ReportMetric(float64(ag1-ag0)*10/float64(seq), "agent-cpu-ms/create")
		b.ReportMetric(float64(floorCPU.Microseconds())/1000/float64(seq), "floor-cpu-ms/boot")
		// Mostly wake-ups of their threads (the rest preemptions): on a
		// virtualised host a large share of their CPU, and steadier than
		// it from run to run. Threads that end meanwhile are not counted.
		b.ReportMetric(float64(mcs1-mcs0)/float64(seq), "manager-ctxsw/create")
		b.ReportMetric(float64(acs1-acs0)/float64(seq), "agent-ctxsw/create")
		b.ReportMetric(p50(floorDel), "floor-delete-p50-ms")
		b.ReportMetric(p50(nexusDel), "nexus-delete-p50-ms")
		b.ReportMetric(pct(nexusDel, 0.95), "nexus-delete-p95-ms")
		// Not like for like in one respect: the floor kills its VMM,
		// where Nexus sends SIGTERM and waits (firecracker-sim exits on it
		// at once).
		b.ReportMetric(p50(nexusDel)/p50(floorDel), "ratio-delete")
		b.ReportMetric(float64(mgr3-mgr2+ag3-ag2)*10/float64(seq), "cp-cpu-ms/delete")
		b.ReportMetric(float64(floorDelCPU.Microseconds())/1000/float64(seq), "floor-cpu-ms/delete")
	}
}

// floor boots VMs with nothing but what booting needs.
type floor struct {
	dir, kernel string
	nw          *network.Network
	cpu         time.Duration // the last boot's CPU (this process's), as timed
	// The last boot's teardown (kill the VMM, reap it, delete its TAP and
	// dir) as a delete would do it: its time and CPU.
	del, delCPU time.Duration
}

func newFloor(tb testing.TB, dir, kernel string) *floor {
	nw, err := network.New(network.Config{Owner: "floor", Bridge: "floorbr0", Gateway: netip.MustParsePrefix("172.29.0.1/16"), Uplink: network.UplinkNone}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := nw.EnsureBridge(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return &floor{dir: dir, kernel: kernel, nw: nw}
}

// boot makes the VM's directory and TAP, spawns the VMM, configures and
// starts it, and returns how long that took; the VM is then torn down,
// timed apart (del).
func (f *floor) boot(tb testing.TB) time.Duration {
	ctx := context.Background()
	id := uuid.NewString()
	vmDir := filepath.Join(f.dir, id)
	sock := filepath.Join(vmDir, "fc.sock")
	tap := hostlayout.TapName(id)
	start, cpu0 := time.Now(), selfCPU()
	// The socket needs a directory, and the teardown below times its
	// removal: its making is timed too.
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := f.nw.EnsureTap(ctx, tap, id); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bins.sim, firecracker.Args{APISock: sock, ID: id}.Argv()...)
	cmd.Dir = vmDir
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	fc := firecracker.NewUnix(sock)
	steps := []func() error{
		func() error {
			return fc.PutLogger(ctx, firecracker.Logger{LogPath: filepath.Join(vmDir, "fc.log"), Level: "Info", ShowLevel: firecracker.Bool(true)})
		},
		func() error {
			return fc.PutMetrics(ctx, firecracker.Metrics{MetricsPath: filepath.Join(vmDir, "metrics.json")})
		},
		func() error {
			return fc.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})
		},
		func() error {
			return fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: f.kernel, BootArgs: "console=ttyS0 reboot=k panic=1 pci=off"})
		},
		func() error {
			return fc.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: tap, GuestMAC: hostlayout.GuestMAC(id).String()})
		},
		func() error { return fc.InstanceStart(ctx) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			tb.Fatal(err)
		}
	}
	d := time.Since(start)
	f.cpu = selfCPU() - cpu0
	start, cpu0 = time.Now(), selfCPU()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	_ = f.nw.DeleteTap(ctx, tap)
	_ = os.RemoveAll(vmDir)
	f.del, f.delCPU = time.Since(start), selfCPU()-cpu0
	return d
}

func (f *floor) close(tb testing.TB) {
	if _, err := f.nw.Teardown(context.Background(), true); err != nil {
		tb.Error(err)
	}
	f.nw.Close()
}

// selfCPU is this process's user and system CPU time so far (its VMM
// children's not included, as cpuTicks leaves out the agent's).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTicks is a process's user+system CPU time in clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return ut + st
}

// ctxSwitches is a process's context switches so far (voluntary and not),
// summed over its live threads.
func ctxSwitches(pid int) int64 {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "status"))
		if err != nil {
			continue // a thread that just ended
		}
		for line := range strings.Lines(string(b)) {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// stepMedians reads the boot event of each VM ("boot: assign address
// 0.1 ms, spawn vmm 4.4 ms (pid 1, tap-…), …") and returns each step's
// median duration, in the steps' order.
func stepMedians(tb testing.TB, c *cluster, ids []string) string {
	var order []string
	per := map[string][]float64{}
	for _, id := range ids {
		evs, err := c.client.Events(context.Background(), id)
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range evs.Items {
			msg, ok := strings.CutPrefix(e.Message, "boot: ")
			if !ok {
				continue
			}
			for _, m := range stepTime.FindAllStringSubmatch(msg, -1) {
				v, _ := strconv.ParseFloat(m[2], 64)
				if _, seen := per[m[1]]; !seen {
					order = append(order, m[1])
				}
				per[m[1]] = append(per[m[1]], v)
			}
		}
	}
	var parts []string
	for _, name := range order {
		v := per[name]
		slices.Sort(v)
		parts = append(parts, fmt.Sprintf("%s %.1f ms", name, v[len(v)/2]))
	}
	return strings.Join(parts, ", ")
}

// stepTime matches "<step name> <ms> ms" in a boot event.
var stepTime = regexp.MustCompile(`(?:^|, )([a-z][a-z ]*[a-z]) ([0-9]+\.[0-9]) ms`)
