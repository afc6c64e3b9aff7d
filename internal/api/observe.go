package api

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"sort"

	fleetmetrics "github.com/nexus-microvm/nexus/internal/metrics"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// observeRoutes are what the web console and Prometheus read besides the
// resources themselves: who a token is, a VM's metric values, and the
// agents to scrape.
func (s *Server) observeRoutes() {
	register(s, "whoami", http.MethodGet, "/v1/whoami", "The caller's token: owner, role and project", viewer, s.whoami)
	register(s, "vm-stats", http.MethodGet, "/v1/vms/{id}/stats", "A VM's current metric values, as its agent exports them on /metrics", viewer, s.vmStats)
	register(s, "prometheus-sd", http.MethodGet, "/v1/discovery/prometheus", "The agents' metrics endpoints, in Prometheus's HTTP service discovery format", viewer, s.prometheusSD)
}

// registerFleetMetrics adds the fleet gauges (VMs, hosts, snapshots,
// store) to the manager's registry; they are computed at scrape time.
func (s *Server) registerFleetMetrics(st fleetmetrics.FleetStore) {
	s.reg.MustRegister(fleetmetrics.NewFleet(fleetmetrics.FleetConfig{
		Store: st, Hosts: s.hosts.ListHosts, Log: s.log,
	}))
}

type whoamiOutput struct {
	Body apitypes.Whoami
}

func (s *Server) whoami(ctx context.Context, _ *struct{}) (*whoamiOutput, error) {
	p, _ := principal(ctx)
	return &whoamiOutput{Body: apitypes.Whoami{TokenID: p.TokenID, Owner: p.Owner, Role: string(p.Role), Project: p.Project}}, nil
}

type vmStatsOutput struct {
	Body apitypes.VMStats
}

func (s *Server) vmStats(ctx context.Context, in *vmIDPath) (*vmStatsOutput, error) {
	st, err := s.vms.VMStats(ctx, scope(ctx), in.ID)
	if err != nil {
		return nil, err
	}
	out := &vmStatsOutput{Body: apitypes.VMStats{ID: in.ID, At: st.At, Samples: make([]apitypes.Sample, 0, len(st.Samples))}}
	for _, x := range st.Samples {
		out.Body.Samples = append(out.Body.Samples, apitypes.Sample{Name: x.Name, Type: x.Type, Value: x.Value})
	}
	return out, nil
}

type sdOutput struct {
	Body []apitypes.SDTargetGroup
}

// prometheusSD lists one target per registered host, whatever its state:
// an unreachable agent should show as a target that is down, not vanish.
// Labels name the host as the manager's gauges do (host), so per-host
// dashboards join both.
func (s *Server) prometheusSD(ctx context.Context, _ *struct{}) (*sdOutput, error) {
	hosts, err := s.hosts.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	out := &sdOutput{Body: make([]apitypes.SDTargetGroup, 0, len(hosts))}
	for _, h := range hosts {
		target, scheme, ok := sdTarget(h)
		if !ok {
			continue
		}
		out.Body = append(out.Body, apitypes.SDTargetGroup{
			Targets: []string{target},
			Labels: map[string]string{
				"__scheme__": scheme, "__metrics_path__": "/metrics",
				"host": h.Name, "host_id": h.ID, "host_state": string(h.State),
			},
		})
	}
	return out, nil
}

// sdTarget turns an agent's advertised URL into host:port and scheme.
func sdTarget(h store.Host) (string, string, bool) {
	u, err := url.Parse(h.Addr)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", "", false
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	return host, u.Scheme, true
}
