package store

import "context"

// StatsStore answers the questions behind the manager's fleet gauges. The
// database groups and counts, so a Prometheus scrape costs two small
// queries whatever the number of VMs, and never pages through rows.
type StatsStore interface {
	// VMCounts counts VMs by observed state, project and host (HostID ""
	// for VMs not placed); combinations without VMs are absent.
	VMCounts(ctx context.Context) ([]VMCount, error)
	// SnapshotCounts counts snapshots and their bytes by project.
	SnapshotCounts(ctx context.Context) ([]SnapshotCount, error)
}

// VMCount is one group of VMCounts.
type VMCount struct {
	State   VMState
	Project string
	HostID  string
	VMs     int
}

// SnapshotCount is one group of SnapshotCounts.
type SnapshotCount struct {
	Project   string
	Snapshots int
	Bytes     int64
}

func (s *sqlStore) VMCounts(ctx context.Context) ([]VMCount, error) {
	out, err := queryAll(ctx, s, func(sc scanner) (VMCount, error) {
		var c VMCount
		var state string
		err := sc.Scan(&state, &c.Project, &c.HostID, &c.VMs)
		c.State = VMState(state)
		return c, err
	}, "SELECT state, project, host_id, COUNT(*) FROM vm GROUP BY state, project, host_id ORDER BY state, project, host_id")
	if err != nil {
		return nil, s.fail("count vms", err)
	}
	return out, nil
}

func (s *sqlStore) SnapshotCounts(ctx context.Context) ([]SnapshotCount, error) {
	out, err := queryAll(ctx, s, func(sc scanner) (SnapshotCount, error) {
		var c SnapshotCount
		err := sc.Scan(&c.Project, &c.Snapshots, &c.Bytes)
		return c, err
	}, "SELECT project, COUNT(*), COALESCE(SUM(size), 0) FROM snapshot GROUP BY project ORDER BY project")
	if err != nil {
		return nil, s.fail("count snapshots", err)
	}
	return out, nil
}
