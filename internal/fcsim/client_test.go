package fcsim

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// endpointRun is one simulator the endpoint test drives.
type endpointRun struct {
	c       *firecracker.Client
	dir     string
	withNet bool
	covered map[string]bool
	// fresh starts another simulator (for snapshot load) and returns its
	// client and a function that waits for its exit code.
	fresh func(t *testing.T) (*firecracker.Client, func() int)
}

func (r *endpointRun) cover(method, path string) { r.covered[method+" "+path] = true }

// TestClientEveryEndpoint drives every endpoint of firecracker.Endpoints
// through the typed client: in process without network devices, and (as
// root) as a real process in its own network namespace with them.
func TestClientEveryEndpoint(t *testing.T) {
	covered := map[string]bool{}
	t.Run("in-process", func(t *testing.T) {
		p := startInProc(t, "--enable-pci")
		r := &endpointRun{c: p.client, dir: p.dir, covered: covered}
		r.fresh = func(t *testing.T) (*firecracker.Client, func() int) {
			q := startInProc(t)
			return q.client, func() int {
				select {
				case code := <-q.done:
					q.done <- code
					return code
				case <-time.After(3 * time.Second):
					return -1
				}
			}
		}
		r.exercise(t)
	})
	t.Run("process-in-netns", func(t *testing.T) {
		testutil.RequireRoot(t)
		p := startProc(t, procOpts{netns: true, args: []string{"--enable-pci"}})
		r := &endpointRun{c: p.client, dir: p.dir, covered: covered, withNet: true}
		r.fresh = func(t *testing.T) (*firecracker.Client, func() int) {
			q := startProc(t, procOpts{netns: true})
			return q.client, func() int { return q.wait(t, 3*time.Second) }
		}
		r.exercise(t)
	})
	for _, e := range firecracker.Endpoints {
		if !covered[e.Method+" "+e.Path] {
			if os.Geteuid() != 0 && strings.Contains(e.Path, "network-interfaces") || e.Path == "/mmds/config" && os.Geteuid() != 0 {
				continue // needs a TAP: covered by the root variant
			}
			t.Errorf("endpoint %s %s is not exercised", e.Method, e.Path)
		}
	}
}

