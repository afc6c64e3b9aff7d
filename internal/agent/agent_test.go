package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vishvananda/netlink"

	"github.com/nexus-microvm/nexus/internal/agent/hollow"
	"github.com/nexus-microvm/nexus/internal/agent/jail"
	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

func TestMain(m *testing.M) {
	jail.RunIfHelper() // jail-mode tests re-execute this binary as the helper
	testutil.IsolateNetwork()
	simtest.Main(m)
}

const testToken = "test-join-token"

// env is one agent under test: a real supervisor running firecracker-sim,
// real netlink on a bridge of its own (no NAT, so the host's firewall is
// untouched), served over real HTTP.
type env struct {
	t      testing.TB
	kind   string // "real" or "hollow"
	agent  *Agent
	sup    VMMs
	net    *network.Network // nil on a hollow host
	layout hostlayout.Layout
	srv    *httptest.Server
	client *agentapi.Client
	bridge string
	owner  string
	dir    string
}

func newEnv(t testing.TB) *env { return newEnvJail(t, nil) }

// newEnvJail is newEnv with VMMs confined by jc (nil: not jailed).
func newEnvJail(t testing.TB, jc *vmm.JailConfig) *env {
	t.Helper()
	return newEnvTuned(t, jc, nil)
}

// newEnvTuned is newEnvJail with the supervisor's and the agent's
// configuration changed by tune.
func newEnvTuned(t testing.TB, jc *vmm.JailConfig, tune func(*vmm.Config, *Config)) *env {
	t.Helper()
	testutil.RequireRoot(t)
	bin := simtest.Binary(t)
	dir := t.TempDir()
	layout := hostlayout.Layout{RunDir: filepath.Join(dir, "run")}
	log := slog.New(slog.DiscardHandler)
	owner := fmt.Sprintf("agenttest%06d", rand.IntN(1_000_000))
	vcfg := vmm.Config{Bin: bin, Layout: layout, Logger: log, Owner: owner, Jail: jc}
	cfg := Config{Name: "test", Layout: layout, Token: testToken, StopGrace: 200 * time.Millisecond, DevMode: true}
	if tune != nil {
		tune(&vcfg, &cfg)
	}
	sup, err := vmm.New(vcfg)
	if err != nil {
		t.Fatal(err)
	}
	bridge := fmt.Sprintf("nxt%06d", rand.IntN(1_000_000))
	nw, err := network.New(network.Config{Owner: owner, Bridge: bridge, Uplink: network.UplinkNone}, log)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, sup, nw, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	e := &env{t: t, kind: "real", agent: a, sup: sup, net: nw, layout: layout, srv: srv, bridge: bridge, owner: owner, dir: dir,
		client: agentapi.NewClient(srv.URL, testToken, nil)}
	t.Cleanup(func() {
		srv.Close()
		ctx := context.Background()
		for _, h := range sup.List() {
			_ = sup.Stop(ctx, h.VMID, 0)
		}
		_, _ = nw.Teardown(ctx, true) // our TAPs and bridge only
		nw.Close()
		sup.ReleaseCgroups()
	})
	return e
}

// newHollowEnv is an agent on a hollow host: the same API and handlers
// over in-process simulated VMMs and an in-memory network. No root.
func newHollowEnv(t testing.TB) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "nxa") // short: socket paths live below it
	if err != nil {
		t.Fatal(err)
	}
	layout := hostlayout.Layout{RunDir: filepath.Join(dir, "run")}
	vmms := hollow.NewVMMs(layout, nil)
	hn := hollow.NewNetwork("hollowbr")
	a, err := New(Config{Name: "hollow", Layout: layout, Token: testToken, StopGrace: 200 * time.Millisecond, DevMode: true, Simulated: true}, vmms, hn, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() {
		srv.Close()
		vmms.StopAll()
		os.RemoveAll(dir)
	})
	return &env{t: t, kind: "hollow", agent: a, sup: vmms, layout: layout, srv: srv, bridge: "hollowbr", dir: dir,
		client: agentapi.NewClient(srv.URL, testToken, nil)}
}

// eachHost runs f against a real agent (root: real processes and
// netlink) and a hollow one: both must answer the agent API alike.
func eachHost(t *testing.T, f func(t *testing.T, e *env)) {
	for _, kind := range []string{"real", "hollow"} {
		t.Run(kind, func(t *testing.T) {
			if kind == "real" {
				f(t, newEnv(t))
			} else {
				f(t, newHollowEnv(t))
			}
		})
	}
}

// eachHostJailedToo is eachHost plus a real agent in jail mode: what the
// agent refuses it refuses alike whether its VMMs are jailed or not.
func eachHostJailedToo(t *testing.T, f func(t *testing.T, e *env)) {
	eachHost(t, f)
	t.Run("jailed", func(t *testing.T) {
		f(t, newEnvJail(t, &vmm.JailConfig{UIDBase: 2_125_000_000 + rand.IntN(100_000)*10, UIDCount: 10}))
	})
}

// newVM returns a fresh VM id with a kernel and rootfs in the test dir.
func (e *env) newVM() (id, kernel, rootfs string) {
	id = uuid.NewString()
	return id, simtest.WriteKernel(e.t, e.dir), simtest.WriteRootfs(e.t, e.dir, 8)
}

