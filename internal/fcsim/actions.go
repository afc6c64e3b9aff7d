package fcsim

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
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

func (s *sim) getInstanceInfo() (any, *vmmError) {
	return object{{"id", s.opts.id}, {"state", s.state.String()}, {"vmm_version", Version}, {"app_name", "Firecracker"}}, nil
}

func (s *sim) getVersion() (any, *vmmError) {
	return object{{"firecracker_version", Version}}, nil
}

// machineOut is MachineConfig's serialization: cpu_template only for a
// static template.
func (s *sim) machineOut() object {
	m := s.res.machine
	out := object{{"vcpu_count", m.VcpuCount}, {"mem_size_mib", m.MemSizeMib}, {"smt", *m.Smt}}
	if m.CPUTemplate != "" && m.CPUTemplate != "None" {
		out = append(out, kv{"cpu_template", m.CPUTemplate})
	}
	return append(out, kv{"track_dirty_pages", *m.TrackDirtyPages}, kv{"huge_pages", m.HugePages})
}

func (s *sim) getMachineConfig() (any, *vmmError) { return s.machineOut(), nil }

// tokenBucketOut is a bucket read back from a device: a bucket of size or
// refill time 0 is no bucket, and a one-time burst of 0 is null.
func tokenBucketOut(b *model.TokenBucket) any {
	if b == nil || b.Size == 0 || b.RefillTime == 0 {
		return nil
	}
	var burst any
	if b.OneTimeBurst != nil && *b.OneTimeBurst != 0 {
		burst = *b.OneTimeBurst
	}
	return object{{"size", b.Size}, {"one_time_burst", burst}, {"refill_time", b.RefillTime}}
}

// rateLimiterOut is RateLimiterConfig::from(&RateLimiter).into_option().
func rateLimiterOut(rl *model.RateLimiter) any {
	if rl == nil {
		return nil
	}
	bw, ops := tokenBucketOut(rl.Bandwidth), tokenBucketOut(rl.Ops)
	if bw == nil && ops == nil {
		return nil
	}
	return object{{"bandwidth", bw}, {"ops", ops}}
}

// rateLimiterAsGiven is a RateLimiterConfig serialized as it was given
// (pmem devices keep their configuration, not the live limiter).
func rateLimiterAsGiven(rl *model.RateLimiter) any {
	if rl == nil {
		return nil
	}
	bucket := func(b *model.TokenBucket) any {
		if b == nil {
			return nil
		}
		var burst any
		if b.OneTimeBurst != nil {
			burst = *b.OneTimeBurst
		}
		return object{{"size", b.Size}, {"one_time_burst", burst}, {"refill_time", b.RefillTime}}
	}
	return object{{"bandwidth", bucket(rl.Bandwidth)}, {"ops", bucket(rl.Ops)}}
}

