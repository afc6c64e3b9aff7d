package fcsim

import (
	"net"
	"net/netip"
	"os"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// Devices: each PUT opens its host resource when firecracker does (block
// files and TAPs now, pmem files when the VM is built) and keeps it open
// while the device exists. After boot a device PUT is a PCI hotplug and a
// DELETE a hot-unplug (v1.16+), with firecracker's plain texts.

var (
	errPCINotEnabled = fault("PCI is not enabled")
	errDeviceIDInUse = fault("Device ID in use")
	errDeviceMissing = fault("Device not found")
	errUnplugRoot    = fault("Cannot unplug root device")
)

// hotplugCheck checks a device PUT after boot (DeviceManager::hotplug_device).
func (s *sim) hotplugCheck(exists bool) *vmmError {
	if !features.Hotplug {
		return errPostBoot
	}
	s.log.log(LevelWarn, threadMain, originVMM, "[DevPreview] PCI device hotplug is in development preview.")
	if !s.opts.enablePCI {
		return errPCINotEnabled
	}
	if exists {
		return errDeviceIDInUse
	}
	return nil
}

func (s *sim) findDrive(id string) int {
	for i, d := range s.res.drives {
		if d.cfg.DriveID == id {
			return i
		}
	}
	return -1
}

func (s *sim) hasRootDrive() bool {
	for _, d := range s.res.drives {
		if d.cfg.IsRootDevice {
			return true
		}
	}
	return false
}

func (s *sim) hasRootPmem() bool {
	for _, p := range s.res.pmems {
		if p.cfg.RootDevice {
			return true
		}
	}
	return false
}

// openDrive is Block::new: a virtio block device needs path_on_host and no
// socket, a vhost-user one a socket and none of the virtio fields.
func openDrive(dir hostDir, d *model.Drive) (*os.File, *vmmError) {
	switch {
	case d.PathOnHost != "" && d.Socket == "":
		if d.IsReadOnly == nil {
			d.IsReadOnly = model.Bool(false)
		}
		if d.IOEngine == "" {
			d.IOEngine = "Sync"
		}
		flag := os.O_RDWR
		if *d.IsReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(dir.at(d.PathOnHost), flag, 0)
		if err != nil {
			return nil, fault("Drive config error: Unable to create the virtio block device: Virtio backend error: "+
				"Error manipulating the backing file: %s %s", ioErrText(err), d.PathOnHost)
		}
		return f, nil
	case d.Socket != "" && d.PathOnHost == "" && d.IsReadOnly == nil && d.RateLimiter == nil && d.IOEngine == "":
		// vhost-user-block: the backend's socket must be there to connect to.
		_, err := os.Stat(dir.at(d.Socket))
		var f *os.File
		if err == nil {
			f, err = os.Open(os.DevNull)
		}
		if err != nil {
			return nil, fault("Drive config error: Unable to create the virtio block device: Vhost user backend error: "+
				"Vhost-user error: Failed to connect to UDS Unix stream: %s", ioErrText(err))
		}
		return f, nil
	}
	return nil, fault("Drive config error: Unable to create the virtio block device: Invalid block config.")
}

// putDrive is BlockBuilder::insert before boot, a hotplug after.
func (s *sim) putDrive(d model.Drive) *vmmError {
	if d.CacheType == "" {
		d.CacheType = "Unsafe"
	}
	idx := s.findDrive(d.DriveID)
	if s.started() {
		if e := s.hotplugCheck(idx >= 0); e != nil {
			return e
		}
		if d.IsRootDevice {
			return fault("Drive config error: A root block device already exists!")
		}
		f, e := openDrive(s.opts.dir, &d)
		if e != nil {
			return e
		}
		s.res.drives = append(s.res.drives, &drive{cfg: d, file: f})
		return nil
	}
	s.bootPath = true
	if d.IsRootDevice && s.hasRootPmem() {
		return fault("Drive config error: Attempt to add block as a root device while the root device defined as a pmem device")
	}
	// Only one root device; updating the root device itself (always at
	// index 0) is fine.
	if d.IsRootDevice && s.hasRootDrive() && idx != 0 {
		return fault("Drive config error: A root block device already exists!")
	}
	f, e := openDrive(s.opts.dir, &d)
	if e != nil {
		return e
	}
	nd := &drive{cfg: d, file: f}
	switch {
	case idx < 0 && d.IsRootDevice:
		s.res.drives = append([]*drive{nd}, s.res.drives...)
	case idx < 0:
		s.res.drives = append(s.res.drives, nd)
	default:
		s.res.drives[idx].file.Close()
		s.res.drives[idx] = nd
		if idx != 0 && d.IsRootDevice {
			s.res.drives[0], s.res.drives[idx] = s.res.drives[idx], s.res.drives[0]
		}
	}
	return nil
}

func patchDriveFault(detail string) *vmmError {
	return fault("Drive config error: Unable to patch the block device: %s Please verify the request arguments.", detail)
}

// patchDrive is RuntimeApiController::update_block_device.
func (s *sim) patchDrive(p model.PartialDrive) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	idx := s.findDrive(p.DriveID)
	if idx < 0 {
		return patchDriveFault("Failed perform action on device: Device not found")
	}
	d := s.res.drives[idx]
	vhost := d.cfg.Socket != ""
	if p.PathOnHost == "" && p.RateLimiter == nil {
		// A vhost-user config update; a virtio block device has none.
		if !vhost {
			return patchDriveFault("Block: Running method expected different backend.")
		}
		return nil
	}
	if p.PathOnHost != "" {
		if vhost {
			return patchDriveFault("Block: Running method expected different backend.")
		}
		flag := os.O_RDWR
		if *d.cfg.IsReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(p.PathOnHost, flag, 0)
		if err != nil {
			return patchDriveFault("Block: Virtio backend error: Error manipulating the backing file: " + ioErrText(err) + " " + p.PathOnHost)
		}
		d.file.Close()
		d.file = f
		d.cfg.PathOnHost = p.PathOnHost
		s.met.inc("block_" + d.cfg.DriveID + ".update_count")
		s.met.inc("block.update_count")
	}
	if p.RateLimiter != nil {
		if vhost {
			return patchDriveFault("Block: Running method expected different backend.")
		}
		d.cfg.RateLimiter = mergeLimiter(d.cfg.RateLimiter, p.RateLimiter)
	}
	return nil
}

