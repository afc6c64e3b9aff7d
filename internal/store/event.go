package store

import (
	"context"
)

const eventColumns = "id, vm_id, at, level, message"

func scanEvent(sc scanner) (VMEvent, error) {
	var e VMEvent
	err := sc.Scan(&e.ID, &e.VMID, timeCol{&e.At}, &e.Level, &e.Message)
	return e, err
}

func (s *sqlStore) AddEvent(ctx context.Context, e VMEvent) (VMEvent, error) {
	e.At = s.orNow(e.At)
	err := s.writeRow(ctx,
		"INSERT INTO vm_event (vm_id, at, level, message) VALUES (?, ?, ?, ?) RETURNING id",
		e.VMID, s.ts(e.At), e.Level, e.Message,
	).Scan(&e.ID)
	if err != nil {
		// A foreign-key violation (the VM is gone) comes back as ErrNotFound.
		return VMEvent{}, s.fail("add event to vm "+e.VMID, err)
	}
	return e, nil
}

func (s *sqlStore) ListEvents(ctx context.Context, vmID string, limit int) ([]VMEvent, error) {
	return s.ListEventsAfter(ctx, vmID, 0, limit)
}

func (s *sqlStore) ListEventsAfter(ctx context.Context, vmID string, afterID int64, limit int) ([]VMEvent, error) {
	q := "SELECT " + eventColumns + " FROM vm_event WHERE vm_id = ? AND id > ? ORDER BY id LIMIT ?"
	if afterID == 0 {
		// The newest `limit` events, returned oldest first.
		q = "SELECT " + eventColumns + " FROM (SELECT " + eventColumns +
			" FROM vm_event WHERE vm_id = ? AND id > ? ORDER BY id DESC LIMIT ?) recent ORDER BY id"
	}
	events, err := queryAll(ctx, s, scanEvent, q, vmID, afterID, clampLimit(limit))
	if err != nil {
		return nil, s.fail("list events of vm "+vmID, err)
	}
	return events, nil
}
