package fcsim

import (
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// Version is the version firecracker-sim reports: the v1.16 line, never
// pretending to be the real binary.
const Version = model.TargetVersion + model.SimSuffix

type vmState int

const (
	stateNotStarted vmState = iota
	stateRunning
	statePaused
)

func (s vmState) String() string {
	switch s {
	case stateRunning:
		return model.StateRunning
	case statePaused:
		return model.StatePaused
	}
	return model.StateNotStarted
}

// options are what the command line fixes for the process's lifetime.
type options struct {
	id            string
	bootTimer     bool
	enablePCI     bool
	maxPayload    int
	mmdsLimit     int
	metricsPeriod time.Duration
	startTime     time.Time
	// startDelay makes InstanceStart take this long (StartDelayEnv), to
	// stand for a slow boot in tests of interrupted operations.
	startDelay time.Duration
	// noHostTap keeps network devices' TAPs in memory (NoHostTapEnv): a
	// simulator inside a hollow agent must not create host links.
	noHostTap bool
	// quiet: the guest prints no counter lines (QuietEnv).
	quiet bool
	// dir resolves relative paths (WorkDirEnv).
	dir hostDir
}

// sim is one simulated firecracker process: the VMM state machine and the
// host resources it holds. mu guards everything below it; API requests,
// the guest clock and the metrics timer all take it.
type sim struct {
	opts   options
	log    *logger
	met    *metrics
	stdout io.Writer

	exitOnce sync.Once
	exitCh   chan int // the process should exit with this code

	mu          sync.Mutex
	state       vmState
	bootPath    bool // a boot-specific resource was configured: no snapshot load
	res         resources
	guest       *guest
	serialOut   io.Closer // the serial_out_path sink while the guest runs
	mmds        *mmdsStore
	metricsTick *time.Timer
	tickPending bool // a periodic flush fell due while paused
	exitAfter   int  // >0: exit with exitAfter-1 once the response is written (see exitAfterResponse)
	uffd        net.Conn
	memFile     *os.File
}

// resources is the VM configuration and the host files behind it
// (firecracker's VmResources).
type resources struct {
	machine   model.MachineConfig
	boot      *bootSource
	drives    []*drive
	nets      []*netIface
	pmems     []*pmemDev
	balloon   *balloonDev
	vsock     *vsockDev
	entropy   *model.EntropyDevice
	serial    *model.SerialDevice
	cpuConfig *model.CPUConfig
	mmdsIPv4  string // the MMDS address of the interfaces that serve MMDS
	hotplug   *hotplugDev
}

type bootSource struct {
	cfg    model.BootSource
	kernel *os.File
	initrd *os.File
}

type drive struct {
	cfg  model.Drive
	file *os.File
}

type netIface struct {
	cfg  model.NetworkInterface
	tap  *os.File
	mmds bool // the interface forwards MMDS requests
}

// pmemDev is a pmem device; its file is opened when the VM is built, as
// firecracker creates pmem devices only then.
type pmemDev struct {
	cfg  model.Pmem
	file *os.File
}

type vsockDev struct {
	cfg model.Vsock
	ln  *net.UnixListener
}

type balloonDev struct {
	cfg      model.Balloon
	lastCmd  int  // last hinting command id sent
	hostCmd  int  // the command the device shows the guest
	guestCmd *int // the guest's last answer
}

type hotplugDev struct {
	cfg       model.MemoryHotplugConfig
	requested int
}

func defaultMachineConfig() model.MachineConfig {
	return model.MachineConfig{
		VcpuCount: 1, MemSizeMib: 128,
		Smt: model.Bool(false), TrackDirtyPages: model.Bool(false), HugePages: "None",
	}
}

func newSim(opts options, log *logger, met *metrics, stdout io.Writer) *sim {
	s := &sim{
		opts: opts, log: log, met: met, stdout: stdout,
		exitCh: make(chan int, 1),
		mmds:   &mmdsStore{limit: opts.mmdsLimit},
	}
	s.res.machine = defaultMachineConfig()
	log.missed = func() { met.inc("logger.missed_log_count") }
	return s
}

// exit asks the process to end with code (the first request wins).
func (s *sim) exit(code int) {
	s.exitOnce.Do(func() { s.exitCh <- code })
}

// exitAfterResponse makes the process exit with code once the current
// response has been written. s.mu is held.
func (s *sim) exitAfterResponse(code int) { s.exitAfter = code + 1 }

// afterResponse runs once a response has been written: a failed snapshot
// load ends the process only after the client has its 400.
func (s *sim) afterResponse() {
	s.mu.Lock()
	code := s.exitAfter
	s.mu.Unlock()
	if code > 0 {
		s.exit(code - 1)
	}
}

// close releases every host resource, as process exit would.
func (s *sim) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guest != nil {
		s.guest.stop()
	}
	if s.metricsTick != nil {
		s.metricsTick.Stop()
	}
	s.res.release()
	if s.serialOut != nil {
		s.serialOut.Close()
	}
	if s.memFile != nil {
		s.memFile.Close()
	}
	if s.uffd != nil {
		s.uffd.Close()
	}
}

