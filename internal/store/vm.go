package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"time"
)

// vmColumns is the column order of every VM query; vmValues and scanVM
// follow it.
var vmColumns = []string{
	"id", "name", "project", "state", "desired_state",
	"host_id", "host_addr", "api_sock", "tap", "mac", "log_path",
	"vcpu", "mem_mib", "kernel_path", "rootfs_path", "kernel_image_id", "rootfs_image_id", "boot_args", "spec",
	"template_id", "template_config", "overrides", "tags",
	"last_error", "retries", "next_attempt_at",
	"initrd_path", "initrd_image_id", "ip", "subnet", "gateway", "vmm_pid", "booted_at", "guest_ready_at",
	"expires_at", "on_expiry", "pool_id", "template_version",
	"generation", "created_at", "updated_at",
}

var (
	vmSelect = "SELECT " + strings.Join(vmColumns, ", ") + " FROM vm"
	vmInsert = "INSERT INTO vm (" + strings.Join(vmColumns, ", ") + ") VALUES (" + placeholders(len(vmColumns)) + ")"
)

// vmUpdate is the UPDATE of an update from cur to next: the columns that
// changed (SQLite rewrites the entries of every index on a column in the
// SET list, changed or not: a state write rewrote all nine), then
// generation and updated_at, guarded by the generation cur has (the
// optimistic-concurrency check). It returns the statement and its
// arguments.
func vmUpdate(cur, next []any, id string, generation int64) (string, []any) {
	var q strings.Builder
	q.WriteString("UPDATE vm SET ")
	args := make([]any, 0, 8)
	last := len(vmColumns) - 3 // generation, created_at, updated_at
	for i := 1; i < last; i++ {
		if reflect.DeepEqual(cur[i], next[i]) {
			continue
		}
		q.WriteString(vmColumns[i])
		q.WriteString(" = ?, ")
		args = append(args, next[i])
	}
	q.WriteString("generation = ?, updated_at = ? WHERE id = ? AND generation = ?")
	return q.String(), append(args, next[last], next[len(next)-1], id, generation)
}

func (s *sqlStore) vmValues(vm *VM) ([]any, error) {
	spec, err := rawArg("spec", vm.Spec, "{}")
	if err != nil {
		return nil, err
	}
	tcfg, err := rawArg("template_config", vm.TemplateConfig, "")
	if err != nil {
		return nil, err
	}
	over, err := rawArg("overrides", vm.Overrides, "")
	if err != nil {
		return nil, err
	}
	tags := vm.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	tagsJSON, err := jsonArg(tags)
	if err != nil {
		return nil, err
	}
	return []any{
		vm.ID, vm.Name, vm.Project, string(vm.State), string(vm.DesiredState),
		vm.HostID, vm.HostAddr, vm.APISock, vm.TAP, vm.MAC, vm.LogPath,
		vm.VCPU, vm.MemMiB, vm.KernelPath, vm.RootfsPath, vm.KernelImageID, vm.RootfsImageID, vm.BootArgs, spec,
		vm.TemplateID, tcfg, over, tagsJSON,
		vm.LastError, vm.Retries, s.tsPtr(vm.NextAttemptAt),
		vm.InitrdPath, vm.InitrdImageID, vm.IP, vm.Subnet, vm.Gateway, vm.VMMPID, s.tsPtr(vm.BootedAt), s.tsPtr(vm.GuestReadyAt),
		s.tsPtr(vm.ExpiresAt), vm.OnExpiry, vm.PoolID, vm.TemplateVersion,
		vm.Generation, s.ts(vm.CreatedAt), s.ts(vm.UpdatedAt),
	}, nil
}

func scanVM(sc scanner) (VM, error) {
	var vm VM
	err := sc.Scan(
		&vm.ID, &vm.Name, &vm.Project, &vm.State, &vm.DesiredState,
		&vm.HostID, &vm.HostAddr, &vm.APISock, &vm.TAP, &vm.MAC, &vm.LogPath,
		&vm.VCPU, &vm.MemMiB, &vm.KernelPath, &vm.RootfsPath, &vm.KernelImageID, &vm.RootfsImageID, &vm.BootArgs, rawCol{&vm.Spec},
		&vm.TemplateID, rawCol{&vm.TemplateConfig}, rawCol{&vm.Overrides}, jsonCol{&vm.Tags},
		&vm.LastError, &vm.Retries, nullTimeCol{&vm.NextAttemptAt},
		&vm.InitrdPath, &vm.InitrdImageID, &vm.IP, &vm.Subnet, &vm.Gateway, &vm.VMMPID, nullTimeCol{&vm.BootedAt}, nullTimeCol{&vm.GuestReadyAt},
		nullTimeCol{&vm.ExpiresAt}, &vm.OnExpiry, &vm.PoolID, &vm.TemplateVersion,
		&vm.Generation, timeCol{&vm.CreatedAt}, timeCol{&vm.UpdatedAt},
	)
	if vm.Tags == nil {
		vm.Tags = map[string]string{}
	}
	return vm, err
}