func (e *env) do(method, path, token string, body any) (*http.Response, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case rawBody:
		r = strings.NewReader(string(b)) // sent as it is, valid JSON or not
	default:
		raw, _ := json.Marshal(body)
		r = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, raw
}

// rawBody is a request body do sends byte for byte.
type rawBody string

// boot runs the whole sequence through the agent as the manager would.
func (e *env) boot(ctx context.Context, id, kernel, rootfs string) {
	e.t.Helper()
	tap, err := e.client.Tap(ctx, id, agentapi.TapRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	sp, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128})
	if err != nil {
		e.t.Fatal(err)
	}
	fc := e.client.Firecracker(id)
	steps := []func() error{
		func() error { return fc.PutLogger(ctx, firecracker.Logger{LogPath: sp.LogPath}) },
		func() error { return fc.PutMetrics(ctx, firecracker.Metrics{MetricsPath: sp.MetricsPath}) },
		func() error {
			return fc.PutMachineConfig(ctx, firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})
		},
		func() error { return fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel}) },
		func() error {
			return fc.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: rootfs, IsReadOnly: firecracker.Bool(false)})
		},
		func() error {
			return fc.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: tap.Tap, GuestMAC: tap.MAC})
		},
		func() error { return fc.InstanceStart(ctx) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			e.t.Fatalf("boot step %d: %v", i, err)
		}
	}
}

func TestAuthRequired(t *testing.T) {
	eachHost(t, func(t *testing.T, e *env) {
		for _, tc := range []struct{ name, token string }{{"none", ""}, {"wrong", "nope"}} {
			t.Run(tc.name, func(t *testing.T) {
				for _, path := range []string{"/agent/v1/health", "/agent/v1/inventory", "/agent/v1/vms/abc/proxy/"} {
					resp, raw := e.do(http.MethodGet, path, tc.token, nil)
					if resp.StatusCode != http.StatusUnauthorized {
						t.Fatalf("GET %s with %s token: status %d, want 401", path, tc.name, resp.StatusCode)
					}
					var ae apierr.Error
					if json.Unmarshal(raw, &ae) != nil || ae.Code != "unauthorized" || ae.RequestID == "" {
						t.Fatalf("GET %s: body %s is not the error contract", path, raw)
					}
				}
			})
		}
		resp, _ := e.do(http.MethodGet, "/agent/v1/health", testToken, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("health with the token: %d", resp.StatusCode)
		}
	})
}

func TestTapLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := uuid.NewString()
	for i := range 2 { // twice: idempotent
		tr, err := e.client.Tap(ctx, id, agentapi.TapRequest{})
		if err != nil {
			t.Fatalf("tap call %d: %v", i+1, err)
		}
		if tr.Tap != hostlayout.TapName(id) || tr.MAC != hostlayout.GuestMAC(id).String() || tr.Bridge != e.bridge {
			t.Fatalf("tap answer %+v", tr)
		}
	}
	link, err := netlink.LinkByName(hostlayout.TapName(id))
	if err != nil {
		t.Fatalf("tap not visible: %v", err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		t.Fatalf("%s is a %s, not a tuntap", link.Attrs().Name, link.Type())
	}
	br, err := netlink.LinkByName(e.bridge)
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("tap master %d, want bridge %d", link.Attrs().MasterIndex, br.Attrs().Index)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("tap is not up")
	}
	for i := range 2 { // stop twice: idempotent
		if err := e.client.Stop(ctx, id, agentapi.StopRequest{}); err != nil {
			t.Fatalf("stop call %d: %v", i+1, err)
		}
	}
	if _, err := netlink.LinkByName(hostlayout.TapName(id)); err == nil {
		t.Fatal("tap still exists after stop")
	}
	for i := range 2 {
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatalf("delete call %d: %v", i+1, err)
		}
	}
}