func (r *resources) release() {
	if r.boot != nil {
		r.boot.close()
	}
	for _, d := range r.drives {
		d.file.Close()
	}
	for _, n := range r.nets {
		n.tap.Close()
	}
	for _, p := range r.pmems {
		if p.file != nil {
			p.file.Close()
		}
	}
	if r.vsock != nil {
		r.vsock.ln.Close()
	}
}

func (b *bootSource) close() {
	b.kernel.Close()
	if b.initrd != nil {
		b.initrd.Close()
	}
}

// devices lists the per-device metric groups.
func (s *sim) devices() devices {
	var d devices
	for _, dr := range s.res.drives {
		if dr.cfg.Socket != "" {
			d.vhostBlocks = append(d.vhostBlocks, dr.cfg.DriveID)
		} else {
			d.blocks = append(d.blocks, dr.cfg.DriveID)
		}
	}
	for _, n := range s.res.nets {
		d.nets = append(d.nets, n.cfg.IfaceID)
	}
	for _, p := range s.res.pmems {
		d.pmems = append(d.pmems, p.cfg.ID)
	}
	return d
}

// flushMetrics writes a metrics record. s.mu is held.
func (s *sim) flushMetrics() {
	if _, err := s.met.flush(s.devices()); err != nil {
		s.log.log(LevelError, threadMain, originMain, "Failed to write metrics: %s", ioErrText(err))
	}
}

// startPeriodicMetrics flushes now and then every period, like
// firecracker's PeriodicMetrics once the VM is built. s.mu is held.
func (s *sim) startPeriodicMetrics() {
	s.flushMetrics()
	s.metricsTick = time.AfterFunc(s.opts.metricsPeriod, s.periodicMetrics)
}

func (s *sim) periodicMetrics() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == statePaused {
		// Paused: the VMM thread serves only the API; the timer event
		// waits for the resume.
		s.tickPending = true
		return
	}
	s.flushMetrics()
	s.metricsTick.Reset(s.opts.metricsPeriod)
}

// kernelCmdline is the command line the guest would see.
func (s *sim) kernelCmdline() string {
	args := model.DefaultBootArgs
	if s.res.boot != nil && s.res.boot.cfg.BootArgs != "" {
		args = s.res.boot.cfg.BootArgs
	}
	for _, d := range s.res.drives {
		if !d.cfg.IsRootDevice {
			continue
		}
		if d.cfg.PartUUID != "" {
			args += " root=PARTUUID=" + d.cfg.PartUUID
		} else {
			args += " root=/dev/vda"
		}
		if d.cfg.IsReadOnly != nil && *d.cfg.IsReadOnly {
			args += " ro"
		} else {
			args += " rw"
		}
	}
	return strings.TrimSpace(args)
}
