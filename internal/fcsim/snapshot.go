package fcsim

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// Snapshot state file: firecracker's x86_64 magic, the snapshot format
// version (major, minor, patch as u16), a length-prefixed JSON payload with
// the whole configuration and the guest clock, and a CRC64 of everything
// before it. The memory file is mem_size_mib MiB, sparse: the simulated
// guest has no memory to save.

const snapshotMagicX86 = 0x0710198486640000

const maxStateFile = 10 << 20 // firecracker's 10 MB state file limit

var crcTable = crc64.MakeTable(crc64.ECMA)

// snapshotVersion is the format version this binary writes.
func snapshotVersion() [3]uint16 {
	v, _ := model.ParseVersion(model.FeaturesOf(mustVersion(model.TargetVersion)).SnapshotVersion)
	return [3]uint16{uint16(v.Major), uint16(v.Minor), uint16(v.Patch)}
}

func mustVersion(s string) model.Version {
	v, _ := model.ParseVersion(s)
	return v
}

func versionString(v [3]uint16) string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// vmState is the payload: what a restored VM needs.
type vmStatePayload struct {
	Machine    model.MachineConfig        `json:"machine"`
	Drives     []model.Drive              `json:"drives"`
	Nets       []model.NetworkInterface   `json:"network_interfaces"`
	Pmems      []model.Pmem               `json:"pmem,omitempty"`
	Balloon    *model.Balloon             `json:"balloon,omitempty"`
	Vsock      *model.Vsock               `json:"vsock,omitempty"`
	Entropy    *model.EntropyDevice       `json:"entropy,omitempty"`
	MmdsConfig *model.MmdsConfig          `json:"mmds_config,omitempty"`
	Hotplug    *model.MemoryHotplugConfig `json:"memory_hotplug,omitempty"`
	Requested  int                        `json:"hotplug_requested,omitempty"`
	Counter    int                        `json:"guest_counter"`
	RanNanos   int64                      `json:"guest_run_ns"`
	MemSizeMib int                        `json:"mem_size_mib"`
	PCI        bool                       `json:"pci"`
}

func encodeState(p vmStatePayload) ([]byte, error) {
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(snapshotMagicX86))
	binary.Write(&b, binary.LittleEndian, snapshotVersion())
	binary.Write(&b, binary.LittleEndian, uint32(len(payload)))
	b.Write(payload)
	binary.Write(&b, binary.LittleEndian, crc64.Checksum(b.Bytes(), crcTable))
	return b.Bytes(), nil
}

// stateVersion reads the format version of a state file (for
// --describe-snapshot).
func stateVersion(r io.Reader) (string, error) {
	var hdr [14]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", fmt.Errorf("Invalid data format version of snapshot file: %s", ioErrText(err))
	}
	if binary.LittleEndian.Uint64(hdr[:]) != snapshotMagicX86 {
		return "", fmt.Errorf("Invalid data format version of snapshot file: Magic value does not match arch: %#x", binary.LittleEndian.Uint64(hdr[:]))
	}
	var v [3]uint16
	binary.Read(bytes.NewReader(hdr[8:]), binary.LittleEndian, &v)
	return versionString(v), nil
}

// decodeState checks magic, version and CRC like firecracker's
// Snapshot::load, and returns the payload. Errors are SnapshotError texts.
func decodeState(b []byte) (vmStatePayload, error) {
	var p vmStatePayload
	if len(b) < 8+6+4+8 {
		return p, errors.New("Snapshot file is smaller than CRC length.")
	}
	le := binary.LittleEndian
	if m := le.Uint64(b); m != snapshotMagicX86 {
		return p, fmt.Errorf("Magic value does not match arch: %#x", m)
	}
	v := [3]uint16{le.Uint16(b[8:]), le.Uint16(b[10:]), le.Uint16(b[12:])}
	if cur := snapshotVersion(); v[0] != cur[0] || v[1] > cur[1] {
		return p, fmt.Errorf("Invalid format version: %s", versionString(v))
	}
	body, sum := b[:len(b)-8], le.Uint64(b[len(b)-8:])
	if c := crc64.Checksum(body, crcTable); c != sum {
		return p, fmt.Errorf("CRC64 validation failed: %d", c)
	}
	n := int(le.Uint32(b[14:]))
	if 18+n != len(body) {
		return p, errors.New("An error occurred with serialization/deserialization: payload length mismatch")
	}
	if err := json.Unmarshal(body[18:], &p); err != nil {
		return p, fmt.Errorf("An error occurred with serialization/deserialization: %s", err)
	}
	return p, nil
}