func optString(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// driveOut is BlockDeviceConfig as the block device reports it.
func driveOut(d model.Drive) object {
	if d.Socket != "" {
		return object{{"drive_id", d.DriveID}, {"partuuid", optString(d.PartUUID)}, {"is_root_device", d.IsRootDevice},
			{"cache_type", d.CacheType}, {"is_read_only", nil}, {"path_on_host", nil}, {"rate_limiter", nil},
			{"io_engine", nil}, {"socket", d.Socket}}
	}
	return object{{"drive_id", d.DriveID}, {"partuuid", optString(d.PartUUID)}, {"is_root_device", d.IsRootDevice},
		{"cache_type", d.CacheType}, {"is_read_only", *d.IsReadOnly}, {"path_on_host", d.PathOnHost},
		{"rate_limiter", rateLimiterOut(d.RateLimiter)}, {"io_engine", d.IOEngine}, {"socket", nil}}
}

func netOut(n model.NetworkInterface) object {
	var mtu any
	if n.MTU != nil {
		mtu = *n.MTU
	}
	return object{{"iface_id", n.IfaceID}, {"host_dev_name", n.HostDevName}, {"guest_mac", optString(n.GuestMAC)},
		{"mtu", mtu}, {"rx_rate_limiter", rateLimiterOut(n.RxRateLimiter)}, {"tx_rate_limiter", rateLimiterOut(n.TxRateLimiter)}}
}

func pmemOut(p model.Pmem) object {
	return object{{"id", p.ID}, {"path_on_host", p.PathOnHost}, {"root_device", p.RootDevice},
		{"read_only", p.ReadOnly}, {"rate_limiter", rateLimiterAsGiven(p.RateLimiter)}}
}

func (b *balloonDev) out() object {
	return object{{"amount_mib", b.cfg.AmountMib}, {"deflate_on_oom", b.cfg.DeflateOnOOM},
		{"stats_polling_interval_s", *b.cfg.StatsPollingIntervalS}, {"free_page_hinting", isTrue(b.cfg.FreePageHinting)},
		{"free_page_reporting", isTrue(b.cfg.FreePageReporting)}}
}

func isTrue(b *bool) bool { return b != nil && *b }

// getFullConfig is GET /vm/config: VmmConfig's serialization, every key
// present, in its declaration order; logger, metrics and cpu-config are
// never reported, and the serial configuration is not part of it.
func (s *sim) getFullConfig() (any, *vmmError) {
	r := &s.res
	if !s.started() {
		s.log.log(LevelWarn, threadMain, originVMM, "If the VM was restored from snapshot, boot-source, machine-config.smt, and machine-config.cpu_template will all be empty.")
	}
	boot := object{{"kernel_image_path", ""}, {"initrd_path", nil}, {"boot_args", nil}}
	if r.boot != nil {
		boot = object{{"kernel_image_path", r.boot.cfg.KernelImagePath}, {"initrd_path", optString(r.boot.cfg.InitrdPath)},
			{"boot_args", optString(r.boot.cfg.BootArgs)}}
	}
	drives := []object{}
	for _, d := range r.drives {
		drives = append(drives, driveOut(d.cfg))
	}
	nets := []object{}
	for _, n := range r.nets {
		nets = append(nets, netOut(n.cfg))
	}
	pmems := []object{}
	for _, p := range r.pmems {
		pmems = append(pmems, pmemOut(p.cfg))
	}
	var balloon, vsock, entropy, hotplug any
	if r.balloon != nil {
		balloon = r.balloon.out()
	}
	if r.vsock != nil {
		vsock = object{{"guest_cid", r.vsock.cfg.GuestCID}, {"uds_path", r.vsock.cfg.UDSPath}}
	}
	if r.entropy != nil {
		entropy = object{{"rate_limiter", rateLimiterOut(r.entropy.RateLimiter)}}
	}
	if r.hotplug != nil {
		h := r.hotplug.cfg
		hotplug = object{{"total_size_mib", *h.TotalSizeMib}, {"block_size_mib", *h.BlockSizeMib}, {"slot_size_mib", *h.SlotSizeMib}}
	}
	return object{
		{"balloon", balloon}, {"drives", drives}, {"boot-source", boot}, {"cpu-config", nil},
		{"logger", nil}, {"machine-config", s.machineOut()}, {"metrics", nil},
		{"mmds-config", s.mmdsConfigOut()}, {"network-interfaces", nets}, {"vsock", vsock},
		{"entropy", entropy}, {"pmem", pmems}, {"memory-hotplug", hotplug},
	}, nil
}

// updateMachineConfig is firecracker's MachineConfig::update plus the
// balloon check of VmResources.
func (s *sim) updateMachineConfig(up model.MachineConfigPatch) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	m := s.res.machine
	if up.VcpuCount != nil {
		m.VcpuCount = *up.VcpuCount
	}
	if up.Smt != nil {
		m.Smt = model.Bool(*up.Smt)
	}
	if m.VcpuCount == 0 || m.VcpuCount > model.MaxVcpus || *m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1 {
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
		m.TrackDirtyPages = model.Bool(*up.TrackDirtyPages)
	}
	s.res.machine = m
	return nil
}

