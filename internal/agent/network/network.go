// Package network is the agent's host networking: the VM bridge and its
// gateway address, IPv4 forwarding, source NAT out of the uplink, and one
// persistent TAP per VM, attached to the bridge, that firecracker opens.
//
// Everything goes through netlink (github.com/vishvananda/netlink) and
// nf_tables through netlink (github.com/google/nftables); it never runs `ip`
// or `nft`. The only program it may run is iptables, and only as the NAT
// fallback for kernels without nf_tables.
//
// What it may touch on a host: the bridge (Config.Bridge), TAPs that carry
// its ownership mark (owner.go), net.ipv4.ip_forward, and its own nf_tables
// table "ip nexus-<bridge>" (or, with the iptables fallback, rules carrying
// the comment "nexus:<bridge>"). It refuses to modify or delete any other
// link, even one whose name collides with a TAP it was asked for, and it
// deletes a bridge only if it created it. docs/networking.md is the
// operator's view of the same.
//
// A Network works in one network namespace (Config.NetNS, by default the
// agent's own), so tests run it in a throwaway namespace.
package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vishvananda/netns"

	"github.com/nexus-microvm/nexus/internal/keyed"
	"github.com/nexus-microvm/nexus/internal/netnsutil"
)

// Defaults for the fields of Config left zero.
const (
	DefaultBridge   = "fcbr0"
	DefaultIptables = "iptables"
	// UplinkNone as Config.Uplink (FC_UPLINK=none) installs no NAT.
	UplinkNone = "none"
)

// DefaultGateway is the bridge's host-side address when the bridge has none:
// the first address of 172.20.0.0/16.
var DefaultGateway = netip.MustParsePrefix("172.20.0.1/16")

// NATBackend names how source NAT for the VM subnet is installed.
type NATBackend string

// NAT backends. NATAuto picks nftables when the kernel has nf_tables, else
// the iptables binary when it is on PATH, else fails with ErrNoNATBackend.
const (
	NATAuto     NATBackend = ""
	NATNFTables NATBackend = "nftables"
	NATIptables NATBackend = "iptables"
	NATNone     NATBackend = "none"
)

// Errors callers can test with errors.Is.
var (
	// ErrLinkConflict: a link with the requested name exists but is not what
	// we would create (not a TAP, a multi-queue TAP, a bridge name taken by
	// a veth…). It is left untouched; an operator must remove or rename it.
	ErrLinkConflict = errors.New("link exists and is not the expected kind")
	// ErrInvalidName: a TAP name without hostlayout.TapPrefix or too long.
	ErrInvalidName = errors.New("invalid tap name")
	// ErrNoBridge: EnsureTap was called before EnsureBridge.
	ErrNoBridge = errors.New("bridge does not exist")
	// ErrNoUplink: FC_UPLINK is auto but there is no IPv4 default route.
	ErrNoUplink = errors.New("no IPv4 default route to take the uplink from")
	// ErrSubnetInUse: the VM subnet overlaps an address of another
	// interface; the bridge gets no address until it is changed.
	ErrSubnetInUse = errors.New("subnet in use")
	// ErrNoNATBackend: NAT is wanted but neither nf_tables nor iptables works.
	ErrNoNATBackend = errors.New("no NAT backend")
	// ErrNoTap: the TAP does not exist.
	ErrNoTap = errors.New("no such tap")
)

// Config is the host networking configuration; zero fields take defaults.
type Config struct {
	// Owner is the agent's instance id, written into the mark of every
	// link it creates; only links with this mark are ever changed or
	// deleted. Required.
	Owner string
	// Bridge is the bridge every TAP joins (FC_BRIDGE), default "fcbr0".
	Bridge string
	// Gateway is the host's address on the bridge, with the VM subnet's
	// prefix length, default 172.20.0.1/16. If the bridge already carries an
	// IPv4 address (an operator pre-created it), that address wins and this
	// one is not added.
	Gateway netip.Prefix
	// Uplink is the interface VM traffic leaves through (FC_UPLINK): ""
	// means the interface of the IPv4 default route, looked up on every
	// EnsureBridge; "none" means no NAT at all.
	Uplink string
	// NAT chooses the NAT backend; NATAuto (zero) detects it in New.
	NAT NATBackend
	// IptablesPath is the iptables binary for the fallback, default
	// "iptables" looked up on PATH.
	IptablesPath string
	// NetNS is the network namespace to work in; zero or netns.None() means
	// the agent's own. The handle must stay open while the Network is used.
	NetNS netns.NsHandle
}

// Network manages the bridge, NAT and TAPs of one host (one namespace). It is
// safe for concurrent use. Close it when done.
type Network struct {
	cfg     Config
	log     *slog.Logger
	h       *netlink.Handle
	backend NATBackend

	bridgeMu sync.Mutex  // serialises EnsureBridge, RemoveNAT and Teardown
	taps     keyed.Mutex // serialises work on one TAP name
	dels     linkDeletes // link deletions, together when they queue
	delGroup uint32      // the link group deletions use (deleteGroup)

	// rt is a route netlink socket in the namespace for requests the
	// handle has no call for (addTap's one RTM_SETLINK).
	rt *nl.SocketHandle
	// bridgeIndex is the bridge's ifindex as EnsureBridge (every minute,
	// keepBridge) or a TAP's create last found it (0: look it up). A
	// bridge made again has another index: the attach fails, and the
	// TAP's create looks the bridge up again.
	bridgeIndex atomic.Int32
}

