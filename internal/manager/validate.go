package manager

import (
	"fmt"
	"net/netip"
	"unicode/utf8"

	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/guest"
)

// Bounds of what a VM may ask for, checked before any host work so that a
// bad value is a 400 that changes nothing (docs/api.md lists them).
const (
	// maxMemMib bounds a VM's memory: 1 TiB. Placement refuses what no
	// host can hold; this keeps sums of allocations far from overflow.
	maxMemMib = 1 << 20
	// maxBootArgs is the x86 kernel's command-line limit.
	maxBootArgs = 2048
	// Tags: a VM carries at most maxTags, keys up to maxTagKey bytes and
	// values up to maxTagValue bytes, without control characters.
	maxTags     = 32
	maxTagKey   = 63
	maxTagValue = 255
)

// checkVcpu: firecracker takes 1-32 vCPUs, and with SMT only 1 or an even
// number; Nexus asks for the rule that holds on every host.
func checkVcpu(field string, v int) error {
	if v < 1 || v > firecracker.MaxVcpus || (v > 1 && v%2 != 0) {
		return invalid("%s %d: want 1 or an even number up to %d", field, v, firecracker.MaxVcpus).
			suggest(fmt.Sprintf("use %d", nearestVcpu(v)))
	}
	return nil
}

func nearestVcpu(v int) int {
	switch {
	case v < 1:
		return 1
	case v > firecracker.MaxVcpus:
		return firecracker.MaxVcpus
	}
	return v + v%2
}

func checkMem(field string, m int) error {
	if m < 1 || m > maxMemMib {
		return invalid("%s %d: want 1 to %d MiB", field, m, maxMemMib)
	}
	return nil
}

// checkBootArgs refuses control characters: the command line is one line
// of text to the kernel, and a newline or NUL would cut it short.
func checkBootArgs(field, s string) error {
	if len(s) > maxBootArgs {
		return invalid("%s is %d bytes: the kernel takes at most %d", field, len(s), maxBootArgs)
	}
	if i, r := firstControl(s); i >= 0 {
		return invalid("%s has a control character %q at byte %d: write the command line on one line of printable text", field, r, i)
	}
	return nil
}

// Where the kernel command line is checked at create, the VM's address
// is not known yet: the longest one Nexus can write stands in for it.
var (
	longestAddr    = netip.MustParsePrefix("223.255.255.253/30")
	longestGateway = netip.MustParseAddr("223.255.255.254")
)

// checkCommandLine refuses boot_args that leave no room for what Nexus
// adds (its defaults, root= with a root drive, ip= with a network
// interface, unless the user's arguments set them): the whole line must
// fit the kernel's limit, or the boot would fail later.
func checkCommandLine(field, user string, root, network bool) error {
	vm := guest.VM{UserArgs: user}
	if root {
		vm.RootDevice = "/dev/vda"
	}
	if network {
		vm.Addr, vm.Gateway = longestAddr, longestGateway
	}
	if _, err := vm.CommandLine(); err != nil {
		return invalid("%s: %v", field, err).suggest("shorten boot_args; Nexus adds console=, reboot=, panic=, pci=, root= and ip= unless boot_args sets them")
	}
	return nil
}

// checkTags bounds a VM's tags: how many, how long, printable.
func checkTags(tags map[string]string) error {
	if len(tags) > maxTags {
		return invalid("%d tags: a VM takes at most %d", len(tags), maxTags)
	}
	for k, v := range tags {
		switch {
		case k == "" || len(k) > maxTagKey:
			return invalid("tag key %.80q: want 1 to %d bytes", k, maxTagKey)
		case len(v) > maxTagValue:
			return invalid("tag %s: the value is %d bytes; at most %d", k, len(v), maxTagValue)
		}
		for _, s := range []string{k, v} {
			if i, _ := firstControl(s); i >= 0 || !utf8.ValidString(s) {
				return invalid("tag %.80q: keys and values must be printable UTF-8", k)
			}
		}
	}
	return nil
}

// firstControl returns the byte index and rune of the first control
// character in s, or -1.
func firstControl(s string) (int, rune) {
	for i, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return i, r
		}
	}
	return -1, 0
}
