package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestEveryRouteHasAPolicy walks the router itself, not only huma's
// operations: a handler mounted beside huma (the console, /metrics) must
// be listed in plainRoutes with its policy, and plain routes are public
// only because they carry no project's data.
func TestEveryRouteHasAPolicy(t *testing.T) {
	ts := newTestServer(t)
	ops := map[string]bool{}
	for _, op := range ts.srv.Operations() {
		ops[op.Method+" "+op.Path] = true
	}
	seen := map[string]bool{}
	err := chi.Walk(ts.srv.mux, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if ops[method+" "+route] {
			return nil
		}
		if _, ok := plainRoutes[route]; ok {
			seen[route] = true
			return nil
		}
		t.Errorf("%s %s is neither an API operation with a policy nor in plainRoutes", method, route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for route, pol := range plainRoutes {
		if !seen[route] {
			t.Errorf("plainRoutes lists %s but the router has no such route", route)
		}
		if pol.Auth != authNone || pol.Action != "" {
			t.Errorf("plain route %s: policy %+v; plain routes must be read-only and public", route, pol)
		}
	}
}

func getJSON(t *testing.T, ts *testServer, path, token string, out any) int {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.http.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, raw)
		}
	}
	return resp.StatusCode
}

// TestWhoami: the console decides which buttons to show from this.
func TestWhoami(t *testing.T) {
	ts := newTestServer(t)
	for role, tok := range ts.tokens {
		var w apitypes.Whoami
		project := "team-a"
		if role == auth.RoleAdmin {
			project = auth.AllProjects
		}
		if s := getJSON(t, ts, "/v1/whoami", tok, &w); s != 200 || w.Role != string(role) || w.Project != project || w.Owner != string(role)+"-user" || w.TokenID == "" {
			t.Fatalf("whoami as %s = %d %+v", role, s, w)
		}
	}
	if s := getJSON(t, ts, "/v1/whoami", "", nil); s != 401 {
		t.Fatalf("whoami without a token = %d; want 401", s)
	}
}

// TestPrometheusSD: every registered agent is a target with its host's
// name, in the format Prometheus's http_sd_configs reads.
func TestPrometheusSD(t *testing.T) {
	ts := newTestServer(t)
	for _, h := range []struct{ name, addr string }{{"host-b", "http://10.0.0.6:9090"}, {"host-a", "https://agent-a.internal"}} {
		body := `{"name":"` + h.name + `","addr":"` + h.addr + `","capacity":{"vcpu":4,"mem_mib":4096}}`
		if s := post(t, ts, "/v1/hosts/register", "join", body, nil); s != 200 {
			t.Fatalf("register %s: %d", h.name, s)
		}
	}
	var groups []apitypes.SDTargetGroup
	if s := getJSON(t, ts, "/v1/discovery/prometheus", ts.tokens[auth.RoleViewer], &groups); s != 200 {
		t.Fatalf("sd: %d", s)
	}
	if len(groups) != 2 {
		t.Fatalf("sd = %+v; want 2 hosts", groups)
	}
	a, b := groups[0], groups[1]
	if a.Targets[0] != "agent-a.internal:443" || a.Labels["__scheme__"] != "https" || a.Labels["host"] != "host-a" || a.Labels["host_state"] != "ready" {
		t.Fatalf("host-a target = %+v", a)
	}
	if b.Targets[0] != "10.0.0.6:9090" || b.Labels["__scheme__"] != "http" || b.Labels["__metrics_path__"] != "/metrics" || b.Labels["host_id"] == "" {
		t.Fatalf("host-b target = %+v", b)
	}
	if s := getJSON(t, ts, "/v1/discovery/prometheus", "", nil); s != 401 {
		t.Fatalf("sd without a token = %d; want 401", s)
	}
}

func scrape(t *testing.T, ts *testServer, accept string) (string, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.http.URL+"/metrics", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, raw)
	}
	return resp.Header.Get("Content-Type"), string(raw)
}

