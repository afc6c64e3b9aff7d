package network

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// testNS is a fresh, unnamed network namespace and a netlink handle bound
// to it. It vanishes when the last reference (our fd, sockets) closes, so
// even a crashed test leaves nothing on the host.
type testNS struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	testutil.RequireRoot(tb)

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New() // also moves this thread into it
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("new netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// Stay locked: Go discards the thread when this goroutine ends,
		// rather than reuse one stuck in the test namespace.
		ns.Close()
		tb.Fatalf("back to the original netns: %v", err)
	}
	runtime.UnlockOSThread()

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		tb.Fatalf("netlink handle in test netns: %v", err)
	}
	tb.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	lo, err := h.LinkByName("lo")
	if err != nil {
		tb.Fatalf("lo: %v", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		tb.Fatalf("lo up: %v", err)
	}
	return &testNS{ns: ns, h: h}
}

// do runs fn on a thread inside the namespace (for what is per thread:
// /dev/net/tun, /proc/sys/net). The thread is thrown away afterwards.
func (n *testNS) do(tb testing.TB, fn func() error) error {
	tb.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(n.ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// add creates a link in the namespace. It runs on a thread inside it
// because a tuntap is born in the namespace of the thread that opens
// /dev/net/tun, whatever namespace the netlink handle is bound to.
func (n *testNS) add(tb testing.TB, link netlink.Link) error {
	tb.Helper()
	return n.do(tb, func() error { return n.h.LinkAdd(link) })
}

// addUplink adds a veth "name" (peer name+"p"), both up, with addr on it
// and, if defaultRoute, the namespace's default route through it.
func (n *testNS) addUplink(tb testing.TB, name, addr string, defaultRoute bool) {
	tb.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := n.h.LinkAdd(veth); err != nil {
		tb.Fatalf("add veth %s: %v", name, err)
	}
	for _, l := range []string{name, name + "p"} {
		link, err := n.h.LinkByName(l)
		if err != nil {
			tb.Fatalf("veth %s: %v", l, err)
		}
		if err := n.h.LinkSetUp(link); err != nil {
			tb.Fatalf("veth %s up: %v", l, err)
		}
	}
	link, _ := n.h.LinkByName(name)
	p := netip.MustParsePrefix(addr)
	ipnet := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
	if err := n.h.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		tb.Fatalf("addr %s on %s: %v", addr, name, err)
	}
	if !defaultRoute {
		return
	}
	gw := p.Masked().Addr().Next()
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        gw.AsSlice(),
	}
	if err := n.h.RouteAdd(route); err != nil {
		tb.Fatalf("default route via %s dev %s: %v", gw, name, err)
	}
}

// testOwner is the instance id of the agent a test plays.
const testOwner = "testowner"

// nftTable is the NAT table of the default bridge.
const nftTable = nftTablePrefix + DefaultBridge

// newNet builds a Network in the test namespace. Its cleanup runs
// Teardown and then checks, by reading the kernel, that no TAP, bridge or
// nft table is left.
func newNet(tb testing.TB, tns *testNS, cfg Config) *Network {
	tb.Helper()
	cfg.NetNS = tns.ns
	if cfg.Owner == "" {
		cfg.Owner = testOwner
	}
	nw, err := New(cfg, testLogger(tb))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() {
		defer nw.Close()
		if _, err := nw.Teardown(context.Background(), true); err != nil {
			tb.Errorf("Teardown: %v", err)
		}
		tns.assertClean(tb, nw)
	})
	return nw
}

