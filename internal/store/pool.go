package store

import (
	"context"
	"time"
)

const poolSelect = "SELECT id, name, project, template_id, snapshot_id, size, min_ready, on_empty, short_since, claims, created_at FROM pool"

func scanPool(sc scanner) (Pool, error) {
	var p Pool
	err := sc.Scan(&p.ID, &p.Name, &p.Project, &p.TemplateID, &p.SnapshotID, &p.Size, &p.MinReady, &p.OnEmpty,
		nullTimeCol{&p.ShortSince}, &p.Claims, timeCol{&p.CreatedAt})
	return p, err
}

func (s *sqlStore) CreatePool(ctx context.Context, p Pool) (Pool, error) {
	op := "create pool " + qualified(p.Project, p.Name)
	if p.ID == "" {
		p.ID = newID()
	}
	p.CreatedAt = s.orNow(p.CreatedAt)
	p.ShortSince = normTimePtr(p.ShortSince)
	_, err := s.exec(ctx,
		"INSERT INTO pool (id, name, project, template_id, snapshot_id, size, min_ready, on_empty, short_since, claims, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		p.ID, p.Name, p.Project, p.TemplateID, p.SnapshotID, p.Size, p.MinReady, p.OnEmpty, s.tsPtr(p.ShortSince), p.Claims, s.ts(p.CreatedAt))
	if err != nil {
		return Pool{}, s.fail(op, err)
	}
	return p, nil
}

func (s *sqlStore) GetPool(ctx context.Context, id string) (Pool, error) {
	p, err := scanPool(s.queryRow(ctx, poolSelect+" WHERE id = ?", id))
	if err != nil {
		return Pool{}, s.fail("get pool "+id, err)
	}
	return p, nil
}

func (s *sqlStore) GetPoolByName(ctx context.Context, project, name string) (Pool, error) {
	p, err := scanPool(s.queryRow(ctx, poolSelect+" WHERE project = ? AND name = ?", project, name))
	if err != nil {
		return Pool{}, s.fail("get pool "+qualified(project, name), err)
	}
	return p, nil
}

func (s *sqlStore) ListPools(ctx context.Context, project string) ([]Pool, error) {
	var conds []string
	var args []any
	if project != "" {
		conds, args = append(conds, "project = ?"), append(args, project)
	}
	ps, err := queryAll(ctx, s, scanPool, poolSelect+where(conds)+" ORDER BY created_at, id", args...)
	if err != nil {
		return nil, s.fail("list pools", err)
	}
	return ps, nil
}

func (s *sqlStore) DeletePool(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "DELETE FROM pool WHERE id = ?", id)); err != nil {
		return s.fail("delete pool "+id, err)
	}
	return nil
}

func (s *sqlStore) SetPoolShort(ctx context.Context, id string, since *time.Time) error {
	q := "UPDATE pool SET short_since = ? WHERE id = ?"
	args := []any{nil, id}
	if since != nil {
		// The first time it fell short counts while it stays short.
		q = "UPDATE pool SET short_since = COALESCE(short_since, ?) WHERE id = ?"
		args[0] = s.ts(*since)
	}
	if err := mustAffect(s.exec(ctx, q, args...)); err != nil {
		return s.fail("set pool "+id+" short", err)
	}
	return nil
}

func (s *sqlStore) CountPoolClaim(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "UPDATE pool SET claims = claims + 1 WHERE id = ?", id)); err != nil {
		return s.fail("count claim of pool "+id, err)
	}
	return nil
}
