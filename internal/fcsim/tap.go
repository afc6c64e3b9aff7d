package fcsim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostDir is the directory relative paths from the API and the command
// line are resolved against: "" for the process's working directory (a real
// VMM's, where its agent starts it), a VM's run dir for a simulator running
// inside another process (WorkDirEnv), which cannot change directory for
// itself alone.
type hostDir string

func (d hostDir) at(p string) string {
	if d == "" || p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(string(d), p)
}

// openTap opens the TAP for a network device: the host's, or, with
// noHostTap, a stand-in that holds nothing on the host.
func (s *sim) openTap(name string) (*os.File, error) {
	if !s.opts.noHostTap {
		return openTap(name)
	}
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, errors.New("Invalid interface name")
	}
	return os.Open(os.DevNull)
}

// openTap opens host_dev_name the way firecracker's Tap::open_named does:
// /dev/net/tun, then TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and the
// name, then the vnet header size. The returned file must stay open while
// the device exists: that is what makes the TAP busy for anybody else. As
// root, a missing name creates a transient TAP, exactly as with firecracker.
// The error text is firecracker's TapError Display.
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("Couldn't open /dev/net/tun: %s", ioErrText(err))
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	if len(name) >= unix.IFNAMSIZ {
		f.Close()
		return nil, errors.New("Invalid interface name")
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		f.Close()
		return nil, errors.New("Invalid interface name")
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		return nil, fmt.Errorf("Error while creating ifreq structure: %s. Invalid TUN/TAP Backend provided by %s. "+
			"Check our documentation on setting up the network devices.", ioErrText(err), name)
	}
	// virtio-net's header with VIRTIO_NET_F_MRG_RXBUF is 12 bytes.
	hdr := int32(12)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETVNETHDRSZ, uintptr(unsafe.Pointer(&hdr))); e != 0 {
		f.Close()
		return nil, fmt.Errorf("Error while setting size of the vnet header: %s", errnoText(e))
	}
	return f, nil
}
