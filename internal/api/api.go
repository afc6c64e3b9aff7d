// Package api is the manager's HTTP layer (DESIGN.md section 2): routing,
// authentication and policy, the error contract, request ids and access
// logs, Prometheus metrics and the OpenAPI document generated from the Go
// types with huma. Handlers are thin: they call the manager service and
// turn its errors into the contract in one function (toAPIError).
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humachi"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/internal/manager"
	fleetmetrics "github.com/nexus-microvm/nexus/internal/metrics"
)

// Deps are what the HTTP layer needs: one service per resource, each
// through the interface its routes define.
type Deps struct {
	VMs       VMService
	Images    ImageService
	Templates TemplateService
	Snapshots SnapshotService
	Pools     PoolService
	Groups    GroupService
	Hosts     HostService
	Tokens    TokenService
	Audit     AuditLog
	Quotas    QuotaService
	Ping      func(context.Context) error // the store answers (readiness)
	JoinToken string                      // agents present it on their routes
	// AgentCertRequired: agents' routes also need a client certificate of
	// the manager's CA (mutual TLS), and a host registers only under a
	// name its certificate carries, at an https address.
	AgentCertRequired bool
	Reconciler        *manager.Reconciler // nil: no reconciler status
	Auth              Authenticator
	Log               *slog.Logger
	// Registry receives the API's metrics; /metrics serves it.
	Registry *prometheus.Registry
	Version  string
	// MaxStreams and MaxStreamsPerToken cap the log streams relayed at
	// once (zero: DefaultMaxStreams, DefaultMaxStreamsPerToken).
	MaxStreams, MaxStreamsPerToken int
	// CORSOrigins are the exact origins (scheme://host[:port]) whose
	// browsers may call the API cross-origin (NEXUS_CORS_ORIGINS); empty:
	// none, no CORS headers at all. ParseCORSOrigins checks them.
	CORSOrigins []string
	// RateLimits limit each token's calls by class and each source's calls
	// without a valid token (zero: no limits).
	RateLimits RateLimits
	// Fleet, when set, adds the fleet gauges (VMs, hosts, snapshots,
	// store) to /metrics; they are read from it at scrape time.
	Fleet fleetmetrics.FleetStore
}

// Server is the manager's HTTP handler.
type Server struct {
	vms       VMService
	images    ImageService
	templates TemplateService
	pools     PoolService
	groups    GroupService
	snapshots SnapshotService
	hosts     HostService
	tokens    TokenService
	audit     AuditLog
	quotas    QuotaService
	ping      func(context.Context) error
	joinToken string
	agentCert bool
	rec       *manager.Reconciler
	auth      Authenticator
	log       *slog.Logger
	api       huma.API
	mux       *chi.Mux
	reg       *prometheus.Registry
	m         *metrics

	// ops lists every registered operation with its policy, so tests can
	// walk them and a new route cannot forget its policy.
	ops []*huma.Operation

	// streams counts the log streams being relayed, against their caps.
	streams *streamLimiter
	// limits are the rate limits per token and per source.
	limits *rateLimiter
}

// huma builds its errors (validation, bad JSON, 404 …) through a
// package-level hook, with no per-API setting; it is set once here, when
// the package loads, so every huma error takes the contract's shape and no
// call to New changes global state.
//
// huma.NewError is the hook's context-free twin, which huma also uses to
// name the error schema in the document: both answer *apierr.Error.
func init() {
	huma.NewErrorWithContext = humaError
	huma.NewError = func(status int, msg string, errs ...error) huma.StatusError {
		return humaError(nil, status, msg, errs...)
	}
}

