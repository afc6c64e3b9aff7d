package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

var engines = []string{"sqlite", "postgres"}

func intp(i int) *int { return &i }

// TestLifecycle runs the VM lifecycle of DESIGN.md on both engines:
// create → running, stop (stopping → stopped), start, pause/resume,
// delete (row gone, TAP and socket gone on the host).
func TestLifecycle(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			c := newCluster(t, engine, 1)
			ctx := context.Background()
			kernel := simtest.WriteKernel(t, c.dir)
			rootfs := simtest.WriteRootfs(t, c.dir, 16)

			start := time.Now()
			vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{
				Name: "web", VMConfig: apitypes.VMConfig{Vcpu: intp(2), MemMib: intp(256), KernelPath: kernel, RootfsPath: rootfs},
				Tags: map[string]string{"team": "ci"},
			}, true)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.client.GetVM(ctx, vm.ID)
			if err != nil || got.State != "running" {
				t.Fatalf("GET after create = %s, %v; want running", got.State, err)
			}
			t.Logf("create → running in %s", time.Since(start))
			if got.Tap != hostlayout.TapName(vm.ID) || got.MAC == "" || got.APISock == "" || got.HostID == "" || got.Tags["team"] != "ci" {
				t.Fatalf("VM fields incomplete: %+v", got)
			}
			inv, err := c.agentClient(c.agents[0]).Inventory(ctx)
			if err != nil || len(inv.VMMs) != 1 || inv.VMMs[0].VMID != vm.ID || inv.VMMs[0].Vcpu != 2 {
				t.Fatalf("agent inventory = %+v, %v", inv.VMMs, err)
			}
			// The guest really runs: its console counter advances.
			eventually(t, 5*time.Second, "console counter", func() error {
				l, err := c.client.Logs(ctx, vm.ID, "console", 50)
				if err != nil {
					return err
				}
				if !strings.Contains(strings.Join(l.Lines, "\n"), simtest.CounterPrefix) {
					return errors.New("no counter line yet")
				}
				return nil
			})

			if err := c.client.VMAction(ctx, vm.ID, "pause"); err != nil {
				t.Fatal(err)
			}
			if v, _ := c.client.GetVM(ctx, vm.ID); v.State != "paused" {
				t.Fatalf("after pause: %s", v.State)
			}
			if err := c.client.VMAction(ctx, vm.ID, "pause"); err != nil {
				t.Fatalf("pause twice: %v", err)
			}
			if err := c.client.VMAction(ctx, vm.ID, "resume"); err != nil {
				t.Fatal(err)
			}

			if err := c.client.VMAction(ctx, vm.ID, "stop"); err != nil {
				t.Fatal(err)
			}
			if v, _ := c.client.GetVM(ctx, vm.ID); v.State != "stopped" || v.DesiredState != "stopped" {
				t.Fatalf("after stop: %s/%s", v.State, v.DesiredState)
			}
			assertStates(t, c, vm.ID, "stopping", "stopped")
			if pids := vmmPIDs(c.agents[0].runDir); len(pids) != 0 {
				t.Fatalf("vmm still running after stop: %v", pids)
			}
			if _, err := os.Stat(c.agents[0].layout().SockPath(vm.ID)); !os.IsNotExist(err) {
				t.Fatalf("socket left after stop")
			}

			if err := c.client.VMAction(ctx, vm.ID, "start"); err != nil {
				t.Fatal(err)
			}
			if v, _ := c.client.GetVM(ctx, vm.ID); v.State != "running" {
				t.Fatalf("after start: %s", v.State)
			}

			if err := c.client.DeleteVM(ctx, vm.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := c.client.GetVM(ctx, vm.ID); !isStatus(err, 404) {
				t.Fatalf("GET after delete: %v; want 404", err)
			}
			inv, err = c.agentClient(c.agents[0]).Inventory(ctx)
			if err != nil || len(inv.VMMs) != 0 || len(inv.Sockets) != 0 || len(inv.RunDirs) != 0 {
				t.Fatalf("agent still has the VM: %+v, %v", inv, err)
			}
			for _, tp := range inv.Taps {
				if tp.Name == hostlayout.TapName(vm.ID) {
					t.Fatalf("tap %s still on the host", tp.Name)
				}
			}
			c.assertNoLeaks(vm.ID)
		})
	}
}

