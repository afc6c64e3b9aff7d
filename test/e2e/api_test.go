package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

func getJSON(t *testing.T, url, token string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("GET %s: %v: %s", url, err, raw)
		}
	}
	return resp.StatusCode
}

// TestOperability covers what operators and tools rely on: health,
// readiness, the OpenAPI document, metrics, request ids and 401s.
func TestOperability(t *testing.T) {
	c := newCluster(t, "sqlite", 1, "--heartbeat-timeout", "1500ms")
	var h apitypes.Health
	if s := getJSON(t, c.url()+"/healthz", "", &h); s != 200 || !h.OK {
		t.Fatalf("/healthz: %d %+v", s, h)
	}
	if s := getJSON(t, c.url()+"/readyz", "", &h); s != 200 || h.Checks["hosts"] != "ok" {
		t.Fatalf("/readyz: %d %+v", s, h)
	}
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if s := getJSON(t, c.url()+"/openapi.json", "", &doc); s != 200 || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("/openapi.json: %d %q", s, doc.OpenAPI)
	}
	for _, p := range []string{"/v1/vms", "/v1/vms/{id}", "/v1/vms/{id}/stop", "/v1/vms/bulk", "/v1/hosts", "/v1/vms/{id}/logs"} {
		if _, ok := doc.Paths[p]; !ok {
			t.Errorf("openapi.json lacks %s", p)
		}
	}
	// No token, a malformed one, an unknown one: 401 in the contract.
	for _, tok := range []string{"", "garbage", "nxs_aaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"} {
		status, e := rawCall(t, c, "GET", "/v1/vms", "", tok)
		if status != 401 || e.Code != "unauthorized" {
			t.Fatalf("token %q: %d %+v", tok, status, e)
		}
	}
	// An incoming request id is kept.
	req, _ := http.NewRequest("GET", c.url()+"/v1/vms", nil)
	req.Header.Set("Authorization", "Bearer "+c.admin)
	req.Header.Set("X-Request-Id", "trace-42")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Request-Id") != "trace-42" {
		t.Fatalf("X-Request-Id = %q", resp.Header.Get("X-Request-Id"))
	}
	resp, err = http.Get(c.url() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `nexus_http_requests_total{method="GET",route="/v1/vms",status="401"}`) {
		t.Fatalf("/metrics lacks the request counter:\n%s", tail(string(body), 20))
	}
	// Readiness follows the hosts: with the agent gone and its heartbeats
	// missed, the manager is not ready.
	c.agents[0].kill()
	eventually(t, 10*time.Second, "readyz reports the lost host", func() error {
		if s := getJSON(t, c.url()+"/readyz", "", nil); s != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz: %d", s)
		}
		return nil
	})
	l, err := c.client.Hosts(context.Background())
	if err != nil || len(l.Items) != 1 || l.Items[0].State != "unreachable" {
		t.Fatalf("hosts after the agent died: %+v, %v", l, err)
	}
}

// TestLogsMetricsAndAsync: firecracker's log and the console through the
// API (fast for small files), the latest metrics record, the dev-mode file
// tail, SSE streaming, and create with wait=false.
func TestLogsMetricsAndAsync(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "async", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "requested" {
		t.Fatalf("wait=false answered %s, want requested", vm.State)
	}
	eventually(t, 5*time.Second, "async create reaches running", func() error {
		v, err := c.client.GetVM(ctx, vm.ID)
		if err != nil {
			return err
		}
		if v.State != "running" {
			return fmt.Errorf("state %s", v.State)
		}
		return nil
	})

	start := time.Now()
	l, err := c.client.Logs(ctx, vm.ID, "fc", 5)
	if err != nil || len(l.Lines) != 5 || !strings.Contains(strings.Join(l.Lines, "\n"), "InstanceStart") {
		t.Fatalf("fc log = %+v, %v", l, err)
	}
	t.Logf("GET logs answered in %s", time.Since(start))

	var rec apitypes.MetricsRecent
	if s := getJSON(t, c.url()+"/v1/metrics/recent?id="+vm.ID, c.admin, &rec); s != 200 || rec.At == nil || !strings.Contains(string(rec.Record), "put_api_requests") {
		t.Fatalf("metrics recent: %d %+v", s, rec)
	}
	var tl apitypes.LogLines
	got, _ := c.client.GetVM(ctx, vm.ID)
	if s := getJSON(t, c.url()+"/v1/logs/tail?tail=2&path="+url.QueryEscape(got.LogPath), c.admin, &tl); s != 200 || len(tl.Lines) != 2 {
		t.Fatalf("logs/tail: %d %+v", s, tl)
	}

	// Follow the console: counter lines arrive as they are written.
	sctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	var mu sync.Mutex
	var lines []string
	done := make(chan error, 1)
	go func() {
		done <- c.client.FollowLogs(sctx, vm.ID, "console", func(line string) {
			mu.Lock()
			lines = append(lines, line)
			n := len(lines)
			mu.Unlock()
			if n >= 2 {
				cancel()
			}
		})
	}()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("follow: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], simtest.CounterPrefix) {
		t.Fatalf("streamed console lines = %q", lines)
	}
	if err := c.client.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(vm.ID)
}

// TestParallelAndSerialised: creates of different VMs run in parallel;
// concurrent operations on one VM are serialised and leave it consistent.
func TestParallelAndSerialised(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	const n = 12
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("p%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
			if err != nil {
				errs <- err
				return
			}
			ids[i] = vm.ID
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Hammer one VM with stop/start/pause from several callers.
	target := ids[0]
	actions := []string{"stop", "start", "pause", "resume", "stop", "start"}
	var wg2 sync.WaitGroup
	for _, a := range actions {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			_ = nexus.New(c.url(), c.admin).VMAction(ctx, target, a) // 409s are fine
		}()
	}
	wg2.Wait()
	v, err := c.client.GetVM(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	pids := 0
	inv, _ := c.agentClient(c.agents[0]).Inventory(ctx)
	for _, m := range inv.VMMs {
		if m.VMID == target {
			pids++
		}
	}
	switch v.State {
	case "running", "paused":
		if pids != 1 {
			t.Fatalf("vm is %s but has %d vmm processes", v.State, pids)
		}
	case "stopped":
		if pids != 0 {
			t.Fatalf("vm is stopped but has %d vmm processes", pids)
		}
	default:
		t.Fatalf("vm ended in state %s", v.State)
	}
	res, err := c.client.Bulk(ctx, "delete", ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			t.Fatalf("delete %s: %s", r.ID, r.Error)
		}
	}
	c.assertNoLeaks(ids...)
}
