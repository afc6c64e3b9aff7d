package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

const metricsToken = "e2e-metrics-token"

// scrapeURL GETs a metrics endpoint with a bearer token.
func scrapeURL(t *testing.T, url, token, accept string) ([]byte, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
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
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, raw)
	}
	return raw, resp.Header.Get("Content-Type")
}

// sample returns the value of the series written exactly as series (name
// and labels) in a text exposition, or -1.
func sample(exposition []byte, series string) float64 {
	for _, line := range strings.Split(string(exposition), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// TestFleetMetrics: Prometheus finds every agent through the manager,
// scrapes them with the read-only metrics token, and gets per-VM counters
// that only grow across firecracker's flushes; the manager's own gauges
// count the fleet; promtool finds nothing to complain about.
func TestFleetMetrics(t *testing.T) {
	c := newCluster(t, "sqlite", 0)
	for i := range 2 {
		c.startAgent(fmt.Sprintf("host-%d", i), "FC_SIM_METRICS_INTERVAL=300ms", "AGENT_METRICS_TOKEN="+metricsToken)
	}
	c.waitHosts(2)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	hosts, err := c.client.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vms := map[string]string{} // host name → vm id
	for _, h := range hosts.Items {
		vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "m-" + h.Name, HostID: h.ID,
			VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
		if err != nil {
			t.Fatal(err)
		}
		vms[h.Name] = vm.ID
	}

	// Service discovery lists every ready agent, named as /v1/hosts names it.
	viewer := c.token(t, "prometheus", "viewer", "*")
	var groups []apitypes.SDTargetGroup
	raw, _ := scrapeURL(t, c.url()+"/v1/discovery/prometheus", viewer, "")
	if err := json.Unmarshal(raw, &groups); err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, a := range c.agents {
		want = append(want, a.name+" "+strings.TrimPrefix(a.url, "http://"))
	}
	for _, g := range groups {
		if g.Labels["host_state"] != "ready" || g.Labels["__scheme__"] != "http" || len(g.Targets) != 1 {
			t.Fatalf("target group %+v", g)
		}
		got = append(got, g.Labels["host"]+" "+g.Targets[0])
	}
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("discovered %v; want every agent %v", got, want)
	}

	// Each target answers with its own VM's series, clean for promtool.
	for _, g := range groups {
		url := "http://" + g.Targets[0] + g.Labels["__metrics_path__"]
		body, _ := scrapeURL(t, url, metricsToken, "")
		testutil.Promtool(t, "agent "+g.Labels["host"], body)
		if v := sample(body, fmt.Sprintf(`nexus_vmm_resident_memory_bytes{vm_id=%q}`, vms[g.Labels["host"]])); v <= 0 {
			t.Fatalf("agent %s: no RSS for its VM", g.Labels["host"])
		}
		// The join token works too; nothing else does.
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+viewer)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
			t.Fatalf("agent /metrics with an API token: %v %v; want 401", resp, err)
		} else {
			resp.Body.Close()
		}
	}

	// Counters grow across the simulator's periodic flushes (every 300 ms).
	a := c.agents[0]
	id := vms[a.name]
	uart := fmt.Sprintf(`nexus_fc_uart_writes_total{vm_id=%q}`, id)
	flushes := fmt.Sprintf(`nexus_fc_metrics_flushes_total{vm_id=%q}`, id)
	var prevU, prevF float64 = -1, -1
	for i := range 6 {
		body, _ := scrapeURL(t, a.url+"/metrics", metricsToken, "")
		u, f := sample(body, uart), sample(body, flushes)
		if u < prevU || f < prevF {
			t.Fatalf("scrape %d: counters went down: uart %v → %v, flushes %v → %v", i, prevU, u, prevF, f)
		}
		prevU, prevF = u, f
		time.Sleep(700 * time.Millisecond)
	}
	if prevF < 4 || prevU <= 0 {
		t.Fatalf("after 4 s of 300 ms flushes: %v flushes, %v uart writes", prevF, prevU)
	}
	// The console's charts read the same values through the manager.
	var st apitypes.VMStats
	if err := c.client.Do(ctx, "GET", "/v1/vms/"+id+"/stats", nil, nil, &st); err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Samples {
		if s.Name == "nexus_fc_uart_writes_total" && (s.Value < prevU || s.Type != "counter") {
			t.Fatalf("stats via the manager: %+v; /metrics said %v a moment ago", s, prevU)
		}
	}

	// The manager counts the fleet, in the text format and in OpenMetrics.
	body, _ := scrapeURL(t, c.url()+"/metrics", "", "")
	testutil.Promtool(t, "manager /metrics", body)
	for _, h := range hosts.Items {
		for _, series := range []string{
			fmt.Sprintf(`nexus_vms{host=%q,state="running"}`, h.Name),
			fmt.Sprintf(`nexus_host_state{host=%q,state="ready"}`, h.Name),
		} {
			if v := sample(body, series); v != 1 {
				t.Errorf("manager: %s = %v; want 1", series, v)
			}
		}
		if v := sample(body, fmt.Sprintf(`nexus_host_capacity_vcpus{host=%q}`, h.Name)); v <= 0 {
			t.Errorf("manager: no capacity for %s", h.Name)
		}
	}
	if v := sample(body, `nexus_project_vms{project="default",state="running"}`); v != 2 {
		t.Errorf("manager: running VMs of project default = %v; want 2", v)
	}
	// Every series the Grafana dashboard queries is one a manager or an
	// agent exports.
	agentBody, _ := scrapeURL(t, a.url+"/metrics", metricsToken, "")
	exported := map[string]bool{}
	for _, line := range strings.Split(string(body)+string(agentBody), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			exported[strings.Fields(name)[0]] = true
		}
	}
	dash, err := os.ReadFile("../../deploy/grafana/nexus-fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	// Series that exist once there is something to count.
	for _, name := range []string{"nexus_snapshot_bytes", "nexus_reconciler_actions_total"} {
		exported[name] = true
	}
	for _, name := range regexp.MustCompile(`nexus_[a-z_]+`).FindAllString(string(dash), -1) {
		base := strings.TrimSuffix(name, "_bucket")
		if !exported[base] && name != "nexus_fleet" && name != "nexus_agents" && name != "nexus_managers" {
			t.Errorf("the dashboard queries %s, which nothing exports", name)
		}
	}

	om, ct := scrapeURL(t, c.url()+"/metrics", "", "application/openmetrics-text; version=1.0.0")
	if !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(string(om), "# EOF\n") {
		t.Fatalf("OpenMetrics: content type %q", ct)
	}

	for _, id := range vms {
		if err := c.client.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	c.assertHostsEmpty()
}

// sseRead reads events from a stream body into ch: [id, data].
func sseRead(r io.Reader, ch chan<- [2]string) {
	defer close(ch)
	sc := bufio.NewScanner(r)
	var id, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" || id != "" {
				ch <- [2]string{id, data}
			}
			id, data = "", ""
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		}
	}
}

