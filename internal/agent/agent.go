// Package agent is the host agent's HTTP server (DESIGN.md section 3): the
// manager's privileged executor on one host. It creates TAPs, runs VMM
// processes, relays calls to each VM's firecracker socket, reports what is
// on the host and removes what the manager says to remove. Every request
// must carry the join token; everything it touches lives under FC_RUN_DIR.
package agent

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

// Network is the host networking the agent needs (network.Network).
type Network interface {
	EnsureBridge(ctx context.Context) (network.Bridge, error)
	EnsureTap(ctx context.Context, name, vmID string) error
	DeleteTap(ctx context.Context, name string) error
	// SetTapOwner lets a jailed VMM (uid, gid, no capabilities) attach to
	// its VM's TAP; network.ErrNoTap when the VM has none.
	SetTapOwner(ctx context.Context, name, vmID string, uid, gid int) error
	ListTaps(ctx context.Context, prefix string) ([]network.Tap, error)
	BridgeName() string
	Backend() network.NATBackend
}

// Isolator makes and removes isolated VMs' namespaces (network.Network);
// a host whose Network lacks it (a hollow host) refuses isolated VMs.
type Isolator interface {
	EnsureIsolated(ctx context.Context, c network.Isolated) error
	DeleteIsolated(ctx context.Context, vmID, nsPath string) error
	ListVeths(ctx context.Context) ([]network.Tap, error)
	IsolatedTap(nsPath, tap, vmID string) (network.Tap, bool)
}

// VMMs runs the VMs' VMM processes (vmm.Supervisor; hollow.VMMs on a
// simulated host).
type VMMs interface {
	Spawn(ctx context.Context, vmID string, opts vmm.SpawnOptions) (h vmm.Handle, already bool, err error)
	Stop(ctx context.Context, vmID string, grace time.Duration) error
	Get(vmID string) (vmm.Handle, bool)
	List() []vmm.Handle
	Exits() <-chan vmm.Exit
}

// Config configures the agent.
type Config struct {
	Name         string
	Layout       hostlayout.Layout
	Token        string        // join token the manager must present
	StopGrace    time.Duration // SIGTERM → SIGKILL grace on stop
	ProxyTimeout time.Duration // per relayed firecracker call
	// MaxSpawns bounds the spawns (a VMM's start and the calls it
	// carries) that run at once; the rest wait their turn, in order.
	// Zero: the host's CPU count, at least 2.
	MaxSpawns  int
	Version    string
	VMMVersion string // what the VMM binary says it is
	Simulated  bool   // the VMM binary is firecracker-sim
	// ReadRoots are the directories files firecracker reads (kernels,
	// drives, snapshots) must lie under; nil allows any path (dev mode).
	ReadRoots []string
	// ImagesDir is FC_IMAGES_DIR: the allow-listed root of image files.
	ImagesDir string
	// DevMode enables GET /files/tail for any file under the VM run dirs.
	DevMode bool
	// Owner is the agent's instance id (the ownership mark).
	Owner string
	// Jail, TLS and MutualTLS are reported by health: how VMMs are
	// confined, and how the agent serves.
	Jail           string
	TLS, MutualTLS bool
	// Bridge is the VM bridge as the agent set it up: its subnet and
	// gateway are reported at registration, for the manager to give each
	// VM an address. The zero value reports none.
	Bridge network.Bridge
	// MetricsToken, when set, also opens GET /metrics (and nothing else):
	// Prometheus gets it instead of the join token.
	MetricsToken string
	// KeepAlive is the period of SSE comments on idle log streams (default 15s).
	KeepAlive time.Duration
	// Capacity, when not zero, is the total the agent reports instead of
	// the machine's (hollow hosts in placement tests).
	Capacity agentapi.Resources
}

// Agent serves the agent API.
type Agent struct {
	cfg   Config
	sup   VMMs
	net   Network
	log   *slog.Logger
	proxy *proxy
	sums  *sumCache // image checksums (images.go)
	// guests watches new VMMs' consoles for the guest's readiness
	// (console.go); it reports only when the agent has a manager.
	guests *consoleWatcher
	// fcm follows the VMs' metrics files (fcmetrics.go).
	fcm *fcMetrics
	// spawnSlots holds a token per spawn running (Config.MaxSpawns). A
	// spawn is mostly CPU: the VMM's start, the TAP, the run dir. Ten at
	// once on a 2-core host shared the CPUs ten ways and all finished
	// late (p50 1.6-2.4x the floor's); two at a time, the first finish
	// early and the last no later (p50 1.2-1.5x).
	spawnSlots chan struct{}
}

