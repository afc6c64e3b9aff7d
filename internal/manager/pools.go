package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Pools are warm pools: each keeps Size paused VMs of one template or
// snapshot (booted or restored, then paused) so that a claim only
// resumes one. The leading reconciler refills them (RefillPools); a VM
// belongs to its pool (store.VM.PoolID) until a claim takes it out in one
// conditional write, so two claims never get the same VM.
type Pools struct {
	*core
	vms       *VMs
	templates *Templates
	snapshots *Snapshots
	// Kick, when set, asks for a refill pass now (after a claim).
	Kick func()

	mReady  *prometheus.GaugeVec
	mLag    *prometheus.GaugeVec
	mClaims *prometheus.CounterVec
	mClaimS prometheus.Histogram
}

// The on_empty choices.
const (
	OnEmptyCreate = "create"
	OnEmptyFail   = "fail"
)

func newPools(c *core, vms *VMs, t *Templates, sn *Snapshots) *Pools {
	p := &Pools{core: c, vms: vms, templates: t, snapshots: sn}
	p.mReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nexus_pool_ready_vms", Help: "Paused VMs ready to be claimed, by pool (as of the last refill pass)."}, []string{"pool"})
	p.mLag = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nexus_pool_refill_lag_seconds", Help: "How long each pool has been below its size (0: full)."}, []string{"pool"})
	p.mClaims = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nexus_pool_claims_total", Help: "Claims by result: warm (resumed from the pool), created (empty pool, made the normal way), empty (503)."}, []string{"pool", "result"})
	p.mClaimS = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nexus_pool_claim_seconds", Help: "Time of claims served from a pool, in the manager.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.MustRegister(p.mReady, p.mLag, p.mClaims, p.mClaimS)
	}
	return p
}

// CreatePool validates req and stores the pool; the refill makes its VMs.
func (s *Pools) CreatePool(ctx context.Context, scope Scope, id string, req apitypes.CreatePoolRequest) (store.Pool, error) {
	project := s.projectOf(scope, req.Project)
	if !scope.Sees(project) {
		return store.Pool{}, newErr(KindForbidden, "forbidden", "this token cannot create pools in project %q", project)
	}
	if (req.TemplateID == "") == (req.SnapshotID == "") {
		return store.Pool{}, invalid("give exactly one of template_id and snapshot_id")
	}
	if req.Size < 1 || req.Size > MaxInstances {
		return store.Pool{}, invalid("size must be between 1 and %d", MaxInstances)
	}
	if req.MinReady == 0 {
		req.MinReady = req.Size
	}
	if req.MinReady < 1 || req.MinReady > req.Size {
		return store.Pool{}, invalid("min_ready must be between 1 and size (%d)", req.Size)
	}
	switch req.OnEmpty {
	case "":
		req.OnEmpty = OnEmptyCreate
	case OnEmptyCreate, OnEmptyFail:
	default:
		return store.Pool{}, invalid("on_empty %q: want create or fail", req.OnEmpty)
	}
	if !nameRE.MatchString(req.Name) || len(req.Name) > 40 {
		return store.Pool{}, invalid("pool name %q: use 1-40 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
	}
	p := store.Pool{ID: id, Name: req.Name, Project: project, Size: req.Size, MinReady: req.MinReady, OnEmpty: req.OnEmpty}
	if req.TemplateID != "" {
		t, err := s.templates.GetTemplate(ctx, scope, req.TemplateID, project)
		if err != nil {
			return store.Pool{}, err
		}
		p.TemplateID, p.TemplateVersion = t.ID, t.Version
	} else {
		sn, err := s.snapshots.GetSnapshot(ctx, scope, req.SnapshotID)
		if err != nil {
			return store.Pool{}, err
		}
		if sn.Project != project {
			return store.Pool{}, invalid("snapshot %s is of project %q, not %q", sn.ID, sn.Project, project)
		}
		p.SnapshotID = sn.ID
	}
	now := s.now()
	p.ShortSince = &now // empty until the first refill
	p, err := s.st.CreatePool(ctx, p)
	if errors.Is(err, store.ErrConflict) {
		return store.Pool{}, conflict("name_taken", "a pool named %q already exists in project %q", req.Name, project)
	}
	if err != nil {
		return store.Pool{}, fmt.Errorf("create pool %s: %w", req.Name, err)
	}
	s.kick()
	return p, nil
}

func (s *Pools) kick() {
	if s.Kick != nil {
		s.Kick()
	}
}

// GetPool finds a pool by id, or by name in project.
func (s *Pools) GetPool(ctx context.Context, scope Scope, ref, project string) (store.Pool, error) {
	p, err := s.st.GetPool(ctx, ref)
	if errors.Is(err, store.ErrNotFound) {
		p, err = s.st.GetPoolByName(ctx, s.projectOf(scope, project), ref)
	}
	if errors.Is(err, store.ErrNotFound) || (err == nil && !scope.Sees(p.Project)) {
		return store.Pool{}, notFound("pool", ref)
	}
	if err != nil {
		return store.Pool{}, fmt.Errorf("get pool %s: %w", ref, err)
	}
	return p, nil
}

// ListPools lists the pools the scope sees.
func (s *Pools) ListPools(ctx context.Context, scope Scope, project string) ([]store.Pool, error) {
	p, ok := scope.filterProject(project)
	if !ok {
		return nil, nil
	}
	return s.st.ListPools(ctx, p)
}

// DeletePool removes the pool, then deletes its VMs (claimed VMs are no
// longer its own and stay).
func (s *Pools) DeletePool(ctx context.Context, scope Scope, ref, project string) (store.Pool, error) {
	p, err := s.GetPool(ctx, scope, ref, project)
	if err != nil {
		return p, err
	}
	// The row first: a refill under way sees the pool gone and deletes
	// what it made.
	if err := s.st.DeletePool(ctx, p.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return p, fmt.Errorf("delete pool %s: %w", p.Name, err)
	}
	vms, err := s.poolVMs(ctx, p.ID)
	if err != nil {
		return p, err
	}
	errs := runBatch(len(vms), func(i int) error {
		err := s.vms.DeleteVM(context.WithoutCancel(ctx), All, vms[i].ID)
		if e, ok := AsError(err); ok && e.Kind == KindNotFound {
			return nil
		}
		return err
	})
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("delete pool %s: its VMs: %w (the refill pass deletes what is left)", p.Name, err)
	}
	s.mReady.DeleteLabelValues(p.Name)
	s.mLag.DeleteLabelValues(p.Name)
	return p, nil
}