// mergeLimiter applies a rate-limiter update: given buckets replace the
// current ones, and a bucket of size or refill time 0 removes the limit.
func mergeLimiter(cur, up *model.RateLimiter) *model.RateLimiter {
	var out model.RateLimiter
	if cur != nil {
		out = *cur
	}
	if up.Bandwidth != nil {
		out.Bandwidth = up.Bandwidth
		if up.Bandwidth.Size == 0 || up.Bandwidth.RefillTime == 0 {
			out.Bandwidth = nil
		}
	}
	if up.Ops != nil {
		out.Ops = up.Ops
		if up.Ops.Size == 0 || up.Ops.RefillTime == 0 {
			out.Ops = nil
		}
	}
	if out.Bandwidth == nil && out.Ops == nil {
		return nil
	}
	return &out
}

func (s *sim) findNet(id string) int {
	for i, n := range s.res.nets {
		if n.cfg.IfaceID == id {
			return i
		}
	}
	return -1
}

func (s *sim) macInUse(mac, exceptIface string) bool {
	for _, o := range s.res.nets {
		if o.cfg.IfaceID != exceptIface && o.cfg.GuestMAC == mac {
			return true
		}
	}
	return false
}

// createNet is NetBuilder::create_net: open the TAP, then check the MTU.
func (s *sim) createNet(n model.NetworkInterface) (*netIface, *vmmError) {
	tap, err := s.openTap(n.HostDevName)
	if err != nil {
		return nil, fault("Network config error: Could not create the network device: Open tap device failed: %s", err)
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		tap.Close()
		return nil, fault("Network config error: Could not create the network device: MTU %d is out of range [68, 65535]", *n.MTU)
	}
	return &netIface{cfg: n, tap: tap}, nil
}

// putNet is NetBuilder::build before boot, a hotplug after.
func (s *sim) putNet(n model.NetworkInterface) *vmmError {
	if n.GuestMAC != "" {
		n.GuestMAC = canonicalMAC(n.GuestMAC)
	}
	idx := s.findNet(n.IfaceID)
	if s.started() {
		if e := s.hotplugCheck(idx >= 0); e != nil {
			return e
		}
		if n.GuestMAC != "" && s.macInUse(n.GuestMAC, "") {
			return fault("Network config error: The MAC address is already in use: %s", n.GuestMAC)
		}
		ni, e := s.createNet(n)
		if e != nil {
			return e
		}
		s.res.nets = append(s.res.nets, ni)
		return nil
	}
	s.bootPath = true
	if n.GuestMAC != "" && s.macInUse(n.GuestMAC, n.IfaceID) {
		return fault("Network config error: The MAC address is already in use: %s", n.GuestMAC)
	}
	// An update drops the old device (and its TAP, so it can be reused)
	// with Vec::swap_remove, which moves the last interface into its
	// place; the new one goes last. A failed update leaves it dropped.
	if idx >= 0 {
		s.res.nets[idx].tap.Close()
		last := len(s.res.nets) - 1
		s.res.nets[idx] = s.res.nets[last]
		s.res.nets = s.res.nets[:last]
	}
	ni, e := s.createNet(n)
	if e != nil {
		return e
	}
	s.res.nets = append(s.res.nets, ni)
	return nil
}

