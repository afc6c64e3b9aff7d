package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/agenttest"
	"github.com/nexus-microvm/nexus/internal/agent/hollow"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// The manager's behaviour end to end, without root: a real store (SQLite),
// a real agent API served by a hollow agent (firecracker-sim running in
// this process, TAPs in memory), real HTTP between them. Faults are
// injected at the one boundary the manager has with its agents: the HTTP
// transport (faults), and where needed at the store (failingStore).

const joinToken = "join-test"

type env struct {
	t      *testing.T
	ctx    context.Context
	st     store.Store
	m      *Manager
	ag     *agenttest.Agent
	agent  *agentapi.Client
	host   store.Host
	faults *faults
	fstore *failingStore // the store the manager uses, with faults of its own
	kernel string
	dir    string
}

type envOpt func(*Config)

func newEnv(t *testing.T, opts ...envOpt) *env {
	return startEnv(t, "", false, opts...)
}

// newReportingEnv is an env whose agent registers itself and reports to
// the manager (VMM exits, what guests say on their consoles) through
// agentRoutes, on its own heartbeats.
func newReportingEnv(t *testing.T, opts ...envOpt) *env {
	return startEnv(t, "", true, opts...)
}

// startEnv opens dsn ("" = a fresh SQLite file) and starts a manager
// and a hollow agent.
func startEnv(t *testing.T, dsn string, reporting bool, opts ...envOpt) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	if dsn == "" {
		dsn = "sqlite://" + filepath.Join(dir, "n.db")
	}
	st, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	f := &faults{base: http.DefaultTransport}
	cfg := Config{JoinToken: joinToken, AgentTransport: f, StopGrace: 50 * time.Millisecond, BootTimeout: 10 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	fs := &failingStore{Store: st}
	m := New(ctx, cfg, fs, slog.New(slog.DiscardHandler))
	t.Cleanup(func() {
		cancel()
		m.Wait(context.Background())
		m.Close()
		st.Close()
	})
	ao := agenttest.Options{Token: joinToken, Name: "hollow-1"}
	if reporting {
		srv := httptest.NewServer(agentRoutes(m))
		t.Cleanup(srv.Close)
		ao.Manager = srv.URL
	}
	ag := agenttest.Start(t, ao)
	e := &env{t: t, ctx: ctx, st: st, m: m, ag: ag, faults: f, fstore: fs, dir: dir,
		agent: agentapi.NewClient(ag.URL, joinToken, nil)}
	e.host = e.register("hollow-1", ag.URL)
	e.kernel = simtest.WriteKernel(t, dir)
	return e
}

// agentRoutes serves the three calls an agent makes to its manager —
// register, heartbeat, events — straight into the services, as the API
// layer (which the manager package cannot import) routes them.
func agentRoutes(m *Manager) http.Handler {
	mux := http.NewServeMux()
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		if err := json.NewDecoder(r.Body).Decode(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return false
		}
		return true
	}
	answer := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			status := http.StatusInternalServerError
			if isKind(err, KindNotFound) {
				status = http.StatusNotFound
			}
			http.Error(w, err.Error(), status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST /v1/hosts/register", func(w http.ResponseWriter, r *http.Request) {
		var in apitypes.RegisterHostRequest
		if decode(w, r, &in) {
			h, err := m.Hosts.RegisterHost(r.Context(), in)
			answer(w, apitypes.HostRegistration{ID: h.ID}, err)
		}
	})
	mux.HandleFunc("POST /v1/hosts/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		var in apitypes.HeartbeatRequest
		if decode(w, r, &in) {
			answer(w, apitypes.OK{OK: true}, m.Hosts.Heartbeat(r.Context(), r.PathValue("id"), in.Capacity, in.Allocated, in.VMs))
		}
	})
	mux.HandleFunc("POST /v1/hosts/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		var in apitypes.HostEvent
		if decode(w, r, &in) {
			answer(w, apitypes.OK{OK: true}, m.Hosts.HostEvent(r.Context(), r.PathValue("id"), in))
		}
	})
	return mux
}

// hollowNet is the VM bridge a hollow agent reports (network.DefaultGateway).
var hollowNet = &apitypes.HostNetwork{Subnet: "172.20.0.0/16", Gateway: "172.20.0.1"}

// register adds a ready host at addr, as the agent's registration would.
func (e *env) register(name, addr string) store.Host {
	e.t.Helper()
	res := apitypes.Resources{Vcpu: 64, MemMib: 64 << 10}
	h, err := e.m.Hosts.RegisterHost(e.ctx, apitypes.RegisterHostRequest{Name: name, Addr: addr, VMM: hollow.VMMVersion, Capacity: res, Network: hollowNet})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.m.Hosts.Heartbeat(e.ctx, h.ID, res, apitypes.Resources{}, 0); err != nil {
		e.t.Fatal(err)
	}
	return h
}

// create makes a VM from a raw kernel path, waiting for it to run.
func (e *env) create(name string) (store.VM, error) {
	return e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: name, VMConfig: apitypes.VMConfig{KernelPath: e.kernel}}, CreateOptions{Wait: true})
}