// assertClean checks that nothing of nw is left: no link with its mark,
// not its bridge (if it made it), not its nft table. Links a test made
// itself are the test's to remove.
func (n *testNS) assertClean(tb testing.TB, nw *Network) {
	tb.Helper()
	links, err := n.h.LinkList()
	if err != nil {
		tb.Errorf("list links: %v", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if m, ok := parseMark(a.Alias); ok && m.owner == nw.cfg.Owner {
			tb.Errorf("left behind: link %s (%s, %s)", a.Name, l.Type(), a.Alias)
		}
	}
	if slices.Contains(n.tableNames(tb), nw.nftTableName()) {
		tb.Errorf("left behind: nft table ip %s", nw.nftTableName())
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func testLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// readForwarding reads ip_forward as seen from inside the namespace.
func (n *testNS) readForwarding(tb testing.TB) string {
	tb.Helper()
	var v string
	if err := n.do(tb, func() error {
		b, err := os.ReadFile(ipForwardPath)
		v = strings.TrimSpace(string(b))
		return err
	}); err != nil {
		tb.Fatalf("read ip_forward in test netns: %v", err)
	}
	return v
}

func (n *testNS) nft(tb testing.TB) *nftables.Conn {
	tb.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		tb.Fatalf("nftables conn: %v", err)
	}
	return c
}

func (n *testNS) nexusTableCount(tb testing.TB) int {
	tb.Helper()
	tables, err := n.nft(tb).ListTablesOfFamily(nftables.TableFamilyUnspecified)
	if err != nil {
		tb.Fatalf("list nft tables: %v", err)
	}
	count := 0
	for _, t := range tables {
		if t.Name == nftTable {
			count++
		}
	}
	return count
}

// chainRules reads the rules of one chain of table ip nexus.
func (n *testNS) chainRules(tb testing.TB, chain string) []*nftables.Rule {
	tb.Helper()
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: nftTable}
	rules, err := n.nft(tb).GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if err != nil {
		tb.Fatalf("rules of chain %s: %v", chain, err)
	}
	return rules
}

// parsedRule is what a rule matches and does, decoded from its expressions
// independently of how the package builds them.
type parsedRule struct {
	Saddr        netip.Prefix
	IIF, OIF     string
	CtEstRel     bool
	Masquerade   bool
	Accept       bool
	Unrecognized []string
}

func parseRule(r *nftables.Rule) parsedRule {
	var p parsedRule
	ex := r.Exprs
	for i := 0; i < len(ex); i++ {
		switch e := ex[i].(type) {
		case *expr.Payload:
			// ip saddr: network header, offset 12, 4 bytes; then bitwise mask, cmp eq.
			if e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 12 && e.Len == 4 && i+2 < len(ex) {
				bw, ok1 := ex[i+1].(*expr.Bitwise)
				cmp, ok2 := ex[i+2].(*expr.Cmp)
				if ok1 && ok2 && cmp.Op == expr.CmpOpEq && len(cmp.Data) == 4 {
					ones, _ := net.IPMask(bw.Mask).Size()
					p.Saddr = netip.PrefixFrom(netip.AddrFrom4([4]byte(cmp.Data)), ones)
					i += 2
					continue
				}
			}
			p.Unrecognized = append(p.Unrecognized, "payload")
		case *expr.Meta:
			var cmp *expr.Cmp
			ok := i+1 < len(ex)
			if ok {
				cmp, ok = ex[i+1].(*expr.Cmp)
			}
			if !ok || cmp.Op != expr.CmpOpEq {
				p.Unrecognized = append(p.Unrecognized, "meta")
				continue
			}
			name := strings.TrimRight(string(cmp.Data), "\x00")
			switch e.Key {
			case expr.MetaKeyIIFNAME:
				p.IIF = name
			case expr.MetaKeyOIFNAME:
				p.OIF = name
			default:
				p.Unrecognized = append(p.Unrecognized, "meta key")
			}
			i++
		case *expr.Ct:
			if i+2 >= len(ex) {
				p.Unrecognized = append(p.Unrecognized, "ct")
				continue
			}
			bw, ok1 := ex[i+1].(*expr.Bitwise)
			cmp, ok2 := ex[i+2].(*expr.Cmp)
			want := binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED)
			if e.Key == expr.CtKeySTATE && ok1 && ok2 && string(bw.Mask) == string(want) &&
				cmp.Op == expr.CmpOpNeq && string(cmp.Data) == "\x00\x00\x00\x00" {
				p.CtEstRel = true
				i += 2
				continue
			}
			p.Unrecognized = append(p.Unrecognized, "ct")
		case *expr.Counter:
		case *expr.Masq:
			p.Masquerade = true
		case *expr.Verdict:
			if e.Kind == expr.VerdictAccept {
				p.Accept = true
			} else {
				p.Unrecognized = append(p.Unrecognized, "verdict")
			}
		default:
			p.Unrecognized = append(p.Unrecognized, "other")
		}
	}
	return p
}

// tapName is the TAP of a made-up VM id, named the way the agent names it.
func tapName(id string) string { return hostlayout.TapName(id) }

// openTapLikeFirecracker attaches to the TAP the way firecracker does:
// open /dev/net/tun, TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR.
func (n *testNS) openTapLikeFirecracker(tb testing.TB, name string) (int, error) {
	tb.Helper()
	fd := -1
	err := n.do(tb, func() error {
		f, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(f)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(f, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(f)
			return err
		}
		fd = f
		return nil
	})
	return fd, err
}

func (n *testNS) writeForwarding(tb testing.TB, v string) {
	tb.Helper()
	if err := n.do(tb, func() error { return os.WriteFile(ipForwardPath, []byte(v), 0o644) }); err != nil {
		tb.Fatalf("write ip_forward in test netns: %v", err)
	}
}