func (s *sim) patchNet(p model.PartialNetworkInterface) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	idx := s.findNet(p.IfaceID)
	if idx < 0 {
		return fault("Network config error: Unable to update the net device: Failed perform action on device: Device not found")
	}
	n := s.res.nets[idx]
	if p.RxRateLimiter != nil {
		n.cfg.RxRateLimiter = mergeLimiter(n.cfg.RxRateLimiter, p.RxRateLimiter)
	}
	if p.TxRateLimiter != nil {
		n.cfg.TxRateLimiter = mergeLimiter(n.cfg.TxRateLimiter, p.TxRateLimiter)
	}
	return nil
}

func (s *sim) findPmem(id string) int {
	for i, p := range s.res.pmems {
		if p.cfg.ID == id {
			return i
		}
	}
	return -1
}

// open is Pmem::new's file handling: the backing file opened read-write
// or read-only, and not empty. The error is PmemError's text.
func (p *pmemDev) open(dir hostDir) string {
	flag := os.O_RDWR
	if p.cfg.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(dir.at(p.cfg.PathOnHost), flag, 0)
	if err != nil {
		return "Error accessing backing file: " + ioErrText(err)
	}
	if st, err := f.Stat(); err != nil || st.Size() == 0 {
		f.Close()
		return "Error backing file size is 0"
	}
	p.file = f
	return ""
}

// putPmem is PmemBuilder::build before boot (the file is opened only when
// the VM is built), a hotplug after.
func (s *sim) putPmem(p model.Pmem) *vmmError {
	idx := s.findPmem(p.ID)
	if s.started() {
		if e := s.hotplugCheck(idx >= 0); e != nil {
			return e
		}
		if p.RootDevice {
			return fault("Pmem config error: Attempt to add pmem as a root device while the root device defined as a block device")
		}
		np := &pmemDev{cfg: p}
		if msg := np.open(s.opts.dir); msg != "" {
			return fault("Pmem config error: Unable to create the virtio-pmem device: %s", msg)
		}
		s.res.pmems = append(s.res.pmems, np)
		return nil
	}
	s.bootPath = true
	if p.RootDevice && s.hasRootDrive() {
		return fault("Pmem config error: Attempt to add pmem as a root device while the root device defined as a block device")
	}
	switch {
	case idx >= 0:
		if !s.res.pmems[idx].cfg.RootDevice && p.RootDevice && s.hasRootPmem() {
			return fault("Pmem config error: A root pmem device already exist")
		}
		s.res.pmems[idx] = &pmemDev{cfg: p}
	default:
		if p.RootDevice && s.hasRootPmem() {
			return fault("Pmem config error: A root pmem device already exist")
		}
		s.res.pmems = append(s.res.pmems, &pmemDev{cfg: p})
	}
	return nil
}

// patchPmem updates the live rate limiter only; the configuration the
// device reports keeps what was given at creation, as in firecracker.
func (s *sim) patchPmem(p model.PartialPmem) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	if p.RateLimiter != nil && s.findPmem(p.ID) < 0 {
		return fault("Pmem config error: Unable to patch the pmem device: Failed perform action on device: Device not found Please verify the request arguments.")
	}
	return nil
}

// deleteDevice is a PCI hot-unplug (v1.16+).
func (s *sim) deleteDevice(kind, id string) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	s.log.log(LevelWarn, threadMain, originVMM, "[DevPreview] PCI device hot-unplug is in development preview.")
	if !s.opts.enablePCI {
		return errPCINotEnabled
	}
	switch kind {
	case "drives":
		i := s.findDrive(id)
		if i < 0 {
			return errDeviceMissing
		}
		if s.res.drives[i].cfg.IsRootDevice {
			return errUnplugRoot
		}
		s.res.drives[i].file.Close()
		s.res.drives = append(s.res.drives[:i], s.res.drives[i+1:]...)
	case "network-interfaces":
		i := s.findNet(id)
		if i < 0 {
			return errDeviceMissing
		}
		s.res.nets[i].tap.Close()
		s.res.nets = append(s.res.nets[:i], s.res.nets[i+1:]...)
	case "pmem":
		i := s.findPmem(id)
		if i < 0 {
			return errDeviceMissing
		}
		if s.res.pmems[i].cfg.RootDevice {
			return errUnplugRoot
		}
		if f := s.res.pmems[i].file; f != nil {
			f.Close()
		}
		s.res.pmems = append(s.res.pmems[:i], s.res.pmems[i+1:]...)
	}
	return nil
}

// bindVsock binds the vsock device's host-side socket, which must not
// exist yet.
func bindVsock(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // firecracker leaves it behind, like the API socket
	return ln, nil
}