func (e *env) mustCreate(name string) store.VM {
	e.t.Helper()
	vm, err := e.create(name)
	if err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	return vm
}

// inventory is what the agent reports on its host.
func (e *env) inventory() agentapi.Inventory {
	e.t.Helper()
	inv, err := e.agent.Inventory(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return inv
}

// assertHostEmpty checks that nothing of any VM is on the host: no VMM,
// TAP, socket or run dir.
func (e *env) assertHostEmpty() {
	e.t.Helper()
	inv := e.inventory()
	if len(inv.VMMs)+len(inv.Taps)+len(inv.Sockets)+len(inv.RunDirs) != 0 {
		e.t.Errorf("host not empty: vmms %v, taps %v, sockets %v, run dirs %v", inv.VMMs, inv.Taps, inv.Sockets, inv.RunDirs)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.ag.RunDir, "vms")); len(entries) != 0 {
		e.t.Errorf("run dirs on disk: %v", entries)
	}
}

// rows counts the VM rows in the store.
func (e *env) rows() int {
	e.t.Helper()
	items, _, err := e.st.ListVMs(e.ctx, store.VMFilter{Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(items)
}

// events joins a VM's event messages.
func (e *env) events(id string) string {
	evs, _ := e.st.ListEvents(e.ctx, id, 100)
	var msgs []string
	for _, ev := range evs {
		msgs = append(msgs, ev.Message)
	}
	return strings.Join(msgs, "\n")
}

// waitFor polls cond until it holds or the time is up: a condition, not a
// sleep, decides when the test goes on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// faults answers chosen calls to the agents itself instead of passing them
// on: the manager sees a refusal or an unreachable agent at that call.
type faults struct {
	base http.RoundTripper
	mu   sync.Mutex
	list []*fault
	sent []string // "METHOD path" of every request to an agent
	// afterBatch, when set, runs after the agent answered firecracker
	// calls (a proxy batch, a spawn carrying calls) and before the manager
	// sees the answer.
	afterBatch func()
}

// holdBatches sets f.afterBatch until the test ends.
func (f *faults) holdBatches(t *testing.T, fn func()) {
	f.mu.Lock()
	f.afterBatch = fn
	f.mu.Unlock()
	t.Cleanup(func() {
		f.mu.Lock()
		f.afterBatch = nil
		f.mu.Unlock()
	})
}

type fault struct {
	method string
	suffix string // of the request path
	nth    int    // 1 = the first matching call; 0 = every one
	status int    // 0: the agent is unreachable
	body   string
	// only, when set, limits the fault to the calls it accepts (by path
	// and body): an agent that refuses some requests, not all.
	only func(path string, body []byte) bool
	seen int
	hits int
}

// add injects f until the test ends.
func (f *faults) add(t *testing.T, flt *fault) *fault {
	f.mu.Lock()
	f.list = append(f.list, flt)
	f.mu.Unlock()
	t.Cleanup(func() { f.clear() })
	return flt
}

// requests counts the requests to agents whose path ends with suffix.
func (f *faults) requests(suffix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.sent {
		if strings.HasSuffix(s, suffix) {
			n++
		}
	}
	return n
}

func (f *faults) clear() {
	f.mu.Lock()
	f.list = nil
	f.mu.Unlock()
}

func (f *faults) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.sent = append(f.sent, req.Method+" "+req.URL.Path)
	f.mu.Unlock()
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	if strings.HasSuffix(req.URL.Path, "/proxy-batch") {
		return f.carried(req, body)
	}
	if hit := f.matchBody(req.Method, req.URL.Path, body); hit != nil {
		return hit.answer(req)
	}
	if strings.HasSuffix(req.URL.Path, "/spawn") {
		return f.carried(req, body)
	}
	return f.base.RoundTrip(req)
}

// matchBody finds the fault a call to path with body triggers, counting
// the call.
func (f *faults) matchBody(method, path string, body []byte) *fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, flt := range f.list {
		if method != flt.method || !strings.HasSuffix(path, flt.suffix) || (flt.only != nil && !flt.only(path, body)) {
			continue
		}
		flt.seen++
		if flt.nth == 0 || flt.seen == flt.nth {
			flt.hits++
			return flt
		}
	}
	return nil
}

func (flt *fault) answer(req *http.Request) (*http.Response, error) {
	if flt.status == 0 {
		return nil, errors.New("injected: connection refused")
	}
	return jsonResponse(req, flt.status, flt.body), nil
}

func jsonResponse(req *http.Request, status int, body string) *http.Response {
	return &http.Response{
		StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewBufferString(body)),
		ContentLength: int64(len(body)), Request: req,
	}
}