// assertStates checks the VM's events mention the states in order.
func assertStates(t *testing.T, c *cluster, id string, states ...string) {
	t.Helper()
	evs, err := c.client.Events(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for _, e := range evs.Items {
		if i < len(states) && e.Message == states[i] {
			i++
		}
	}
	if i != len(states) {
		t.Fatalf("events %+v do not show %v in order", evs.Items, states)
	}
}

func isStatus(err error, status int) bool {
	var e *apierr.Error
	return errors.As(err, &e) && e.Status == status
}

// TestFirecrackerRefusal checks that firecracker's own 400 reaches the
// caller with its fault_message, the last lines of its log and a
// suggestion, and that the failed create leaves nothing: no VM row, no
// process, TAP, socket, run dir or cgroup; the same name works right after.
func TestFirecrackerRefusal(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	notELF := c.dir + "/not-a-kernel"
	os.WriteFile(notELF, []byte("gzip, not ELF"), 0o644)
	for _, tc := range []struct {
		name  string
		cfg   apitypes.VMConfig
		fault string
	}{
		{"kernel not ELF", apitypes.VMConfig{KernelPath: notELF}, "ELF"},
		{"missing kernel", apitypes.VMConfig{KernelPath: c.dir + "/nope"}, "No such file"},
		// A missing rootfs is refused before firecracker sees it, since the
		// agent copies it first: TestDevRawRootfsIsCopied.
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			_, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: name, VMConfig: tc.cfg}, true)
			var e *apierr.Error
			if !errors.As(err, &e) || e.Status != 400 || e.Code != "firecracker_rejected" || !strings.Contains(e.FaultMessage, tc.fault) || e.Suggestion == "" || e.RequestID == "" {
				t.Fatalf("create: %#v; want 400 firecracker_rejected with fault_message containing %q and a suggestion", err, tc.fault)
			}
			if len(e.LogTail) == 0 {
				t.Errorf("the refusal carries no firecracker log lines: %#v", e)
			}
			l, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{Name: name})
			if err != nil || len(l.Items) != 0 {
				t.Fatalf("VM rows after a refused create: %+v, %v; want none", l, err)
			}
			c.assertHostsEmpty()

			vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: name, VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
			if err != nil || vm.State != "running" {
				t.Fatalf("the same name right after the refusal: %+v, %v", vm, err)
			}
			if err := c.client.DeleteVM(ctx, vm.ID); err != nil {
				t.Fatal(err)
			}
			c.assertNoLeaks(vm.ID)
		})
	}
}

