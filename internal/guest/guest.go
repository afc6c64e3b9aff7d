// Package guest is Nexus's side of the contract with the guest images that
// `make images` builds (docs/images.md): the kernel command line a VM boots
// with — Nexus's defaults, the root device, and the static network
// configuration in the kernel's own `ip=` syntax, which the guest's init
// reads from /proc/cmdline — and the lines the guest prints on its serial
// console when it is ready or has failed.
//
// It must import only the standard library: the manager, the agent, the
// smoke test and tools all use it, and it must never pull the API, the
// store or the manager in with it (guest_test.go checks).
package guest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// DefaultBootArgs give a console on ttyS0 (the VM's console log), make a
// reboot request exit the VMM and a panic reboot (so exit) after 1 s
// rather than hang, and skip PCI probing on a machine that has none.
const DefaultBootArgs = "console=ttyS0 reboot=k panic=1 pci=off"

// DefaultInterface is the guest's network interface: its first virtio-net
// device.
const DefaultInterface = "eth0"

// The guest's console lines. The guest init prints ReadyLine exactly once
// per boot, on a line of its own, after the network from ip= is configured
// and the probe listener answers; when it cannot get there it prints
// FailedPrefix followed by the reason instead, and keeps running so the
// console can be inspected.
const (
	ReadyLine    = "nexus-guest: ready"
	FailedPrefix = "nexus-guest: failed: "
)

// The probe listener: the guest answers a TCP connection (HTTP GET /) on
// ProbePort with ProbeText, so the host can prove it reaches the guest.
const (
	ProbePort = 8080
	ProbeText = "nexus-guest: hello\n"
)

// kernelPanic starts the reason of the kernel's panic line, e.g.
// "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)".
const kernelPanic = "Kernel panic - not syncing: "

// IsReady reports whether a console line is the guest's readiness line.
// The serial console ends lines with "\r\n" and a line may carry stray
// control characters (a NUL from the UART); those and surrounding blanks
// are ignored, anything else on the line is not: a shell echoing the text
// after its prompt is not readiness.
func IsReady(line string) bool {
	return cleanLine(line) == ReadyLine
}

// Failure reports whether a console line says the boot failed, and why:
// the guest init's FailedPrefix line, or a kernel panic (for example no
// root device: the kernel cannot mount root without the initrd's
// drivers). A kernel message may precede the panic text on the line.
func Failure(line string) (reason string, failed bool) {
	l := cleanLine(line)
	if r, ok := strings.CutPrefix(l, FailedPrefix); ok {
		return strings.TrimSpace(r), true
	}
	if _, r, ok := strings.Cut(l, kernelPanic); ok {
		return "kernel panic: " + strings.TrimSpace(r), true
	}
	return "", false
}

// cleanLine drops control characters and surrounding blanks.
func cleanLine(line string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < ' ' && r != '\t' || r == 0x7f {
			return -1
		}
		return r
	}, line))
}

// IPConfig is a guest's static IPv4 configuration.
type IPConfig struct {
	// Addr is the guest's address with the subnet's prefix length, e.g.
	// 172.20.0.2/16 on the default bridge.
	Addr netip.Prefix
	// Gateway is the default route's next hop (the bridge's address); the
	// zero Addr means no default route.
	Gateway netip.Addr
	// DNS holds up to two name servers for the guest's resolv.conf.
	DNS []netip.Addr
	// Interface is the guest's interface, default DefaultInterface.
	Interface string
	// Hostname is optional; ParseIPArg fills it, IPArg never sets one.
	Hostname string
}