func (r *endpointRun) exercise(t *testing.T) {
	ctx := context.Background()
	c, dir := r.c, r.dir

	info, err := c.DescribeInstance(ctx)
	must(t, err)
	if info.State != firecracker.StateNotStarted || info.VMMVersion != "1.16.1-sim" || info.AppName != "Firecracker" || info.ID == "" {
		t.Fatalf("GET / = %+v", info)
	}
	r.cover("GET", "/")
	v, err := c.Version(ctx)
	must(t, err)
	if v.FirecrackerVersion != "1.16.1-sim" {
		t.Fatalf("GET /version = %+v", v)
	}
	r.cover("GET", "/version")

	mc, err := c.GetMachineConfig(ctx)
	must(t, err)
	if mc.VcpuCount != 1 || mc.MemSizeMib != 128 || mc.HugePages != "None" || mc.Smt == nil || *mc.Smt {
		t.Fatalf("default machine config = %+v", mc)
	}
	r.cover("GET", "/machine-config")
	must(t, c.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 2, MemSizeMib: 256, Smt: firecracker.Bool(true)}))
	r.cover("PUT", "/machine-config")
	must(t, c.PatchMachineConfig(ctx, firecracker.MachineConfigPatch{MemSizeMib: firecracker.Int(128)}))
	r.cover("PATCH", "/machine-config")
	mc, _ = c.GetMachineConfig(ctx)
	if mc.VcpuCount != 2 || mc.MemSizeMib != 128 || !*mc.Smt {
		t.Fatalf("machine config after PUT+PATCH = %+v", mc)
	}

	logPath, metricsPath := filepath.Join(dir, "fc.log"), filepath.Join(dir, "metrics.json")
	must(t, c.PutLogger(ctx, firecracker.Logger{LogPath: logPath, Level: "debug", ShowLevel: firecracker.Bool(true)}))
	r.cover("PUT", "/logger")
	must(t, c.PutMetrics(ctx, firecracker.Metrics{MetricsPath: metricsPath}))
	r.cover("PUT", "/metrics")
	must(t, c.PutCPUConfig(ctx, firecracker.CPUConfig{MsrModifiers: []firecracker.MsrModifier{{Addr: "0x10a", Bitmap: "0b0"}}}))
	r.cover("PUT", "/cpu-config")
	must(t, c.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: simtest.WriteKernel(t, dir)}))
	r.cover("PUT", "/boot-source")
	must(t, c.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", PathOnHost: simtest.WriteRootfs(t, dir, 8), IsRootDevice: true}))
	data := filepath.Join(dir, "data.img")
	must(t, os.WriteFile(data, nil, 0o644))
	must(t, c.PutDrive(ctx, firecracker.Drive{DriveID: "data", PathOnHost: data, IsReadOnly: firecracker.Bool(true)}))
	r.cover("PUT", "/drives/{id}")
	pm := filepath.Join(dir, "pmem.img")
	must(t, os.WriteFile(pm, make([]byte, 4096), 0o644))
	must(t, c.PutPmem(ctx, firecracker.Pmem{ID: "pm0", PathOnHost: pm}))
	r.cover("PUT", "/pmem/{id}")
	if r.withNet {
		must(t, c.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02"}))
		r.cover("PUT", "/network-interfaces/{id}")
		must(t, c.PutMMDSConfig(ctx, firecracker.MmdsConfig{Version: "V2", NetworkInterfaces: []string{"eth0"}}))
		r.cover("PUT", "/mmds/config")
	}
	must(t, c.PutMMDS(ctx, map[string]any{"latest": map[string]any{"meta-data": map[string]any{"id": "i-1"}}}))
	r.cover("PUT", "/mmds")
	must(t, c.PatchMMDS(ctx, map[string]any{"latest": map[string]any{"user-data": "hello"}}))
	r.cover("PATCH", "/mmds")
	raw, err := c.GetMMDS(ctx)
	must(t, err)
	if string(raw) != `{"latest":{"meta-data":{"id":"i-1"},"user-data":"hello"}}` {
		t.Fatalf("GET /mmds = %s", raw)
	}
	r.cover("GET", "/mmds")
	vsockPath := filepath.Join(dir, "v.sock")
	must(t, c.PutVsock(ctx, firecracker.Vsock{GuestCID: 3, UDSPath: vsockPath}))
	if fi, err := os.Stat(vsockPath); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("vsock uds_path not bound: %v", err)
	}
	r.cover("PUT", "/vsock")
	must(t, c.PutEntropy(ctx, firecracker.EntropyDevice{}))
	r.cover("PUT", "/entropy")
	must(t, c.PutSerial(ctx, firecracker.SerialDevice{}))
	r.cover("PUT", "/serial")
	must(t, c.PutBalloon(ctx, firecracker.Balloon{AmountMib: 16, DeflateOnOOM: true,
		StatsPollingIntervalS: firecracker.Int(1), FreePageHinting: firecracker.Bool(true)}))
	r.cover("PUT", "/balloon")
	b, err := c.GetBalloon(ctx)
	must(t, err)
	if b.AmountMib != 16 || !b.DeflateOnOOM {
		t.Fatalf("GET /balloon = %+v", b)
	}
	r.cover("GET", "/balloon")
	must(t, c.PutMemoryHotplug(ctx, firecracker.MemoryHotplugConfig{TotalSizeMib: firecracker.Int(1024)}))
	r.cover("PUT", "/hotplug/memory")

	cfg, err := c.GetVMConfig(ctx)
	must(t, err)
	if len(cfg.Drives) != 2 || cfg.Drives[0].DriveID != "rootfs" || cfg.MachineConfig == nil || cfg.MachineConfig.MemSizeMib != 128 ||
		cfg.BootSource == nil || cfg.Vsock == nil || cfg.Balloon == nil || cfg.MemoryHotplug == nil || len(cfg.Pmem) != 1 {
		t.Fatalf("GET /vm/config = %+v", cfg)
	}
	if r.withNet && (len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].GuestMAC != "06:00:ac:10:00:02") {
		t.Fatalf("GET /vm/config network-interfaces = %+v (MAC must come back in lower case)", cfg.NetworkInterfaces)
	}
	r.cover("GET", "/vm/config")

	must(t, c.InstanceStart(ctx))
	r.cover("PUT", "/actions")
	info, _ = c.DescribeInstance(ctx)
	if info.State != firecracker.StateRunning {
		t.Fatalf("state after InstanceStart = %q", info.State)
	}

	data2 := filepath.Join(dir, "data2.img")
	must(t, os.WriteFile(data2, make([]byte, 8192), 0o644))
	must(t, c.PatchDrive(ctx, firecracker.PartialDrive{DriveID: "data", PathOnHost: data2}))
	r.cover("PATCH", "/drives/{id}")
	if r.withNet {
		must(t, c.PatchNetworkInterface(ctx, firecracker.PartialNetworkInterface{IfaceID: "eth0",
			RxRateLimiter: &firecracker.RateLimiter{Bandwidth: &firecracker.TokenBucket{Size: 1 << 20, RefillTime: 100}}}))
		r.cover("PATCH", "/network-interfaces/{id}")
	}
	must(t, c.PatchPmem(ctx, firecracker.PartialPmem{ID: "pm0", RateLimiter: &firecracker.RateLimiter{Ops: &firecracker.TokenBucket{Size: 10, RefillTime: 10}}}))
	r.cover("PATCH", "/pmem/{id}")
	must(t, c.PatchBalloon(ctx, firecracker.BalloonUpdate{AmountMib: 32}))
	r.cover("PATCH", "/balloon")
	if b, _ := c.GetBalloon(ctx); b.AmountMib != 32 {
		t.Fatalf("balloon after PATCH = %+v", b)
	}
	st, err := c.GetBalloonStats(ctx)
	must(t, err)
	if st.TargetMib != 32 || st.TotalMemory == nil || *st.TotalMemory != 128<<20 {
		t.Fatalf("GET /balloon/statistics = %+v", st)
	}
	r.cover("GET", "/balloon/statistics")
	must(t, c.PatchBalloonStats(ctx, firecracker.BalloonStatsUpdate{StatsPollingIntervalS: 2}))
	r.cover("PATCH", "/balloon/statistics")
	must(t, c.StartBalloonHinting(ctx, firecracker.BalloonStartCmd{}))
	r.cover("PATCH", "/balloon/hinting/start")
	hs, err := c.GetBalloonHintingStatus(ctx)
	must(t, err)
	if hs.HostCmd != 2 || hs.GuestCmd == nil || *hs.GuestCmd != 2 {
		t.Fatalf("hinting status = %+v", hs)
	}
	r.cover("GET", "/balloon/hinting/status")
	must(t, c.StopBalloonHinting(ctx))
	r.cover("PATCH", "/balloon/hinting/stop")
	must(t, c.PatchMemoryHotplug(ctx, firecracker.MemoryHotplugSizeUpdate{RequestedSizeMib: firecracker.Int(256)}))
	r.cover("PATCH", "/hotplug/memory")
	hp, err := c.GetMemoryHotplug(ctx)
	must(t, err)
	if hp.RequestedSizeMib != 256 || hp.TotalSizeMib != 1024 || hp.SlotSizeMib != 128 || hp.BlockSizeMib != 2 {
		t.Fatalf("GET /hotplug/memory = %+v", hp)
	}
	r.cover("GET", "/hotplug/memory")

	must(t, c.FlushMetrics(ctx))
	checkMetricsFile(t, metricsPath)

	must(t, c.Pause(ctx))
	must(t, c.Pause(ctx)) // idempotent
	r.cover("PATCH", "/vm")
	if info, _ := c.DescribeInstance(ctx); info.State != firecracker.StatePaused {
		t.Fatalf("state after pause = %q", info.State)
	}
	snap, mem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	must(t, c.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem}))
	r.cover("PUT", "/snapshot/create")
	checkSparseMem(t, mem, 128)
	must(t, c.Resume(ctx))

	must(t, c.DeleteDrive(ctx, "data"))
	r.cover("DELETE", "/drives/{id}")
	must(t, c.DeletePmem(ctx, "pm0"))
	r.cover("DELETE", "/pmem/{id}")
	if r.withNet {
		must(t, c.DeleteNetworkInterface(ctx, "eth0"))
		r.cover("DELETE", "/network-interfaces/{id}")
	}
	if cfg, _ := c.GetVMConfig(ctx); len(cfg.Drives) != 1 || len(cfg.Pmem) != 0 {
		t.Fatalf("config after hot-unplug = %+v", cfg)
	}

	// Load the snapshot into a fresh simulator; it must come up paused
	// with the saved configuration, and Ctrl-Alt-Del ends it with 0.
	// The vsock socket of the first VM still exists, so move it aside.
	fc, exitCode := r.fresh(t)
	load := firecracker.SnapshotLoadParams{SnapshotPath: snap, MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: mem},
		VsockOverride: &firecracker.VsockOverride{UDSPath: filepath.Join(dir, "v2.sock")}}
	if r.withNet {
		load.NetworkOverrides = []firecracker.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}
	}
	must(t, fc.LoadSnapshot(ctx, load))
	r.cover("PUT", "/snapshot/load")
	if info, _ := fc.DescribeInstance(ctx); info.State != firecracker.StatePaused {
		t.Fatalf("state after load = %q", info.State)
	}
	lcfg, err := fc.GetVMConfig(ctx)
	must(t, err)
	if lcfg.MachineConfig.VcpuCount != 2 || lcfg.MachineConfig.MemSizeMib != 128 || len(lcfg.Drives) != 2 {
		t.Fatalf("config after load = %+v", lcfg)
	}
	if r.withNet && lcfg.NetworkInterfaces[0].HostDevName != "tap1" {
		t.Fatalf("network override not applied: %+v", lcfg.NetworkInterfaces)
	}
	must(t, fc.Resume(ctx))
	must(t, fc.SendCtrlAltDel(ctx))
	if code := exitCode(); code != 0 {
		t.Fatalf("exit code after SendCtrlAltDel = %d; want 0", code)
	}
}

