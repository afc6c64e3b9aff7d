package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrQuota: a create would take a project past its quota. The error is a
// *QuotaError, which says which limit and by how much.
var ErrQuota = errors.New("quota exceeded")

// QuotaLimits are a project's limits; nil is no limit.
type QuotaLimits struct {
	VMs, VCPUs, MemMiB, Snapshots, SnapshotBytes, Images, Templates, Streams *int64
}

// Quota is a project's quota. A project without one has the store's
// default quota (WithDefaultQuota; none unless set).
type Quota struct {
	Project   string
	Limits    QuotaLimits
	UpdatedAt time.Time // zero: never set
	// Default: the limits are the default quota, not the project's own.
	Default bool
}

// Usage is what a project holds: every VM whatever its state, snapshots
// and their bytes, images and templates.
type Usage struct {
	VMs, VCPUs, MemMiB, Snapshots, SnapshotBytes, Images, Templates int64
}

// QuotaError says which limit a create would pass.
type QuotaError struct {
	Project  string
	Resource string // vms, vcpus, mem_mib, snapshots, snapshot_bytes, images, templates
	Limit    int64
	Used     int64
	Want     int64 // what the create adds
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("project %s: %s would be %d, over its quota of %d (%d in use)", e.Project, e.Resource, e.Used+e.Want, e.Limit, e.Used)
}

// Is makes errors.Is(err, ErrQuota) hold.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }

const quotaColumns = "max_vms, max_vcpus, max_mem_mib, max_snapshots, max_snapshot_bytes, max_images, max_templates, max_streams"

func (l *QuotaLimits) fields() []**int64 {
	return []**int64{&l.VMs, &l.VCPUs, &l.MemMiB, &l.Snapshots, &l.SnapshotBytes, &l.Images, &l.Templates, &l.Streams}
}

func (l QuotaLimits) args() []any {
	var out []any
	for _, f := range l.fields() {
		if *f == nil {
			out = append(out, nil)
		} else {
			out = append(out, **f)
		}
	}
	return out
}

// scanLimits reads the quota columns (in quotaColumns' order) and then
// rest.
func scanLimits(sc scanner, l *QuotaLimits, rest ...any) error {
	ns := make([]sql.NullInt64, 8)
	dst := make([]any, 0, 8+len(rest))
	for i := range ns {
		dst = append(dst, &ns[i])
	}
	if err := sc.Scan(append(dst, rest...)...); err != nil {
		return err
	}
	for i, f := range l.fields() {
		*f = nil
		if ns[i].Valid {
			v := ns[i].Int64
			*f = &v
		}
	}
	return nil
}

func (s *sqlStore) GetQuota(ctx context.Context, project string) (Quota, error) {
	q := Quota{Project: project}
	err := scanLimits(s.queryRow(ctx, "SELECT "+quotaColumns+", uses_default, updated_at FROM project_quota WHERE project = ?", project),
		&q.Limits, &q.Default, timeCol{&q.UpdatedAt})
	if errors.Is(err, sql.ErrNoRows) {
		return Quota{Project: project, Limits: s.defaultQuota, Default: true}, nil
	}
	if err != nil {
		return Quota{}, s.fail("get quota of project "+project, err)
	}
	if q.Default {
		return Quota{Project: project, Limits: s.defaultQuota, Default: true}, nil
	}
	return q, nil
}

func (s *sqlStore) PutQuota(ctx context.Context, q Quota) (Quota, error) {
	op := "put quota of project " + q.Project
	if q.Project == "" {
		return Quota{}, s.fail(op, invalidf("a quota needs a project"))
	}
	for _, f := range q.Limits.fields() {
		if *f != nil && **f < 0 {
			return Quota{}, s.fail(op, invalidf("limits must not be negative"))
		}
	}
	q.UpdatedAt, q.Default = s.now(), false
	args := append([]any{q.Project}, q.Limits.args()...)
	args = append(args, false, s.ts(q.UpdatedAt))
	_, err := s.exec(ctx, "INSERT INTO project_quota (project, "+quotaColumns+", uses_default, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"+
		" ON CONFLICT (project) DO UPDATE SET max_vms = excluded.max_vms, max_vcpus = excluded.max_vcpus, max_mem_mib = excluded.max_mem_mib,"+
		" max_snapshots = excluded.max_snapshots, max_snapshot_bytes = excluded.max_snapshot_bytes, max_images = excluded.max_images,"+
		" max_templates = excluded.max_templates, max_streams = excluded.max_streams, uses_default = excluded.uses_default, updated_at = excluded.updated_at", args...)
	if err != nil {
		return Quota{}, s.fail(op, err)
	}
	return q, nil
}

// The usage queries, one per table a create may add to; each takes the
// project. vm's count and sums read the index (project, vcpu, mem_mib)
// alone.
const (
	vmUsageQuery       = "SELECT COUNT(*), CAST(COALESCE(SUM(vcpu), 0) AS bigint), CAST(COALESCE(SUM(mem_mib), 0) AS bigint) FROM vm WHERE project = ?"
	snapshotUsageQuery = "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS bigint) FROM snapshot WHERE project = ?"
	imageUsageQuery    = "SELECT COUNT(*) FROM image WHERE project = ?"
	templateUsageQuery = "SELECT COUNT(*) FROM template WHERE project = ?"
)

