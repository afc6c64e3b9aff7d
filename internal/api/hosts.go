package api

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/apitypes"
	"github.com/nexus-microvm/nexus/internal/manager"
)

type hostListOutput struct {
	Body apitypes.HostList
}

func (s *Server) listHosts(ctx context.Context, _ *struct{}) (*hostListOutput, error) {
	hosts, err := s.svc.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	out := &hostListOutput{Body: apitypes.HostList{Items: make([]apitypes.Host, 0, len(hosts))}}
	for _, h := range hosts {
		out.Body.Items = append(out.Body.Items, manager.HostView(h))
	}
	return out, nil
}

type registerHostInput struct {
	Body apitypes.RegisterHostRequest
}

type registerHostOutput struct {
	Body apitypes.RegisterHostResponse
}

func (s *Server) registerHost(ctx context.Context, in *registerHostInput) (*registerHostOutput, error) {
	h, err := s.svc.RegisterHost(ctx, in.Body)
	if err != nil {
		return nil, err
	}
	return &registerHostOutput{Body: apitypes.RegisterHostResponse{ID: h.ID, HeartbeatIntervalMs: int(s.svc.HeartbeatInterval().Milliseconds())}}, nil
}

type heartbeatInput struct {
	ID   string `path:"id" maxLength:"64"`
	Body apitypes.HeartbeatRequest
}

func (s *Server) hostHeartbeat(ctx context.Context, in *heartbeatInput) (*okOutput, error) {
	return ok(), s.svc.Heartbeat(ctx, in.ID, in.Body.Capacity, in.Body.Allocated, in.Body.VMs)
}

type healthOutput struct {
	Body apitypes.Health
}

func (s *Server) healthz(ctx context.Context, _ *struct{}) (*healthOutput, error) {
	return &healthOutput{Body: apitypes.Health{OK: true}}, nil
}

// readyz is ready when the store answers and at least one host is ready.
func (s *Server) readyz(ctx context.Context, _ *struct{}) (*healthOutput, error) {
	checks := map[string]string{"store": "ok", "hosts": "ok"}
	ready := true
	if err := s.svc.Store().Ping(ctx); err != nil {
		checks["store"] = "unreachable"
		ready = false
	}
	hosts, err := s.svc.ListHosts(ctx)
	n := 0
	for _, h := range hosts {
		if h.State == "ready" || h.State == "draining" { // draining hosts are healthy
			n++
		}
	}
	if err != nil || n == 0 {
		checks["hosts"] = "no ready host"
		ready = false
	}
	if !ready {
		e := apierr.New(http.StatusServiceUnavailable, "not_ready", "not ready: store "+checks["store"]+", hosts "+checks["hosts"])
		return nil, e
	}
	return &healthOutput{Body: apitypes.Health{OK: true, Checks: checks}}, nil
}

type hostEventInput struct {
	ID   string `path:"id" maxLength:"64"`
	Body apitypes.HostEvent
}

func (s *Server) hostEvent(ctx context.Context, in *hostEventInput) (*okOutput, error) {
	return ok(), s.svc.HostEvent(ctx, in.ID, in.Body.VMID, in.Body.Status)
}

type hostIDPath struct {
	ID string `path:"id" maxLength:"253" doc:"host id or name"`
}

func (s *Server) drainHost(ctx context.Context, in *hostIDPath) (*okOutput, error) {
	return ok(), s.svc.SetHostDraining(ctx, in.ID, true)
}

func (s *Server) undrainHost(ctx context.Context, in *hostIDPath) (*okOutput, error) {
	return ok(), s.svc.SetHostDraining(ctx, in.ID, false)
}

func (s *Server) removeHost(ctx context.Context, in *hostIDPath) (*okOutput, error) {
	return ok(), s.svc.RemoveHost(ctx, in.ID)
}

type reconcilerOutput struct {
	Body apitypes.ReconcilerStatus
}

func (s *Server) reconcilerStatus(ctx context.Context, _ *struct{}) (*reconcilerOutput, error) {
	out := &reconcilerOutput{}
	if s.rec == nil {
		return out, nil
	}
	p := s.rec.LastPass()
	out.Body = apitypes.ReconcilerStatus{Leader: s.rec.Leader(), LastPassAt: p.At, LastPassMs: float64(p.Duration.Microseconds()) / 1000,
		Hosts: p.Hosts, VMs: p.VMs, Actions: p.Actions, Errors: p.Errors}
	return out, nil
}
