package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// testServer is the real HTTP layer over a real SQLite store, without
// agents: enough for everything decided before a handler reaches a host.
type testServer struct {
	srv    *Server
	http   *httptest.Server
	st     store.Store
	mgr    *manager.Manager
	tokens map[auth.Role]string
}

// deps wires the real manager services over the test store, with authn.
func (ts *testServer) deps(authn Authenticator) Deps {
	m := ts.mgr
	return Deps{
		VMs: m.VMs, Images: m.Images, Templates: m.Templates, Snapshots: m.Snapshots, Pools: m.Pools, Groups: m.Groups, Hosts: m.Hosts, Tokens: m.Tokens,
		Audit: ts.st, Quotas: ts.st, Ping: ts.st.Ping, JoinToken: "join", Fleet: ts.st,
		Auth: authn, Log: slog.New(slog.DiscardHandler), Version: "test",
	}
}

func newTestServer(t testing.TB) *testServer {
	t.Helper()
	return newTestServerAt(t, filepath.Join(t.TempDir(), "nexus.db"))
}

// newTestServerAt is newTestServer with its SQLite file at path, and its
// Deps changed by opts.
func newTestServerAt(t testing.TB, path string, opts ...func(*Deps)) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := store.Open(ctx, "sqlite://"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.DiscardHandler)
	authn := auth.NewAuthenticator(st, time.Minute, log)
	mgr := manager.New(ctx, manager.Config{JoinToken: "join"}, st, log)
	mgr.Tokens.OnChange = authn.Invalidate
	ts := &testServer{st: st, mgr: mgr, tokens: map[auth.Role]string{}}
	d := ts.deps(authn)
	for _, o := range opts {
		o(&d)
	}
	ts.srv = New(d)
	ts.http = httptest.NewServer(ts.srv)
	t.Cleanup(ts.http.Close)
	for _, r := range []auth.Role{auth.RoleViewer, auth.RoleOperator, auth.RoleAdmin} {
		project := "team-a"
		if r == auth.RoleAdmin {
			project = auth.AllProjects // an admin of every project (an admin of team-a administers team-a only)
		}
		secret, _, err := auth.Issue(ctx, st, "", string(r)+"-user", r, project)
		if err != nil {
			t.Fatal(err)
		}
		ts.tokens[r] = secret
	}
	return ts
}

func (ts *testServer) call(t testing.TB, method, path, token, body string) (int, apierr.Error) {
	t.Helper()
	resp, raw := ts.raw(t, method, path, token, body)
	var e apierr.Error
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s %s: %d %q is not the error contract", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, e
}

// raw sends a request and returns the answer with its body read.
func (ts *testServer) raw(t testing.TB, method, path, token, body string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, ts.http.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, raw
}

// fill replaces path parameters with sample values.
func fill(path string) string {
	r := strings.NewReplacer("{id}", "00000000-0000-4000-8000-000000000001", "{drive_id}", "rootfs")
	return r.Replace(path)
}

// TestEveryMutatingRouteIsGuardedAndAudited walks the router: a new route
// cannot forget its policy or its audit row.
func TestEveryMutatingRouteIsGuardedAndAudited(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	seen := 0
	for _, op := range ts.srv.Operations() {
		pol, ok := op.Metadata[policyKey].(policy)
		if !ok {
			t.Errorf("%s %s has no policy", op.Method, op.Path)
			continue
		}
		if op.Method == http.MethodGet {
			continue
		}
		seen++
		name := op.Method + " " + op.Path
		if pol.NoAudit == "" && (pol.Action == "" || pol.Resource == "") {
			t.Errorf("%s mutates but has no audit action/resource", name)
		}
		if pol.Auth == authNone {
			t.Errorf("%s mutates without authentication", name)
		}
		if pol.Auth == authToken && roleRank[pol.Role] < roleRank[auth.RoleOperator] {
			t.Errorf("%s mutates with role %s", name, pol.Role)
		}
		t.Run(name, func(t *testing.T) {
			before, _ := ts.st.ListAudit(ctx, store.AuditFilter{Limit: 10000})
			// No token at all: 401, and the attempt is on record.
			status, e := ts.call(t, op.Method, fill(op.Path), "", "{}")
			if status != http.StatusUnauthorized || e.Code != "unauthorized" {
				t.Fatalf("without a token: %d %+v; want 401", status, e)
			}
			wantRows := 1
			if pol.Auth == authToken {
				// A viewer may never mutate: 403, audited as denied.
				status, e = ts.call(t, op.Method, fill(op.Path), ts.tokens[auth.RoleViewer], "{}")
				if status != http.StatusForbidden || e.Code != "forbidden" {
					t.Fatalf("as viewer: %d %+v; want 403", status, e)
				}
				wantRows = 2
			}
			if pol.NoAudit != "" {
				return
			}
			after, _ := ts.st.ListAudit(ctx, store.AuditFilter{AfterID: lastID(before), Limit: 10000})
			if len(after) != wantRows {
				t.Fatalf("%d audit rows, want %d: %+v", len(after), wantRows, after)
			}
			for _, r := range after {
				if r.Result != store.AuditDenied || r.Action != pol.Action || r.RequestID == "" || r.CompletedAt == nil {
					t.Fatalf("audit row %+v; want a completed denied row for %s", r, pol.Action)
				}
			}
			if pol.Auth == authToken && !strings.HasPrefix(after[1].Actor, "viewer-user") {
				t.Fatalf("denied row's actor = %q; want the viewer", after[1].Actor)
			}
		})
	}
	if seen < 10 {
		t.Fatalf("only %d mutating routes found; the walk is broken", seen)
	}
}

