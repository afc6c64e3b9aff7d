package fcsim

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// The VMM side: each action runs with s.mu held, checks the phase the way
// firecracker's PrebootApiController / RuntimeApiController split them,
// and answers with firecracker's fault messages.

func (s *sim) started() bool { return s.state != stateNotStarted }

// pre and post are the phase checks.
func (s *sim) pre() *vmmError {
	if s.started() {
		return errPostBoot
	}
	return nil
}

func (s *sim) post() *vmmError {
	if !s.started() {
		return errPreBoot
	}
	return nil
}

type instanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

func (s *sim) getInstanceInfo() (any, *vmmError) {
	return instanceInfo{ID: s.opts.id, State: s.state.String(), VMMVersion: Version, AppName: "Firecracker"}, nil
}

func (s *sim) getVersion() (any, *vmmError) {
	return firecracker.FirecrackerVersion{FirecrackerVersion: Version}, nil
}

// machineConfigOut is GET /machine-config in firecracker's field order.
type machineConfigOut struct {
	VcpuCount       int    `json:"vcpu_count"`
	MemSizeMib      int    `json:"mem_size_mib"`
	Smt             bool   `json:"smt"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	HugePages       string `json:"huge_pages"`
}

func (s *sim) machineOut() machineConfigOut {
	m := s.res.machine
	out := machineConfigOut{VcpuCount: m.VcpuCount, MemSizeMib: m.MemSizeMib, Smt: *m.Smt,
		TrackDirtyPages: *m.TrackDirtyPages, HugePages: m.HugePages}
	if m.CPUTemplate != "" && m.CPUTemplate != "None" {
		out.CPUTemplate = m.CPUTemplate
	}
	return out
}

func (s *sim) getMachineConfig() (any, *vmmError) { return s.machineOut(), nil }

// getFullConfig is GET /vm/config: every config-file key, null when unset;
// logger, metrics and cpu-config are never reported.
func (s *sim) getFullConfig() (any, *vmmError) {
	r := &s.res
	type kv struct {
		k string
		v any
	}
	boot := any(firecracker.BootSource{})
	if r.boot != nil {
		boot = r.boot.cfg
	}
	drives := make([]firecracker.Drive, 0, len(r.drives))
	for _, d := range r.drives {
		drives = append(drives, d.cfg)
	}
	nets := make([]firecracker.NetworkInterface, 0, len(r.nets))
	for _, n := range r.nets {
		nets = append(nets, n.cfg)
	}
	var balloon, vsock, hotplug, pmem any
	if r.balloon != nil {
		balloon = r.balloon.cfg
	}
	if r.vsock != nil {
		vsock = r.vsock.cfg
	}
	if r.hotplug != nil {
		hotplug = r.hotplug.cfg
	}
	if len(r.pmems) > 0 {
		ps := make([]firecracker.Pmem, 0, len(r.pmems))
		for _, p := range r.pmems {
			ps = append(ps, p.cfg)
		}
		pmem = ps
	}
	fields := []kv{
		{"balloon", balloon}, {"drives", drives}, {"boot-source", boot}, {"cpu-config", nil},
		{"logger", nil}, {"machine-config", s.machineOut()}, {"metrics", nil},
		{"mmds-config", nullable(r.mmdsCfg)}, {"network-interfaces", nets}, {"vsock", vsock},
		{"entropy", nullable(r.entropy)}, {"pmem", pmem}, {"memory-hotplug", hotplug},
	}
	out := []byte{'{'}
	for i, f := range fields {
		if i > 0 {
			out = append(out, ',')
		}
		b, _ := json.Marshal(f.v)
		out = append(out, strconv.Quote(f.k)...)
		out = append(out, ':')
		out = append(out, b...)
	}
	return json.RawMessage(append(out, '}')), nil
}

func nullable[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// updateMachineConfig is firecracker's MachineConfig::update plus the
// balloon check of VmResources.
func (s *sim) updateMachineConfig(up firecracker.MachineConfigPatch) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	m := s.res.machine
	if up.VcpuCount != nil {
		m.VcpuCount = *up.VcpuCount
	}
	if up.Smt != nil {
		m.Smt = firecracker.Bool(*up.Smt)
	}
	if m.VcpuCount == 0 || m.VcpuCount > firecracker.MaxVcpus || *m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1 {
		return fault("Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
	}
	if up.MemSizeMib != nil {
		m.MemSizeMib = *up.MemSizeMib
	}
	if up.HugePages != nil {
		m.HugePages = *up.HugePages
	}
	if m.MemSizeMib == 0 || m.HugePages == "2M" && m.MemSizeMib%2 != 0 {
		return fault("Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	}
	if s.res.balloon != nil && m.MemSizeMib < s.res.balloon.cfg.AmountMib {
		return fault("Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.")
	}
	if up.CPUTemplate != nil {
		m.CPUTemplate = *up.CPUTemplate
		if m.CPUTemplate == "None" {
			m.CPUTemplate = ""
		}
	}
	if up.TrackDirtyPages != nil {
		m.TrackDirtyPages = firecracker.Bool(*up.TrackDirtyPages)
	}
	s.res.machine = m
	return nil
}

func (s *sim) putBootSource(b firecracker.BootSource) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	kernel, err := os.Open(b.KernelImagePath)
	if err != nil {
		return fault("Boot source error: The kernel file cannot be opened: %s", ioErrText(err))
	}
	var initrd *os.File
	if b.InitrdPath != "" {
		if initrd, err = os.Open(b.InitrdPath); err != nil {
			kernel.Close()
			return fault("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %s", ioErrText(err))
		}
	}
	if s.res.boot != nil {
		s.res.boot.close()
	}
	s.res.boot = &bootSource{cfg: b, kernel: kernel, initrd: initrd}
	return nil
}

func (s *sim) putCPUConfig(c firecracker.CPUConfig) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.res.cpuConfig = &c
	return nil
}

func (s *sim) putSerial(c firecracker.SerialDevice) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.res.serial = &c
	return nil
}

func (s *sim) putLogger(l firecracker.Logger) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	u := loggerUpdate{path: l.LogPath, showLevel: l.ShowLevel, showOrigin: l.ShowLogOrigin}
	if l.Level != "" {
		lv, _ := parseLevel(l.Level)
		u.level = &lv
	}
	if l.Module != "" {
		u.module = &l.Module
	}
	if err := s.log.update(u); err != nil {
		return fault("Logger error: Failed to open target file: %s", ioErrText(err))
	}
	return nil
}

func (s *sim) putMetrics(m firecracker.Metrics) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	if err := s.met.init(m.MetricsPath); err != nil {
		text := err.Error()
		if err != errMetricsReinit {
			text = ioErrText(err)
		}
		return fault("Metrics error: Cannot initialize the metrics system due to bad user input: %s", text)
	}
	return nil
}

func (s *sim) flushMetricsAction() *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	s.flushMetrics()
	return nil
}

// instanceStart builds and boots the VM (builder.rs), or leaves it Not
// started with firecracker's error.
func (s *sim) instanceStart() *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	if s.opts.startDelay > 0 {
		time.Sleep(s.opts.startDelay)
	}
	if s.res.boot == nil {
		return fault("Start microvm error: Cannot start microvm without kernel configuration.")
	}
	k := s.res.boot.kernel
	st, err := k.Stat()
	if err != nil || !checkELFKernel(k, st.Size()) {
		return fault("%s", kernelLoaderFault)
	}
	if ir := s.res.boot.initrd; ir != nil {
		if st, err := ir.Stat(); err != nil || st.Size() > int64(s.res.machine.MemSizeMib)<<20 {
			return fault("Start microvm error: Cannot load initrd due to an invalid memory configuration.")
		}
	}
	out, verr := s.consoleOut()
	if verr != nil {
		return verr
	}
	start := time.Now()
	s.state = stateRunning
	s.guest = newGuest(out, s.countConsole, 0, 0)
	cmdline := s.kernelCmdline()
	s.guest.print(
		"Linux version 6.1.0-sim (firecracker-sim "+Version+") #1 SMP",
		"Command line: "+cmdline,
		fmt.Sprintf("Memory: %dMiB, vCPUs: %d", s.res.machine.MemSizeMib, s.res.machine.VcpuCount),
		"Run /sbin/init as init process",
	)
	s.guest.resume()
	if s.opts.bootTimer {
		us := time.Since(start).Microseconds()
		s.log.log(LevelInfo, threadVcpu, originDevices, "Guest-boot-time = %6d us %4d ms, %6d CPU us %4d CPU ms", us, us/1000, us, us/1000)
	}
	s.startPeriodicMetrics()
	return nil
}

// consoleOut is where the guest's serial output goes: stdout, or the
// serial device's serial_out_path.
func (s *sim) consoleOut() (io.Writer, *vmmError) {
	if s.res.serial == nil || s.res.serial.SerialOutPath == "" {
		return s.stdout, nil
	}
	f, err := os.OpenFile(s.res.serial.SerialOutPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fault("Start microvm error: Error creating legacy device: %s", ioErrText(err))
	}
	s.serialOut = f
	return f, nil
}

// countConsole accounts the guest's serial output: port I/O exits and UART
// writes.
func (s *sim) countConsole(n int) {
	s.met.add("uart.write_count", uint64(n))
	s.met.add("vcpu.exit_io_out", uint64(n))
}

func (s *sim) patchVM(state string) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	t0 := time.Now()
	if state == firecracker.VMStatePaused {
		if s.state == stateRunning {
			s.guest.pause()
			s.state = statePaused
		}
		s.storeLatency("pause_vm", t0)
		s.log.log(LevelInfo, threadMain, originVMM, "'pause vm' VMM action took %d us.", time.Since(t0).Microseconds())
		return nil
	}
	if s.state == statePaused {
		s.state = stateRunning
		s.guest.resume()
		if s.tickPending {
			s.tickPending = false
			s.flushMetrics()
			s.metricsTick.Reset(s.opts.metricsPeriod)
		}
	}
	s.storeLatency("resume_vm", t0)
	s.log.log(LevelInfo, threadMain, originVMM, "'resume vm' VMM action took %d us.", time.Since(t0).Microseconds())
	return nil
}

func (s *sim) storeLatency(name string, t0 time.Time) {
	us := uint64(time.Since(t0).Microseconds())
	s.met.set("latencies_us."+name, us)
	s.met.set("latencies_us.vmm_"+name, us)
}

// sendCtrlAltDel makes the guest shut down: it prints its last lines and
// the process exits 0 (firecracker treats the guest's reboot as exit). The
// answer goes out first.
func (s *sim) sendCtrlAltDel() *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	s.met.inc("i8042.write_count")
	g := s.guest
	time.AfterFunc(20*time.Millisecond, func() {
		s.mu.Lock()
		paused := s.state == statePaused
		s.mu.Unlock()
		if paused {
			// A paused guest cannot react; firecracker would deliver the
			// keystrokes on resume. Keep it simple: check again later.
			s.deferredCtrlAltDel(g)
			return
		}
		s.guestShutdown(g)
	})
	return nil
}

func (s *sim) deferredCtrlAltDel(g *guest) {
	time.AfterFunc(100*time.Millisecond, func() {
		s.mu.Lock()
		paused := s.state == statePaused
		s.mu.Unlock()
		if paused {
			s.deferredCtrlAltDel(g)
			return
		}
		s.guestShutdown(g)
	})
}

func (s *sim) guestShutdown(g *guest) {
	g.print("Received Ctrl-Alt-Del: rebooting", "reboot: Restarting system")
	g.stop()
	s.log.log(LevelInfo, threadVcpu, originVcpu, "Received KVM_EXIT_SHUTDOWN signal")
	s.log.log(LevelInfo, threadMain, originVMM, "Vmm is stopping.")
	// Like Vmm::stop, write the metrics a last time.
	s.mu.Lock()
	s.flushMetrics()
	s.mu.Unlock()
	s.exit(0)
}