// spawnTurn is how long a spawn keeps its slot (Config.MaxSpawns): a
// VMM's start and its calls take milliseconds; one still running after
// this lets the next spawn go.
const spawnTurn = time.Second

// New returns an agent using sup for processes and nw for networking.
func New(cfg Config, sup VMMs, nw Network, log *slog.Logger) (*Agent, error) {
	if cfg.Token == "" {
		return nil, errors.New("agent: a join token is required")
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 3 * time.Second
	}
	if cfg.ProxyTimeout == 0 {
		cfg.ProxyTimeout = 30 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.MaxSpawns <= 0 {
		cfg.MaxSpawns = max(2, runtime.NumCPU())
	}
	a := &Agent{cfg: cfg, sup: sup, net: nw, log: log, sums: newSumCache(), guests: newConsoleWatcher(cfg.Layout.ConsolePath),
		spawnSlots: make(chan struct{}, cfg.MaxSpawns)}
	a.fcm = newFCMetrics(cfg.Layout, a.liveVMMs)
	a.proxy = newProxy(cfg.Layout, cfg.ProxyTimeout, log)
	a.proxy.readRoots = cfg.ReadRoots
	a.proxy.imagesDir = cfg.ImagesDir
	a.proxy.jailOf = func(id string) *vmm.JailInfo {
		if h, ok := sup.Get(id); ok {
			return h.Jail
		}
		return nil
	}
	return a, nil
}

// Handler returns the agent API's HTTP handler.
func (a *Agent) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(httpmw.Middleware(a.log, agentapi.Prefix+"/health", agentapi.Prefix+"/inventory", "/healthz", "/metrics"))
	// Unknown paths answer only to the join token, as before /healthz.
	r.NotFound(a.authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, apierr.Newf(http.StatusNotFound, "not_found", "no agent endpoint %s %s", r.Method, r.URL.Path))
	})).ServeHTTP)
	r.MethodNotAllowed(a.authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, apierr.Newf(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not allowed on %s", r.Method, r.URL.Path))
	})).ServeHTTP)
	a.observeRoutes(r) // /healthz and /metrics: rules of their own (observe.go)
	r.With(a.authenticate).Route(agentapi.Prefix, func(r chi.Router) {
		r.Get("/health", a.health)
		r.Get("/capacity", a.capacity)
		r.Get("/inventory", a.inventory)
		r.Get("/files/tail", a.tailFiles)
		r.Delete("/taps/{name}", a.deleteTap)
		r.Route("/vms/{id}", func(r chi.Router) {
			r.Post("/tap", a.vm(a.tap))
			r.Post("/spawn", a.vm(a.spawn))
			r.Post("/stop", a.vm(a.stop))
			r.Delete("/", a.vm(a.delete))
			r.Get("/logs", a.vm(a.logs))
			r.Get("/logs/stream", a.vm(a.streamLogs))
			r.Get("/metrics", a.vm(a.metrics))
			r.Get("/stats", a.vm(a.stats))
			r.Post("/proxy-batch", a.vm(a.proxyBatch))
			r.HandleFunc("/proxy", a.vm(a.proxy.serve))
			r.HandleFunc("/proxy/*", a.vm(a.proxy.serve))
			a.vmImageRoutes(r)
			a.vmSnapshotRoutes(r)
		})
		a.imageRoutes(r)
		a.snapshotRoutes(r)
	})
	return r
}

