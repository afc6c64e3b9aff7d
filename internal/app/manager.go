// Package app wires the Nexus processes together: the manager (store,
// authentication, service, HTTP API) and `nexus up`, which runs a manager
// and a local agent in one process with production code paths and dev
// defaults. The cli package parses flags and calls in here.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nexus-microvm/nexus/internal/api"
	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
	"github.com/nexus-microvm/nexus/internal/lifecycle"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/internal/store"
)

// ManagerOptions are the manager's settings (flags and environment).
type ManagerOptions struct {
	Listen            string // NEXUS_LISTEN
	DatabaseURL       string // DATABASE_URL
	Mode              string // NEXUS_MODE
	JoinToken         string // NEXUS_JOIN_TOKEN: shared with the agents
	ReconcileInterval time.Duration
	// OrphanGrace, StuckGrace, HeartbeatTimeout and LeaseTTL tune the
	// reconciler (zero: defaults).
	OrphanGrace      time.Duration
	StuckGrace       time.Duration
	HeartbeatTimeout time.Duration
	LeaseTTL         time.Duration
	Version          string
	// VcpuOvercommit and MemOvercommit scale host capacity for placement.
	VcpuOvercommit float64
	MemOvercommit  float64
	// TokenCacheTTL is how long a verified API token is trusted without
	// re-checking the store.
	TokenCacheTTL time.Duration
	// HoldReconciler leaves the reconciler stopped until StartReconciler:
	// `nexus up` starts it once its local agent has registered, so the
	// first pass never judges the host by the previous run's address.
	HoldReconciler bool
	// AuditRetention is how long audit rows are kept (NEXUS_AUDIT_RETENTION);
	// older ones are pruned hourly. Zero keeps them forever.
	AuditRetention time.Duration
	// MaxStreams and MaxStreamsPerToken cap the log streams relayed at
	// once (NEXUS_MAX_STREAMS, NEXUS_MAX_STREAMS_PER_TOKEN; zero: the API's
	// defaults). The global cap is lowered to what the open-file limit
	// allows after a reserve for everything else (streamBudget).
	MaxStreams, MaxStreamsPerToken int
	// Rates are the API's rate limits by class ("RATE[:BURST]", calls per
	// second; "0" none; "" the mode's default: api.DefaultRateLimits in
	// prod, none in dev): NEXUS_RATE_READ, NEXUS_RATE_MUTATION,
	// NEXUS_RATE_CREATE per token, NEXUS_RATE_AUTH_FAILURE per source.
	Rates RateOptions
	// DefaultQuota is NEXUS_DEFAULT_QUOTA: the limits of projects without
	// a quota of their own, "vms=20,vcpus=40,mem_mib=16384,…" (empty: none).
	DefaultQuota string
	// CORSOrigins is NEXUS_CORS_ORIGINS: the exact origins whose pages may
	// call the API (comma-separated; empty: none).
	CORSOrigins string
	// TLS is --tls-cert, --tls-key and --tls-ca (NEXUS_TLS_*): with a
	// certificate the manager serves HTTPS and presents it to agents; with
	// a CA it requires agents to present a certificate of it (and checks
	// theirs when it calls them). API users need no client certificate.
	TLS pki.Files
}

// Manager is a running manager.
type Manager struct {
	Store      store.Store
	Manager    *manager.Manager
	Reconciler *manager.Reconciler
	Auth       *auth.Authenticator
	API        *api.Server
	Addr       string // bound listen address
	done       <-chan struct{}
	ctx        context.Context
	recOnce    sync.Once
	scheme     string          // http or https
	bg         lifecycle.Group // long-lived goroutines, joined before the store closes
}

// StartReconciler starts the reconciler held by HoldReconciler; it is a
// no-op when it runs already.
func (m *Manager) StartReconciler() {
	m.recOnce.Do(func() { m.bg.Go(func() { m.Reconciler.Run(m.ctx) }) })
}

// URL is the manager's base URL.
func (m *Manager) URL() string { return m.scheme + "://" + m.Addr }

// Wait blocks until the HTTP server has stopped and the store is closed.
func (m *Manager) Wait() { <-m.done }