// carried injects a fault into the firecracker calls a request carries
// (a proxy batch's, a spawn's) as if the agent had relayed the calls
// before the faulty one (it does: the request goes to the real agent with
// those calls only) and firecracker had answered the faulty one with the
// fault. An unreachable fault loses the connection: before anything was
// done for a batch, after the spawn and the calls before the fault for a
// spawn.
func (f *faults) carried(req *http.Request, raw []byte) (*http.Response, error) {
	var doc map[string]json.RawMessage
	var calls []firecracker.Call
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if c, ok := doc["calls"]; ok {
		if err := json.Unmarshal(c, &calls); err != nil {
			return nil, err
		}
	}
	k, hit := -1, (*fault)(nil)
	for i, c := range calls {
		if hit = f.matchBody(c.Method, "/proxy"+c.Path, c.Body); hit != nil {
			k = i
			break
		}
	}
	spawn := strings.HasSuffix(req.URL.Path, "/spawn")
	send := func(calls []firecracker.Call) (*http.Response, error) {
		if len(calls) == 0 {
			delete(doc, "calls")
		} else {
			doc["calls"], _ = json.Marshal(calls)
		}
		b, _ := json.Marshal(doc)
		out := req.Clone(req.Context())
		out.Body = io.NopCloser(bytes.NewReader(b))
		out.ContentLength = int64(len(b))
		return f.base.RoundTrip(out)
	}
	if hit == nil {
		resp, err := send(calls)
		f.mu.Lock()
		after := f.afterBatch
		f.mu.Unlock()
		if err == nil && after != nil && len(calls) > 0 {
			after()
		}
		return resp, err
	}
	if hit.status == 0 && !spawn {
		return nil, errors.New("injected: connection refused")
	}
	got := map[string]json.RawMessage{}
	var results []firecracker.CallResult
	if k > 0 || spawn {
		resp, err := send(calls[:k])
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if hit.status == 0 {
			return nil, errors.New("injected: connection lost")
		}
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &got); err != nil {
			return nil, err
		}
		if r, ok := got["results"]; ok {
			if err := json.Unmarshal(r, &results); err != nil {
				return nil, err
			}
		}
		if resp.StatusCode != http.StatusOK || len(results) < k {
			return jsonResponse(req, resp.StatusCode, string(b)), nil // the real agent stopped earlier
		}
	}
	got["results"], _ = json.Marshal(append(results, firecracker.CallResult{Status: hit.status, Body: json.RawMessage(hit.body)}))
	b, _ := json.Marshal(got)
	return jsonResponse(req, 200, string(b)), nil
}

// failingStore fails UpdateVM when fail says so for the VM as the update
// would leave it: a store that goes away in the middle of an operation.
type failingStore struct {
	store.Store
	mu   sync.Mutex
	fail func(v store.VM) bool
	// rowsRead counts the VMs and snapshots list calls returned.
	rowsRead int
}

func (s *failingStore) ListVMs(ctx context.Context, f store.VMFilter) ([]store.VM, string, error) {
	items, next, err := s.Store.ListVMs(ctx, f)
	s.mu.Lock()
	s.rowsRead += len(items)
	s.mu.Unlock()
	return items, next, err
}

func (s *failingStore) ListHostVMStates(ctx context.Context, hostID string) ([]store.VM, error) {
	items, err := s.Store.ListHostVMStates(ctx, hostID)
	s.mu.Lock()
	s.rowsRead += len(items)
	s.mu.Unlock()
	return items, err
}

func (s *failingStore) ListSnapshots(ctx context.Context, f store.SnapshotFilter) ([]store.Snapshot, error) {
	items, err := s.Store.ListSnapshots(ctx, f)
	s.mu.Lock()
	s.rowsRead += len(items)
	s.mu.Unlock()
	return items, err
}

func (s *failingStore) reads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rowsRead
}

func (s *failingStore) set(fail func(v store.VM) bool) {
	s.mu.Lock()
	s.fail = fail
	s.mu.Unlock()
}

func (s *failingStore) UpdateVM(ctx context.Context, id string, mutate func(*store.VM) error) (store.VM, error) {
	return s.Store.UpdateVM(ctx, id, s.failing(mutate))
}

func (s *failingStore) UpdateVMFrom(ctx context.Context, cur store.VM, mutate func(*store.VM) error) (store.VM, error) {
	return s.Store.UpdateVMFrom(ctx, cur, s.failing(mutate))
}

// failing wraps a mutation so that it fails when s.fail says so.
func (s *failingStore) failing(mutate func(*store.VM) error) func(*store.VM) error {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	return func(v *store.VM) error {
		if err := mutate(v); err != nil {
			return err
		}
		if fail != nil && fail(*v) {
			return errors.New("injected: store unavailable")
		}
		return nil
	}
}

func createReq(name, kernel string) apitypes.CreateVMRequest {
	return apitypes.CreateVMRequest{Name: name, VMConfig: apitypes.VMConfig{KernelPath: kernel}}
}

func apiRes(vcpu, mem int) apitypes.Resources { return apitypes.Resources{Vcpu: vcpu, MemMib: mem} }

// heartbeat reports the host alive now (on the env's clock).
func (e *env) heartbeat() {
	e.t.Helper()
	if err := e.m.Hosts.Heartbeat(e.ctx, e.host.ID, apiRes(64, 64<<10), apiRes(0, 0), 0); err != nil {
		e.t.Fatal(err)
	}
}
