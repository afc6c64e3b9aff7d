package guest

import (
	"go/parser"
	"go/token"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestIPArg(t *testing.T) {
	for _, tc := range []struct {
		name    string
		addr    netip.Prefix
		gw      netip.Addr
		dns     []netip.Addr
		iface   string
		want    string
		wantErr string
	}{
		{name: "default bridge", addr: pfx("172.20.0.2/16"), gw: addr("172.20.0.1"),
			want: "ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off"},
		{name: "one dns", addr: pfx("10.1.2.3/24"), gw: addr("10.1.2.1"), dns: []netip.Addr{addr("10.1.2.1")},
			want: "ip=10.1.2.3::10.1.2.1:255.255.255.0::eth0:off:10.1.2.1"},
		{name: "two dns and an interface", addr: pfx("10.1.2.3/24"), gw: addr("10.1.2.1"),
			dns: []netip.Addr{addr("1.1.1.1"), addr("8.8.8.8")}, iface: "eth1",
			want: "ip=10.1.2.3::10.1.2.1:255.255.255.0::eth1:off:1.1.1.1:8.8.8.8"},
		{name: "no gateway", addr: pfx("192.168.7.9/30"),
			want: "ip=192.168.7.9:::255.255.255.252::eth0:off"},
		{name: "odd prefix", addr: pfx("172.20.13.200/19"), gw: addr("172.20.0.1"),
			want: "ip=172.20.13.200::172.20.0.1:255.255.224.0::eth0:off"},

		{name: "zero address", wantErr: "no guest address"},
		{name: "ipv6", addr: pfx("fd00::2/64"), gw: addr("fd00::1"), wantErr: "want IPv4"},
		{name: "ipv4-mapped ipv6", addr: pfx("::ffff:172.20.0.2/112"), wantErr: "want IPv4"},
		{name: "host prefix", addr: pfx("172.20.0.2/32"), gw: addr("172.20.0.1"), wantErr: "prefix length of 1-30"},
		{name: "/31", addr: pfx("172.20.0.2/31"), wantErr: "prefix length of 1-30"},
		{name: "/0", addr: pfx("172.20.0.2/0"), wantErr: "prefix length of 1-30"},
		{name: "network address", addr: pfx("172.20.0.0/16"), gw: addr("172.20.0.1"), wantErr: "network address"},
		{name: "broadcast address", addr: pfx("172.20.255.255/16"), gw: addr("172.20.0.1"), wantErr: "broadcast address"},
		{name: "loopback", addr: pfx("127.0.0.2/8"), wantErr: "not a unicast host address"},
		{name: "multicast", addr: pfx("224.0.0.5/24"), wantErr: "not a unicast host address"},
		{name: "unspecified", addr: pfx("0.0.0.0/8"), wantErr: "not a unicast host address"},
		{name: "gateway outside subnet", addr: pfx("172.20.0.2/16"), gw: addr("10.0.0.1"), wantErr: "outside the guest's subnet"},
		{name: "gateway is the guest", addr: pfx("172.20.0.2/16"), gw: addr("172.20.0.2"), wantErr: "guest's own address"},
		{name: "gateway is the network", addr: pfx("172.20.0.2/16"), gw: addr("172.20.0.0"), wantErr: "network or broadcast"},
		{name: "gateway ipv6", addr: pfx("172.20.0.2/16"), gw: addr("fd00::1"), wantErr: "gateway fd00::1: want IPv4"},
		{name: "three dns", addr: pfx("172.20.0.2/16"), gw: addr("172.20.0.1"),
			dns: []netip.Addr{addr("1.1.1.1"), addr("8.8.8.8"), addr("9.9.9.9")}, wantErr: "room for two"},
		{name: "zero dns", addr: pfx("172.20.0.2/16"), dns: []netip.Addr{{}}, wantErr: "DNS server 0"},
		{name: "ipv6 dns", addr: pfx("172.20.0.2/16"), dns: []netip.Addr{addr("2001:db8::53")}, wantErr: "DNS server 0"},
		{name: "interface with colon", addr: pfx("172.20.0.2/16"), iface: "eth0:1", wantErr: "invalid character ':'"},
		{name: "interface with blank", addr: pfx("172.20.0.2/16"), iface: "eth 0", wantErr: "invalid character ' '"},
		{name: "interface too long", addr: pfx("172.20.0.2/16"), iface: "a-very-long-ifname", wantErr: "1-15 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IPArg(tc.addr, tc.gw, tc.dns, tc.iface)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("IPArg(%v, %v, %v, %q) = %q, %v; want an error containing %q", tc.addr, tc.gw, tc.dns, tc.iface, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("IPArg(%v, %v, %v, %q) = %q, %v; want %q", tc.addr, tc.gw, tc.dns, tc.iface, got, err, tc.want)
			}
			// What we write reads back as what we meant.
			c, err := ParseIPArg(got)
			if err != nil {
				t.Fatalf("ParseIPArg(%q): %v", got, err)
			}
			wantIface := tc.iface
			if wantIface == "" {
				wantIface = "eth0"
			}
			if c.Addr != tc.addr || c.Gateway != tc.gw || !slices.Equal(c.DNS, tc.dns) || c.Interface != wantIface {
				t.Errorf("ParseIPArg(%q) = %+v; want addr %v gateway %v dns %v interface %s", got, c, tc.addr, tc.gw, tc.dns, wantIface)
			}
		})
	}
}