// StartManager opens the store (applying migrations), builds the service
// and API, and starts serving on o.Listen. It runs until ctx ends.
func StartManager(ctx context.Context, o ManagerOptions, log *slog.Logger) (*Manager, error) {
	if o.Mode != manager.ModeDev && o.Mode != manager.ModeProd {
		return nil, fmt.Errorf("NEXUS_MODE must be dev or prod, not %q", o.Mode)
	}
	if err := o.TLS.Validate(); err != nil {
		return nil, err
	}
	if o.Mode == manager.ModeProd && !o.TLS.Enabled() && !pki.LoopbackOnly(o.Listen) {
		return nil, fmt.Errorf("prod mode serves plain HTTP only on loopback, and %s is not: set --tls-cert and --tls-key (and --tls-ca for agents' certificates), or listen on 127.0.0.1 behind a TLS proxy", o.Listen)
	}
	limits, err := o.Rates.limits(o.Mode)
	if err != nil {
		return nil, err
	}
	origins, err := api.ParseCORSOrigins(o.CORSOrigins)
	if err != nil {
		return nil, fmt.Errorf("NEXUS_CORS_ORIGINS: %w", err)
	}
	if o.JoinToken == "" {
		return nil, errors.New("a join token is required (NEXUS_JOIN_TOKEN): agents and manager must share it")
	}
	if o.Mode == manager.ModeProd && len(o.JoinToken) < pki.MinJoinTokenBytes {
		return nil, fmt.Errorf("prod mode needs a join token of at least %d bytes (NEXUS_JOIN_TOKEN is %d): it is what lets an agent start processes as root; make one with `head -c 32 /dev/urandom | base64`",
			pki.MinJoinTokenBytes, len(o.JoinToken))
	}
	var tlsFiles *pki.Reloader
	var agentTransport http.RoundTripper
	if o.TLS.Enabled() || o.TLS.CA != "" {
		var err error
		if tlsFiles, err = pki.NewReloader(o.TLS, log); err != nil {
			return nil, err
		}
		// One transport to every agent: the manager's certificate as the
		// client's, agents' certificates checked against the CA.
		tr := jsonhttp.NewTransport()
		tlsFiles.ConfigureTransport(tr)
		agentTransport = tr
	}
	defQuota, err := ParseQuota(o.DefaultQuota)
	if err != nil {
		return nil, fmt.Errorf("NEXUS_DEFAULT_QUOTA: %w", err)
	}
	st, err := store.Open(ctx, o.DatabaseURL, store.WithLogger(log), store.WithDefaultQuota(defQuota))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	ttl := o.TokenCacheTTL
	if ttl == 0 {
		ttl = 30 * time.Second
	}
	authn := auth.NewAuthenticator(st, ttl, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mgr := manager.New(ctx, manager.Config{
		Mode: o.Mode, JoinToken: o.JoinToken, VcpuOvercommit: o.VcpuOvercommit, MemOvercommit: o.MemOvercommit,
		HeartbeatTimeout: o.HeartbeatTimeout, Metrics: reg, AgentTransport: agentTransport,
	}, st, log)
	mgr.Tokens.OnChange = authn.Invalidate
	host, _ := os.Hostname()
	rec := mgr.NewReconciler(manager.ReconcilerConfig{
		Interval: o.ReconcileInterval, Holder: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), uuid.NewString()[:8]),
		LeaseTTL: o.LeaseTTL, OrphanGrace: o.OrphanGrace, StuckGrace: o.StuckGrace, Metrics: reg,
	})
	maxStreams := streamBudget(o.MaxStreams, raiseNoFile(), log)
	srv := api.New(api.Deps{
		MaxStreams: maxStreams, MaxStreamsPerToken: o.MaxStreamsPerToken, RateLimits: limits, CORSOrigins: origins,
		VMs: mgr.VMs, Images: mgr.Images, Templates: mgr.Templates, Snapshots: mgr.Snapshots, Pools: mgr.Pools, Groups: mgr.Groups, Hosts: mgr.Hosts, Tokens: mgr.Tokens,
		Audit: st, Quotas: st, Ping: st.Ping, JoinToken: o.JoinToken, Fleet: st, AgentCertRequired: o.TLS.Enabled() && o.TLS.CA != "",
		Reconciler: rec, Auth: authn, Log: log, Registry: reg, Version: o.Version,
	})

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("listen on %s: %w", o.Listen, err)
	}
	m := &Manager{Store: st, Manager: mgr, Reconciler: rec, Auth: authn, API: srv, Addr: ln.Addr().String(), ctx: ctx, scheme: "http"}
	if o.TLS.Enabled() {
		ln = tls.NewListener(ln, tlsFiles.ServerConfig(false))
		m.scheme = "https"
		if o.TLS.CA == "" {
			log.Warn("TLS without --tls-ca: agents are not asked for certificates; only the join token authenticates them")
		}
	}
	m.bg.Go(func() { authn.Run(ctx, 10*time.Second) })
	if o.AuditRetention > 0 {
		m.bg.Go(func() { runAuditPrune(ctx, st, o.AuditRetention, time.Hour, log) })
	}
	if !o.HoldReconciler {
		m.StartReconciler()
	}
	// A token revoked or rotated on any manager stops working on all of them.
	m.bg.Go(func() { st.Listen(ctx, manager.TokenChannel, authn.Invalidate) })
	// A host re-registered at a new address through another manager.
	m.bg.Go(func() { st.Listen(ctx, manager.HostChannel, mgr.Hosts.Forget) })
	// Streams end and in-flight requests drain first; then background work
	// (async boots), then the long-lived goroutines (the reconciler releases
	// its lease on its way out), and the store last: nothing may write to a
	// closed store.
	m.done = httpmw.Serve(ctx, ln, srv, log, httpmw.Budgets{Drain: 5 * time.Second, Cleanup: 20 * time.Second}, func(cleanup context.Context) {
		mgr.Wait(cleanup)
		if !m.bg.Wait(cleanup) {
			log.Error("shutdown: background goroutines did not end in time; closing the store anyway")
		}
		authn.Flush(cleanup)
		mgr.Close()
		st.Close()
	})
	log.Info("manager listening", "addr", m.Addr, "url", m.URL(), "store", st.Engine(), "mode", o.Mode,
		"max_streams", maxStreams, "rate_read", limits.Read.String(), "rate_mutation", limits.Mutation.String(),
		"rate_create", limits.Create.String(), "rate_auth_failure", limits.AuthFailure.String(),
		"tls", o.TLS.Enabled(), "agent_certs", o.TLS.Enabled() && o.TLS.CA != "")
	return m, nil
}