// rowQuerier is a *sql.Tx or the store's reader, rebound.
type rowQuerier func(ctx context.Context, q string, args ...any) *sql.Row

// usageOf counts what project holds in the tables want names (vm,
// snapshot, image, template); the others stay zero.
func usageOf(ctx context.Context, query rowQuerier, project string, want Usage) (Usage, error) {
	var u Usage
	var err error
	if want.VMs != 0 || want.VCPUs != 0 || want.MemMiB != 0 {
		err = errors.Join(err, query(ctx, vmUsageQuery, project).Scan(&u.VMs, &u.VCPUs, &u.MemMiB))
	}
	if want.Snapshots != 0 || want.SnapshotBytes != 0 {
		err = errors.Join(err, query(ctx, snapshotUsageQuery, project).Scan(&u.Snapshots, &u.SnapshotBytes))
	}
	if want.Images != 0 {
		err = errors.Join(err, query(ctx, imageUsageQuery, project).Scan(&u.Images))
	}
	if want.Templates != 0 {
		err = errors.Join(err, query(ctx, templateUsageQuery, project).Scan(&u.Templates))
	}
	return u, err
}

// everything asks usageOf for every table.
var everything = Usage{VMs: 1, Snapshots: 1, Images: 1, Templates: 1}

func (s *sqlStore) ProjectUsage(ctx context.Context, project string) (Usage, error) {
	u, err := usageOf(ctx, func(ctx context.Context, q string, args ...any) *sql.Row { return s.queryRow(ctx, q, args...) }, project, everything)
	if err != nil {
		return Usage{}, s.fail("usage of project "+project, err)
	}
	return u, nil
}

// withinQuota checks, inside tx, that adding add to project's usage stays
// within its quota. It locks the quota's row first (FOR UPDATE on
// Postgres; SQLite's write transactions are exclusive already), so two
// creates of one project, on any managers, count one after the other: the
// second sees the first's row. A project without a quota (or "", the
// global one) costs one primary-key read.
func (s *sqlStore) withinQuota(ctx context.Context, tx *sql.Tx, project string, add Usage) error {
	if project == "" {
		return nil
	}
	var l QuotaLimits
	var usesDefault bool
	lock := func() error {
		return scanLimits(s.txQueryRow(ctx, tx, "SELECT "+quotaColumns+", uses_default FROM project_quota WHERE project = ?"+s.d.forUpdate(), project), &l, &usesDefault)
	}
	err := lock()
	if errors.Is(err, sql.ErrNoRows) {
		if s.defaultQuota == (QuotaLimits{}) {
			return nil // no quota, no default: nothing to order
		}
		// The default binds this project: a row standing for it gives
		// the project's creates a lock to queue on, on every manager.
		if _, err := s.txExec(ctx, tx, "INSERT INTO project_quota (project, uses_default, updated_at) VALUES (?, ?, ?) ON CONFLICT (project) DO NOTHING",
			project, true, s.ts(s.now())); err != nil {
			return err
		}
		err = lock()
	}
	if err != nil {
		return err
	}
	if usesDefault {
		l = s.defaultQuota
	}
	checks := []struct {
		name  string
		limit *int64
		add   int64
		used  func(Usage) int64
	}{
		{"vms", l.VMs, add.VMs, func(u Usage) int64 { return u.VMs }},
		{"vcpus", l.VCPUs, add.VCPUs, func(u Usage) int64 { return u.VCPUs }},
		{"mem_mib", l.MemMiB, add.MemMiB, func(u Usage) int64 { return u.MemMiB }},
		{"snapshots", l.Snapshots, add.Snapshots, func(u Usage) int64 { return u.Snapshots }},
		{"snapshot_bytes", l.SnapshotBytes, add.SnapshotBytes, func(u Usage) int64 { return u.SnapshotBytes }},
		{"images", l.Images, add.Images, func(u Usage) int64 { return u.Images }},
		{"templates", l.Templates, add.Templates, func(u Usage) int64 { return u.Templates }},
	}
	// Count only the tables whose limits this create touches.
	var need Usage
	for _, c := range checks {
		if c.limit != nil && c.add != 0 {
			need = Usage{VMs: need.VMs + add.VMs + add.VCPUs + add.MemMiB, Snapshots: need.Snapshots + add.Snapshots + add.SnapshotBytes,
				Images: need.Images + add.Images, Templates: need.Templates + add.Templates}
		}
	}
	if need == (Usage{}) {
		return nil
	}
	used, err := usageOf(ctx, func(ctx context.Context, q string, args ...any) *sql.Row {
		return s.txQueryRow(ctx, tx, q, args...)
	}, project, need)
	if err != nil {
		return err
	}
	for _, c := range checks {
		if c.limit == nil || c.add == 0 {
			continue
		}
		if n := c.used(used); n+c.add > *c.limit {
			return &QuotaError{Project: project, Resource: c.name, Limit: *c.limit, Used: n, Want: c.add}
		}
	}
	return nil
}

func (s *sqlStore) CheckQuota(ctx context.Context, project string, add Usage) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error { return s.withinQuota(ctx, tx, project, add) })
	if err != nil {
		return s.fail("check quota of project "+project, err)
	}
	return nil
}
