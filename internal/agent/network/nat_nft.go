package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// The nf_tables objects Nexus owns. An "ip" (IPv4) table of our own per
// bridge ("nexus-<bridge>") means we never edit another program's rules,
// nor another agent's on the same host, and can replace ours in one
// transaction.
const (
	nftTablePrefix = "nexus-"
	nftPostChain   = "postrouting" // type nat, hook postrouting, priority srcnat (100)
	nftFwdChain    = "forward"     // type filter, hook forward, priority filter (0), policy accept
)

// errNFTablesUnavailable: the kernel does not answer nf_tables requests.
var errNFTablesUnavailable = errors.New("nf_tables unavailable")

// natRules is what NAT must do, whatever the backend.
type natRules struct {
	subnet netip.Prefix // masked
	bridge string
	uplink string
}

// NFTablesAvailable reports whether the kernel answers nf_tables requests
// in the caller's network namespace. It checks the netlink subsystem only;
// NAT also needs masquerade support (nft_masq, nft_chain_nat), which
// EnsureBridge reports if missing.
func NFTablesAvailable() bool {
	c, err := nftables.New()
	if err != nil {
		return false
	}
	_, err = c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	return err == nil
}

func (n *Network) nftConn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if n.cfg.NetNS.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(n.cfg.NetNS)))
	}
	return nftables.New(opts...)
}

func (n *Network) probeNFTables() error {
	c, err := n.nftConn()
	if err != nil {
		return err
	}
	_, err = c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	return err
}

// nftTableName is this bridge's table.
func (n *Network) nftTableName() string { return nftTablePrefix + n.cfg.Bridge }

func (n *Network) nftObjects() (*nftables.Table, *nftables.Chain, *nftables.Chain) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: n.nftTableName()}
	accept := nftables.ChainPolicyAccept
	post := &nftables.Chain{
		Name: nftPostChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	}
	fwd := &nftables.Chain{
		Name: nftFwdChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	}
	return t, post, fwd
}

// nftRule is one rule with the comment that identifies it. The comment
// spells out subnet, bridge and uplink, so comparing comments tells whether
// the installed table matches the configuration.
type nftRule struct {
	chain   *nftables.Chain
	comment string
	exprs   []expr.Any
}

// nftRules builds, in nft syntax:
//
//	chain postrouting { ip saddr SUBNET oifname UPLINK counter masquerade }
//	chain forward {
//	  iifname BRIDGE oifname UPLINK counter accept
//	  iifname UPLINK oifname BRIDGE ct state established,related counter accept
//	}
//
// Our forward chain's policy is accept, so its rules count packets and state
// intent; they cannot overrule a drop in another table's forward chain
// (nf_tables runs every base chain on a hook), see docs/networking.md.
func (r natRules) nftRules(post, fwd *nftables.Chain) []nftRule {
	network := r.subnet.Addr().As4()
	mask := net.CIDRMask(r.subnet.Bits(), 32)
	return []nftRule{{
		chain:   post,
		comment: fmt.Sprintf("nexus: masquerade %s out %s", r.subnet, r.uplink),
		exprs: []expr.Any{
			// ip saddr & mask == network
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network[:]},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.uplink)},
			&expr.Counter{},
			&expr.Masq{},
		},
	}, {
		chain:   fwd,
		comment: fmt.Sprintf("nexus: forward %s to %s", r.bridge, r.uplink),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.bridge)},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.uplink)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
	}, {
		chain:   fwd,
		comment: fmt.Sprintf("nexus: forward %s to %s established,related", r.uplink, r.bridge),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.uplink)},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.bridge)},
			// ct state & (established|related) != 0; ct state is host-endian.
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
				Xor:  make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
	}}
}