// poolVMs lists the VMs that belong to the pool.
func (s *core) poolVMs(ctx context.Context, poolID string) ([]store.VM, error) {
	var out []store.VM
	f := store.VMFilter{PoolID: poolID, Limit: store.MaxLimit}
	for {
		page, next, err := s.st.ListVMs(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("vms of pool %s: %w", poolID, err)
		}
		out = append(out, page...)
		if next == "" {
			return out, nil
		}
		f.Cursor = next
	}
}

// View renders a pool with its current counts.
func (s *Pools) View(ctx context.Context, p store.Pool) apitypes.Pool {
	v := apitypes.Pool{ID: p.ID, Name: p.Name, Project: p.Project, TemplateID: p.TemplateID, TemplateVersion: p.TemplateVersion, SnapshotID: p.SnapshotID,
		Size: p.Size, MinReady: p.MinReady, OnEmpty: p.OnEmpty, ShortSince: p.ShortSince, Claims: p.Claims, CreatedAt: p.CreatedAt}
	if vms, err := s.poolVMs(ctx, p.ID); err == nil {
		for _, vm := range vms {
			switch vm.State {
			case store.VMPaused:
				v.Ready++
			case store.VMRequested, store.VMConfigured, store.VMRunning:
				v.Creating++
			}
		}
	}
	switch {
	case v.Ready >= p.Size:
		v.State = "ready"
	case v.Ready == 0:
		v.State = "empty"
	default:
		v.State = "refilling"
	}
	if p.ShortSince != nil && v.Ready < p.Size {
		v.RefillLagSeconds = s.now().Sub(*p.ShortSince).Seconds()
	}
	return v
}

// errTaken: another claim took the VM first.
var errTaken = errors.New("claimed by another caller")

