package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

func (s *sqlStore) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	op := "acquire lease " + name + " for " + holder
	if ttl < time.Millisecond {
		return false, s.fail(op, invalidf("ttl %v is below 1ms", ttl))
	}
	if holder == "" {
		return false, s.fail(op, invalidf("holder is empty"))
	}
	q, args := s.d.acquireLease(name, holder, ttl, s.now())
	var got string
	err := s.writeRow(ctx, q, args...).Scan(&got)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil // held by someone else and not expired
	}
	if err != nil {
		return false, s.fail(op, err)
	}
	return got == holder, nil
}

func (s *sqlStore) ReleaseLease(ctx context.Context, name, holder string) error {
	if _, err := s.exec(ctx, "DELETE FROM lease WHERE name = ? AND holder = ?", name, holder); err != nil {
		return s.fail("release lease "+name+" for "+holder, err)
	}
	return nil
}

func (s *sqlStore) GetLease(ctx context.Context, name string) (Lease, error) {
	var l Lease
	err := s.queryRow(ctx, "SELECT name, holder, expires_at FROM lease WHERE name = ?", name).
		Scan(&l.Name, &l.Holder, timeCol{&l.ExpiresAt})
	if err != nil {
		return Lease{}, s.fail("get lease "+name, err)
	}
	return l, nil
}