func TestSpawnProxyAndStop(t *testing.T) {
	eachHost(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		id, kernel, rootfs := e.newVM()
		if _, err := e.client.Tap(ctx, id, agentapi.TapRequest{}); err != nil {
			t.Fatal(err)
		}
		sp, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 2, MemMib: 256})
		if err != nil {
			t.Fatal(err)
		}
		again, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 2, MemMib: 256})
		if err != nil || !again.AlreadyRunning || again.PID != sp.PID {
			t.Fatalf("second spawn = %+v, %v; want the same pid, already running", again, err)
		}
		if sp.APISock != e.layout.SockPath(id) {
			t.Fatalf("socket %s, want %s", sp.APISock, e.layout.SockPath(id))
		}

		// firecracker's 204 comes back as 204.
		resp, raw := e.do(http.MethodPut, "/agent/v1/vms/"+id+"/proxy/machine-config", testToken,
			map[string]any{"vcpu_count": 2, "mem_size_mib": 256})
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("PUT machine-config: %d %s", resp.StatusCode, raw)
		}
		// firecracker's 400 comes back as 400 with its fault_message, unchanged.
		resp, raw = e.do(http.MethodPut, "/agent/v1/vms/"+id+"/proxy/machine-config", testToken,
			map[string]any{"vcpu_count": 64, "mem_size_mib": 256})
		var fe firecracker.Error
		if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(raw, &fe) != nil || !strings.Contains(fe.FaultMessage, "vCPUs") {
			t.Fatalf("PUT machine-config vcpu 64: %d %s; want 400 with firecracker's fault_message", resp.StatusCode, raw)
		}
		if resp.Header.Get("Server") != "Firecracker API" {
			t.Fatalf("headers of firecracker not relayed: Server=%q", resp.Header.Get("Server"))
		}
		mc, err := e.client.Firecracker(id).GetMachineConfig(ctx)
		if err != nil || mc.VcpuCount != 2 || mc.MemSizeMib != 256 {
			t.Fatalf("GET machine-config = %+v, %v", mc, err)
		}

		// The rest of the boot through the typed client.
		fc := e.client.Firecracker(id)
		if err := fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel}); err != nil {
			t.Fatal(err)
		}
		if err := fc.PutDrive(ctx, firecracker.Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: rootfs}); err != nil {
			t.Fatal(err)
		}
		if err := fc.InstanceStart(ctx); err != nil {
			t.Fatal(err)
		}
		info, err := fc.DescribeInstance(ctx)
		if err != nil || info.State != firecracker.StateRunning {
			t.Fatalf("instance = %+v, %v", info, err)
		}
		capa, err := e.client.Capacity(ctx)
		if err != nil || capa.Allocated.Vcpu != 2 || capa.Allocated.MemMib != 256 || capa.VMs != 1 {
			t.Fatalf("capacity = %+v, %v", capa, err)
		}

		if err := e.client.Stop(ctx, id, agentapi.StopRequest{GraceMs: 100}); err != nil {
			t.Fatal(err)
		}
		if vmmAlive(sp.PID) {
			t.Fatal("vmm still running after stop")
		}
		if _, err := os.Stat(sp.APISock); !os.IsNotExist(err) {
			t.Fatalf("socket left after stop: %v", err)
		}
		// A stopped VM's proxy answers 502 in the contract, not a hang.
		resp, raw = e.do(http.MethodGet, "/agent/v1/vms/"+id+"/proxy/", testToken, nil)
		var ae apierr.Error
		if resp.StatusCode != http.StatusBadGateway || json.Unmarshal(raw, &ae) != nil || ae.Code != "vmm_unreachable" {
			t.Fatalf("proxy to stopped vm: %d %s", resp.StatusCode, raw)
		}
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(e.layout.VMDir(id)); !os.IsNotExist(err) {
			t.Fatalf("run dir left after delete: %v", err)
		}
	})
}