func (s *sqlStore) CreateVM(ctx context.Context, vm VM) (VM, error) {
	vm = vm.clone()
	if vm.ID == "" {
		vm.ID = newID()
	}
	vm.CreatedAt = s.orNow(vm.CreatedAt)
	vm.UpdatedAt = vm.CreatedAt
	vm.Generation = 1
	normVM(&vm)
	op := "create vm " + qualified(vm.Project, vm.Name)
	args, err := s.vmValues(&vm)
	if err != nil {
		return VM{}, s.fail(op, err)
	}
	if _, err := s.exec(ctx, vmInsert, args...); err != nil {
		return VM{}, s.fail(op, err)
	}
	return vm, nil
}

func (s *sqlStore) CreateVMWithin(ctx context.Context, vm VM, limit Resources, free ...VMState) (VM, error) {
	vm = vm.clone()
	if vm.ID == "" {
		vm.ID = newID()
	}
	vm.CreatedAt = s.orNow(vm.CreatedAt)
	vm.UpdatedAt = vm.CreatedAt
	vm.Generation = 1
	normVM(&vm)
	op := "create vm " + qualified(vm.Project, vm.Name) + " on host " + vm.HostID
	var subnet netip.Prefix
	var gw netip.Addr
	wantAddr := vm.Subnet != "" && vm.IP == ""
	if wantAddr {
		var err1, err2 error
		subnet, err1 = netip.ParsePrefix(vm.Subnet)
		gw, err2 = netip.ParseAddr(vm.Gateway)
		if err := errors.Join(err1, err2, validSubnet(subnet, gw)); err != nil {
			return VM{}, s.fail(op, invalidf("address: %v", err))
		}
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// The project's quota first (its row, then the host's: every
		// transaction that takes both takes them in this order).
		if err := s.withinQuota(ctx, tx, vm.Project, Usage{VMs: 1, VCPUs: int64(vm.VCPU), MemMiB: int64(vm.MemMiB)}); err != nil {
			return err
		}
		var state HostState
		if err := s.txQueryRow(ctx, tx, "SELECT state FROM host WHERE id = ?"+s.d.forUpdate(), vm.HostID).Scan(&state); err != nil {
			return fmt.Errorf("host %s: %w", vm.HostID, err)
		}
		if state != HostReady {
			return fmt.Errorf("%w: host %s is %s", ErrHostNotReady, vm.HostID, state)
		}
		q := "SELECT COALESCE(SUM(vcpu), 0), COALESCE(SUM(mem_mib), 0) FROM vm WHERE host_id = ?"
		qargs := []any{vm.HostID}
		if len(free) > 0 {
			q += " AND state NOT IN (" + placeholders(len(free)) + ")"
			for _, st := range free {
				qargs = append(qargs, string(st))
			}
		}
		var used Resources
		if err := s.txQueryRow(ctx, tx, q, qargs...).Scan(&used.VCPU, &used.MemMiB); err != nil {
			return err
		}
		if used.VCPU+vm.VCPU > limit.VCPU || used.MemMiB+vm.MemMiB > limit.MemMiB {
			return fmt.Errorf("%w: %d/%d vCPU and %d/%d MiB in use", ErrNoCapacity, used.VCPU, limit.VCPU, used.MemMiB, limit.MemMiB)
		}
		if wantAddr {
			// The host's row is locked: nobody else picks on this host
			// until the insert commits (the unique index backs it up).
			taken, err := s.usedAddressesTx(ctx, tx, vm.HostID)
			if err != nil {
				return err
			}
			ip, ok := lowestFree(subnet, gw, taken)
			if !ok {
				return fmt.Errorf("%w: every address of %s on host %s is taken", ErrExhausted, subnet, vm.HostID)
			}
			vm.IP, vm.Subnet, vm.Gateway = ip.String(), subnet.String(), gw.String()
		}
		args, err := s.vmValues(&vm)
		if err != nil {
			return err
		}
		_, err = s.txExec(ctx, tx, vmInsert, args...)
		return err
	})
	if err != nil {
		return VM{}, s.fail(op, err)
	}
	return vm, nil
}

