package api

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// HostService is the host registry as the host and agent routes use it
// (manager.Hosts).
type HostService interface {
	RegisterHost(ctx context.Context, r apitypes.RegisterHostRequest) (store.Host, error)
	Heartbeat(ctx context.Context, hostID string, total, allocated apitypes.Resources, vms int) error
	HeartbeatInterval() time.Duration
	HostEvent(ctx context.Context, hostID string, ev apitypes.HostEvent) error
	ListHosts(ctx context.Context) ([]store.Host, error)
	SetHostDraining(ctx context.Context, ref string, drain bool) error
	RemoveHost(ctx context.Context, ref string) error
}

type hostListOutput struct {
	Body apitypes.HostList
}

func (s *Server) listHosts(ctx context.Context, _ *struct{}) (*hostListOutput, error) {
	hosts, err := s.hosts.ListHosts(ctx)
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
	Body apitypes.HostRegistration
}

func (s *Server) registerHost(ctx context.Context, in *registerHostInput) (*registerHostOutput, error) {
	if names, ok := ctx.Value(agentNamesKey{}).([]string); ok {
		// A certificate names one host: it cannot register another.
		if !slices.Contains(names, in.Body.Name) {
			return nil, apierr.Newf(http.StatusForbidden, "agent_cert_mismatch", "host %q presented a certificate for %s", in.Body.Name, strings.Join(names, ", ")).
				WithSuggestion("set AGENT_NAME to the name of its certificate, or issue one for this name (`nexus cert issue --host NAME`)")
		}
		// The manager sends the join token to that address: never in clear.
		if !strings.HasPrefix(in.Body.Addr, "https://") {
			return nil, apierr.BadRequest("host %q registers at %s: with mutual TLS, agents are reached over https only", in.Body.Name, in.Body.Addr).
				WithSuggestion("give the agent --tls-cert and --tls-key (it then advertises https://)")
		}
	}
	h, err := s.hosts.RegisterHost(ctx, in.Body)
	if err != nil {
		return nil, err
	}
	return &registerHostOutput{Body: apitypes.HostRegistration{ID: h.ID, HeartbeatIntervalMs: int(s.hosts.HeartbeatInterval().Milliseconds())}}, nil
}

type heartbeatInput struct {
	ID   string `path:"id" maxLength:"64"`
	Body apitypes.HeartbeatRequest
}

func (s *Server) hostHeartbeat(ctx context.Context, in *heartbeatInput) (*okOutput, error) {
	return ok(), s.hosts.Heartbeat(ctx, in.ID, in.Body.Capacity, in.Body.Allocated, in.Body.VMs)
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
	if err := s.ping(ctx); err != nil {
		checks["store"] = "unreachable"
		ready = false
	}
	hosts, err := s.hosts.ListHosts(ctx)
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
	return ok(), s.hosts.HostEvent(ctx, in.ID, in.Body)
}

type hostIDPath struct {
	ID string `path:"id" maxLength:"253" doc:"host id or name"`
}

func (s *Server) drainHost(ctx context.Context, in *hostIDPath) (*okOutput, error) {
	return ok(), s.hosts.SetHostDraining(ctx, in.ID, true)
}

func (s *Server) undrainHost(ctx context.Context, in *hostIDPath) (*okOutput, error) {
	return ok(), s.hosts.SetHostDraining(ctx, in.ID, false)
}

func (s *Server) removeHost(ctx context.Context, in *hostIDPath) (*okOutput, error) {
	return ok(), s.hosts.RemoveHost(ctx, in.ID)
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