func (s *sim) putBootSource(b model.BootSource) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	kernel, err := os.Open(s.opts.dir.at(b.KernelImagePath))
	if err != nil {
		return fault("Boot source error: The kernel file cannot be opened: %s", ioErrText(err))
	}
	var initrd *os.File
	if b.InitrdPath != "" {
		if initrd, err = os.Open(s.opts.dir.at(b.InitrdPath)); err != nil {
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

func (s *sim) putCPUConfig(c model.CPUConfig) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.res.cpuConfig = &c
	// A custom template takes the place of a static one, which then no
	// longer shows in the machine configuration.
	s.res.machine.CPUTemplate = ""
	return nil
}

func (s *sim) putSerial(c model.SerialDevice) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.res.serial = &c
	return nil
}

func (s *sim) putLogger(l model.Logger) *vmmError {
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

func (s *sim) putMetrics(m model.Metrics) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	if err := s.met.init(s.opts.dir.at(m.MetricsPath)); err != nil {
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
// started with firecracker's error, checking in the builder's order: the
// serial output (opened with the device manager), the kernel, the initrd,
// then the devices created only now (pmem).
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
	out, serial, verr := s.consoleOut()
	if verr != nil {
		return verr
	}
	fail := func(e *vmmError) *vmmError {
		if serial != nil {
			serial.Close()
		}
		for _, p := range s.res.pmems {
			if p.file != nil {
				p.file.Close()
				p.file = nil
			}
		}
		return e
	}
	k := s.res.boot.kernel
	st, err := k.Stat()
	if err != nil || !checkELFKernel(k, st.Size()) {
		return fail(fault("%s", kernelLoaderFault))
	}
	if ir := s.res.boot.initrd; ir != nil {
		if st, err := ir.Stat(); err != nil || st.Size() > int64(s.res.machine.MemSizeMib)<<20 {
			return fail(fault("Start microvm error: Cannot load initrd due to an invalid memory configuration."))
		}
	}
	for _, p := range s.res.pmems {
		if msg := p.open(s.opts.dir); msg != "" {
			return fail(fault("Start microvm error: Cannot create pmem device: %s", msg))
		}
	}
	start := time.Now()
	s.state = stateRunning
	s.serialOut = serial
	s.guest = newGuest(out, s.countConsole, s.serialFailed, 0, 0)
	s.guest.quiet = s.opts.quiet
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

// consoleOut is where the guest's serial output goes: the serial device's
// serial_out_path, opened like firecracker opens it (a FIFO without a
// reader is fine), or stdout made non-blocking. serial is what the VM
// must close, if anything. A failed open is, word for word, firecracker's
// (the io::Error converts into the device manager's EventFd variant).
func (s *sim) consoleOut() (io.Writer, io.Closer, *vmmError) {
	if s.res.serial == nil || s.res.serial.SerialOutPath == "" {
		return stdoutSink(s.stdout), nil, nil
	}
	f, err := openSink(s.opts.dir.at(s.res.serial.SerialOutPath))
	if err != nil {
		return nil, nil, fault("Start microvm error: Failed to create device manager: Error with EventFd: %s", ioErrText(err))
	}
	return f, f, nil
}

// serialFailed accounts a console write that failed (a full pipe): the
// UART counts an error per lost byte and firecracker logs the failure.
func (s *sim) serialFailed(lost int, err error) {
	s.met.add("uart.error_count", uint64(lost))
	s.log.log(LevelError, threadVcpu, originSerial, "Failed the write to serial: %s", serialErrDebug(err))
}

// countConsole accounts the guest's serial output: port I/O exits and UART
// writes.
func (s *sim) countConsole(attempted, written int) {
	s.met.add("uart.write_count", uint64(written))
	s.met.add("vcpu.exit_io_out", uint64(attempted))
}

func (s *sim) patchVM(state string) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	t0 := time.Now()
	if state == model.VMStatePaused {
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