func TestProxyRefusals(t *testing.T) {
	eachHostJailedToo(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		id, _, _ := e.newVM()
		other := uuid.NewString()
		for _, v := range []string{id, other} {
			if _, err := e.client.Spawn(ctx, v, agentapi.SpawnRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		outside := filepath.Join(e.dir, "outside.sock")
		if l, err := net.Listen("unix", outside); err == nil {
			t.Cleanup(func() { l.Close() })
		}
		link := filepath.Join(e.layout.SockDir(id), "link.sock")
		if err := os.Symlink(outside, link); err != nil {
			t.Fatal(err)
		}
		base := "/agent/v1/vms/" + id + "/proxy"
		cases := []struct {
			name, method, path string
			body               any
			status             int
			code               string
		}{
			{"dotdot sock", "GET", base + "/?sock=../../" + other + "/sock/fc.sock", nil, 403, "forbidden"},
			{"relative dotdot", "GET", base + "/?sock=" + e.layout.SockDir(id) + "/../../x/fc.sock", nil, 403, "forbidden"},
			{"symlink out of run dir", "GET", base + "/?sock=" + link, nil, 403, "forbidden"},
			{"another vm's socket", "GET", base + "/?sock=" + e.layout.SockPath(other), nil, 403, "forbidden"},
			{"absolute elsewhere", "GET", base + "/?sock=/run/docker.sock", nil, 403, "forbidden"},
			{"not an endpoint", "GET", base + "/etc/passwd", nil, 403, "endpoint_not_allowed"},
			{"wrong method", "POST", base + "/actions", nil, 403, "endpoint_not_allowed"},
			{"unclean path", "GET", base + "/vm/../version", nil, 403, "forbidden"},
			{"logger outside run dir", "PUT", base + "/logger", map[string]any{"log_path": "/etc/cron.d/x"}, 403, "forbidden"},
			{"snapshot into other vm", "PUT", base + "/snapshot/create", map[string]any{"snapshot_path": e.layout.VMDir(other) + "/s", "mem_file_path": e.layout.VMDir(id) + "/m"}, 403, "forbidden"},
			{"metrics via dotdot", "PUT", base + "/metrics", map[string]any{"metrics_path": "../" + other + "/metrics.json"}, 403, "forbidden"},
			{"another vm's tap", "PUT", base + "/network-interfaces/eth0", map[string]any{"iface_id": "eth0", "host_dev_name": hostlayout.TapName(other)}, 403, "forbidden"},
			{"bad vm id", "GET", "/agent/v1/vms/..%2fx/proxy/", nil, 400, "invalid_request"},
			{"upper-case vm id", "GET", "/agent/v1/vms/" + strings.ToUpper(id) + "/proxy/", nil, 400, "invalid_request"},
			{"snapshot over the saved handle", "PUT", base + "/snapshot/create", map[string]any{"snapshot_path": "vmm.json", "mem_file_path": "snapshots/m"}, 403, "forbidden"},
			{"metrics over the api socket", "PUT", base + "/metrics", map[string]any{"metrics_path": "sock/fc.sock"}, 403, "forbidden"},
			{"device as a drive", "PUT", base + "/drives/data", map[string]any{"drive_id": "data", "is_root_device": false, "path_on_host": "/dev/null"}, 403, "forbidden"},
			{"agent token as a kernel", "PUT", base + "/boot-source", map[string]any{"kernel_image_path": filepath.Join(e.layout.RunDir, "agent.token")}, 403, "forbidden"},
			{"another vm's disk", "PUT", base + "/drives/rootfs", map[string]any{"drive_id": "rootfs", "is_root_device": true, "path_on_host": e.layout.VMDir(other) + "/drives/rootfs.ext4"}, 403, "forbidden"},
			{"directory as initrd", "PUT", base + "/boot-source", map[string]any{"kernel_image_path": "/bin/true", "initrd_path": "/etc"}, 403, "forbidden"},
			// Fail closed: a body the agent cannot read as one JSON object
			// never reaches firecracker.
			{"array to logger", "PUT", base + "/logger", rawBody(`[{"log_path":"/etc/cron.d/x"}]`), 400, "invalid_request"},
			{"array to network-interfaces", "PUT", base + "/network-interfaces/eth0", rawBody(`[{"iface_id":"eth0","host_dev_name":"tap-x"}]`), 400, "invalid_request"},
			{"array to snapshot/create", "PUT", base + "/snapshot/create", rawBody(`[]`), 400, "invalid_request"},
			{"string body", "PUT", base + "/logger", rawBody(`"logs/fc.log"`), 400, "invalid_request"},
			{"path of the wrong type", "PUT", base + "/logger", rawBody(`{"log_path":["/etc/cron.d/x"]}`), 400, "invalid_request"},
			{"nested object of the wrong type", "PUT", base + "/snapshot/load", rawBody(`{"snapshot_path":"snapshots/s","mem_backend":"/etc/shadow"}`), 400, "invalid_request"},
			{"tap of the wrong type", "PUT", base + "/network-interfaces/eth0", rawBody(`{"iface_id":"eth0","host_dev_name":7}`), 400, "invalid_request"},
			{"overrides of the wrong type", "PUT", base + "/snapshot/load", rawBody(`{"snapshot_path":"snapshots/s","network_overrides":{"host_dev_name":"tap-x"}}`), 400, "invalid_request"},
			{"trailing data", "PUT", base + "/logger", rawBody(`{"log_path":"logs/fc.log"} {"log_path":"/etc/cron.d/x"}`), 400, "invalid_request"},
			{"trailing garbage", "PUT", base + "/logger", rawBody(`{"log_path":"logs/fc.log"}x`), 400, "invalid_request"},
			{"duplicate key", "PUT", base + "/logger", rawBody(`{"log_path":"logs/fc.log","log_path":"/etc/cron.d/x"}`), 400, "invalid_request"},
			{"duplicate key by escape", "PUT", base + "/logger", rawBody(`{"log_path":"logs/fc.log","log\u005fpath":"/etc/cron.d/x"}`), 400, "invalid_request"},
			{"nested duplicate key", "PUT", base + "/snapshot/load", rawBody(`{"snapshot_path":"snapshots/s","mem_backend":{"backend_type":"File","backend_path":"snapshots/m","backend_path":"/etc/shadow"}}`), 400, "invalid_request"},
			{"escaped path outside", "PUT", base + "/logger", rawBody(`{"log\u005fpath":"\/etc\/cron.d\/x"}`), 403, "forbidden"},
			{"not JSON", "PUT", base + "/logger", rawBody(`{log_path: "/etc/cron.d/x"}`), 400, "invalid_request"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				resp, raw := e.do(tc.method, tc.path, testToken, tc.body)
				var ae apierr.Error
				if resp.StatusCode != tc.status || json.Unmarshal(raw, &ae) != nil || ae.Code != tc.code || ae.Message == "" {
					t.Fatalf("%s %s: %d %s; want %d %s", tc.method, tc.path, resp.StatusCode, raw, tc.status, tc.code)
				}
			})
		}
		// The same socket named explicitly is fine, absolute or relative.
		for _, q := range []string{e.layout.SockPath(id), "fc.sock"} {
			resp, raw := e.do("GET", base+"/?sock="+q, testToken, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("own socket %q: %d %s", q, resp.StatusCode, raw)
			}
		}
	})
}

