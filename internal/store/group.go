package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Group rollouts (migration 00011): a group of VMs made from one template
// moves to another version of it in place.

const groupRolloutSelect = "SELECT id, project, template_id, group_name, to_version, canary, max_parallel, min_healthy_ms," +
	" progress_deadline_ms, auto_revert, auto_promote, state, phase, message, actor, created_at, updated_at FROM group_rollout"

func scanGroupRollout(sc scanner) (GroupRollout, error) {
	var r GroupRollout
	var minMS, deadlineMS int64
	var auto, promote int
	err := sc.Scan(&r.ID, &r.Project, &r.TemplateID, &r.Group, &r.ToVersion, &r.Canary, &r.MaxParallel, &minMS, &deadlineMS,
		&auto, &promote, &r.State, &r.Phase, &r.Message, &r.Actor, timeCol{&r.CreatedAt}, timeCol{&r.UpdatedAt})
	r.MinHealthy, r.ProgressDeadline = time.Duration(minMS)*time.Millisecond, time.Duration(deadlineMS)*time.Millisecond
	r.AutoRevert, r.AutoPromote = auto != 0, promote != 0
	return r, err
}

const groupVMSelect = "SELECT rollout_id, vm_id, position, from_version, restart, old_config, state, message, updated_at FROM group_rollout_vm"

func scanGroupRolloutVM(sc scanner) (GroupRolloutVM, error) {
	var v GroupRolloutVM
	var cfg string
	var restart int
	err := sc.Scan(&v.RolloutID, &v.VMID, &v.Position, &v.FromVersion, &restart, &cfg, &v.State, &v.Message, timeCol{&v.UpdatedAt})
	v.OldConfig, v.Restart = []byte(cfg), restart != 0
	return v, err
}

func (s *sqlStore) CreateGroupRollout(ctx context.Context, r GroupRollout, vms []GroupRolloutVM) (GroupRollout, error) {
	op := "create rollout of group " + r.Group
	if r.ID == "" {
		r.ID = newID()
	}
	r.CreatedAt = s.orNow(r.CreatedAt)
	r.UpdatedAt = r.CreatedAt
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.d.rebind("INSERT INTO group_rollout (id, project, template_id, group_name, to_version, canary,"+
			" max_parallel, min_healthy_ms, progress_deadline_ms, auto_revert, auto_promote, state, phase, message, actor, created_at, updated_at)"+
			" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
			r.ID, r.Project, r.TemplateID, r.Group, r.ToVersion, r.Canary, r.MaxParallel, r.MinHealthy.Milliseconds(),
			r.ProgressDeadline.Milliseconds(), boolInt(r.AutoRevert), boolInt(r.AutoPromote), r.State, r.Phase, r.Message, r.Actor, s.ts(r.CreatedAt), s.ts(r.UpdatedAt)); err != nil {
			return err
		}
		for _, v := range vms {
			restart := 0
			if v.Restart {
				restart = 1
			}
			if _, err := tx.ExecContext(ctx, s.d.rebind("INSERT INTO group_rollout_vm (rollout_id, vm_id, position, from_version,"+
				" restart, old_config, state, message, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
				r.ID, v.VMID, v.Position, v.FromVersion, restart, string(v.OldConfig), v.State, v.Message, s.ts(r.CreatedAt)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return GroupRollout{}, s.fail(op, err)
	}
	return r, nil
}

func (s *sqlStore) GetGroupRollout(ctx context.Context, id string) (GroupRollout, error) {
	r, err := scanGroupRollout(s.queryRow(ctx, groupRolloutSelect+" WHERE id = ?", id))
	if err != nil {
		return GroupRollout{}, s.fail("get group rollout "+id, err)
	}
	return r, nil
}

func (s *sqlStore) LatestGroupRollout(ctx context.Context, templateID, group string) (GroupRollout, error) {
	r, err := scanGroupRollout(s.queryRow(ctx, groupRolloutSelect+" WHERE template_id = ? AND group_name = ? ORDER BY created_at DESC, id DESC LIMIT 1",
		templateID, group))
	if err != nil {
		return GroupRollout{}, s.fail("latest rollout of group "+group, err)
	}
	return r, nil
}

func (s *sqlStore) ListActiveGroupRollouts(ctx context.Context) ([]GroupRollout, error) {
	rs, err := queryAll(ctx, s, scanGroupRollout, groupRolloutSelect+" WHERE state IN ('running', 'awaiting_promotion', 'reverting') ORDER BY created_at, id LIMIT ?",
		MaxLimit)
	if err != nil {
		return nil, s.fail("list active group rollouts", err)
	}
	return rs, nil
}

func (s *sqlStore) SetGroupRolloutState(ctx context.Context, id string, from []string, state, phase, message string) (GroupRollout, error) {
	op := "set state of group rollout " + id
	args := []any{state, phase, message, s.ts(s.now()), id}
	for _, f := range from {
		args = append(args, f)
	}
	res, err := s.exec(ctx, "UPDATE group_rollout SET state = ?, phase = ?, message = ?, updated_at = ? WHERE id = ? AND state IN ("+
		placeholders(len(from))+")", args...)
	if err := mustAffect(res, err); err != nil {
		if _, gerr := s.GetGroupRollout(ctx, id); gerr == nil && errors.Is(err, sql.ErrNoRows) {
			return GroupRollout{}, s.fail(op, fmt.Errorf("%w: the rollout is no longer in state %v", ErrConflict, from))
		}
		return GroupRollout{}, s.fail(op, err)
	}
	return s.GetGroupRollout(ctx, id)
}

func (s *sqlStore) ListGroupRolloutVMs(ctx context.Context, rolloutID string) ([]GroupRolloutVM, error) {
	vs, err := queryAll(ctx, s, scanGroupRolloutVM, groupVMSelect+" WHERE rollout_id = ? ORDER BY position", rolloutID)
	if err != nil {
		return nil, s.fail("list VMs of group rollout "+rolloutID, err)
	}
	return vs, nil
}

func (s *sqlStore) SetGroupRolloutVM(ctx context.Context, rolloutID, vmID, state, message string) error {
	err := mustAffect(s.exec(ctx, "UPDATE group_rollout_vm SET state = ?, message = ?, updated_at = ? WHERE rollout_id = ? AND vm_id = ?",
		state, message, s.ts(s.now()), rolloutID, vmID))
	if err != nil {
		return s.fail("set state of VM "+vmID+" in group rollout "+rolloutID, err)
	}
	return nil
}
