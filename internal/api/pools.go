package api

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// PoolService is what the pool routes use (manager.Pools).
type PoolService interface {
	CreatePool(ctx context.Context, scope manager.Scope, id string, req apitypes.CreatePoolRequest) (store.Pool, error)
	GetPool(ctx context.Context, scope manager.Scope, ref, project string) (store.Pool, error)
	ListPools(ctx context.Context, scope manager.Scope, project string) ([]store.Pool, error)
	DeletePool(ctx context.Context, scope manager.Scope, ref, project string) (store.Pool, error)
	Claim(ctx context.Context, scope manager.Scope, ref, project string, req apitypes.ClaimRequest) (store.VM, bool, error)
	View(ctx context.Context, p store.Pool) apitypes.Pool
	StartRollout(ctx context.Context, scope manager.Scope, ref, project, actor string, req apitypes.RolloutRequest) (store.Rollout, error)
	GetRollout(ctx context.Context, scope manager.Scope, ref, project string) (store.Pool, store.Rollout, error)
	ControlRollout(ctx context.Context, scope manager.Scope, ref, project, action string) (store.Rollout, error)
	RolloutView(ctx context.Context, r store.Rollout) apitypes.Rollout
}

// poolRoutes registers the warm pools' routes (docs/sandboxes.md).
func (s *Server) poolRoutes() {
	register(s, "create-pool", http.MethodPost, "/v1/pools", "Create a warm pool of paused VMs of a template or snapshot", creates(op("pool.create", "pool")), s.createPool, http.StatusCreated)
	register(s, "list-pools", http.MethodGet, "/v1/pools", "List warm pools with their state and refill lag", viewer, s.listPools)
	register(s, "get-pool", http.MethodGet, "/v1/pools/{id}", "Get a warm pool by id or name", viewer, s.getPool)
	register(s, "delete-pool", http.MethodDelete, "/v1/pools/{id}", "Delete a warm pool and its unclaimed VMs", op("pool.delete", "pool"), s.deletePool)
	register(s, "start-rollout", http.MethodPost, "/v1/pools/{id}/rollout", "Move a template pool to another version of its template: canaries first, then max_parallel at a time", op("pool.rollout", "pool"), s.startRollout, http.StatusCreated)
	register(s, "get-rollout", http.MethodGet, "/v1/pools/{id}/rollout", "The pool's newest rollout with its progress", viewer, s.getRollout)
	for _, action := range []string{"pause", "resume", "promote", "abort"} {
		register(s, action+"-rollout", http.MethodPost, "/v1/pools/{id}/rollout/"+action, rolloutActionDoc[action], op("pool.rollout_"+action, "pool"),
			func(ctx context.Context, in *poolRefInput) (*rolloutOutput, error) {
				return s.controlRollout(ctx, in, action)
			})
	}
	register(s, "claim-pool", http.MethodPost, "/v1/pools/{id}/claim", "Take one running VM from a pool (a warm VM resumed; an empty pool creates one or answers 503, per on_empty)", op("pool.claim", "pool"), s.claimPool)
}

type createPoolInput struct {
	Body apitypes.CreatePoolRequest
}

type poolItemOutput struct {
	Body apitypes.PoolItem
}

type poolCreatedOutput struct {
	Location string `header:"Location" doc:"the new pool: /v1/pools/{id}"`
	Body     apitypes.PoolItem
}

func (s *Server) createPool(ctx context.Context, in *createPoolInput) (*poolCreatedOutput, error) {
	p, err := s.pools.CreatePool(ctx, scope(ctx), newID(ctx), in.Body)
	if err != nil {
		return nil, err
	}
	return &poolCreatedOutput{Location: "/v1/pools/" + p.ID, Body: apitypes.PoolItem{Item: s.pools.View(ctx, p)}}, nil
}

type listPoolsInput struct {
	Project string `query:"project" maxLength:"63"`
}

type poolListOutput struct {
	Body apitypes.PoolList
}