func TestInventoryAndRecover(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id, kernel, rootfs := e.newVM()
	e.boot(ctx, id, kernel, rootfs)
	orphanDir := e.layout.VMDir(uuid.NewString())
	if err := os.MkdirAll(orphanDir, 0o750); err != nil {
		t.Fatal(err)
	}

	inv, err := e.client.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.VMMs) != 1 || inv.VMMs[0].VMID != id || inv.VMMs[0].PID == 0 {
		t.Fatalf("vmms = %+v", inv.VMMs)
	}
	if len(inv.Taps) != 1 || inv.Taps[0].VMID != id || !inv.Taps[0].Attached {
		t.Fatalf("taps = %+v", inv.Taps)
	}
	if len(inv.Sockets) != 1 || !inv.Sockets[0].Live || inv.Sockets[0].VMID != id {
		t.Fatalf("sockets = %+v", inv.Sockets)
	}
	if len(inv.RunDirs) != 2 {
		t.Fatalf("run dirs = %+v, want the VM's and the orphan", inv.RunDirs)
	}

	// A new supervisor (as after an agent restart) adopts the live VMM.
	sup2, err := vmm.New(vmm.Config{Bin: simtest.Binary(t), Layout: e.layout, Owner: e.owner})
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := sup2.Recover()
	if err != nil || len(adopted) != 1 || adopted[0].VMID != id || adopted[0].PID != inv.VMMs[0].PID {
		t.Fatalf("recover = %+v, %v", adopted, err)
	}
	if err := sup2.Stop(ctx, id, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if vmmAlive(adopted[0].PID) {
		t.Fatal("adopted vmm survived stop")
	}
}

func TestLogsAndMetrics(t *testing.T) {
	eachHost(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		id, kernel, rootfs := e.newVM()
		e.boot(ctx, id, kernel, rootfs)
		if err := e.client.Firecracker(id).FlushMetrics(ctx); err != nil {
			t.Fatal(err)
		}
		ll, err := e.client.Logs(ctx, id, "fc", 3)
		if err != nil || len(ll.Lines) != 3 || !strings.Contains(strings.Join(ll.Lines, "\n"), "FlushMetrics") {
			t.Fatalf("fc log tail = %+v, %v", ll, err)
		}
		cons, err := e.client.Logs(ctx, id, "console", 100)
		if err != nil || len(cons.Lines) == 0 {
			t.Fatalf("console = %+v, %v", cons, err)
		}
		rec, err := e.client.Metrics(ctx, id)
		if err != nil || rec.At == nil || !json.Valid(rec.Record) {
			t.Fatalf("metrics = %+v, %v", rec, err)
		}
		if _, err := e.client.Logs(ctx, id, "secret", 1); err == nil {
			t.Fatal("unknown log source accepted")
		}
		for _, p := range []string{"/etc/passwd", e.layout.VMsDir() + "/../agent.token", e.layout.LogPath(id) + "/../../../../x"} {
			if _, err := e.client.TailFile(ctx, p, 1); err == nil {
				t.Fatalf("tail of %s allowed", p)
			}
		}
		tl, err := e.client.TailFile(ctx, e.layout.LogPath(id), 1)
		if err != nil || len(tl.Lines) != 1 {
			t.Fatalf("tail own log = %+v, %v", tl, err)
		}
	})
}

// TestLifecycle100 repeats the whole lifecycle and checks that nothing is
// left: no TAP, socket, process or directory.
func TestLifecycle100(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	n := 100
	if testing.Short() {
		n = 10
	}
	kernel := simtest.WriteKernel(t, e.dir)
	rootfs := simtest.WriteRootfs(t, e.dir, 8)
	var pids []int
	var ids []string
	for i := range n {
		id := uuid.NewString()
		ids = append(ids, id)
		e.boot(ctx, id, kernel, rootfs)
		h, ok := e.sup.Get(id)
		if !ok {
			t.Fatalf("iteration %d: vmm not tracked", i)
		}
		pids = append(pids, h.PID)
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatalf("iteration %d: delete: %v", i, err)
		}
	}
	// Other packages' tests may run at the same time: check our own names.
	for _, id := range ids {
		if _, err := netlink.LinkByName(hostlayout.TapName(id)); err == nil {
			t.Errorf("tap %s left behind", hostlayout.TapName(id))
		}
	}
	for _, pid := range pids {
		if vmmAlive(pid) {
			t.Errorf("vmm pid %d still running", pid)
		}
	}
	entries, _ := os.ReadDir(e.layout.VMsDir())
	if len(entries) != 0 {
		t.Errorf("%d run dirs left", len(entries))
	}
	if socks, _ := filepath.Glob(e.layout.VMsDir() + "/*/sock/*"); len(socks) != 0 {
		t.Errorf("sockets left: %v", socks)
	}
}

// vmmAlive reports whether pid is a live (non-zombie) firecracker-sim.
func vmmAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Contains(string(cmd), "firecracker-sim")
}

// TAPs that are not this agent's — a loose one with a VM-like name, one of
// another agent on this very bridge — are invisible to inventory and
// refused by the orphan delete, so the manager's GC can never reach them.
func TestForeignTapsUntouched(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.net.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	loose, other := hostlayout.TapName(uuid.NewString()), hostlayout.TapName(uuid.NewString())
	br, err := netlink.LinkByName(e.bridge)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []*netlink.Tuntap{
		{LinkAttrs: netlink.LinkAttrs{Name: loose}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR},
		{LinkAttrs: netlink.LinkAttrs{Name: other, MasterIndex: br.Attrs().Index, Alias: "nexus/someoneelse/vm/x"},
			Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR},
	} {
		if err := netlink.LinkAdd(l); err != nil {
			t.Fatalf("add %s: %v", l.Name, err)
		}
		name := l.Name
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(name); err == nil {
				_ = netlink.LinkDel(l)
			}
		})
	}
	if l, _ := netlink.LinkByName(other); l != nil {
		_ = netlink.LinkSetAlias(l, "nexus/someoneelse/vm/x")
	}
	inv, err := e.client.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Taps) != 0 {
		t.Errorf("inventory taps = %+v; want none (neither is ours)", inv.Taps)
	}
	for _, name := range []string{loose, other} {
		err := e.client.DeleteTap(ctx, name)
		var ae *apierr.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != "not_ours" {
			t.Errorf("DELETE /taps/%s = %v; want 409 not_ours", name, err)
		}
		if _, err := netlink.LinkByName(name); err != nil {
			t.Errorf("%s after the refused delete: %v", name, err)
		}
	}
}