// New returns the manager's HTTP handler with every route of routes.go.
func New(d Deps) *Server {
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
		d.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s := &Server{
		vms: d.VMs, images: d.Images, templates: d.Templates, pools: d.Pools, groups: d.Groups, snapshots: d.Snapshots, hosts: d.Hosts, tokens: d.Tokens,
		audit: d.Audit, quotas: d.Quotas, ping: d.Ping, joinToken: d.JoinToken, agentCert: d.AgentCertRequired,
		rec: d.Reconciler, auth: d.Auth, log: d.Log, reg: d.Registry, m: newMetrics(d.Registry),
		streams: newStreamLimiter(d.Registry, d.MaxStreams, d.MaxStreamsPerToken),
		limits:  newRateLimiter(d.Registry, d.RateLimits),
	}

	mux := chi.NewMux()
	if len(d.CORSOrigins) > 0 {
		mux.Use(corsMiddleware(d.CORSOrigins))
	}
	mux.Use(httpmw.Middleware(d.Log, "/healthz", "/readyz", "/metrics"))
	mux.Use(s.m.middleware)
	mux.Use(jsonByDefault)
	mux.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, r, apierr.Newf(http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path).
			WithSuggestion("see GET /openapi.json for the API"))
	})
	mux.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, r, apierr.Newf(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not allowed on %s", r.Method, r.URL.Path))
	})
	// OpenMetrics when the scraper asks for it (Accept), text format otherwise.
	mux.Handle("/metrics", promhttp.HandlerFor(d.Registry, promhttp.HandlerOpts{Registry: d.Registry, EnableOpenMetrics: true}))

	cfg := huma.DefaultConfig("Nexus API", d.Version)
	cfg.Info.Description = "Firecracker microVMs as easy to run as containers. Errors always have the shape " +
		"{error, status, message, fault_message?, suggestion?, request_id}."
	cfg.Info.License = &huma.License{Name: "Apache-2.0", URL: "https://www.apache.org/licenses/LICENSE-2.0"}
	// Relative: the manager that serves the document is the server.
	cfg.Servers = []*huma.Server{{URL: "/", Description: "the manager serving this document"}}
	cfg.CreateHooks = nil // no $schema fields or Link headers in bodies
	cfg.DocsPath = ""
	cfg.RejectUnknownQueryParameters = true
	cfg.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		"bearer":    {Type: "http", Scheme: "bearer", Description: "an API token: Authorization: Bearer nxs_…"},
		"joinToken": {Type: "http", Scheme: "bearer", Description: "the fleet's join token (agents only): Authorization: Bearer <NEXUS_JOIN_TOKEN>"},
	}
	cfg.Transformers = append(cfg.Transformers, stampRequestID)
	s.api = humachi.New(mux, cfg)
	s.api.UseMiddleware(s.guard)
	s.mux = mux
	s.routes()
	if d.Fleet != nil {
		s.registerFleetMetrics(d.Fleet)
	}
	if err := s.uiRoutes(); err != nil {
		// The files are embedded at build time: this is a broken build.
		panic(err)
	}
	return s
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// OpenAPI returns the generated OpenAPI document.
func (s *Server) OpenAPI() *huma.OpenAPI { return s.api.OpenAPI() }

// Operations returns every registered operation (for policy tests).
func (s *Server) Operations() []*huma.Operation { return s.ops }

// humaError turns huma's own errors (validation, unreadable body, unknown
// query parameters …) into the error contract. Validation is 400, not 422:
// the contract says bad input is a 400.
func humaError(ctx huma.Context, status int, msg string, errs ...error) huma.StatusError {
	if status == http.StatusUnprocessableEntity {
		status = http.StatusBadRequest
	}
	var parts []string
	for _, e := range errs {
		if e == nil {
			continue
		}
		var d *huma.ErrorDetail
		if errors.As(e, &d) {
			if d.Location != "" {
				parts = append(parts, d.Location+": "+d.Message)
			} else {
				parts = append(parts, d.Message)
			}
			continue
		}
		if status < 500 {
			parts = append(parts, e.Error())
		}
	}
	message := msg
	if len(parts) > 0 {
		message = msg + ": " + strings.Join(parts, "; ")
	}
	e := apierr.New(status, apierr.CodeFor(status), message)
	if status >= 500 {
		e = apierr.Internal(errors.Join(append([]error{errors.New(msg)}, errs...)...))
	} else if status == http.StatusBadRequest {
		e.Code = "invalid_request"
		e.Suggestion = "see GET /openapi.json for the request's schema"
	}
	if ctx != nil {
		e.RequestID = httpmw.RequestID(ctx.Context())
		httpmw.SetErrorCode(ctx.Context(), codeOrDefault(e))
	}
	return e
}