// TestBadInput walks a table of bad requests: each gets a clear 4xx in the
// error contract and changes nothing.
func TestBadInput(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "keep", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil {
		t.Fatal(err)
	}
	no := false
	idle, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "idle", VMConfig: apitypes.VMConfig{KernelPath: kernel}, Start: &no}, true)
	if err != nil || idle.State != "stopped" {
		t.Fatalf("create with start=false: %+v, %v", idle, err)
	}
	before, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{})
	k := fmt.Sprintf("%q", kernel)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"bad json", "POST", "/v1/vms", `{"name":`, 400, "invalid_request"},
		{"unknown field", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"cpus":2}`, 400, "invalid_request"},
		{"missing name", "POST", "/v1/vms", `{"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"bad name", "POST", "/v1/vms", `{"name":"../x","kernel_path":` + k + `}`, 400, "invalid_request"},
		{"vcpu zero", "POST", "/v1/vms", `{"name":"x","vcpu":0,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"vcpu odd", "POST", "/v1/vms", `{"name":"x","vcpu":3,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"vcpu 33", "POST", "/v1/vms", `{"name":"x","vcpu":33,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"vcpu 2^63-1", "POST", "/v1/vms", `{"name":"x","vcpu":9223372036854775807,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"vcpu 2^63-1 async", "POST", "/v1/vms?wait=false", `{"name":"x","vcpu":9223372036854775807,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"vcpu 2^64", "POST", "/v1/vms", `{"name":"x","vcpu":18446744073709551616,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"mem zero", "POST", "/v1/vms", `{"name":"x","mem_mib":0,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"mem negative", "POST", "/v1/vms", `{"name":"x","mem_mib":-1,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"mem huge", "POST", "/v1/vms?wait=false", `{"name":"x","mem_mib":9223372036854775807,"kernel_path":` + k + `}`, 400, "invalid_request"},
		{"boot args newline", "POST", "/v1/vms", `{"name":"x","boot_args":"console=ttyS0\ninit=/bin/sh","kernel_path":` + k + `}`, 400, "invalid_request"},
		{"boot args NUL", "POST", "/v1/vms?wait=false", `{"name":"x","boot_args":"console=ttyS0\u0000","kernel_path":` + k + `}`, 400, "invalid_request"},
		{"10k tags", "POST", "/v1/vms?wait=false", `{"name":"x","kernel_path":` + k + `,"tags":` + manyTags(10_000) + `}`, 400, "invalid_request"},
		{"tag with newline", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"tags":{"a":"b\nc"}}`, 400, "invalid_request"},
		{"long tag value", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"tags":{"a":"` + strings.Repeat("v", 256) + `"}}`, 400, "invalid_request"},
		{"long name", "POST", "/v1/vms", `{"name":"` + strings.Repeat("n", 64) + `","kernel_path":` + k + `}`, 400, "invalid_request"},
		{"long host id", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"host_id":"` + strings.Repeat("h", 300) + `"}`, 400, "invalid_request"},
		{"vcpu string", "POST", "/v1/vms", `{"name":"x","vcpu":"two","kernel_path":` + k + `}`, 400, "invalid_request"},
		{"no kernel", "POST", "/v1/vms", `{"name":"x"}`, 400, "invalid_request"},
		{"relative kernel", "POST", "/v1/vms", `{"name":"x","kernel_path":"vmlinux"}`, 400, "invalid_request"},
		{"kernel path and id", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"kernel_image_id":"abc"}`, 400, "invalid_request"},
		{"unknown image", "POST", "/v1/vms", `{"name":"x","kernel_image_id":"abc"}`, 404, "not_found"},
		{"unknown initrd image", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"initrd_image_id":"abc"}`, 404, "not_found"},
		{"initrd path and id", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"initrd_path":` + k + `,"initrd_image_id":"abc"}`, 400, "invalid_request"},
		{"relative initrd", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"initrd_path":"initrd.img"}`, 400, "invalid_request"},
		{"long initrd path", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"initrd_path":"/` + strings.Repeat("i", 5000) + `"}`, 400, "invalid_request"},
		{"boot args leave no room", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"boot_args":"` + strings.Repeat("a", 2000) + `"}`, 400, "invalid_request"},
		{"duplicate name", "POST", "/v1/vms", `{"name":"keep","kernel_path":` + k + `}`, 409, "name_taken"},
		{"unknown host", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"host_id":"nope"}`, 400, "invalid_request"},
		{"bad extra drive id", "POST", "/v1/vms", `{"name":"x","kernel_path":` + k + `,"extra_drives":[{"drive_id":"a-b","path":"/x"}]}`, 400, "invalid_request"},
		{"bad state filter", "GET", "/v1/vms?state=sleeping", "", 400, "invalid_request"},
		{"unknown query", "GET", "/v1/vms?colour=red", "", 400, "invalid_request"},
		{"bad limit", "GET", "/v1/vms?limit=100000", "", 400, "invalid_request"},
		{"bad cursor", "GET", "/v1/vms?cursor=zzz", "", 400, "invalid_request"},
		{"bad tag", "GET", "/v1/vms?tag=novalue", "", 400, "invalid_request"},
		{"unknown vm", "GET", "/v1/vms/8e3c1d6c-0000-4000-8000-000000000000", "", 404, "not_found"},
		{"stop unknown vm", "POST", "/v1/vms/nope/stop", "", 404, "not_found"},
		{"pause stopped", "POST", "/v1/vms/" + idle.ID + "/pause", "", 409, "vm_not_running"},
		{"resume stopped", "POST", "/v1/vms/" + idle.ID + "/resume", "", 409, "vm_not_paused"},
		{"patch drive of stopped", "PATCH", "/v1/vms/" + idle.ID + "/drives/rootfs", `{"rate_limiter":{"ops":{"size":10,"refill_time":100}}}`, 409, "vm_not_running"},
		{"bulk bad action", "POST", "/v1/vms/bulk", `{"action":"explode","ids":["` + vm.ID + `"]}`, 400, "invalid_request"},
		{"bulk no ids", "POST", "/v1/vms/bulk", `{"action":"stop","ids":[]}`, 400, "invalid_request"},
		{"patch drive no limiter", "PATCH", "/v1/vms/" + vm.ID + "/drives/rootfs", `{}`, 400, "invalid_request"},
		{"logs bad source", "GET", "/v1/vms/" + vm.ID + "/logs?source=kernel", "", 400, "invalid_request"},
		{"tail outside run dirs", "GET", "/v1/logs/tail?path=/etc/passwd", "", 403, "path_not_allowed"},
		{"metrics no id", "GET", "/v1/metrics/recent", "", 400, "invalid_request"},
		{"no route", "GET", "/v1/nothing", "", 404, "not_found"},
		{"wrong method", "PUT", "/v1/vms", "", 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, e := rawCall(t, c, tc.method, tc.path, tc.body, c.admin)
			if status != tc.status || e.Code != tc.code || e.Status != tc.status || e.RequestID == "" || e.Message == "" {
				t.Fatalf("%s %s: %d %+v; want %d %s with a message", tc.method, tc.path, status, e, tc.status, tc.code)
			}
		})
	}
	after, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{})
	if len(after.Items) != len(before.Items) {
		t.Fatalf("bad input changed the VM list: %d → %d", len(before.Items), len(after.Items))
	}
	// Nothing reached the host either: only the one running VM's VMM and
	// run dirs of the two VMs.
	if pids := vmmPIDs(c.agents[0].runDir); len(pids) != 1 {
		t.Fatalf("vmm processes after the bad inputs: %v; want only the running VM's", pids)
	}
	if ids := vmIDsOf(c.agents[0].runDir); len(ids) > 3 {
		t.Fatalf("run dirs after the bad inputs: %v", ids)
	}
	if v, _ := c.client.GetVM(ctx, vm.ID); v.State != "running" {
		t.Fatalf("bad input changed the VM: %s", v.State)
	}
	if v, _ := c.client.GetVM(ctx, idle.ID); v.State != "stopped" {
		t.Fatalf("bad input changed the stopped VM: %s", v.State)
	}
}