func lastID(rows []store.AuditEntry) int64 {
	if len(rows) == 0 {
		return 0
	}
	return rows[len(rows)-1].ID
}

// TestTokensLifecycle: create (admin only), list without secrets, revoke
// and rotate take effect at once.
func TestTokensLifecycle(t *testing.T) {
	ts := newTestServer(t)
	admin := ts.tokens[auth.RoleAdmin]
	req := `{"owner":"ci-bot","role":"operator","project":"team-a"}`
	if s, _ := ts.call(t, "POST", "/v1/tokens", ts.tokens[auth.RoleOperator], req); s != 403 {
		t.Fatalf("operator created a token: %d", s)
	}
	var sec struct{ ID, Token string }
	resp := post(t, ts, "/v1/tokens", admin, req, &sec)
	if resp != 201 || !strings.HasPrefix(sec.Token, auth.TokenPrefix) {
		t.Fatalf("create: %d %+v", resp, sec)
	}
	if s, _ := ts.call(t, "GET", "/v1/vms", sec.Token, ""); s != 200 {
		t.Fatalf("new token rejected: %d", s)
	}
	// The list never shows a secret.
	req2, _ := http.NewRequest("GET", ts.http.URL+"/v1/tokens", nil)
	req2.Header.Set("Authorization", "Bearer "+admin)
	r2, err := http.DefaultClient.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	_, secretPart, _ := auth.SplitToken(sec.Token)
	if strings.Contains(string(raw), secretPart) || !strings.Contains(string(raw), "ci-bot") {
		t.Fatalf("token list leaks a secret or misses the token: %s", raw)
	}

	// Rotate: the old secret fails at once (it was cached), the new works.
	var rot struct{ ID, Token string }
	if s := post(t, ts, "/v1/tokens/"+sec.ID+"/rotate", admin, "", &rot); s != 200 || rot.Token == sec.Token {
		t.Fatalf("rotate: %d %+v", s, rot)
	}
	if s, _ := ts.call(t, "GET", "/v1/vms", sec.Token, ""); s != 401 {
		t.Fatalf("rotated-away secret: %d, want 401", s)
	}
	if s, _ := ts.call(t, "GET", "/v1/vms", rot.Token, ""); s != 200 {
		t.Fatalf("rotated secret: %d", s)
	}
	// Revoke: fails at once.
	if s, _ := ts.call(t, "DELETE", "/v1/tokens/"+sec.ID, admin, ""); s != 200 {
		t.Fatalf("revoke: %d", s)
	}
	if s, _ := ts.call(t, "GET", "/v1/vms", rot.Token, ""); s != 401 {
		t.Fatalf("revoked token: %d, want 401", s)
	}
	if s, e := ts.call(t, "POST", "/v1/tokens/"+sec.ID+"/rotate", admin, ""); s != 409 {
		t.Fatalf("rotate revoked: %d %+v", s, e)
	}
	for _, bad := range []string{`{"owner":"x","role":"root","project":"a"}`, `{"owner":"","role":"viewer","project":"a"}`, `{"owner":"x","role":"viewer"}`, `{"owner":"x","role":"viewer","project":"a","extra":1}`} {
		if s, e := ts.call(t, "POST", "/v1/tokens", admin, bad); s != 400 {
			t.Fatalf("bad token request %s: %d %+v", bad, s, e)
		}
	}
}

func post(t *testing.T, ts *testServer, path, token, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.http.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode < 300 && out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s: %v: %s", path, err, raw)
		}
	}
	return resp.StatusCode
}

// A create's audit row ends with the VM as the call left it (made from the
// handler's VM, not read again): its id, name, project, host and states.
func TestCreateAuditRowSummarisesTheVM(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	h, err := ts.st.UpsertHost(ctx, store.HostRegistration{Name: "host-a", Addr: "http://127.0.0.1:1",
		Capacity: store.Resources{VCPU: 8, MemMiB: 8192}, VMM: "1.12.0-sim"})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := ts.st.ListAudit(ctx, store.AuditFilter{Limit: 10000})
	resp, raw := ts.raw(t, http.MethodPost, "/v1/vms", ts.tokens[auth.RoleAdmin], `{"name":"web-1","kernel_path":"/boot/vmlinux","start":false}`)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("create: %d %s", resp.StatusCode, raw)
	}
	var vm apitypes.VM
	if err := json.Unmarshal(raw, &vm); err != nil {
		t.Fatal(err)
	}
	rows, _ := ts.st.ListAudit(ctx, store.AuditFilter{AfterID: lastID(before), Limit: 10000})
	if len(rows) != 1 || rows[0].Action != "vm.create" || rows[0].ResourceID != vm.ID || rows[0].Result != store.AuditSuccess {
		t.Fatalf("audit rows %+v; want one successful vm.create of %s", rows, vm.ID)
	}
	var after map[string]any
	if err := json.Unmarshal(rows[0].After, &after); err != nil {
		t.Fatalf("after summary %q: %v", rows[0].After, err)
	}
	want := map[string]any{"id": vm.ID, "name": "web-1", "project": "default", "state": "stopped", "desired_state": "stopped", "host_id": h.ID}
	if !reflect.DeepEqual(after, want) {
		t.Fatalf("after summary %v; want %v", after, want)
	}
}