// Bootstrap creates an admin token for owner and returns its secret. It is
// how the first token comes to exist (`nexus up`, `nexus manager
// bootstrap`); there is no default password.
func Bootstrap(ctx context.Context, st auth.TokenWriter, owner string) (string, store.APIToken, error) {
	return auth.Issue(ctx, st, "", owner, auth.RoleAdmin, auth.AllProjects)
}

// auditPruner is the part of the store runAuditPrune uses.
type auditPruner interface {
	PruneAudit(ctx context.Context, cutoff time.Time) (int64, error)
}

// runAuditPrune deletes audit rows older than retention at start and then
// every interval, until ctx ends. Every manager runs it; deleting what
// another manager deleted already is a no-op.
func runAuditPrune(ctx context.Context, st auditPruner, retention, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pruneAudit(ctx, st, retention, time.Now(), log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneAudit deletes the audit rows that started before now - retention.
func pruneAudit(ctx context.Context, st auditPruner, retention time.Duration, now time.Time, log *slog.Logger) {
	n, err := st.PruneAudit(ctx, now.Add(-retention))
	switch {
	case err != nil && ctx.Err() == nil:
		log.Error("audit: prune failed; it is tried again in an hour", "retention", retention, "err", err)
	case n > 0:
		log.Info("audit: pruned rows older than the retention", "rows", n, "retention", retention)
	}
}

// RateOptions are the rate limit settings as given (ManagerOptions.Rates).
type RateOptions struct {
	Read, Mutation, Create, AuthFailure string
}

// limits parses the settings; an empty one takes mode's default.
func (r RateOptions) limits(mode string) (api.RateLimits, error) {
	var out api.RateLimits
	def := api.RateLimits{}
	if mode == manager.ModeProd {
		def = api.DefaultRateLimits
	}
	for _, f := range []struct {
		env, v string
		def    api.Rate
		dst    *api.Rate
	}{
		{"NEXUS_RATE_READ", r.Read, def.Read, &out.Read},
		{"NEXUS_RATE_MUTATION", r.Mutation, def.Mutation, &out.Mutation},
		{"NEXUS_RATE_CREATE", r.Create, def.Create, &out.Create},
		{"NEXUS_RATE_AUTH_FAILURE", r.AuthFailure, def.AuthFailure, &out.AuthFailure},
	} {
		if f.v == "" {
			*f.dst = f.def
			continue
		}
		rt, err := api.ParseRate(f.v)
		if err != nil {
			return api.RateLimits{}, fmt.Errorf("%s: %w", f.env, err)
		}
		*f.dst = rt
	}
	return out, nil
}

// ParseQuota reads a quota as "name=N,…" with the names of the API's
// limits (vms, vcpus, mem_mib, snapshots, snapshot_bytes, images,
// templates, streams); a name not given is no limit.
func ParseQuota(s string) (store.QuotaLimits, error) {
	var l store.QuotaLimits
	fields := map[string]**int64{
		"vms": &l.VMs, "vcpus": &l.VCPUs, "mem_mib": &l.MemMiB, "snapshots": &l.Snapshots,
		"snapshot_bytes": &l.SnapshotBytes, "images": &l.Images, "templates": &l.Templates, "streams": &l.Streams,
	}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		dst, known := fields[strings.TrimSpace(k)]
		if !ok || !known {
			return store.QuotaLimits{}, fmt.Errorf("%q: want name=N with a name of vms, vcpus, mem_mib, snapshots, snapshot_bytes, images, templates, streams", kv)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return store.QuotaLimits{}, fmt.Errorf("%q: the limit must be a non-negative integer", kv)
		}
		if *dst != nil {
			return store.QuotaLimits{}, fmt.Errorf("%q: %s is given twice", kv, k)
		}
		*dst = &n
	}
	return l, nil
}
