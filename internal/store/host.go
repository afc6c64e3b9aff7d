package store

import (
	"context"
	"time"
)

const hostColumns = "id, name, addr, state, capacity, allocated, vms, version, last_seen_at, created_at, vmm, subnet, gateway"

func scanHost(sc scanner) (Host, error) {
	var h Host
	err := sc.Scan(&h.ID, &h.Name, &h.Addr, &h.State, jsonCol{&h.Capacity}, jsonCol{&h.Allocated}, &h.VMs, &h.Version,
		timeCol{&h.LastSeenAt}, timeCol{&h.CreatedAt}, &h.VMM, &h.Subnet, &h.Gateway)
	return h, err
}

func (s *sqlStore) UpsertHost(ctx context.Context, r HostRegistration) (Host, error) {
	op := "register host " + r.Name
	if r.Name == "" {
		return Host{}, s.fail(op, invalidf("host name is empty"))
	}
	capacity, err := jsonArg(r.Capacity)
	if err != nil {
		return Host{}, s.fail(op, err)
	}
	none, err := jsonArg(Resources{})
	if err != nil {
		return Host{}, s.fail(op, err)
	}
	now := s.now()
	// One statement, so two agents registering the same name at once end up
	// with one row and one ID. Draining is an operator's decision and
	// survives re-registration.
	h, err := scanHost(s.writeRow(ctx,
		"INSERT INTO host ("+hostColumns+") VALUES (?, ?, ?, 'ready', ?, ?, 0, ?, ?, ?, ?, ?, ?)"+
			" ON CONFLICT (name) DO UPDATE SET addr = excluded.addr, capacity = excluded.capacity,"+
			" version = excluded.version, vmm = excluded.vmm, last_seen_at = excluded.last_seen_at,"+
			" subnet = excluded.subnet, gateway = excluded.gateway,"+
			" state = CASE WHEN host.state = 'draining' THEN host.state ELSE 'ready' END"+
			" RETURNING "+hostColumns,
		newID(), r.Name, r.Addr, capacity, none, r.Version, s.ts(now), s.ts(now), r.VMM, r.Subnet, r.Gateway))
	if err != nil {
		return Host{}, s.fail(op, err)
	}
	return h, nil
}

func (s *sqlStore) Heartbeat(ctx context.Context, id string, hb Heartbeat) error {
	op := "heartbeat of host " + id
	capacity, err := jsonArg(hb.Capacity)
	if err != nil {
		return s.fail(op, err)
	}
	allocated, err := jsonArg(hb.Allocated)
	if err != nil {
		return s.fail(op, err)
	}
	err = mustAffect(s.exec(ctx,
		"UPDATE host SET capacity = ?, allocated = ?, vms = ?, last_seen_at = ?,"+
			" state = CASE WHEN state = 'unreachable' THEN 'ready' ELSE state END WHERE id = ?",
		capacity, allocated, hb.VMs, s.ts(s.orNow(hb.At)), id))
	if err != nil {
		return s.fail(op, err)
	}
	return nil
}

func (s *sqlStore) GetHost(ctx context.Context, id string) (Host, error) {
	h, err := scanHost(s.queryRow(ctx, "SELECT "+hostColumns+" FROM host WHERE id = ?", id))
	if err != nil {
		return Host{}, s.fail("get host "+id, err)
	}
	return h, nil
}

func (s *sqlStore) ListHosts(ctx context.Context) ([]Host, error) {
	hs, err := queryAll(ctx, s, scanHost, "SELECT "+hostColumns+" FROM host ORDER BY name")
	if err != nil {
		return nil, s.fail("list hosts", err)
	}
	return hs, nil
}

func (s *sqlStore) SetHostState(ctx context.Context, id string, state HostState) error {
	// The CHECK constraint rejects unknown states (ErrInvalid).
	if err := mustAffect(s.exec(ctx, "UPDATE host SET state = ? WHERE id = ?", string(state), id)); err != nil {
		return s.fail("set state of host "+id+" to "+string(state), err)
	}
	return nil
}

func (s *sqlStore) MarkHostsUnreachable(ctx context.Context, seenBefore time.Time) ([]string, error) {
	rows, err := s.w.QueryContext(ctx, s.d.rebind(
		"UPDATE host SET state = 'unreachable' WHERE state = 'ready' AND last_seen_at < ? RETURNING id"),
		s.ts(seenBefore))
	if err != nil {
		return nil, s.fail("mark hosts unreachable", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, s.fail("mark hosts unreachable", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("mark hosts unreachable", err)
	}
	return ids, nil
}

func (s *sqlStore) DeleteHost(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "DELETE FROM host WHERE id = ?", id)); err != nil {
		return s.fail("delete host "+id, err)
	}
	return nil
}
