package guest_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/guest"
)

// bootAndReach is the smoke test proper: the image set boots, the guest
// says it is ready exactly once, and the host reaches it over the bridge.
func bootAndReach(t *testing.T, spec bootSpec) {
	v := startVM(t, spec)
	took, err := v.waitReady(readyTimeout)
	if err != nil {
		t.Fatalf("%s boot (%s): %v", spec.VMM, v.args, err)
	}
	t.Logf("%s: guest ready %.1fs after the VMM started (images ready in %.1fs)", spec.VMM, took.Seconds(), imagesTook.Seconds())
	body, err := v.probe(30 * time.Second)
	if err != nil {
		t.Fatalf("%v\n--- console ---\n%s", err, strings.Join(v.con.tail(20), "\n"))
	}
	if body != guest.ProbeText {
		t.Errorf("the guest at %s answered %q; want %q", v.addr.Addr(), body, guest.ProbeText)
	}
	if n := v.con.count(guest.IsReady); n != 1 {
		t.Errorf("the console has %d readiness lines; want exactly 1", n)
	}
	// The guest mounted and configured what the command line asked for,
	// as it says.
	mode := "ro"
	if spec.ReadWrite {
		mode = "rw"
	}
	assertConsoleLine(t, v, "nexus-initrd: root /dev/vda mounted (ext4, "+mode+"), starting /sbin/init")
	assertConsoleLine(t, v, "nexus-guest: eth0 "+v.addr.String()+" via 172.20.0.1 dns 172.20.0.1")
}

func assertConsoleLine(t *testing.T, v *vm, want string) {
	t.Helper()
	if v.con.count(func(l string) bool { return strings.TrimSpace(l) == want }) != 1 {
		t.Errorf("the console lacks %q:\n%s", want, strings.Join(v.con.tail(30), "\n"))
	}
}

// TestGuestBootsUnderQEMU boots kernel + initrd + rootfs with the command
// line Nexus gives firecracker, the root drive read-only.
func TestGuestBootsUnderQEMU(t *testing.T) {
	qemu := requireQEMU(t)
	bootAndReach(t, bootSpec{VMM: vmmQEMU, Bin: qemu, Images: guestImages(t)})
}

// TestGuestBootsUnderFirecracker is the same under real firecracker, where
// /dev/kvm works and firecracker is on PATH.
func TestGuestBootsUnderFirecracker(t *testing.T) {
	fc := requireFirecracker(t)
	bootAndReach(t, bootSpec{VMM: vmmFirecracker, Bin: fc, Images: guestImages(t)})
}

// TestKernelWithoutInitrdFails: the distribution kernel alone has no
// virtio or ext4 driver, so it cannot mount root. The harness must say
// so, with the kernel's own words, quickly, instead of waiting out the
// readiness timeout.
func TestKernelWithoutInitrdFails(t *testing.T) {
	qemu := requireQEMU(t)
	v := startVM(t, bootSpec{VMM: vmmQEMU, Bin: qemu, Images: guestImages(t), NoInitrd: true})
	start := time.Now()
	_, err := v.waitReady(readyTimeout)
	var be *bootError
	if !errors.As(err, &be) {
		t.Fatalf("boot without the initrd: got %v; want a boot error", err)
	}
	if !strings.Contains(be.Reason, "kernel panic: VFS: Unable to mount root fs") {
		t.Errorf("boot without the initrd: reason %q; want the kernel's root-not-found panic", be.Reason)
	}
	if !strings.Contains(err.Error(), "--- console") || len(be.Tail) == 0 {
		t.Errorf("the report has no console tail: %v", err)
	}
	if took := time.Since(start); took > readyTimeout/2 {
		t.Errorf("the failure was reported after %s: it should come with the panic, not the timeout", took)
	}
	t.Logf("reported: %s", be.Reason)
}

// TestWrongRootDeviceFails: the initrd says in one line which root device
// it could not find (and which it has), and the kernel then stops.
func TestWrongRootDeviceFails(t *testing.T) {
	qemu := requireQEMU(t)
	// A user's root= wins over Nexus's; rootdelay keeps the wait short.
	v := startVM(t, bootSpec{VMM: vmmQEMU, Bin: qemu, Images: guestImages(t), ReadWrite: true,
		UserArgs: "root=/dev/vdb rootdelay=2"})
	_, err := v.waitReady(readyTimeout)
	var be *bootError
	if !errors.As(err, &be) {
		t.Fatalf("boot with root=/dev/vdb: got %v; want a boot error", err)
	}
	if want := "root device /dev/vdb did not appear within 2s (block devices: vda"; !strings.HasPrefix(be.Reason, want) {
		t.Errorf("boot with root=/dev/vdb: reason %q; want it to start with %q", be.Reason, want)
	}
	t.Logf("reported: %s", be.Reason)
}

// TestUnsupportedIPArgFails: a guest that cannot configure its network
// says why in its failure line instead of claiming readiness, and keeps
// running so its console can be inspected. Its root is read-write, as a
// VM's own copy is under Nexus.
func TestUnsupportedIPArgFails(t *testing.T) {
	qemu := requireQEMU(t)
	v := startVM(t, bootSpec{VMM: vmmQEMU, Bin: qemu, Images: guestImages(t), ReadWrite: true, UserArgs: "ip=dhcp"})
	_, err := v.waitReady(readyTimeout)
	var be *bootError
	if !errors.As(err, &be) {
		t.Fatalf("boot with ip=dhcp: got %v; want a boot error", err)
	}
	if want := "ip=dhcp: automatic configuration is not supported"; !strings.HasPrefix(be.Reason, want) {
		t.Errorf("boot with ip=dhcp: reason %q; want it to start with %q", be.Reason, want)
	}
	select {
	case <-v.exited:
		t.Errorf("the VM stopped after the guest's failure (%v); it should keep running", v.waitErr)
	default:
	}
	assertConsoleLine(t, v, "nexus-initrd: root /dev/vda mounted (ext4, rw), starting /sbin/init")
	t.Logf("reported: %s", be.Reason)
}