func vsockFault(err error) *vmmError {
	return fault("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: %s", ioErrText(err))
}

// putVsock is VsockBuilder::insert: a device configured before is dropped
// and its socket file removed first, then the new socket is bound.
func (s *sim) putVsock(v model.Vsock) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	if old := s.res.vsock; old != nil {
		s.res.vsock = nil
		old.ln.Close()
		if err := os.Remove(old.cfg.UDSPath); err != nil {
			return vsockFault(err)
		}
	}
	ln, err := bindVsock(s.opts.dir.at(v.UDSPath))
	if err != nil {
		return vsockFault(err)
	}
	s.res.vsock = &vsockDev{cfg: v, ln: ln}
	return nil
}

func (s *sim) putEntropy(e model.EntropyDevice) *vmmError {
	if err := s.pre(); err != nil {
		return err
	}
	s.bootPath = true
	s.res.entropy = &e
	return nil
}

// putMMDSConfig is VmResources::set_mmds_config: check the address and the
// interfaces, mark which interfaces serve MMDS, then set up the store.
func (s *sim) putMMDSConfig(c model.MmdsConfig) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	addr := "169.254.169.254"
	if c.IPv4Address != "" {
		a, _ := netip.ParseAddr(c.IPv4Address) // the schema checked the syntax
		b := a.As4()
		if b[0] != 169 || b[1] != 254 || b[2] == 0 || b[2] == 255 {
			return fault("MMMDS config error: The MMDS IPv4 address is not link local.")
		}
		addr = a.String()
	}
	if len(c.NetworkInterfaces) == 0 {
		return fault("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range c.NetworkInterfaces {
		if s.findNet(id) < 0 {
			return fault("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	for _, n := range s.res.nets {
		n.mmds = false
		for _, id := range c.NetworkInterfaces {
			if n.cfg.IfaceID == id {
				n.mmds = true
			}
		}
	}
	s.res.mmdsIPv4 = addr
	s.mmds.create()
	s.mmds.mu.Lock()
	s.mmds.version = "V1"
	if c.Version != "" {
		s.mmds.version = c.Version
	}
	s.mmds.imdsCompat = isTrue(c.ImdsCompat)
	s.mmds.mu.Unlock()
	return nil
}

// putHotplug is MemoryHotplugConfig::validate.
func (s *sim) putHotplug(h model.MemoryHotplugConfig) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	if h.SlotSizeMib == nil {
		h.SlotSizeMib = model.Int(128)
	}
	if h.BlockSizeMib == nil {
		h.BlockSizeMib = model.Int(2)
	}
	total, slot, block := *h.TotalSizeMib, *h.SlotSizeMib, *h.BlockSizeMib
	const prefix = "Memory hotplug config error: "
	switch {
	case block < 2:
		return fault(prefix + "Block size must not be lower than 2 MiB")
	case block&(block-1) != 0:
		return fault(prefix + "Block size must be a power of 2")
	case slot < 128:
		return fault(prefix + "Slot size must not be lower than 128 MiB")
	case slot%block != 0:
		return fault(prefix+"Slot size must be a multiple of block size (%d MiB)", block)
	case total < slot:
		return fault(prefix+"Total size must not be lower than slot size (%d MiB)", slot)
	case total%slot != 0:
		return fault(prefix+"Total size must be a multiple of slot size (%d MiB)", slot)
	}
	s.res.hotplug = &hotplugDev{cfg: h}
	return nil
}

func (s *sim) getHotplug() (any, *vmmError) {
	if e := s.post(); e != nil {
		return nil, e
	}
	h := s.res.hotplug
	if h == nil {
		return nil, fault("Internal VMM error: Failed perform action on device: Device not found")
	}
	// VirtioMemStatus's field order.
	return object{{"block_size_mib", *h.cfg.BlockSizeMib}, {"total_size_mib", *h.cfg.TotalSizeMib},
		{"slot_size_mib", *h.cfg.SlotSizeMib}, {"plugged_size_mib", h.requested}, {"requested_size_mib", h.requested}}, nil
}

func (s *sim) patchHotplug(u model.MemoryHotplugSizeUpdate) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	h := s.res.hotplug
	if h == nil {
		return fault("Memory hotplug update error: Failed perform action on device: Device not found")
	}
	req := *u.RequestedSizeMib
	if req%*h.cfg.BlockSizeMib != 0 || req > *h.cfg.TotalSizeMib {
		return fault("Memory hotplug update error: Failed to create memory hotplug device: Size %d is invalid: "+
			"it must be a multiple of block size and less than the total size", uint64(req)<<20)
	}
	h.requested = req
	s.met.inc("memory_hotplug.plug_count")
	return nil
}