// New validates cfg, opens a netlink handle in its namespace and picks the
// NAT backend. logger may be nil (logs are dropped).
func New(cfg Config, logger *slog.Logger) (*Network, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if !cfg.Gateway.IsValid() {
		cfg.Gateway = DefaultGateway
	}
	if cfg.IptablesPath == "" {
		cfg.IptablesPath = DefaultIptables
	}
	if cfg.NetNS == 0 {
		cfg.NetNS = netns.None()
	}
	if err := validOwner(cfg.Owner); err != nil {
		return nil, fmt.Errorf("network config: owner %q: %w", cfg.Owner, err)
	}
	if err := validLinkName(cfg.Bridge); err != nil {
		return nil, fmt.Errorf("network config: bridge %q: %w", cfg.Bridge, err)
	}
	if !cfg.Gateway.Addr().Is4() || cfg.Gateway.Bits() < 1 || cfg.Gateway.Bits() > 30 {
		return nil, fmt.Errorf("network config: gateway %s: want an IPv4 address with a prefix length of 1-30", cfg.Gateway)
	}
	if cfg.Gateway.Addr() == cfg.Gateway.Masked().Addr() {
		return nil, fmt.Errorf("network config: gateway %s: is the subnet's network address; use a host address such as %s/%d",
			cfg.Gateway, cfg.Gateway.Masked().Addr().Next(), cfg.Gateway.Bits())
	}
	if cfg.Uplink != "" && cfg.Uplink != UplinkNone {
		if err := validLinkName(cfg.Uplink); err != nil {
			return nil, fmt.Errorf("network config: uplink %q: %w", cfg.Uplink, err)
		}
		if cfg.Uplink == cfg.Bridge {
			return nil, fmt.Errorf("network config: uplink %q is the bridge itself", cfg.Uplink)
		}
	}
	switch cfg.NAT {
	case NATAuto, NATNFTables, NATIptables, NATNone:
	default:
		return nil, fmt.Errorf("network config: NAT backend %q: want nftables, iptables or none", cfg.NAT)
	}

	var (
		h   *netlink.Handle
		err error
	)
	if cfg.NetNS.IsOpen() {
		h, err = netlink.NewHandleAt(cfg.NetNS)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("network: open netlink handle: %w", err)
	}
	rt, err := nl.GetNetlinkSocketAt(cfg.NetNS, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("network: open netlink socket: %w", err)
	}
	n := &Network{cfg: cfg, log: logger, h: h, rt: &nl.SocketHandle{Socket: rt}, delGroup: deleteGroup(cfg.Owner)}
	if n.backend, err = n.pickBackend(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// pickBackend resolves Config.NAT and Config.Uplink into the backend in use.
func (n *Network) pickBackend() (NATBackend, error) {
	if n.cfg.Uplink == UplinkNone || n.cfg.NAT == NATNone {
		return NATNone, nil
	}
	nftErr := n.probeNFTables()
	switch n.cfg.NAT {
	case NATNFTables:
		if nftErr != nil {
			return "", fmt.Errorf("network: NAT backend nftables: %w: nf_tables is not usable: %v", ErrNoNATBackend, nftErr)
		}
		return NATNFTables, nil
	case NATIptables:
		if _, err := exec.LookPath(n.cfg.IptablesPath); err != nil {
			return "", fmt.Errorf("network: NAT backend iptables: %w: %v", ErrNoNATBackend, err)
		}
		return NATIptables, nil
	}
	if nftErr == nil {
		return NATNFTables, nil
	}
	if _, err := exec.LookPath(n.cfg.IptablesPath); err == nil {
		n.log.Warn("nf_tables is not usable; falling back to iptables for NAT", "error", nftErr, "iptables", n.cfg.IptablesPath)
		return NATIptables, nil
	}
	return "", fmt.Errorf("network: %w: nf_tables is not usable in this kernel (%v) and %q is not on PATH; "+
		"enable nf_tables (CONFIG_NF_TABLES, nft_masq, nft_chain_nat), install iptables, or set FC_UPLINK=none to run without NAT",
		ErrNoNATBackend, nftErr, n.cfg.IptablesPath)
}

// Backend is the NAT backend in use: nftables, iptables or none.
func (n *Network) Backend() NATBackend { return n.backend }

// BridgeName is the configured bridge.
func (n *Network) BridgeName() string { return n.cfg.Bridge }

// Close releases the netlink handle. It changes nothing on the host.
func (n *Network) Close() error {
	n.h.Close()
	n.rt.Close()
	return nil
}

// inNS runs fn on an OS thread inside the configured namespace. Only what
// acts on the calling thread's namespace needs it (opening /dev/net/tun,
// /proc/sys/net); netlink sockets are bound to the namespace already.
func (n *Network) inNS(fn func() error) error {
	if !n.cfg.NetNS.IsOpen() {
		return fn()
	}
	return runInNS(n.cfg.NetNS, fn)
}

// runInNS runs fn on a thread inside ns (netnsutil.Do).
func runInNS(ns netns.NsHandle, fn func() error) error { return netnsutil.Do(ns, fn) }

// validLinkName: Linux accepts 1-15 bytes without '/', ':', whitespace, and
// not "." or "..".
func validLinkName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return errors.New("want 1-15 bytes")
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("invalid character %q", r)
		}
	}
	return nil
}

// ctxErr is ctx.Err() wrapped with the step it interrupted. netlink calls
// cannot be cancelled, so we check between steps.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cancelled: %w", err)
	}
	return nil
}