// Claim hands out one running VM of the pool: a paused one is taken out
// of the pool (one conditional write) and resumed. An empty pool makes a
// VM the normal way (on_empty create) or answers 503 pool_empty.
func (s *Pools) Claim(ctx context.Context, scope Scope, ref, project string, req apitypes.ClaimRequest) (store.VM, bool, error) {
	start := time.Now()
	p, err := s.GetPool(ctx, scope, ref, project)
	if err != nil {
		return store.VM{}, false, err
	}
	expiresAt, onExpiry, err := parseTTL(s.now(), req.Expiry)
	if err != nil {
		return store.VM{}, false, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		cands, _, err := s.st.ListVMs(ctx, store.VMFilter{PoolID: p.ID, State: store.VMPaused, Limit: 16})
		if err != nil {
			return store.VM{}, false, fmt.Errorf("claim from pool %s: %w", p.Name, err)
		}
		if len(cands) == 0 {
			break
		}
		// Spread concurrent claims over the candidates.
		off := int(start.UnixNano()/1000) % len(cands)
		for i := range cands {
			vm, err := s.claimOne(ctx, p, cands[(off+i)%len(cands)].ID, expiresAt, onExpiry)
			if errors.Is(err, errTaken) {
				continue
			}
			if err != nil {
				s.log.Warn("claim: a warm VM could not be resumed; deleting it", "pool", p.Name, "vm_id", cands[(off+i)%len(cands)].ID, "err", err)
				continue
			}
			s.kick()
			_ = s.st.CountPoolClaim(context.WithoutCancel(ctx), p.ID)
			s.mClaims.WithLabelValues(p.Name, "warm").Inc()
			s.mClaimS.Observe(time.Since(start).Seconds())
			return vm, true, nil
		}
	}
	s.kick()
	if p.OnEmpty == OnEmptyFail {
		s.mClaims.WithLabelValues(p.Name, "empty").Inc()
		return store.VM{}, false, newErr(KindNoCapacity, "pool_empty", "pool %s has no ready VM", p.Name).
			suggest("retry in a moment (the pool refills in the background; see its refill_lag_seconds), or set on_empty create to make a VM the normal way")
	}
	vm, err := s.make(ctx, p, "", req.Expiry, true)
	if err != nil {
		return store.VM{}, false, err
	}
	s.mClaims.WithLabelValues(p.Name, "created").Inc()
	return vm, false, nil
}

// claimOne takes vmID out of pool p and resumes it; errTaken when another
// claim was first. A VM that cannot be resumed is deleted.
func (s *Pools) claimOne(ctx context.Context, p store.Pool, vmID string, expiresAt *time.Time, onExpiry string) (store.VM, error) {
	_, err := s.st.UpdateVM(ctx, vmID, func(v *store.VM) error {
		if v.PoolID != p.ID || v.State != store.VMPaused {
			return errTaken
		}
		v.PoolID = ""
		v.ExpiresAt, v.OnExpiry = expiresAt, onExpiry
		return nil
	})
	if errors.Is(err, errTaken) || errors.Is(err, store.ErrNotFound) {
		return store.VM{}, errTaken
	}
	if err != nil {
		return store.VM{}, err
	}
	vm, err := s.vms.ResumeVM(ctx, All, vmID)
	if err != nil {
		go func() { _ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, vmID) }()
		return store.VM{}, err
	}
	s.event(ctx, vmID, store.LevelInfo, "claimed from pool %s", p.Name)
	return vm, nil
}

// make creates one VM from the pool's template or snapshot: running (a
// claim of an empty pool) or into the pool (poolID set, then paused).
func (s *Pools) make(ctx context.Context, p store.Pool, poolID string, expiry apitypes.Expiry, wait bool) (store.VM, error) {
	name := p.Name + "-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:8]
	var vm store.VM
	if p.TemplateID != "" {
		vms, err := s.templates.Instantiate(ctx, All, p.TemplateID, p.Project, apitypes.InstantiateRequest{Name: name, Expiry: expiry},
			TemplateInstanceOptions{Wait: true, PoolID: poolID, Version: p.TemplateVersion})
		if err != nil {
			return store.VM{}, err
		}
		vm = vms[0]
	} else {
		r, err := s.snapshots.InstantiateSnapshot(ctx, All, p.SnapshotID, apitypes.InstantiateSnapshotRequest{Name: name, Expiry: expiry},
			InstantiateOptions{PoolID: poolID})
		if err != nil {
			return store.VM{}, err
		}
		vm = r.VM
	}
	return vm, nil
}

// RefillPools is one pass over every pool: VMs of the pool that are not
// healthy and paused (failed, or running again after the reconciler
// restarted a dead VMM) are deleted, VMs whose pool is gone too, and a
// pool with fewer than min_ready VMs gets VMs up to its size. Each pass
// that makes VMs leaves an audit row of the system. Only the leading
// reconciler runs it, one pass at a time.
func (s *Pools) RefillPools(ctx context.Context) {
	pools, err := s.st.ListPools(ctx, "")
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("pool refill: list pools", "err", err)
		}
		return
	}
	for _, p := range pools {
		// A pool under a rollout is the rollout's to fill.
		if r, ok := s.activeRollout(ctx, p); ok {
			s.rolloutPass(ctx, p, r)
			continue
		}
		s.refill(ctx, p)
	}
	s.sweepOrphans(ctx)
}