func (s *Server) listPools(ctx context.Context, in *listPoolsInput) (*poolListOutput, error) {
	ps, err := s.pools.ListPools(ctx, scope(ctx), in.Project)
	if err != nil {
		return nil, err
	}
	out := &poolListOutput{Body: apitypes.PoolList{Items: make([]apitypes.Pool, 0, len(ps))}}
	for _, p := range ps {
		out.Body.Items = append(out.Body.Items, s.pools.View(ctx, p))
	}
	return out, nil
}

type poolRefInput struct {
	ID      string `path:"id" maxLength:"64" doc:"pool id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
}

func (s *Server) getPool(ctx context.Context, in *poolRefInput) (*poolItemOutput, error) {
	p, err := s.pools.GetPool(ctx, scope(ctx), in.ID, in.Project)
	if err != nil {
		return nil, err
	}
	return &poolItemOutput{Body: apitypes.PoolItem{Item: s.pools.View(ctx, p)}}, nil
}

func (s *Server) deletePool(ctx context.Context, in *poolRefInput) (*okOutput, error) {
	_, err := s.pools.DeletePool(ctx, scope(ctx), in.ID, in.Project)
	return ok(), err
}

type claimInput struct {
	ID      string `path:"id" maxLength:"64" doc:"pool id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
	Body    *apitypes.ClaimRequest
}

type claimOutput struct {
	Body apitypes.Claimed
}

func (s *Server) claimPool(ctx context.Context, in *claimInput) (*claimOutput, error) {
	var req apitypes.ClaimRequest
	if in.Body != nil {
		req = *in.Body
	}
	vm, warm, err := s.pools.Claim(ctx, scope(ctx), in.ID, in.Project, req)
	if err != nil {
		return nil, err
	}
	return &claimOutput{Body: apitypes.Claimed{Item: s.vms.View(vm), FromPool: warm}}, nil
}

var rolloutActionDoc = map[string]string{
	"pause":   "Pause the pool's rollout after the step under way (the pool refills with its current version meanwhile)",
	"resume":  "Resume a paused rollout",
	"promote": "Promote the canaries of a rollout awaiting promotion (auto_promote false): it goes on with the rest of the pool; 409 in any other state",
	"abort":   "Abort the pool's rollout: it returns to the version it had before, at full size",
}

type startRolloutInput struct {
	ID      string `path:"id" maxLength:"64" doc:"pool id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project)"`
	Body    apitypes.RolloutRequest
}

type rolloutOutput struct {
	Body apitypes.RolloutItem
}

type rolloutCreatedOutput struct {
	Location string `header:"Location" doc:"the rollout: /v1/pools/{id}/rollout"`
	Body     apitypes.RolloutItem
}

func (s *Server) startRollout(ctx context.Context, in *startRolloutInput) (*rolloutCreatedOutput, error) {
	p, _ := principal(ctx)
	r, err := s.pools.StartRollout(ctx, scope(ctx), in.ID, in.Project, p.Actor(), in.Body)
	if err != nil {
		return nil, err
	}
	return &rolloutCreatedOutput{Location: "/v1/pools/" + r.PoolID + "/rollout", Body: apitypes.RolloutItem{Item: s.pools.RolloutView(ctx, r)}}, nil
}

func (s *Server) getRollout(ctx context.Context, in *poolRefInput) (*rolloutOutput, error) {
	_, r, err := s.pools.GetRollout(ctx, scope(ctx), in.ID, in.Project)
	if err != nil {
		return nil, err
	}
	return &rolloutOutput{Body: apitypes.RolloutItem{Item: s.pools.RolloutView(ctx, r)}}, nil
}

func (s *Server) controlRollout(ctx context.Context, in *poolRefInput, action string) (*rolloutOutput, error) {
	r, err := s.pools.ControlRollout(ctx, scope(ctx), in.ID, in.Project, action)
	if err != nil {
		return nil, err
	}
	return &rolloutOutput{Body: apitypes.RolloutItem{Item: s.pools.RolloutView(ctx, r)}}, nil
}