// IPArg returns the kernel command line argument that configures the
// guest's network, in the kernel's nfsroot syntax:
//
//	ip=<client-ip>::<gateway>:<netmask>::<interface>:off[:<dns0>[:<dns1>]]
//
// addr is the guest's IPv4 address with the subnet's prefix length (1-30);
// gateway lies in that subnet, or is the zero Addr for no default route;
// dns holds at most two IPv4 servers; iface "" means DefaultInterface.
// The kernel itself applies it only when built with CONFIG_IP_PNP and the
// NIC driver built in; the images' init parses it otherwise, the same way.
func IPArg(addr netip.Prefix, gateway netip.Addr, dns []netip.Addr, iface string) (string, error) {
	c := IPConfig{Addr: addr, Gateway: gateway, DNS: dns, Interface: iface}
	if err := c.validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("ip=")
	b.WriteString(c.Addr.Addr().String())
	b.WriteString("::")
	if c.Gateway.IsValid() {
		b.WriteString(c.Gateway.String())
	}
	b.WriteString(":")
	b.WriteString(netmask(c.Addr.Bits()))
	b.WriteString("::")
	b.WriteString(c.iface())
	b.WriteString(":off")
	for _, d := range c.DNS {
		b.WriteString(":")
		b.WriteString(d.String())
	}
	return b.String(), nil
}

func (c IPConfig) iface() string {
	if c.Interface == "" {
		return DefaultInterface
	}
	return c.Interface
}

// validate checks what the kernel's syntax and a working guest need.
func (c IPConfig) validate() error {
	a := c.Addr.Addr()
	switch {
	case !c.Addr.IsValid():
		return errors.New("ip=: no guest address")
	case !a.Is4():
		return fmt.Errorf("ip=: guest address %s: want IPv4 (the kernel's ip= syntax has no IPv6)", c.Addr)
	case c.Addr.Bits() < 1 || c.Addr.Bits() > 30:
		return fmt.Errorf("ip=: guest address %s: want a prefix length of 1-30 (a subnet with room for a gateway)", c.Addr)
	case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("ip=: guest address %s is not a unicast host address", c.Addr)
	case a == c.Addr.Masked().Addr():
		return fmt.Errorf("ip=: guest address %s is the subnet's network address", c.Addr)
	case a == broadcast(c.Addr):
		return fmt.Errorf("ip=: guest address %s is the subnet's broadcast address", c.Addr)
	}
	if g := c.Gateway; g.IsValid() {
		switch {
		case !g.Is4():
			return fmt.Errorf("ip=: gateway %s: want IPv4", g)
		case !c.Addr.Masked().Contains(g):
			return fmt.Errorf("ip=: gateway %s is outside the guest's subnet %s", g, c.Addr.Masked())
		case g == a:
			return fmt.Errorf("ip=: gateway %s is the guest's own address", g)
		case g == c.Addr.Masked().Addr() || g == broadcast(c.Addr):
			return fmt.Errorf("ip=: gateway %s is the subnet's network or broadcast address", g)
		}
	}
	if len(c.DNS) > 2 {
		return fmt.Errorf("ip=: %d DNS servers: the syntax has room for two (dns0, dns1)", len(c.DNS))
	}
	for i, d := range c.DNS {
		if !d.IsValid() || !d.Is4() || d.IsUnspecified() || d.IsMulticast() {
			return fmt.Errorf("ip=: DNS server %d (%v): want a unicast IPv4 address", i, d)
		}
	}
	if err := validIface(c.iface()); err != nil {
		return fmt.Errorf("ip=: interface %q: %w", c.Interface, err)
	}
	return nil
}

// validIface: a Linux interface name (1-15 bytes, no '/' or blanks) that
// is also a single field of ip= (no ':').
func validIface(name string) error {
	if len(name) > 15 || name == "." || name == ".." {
		return errors.New("want a Linux interface name of 1-15 bytes")
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r >= 0x7f || r == '"' {
			return fmt.Errorf("invalid character %q", r)
		}
	}
	return nil
}

// netmask spells a prefix length as a dotted IPv4 netmask.
func netmask(bits int) string {
	return net.IP(net.CIDRMask(bits, 32)).String()
}

// broadcast is the last address of p's subnet.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	m := net.CIDRMask(p.Bits(), 32)
	for i := range b {
		b[i] |= ^m[i]
	}
	return netip.AddrFrom4(b)
}

