package store

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// addressAttempts bounds AssignAddress's retries: each lost race (another
// manager took the address, or wrote the VM) costs one; with one writer per
// host in each manager, a few managers racing on one host all land.
const addressAttempts = 20

func (s *sqlStore) AssignAddress(ctx context.Context, vmID string, subnet netip.Prefix, gateway netip.Addr) (VM, error) {
	op := "assign an address to vm " + vmID
	if err := validSubnet(subnet, gateway); err != nil {
		return VM{}, s.fail(op, err)
	}
	for attempt := 0; attempt < addressAttempts; attempt++ {
		if attempt > 0 {
			if err := sleepCtx(ctx, jitter(updateBackoff<<min(attempt-1, 6))); err != nil {
				return VM{}, fmt.Errorf("%s: %w", op, err)
			}
		}
		cur, err := scanVM(s.queryRow(ctx, vmSelect+" WHERE id = ?", vmID))
		if err != nil {
			return VM{}, s.fail(op, err)
		}
		if cur.HostID == "" {
			return VM{}, s.fail(op, invalidf("vm %s is not placed on a host", vmID))
		}
		have, _ := netip.ParseAddr(cur.IP)
		if have.IsValid() && cur.Subnet == subnet.String() && cur.Gateway == gateway.String() {
			return cur, nil
		}
		used, err := s.usedAddresses(ctx, cur.HostID, vmID)
		if err != nil {
			return VM{}, s.fail(op, err)
		}
		ip, ok := have, subnet.Contains(have) && usable(subnet, gateway, have) && !used[have]
		if !ok {
			if ip, ok = lowestFree(subnet, gateway, used); !ok {
				return VM{}, s.fail(op, fmt.Errorf("%w: every address of %s on host %s is taken", ErrExhausted, subnet, cur.HostID))
			}
		}
		res, err := s.exec(ctx, "UPDATE vm SET ip = ?, subnet = ?, gateway = ?, generation = generation + 1, updated_at = ?"+
			" WHERE id = ? AND generation = ?", ip.String(), subnet.String(), gateway.String(), s.ts(s.now()), vmID, cur.Generation)
		if err != nil {
			if errors.Is(s.translate(err), ErrConflict) {
				continue // another VM of the host took it first: look again
			}
			return VM{}, s.fail(op, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return VM{}, s.fail(op, err)
		} else if n == 1 {
			return s.GetVM(ctx, vmID)
		}
		// The VM was written in between: read it again.
	}
	return VM{}, fmt.Errorf("%s: %d attempts: %w", op, addressAttempts, ErrStale)
}

// usedAddresses returns the addresses the host's other VMs hold.
func (s *sqlStore) usedAddresses(ctx context.Context, hostID, except string) (map[netip.Addr]bool, error) {
	return joinedAddresses(s.queryRow(ctx, s.usedAddressesQuery()+" AND id <> ?", hostID, except))
}

// usedAddressesTx is usedAddresses inside a transaction, of every VM of
// the host.
func (s *sqlStore) usedAddressesTx(ctx context.Context, tx *sql.Tx, hostID string) (map[netip.Addr]bool, error) {
	return joinedAddresses(s.txQueryRow(ctx, tx, s.usedAddressesQuery(), hostID))
}

// usedAddressesQuery selects the addresses of a host's VMs (host_id = ?)
// as one comma-joined value.
func (s *sqlStore) usedAddressesQuery() string {
	return "SELECT " + s.d.joinText("ip") + " FROM vm WHERE host_id = ? AND ip <> ''"
}

// joinedAddresses reads the one value usedAddressesQuery selects: the
// engine joins the addresses, as a row each cost the manager four times as
// much per VM of the host, which every create on the host pays.
func joinedAddresses(row *sql.Row) (map[netip.Addr]bool, error) {
	var joined sql.NullString // NULL: no VM of the host has one
	if err := row.Scan(&joined); err != nil {
		return nil, err
	}
	return parseAddresses(joined.String), nil
}

// parseAddresses reads a comma-joined list of addresses; what does not
// parse is skipped, as no address.
func parseAddresses(joined string) map[netip.Addr]bool {
	used := make(map[netip.Addr]bool, strings.Count(joined, ",")+1)
	for joined != "" {
		var ip string
		ip, joined, _ = strings.Cut(joined, ",")
		if a, err := netip.ParseAddr(ip); err == nil {
			used[a] = true
		}
	}
	return used
}

// validSubnet: an IPv4 network (masked) of prefix length 1-30 — room for
// a gateway and at least one guest — with the gateway a host address in it.
func validSubnet(subnet netip.Prefix, gateway netip.Addr) error {
	switch {
	case !subnet.IsValid() || !subnet.Addr().Is4() || subnet.Bits() < 1 || subnet.Bits() > 30:
		return invalidf("subnet %s: want an IPv4 prefix of length 1-30", subnet)
	case subnet.Masked() != subnet:
		return invalidf("subnet %s: want the network address (%s)", subnet, subnet.Masked())
	case !gateway.Is4() || !subnet.Contains(gateway) || gateway == subnet.Addr() || gateway == lastAddr(subnet):
		return invalidf("gateway %s: want a host address of %s", gateway, subnet)
	}
	return nil
}

// usable: a in subnet can be a guest's: not the network, broadcast or
// gateway address.
func usable(subnet netip.Prefix, gateway, a netip.Addr) bool {
	return a != subnet.Addr() && a != lastAddr(subnet) && a != gateway
}

// lowestFree returns the lowest usable address of subnet not in used.
func lowestFree(subnet netip.Prefix, gateway netip.Addr, used map[netip.Addr]bool) (netip.Addr, bool) {
	last := lastAddr(subnet)
	for a := subnet.Addr().Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if a != gateway && !used[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// lastAddr is an IPv4 subnet's broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) | (uint32(1)<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}