func checkMetricsFile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) < 2 {
		t.Fatalf("metrics: %d records; want the boot flush and the FlushMetrics one", len(lines))
	}
	var last map[string]json.RawMessage
	must(t, json.Unmarshal(lines[len(lines)-1], &last))
	for _, k := range []string{"utc_timestamp_ms", "api_server", "block_rootfs", "block", "put_api_requests", "uart", "vcpu", "memory_hotplug"} {
		if _, ok := last[k]; !ok {
			t.Errorf("metrics record lacks %q", k)
		}
	}
	// Counters are deltas: the boot flush saw the PUTs, the later one the
	// PATCHes.
	var first struct {
		Put map[string]uint64 `json:"put_api_requests"`
	}
	must(t, json.Unmarshal(lines[0], &first))
	if first.Put["drive_count"] < 2 || first.Put["actions_count"] != 1 {
		t.Errorf("boot flush put_api_requests = %v", first.Put)
	}
	var later struct {
		Patch map[string]uint64 `json:"patch_api_requests"`
		Put   map[string]uint64 `json:"put_api_requests"`
	}
	must(t, json.Unmarshal(lines[len(lines)-1], &later))
	if later.Patch["drive_count"] != 1 || later.Put["drive_count"] != 0 {
		t.Errorf("FlushMetrics record: patch %v, put %v (counters must be deltas)", later.Patch, later.Put)
	}
}

func checkSparseMem(t *testing.T, path string, mib int) {
	t.Helper()
	fi, err := os.Stat(path)
	must(t, err)
	if fi.Size() != int64(mib)<<20 {
		t.Fatalf("memory file is %d bytes; want %d MiB", fi.Size(), mib)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > 1<<20 {
		t.Fatalf("memory file uses %d bytes on disk; it must be sparse", st.Blocks*512)
	}
}