// authenticate checks the join token in constant time.
func (a *Agent) authenticate(next http.Handler) http.Handler {
	want := []byte("Bearer " + a.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			a.fail(w, r, apierr.Unauthorized("missing or wrong agent token").
				WithSuggestion("send the agent's join token as 'Authorization: Bearer <token>'"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

type vmHandler func(w http.ResponseWriter, r *http.Request, id string)

// vm validates the {id} path parameter before any handler sees it: it
// becomes a path element and a --id flag, so nothing else may pass.
func (a *Agent) vm(h vmHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := chi.URLParam(r, "id")
		if !hostlayout.ValidVMID(id) {
			a.fail(w, r, apierr.BadRequest("invalid vm id %q: use 1-64 letters, digits or '-'", id))
			return
		}
		h(w, r, id)
	}
}

func (a *Agent) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := apierr.Write(w, httpmw.RequestID(r.Context()), err)
	httpmw.SetErrorCode(r.Context(), e.Code)
	if e.Status >= 500 {
		a.log.Error("agent request failed", "request_id", httpmw.RequestID(r.Context()), "err", err)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads an optional JSON body strictly: unknown fields are errors.
func decode(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, 1<<20)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // no body: defaults
		}
		return apierr.BadRequest("invalid JSON body: %v", err)
	}
	if dec.More() {
		return apierr.BadRequest("invalid JSON body: more than one value")
	}
	return nil
}

func (a *Agent) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, agentapi.Health{
		OK: true, Name: a.cfg.Name, Version: a.cfg.Version, VMMVersion: a.cfg.VMMVersion,
		Simulated: a.cfg.Simulated, NAT: string(a.net.Backend()),
		Jail: cmp.Or(a.cfg.Jail, "off"), TLS: a.cfg.TLS, MutualTLS: a.cfg.MutualTLS,
	})
}

func (a *Agent) capacity(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.Capacity())
}

// SimCapacityScale multiplies a simulated host's vCPUs and memory. A
// firecracker-sim VM costs about 1 MiB of private memory and no CPU while
// idle, whatever it declares, so an honest 1:1 capacity would stop a laptop
// at a dozen simulated VMs. 64× lets a 2-core, 8 GiB laptop place 1,000
// one-vCPU, 128 MiB VMs (with the default 8× vCPU overcommit) while still
// refusing absurd requests. Real firecracker hosts keep a scale of 1.
const SimCapacityScale = 64

// Capacity reports host vCPUs and memory (scaled for simulated hosts) and
// what live VMMs hold.
func (a *Agent) Capacity() agentapi.Capacity {
	scale := 1
	if a.cfg.Simulated {
		scale = SimCapacityScale
	}
	c := agentapi.Capacity{Total: agentapi.Resources{Vcpu: runtime.NumCPU() * scale, MemMib: hostMemMib() * scale}, Scale: scale}
	if a.cfg.Capacity.Vcpu > 0 {
		c.Total.Vcpu = a.cfg.Capacity.Vcpu
	}
	if a.cfg.Capacity.MemMib > 0 {
		c.Total.MemMib = a.cfg.Capacity.MemMib
	}
	for _, h := range a.sup.List() {
		c.Allocated.Vcpu += h.Vcpu
		c.Allocated.MemMib += h.MemMib
		c.VMs++
	}
	return c
}