// installNFTables makes our table hold exactly the wanted rules. When
// it already does, nothing is written; otherwise the table is deleted and
// rebuilt in one batch, which the kernel applies atomically: there is no
// moment with half a rule set, and re-running never duplicates rules.
func (n *Network) installNFTables(r natRules) error {
	c, err := n.nftConn()
	if err != nil {
		return err
	}
	t, post, fwd := n.nftObjects()
	want := r.nftRules(post, fwd)
	if n.nftCurrent(c, want) {
		return nil
	}
	c.AddTable(t) // create-if-missing, so the delete below cannot fail on ENOENT
	c.DelTable(t)
	c.AddTable(t)
	c.AddChain(post)
	c.AddChain(fwd)
	for _, w := range want {
		c.AddRule(&nftables.Rule{
			Table:    t,
			Chain:    w.chain,
			Exprs:    w.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, w.comment),
		})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace table ip %s: %w", t.Name, err)
	}
	n.log.Info("installed NAT", "backend", NATNFTables, "table", "ip "+t.Name,
		"subnet", r.subnet.String(), "bridge", r.bridge, "uplink", r.uplink)
	return nil
}

// nftCurrent reports whether our table has exactly our two base chains
// and, in order, rules with the wanted comments. Any read error means "no":
// the caller then rebuilds the table, which is always correct.
func (n *Network) nftCurrent(c *nftables.Conn, want []nftRule) bool {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false
	}
	t, post, fwd := n.nftObjects()
	var found []string
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != t.Name {
			continue
		}
		var w *nftables.Chain
		switch ch.Name {
		case post.Name:
			w = post
		case fwd.Name:
			w = fwd
		default:
			return false
		}
		if ch.Type != w.Type || ch.Hooknum == nil || *ch.Hooknum != *w.Hooknum ||
			ch.Priority == nil || *ch.Priority != *w.Priority {
			return false
		}
		found = append(found, ch.Name)
	}
	if len(found) != 2 {
		return false
	}
	for _, ch := range []*nftables.Chain{post, fwd} {
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return false
		}
		var got, exp []string
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			got = append(got, s)
		}
		for _, w := range want {
			if w.chain.Name == ch.Name {
				exp = append(exp, w.comment)
			}
		}
		if !slices.Equal(got, exp) {
			return false
		}
	}
	return true
}

// removeNFTables deletes this bridge's table if it exists.
func (n *Network) removeNFTables() (bool, error) {
	return n.deleteNFTable(n.nftTableName(), nil)
}

// deleteNFTable deletes the ip table name if it exists and, when keep is
// not nil, keep(c, table) says it may go.
func (n *Network) deleteNFTable(name string, mayDelete func(*nftables.Conn, *nftables.Table) bool) (bool, error) {
	c, err := n.nftConn()
	if err != nil {
		return false, fmt.Errorf("%w: %v", errNFTablesUnavailable, err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("%w: %v", errNFTablesUnavailable, err)
	}
	i := slices.IndexFunc(tables, func(t *nftables.Table) bool { return t.Name == name })
	if i < 0 || (mayDelete != nil && !mayDelete(c, tables[i])) {
		return false, nil
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
	// Add then delete: no ENOENT if someone removed it since we listed.
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return false, err
	}
	n.log.Info("removed NAT table", "table", "ip "+name)
	return true, nil
}

// legacyNFTTable is the one table Nexus versions before ownership marks
// shared between every agent on a host.
const legacyNFTTable = "nexus"

// removeLegacyNFTables deletes the legacy table only when it is this
// bridge's: every rule's comment, which spells out the bridge it serves
// ("nexus: forward <bridge> to <uplink>", …), names our bridge or is the
// masquerade rule of a table whose forward rules do.
func (n *Network) removeLegacyNFTables() (bool, error) {
	return n.deleteNFTable(legacyNFTTable, func(c *nftables.Conn, t *nftables.Table) bool {
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return false
		}
		ours := false
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != t.Name {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return false
			}
			for _, r := range rules {
				s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				switch {
				case strings.HasPrefix(s, "nexus: masquerade "):
				case strings.HasPrefix(s, "nexus: forward "+n.cfg.Bridge+" to "),
					strings.HasPrefix(s, "nexus: forward ") && strings.HasSuffix(s, " to "+n.cfg.Bridge+" established,related"):
					ours = true
				default:
					return false // a rule of another bridge or another program
				}
			}
		}
		return ours
	})
}

// ifname is an interface name as nf_tables compares it for an exact match:
// NUL-padded to IFNAMSIZ.
func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}