// normVM makes a VM look the way it will read back: the column defaults
// for empty Spec and Tags, times truncated.
func normVM(vm *VM) {
	if len(vm.Spec) == 0 {
		vm.Spec = json.RawMessage("{}")
	}
	if vm.Tags == nil {
		vm.Tags = map[string]string{}
	}
	vm.NextAttemptAt = normTimePtr(vm.NextAttemptAt)
	vm.BootedAt = normTimePtr(vm.BootedAt)
	vm.GuestReadyAt = normTimePtr(vm.GuestReadyAt)
	vm.ExpiresAt = normTimePtr(vm.ExpiresAt)
}

func (s *sqlStore) GetVM(ctx context.Context, id string) (VM, error) {
	vm, err := scanVM(s.queryRow(ctx, vmSelect+" WHERE id = ?", id))
	if err != nil {
		return VM{}, s.fail("get vm "+id, err)
	}
	return vm, nil
}

func (s *sqlStore) GetVMByName(ctx context.Context, project, name string) (VM, error) {
	vm, err := scanVM(s.queryRow(ctx, vmSelect+" WHERE project = ? AND name = ?", project, name))
	if err != nil {
		return VM{}, s.fail("get vm "+qualified(project, name), err)
	}
	return vm, nil
}

// vmStateSelect reads the columns ListHostVMStates fills, from the host's
// rows only (its index starts with host_id).
const vmStateSelect = "SELECT id, host_id, state, desired_state, tap, last_error, retries, next_attempt_at, generation, updated_at FROM vm WHERE host_id = ?"

func (s *sqlStore) ListHostVMStates(ctx context.Context, hostID string) ([]VM, error) {
	vms, err := queryAll(ctx, s, func(sc scanner) (VM, error) {
		var vm VM
		err := sc.Scan(&vm.ID, &vm.HostID, &vm.State, &vm.DesiredState, &vm.TAP, &vm.LastError,
			&vm.Retries, nullTimeCol{&vm.NextAttemptAt}, &vm.Generation, timeCol{&vm.UpdatedAt})
		return vm, err
	}, vmStateSelect, hostID)
	if err != nil {
		return nil, s.fail("list vm states of host "+hostID, err)
	}
	return vms, nil
}

// expiredVMsQuery is what ListExpiredVMs reads after vmSelect.
const expiredVMsQuery = " WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at, id LIMIT ?"

// orphanPoolVMsQuery is ordered by pool first: with ORDER BY id alone,
// SQLite walked the whole table in id order (every VM, every second: at
// 10,000 VMs a quarter of the leading manager's CPU) instead of the
// partial index of pool VMs (vm_pool_idx).
const orphanPoolVMsQuery = "SELECT id FROM vm WHERE pool_id <> '' AND NOT EXISTS (SELECT 1 FROM pool WHERE pool.id = vm.pool_id) ORDER BY pool_id, id LIMIT ?"

func (s *sqlStore) ListOrphanPoolVMs(ctx context.Context, limit int) ([]string, error) {
	ids, err := queryAll(ctx, s, func(sc scanner) (string, error) {
		var id string
		err := sc.Scan(&id)
		return id, err
	}, orphanPoolVMsQuery, clampLimit(limit))
	if err != nil {
		return nil, s.fail("list vms of deleted pools", err)
	}
	return ids, nil
}

func (s *sqlStore) ListVMs(ctx context.Context, f VMFilter) ([]VM, string, error) {
	var conds []string
	var args []any
	add := func(cond string, a ...any) {
		conds = append(conds, cond)
		args = append(args, a...)
	}
	if f.Project != "" {
		add("project = ?", f.Project)
	}
	if f.State != "" {
		add("state = ?", string(f.State))
	}
	if f.DesiredState != "" {
		add("desired_state = ?", string(f.DesiredState))
	}
	if f.HostID != "" {
		add("host_id = ?", f.HostID)
	}
	if f.PoolID != "" {
		add("pool_id = ?", f.PoolID)
	}
	if len(f.Tags) > 0 {
		frag, a := s.d.tagsFilter(f.Tags)
		add(frag, a...)
	}
	if f.Cursor != "" {
		c, err := parseCursor(f.Cursor)
		if err != nil {
			return nil, "", s.fail("list vms", err)
		}
		add("(created_at, id) < (?, ?)", s.ts(c.at), c.id)
	}
	limit := clampLimit(f.Limit)
	// One row more than the page tells whether another page follows.
	q := vmSelect + where(conds) + " ORDER BY created_at DESC, id DESC LIMIT ?"
	args = append(args, limit+1)
	vms, err := queryAll(ctx, s, scanVM, q, args...)
	if err != nil {
		return nil, "", s.fail("list vms", err)
	}
	next := ""
	if len(vms) > limit {
		vms = vms[:limit]
		last := vms[limit-1]
		next = cursor{at: last.CreatedAt, id: last.ID}.String()
	}
	return vms, next, nil
}