// manyTags is a JSON object of n distinct tags.
func manyTags(n int) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":"v"`, i)
	}
	b.WriteByte('}')
	return b.String()
}

// rawCall sends a raw request and decodes the error contract.
func rawCall(t *testing.T, c *cluster, method, path, body, token string) (int, apierr.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, c.url()+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e apierr.Error
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s %s: %d body %q is not the error contract", method, path, resp.StatusCode, raw)
		}
		if resp.Header.Get("X-Request-Id") != e.RequestID {
			t.Fatalf("X-Request-Id %q != body request_id %q", resp.Header.Get("X-Request-Id"), e.RequestID)
		}
	}
	return resp.StatusCode, e
}

// TestRestarts: a manager restarted mid-life finds its VMs; an agent
// killed with SIGKILL and restarted leaves its VMs running and finds them
// again in its inventory.
func TestRestarts(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			c := newCluster(t, engine, 1)
			ctx := context.Background()
			kernel := simtest.WriteKernel(t, c.dir)
			var ids []string
			for i := range 3 {
				vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("r%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, vm.ID)
			}
			pids := vmmPIDs(c.agents[0].runDir)

			c.restartAgent(c.agents[0])
			if now := vmmPIDs(c.agents[0].runDir); fmt.Sprint(now) != fmt.Sprint(pids) {
				t.Fatalf("vmm pids changed across agent restart: %v → %v", pids, now)
			}
			inv, err := c.agentClient(c.agents[0]).Inventory(ctx)
			if err != nil || len(inv.VMMs) != 3 {
				t.Fatalf("inventory after agent restart: %+v, %v", inv.VMMs, err)
			}

			c.restartManager()
			c.waitHosts(1)
			l, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{})
			if err != nil || len(l.Items) != 3 {
				t.Fatalf("VMs after manager restart: %+v, %v", l, err)
			}
			for _, v := range l.Items {
				if v.State != "running" {
					t.Fatalf("vm %s is %s after restarts", v.Name, v.State)
				}
			}
			// The restarted manager reaches the restarted agent's VMs.
			if err := c.client.VMAction(ctx, ids[0], "pause"); err != nil {
				t.Fatalf("pause after restarts: %v", err)
			}
			res, err := c.client.Bulk(ctx, "delete", ids)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Results {
				if !r.OK {
					t.Fatalf("bulk delete %s: %s", r.ID, r.Error)
				}
			}
			c.assertNoLeaks(ids...)
		})
	}
}