func TestParseIPArg(t *testing.T) {
	for _, tc := range []struct {
		arg     string
		want    IPConfig
		wantErr string
	}{
		{arg: "ip=10.0.0.5:10.0.0.9:10.0.0.1:255.255.255.0:vm1:eth0:off:10.0.0.1:10.0.0.2:10.0.0.3",
			want: IPConfig{Addr: pfx("10.0.0.5/24"), Gateway: addr("10.0.0.1"), DNS: []netip.Addr{addr("10.0.0.1"), addr("10.0.0.2")}, Interface: "eth0", Hostname: "vm1"}},
		{arg: "10.0.0.5::10.0.0.1:255.255.255.0", // short form, no prefix, default device
			want: IPConfig{Addr: pfx("10.0.0.5/24"), Gateway: addr("10.0.0.1"), Interface: "eth0"}},
		{arg: "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none",
			want: IPConfig{Addr: pfx("10.0.0.5/24"), Gateway: addr("10.0.0.1"), Interface: "eth0"}},

		{arg: "ip=dhcp", wantErr: "want <client-ip>"},
		{arg: "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:dhcp", wantErr: "only static configuration"},
		{arg: "ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:off", wantErr: "not contiguous"},
		{arg: "ip=10.0.0.5::10.0.0.1:24::eth0:off", wantErr: "dotted IPv4 netmask"},
		{arg: "ip=10.0.0.500::10.0.0.1:255.255.255.0::eth0:off", wantErr: "client address"},
		{arg: "ip=10.0.0.5::gw:255.255.255.0::eth0:off", wantErr: "gateway"},
		{arg: "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:off:dns", wantErr: "DNS server"},
		{arg: "ip=10.0.0.5::10.1.0.1:255.255.255.0::eth0:off", wantErr: "outside the guest's subnet"},
		{arg: "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:off:1.1.1.1:1.1.1.1:1.1.1.1:x", wantErr: "at most 10"},
	} {
		t.Run(tc.arg, func(t *testing.T) {
			got, err := ParseIPArg(tc.arg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseIPArg(%q) = %+v, %v; want an error containing %q", tc.arg, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Addr != tc.want.Addr || got.Gateway != tc.want.Gateway || !slices.Equal(got.DNS, tc.want.DNS) ||
				got.Interface != tc.want.Interface || got.Hostname != tc.want.Hostname {
				t.Fatalf("ParseIPArg(%q) = %+v, %v; want %+v", tc.arg, got, err, tc.want)
			}
		})
	}
}

func TestRootArg(t *testing.T) {
	for _, tc := range []struct {
		dev     string
		ro      bool
		want    string
		wantErr bool
	}{
		{dev: "/dev/vda", ro: true, want: "root=/dev/vda ro"},
		{dev: "/dev/vda", want: "root=/dev/vda rw"},
		{dev: "PARTUUID=0eaa91a0-01", want: "root=PARTUUID=0eaa91a0-01 rw"},
		{dev: "LABEL=rootfs", ro: true, want: "root=LABEL=rootfs ro"},
		{dev: "vda", wantErr: true},
		{dev: "", wantErr: true},
		{dev: "/dev/", wantErr: true},
		{dev: "UUID=", wantErr: true},
		{dev: "/dev/vda quiet", wantErr: true},
		{dev: `/dev/"vda`, wantErr: true},
	} {
		got, err := RootArg(tc.dev, tc.ro)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("RootArg(%q, %v) = %q, %v; want %q (error: %v)", tc.dev, tc.ro, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestComposeBootArgs(t *testing.T) {
	const ip = "ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off"
	for _, tc := range []struct {
		name string
		user string
		ours []string
		want string
	}{
		{name: "nothing from the user", ours: []string{"root=/dev/vda rw", ip},
			want: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw " + ip},
		{name: "defaults only", want: DefaultBootArgs},
		{name: "empty parts are skipped", ours: []string{"", "  ", ip},
			want: DefaultBootArgs + " " + ip},
		{name: "user extras are kept after ours", user: "quiet loglevel=3", ours: []string{"root=/dev/vda ro"},
			want: DefaultBootArgs + " root=/dev/vda ro quiet loglevel=3"},
		{name: "user console wins", user: "console=ttyS1,115200", ours: []string{ip},
			want: "reboot=k panic=1 pci=off " + ip + " console=ttyS1,115200"},
		{name: "user ip wins", user: "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off", ours: []string{"root=/dev/vda rw", ip},
			want: DefaultBootArgs + " root=/dev/vda rw ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"},
		{name: "user rw beats our ro", user: "rw", ours: []string{"root=/dev/vda ro"},
			want: DefaultBootArgs + " root=/dev/vda rw"},
		{name: "user ro beats our rw, root kept", user: "ro", ours: []string{"root=/dev/vda rw"},
			want: DefaultBootArgs + " root=/dev/vda ro"},
		{name: "user root wins, our mode stays", user: "root=/dev/vdb", ours: []string{"root=/dev/vda rw"},
			want: DefaultBootArgs + " rw root=/dev/vdb"},
		{name: "dash and underscore are one name", user: "virtio-mmio.device=4K@0xd0000000:5", ours: []string{"virtio_mmio.device=4K@0xd0001000:6"},
			want: DefaultBootArgs + " virtio-mmio.device=4K@0xd0000000:5"},
		{name: "a prefix is another name", user: "panic_print=1",
			want: DefaultBootArgs + " panic_print=1"},
		{name: "a later nexus arg replaces an earlier one", ours: []string{"console=hvc0", "root=/dev/vda ro", "root=/dev/vdb rw"},
			want: "console=hvc0 reboot=k panic=1 pci=off root=/dev/vdb rw"},
		{name: "quoted value with blanks is one parameter", user: `dyndbg="file drivers/* +p" panic=5`,
			want: `console=ttyS0 reboot=k pci=off dyndbg="file drivers/* +p" panic=5`},
		{name: "init arguments are not kernel parameters", user: "quiet -- console=ttyS1 single", ours: []string{ip},
			want: DefaultBootArgs + " " + ip + " quiet -- console=ttyS1 single"},
		{name: "user blanks are trimmed", user: "  quiet  ",
			want: DefaultBootArgs + " quiet"},
		{name: "user gives everything", user: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro " + ip, ours: []string{"root=/dev/vda rw", ip},
			want: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro " + ip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ComposeBootArgs(tc.user, tc.ours...); got != tc.want {
				t.Errorf("ComposeBootArgs(%q, %q) =\n  %q\nwant\n  %q", tc.user, tc.ours, got, tc.want)
			}
		})
	}
}

func TestConsoleLines(t *testing.T) {
	for _, tc := range []struct {
		line   string
		ready  bool
		failed string // "" = not a failure
	}{
		{line: "nexus-guest: ready", ready: true},
		{line: "nexus-guest: ready\r\n", ready: true},
		{line: "\x00nexus-guest: ready\r", ready: true},
		{line: "  nexus-guest: ready  ", ready: true},
		{line: "/ # echo nexus-guest: ready"},
		{line: "nexus-guest: ready?"},
		{line: "nexus-guest: readyness"},
		{line: "nexus-guest: not ready"},
		{line: ""},
		{line: "nexus-guest: failed: ip=10.0.0.5::: bad netmask\r\n", failed: "ip=10.0.0.5::: bad netmask"},
		{line: "nexus-guest: failed: no root device /dev/vda", failed: "no root device /dev/vda"},
		{line: "[    2.637922] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r",
			failed: "kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)"},
		{line: "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
			failed: "kernel panic: Attempted to kill init! exitcode=0x00000100"},
		{line: "[    0.000000] Command line: console=ttyS0 panic=1"},
		{line: "nexus-guest: eth0 172.20.0.2/16 via 172.20.0.1"},
	} {
		if got := IsReady(tc.line); got != tc.ready {
			t.Errorf("IsReady(%q) = %v; want %v", tc.line, got, tc.ready)
		}
		reason, failed := Failure(tc.line)
		if failed != (tc.failed != "") || reason != tc.failed {
			t.Errorf("Failure(%q) = %q, %v; want %q, %v", tc.line, reason, failed, tc.failed, tc.failed != "")
		}
	}
}

// TestImportsOnlyStdlib: this package is shared by the manager, the
// agent and tools; it must never drag the API, the store or the manager
// (or any third-party module) along.
func TestImportsOnlyStdlib(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(fset, f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s: package guest may import only the standard library", f, p)
			}
		}
	}
}

func TestVMCommandLine(t *testing.T) {
	long := strings.Repeat("x", MaxCommandLine-10)
	for _, tc := range []struct {
		name    string
		vm      VM
		want    string
		wantErr string
	}{
		{name: "kernel only", vm: VM{}, want: DefaultBootArgs},
		{name: "images on the default bridge",
			vm:   VM{RootDevice: "/dev/vda", Addr: pfx("172.20.0.2/16"), Gateway: addr("172.20.0.1")},
			want: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off:172.20.0.1"},
		{name: "read-only root, no network",
			vm:   VM{RootDevice: "/dev/vda", RootReadOnly: true},
			want: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro"},
		{name: "the user's ip= and console win",
			vm:   VM{UserArgs: "console=ttyS1 ip=10.0.0.9::10.0.0.1:255.0.0.0::eth0:off quiet", RootDevice: "/dev/vda", Addr: pfx("172.20.0.2/16"), Gateway: addr("172.20.0.1")},
			want: "reboot=k panic=1 pci=off root=/dev/vda rw console=ttyS1 ip=10.0.0.9::10.0.0.1:255.0.0.0::eth0:off quiet"},
		{name: "bad address", vm: VM{Addr: pfx("172.20.0.0/16"), Gateway: addr("172.20.0.1")}, wantErr: "network address"},
		{name: "too long", vm: VM{UserArgs: long, RootDevice: "/dev/vda"}, wantErr: "the kernel takes 2047"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.vm.CommandLine()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("CommandLine() = %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("CommandLine() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
