package fcsim

import (
	"net"
	"os"
	"strings"

	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// Devices: each PUT opens its host resource now, like firecracker, and keeps
// it open while the device exists.

// hotplug checks a device PUT after boot: on v1.16 that is a PCI hotplug.
func (s *sim) hotplugCheck(exists bool) *vmmError {
	if !features.Hotplug {
		return errPostBoot
	}
	if !s.opts.enablePCI {
		return fault("The requested operation is not supported: PCI is not enabled")
	}
	if exists {
		return fault("The requested operation is not supported: Device ID in use")
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

func (s *sim) rootDeviceElsewhere(exceptDrive, exceptPmem string) bool {
	for _, d := range s.res.drives {
		if d.cfg.IsRootDevice && d.cfg.DriveID != exceptDrive {
			return true
		}
	}
	for _, p := range s.res.pmems {
		if p.cfg.RootDevice && p.cfg.ID != exceptPmem {
			return true
		}
	}
	return false
}

func (s *sim) putDrive(d firecracker.Drive) *vmmError {
	idx := s.findDrive(d.DriveID)
	if s.started() {
		if e := s.hotplugCheck(idx >= 0); e != nil {
			return e
		}
	}
	s.bootPath = true
	if d.IsRootDevice && s.rootDeviceElsewhere(d.DriveID, "") {
		return fault("Drive config error: A root block device already exists!")
	}
	if d.CacheType == "" {
		d.CacheType = "Unsafe"
	}
	if d.IOEngine == "" {
		d.IOEngine = "Sync"
	}
	if d.IsReadOnly == nil {
		d.IsReadOnly = firecracker.Bool(false)
	}
	var f *os.File
	var err error
	if d.Socket != "" {
		// vhost-user-block: the backend's socket must be there to connect to.
		if _, err = os.Stat(d.Socket); err == nil {
			f, err = os.Open(os.DevNull)
		}
		if err != nil {
			return fault("Drive config error: Unable to create the vhost-user-block device: Vhost-user error: %s", ioErrText(err))
		}
	} else {
		flag := os.O_RDWR
		if *d.IsReadOnly {
			flag = os.O_RDONLY
		}
		if f, err = os.OpenFile(d.PathOnHost, flag, 0); err != nil {
			return fault("Drive config error: Unable to create the virtio block device: Virtio backend error: "+
				"Error manipulating the backing file: %s %s", ioErrText(err), d.PathOnHost)
		}
	}
	nd := &drive{cfg: d, file: f}
	if idx >= 0 {
		s.res.drives[idx].file.Close()
		s.res.drives[idx] = nd
	} else if d.IsRootDevice {
		// firecracker keeps the root device first.
		s.res.drives = append([]*drive{nd}, s.res.drives...)
	} else {
		s.res.drives = append(s.res.drives, nd)
	}
	return nil
}

func (s *sim) patchDrive(p firecracker.PartialDrive) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	idx := s.findDrive(p.DriveID)
	if idx < 0 {
		return fault("Drive config error: Unable to patch the block device: Device manager error: Failed to find device: %s. Please verify the request arguments.", p.DriveID)
	}
	d := s.res.drives[idx]
	if p.PathOnHost != "" {
		flag := os.O_RDWR
		if d.cfg.IsReadOnly != nil && *d.cfg.IsReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(p.PathOnHost, flag, 0)
		if err != nil {
			return fault("Drive config error: Unable to patch the block device: Block device error: Virtio backend error: "+
				"Error manipulating the backing file: %s %s Please verify the request arguments.", ioErrText(err), p.PathOnHost)
		}
		d.file.Close()
		d.file = f
		d.cfg.PathOnHost = p.PathOnHost
		s.met.inc("block_" + d.cfg.DriveID + ".update_count")
		s.met.inc("block.update_count")
	}
	if p.RateLimiter != nil {
		d.cfg.RateLimiter = mergeLimiter(d.cfg.RateLimiter, p.RateLimiter)
	}
	return nil
}

// mergeLimiter applies a rate-limiter update: given buckets replace the
// current ones, and a bucket of size 0 removes the limit.
func mergeLimiter(cur, up *firecracker.RateLimiter) *firecracker.RateLimiter {
	var out firecracker.RateLimiter
	if cur != nil {
		out = *cur
	}
	if up.Bandwidth != nil {
		out.Bandwidth = up.Bandwidth
		if up.Bandwidth.Size == 0 {
			out.Bandwidth = nil
		}
	}
	if up.Ops != nil {
		out.Ops = up.Ops
		if up.Ops.Size == 0 {
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

func (s *sim) putNet(n firecracker.NetworkInterface) *vmmError {
	idx := s.findNet(n.IfaceID)
	if s.started() {
		if e := s.hotplugCheck(idx >= 0); e != nil {
			return e
		}
	}
	s.bootPath = true
	n.GuestMAC = strings.ToLower(n.GuestMAC)
	if n.GuestMAC != "" {
		for _, o := range s.res.nets {
			if o.cfg.IfaceID != n.IfaceID && o.cfg.GuestMAC == n.GuestMAC {
				return fault("Network config error: The MAC address is already in use: %s", n.GuestMAC)
			}
		}
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		return fault("Network config error: Could not create the network device: MTU %d is out of range [68, 65535]", *n.MTU)
	}
	// An update drops the old device (and its TAP) before the new one is
	// created, so the same TAP can be reused.
	if idx >= 0 {
		s.res.nets[idx].tap.Close()
		s.res.nets = append(s.res.nets[:idx], s.res.nets[idx+1:]...)
	}
	tap, err := s.openTap(n.HostDevName)
	if err != nil {
		return fault("Network config error: Could not create the network device: Open tap device failed: %s", err)
	}
	s.res.nets = append(s.res.nets, &netIface{cfg: n, tap: tap})
	return nil
}

func (s *sim) patchNet(p firecracker.PartialNetworkInterface) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	idx := s.findNet(p.IfaceID)
	if idx < 0 {
		return fault("Network config error: Unable to update the net device: Device manager error: Failed to find device: %s", p.IfaceID)
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

func (s *sim) putPmem(p firecracker.Pmem) *vmmError {
	idx := s.findPmem(p.ID)
	if s.started() {
		if e := s.hotplugCheck(idx >= 0); e != nil {
			return e
		}
	}
	s.bootPath = true
	if p.RootDevice && s.rootDeviceElsewhere("", p.ID) {
		return fault("Pmem device error: Attempt to add pmem as a root device while the root device defined as a block device")
	}
	flag := os.O_RDWR
	if p.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(p.PathOnHost, flag, 0)
	if err != nil {
		return fault("Pmem device error: Error accessing backing file: %s", ioErrText(err))
	}
	np := &pmemDev{cfg: p, file: f}
	if idx >= 0 {
		s.res.pmems[idx].file.Close()
		s.res.pmems[idx] = np
	} else {
		s.res.pmems = append(s.res.pmems, np)
	}
	return nil
}

func (s *sim) patchPmem(p firecracker.PartialPmem) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	idx := s.findPmem(p.ID)
	if idx < 0 {
		return fault("Pmem device error: Unable to update the pmem device: Device manager error: Failed to find device: %s", p.ID)
	}
	if p.RateLimiter != nil {
		s.res.pmems[idx].cfg.RateLimiter = mergeLimiter(s.res.pmems[idx].cfg.RateLimiter, p.RateLimiter)
	}
	return nil
}

// deleteDevice is a PCI hot-unplug (v1.16+).
func (s *sim) deleteDevice(kind, id string) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	if !s.opts.enablePCI {
		return fault("The requested operation is not supported: PCI is not enabled")
	}
	switch kind {
	case "drives":
		i := s.findDrive(id)
		if i < 0 {
			return fault("Drive config error: Unable to remove the block device: Device manager error: Failed to find device: %s", id)
		}
		if s.res.drives[i].cfg.IsRootDevice {
			return fault("Drive config error: Unable to remove the block device: The root device cannot be removed")
		}
		s.res.drives[i].file.Close()
		s.res.drives = append(s.res.drives[:i], s.res.drives[i+1:]...)
	case "network-interfaces":
		i := s.findNet(id)
		if i < 0 {
			return fault("Network config error: Unable to remove the net device: Device manager error: Failed to find device: %s", id)
		}
		s.res.nets[i].tap.Close()
		s.res.nets = append(s.res.nets[:i], s.res.nets[i+1:]...)
	case "pmem":
		i := s.findPmem(id)
		if i < 0 {
			return fault("Pmem device error: Unable to remove the pmem device: Device manager error: Failed to find device: %s", id)
		}
		if s.res.pmems[i].cfg.RootDevice {
			return fault("Pmem device error: Unable to remove the pmem device: The root device cannot be removed")
		}
		s.res.pmems[i].file.Close()
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

func (s *sim) putVsock(v firecracker.Vsock) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	ln, err := bindVsock(v.UDSPath)
	if err != nil {
		return vsockFault(err)
	}
	if s.res.vsock != nil {
		s.res.vsock.ln.Close()
	}
	s.res.vsock = &vsockDev{cfg: v, ln: ln}
	return nil
}

func (s *sim) putEntropy(e firecracker.EntropyDevice) *vmmError {
	if err := s.pre(); err != nil {
		return err
	}
	s.bootPath = true
	s.res.entropy = &e
	return nil
}

func (s *sim) putMMDSConfig(c firecracker.MmdsConfig) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	if len(c.NetworkInterfaces) == 0 {
		return fault("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range c.NetworkInterfaces {
		if s.findNet(id) < 0 {
			return fault("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	if c.IPv4Address != "" {
		if ip := net.ParseIP(c.IPv4Address).To4(); ip == nil || ip[0] != 169 || ip[1] != 254 {
			return fault("MMMDS config error: The MMDS IPv4 address is not link local.")
		}
	}
	if c.Version == "" {
		c.Version = "V1"
	}
	s.res.mmdsCfg = &c
	s.mmds.init()
	return nil
}

func (s *sim) putHotplug(h firecracker.MemoryHotplugConfig) *vmmError {
	if e := s.pre(); e != nil {
		return e
	}
	s.bootPath = true
	if h.SlotSizeMib == nil {
		h.SlotSizeMib = firecracker.Int(128)
	}
	if h.BlockSizeMib == nil {
		h.BlockSizeMib = firecracker.Int(2)
	}
	total, slot, block := *h.TotalSizeMib, *h.SlotSizeMib, *h.BlockSizeMib
	switch {
	case block < 2 || block&(block-1) != 0:
		return fault("Memory hotplug config error: Block size must not be lower than 2 MiB and must be a power of 2")
	case slot < 128 || slot%block != 0:
		return fault("Memory hotplug config error: Slot size must not be lower than 128 MiB and must be a multiple of the block size")
	case total == 0 || total%slot != 0:
		return fault("Memory hotplug config error: Total size must be greater than 0 and a multiple of the slot size")
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
		return nil, fault("Internal VMM error: Memory hotplug device not found")
	}
	return firecracker.MemoryHotplugStatus{
		TotalSizeMib: *h.cfg.TotalSizeMib, SlotSizeMib: *h.cfg.SlotSizeMib, BlockSizeMib: *h.cfg.BlockSizeMib,
		PluggedSizeMib: h.requested, RequestedSizeMib: h.requested,
	}, nil
}

func (s *sim) patchHotplug(u firecracker.MemoryHotplugSizeUpdate) *vmmError {
	if e := s.post(); e != nil {
		return e
	}
	h := s.res.hotplug
	if h == nil {
		return fault("Memory hotplug update error: Memory hotplug device not found")
	}
	req := *u.RequestedSizeMib
	if req > *h.cfg.TotalSizeMib || req%*h.cfg.BlockSizeMib != 0 {
		return fault("Memory hotplug update error: Invalid requested size: it must be a multiple of the block size and not larger than the total size")
	}
	h.requested = req
	s.met.inc("memory_hotplug.plug_count")
	return nil
}