// TestFleetGauges: /metrics shows VMs by state and host and by project,
// host capacity, and answers OpenMetrics to a scraper that asks for it.
func TestFleetGauges(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	var reg apitypes.HostRegistration
	if s := post(t, ts, "/v1/hosts/register", "join", `{"name":"h1","addr":"http://10.0.0.5:9090","vmm":"1.12.0-sim","capacity":{"vcpu":8,"mem_mib":2048}}`, &reg); s != 200 {
		t.Fatalf("register: %d", s)
	}
	for i, v := range []struct {
		project, host string
		state         store.VMState
	}{{"a", reg.ID, store.VMRunning}, {"a", reg.ID, store.VMRunning}, {"b", reg.ID, store.VMPaused}, {"b", "", store.VMStopped}} {
		if _, err := ts.st.CreateVM(ctx, store.VM{Name: "vm" + string(rune('0'+i)), Project: v.project, HostID: v.host, State: v.state, DesiredState: v.state, VCPU: 1, MemMiB: 128}); err != nil {
			t.Fatal(err)
		}
	}
	ct, text := scrape(t, ts, "")
	if !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("default content type %q; want the text format", ct)
	}
	for _, want := range []string{
		`nexus_vms{host="h1",state="running"} 2`,
		`nexus_vms{host="h1",state="paused"} 1`,
		`nexus_vms{host="none",state="stopped"} 1`,
		`nexus_project_vms{project="a",state="running"} 2`,
		`nexus_host_capacity_vcpus{host="h1"} 8`,
		`nexus_host_capacity_memory_bytes{host="h1"} 2.147483648e+09`,
		`nexus_host_state{host="h1",state="ready"} 1`,
		`nexus_host_state{host="h1",state="draining"} 0`,
		`nexus_host_info{host="h1",host_id="` + reg.ID + `",simulated="true",vmm="1.12.0-sim"} 1`,
		`nexus_store_up 1`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	ct, text = scrape(t, ts, "application/openmetrics-text;version=1.0.0")
	if !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(text, "# EOF\n") {
		t.Fatalf("OpenMetrics asked for, got %q ending %q", ct, text[max(0, len(text)-20):])
	}
}

// TestConsoleServed: the console is one page with its assets, under a
// policy that runs only its own scripts; / and /ui lead there.
func TestConsoleServed(t *testing.T) {
	ts := newTestServer(t)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, p := range []string{"/", "/ui"} {
		resp, err := noRedirect.Get(ts.http.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/ui/" {
			t.Fatalf("GET %s = %d → %q; want a redirect to /ui/", p, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	resp, err := http.Get(ts.http.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(body), "<title>") {
		t.Fatalf("GET /ui/ = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "connect-src 'self'") {
		t.Fatalf("console CSP %q: want own scripts only", csp)
	}
	// Revalidation: an unchanged file is a 304.
	req, _ := http.NewRequest("GET", ts.http.URL+"/ui/vendor/uPlot.iife.min.js", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" {
		t.Fatalf("uPlot: %d etag %q", resp.StatusCode, etag)
	}
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidation: %d; want 304", resp.StatusCode)
	}
	if resp, err := http.Get(ts.http.URL + "/ui/nope.js"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("unknown console file: %v %v; want 404", resp, err)
	}
}

// TestStreamInOpenAPI: the log stream is declared as text/event-stream,
// with its resume header, so generated clients know what they get.
func TestStreamInOpenAPI(t *testing.T) {
	ts := newTestServer(t)
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct{ Name, In string }
			Responses  map[string]struct {
				Content map[string]any
			}
		}
	}
	if s := getJSON(t, ts, "/openapi.json", "", &doc); s != 200 {
		t.Fatalf("openapi: %d", s)
	}
	op := doc.Paths["/v1/vms/{id}/logs/stream"]["get"]
	if _, ok := op.Responses["200"].Content["text/event-stream"]; !ok {
		t.Fatalf("stream 200 content = %v; want text/event-stream", op.Responses["200"].Content)
	}
	found := false
	for _, p := range op.Parameters {
		found = found || (p.Name == "Last-Event-ID" && p.In == "header")
	}
	if !found {
		t.Fatalf("stream parameters %+v lack the Last-Event-ID header", op.Parameters)
	}
}

// TestStreamCap: past its cap of relayed log streams a manager answers 429
// with Retry-After, before it asks any agent.
func TestStreamCap(t *testing.T) {
	ts := newTestServer(t)
	ts.srv.streams = newStreamLimiter(nil, 1, 1)
	if _, err := ts.srv.streams.acquire("another token", "p", nil); err != nil { // the one slot taken
		t.Fatal(err)
	}
	vm, err := ts.st.CreateVM(context.Background(), store.VM{Name: "streamed", Project: "team-a", State: store.VMRunning, DesiredState: store.VMRunning, VCPU: 1, MemMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", ts.http.URL+"/v1/vms/"+vm.ID+"/logs/stream", nil)
	req.Header.Set("Authorization", "Bearer "+ts.tokens[auth.RoleViewer])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(raw), "too_many_streams") {
		t.Fatalf("stream past the cap: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), raw)
	}
}
