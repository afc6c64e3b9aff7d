package store

import (
	"context"
	"database/sql"
)

const snapshotSelect = "SELECT id, vm_id, project, host_id, dir, state_path, mem_path, size, files, meta, created_at FROM snapshot"

func scanSnapshot(sc scanner) (Snapshot, error) {
	var sn Snapshot
	err := sc.Scan(&sn.ID, &sn.VMID, &sn.Project, &sn.HostID, &sn.Dir, &sn.StatePath, &sn.MemPath, &sn.Size,
		jsonCol{&sn.Files}, rawCol{&sn.Meta}, timeCol{&sn.CreatedAt})
	if sn.Files == nil {
		sn.Files = []SnapshotFile{}
	}
	return sn, err
}

func (s *sqlStore) CreateSnapshot(ctx context.Context, sn Snapshot) (Snapshot, error) {
	if sn.ID == "" {
		sn.ID = newID()
	}
	op := "create snapshot " + sn.ID + " of vm " + sn.VMID
	sn.CreatedAt = s.orNow(sn.CreatedAt)
	if sn.Files == nil {
		sn.Files = []SnapshotFile{}
	}
	files, err := jsonArg(sn.Files)
	if err != nil {
		return Snapshot{}, s.fail(op, err)
	}
	meta, err := rawArg("meta", sn.Meta, "{}")
	if err != nil {
		return Snapshot{}, s.fail(op, err)
	}
	if len(sn.Meta) == 0 {
		sn.Meta = []byte("{}")
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.withinQuota(ctx, tx, sn.Project, Usage{Snapshots: 1, SnapshotBytes: sn.Size}); err != nil {
			return err
		}
		_, err := s.txExec(ctx, tx, "INSERT INTO snapshot (id, vm_id, project, host_id, dir, state_path, mem_path, size, files, meta, created_at)"+
			" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			sn.ID, sn.VMID, sn.Project, sn.HostID, sn.Dir, sn.StatePath, sn.MemPath, sn.Size, files, meta, s.ts(sn.CreatedAt))
		return err
	})
	if err != nil {
		return Snapshot{}, s.fail(op, err)
	}
	return sn, nil
}

func (s *sqlStore) GetSnapshot(ctx context.Context, id string) (Snapshot, error) {
	sn, err := scanSnapshot(s.queryRow(ctx, snapshotSelect+" WHERE id = ?", id))
	if err != nil {
		return Snapshot{}, s.fail("get snapshot "+id, err)
	}
	return sn, nil
}

func (s *sqlStore) ListSnapshots(ctx context.Context, f SnapshotFilter) ([]Snapshot, error) {
	var conds []string
	var args []any
	if f.VMID != "" {
		conds, args = append(conds, "vm_id = ?"), append(args, f.VMID)
	}
	if f.Project != "" {
		conds, args = append(conds, "project = ?"), append(args, f.Project)
	}
	if f.HostID != "" {
		conds, args = append(conds, "host_id = ?"), append(args, f.HostID)
	}
	sns, err := queryAll(ctx, s, scanSnapshot, snapshotSelect+where(conds)+" ORDER BY created_at, id", args...)
	if err != nil {
		return nil, s.fail("list snapshots", err)
	}
	return sns, nil
}

func (s *sqlStore) DeleteSnapshot(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "DELETE FROM snapshot WHERE id = ?", id)); err != nil {
		return s.fail("delete snapshot "+id, err)
	}
	return nil
}