// TestLogStreamResumeThroughManager: a client of the manager that loses
// its stream and reconnects with Last-Event-ID misses no console line and
// sees none twice, including the lines written while it was away.
func TestLogStreamResumeThroughManager(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "sse", VMConfig: apitypes.VMConfig{KernelPath: simtest.WriteKernel(t, c.dir)}}, true)
	if err != nil {
		t.Fatal(err)
	}
	open := func(lastID string) (*http.Response, chan [2]string) {
		req, _ := http.NewRequest("GET", c.url()+"/v1/vms/"+vm.ID+"/logs/stream?source=console&tail=2", nil)
		req.Header.Set("Authorization", "Bearer "+c.admin)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("stream headers took %s", d)
		}
		ch := make(chan [2]string, 64)
		go sseRead(resp.Body, ch)
		return resp, ch
	}
	read := func(ch chan [2]string, n int, got *[]string) string {
		var last string
		for range n {
			select {
			case ev, ok := <-ch:
				if !ok {
					t.Fatal("stream ended")
				}
				if ev[0] == "" {
					t.Fatalf("event without an id: %q", ev[1])
				}
				*got = append(*got, ev[1])
				last = ev[0]
			case <-time.After(5 * time.Second):
				t.Fatalf("no event within 5s after %d", len(*got))
			}
		}
		return last
	}
	var got []string
	resp, ch := open("")
	last := read(ch, 3, &got)
	resp.Body.Close()
	time.Sleep(2 * time.Second) // two counter lines while away
	resp, ch = open(last)
	last = read(ch, 4, &got)
	resp.Body.Close()

	b, err := os.ReadFile(c.agents[0].layout().ConsolePath(vm.ID))
	if err != nil {
		t.Fatal(err)
	}
	end, _ := strconv.Atoi(last)
	lines := strings.Split(strings.TrimSuffix(string(b[:end]), "\n"), "\n")
	if want := lines[len(lines)-len(got):]; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("through the manager, with a reconnect:\n%s\nthe console holds:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := c.client.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(vm.ID)
}

// TestPrometheusExampleConfig: the example Prometheus configuration is one
// promtool accepts (with its secret files in place).
func TestPrometheusExampleConfig(t *testing.T) {
	promtool := testutil.RequireTool(t, "promtool", "run scripts/setup.sh --test")
	raw, err := os.ReadFile("../../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{"nexus-viewer.token", "nexus-agent-metrics.token"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(string(raw), "/etc/prometheus/", dir+"/")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
}