// A proxy batch runs each call through the proxy's own checks, in order,
// and stops at the first refusal; malformed batches are refused whole.
func TestProxyBatch(t *testing.T) {
	eachHostJailedToo(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		id, kernel, _ := e.newVM()
		if _, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128}); err != nil {
			t.Fatal(err)
		}
		call := func(method, path string, body any) firecracker.Call {
			b, _ := json.Marshal(body)
			return firecracker.Call{Method: method, Path: path, Body: b}
		}
		res, err := e.client.ProxyBatch(ctx, id, []firecracker.Call{
			call("PUT", "/machine-config", firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128}),
			call("PUT", "/drives/rootfs", map[string]any{"drive_id": "rootfs", "path_on_host": "/dev/null", "is_root_device": true}),
			call("PUT", "/boot-source", firecracker.BootSource{KernelImagePath: kernel}),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Results) != 2 || res.Results[0].Status != 204 || res.Results[1].Status != 403 {
			t.Fatalf("results = %+v; want 204, then the device refused (403), and nothing after it", res.Results)
		}
		for name, calls := range map[string][]firecracker.Call{
			"empty":         nil,
			"too many":      make([]firecracker.Call, 33),
			"relative path": {call("PUT", "machine-config", firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})},
		} {
			for i := range calls {
				if calls[i].Method == "" {
					calls[i] = call("GET", "/", nil)
				}
			}
			_, err := e.client.ProxyBatch(ctx, id, calls)
			var ae *apierr.Error
			if !errors.As(err, &ae) || ae.Status != 400 {
				t.Errorf("%s batch = %v; want 400", name, err)
			}
		}
		if err := e.client.Stop(ctx, id, agentapi.StopRequest{}); err != nil {
			t.Fatal(err)
		}
	})
}

// A spawn may carry the boot's calls: the agent makes them once the VMM
// is up, each through the proxy's checks as in a batch, relative logger
// and metrics paths landing in the VM's run dir (its jail's root when
// jailed). A refused call ends the list; the VMM runs all the same. Calls
// that cannot be run are refused before anything is made.
func TestSpawnCarriesCalls(t *testing.T) {
	eachHostJailedToo(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		id, kernel, _ := e.newVM()
		call := func(method, path string, body any) firecracker.Call {
			b, _ := json.Marshal(body)
			return firecracker.Call{Method: method, Path: path, Body: b}
		}
		for name, calls := range map[string][]firecracker.Call{
			"too many":      make([]firecracker.Call, 33),
			"relative path": {call("PUT", "machine-config", firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})},
			"bad method":    {call("PU T", "/machine-config", firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})},
		} {
			for i := range calls {
				if calls[i].Method == "" {
					calls[i] = call("GET", "/", nil)
				}
			}
			_, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Calls: calls})
			var ae *apierr.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
				t.Errorf("spawn with %s calls = %v; want 400", name, err)
			}
			if _, err := os.Stat(e.layout.VMDir(id)); !os.IsNotExist(err) {
				t.Fatalf("spawn with %s calls made the run dir: %v", name, err)
			}
		}
		sp, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Calls: []firecracker.Call{
			call("PUT", "/logger", firecracker.Logger{LogPath: hostlayout.LogRel, Level: "Info"}),
			call("PUT", "/metrics", firecracker.Metrics{MetricsPath: hostlayout.MetricsRel}),
			call("PUT", "/machine-config", firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128}),
			call("PUT", "/drives/rootfs", map[string]any{"drive_id": "rootfs", "path_on_host": "/dev/null", "is_root_device": true}),
			call("PUT", "/boot-source", firecracker.BootSource{KernelImagePath: kernel}),
		}})
		if err != nil {
			t.Fatal(err)
		}
		st := []int{}
		for _, r := range sp.Results {
			st = append(st, r.Status)
		}
		if fmt.Sprint(st) != "[204 204 204 403]" || sp.PID == 0 {
			t.Fatalf("spawn answered pid %d, results %v; want three calls done, the device refused (403), nothing after it", sp.PID, st)
		}
		for _, f := range []string{e.layout.LogPath(id), e.layout.MetricsPath(id)} {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("the VMM's file: %v", err)
			}
		}
		// The VMM runs: the rest can follow on their own.
		res, err := e.client.ProxyBatch(ctx, id, []firecracker.Call{
			call("PUT", "/boot-source", firecracker.BootSource{KernelImagePath: kernel}),
			call("PUT", "/actions", firecracker.InstanceActionInfo{ActionType: "InstanceStart"}),
		})
		if err != nil || len(res.Results) != 2 || res.Results[1].Status != 204 {
			t.Fatalf("batch after the spawn = %+v, %v", res, err)
		}
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	})
}