// orphanSweep bounds the VMs of deleted pools one pass deletes.
const orphanSweep = 100

// sweepOrphans deletes VMs whose pool is gone: a pool delete that failed
// halfway (a VM busy or its host away) said the refill pass would.
func (s *Pools) sweepOrphans(ctx context.Context) {
	ids, err := s.st.ListOrphanPoolVMs(ctx, orphanSweep)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("pool refill: list VMs of deleted pools", "err", err)
		}
		return
	}
	for _, id := range ids {
		err := s.vms.DeleteVM(ctx, All, id)
		if e, ok := AsError(err); err != nil && !(ok && e.Kind == KindNotFound) {
			s.log.Warn("pool refill: delete a VM of a deleted pool; the next pass retries", "vm_id", id, "err", err)
			continue
		}
		s.log.Info("pool refill: deleted a VM of a deleted pool", "vm_id", id)
	}
}

func (s *Pools) refill(ctx context.Context, p store.Pool) {
	vms, err := s.poolVMs(ctx, p.ID)
	if err != nil {
		return
	}
	ready, creating := 0, 0
	var broken []string
	for _, vm := range vms {
		switch {
		case vm.State == store.VMPaused:
			ready++
		case (vm.State == store.VMRequested || vm.State == store.VMConfigured) && s.now().Sub(vm.UpdatedAt) < s.cfg.BootTimeout:
			creating++ // another manager's refill, or a restart under way
		case vm.State == store.VMDeleting:
		default:
			broken = append(broken, vm.ID)
		}
	}
	for _, id := range broken {
		s.event(ctx, id, store.LevelWarn, "pool %s: this VM is not paused and ready; deleting it (the pool makes another)", p.Name)
		if err := s.vms.DeleteVM(ctx, All, id); err != nil {
			s.log.Warn("pool refill: delete broken vm", "pool", p.Name, "vm_id", id, "err", err)
		}
	}
	now := s.now()
	if ready < p.Size {
		_ = s.st.SetPoolShort(ctx, p.ID, &now)
	}
	s.mReady.WithLabelValues(p.Name).Set(float64(ready))
	if ready+creating >= p.MinReady {
		if ready >= p.Size {
			_ = s.st.SetPoolShort(ctx, p.ID, nil)
			s.mLag.WithLabelValues(p.Name).Set(0)
		}
		return
	}
	n := p.Size - ready - creating
	if n <= 0 {
		return
	}
	if cur, err := s.st.GetPool(ctx, p.ID); err == nil && cur.ShortSince != nil {
		s.mLag.WithLabelValues(p.Name).Set(now.Sub(*cur.ShortSince).Seconds())
	}
	made := make([]string, n)
	errs := runBatch(n, func(i int) error {
		vm, err := s.make(ctx, p, p.ID, apitypes.Expiry{}, true)
		if err != nil {
			return err
		}
		made[i] = vm.ID
		if _, err := s.vms.PauseVM(ctx, All, vm.ID); err != nil {
			_ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, vm.ID)
			return err
		}
		return nil
	})
	// A pool deleted meanwhile: what this pass made goes too.
	if _, err := s.st.GetPool(ctx, p.ID); errors.Is(err, store.ErrNotFound) {
		for _, id := range made {
			if id != "" {
				_ = s.vms.DeleteVM(context.WithoutCancel(ctx), All, id)
			}
		}
		return
	}
	s.auditRefill(ctx, p, made, errors.Join(errs...))
	if err := errors.Join(errs...); err == nil {
		_ = s.st.SetPoolShort(ctx, p.ID, nil)
		s.mLag.WithLabelValues(p.Name).Set(0)
		s.mReady.WithLabelValues(p.Name).Set(float64(ready + n))
	}
}

func (s *Pools) auditRefill(ctx context.Context, p store.Pool, made []string, failure error) {
	var ids []string
	for _, id := range made {
		if id != "" {
			ids = append(ids, id)
		}
	}
	after, _ := json.Marshal(map[string]any{"pool": p.Name, "made": ids})
	id, err := s.st.BeginAudit(ctx, store.AuditEntry{Actor: SystemActor, Action: "pool.refill", Resource: "pool", ResourceID: p.ID})
	if err != nil {
		return
	}
	result, text := store.AuditSuccess, ""
	if failure != nil {
		result, text = store.AuditFailure, failure.Error()
	}
	_ = s.st.CompleteAudit(context.WithoutCancel(ctx), id, result, after, text)
}
