package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

const poolSelect = "SELECT id, name, project, template_id, snapshot_id, size, min_ready, on_empty, short_since, claims, created_at, template_version FROM pool"

func scanPool(sc scanner) (Pool, error) {
	var p Pool
	err := sc.Scan(&p.ID, &p.Name, &p.Project, &p.TemplateID, &p.SnapshotID, &p.Size, &p.MinReady, &p.OnEmpty,
		nullTimeCol{&p.ShortSince}, &p.Claims, timeCol{&p.CreatedAt}, &p.TemplateVersion)
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
		"INSERT INTO pool (id, name, project, template_id, snapshot_id, size, min_ready, on_empty, short_since, claims, created_at, template_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		p.ID, p.Name, p.Project, p.TemplateID, p.SnapshotID, p.Size, p.MinReady, p.OnEmpty, s.tsPtr(p.ShortSince), p.Claims, s.ts(p.CreatedAt), p.TemplateVersion)
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
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := mustAffect(s.txExec(ctx, tx, "DELETE FROM pool WHERE id = ?", id)); err != nil {
			return err
		}
		_, err := s.txExec(ctx, tx, "DELETE FROM pool_rollout WHERE pool_id = ?", id)
		return err
	})
	if err != nil {
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

func (s *sqlStore) SetPoolTemplateVersion(ctx context.Context, id string, version int) error {
	if err := mustAffect(s.exec(ctx, "UPDATE pool SET template_version = ? WHERE id = ?", version, id)); err != nil {
		return s.fail("set template version of pool "+id, err)
	}
	return nil
}

const rolloutSelect = "SELECT id, pool_id, from_version, to_version, canary, max_parallel, min_healthy_ms, progress_deadline_ms," +
	" auto_revert, auto_promote, ready_line, state, phase, message, actor, created_at, updated_at FROM pool_rollout"

func scanRollout(sc scanner) (Rollout, error) {
	var r Rollout
	var minMS, deadlineMS int64
	var auto, promote int
	err := sc.Scan(&r.ID, &r.PoolID, &r.FromVersion, &r.ToVersion, &r.Canary, &r.MaxParallel, &minMS, &deadlineMS,
		&auto, &promote, &r.ReadyLine, &r.State, &r.Phase, &r.Message, &r.Actor, timeCol{&r.CreatedAt}, timeCol{&r.UpdatedAt})
	r.MinHealthy, r.ProgressDeadline = time.Duration(minMS)*time.Millisecond, time.Duration(deadlineMS)*time.Millisecond
	r.AutoRevert, r.AutoPromote = auto != 0, promote != 0
	return r, err
}

func (s *sqlStore) CreateRollout(ctx context.Context, r Rollout) (Rollout, error) {
	if r.ID == "" {
		r.ID = newID()
	}
	r.CreatedAt = s.orNow(r.CreatedAt)
	r.UpdatedAt = r.CreatedAt
	_, err := s.exec(ctx, "INSERT INTO pool_rollout (id, pool_id, from_version, to_version, canary, max_parallel, min_healthy_ms,"+
		" progress_deadline_ms, auto_revert, auto_promote, ready_line, state, phase, message, actor, created_at, updated_at)"+
		" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		r.ID, r.PoolID, r.FromVersion, r.ToVersion, r.Canary, r.MaxParallel, r.MinHealthy.Milliseconds(), r.ProgressDeadline.Milliseconds(),
		boolInt(r.AutoRevert), boolInt(r.AutoPromote), r.ReadyLine, r.State, r.Phase, r.Message, r.Actor, s.ts(r.CreatedAt), s.ts(r.UpdatedAt))
	if err != nil {
		return Rollout{}, s.fail("create rollout of pool "+r.PoolID, err)
	}
	return r, nil
}

func (s *sqlStore) GetRollout(ctx context.Context, id string) (Rollout, error) {
	r, err := scanRollout(s.queryRow(ctx, rolloutSelect+" WHERE id = ?", id))
	if err != nil {
		return Rollout{}, s.fail("get rollout "+id, err)
	}
	return r, nil
}

func (s *sqlStore) LatestRollout(ctx context.Context, poolID string) (Rollout, error) {
	r, err := scanRollout(s.queryRow(ctx, rolloutSelect+" WHERE pool_id = ? ORDER BY created_at DESC, id DESC LIMIT 1", poolID))
	if err != nil {
		return Rollout{}, s.fail("latest rollout of pool "+poolID, err)
	}
	return r, nil
}

func (s *sqlStore) SetRolloutState(ctx context.Context, id string, from []string, state, phase, message string) (Rollout, error) {
	op := "set state of rollout " + id
	args := []any{state, phase, message, s.ts(s.now()), id}
	for _, f := range from {
		args = append(args, f)
	}
	res, err := s.exec(ctx, "UPDATE pool_rollout SET state = ?, phase = ?, message = ?, updated_at = ? WHERE id = ? AND state IN ("+
		placeholders(len(from))+")", args...)
	if err := mustAffect(res, err); err != nil {
		if _, gerr := s.GetRollout(ctx, id); gerr == nil && errors.Is(err, sql.ErrNoRows) {
			return Rollout{}, s.fail(op, fmt.Errorf("%w: the rollout is no longer in state %v", ErrConflict, from))
		}
		return Rollout{}, s.fail(op, err)
	}
	return s.GetRollout(ctx, id)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