func (s *sim) createSnapshot(p model.SnapshotCreateParams) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	kind := "full"
	if p.SnapshotType == model.SnapshotDiff {
		kind = "diff"
		s.log.log(LevelWarn, threadMain, originVMM, "[DevPreview] Virtual machine diff snapshots is in development preview.")
	}
	if s.state != statePaused {
		return fault("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	}
	t0 := time.Now()
	counter, ran := s.guest.state()
	st := vmStatePayload{
		Machine: s.res.machine, Counter: counter, RanNanos: int64(ran), MemSizeMib: s.res.machine.MemSizeMib,
		Entropy: s.res.entropy, PCI: s.opts.enablePCI,
	}
	if cfg, ok := s.mmdsConfigOut().(object); ok {
		// The MMDS configuration is part of the state; its data is not.
		st.MmdsConfig = &model.MmdsConfig{Version: cfg[0].v.(string), NetworkInterfaces: cfg[1].v.([]string),
			IPv4Address: cfg[2].v.(string), ImdsCompat: model.Bool(cfg[3].v.(bool))}
	}
	for _, d := range s.res.drives {
		st.Drives = append(st.Drives, d.cfg)
	}
	for _, n := range s.res.nets {
		st.Nets = append(st.Nets, n.cfg)
	}
	for _, pm := range s.res.pmems {
		st.Pmems = append(st.Pmems, pm.cfg)
	}
	if s.res.balloon != nil {
		st.Balloon = &s.res.balloon.cfg
	}
	if s.res.vsock != nil {
		st.Vsock = &s.res.vsock.cfg
	}
	if s.res.hotplug != nil {
		st.Hotplug, st.Requested = &s.res.hotplug.cfg, s.res.hotplug.requested
	}
	data, err := encodeState(st)
	if err != nil {
		return fault("Create snapshot error: Cannot save the microVM state: %s", err)
	}
	if err := os.WriteFile(s.opts.dir.at(p.SnapshotPath), data, 0o644); err != nil {
		return fault("Create snapshot error: Cannot perform open on the snapshot backing file: %s", ioErrText(err))
	}
	size := int64(s.res.machine.MemSizeMib) << 20
	flag := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if p.SnapshotType == model.SnapshotDiff {
		// A diff merges into an existing file of the same size.
		if fi, err := os.Stat(s.opts.dir.at(p.MemFilePath)); err == nil && fi.Size() == size {
			flag = os.O_WRONLY
		}
	}
	mf, err := os.OpenFile(s.opts.dir.at(p.MemFilePath), flag, 0o644)
	if err != nil {
		return fault("Create snapshot error: Cannot perform open on the memory backing file: %s", ioErrText(err))
	}
	defer mf.Close()
	// Sparse: the size of guest memory, no page written.
	if err := mf.Truncate(size); err != nil {
		return fault("Create snapshot error: Cannot perform set_len on the memory backing file: %s", ioErrText(err))
	}
	us := uint64(time.Since(t0).Microseconds())
	s.met.set("latencies_us."+kind+"_create_snapshot", us)
	s.met.set("latencies_us.vmm_"+kind+"_create_snapshot", us)
	s.log.log(LevelInfo, threadMain, originVMM, "'create %s snapshot' VMM action took %d us.", kind, us)
	return nil
}

// loadFault is a failed restore: the 400 goes out, then the process exits 1.
func (s *sim) loadFault(format string, args ...any) *vmmError {
	s.exitAfterResponse(1)
	return fault("Load snapshot error: Failed to restore from snapshot: "+format, args...)
}

func (s *sim) loadSnapshot(p model.SnapshotLoadParams) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	if s.bootPath {
		msg := "Loading a microVM snapshot not allowed after configuring boot-specific resources."
		s.log.log(LevelInfo, threadMain, originVMM, "%s", msg)
		return fault("Load snapshot error: %s", msg)
	}
	t0 := time.Now()
	f, err := os.Open(s.opts.dir.at(p.SnapshotPath))
	if err != nil {
		return s.loadFault("Failed to get snapshot state from file: Failed to open snapshot file: %s", ioErrText(err))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	f.Close()
	if err != nil {
		return s.loadFault("Failed to get snapshot state from file: Failed to load snapshot state from file: An IO error occurred: %s", ioErrText(err))
	}
	st, err := decodeState(data)
	if err != nil {
		return s.loadFault("Failed to get snapshot state from file: Failed to load snapshot state from file: %s", err)
	}
	for _, o := range p.NetworkOverrides {
		found := false
		for i := range st.Nets {
			if st.Nets[i].IfaceID == o.IfaceID {
				st.Nets[i].HostDevName = o.HostDevName
				found = true
			}
		}
		if !found {
			return s.loadFault("Failed to get snapshot state from file: Unknown Network Device.")
		}
	}
	if p.VsockOverride != nil {
		if st.Vsock == nil {
			return s.loadFault("Failed to get snapshot state from file: Unknown Vsock Device.")
		}
		st.Vsock.UDSPath = p.VsockOverride.UDSPath
	}
	if verr := s.restoreMemory(p, st); verr != nil {
		return verr
	}
	if verr := s.restoreDevices(st); verr != nil {
		return verr
	}
	track := (p.TrackDirtyPages != nil && *p.TrackDirtyPages) || (p.EnableDiffSnapshots != nil && *p.EnableDiffSnapshots)
	st.Machine.TrackDirtyPages = model.Bool(track)
	st.Machine.Smt = model.Bool(false) // not kept by firecracker's snapshots
	s.res.machine = st.Machine
	s.res.entropy = st.Entropy
	if st.Balloon != nil {
		s.res.balloon = &balloonDev{cfg: *st.Balloon}
	}
	if st.Hotplug != nil {
		s.res.hotplug = &hotplugDev{cfg: *st.Hotplug, requested: st.Requested}
	}
	if c := st.MmdsConfig; c != nil {
		for _, n := range s.res.nets {
			for _, id := range c.NetworkInterfaces {
				n.mmds = n.mmds || n.cfg.IfaceID == id
			}
		}
		s.res.mmdsIPv4 = c.IPv4Address
		s.mmds.create()
		s.mmds.mu.Lock()
		s.mmds.version, s.mmds.imdsCompat = c.Version, isTrue(c.ImdsCompat)
		s.mmds.mu.Unlock()
	}
	out, serial, verr := s.consoleOut()
	if verr != nil {
		s.exitAfterResponse(1)
		return verr
	}
	s.serialOut = serial
	// A restored guest prints ReadyLine when it first runs: now with
	// resume_vm, else at the first resume.
	s.guest = newGuest(out, s.countConsole, s.serialFailed, st.Counter, time.Duration(st.RanNanos))
	s.guest.quiet = s.opts.quiet
	s.state = statePaused
	if p.ResumeVM != nil && *p.ResumeVM {
		s.state = stateRunning
		s.guest.resume()
	}
	us := uint64(time.Since(t0).Microseconds())
	s.met.set("latencies_us.load_snapshot", us)
	s.met.set("latencies_us.vmm_load_snapshot", us)
	s.log.log(LevelDebug, threadMain, originVMM, "'load snapshot' VMM action took %d us.", us)
	s.startPeriodicMetrics()
	return nil
}

// restoreMemory maps (here: opens and checks) the guest memory source.
func (s *sim) restoreMemory(p model.SnapshotLoadParams, st vmStatePayload) *vmmError {
	b := p.MemBackend
	want := int64(st.MemSizeMib) << 20
	if b.BackendType == "Uffd" {
		c, err := net.Dial("unix", s.opts.dir.at(b.BackendPath))
		if err != nil {
			return s.loadFault("Failed to load guest memory: Error creating guest memory from uffd: Failed to connect to UDS Unix stream: %s", ioErrText(err))
		}
		// The page-fault handler learns the guest memory layout; the
		// simulated guest never faults, so the connection just stays open.
		fmt.Fprintf(c, `[{"base_host_virt_addr":0,"size":%d,"offset":0,"page_size":4096}]`, want)
		s.uffd = c
		return nil
	}
	mf, err := os.Open(s.opts.dir.at(b.BackendPath))
	if err != nil {
		return s.loadFault("Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: %s", ioErrText(err))
	}
	fi, err := mf.Stat()
	if err != nil || fi.Size() != want {
		mf.Close()
		got := int64(0)
		if fi != nil {
			got = fi.Size()
		}
		return s.loadFault("Failed to load guest memory: Error creating guest memory from file: Failed to restore guest memory: "+
			"The memory file is %d bytes; the configured guest memory needs %d", got, want)
	}
	s.memFile = mf
	return nil
}

// restoreDevices reopens what the devices hold: block files at their
// paths, the (possibly overridden) TAPs and the vsock socket.
func (s *sim) restoreDevices(st vmStatePayload) *vmmError {
	var r resources
	fail := func(format string, args ...any) *vmmError {
		r.release()
		return s.loadFault("Failed to build microVM from snapshot: "+format, args...)
	}
	for _, d := range st.Drives {
		flag := os.O_RDWR
		if d.IsReadOnly != nil && *d.IsReadOnly {
			flag = os.O_RDONLY
		}
		path := d.PathOnHost
		if d.Socket != "" {
			path = d.Socket
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(s.opts.dir.at(path), flag, 0)
		if err != nil {
			return fail("Cannot restore devices: Block: Virtio backend error: Error manipulating the backing file: %s %s", ioErrText(err), path)
		}
		r.drives = append(r.drives, &drive{cfg: d, file: f})
	}
	for _, n := range st.Nets {
		tap, err := s.openTap(n.HostDevName)
		if err != nil {
			return fail("Cannot restore devices: Net: Open tap device failed: %s", err)
		}
		r.nets = append(r.nets, &netIface{cfg: n, tap: tap})
	}
	for _, pm := range st.Pmems {
		p := &pmemDev{cfg: pm}
		if msg := p.open(s.opts.dir); msg != "" {
			return fail("Cannot restore devices: Pmem: %s", msg)
		}
		r.pmems = append(r.pmems, p)
	}
	if st.Vsock != nil {
		ln, err := bindVsock(s.opts.dir.at(st.Vsock.UDSPath))
		if err != nil {
			return fail("Cannot restore devices: Vsock: Error binding to the host-side Unix socket: %s", ioErrText(err))
		}
		r.vsock = &vsockDev{cfg: *st.Vsock, ln: ln}
	}
	s.res.drives, s.res.nets, s.res.pmems, s.res.vsock = r.drives, r.nets, r.pmems, r.vsock
	return nil
}

// describeSnapshot prints the data format version of a state file.
func describeSnapshot(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("Unable to open snapshot state file: %s", ioErrText(err))
	}
	defer f.Close()
	v, err := stateVersion(f)
	if err != nil {
		return "", err
	}
	return "v" + v, nil
}

// parseSizeFlag reads a usize flag value.
func parseSizeFlag(v string) (int, bool) {
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 63)
	return int(n), err == nil
}