// A delete removes the VM's TAP while its VMM stops, not after the VMM
// has gone: unregistering a link is the slowest part of a delete. The VMM
// here is frozen, so it outlives SIGTERM until the grace ends in SIGKILL;
// its TAP must go in the meantime.
func TestDeleteTapEarly(t *testing.T) {
	e := newEnvTuned(t, nil, func(_ *vmm.Config, c *Config) { c.StopGrace = time.Second })
	ctx := context.Background()
	id, _, _ := e.newVM()
	sp, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Tap: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(sp.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.client.Delete(ctx, id) }()
	tapGone := false
	for !tapGone {
		select {
		case err := <-done:
			t.Fatalf("delete returned (%v) before its TAP was seen gone while the VMM stopped", err)
		case <-time.After(5 * time.Millisecond):
		}
		if _, err := netlink.LinkByName(hostlayout.TapName(id)); err != nil {
			tapGone = true
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", sp.PID)); err != nil {
				t.Fatalf("the TAP went only with the VMM (%v)", err)
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if inv, err := e.client.Inventory(ctx); err != nil || len(inv.Taps) != 0 || len(inv.VMMs) != 0 || len(inv.RunDirs) != 0 {
		t.Fatalf("inventory after delete = %+v, %v; want empty", inv, err)
	}
}

// Spawn with tap makes the VM's TAP in the same call, as POST /tap would:
// the VMM then configures its network interface with it and starts (a
// jailed VMM opens it as its own uid). A TAP that cannot be made leaves
// no VMM behind, and a foreign link in its way is not touched.
func TestSpawnWithTap(t *testing.T) {
	eachHostJailedToo(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		id, kernel, _ := e.newVM()
		sp, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Tap: true})
		if err != nil {
			t.Fatal(err)
		}
		want := agentapi.TapResponse{Tap: hostlayout.TapName(id), MAC: hostlayout.GuestMAC(id).String(), Bridge: e.bridge}
		if sp.Tap == nil || *sp.Tap != want {
			t.Fatalf("spawn answered tap %+v; want %+v", sp.Tap, want)
		}
		again, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Tap: true})
		if err != nil || !again.AlreadyRunning || again.PID != sp.PID || again.Tap == nil || *again.Tap != want {
			t.Fatalf("second spawn = %+v, %v; want the same VMM and TAP", again, err)
		}
		inv, err := e.client.Inventory(ctx)
		if err != nil || len(inv.Taps) != 1 || inv.Taps[0].VMID != id || len(inv.VMMs) != 1 {
			t.Fatalf("inventory = %+v, %v; want the VM's VMM and TAP", inv, err)
		}
		if e.net != nil {
			link, err := netlink.LinkByName(want.Tap)
			if err != nil || link.Attrs().Flags&net.FlagUp == 0 {
				t.Fatalf("tap %s: %v; want it up on the bridge", want.Tap, err)
			}
		}
		fc := e.client.Firecracker(id)
		for i, call := range []func() error{
			func() error { return fc.PutBootSource(ctx, firecracker.BootSource{KernelImagePath: kernel}) },
			func() error {
				return fc.PutNetworkInterface(ctx, firecracker.NetworkInterface{IfaceID: "eth0", HostDevName: want.Tap, GuestMAC: want.MAC})
			},
			func() error { return fc.InstanceStart(ctx) },
		} {
			if err := call(); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		if err := e.client.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if inv, err := e.client.Inventory(ctx); err != nil || len(inv.Taps) != 0 || len(inv.VMMs) != 0 {
			t.Fatalf("inventory after delete = %+v, %v; want empty", inv, err)
		}

		// tap with netns is refused before anything is made.
		id2 := uuid.NewString()
		_, err = e.client.Spawn(ctx, id2, agentapi.SpawnRequest{Tap: true, NetNS: true})
		var ae *apierr.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			t.Fatalf("spawn with tap and netns = %v; want 400", err)
		}
		if _, err := os.Stat(e.layout.VMDir(id2)); !os.IsNotExist(err) {
			t.Fatalf("a refused spawn made the run dir: %v", err)
		}
		if e.net == nil {
			return
		}
		// A link of someone else's with the VM's TAP name.
		id3 := uuid.NewString()
		foreign := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: hostlayout.TapName(id3)}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
		if err := netlink.LinkAdd(foreign); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(foreign.Name); err == nil {
				_ = netlink.LinkDel(l)
			}
		})
		_, err = e.client.Spawn(ctx, id3, agentapi.SpawnRequest{Tap: true})
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != "tap_conflict" {
			t.Fatalf("spawn over a foreign link = %v; want 409 tap_conflict", err)
		}
		if inv, err := e.client.Inventory(ctx); err != nil || len(inv.VMMs) != 0 {
			t.Fatalf("inventory after the refused spawn = %+v, %v; want no VMM", inv, err)
		}
		if _, err := netlink.LinkByName(foreign.Name); err != nil {
			t.Fatalf("the foreign link after the refused spawn: %v", err)
		}
		if err := e.client.Delete(ctx, id3); err != nil {
			t.Fatal(err)
		}
	})
}

