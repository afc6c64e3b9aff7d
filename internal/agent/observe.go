package agent

import (
	"crypto/subtle"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
)

// The agent's observability endpoints, outside /agent/v1:
//
//	GET /healthz   liveness, unauthenticated (a load balancer or systemd
//	               watchdog needs no secret); says nothing about the host
//	GET /metrics   Prometheus (OpenMetrics on request): per-VM firecracker
//	               counters, VMM CPU and memory, the agent's own process.
//	               Authenticated: the join token, or the read-only metrics
//	               token (AGENT_METRICS_TOKEN) so Prometheus never holds the
//	               join token, which can start processes as root.

// newRegistry builds the agent's metrics registry.
func (a *Agent) newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		a.fcm,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "nexus_agent_vmms", Help: "Live VMM processes the agent supervises.",
		}, func() float64 { return float64(len(a.sup.List())) }),
	)
	sim := "false"
	if a.cfg.Simulated {
		sim = "true"
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nexus_agent_info", Help: "Always 1; the agent's version, its VMM's version and whether that is firecracker-sim.",
		ConstLabels: prometheus.Labels{"version": a.cfg.Version, "vmm_version": a.cfg.VMMVersion, "simulated": sim},
	})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}

// observeRoutes adds /healthz and /metrics, each with its own rule, to
// the router before the join-token group.
func (a *Agent) observeRoutes(r chi.Router) {
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, agentapi.OK{OK: true})
	})
	h := promhttp.HandlerFor(a.newRegistry(), promhttp.HandlerOpts{EnableOpenMetrics: true, ErrorLog: nil})
	r.Get("/metrics", func(w http.ResponseWriter, r *http.Request) {
		if !a.metricsAllowed(r.Header.Get("Authorization")) {
			a.fail(w, r, apierr.Unauthorized("missing or wrong metrics token").
				WithSuggestion("scrape with 'Authorization: Bearer <AGENT_METRICS_TOKEN>' (or the join token)"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// metricsAllowed accepts the join token or the metrics token, in constant
// time.
func (a *Agent) metricsAllowed(header string) bool {
	ok := subtle.ConstantTimeCompare([]byte(header), []byte("Bearer "+a.cfg.Token)) == 1
	if a.cfg.MetricsToken != "" {
		ok = subtle.ConstantTimeCompare([]byte(header), []byte("Bearer "+a.cfg.MetricsToken)) == 1 || ok
	}
	return ok
}

// stats serves GET /agent/v1/vms/{id}/stats: the VM's values as /metrics
// exports them (the console's charts read these through the manager).
func (a *Agent) stats(w http.ResponseWriter, r *http.Request, id string) {
	vs := a.fcm.refresh(id)
	if len(vs) == 0 {
		a.fail(w, r, apierr.NotFound("live vmm of vm", id))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.VMStats{At: a.fcm.now().UTC(), Samples: vs[0].samples})
}

// liveVMMs lists the supervisor's live VMMs for the metrics.
func (a *Agent) liveVMMs() []vmmRef {
	hs := a.sup.List()
	out := make([]vmmRef, len(hs))
	for i, h := range hs {
		out[i] = vmmRef{VMID: h.VMID, PID: h.PID}
	}
	return out
}