// ParseIPArg reads a static ip= argument (with or without the "ip="
// prefix) back: the fields IPArg writes, plus the hostname. Automatic
// configuration (dhcp, bootp, …), "off" and "none" are errors: the
// images' init configures static addresses only.
func ParseIPArg(arg string) (IPConfig, error) {
	v := strings.TrimPrefix(arg, "ip=")
	f := strings.Split(v, ":")
	if len(f) < 4 {
		return IPConfig{}, fmt.Errorf("ip=%s: want <client-ip>:<server-ip>:<gateway>:<netmask>[:<hostname>:<device>:<autoconf>:<dns0>:<dns1>]", v)
	}
	if len(f) > 10 {
		return IPConfig{}, fmt.Errorf("ip=%s: %d fields, the syntax has at most 10", v, len(f))
	}
	for len(f) < 10 {
		f = append(f, "")
	}
	switch f[6] {
	case "", "off", "none":
	default:
		return IPConfig{}, fmt.Errorf("ip=%s: autoconfiguration %q: only static configuration (off) is supported", v, f[6])
	}
	client, err := netip.ParseAddr(f[0])
	if err != nil {
		return IPConfig{}, fmt.Errorf("ip=%s: client address: %w", v, err)
	}
	mask, err := netip.ParseAddr(f[3])
	if err != nil || !mask.Is4() {
		return IPConfig{}, fmt.Errorf("ip=%s: netmask %q: want a dotted IPv4 netmask", v, f[3])
	}
	m4 := mask.As4()
	ones, bits := net.IPMask(m4[:]).Size()
	if bits == 0 {
		return IPConfig{}, fmt.Errorf("ip=%s: netmask %s is not contiguous", v, mask)
	}
	c := IPConfig{Addr: netip.PrefixFrom(client, ones), Interface: f[5], Hostname: f[4]}
	if f[2] != "" {
		if c.Gateway, err = netip.ParseAddr(f[2]); err != nil {
			return IPConfig{}, fmt.Errorf("ip=%s: gateway: %w", v, err)
		}
	}
	for _, d := range f[7:9] {
		if d == "" {
			continue
		}
		a, err := netip.ParseAddr(d)
		if err != nil {
			return IPConfig{}, fmt.Errorf("ip=%s: DNS server: %w", v, err)
		}
		c.DNS = append(c.DNS, a)
	}
	if err := c.validate(); err != nil {
		return IPConfig{}, err
	}
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	return c, nil
}

// RootArg returns the root device argument, "root=<device> ro" or
// "root=<device> rw", e.g. RootArg("/dev/vda", true). Firecracker appends
// the same text itself for a drive with is_root_device (root=/dev/vda
// unless the drive has a partuuid); composing it here as well is harmless
// and makes the command line complete for any VMM.
func RootArg(device string, readOnly bool) (string, error) {
	named := false
	for _, p := range []string{"/dev/", "PARTUUID=", "UUID=", "LABEL="} {
		if v, ok := strings.CutPrefix(device, p); ok && v != "" {
			named = true
		}
	}
	if !named {
		return "", fmt.Errorf("root device %q: want /dev/<name>, PARTUUID=<id>, UUID=<id> or LABEL=<label>", device)
	}
	if strings.ContainsAny(device, " \t\n\"") {
		return "", fmt.Errorf("root device %q: want one word", device)
	}
	mode := "rw"
	if readOnly {
		mode = "ro"
	}
	return "root=" + device + " " + mode, nil
}

// ComposeBootArgs is the command line a VM boots with: DefaultBootArgs,
// then each of nexusArgs (typically RootArg's and IPArg's results; empty
// strings are skipped), then the user's own boot_args verbatim. A Nexus
// parameter the user already gave is left out, so the user's choice wins
// and nothing appears twice: "console=ttyS1" replaces the console,
// "ip=…" the network configuration, "rw" the read-only mode. Among Nexus's
// own parameters a later one replaces an earlier one with the same name.
// Names compare as the kernel compares them ('-' and '_' are the same);
// "ro" and "rw" count as one parameter; parameters after a user's "--"
// belong to init and are not looked at.
func ComposeBootArgs(user string, nexusArgs ...string) string {
	userKeys := map[string]bool{}
	for _, tok := range kernelParams(user) {
		userKeys[paramKey(tok)] = true
	}
	var ours []string
	index := map[string]int{}
	for _, args := range append([]string{DefaultBootArgs}, nexusArgs...) {
		for _, tok := range kernelParams(args) {
			k := paramKey(tok)
			if userKeys[k] {
				continue
			}
			if i, ok := index[k]; ok {
				ours[i] = tok
				continue
			}
			index[k] = len(ours)
			ours = append(ours, tok)
		}
	}
	out := strings.Join(ours, " ")
	if u := strings.TrimSpace(user); u != "" {
		if out != "" {
			out += " "
		}
		out += u
	}
	return out
}