func (a *Agent) tap(w http.ResponseWriter, r *http.Request, id string) {
	var req agentapi.TapRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	resp, err := a.ensureTap(r.Context(), id, req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// ensureTap makes the VM's TAP (and the bridge, when someone removed it),
// or its namespace with the TAP inside for an isolated VM; idempotent.
// Errors are the API's.
func (a *Agent) ensureTap(ctx context.Context, id string, req agentapi.TapRequest) (agentapi.TapResponse, error) {
	name := hostlayout.TapName(id)
	ensure := func() error { return a.net.EnsureTap(ctx, name, id) }
	if req.Isolated != nil {
		iso, c, err := a.isolated(id, req.Isolated)
		if err != nil {
			return agentapi.TapResponse{}, err
		}
		ensure = func() error {
			// The namespace is mounted in the run dir, which the tap
			// step precedes.
			if err := os.MkdirAll(a.cfg.Layout.VMDir(id), 0o750); err != nil {
				return err
			}
			return iso.EnsureIsolated(ctx, c)
		}
	}
	err := ensure()
	if errors.Is(err, network.ErrNoBridge) {
		// Someone removed the bridge: bring it (and NAT) back, then retry.
		if _, err := a.net.EnsureBridge(ctx); err != nil {
			return agentapi.TapResponse{}, apierr.Newf(http.StatusInternalServerError, "network_failed", "ensure bridge: %v", err).WithCause(err)
		}
		err = ensure()
	}
	switch {
	case errors.Is(err, network.ErrInvalidName):
		return agentapi.TapResponse{}, apierr.BadRequest("%v", err)
	case errors.Is(err, network.ErrLinkConflict):
		return agentapi.TapResponse{}, apierr.Newf(http.StatusConflict, "tap_conflict", "create tap %s: %v", name, err).WithCause(err).
			WithSuggestion("a link with this VM's TAP name exists and is not this agent's; remove or rename it, then start the VM again")
	case err != nil:
		return agentapi.TapResponse{}, apierr.Newf(http.StatusInternalServerError, "network_failed", "create tap %s: %v", name, err).WithCause(err)
	}
	return agentapi.TapResponse{Tap: name, MAC: hostlayout.GuestMAC(id).String(), Bridge: a.net.BridgeName()}, nil
}

func (a *Agent) spawn(w http.ResponseWriter, r *http.Request, id string) {
	var req agentapi.SpawnRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Vcpu < 0 || req.MemMib < 0 {
		a.fail(w, r, apierr.BadRequest("vcpu and mem_mib must not be negative"))
		return
	}
	if err := checkCalls(req.Calls); err != nil {
		a.fail(w, r, err)
		return
	}
	// The VMM must live on the agent's lifetime, not the request's: Spawn
	// uses ctx only to bound the wait for the socket.
	opts := vmm.SpawnOptions{Vcpu: req.Vcpu, MemMib: req.MemMib}
	if req.NetNS {
		if req.Tap {
			a.fail(w, r, apierr.BadRequest("tap and netns exclude each other: an isolated VM's TAP is made in its namespace by POST /tap first"))
			return
		}
		opts.NetNS = a.cfg.Layout.NetNSPath(id)
		if _, ok := a.net.(Isolator); !ok || a.cfg.Jail != "" && a.cfg.Jail != "off" {
			a.fail(w, r, apierr.Newf(http.StatusConflict, "isolated_unsupported", "this host cannot run isolated VMs (hollow or jail mode)").
				WithSuggestion("use network mode bridge on this host"))
			return
		}
	}
	// The TAP is made while the VMM starts (OnStart): firecracker opens it
	// only when its network interface is configured, after the socket is
	// up. A VMM already running has its TAP ensured after.
	var tap agentapi.TapResponse
	var tapErr error
	tapMade := false
	makeTap := func() {
		tap, tapErr = a.ensureTap(r.Context(), id, agentapi.TapRequest{})
		tapMade = true
	}
	if req.Tap {
		opts.OnStart = makeTap
	}
	var vc *vmmConn // the calls' connection, from the socket wait
	defer func() { vc.close() }()
	if len(req.Calls) > 0 {
		opts.OnSocket = func(c net.Conn) { vc = newVMMConn(c) }
	}
	select {
	case a.spawnSlots <- struct{}{}:
		// A spawn that takes longer than spawnTurn (a slow or stuck
		// VMM) gives its turn up rather than hold up the rest.
		release := sync.OnceFunc(func() { <-a.spawnSlots })
		defer release()
		defer time.AfterFunc(spawnTurn, release).Stop()
	case <-r.Context().Done():
		a.fail(w, r, apierr.New(499, "canceled", "the caller went away while the spawn waited its turn"))
		return
	}
	h, already, err := a.sup.Spawn(r.Context(), id, opts)
	if err == nil && req.Tap && !tapMade {
		makeTap()
	}
	if err != nil {
		if tapMade && tapErr == nil {
			_ = a.net.DeleteTap(context.WithoutCancel(r.Context()), tap.Tap)
		}
		a.fail(w, r, apierr.Newf(http.StatusInternalServerError, "spawn_failed", "%v", err).
			WithSuggestion("check the VMM binary (FC_BIN) and the console log in the VM's run dir").WithCause(err))
		return
	}
	if tapErr != nil {
		if !already {
			_ = a.sup.Stop(context.WithoutCancel(r.Context()), id, 0)
		}
		a.fail(w, r, tapErr)
		return
	}
	if h.Jail != nil {
		// The VMM opens its TAP as its own uid, without CAP_NET_ADMIN.
		err := a.net.SetTapOwner(r.Context(), hostlayout.TapName(id), id, h.Jail.UID, h.Jail.GID)
		if err != nil && !errors.Is(err, network.ErrNoTap) {
			_ = a.sup.Stop(context.WithoutCancel(r.Context()), id, 0)
			a.fail(w, r, apierr.Newf(http.StatusInternalServerError, "network_failed", "hand the tap to the jailed vmm: %v", err).WithCause(err))
			return
		}
	}
	if !already {
		a.guests.watch(id, h.PID)
	}
	l := a.cfg.Layout
	resp := agentapi.SpawnResponse{
		PID: h.PID, APISock: h.APISock, LogPath: l.LogPath(id), ConsolePath: l.ConsolePath(id),
		MetricsPath: l.MetricsPath(id), AlreadyRunning: already,
	}
	if req.Tap {
		resp.Tap = &tap
	}
	if len(req.Calls) > 0 {
		resp.Results = a.proxy.runCalls(r, id, req.Calls, vc)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *Agent) stop(w http.ResponseWriter, r *http.Request, id string) {
	var req agentapi.StopRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.GraceMs < 0 || req.GraceMs > 600_000 {
		a.fail(w, r, apierr.BadRequest("grace_ms must be between 0 and 600000"))
		return
	}
	grace := a.cfg.StopGrace
	if req.GraceMs > 0 {
		grace = time.Duration(req.GraceMs) * time.Millisecond
	}
	if err := a.stopVM(r.Context(), id, grace); err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, agentapi.OK{OK: true})
}

func (a *Agent) stopVM(ctx context.Context, id string, grace time.Duration) error {
	if err := a.stopVMM(ctx, id, grace); err != nil {
		return err
	}
	if err := a.deleteVMTap(ctx, id); err != nil {
		return err
	}
	return a.deleteIsolated(ctx, id)
}

// stopVMM ends id's VMM and forgets what the agent knew of it.
func (a *Agent) stopVMM(ctx context.Context, id string, grace time.Duration) error {
	a.guests.forget(id) // a stopped guest has nothing more to report
	if err := a.sup.Stop(ctx, id, grace); err != nil {
		return apierr.Newf(http.StatusInternalServerError, "stop_failed", "%v", err).WithCause(err)
	}
	a.proxy.forget(id)
	return nil
}

// deleteVMTap deletes id's TAP in the agent's namespace. A link of someone
// else's by the TAP's name means the VM's own TAP was never made: nothing
// of ours to delete, and theirs stays.
func (a *Agent) deleteVMTap(ctx context.Context, id string) error {
	if err := a.net.DeleteTap(ctx, hostlayout.TapName(id)); err != nil && !errors.Is(err, network.ErrNotOurs) {
		return apierr.Newf(http.StatusInternalServerError, "network_failed", "delete tap: %v", err).WithCause(err)
	}
	return nil
}

// deleteIsolated removes an isolated VM's namespace and veth (its TAP
// lives in the namespace); they go with its VMM.
func (a *Agent) deleteIsolated(ctx context.Context, id string) error {
	if iso, ok := a.net.(Isolator); ok {
		if err := iso.DeleteIsolated(ctx, id, a.cfg.Layout.NetNSPath(id)); err != nil {
			return apierr.Newf(http.StatusInternalServerError, "network_failed", "%v", err).WithCause(err)
		}
	}
	return nil
}

// isolated checks an isolated tap request.
func (a *Agent) isolated(id string, in *agentapi.IsolatedNet) (Isolator, network.Isolated, error) {
	iso, ok := a.net.(Isolator)
	if !ok {
		return nil, network.Isolated{}, apierr.Newf(http.StatusConflict, "isolated_unsupported", "this host cannot make network namespaces (a hollow host)").
			WithSuggestion("use network mode bridge on this host")
	}
	host, err1 := netip.ParseAddr(in.HostAddr)
	guest, err2 := netip.ParseAddr(in.GuestAddr)
	gw, err3 := netip.ParsePrefix(in.GuestGateway)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, network.Isolated{}, apierr.BadRequest("isolated: %v", err)
	}
	return iso, network.Isolated{VMID: id, NSPath: a.cfg.Layout.NetNSPath(id), Tap: hostlayout.TapName(id),
		HostAddr: host, Guest: guest, GuestGateway: gw}, nil
}

// delete removes a VM from the host. Its network (TAP, or an isolated
// VM's veth and namespace) is deleted while its VMM stops and its run dir
// goes, not after: unregistering a link waits out several RCU grace
// periods (about 17 ms of a 23 ms delete on a small virtual machine) that
// need not queue behind the rest. A VM being deleted has no use for its
// network during the VMM's grace, and firecracker's TAP fd just goes dead;
// if the VMM cannot be stopped, it is left without its network until the
// manager's retry. A stop, whose guest may still be shutting down, keeps
// stopVM's order.
func (a *Agent) delete(w http.ResponseWriter, r *http.Request, id string) {
	ctx := r.Context()
	netDone := make(chan error, 1)
	go func() {
		err := a.deleteVMTap(ctx, id)
		if err == nil {
			err = a.deleteIsolated(ctx, id)
		}
		netDone <- err
	}()
	netErr := sync.OnceValue(func() error { return <-netDone })
	err := a.stopVMM(ctx, id, a.cfg.StopGrace)
	if err == nil {
		// An isolated VM's namespace is mounted in its run dir: the dir
		// goes once the namespace has been unmounted.
		if _, serr := os.Lstat(a.cfg.Layout.NetNSPath(id)); serr == nil {
			err = netErr()
		}
	}
	if err == nil {
		if rerr := removeRunDir(a.cfg.Layout, id); rerr != nil {
			err = apierr.Internal(rerr)
		}
	}
	if nerr := netErr(); err == nil {
		err = nerr
	} else if nerr != nil {
		a.log.Warn("delete: the network failed too", "vm_id", id, "err", nerr)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, agentapi.OK{OK: true})
}

// deleteTap removes a TAP by name (an orphan whose VM is unknown). Only
// TAPs that carry this agent's mark are deleted; a missing TAP is success.
func (a *Agent) deleteTap(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if !strings.HasPrefix(name, hostlayout.TapPrefix) || len(name) > 15 {
		a.fail(w, r, apierr.BadRequest("%q is not a TAP of this agent (names start with %s)", name, hostlayout.TapPrefix))
		return
	}
	for _, h := range a.sup.List() {
		if hostlayout.TapName(h.VMID) == name {
			a.fail(w, r, apierr.Conflict("TAP %s belongs to the running vm %s", name, h.VMID).
				WithSuggestion("stop or delete that VM instead"))
			return
		}
	}
	if err := a.net.DeleteTap(r.Context(), name); err != nil {
		if errors.Is(err, network.ErrNotOurs) || errors.Is(err, network.ErrLinkConflict) {
			a.fail(w, r, apierr.Newf(http.StatusConflict, "not_ours", "%v", err).WithCause(err).
				WithSuggestion("the agent deletes only TAPs it created (they carry its mark, see docs/networking.md)"))
			return
		}
		a.fail(w, r, apierr.Newf(http.StatusInternalServerError, "network_failed", "delete tap %s: %v", name, err).WithCause(err))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.OK{OK: true})
}

// removeRunDir removes a VM's run dir, except its snapshots: a snapshot
// outlives its VM until it is deleted itself. The dir goes entirely once
// no snapshot is left in it.
func removeRunDir(l hostlayout.Layout, id string) error {
	dir := l.VMDir(id)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove run dir of vm %s: %w", id, err)
	}
	snaps, _ := os.ReadDir(l.SnapshotsDir(id))
	for _, e := range entries {
		if e.Name() == filepath.Base(l.SnapshotsDir(id)) && len(snaps) > 0 {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("remove run dir of vm %s: %w", id, err)
		}
	}
	if len(snaps) == 0 {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove run dir of vm %s: %w", id, err)
		}
	}
	return nil
}

// hostMemMib reads MemTotal from /proc/meminfo.
func hostMemMib() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb / 1024
		}
	}
	return 0
}