// Spawns past MaxSpawns wait their turn: with one slot, a spawn sent while
// another's VMM is still starting (its InstanceStart takes 400 ms) answers
// after it; with two, before it; and with one slot behind a spawn that
// takes longer than its turn (1.5 s), before it too. A caller that leaves
// while waiting gets 499 and no VMM is started for it.
func TestSpawnTurns(t *testing.T) {
	for _, tc := range []struct {
		slots int
		delay string
		want  string
	}{{1, "400ms", "slow fast"}, {2, "400ms", "fast slow"}, {1, "1.5s", "fast slow"}} {
		slots := tc.slots
		t.Run(fmt.Sprintf("%d-%s", slots, tc.delay), func(t *testing.T) { // short: socket paths live below
			e := newEnvTuned(t, nil, func(v *vmm.Config, c *Config) {
				v.Env = append(v.Env, fcsim.StartDelayEnv+"="+tc.delay)
				c.MaxSpawns = slots
			})
			ctx := context.Background()
			slow, kernel, _ := e.newVM()
			fast, _, _ := e.newVM()
			fast2, _, _ := e.newVM()
			body := func(v any) []byte { b, _ := json.Marshal(v); return b }
			order := make(chan string, 2)
			var wg sync.WaitGroup
			wg.Go(func() {
				sp, err := e.client.Spawn(ctx, slow, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Calls: []firecracker.Call{
					{Method: "PUT", Path: "/boot-source", Body: body(firecracker.BootSource{KernelImagePath: kernel})},
					{Method: "PUT", Path: "/actions", Body: body(firecracker.InstanceActionInfo{ActionType: "InstanceStart"})},
				}})
				if err != nil || len(sp.Results) != 2 || sp.Results[1].Status != http.StatusNoContent {
					t.Errorf("slow spawn = %+v, %v", sp, err)
				}
				order <- "slow"
			})
			// The slow spawn holds its slot once its VMM runs.
			deadline := time.Now().Add(10 * time.Second)
			for _, ok := e.sup.Get(slow); !ok; _, ok = e.sup.Get(slow) {
				if time.Now().After(deadline) {
					t.Fatal("the slow VMM never started")
				}
				time.Sleep(time.Millisecond)
			}
			wg.Go(func() {
				if _, err := e.client.Spawn(ctx, fast, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128}); err != nil {
					t.Errorf("fast spawn: %v", err)
				}
				order <- "fast"
			})
			wg.Wait()
			if got := <-order + " " + <-order; got != tc.want {
				t.Fatalf("answers in the order %q; want %q", got, tc.want)
			}
			if tc.want != "slow fast" {
				return
			}
			// A third waits behind a slow one and leaves: nothing is made
			// for it, not even once its turn would have come.
			if err := e.client.Delete(ctx, slow); err != nil {
				t.Fatal(err)
			}
			gone, _, _ := e.newVM()
			wg.Go(func() {
				_, _ = e.client.Spawn(ctx, slow, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Calls: []firecracker.Call{
					{Method: "PUT", Path: "/boot-source", Body: body(firecracker.BootSource{KernelImagePath: kernel})},
					{Method: "PUT", Path: "/actions", Body: body(firecracker.InstanceActionInfo{ActionType: "InstanceStart"})},
				}})
			})
			deadline = time.Now().Add(10 * time.Second)
			for _, ok := e.sup.Get(slow); !ok; _, ok = e.sup.Get(slow) {
				if time.Now().After(deadline) {
					t.Fatal("the slow VMM never started again")
				}
				time.Sleep(time.Millisecond)
			}
			cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			_, err := e.client.Spawn(cctx, gone, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128})
			cancel()
			if err == nil {
				t.Fatal("a spawn whose caller left while it waited succeeded")
			}
			wg.Wait()
			// Turns go in order: once a later spawn has had its own, the
			// one that left would have had its turn too.
			if _, err := e.client.Spawn(ctx, fast2, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128}); err != nil {
				t.Fatal(err)
			}
			if _, ok := e.sup.Get(gone); ok {
				t.Fatal("a spawn whose caller left while it waited started a VMM")
			}
			if _, err := os.Stat(e.layout.VMDir(gone)); !os.IsNotExist(err) {
				t.Fatalf("a spawn whose caller left while it waited made its run dir: %v", err)
			}
		})
	}
}

// A call a spawn carries for another socket of the VM (?sock=) goes to
// that socket, not down the connection to the VM's own: with nothing
// listening there, firecracker's answer is the proxy's 502.
func TestSpawnOtherSock(t *testing.T) { // short: socket paths live below its name
	e := newEnv(t)
	id, _, _ := e.newVM()
	b, _ := json.Marshal(firecracker.MachineConfig{VcpuCount: 1, MemSizeMib: 128})
	sp, err := e.client.Spawn(context.Background(), id, agentapi.SpawnRequest{Vcpu: 1, MemMib: 128, Calls: []firecracker.Call{
		{Method: "PUT", Path: "/machine-config", Body: b},
		{Method: "PUT", Path: "/machine-config?sock=other.sock", Body: b},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sp.Results) != 2 || sp.Results[0].Status != http.StatusNoContent || sp.Results[1].Status != http.StatusBadGateway {
		t.Fatalf("results %+v; want 204 from the VM's socket, then 502 from the other", sp.Results)
	}
}