// kernelParams splits a command line the way the kernel does: at blanks
// outside double quotes, up to a lone "--" (the rest is init's).
func kernelParams(cmdline string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	flush := func() bool {
		if !have {
			return true
		}
		tok := cur.String()
		cur.Reset()
		have = false
		if tok == "--" {
			return false
		}
		out = append(out, tok)
		return true
	}
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuote = !inQuote
			cur.WriteRune(r)
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if !flush() {
				return out
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	flush()
	return out
}

// paramKey is the name of a parameter as the kernel matches it: before
// the first '=' outside quotes, quotes dropped, '-' read as '_'; "ro" and
// "rw" share one key.
func paramKey(tok string) string {
	var b strings.Builder
	inQuote := false
	for _, r := range tok {
		if r == '"' {
			inQuote = !inQuote
			continue
		}
		if r == '=' && !inQuote {
			break
		}
		if r == '-' {
			r = '_'
		}
		b.WriteRune(r)
	}
	k := b.String()
	if k == "ro" || k == "rw" {
		return "ro|rw"
	}
	return k
}

// MaxCommandLine is the x86 kernel's command-line limit
// (COMMAND_LINE_SIZE, NUL included), which firecracker enforces too.
const MaxCommandLine = 2048

// VM is what Nexus knows of a VM when it composes the VM's kernel command
// line. The manager boots every VM with VM.CommandLine and the smoke test
// (test/guest) boots the images with it too, so the line a real kernel is
// proven to boot with is the line Nexus gives firecracker.
type VM struct {
	// UserArgs are the VM's own boot_args; they win (ComposeBootArgs).
	UserArgs string
	// RootDevice is the root drive as the guest sees it ("/dev/vda" for
	// firecracker's first drive); "" when the VM has no root drive.
	RootDevice string
	// RootReadOnly mounts root read-only: the drive is attached
	// read-only (a read_only image in place).
	RootReadOnly bool
	// Addr is the guest's address with its subnet's prefix length; the
	// zero Prefix (a VM without a network interface, or a host that
	// reported no subnet) gives no ip= argument.
	Addr netip.Prefix
	// Gateway is the bridge's address: the guest's default route and its
	// name server.
	Gateway netip.Addr
}

// CommandLine composes the VM's kernel command line: DefaultBootArgs,
// RootArg for the root drive, IPArg for the address (the gateway doubles
// as the name server), then the user's arguments, which win. It fails
// when the address cannot be written as ip= or the result does not fit
// MaxCommandLine.
func (v VM) CommandLine() (string, error) {
	var nexus []string
	if v.RootDevice != "" {
		root, err := RootArg(v.RootDevice, v.RootReadOnly)
		if err != nil {
			return "", err
		}
		nexus = append(nexus, root)
	}
	if v.Addr.IsValid() {
		var dns []netip.Addr
		if v.Gateway.IsValid() {
			dns = []netip.Addr{v.Gateway}
		}
		ip, err := IPArg(v.Addr, v.Gateway, dns, "")
		if err != nil {
			return "", err
		}
		nexus = append(nexus, ip)
	}
	line := ComposeBootArgs(v.UserArgs, nexus...)
	if len(line) >= MaxCommandLine {
		return "", fmt.Errorf("the kernel command line would be %d bytes with Nexus's arguments (%q…); the kernel takes %d",
			len(line), line[:min(len(line), 60)], MaxCommandLine-1)
	}
	return line, nil
}