func (s *sqlStore) ListExpiredVMs(ctx context.Context, at time.Time, limit int) ([]VM, error) {
	vms, err := queryAll(ctx, s, scanVM, vmSelect+expiredVMsQuery,
		s.ts(at), clampLimit(limit))
	if err != nil {
		return nil, s.fail("list expired vms", err)
	}
	return vms, nil
}

// UpdateVM retries: enough attempts, with jittered backoff, that a handful
// of writers racing on one VM (reconciler, API, orchestrator) all land.
const (
	updateAttempts = 10
	updateBackoff  = time.Millisecond
)

func (s *sqlStore) UpdateVM(ctx context.Context, id string, mutate func(*VM) error) (VM, error) {
	return s.updateVM(ctx, id, nil, mutate)
}

func (s *sqlStore) UpdateVMFrom(ctx context.Context, cur VM, mutate func(*VM) error) (VM, error) {
	return s.updateVM(ctx, cur.ID, &cur, mutate)
}

// updateVM is UpdateVM; with known, its first attempt starts from known
// instead of reading the row.
func (s *sqlStore) updateVM(ctx context.Context, id string, known *VM, mutate func(*VM) error) (VM, error) {
	op := "update vm " + id
	for attempt := 0; attempt < updateAttempts; attempt++ {
		// A retry after losing a race waits; the read that follows a
		// stale known row does not: the row had only moved on since.
		if attempt > 1 || attempt == 1 && known == nil {
			if err := sleepCtx(ctx, jitter(updateBackoff<<min(attempt-1, 6))); err != nil {
				return VM{}, fmt.Errorf("%s: %w", op, err)
			}
		}
		var cur VM
		if attempt == 0 && known != nil {
			cur = known.clone()
		} else {
			var err error
			if cur, err = scanVM(s.queryRow(ctx, vmSelect+" WHERE id = ?", id)); err != nil {
				return VM{}, s.fail(op, err)
			}
		}
		next := cur.clone()
		if err := mutate(&next); err != nil {
			if attempt == 0 && known != nil {
				continue // known may be stale: decide on the row as stored
			}
			return VM{}, fmt.Errorf("%s: %w", op, err)
		}
		// The store owns these; a mutation cannot move them.
		next.ID, next.CreatedAt, next.Generation, next.UpdatedAt = cur.ID, cur.CreatedAt, cur.Generation, cur.UpdatedAt
		normVM(&next)
		if reflect.DeepEqual(cur, next) {
			if attempt == 0 && known != nil {
				continue // known may be stale: answer with the row as stored
			}
			return cur, nil
		}
		next.Generation = cur.Generation + 1
		next.UpdatedAt = s.now()
		vals, err := s.vmValues(&next)
		if err != nil {
			return VM{}, s.fail(op, err)
		}
		was, err := s.vmValues(&cur)
		if err != nil {
			return VM{}, s.fail(op, err)
		}
		q, args := vmUpdate(was, vals, cur.ID, cur.Generation)
		res, err := s.exec(ctx, q, args...)
		if err != nil {
			return VM{}, s.fail(op, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return VM{}, s.fail(op, err)
		}
		if n == 1 {
			return next, nil
		}
		// Someone else wrote (or deleted) it since we read: read again.
	}
	return VM{}, fmt.Errorf("%s: %d attempts: %w", op, updateAttempts, ErrStale)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// jitter spreads d over [d/2, 3d/2) so racing writers do not retry in step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d)
}

func (s *sqlStore) DeleteVM(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "DELETE FROM vm WHERE id = ?", id)); err != nil {
		return s.fail("delete vm "+id, err)
	}
	return nil
}

func (s *sqlStore) AllocationsByHost(ctx context.Context, excludeStates ...VMState) (map[string]Allocation, error) {
	q := "SELECT host_id, COUNT(*), COALESCE(SUM(vcpu), 0), COALESCE(SUM(mem_mib), 0) FROM vm WHERE host_id <> ''"
	var args []any
	if len(excludeStates) > 0 {
		q += " AND state NOT IN (" + placeholders(len(excludeStates)) + ")"
		for _, st := range excludeStates {
			args = append(args, string(st))
		}
	}
	q += " GROUP BY host_id"
	type row struct {
		host string
		a    Allocation
	}
	rows, err := queryAll(ctx, s, func(sc scanner) (row, error) {
		var r row
		err := sc.Scan(&r.host, &r.a.VMs, &r.a.VCPU, &r.a.MemMiB)
		return r, err
	}, q, args...)
	if err != nil {
		return nil, s.fail("allocations by host", err)
	}
	out := make(map[string]Allocation, len(rows))
	for _, r := range rows {
		out[r.host] = r.a
	}
	return out, nil
}