func codeOrDefault(e *apierr.Error) string {
	if e.Code != "" {
		return e.Code
	}
	return fmt.Sprint(e.Status)
}

// stampRequestID fills request_id and a default code into every error body
// huma writes, and records the code for the access log.
func stampRequestID(ctx huma.Context, _ string, v any) (any, error) {
	e, ok := v.(*apierr.Error)
	if !ok {
		return v, nil
	}
	c := *e
	c.RequestID = httpmw.RequestID(ctx.Context())
	if c.Code == "" {
		c.Code = apierr.CodeFor(c.Status)
	}
	httpmw.SetErrorCode(ctx.Context(), c.Code)
	return &c, nil
}

// jsonByDefault reads a body sent without a JSON content type (curl -d
// says form-urlencoded) as JSON: the API speaks nothing else.
func jsonByDefault(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			ct := r.Header.Get("Content-Type")
			if ct == "" || strings.HasPrefix(ct, "application/x-www-form-urlencoded") || strings.HasPrefix(ct, "text/plain") {
				r.Header.Set("Content-Type", "application/json")
			}
		}
		next.ServeHTTP(w, r)
	})
}

// writeErr writes an error outside huma (router fallbacks, streams).
func writeErr(w http.ResponseWriter, r *http.Request, err error) {
	e := apierr.Write(w, httpmw.RequestID(r.Context()), err)
	httpmw.SetErrorCode(r.Context(), e.Code)
}

// toAPIError is the one place service, store and auth errors become the
// error contract. Internal causes are logged, never sent.
func (s *Server) toAPIError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	// A project's quota, wherever in the chain the store's refusal is.
	if qe, ok := quotaError(err); ok {
		return qe
	}
	// A service error first: it may wrap an agent's *apierr.Error, whose
	// status and words are the agent's, not the caller's.
	if me, ok := manager.AsError(err); ok {
		status := http.StatusInternalServerError
		switch me.Kind {
		case manager.KindInvalid, manager.KindRejected:
			status = http.StatusBadRequest
		case manager.KindNotFound:
			status = http.StatusNotFound
		case manager.KindConflict:
			status = http.StatusConflict
		case manager.KindForbidden:
			status = http.StatusForbidden
		case manager.KindNoCapacity:
			status = http.StatusServiceUnavailable
		case manager.KindUnavailable:
			status = http.StatusBadGateway
		case manager.KindTimeout:
			status = http.StatusGatewayTimeout
		}
		if status == http.StatusInternalServerError {
			s.log.Error("request failed", "request_id", httpmw.RequestID(ctx), "err", err)
			out := apierr.Internal(err)
			if me.Suggestion != "" {
				out = out.WithSuggestion(me.Suggestion)
			}
			return out
		}
		return &apierr.Error{Status: status, Code: me.Code, Message: me.Message, FaultMessage: me.Fault, Suggestion: me.Suggestion, LogTail: me.LogTail}
	}
	if ae, ok := err.(*apierr.Error); ok {
		return ae // the handler's own answer
	}
	var he huma.HeadersError
	if errors.As(err, &he) {
		return err // the handler's own answer with headers (Retry-After)
	}
	if errors.Is(err, context.Canceled) {
		return apierr.New(499, "canceled", "the request was canceled")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return apierr.New(http.StatusGatewayTimeout, "timeout", "the operation timed out")
	}
	s.log.Error("request failed", "request_id", httpmw.RequestID(ctx), "err", err)
	return apierr.Internal(err)
}
