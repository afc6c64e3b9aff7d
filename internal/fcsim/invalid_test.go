package fcsim

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// rawCall sends one request with an arbitrary body ("-" = no body) and
// returns the status and the decoded JSON body.
func rawCall(t testing.TB, sock, method, path, body string) (int, map[string]string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	var r io.Reader
	if body != "-" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, r)
	must(t, err)
	resp, err := hc.Do(req)
	must(t, err)
	defer resp.Body.Close()
	if resp.Header.Get("Server") != "Firecracker API" {
		t.Errorf("Server header = %q", resp.Header.Get("Server"))
	}
	b, _ := io.ReadAll(resp.Body)
	out := map[string]string{}
	if len(b) > 0 {
		json.Unmarshal(b, &out)
	}
	return resp.StatusCode, out
}

type badCase struct {
	name         string
	setup        []string // "METHOD path body" requests that must succeed first
	method, path string
	body         string // "-": no body
	status       int
	phrase       string
}

// TestInvalidRequests checks firecracker's status code and the key phrase
// of its fault message for requests firecracker rejects.
func TestInvalidRequests(t *testing.T) {
	dir := t.TempDir()
	kernel := simtest.WriteKernel(t, dir)
	rootfs := simtest.WriteRootfs(t, dir, 4)
	notELF := filepath.Join(dir, "not-a-kernel")
	must(t, os.WriteFile(notELF, []byte("#!/bin/sh\necho not a kernel\n"), 0o644))
	existing := filepath.Join(dir, "taken.sock")
	must(t, os.WriteFile(existing, nil, 0o644))
	boot := []string{
		`PUT /boot-source {"kernel_image_path":"` + kernel + `"}`,
		`PUT /drives/rootfs {"drive_id":"rootfs","path_on_host":"` + rootfs + `","is_root_device":true}`,
		`PUT /actions {"action_type":"InstanceStart"}`,
	}
	mc := func(body string) badCase {
		return badCase{method: "PUT", path: "/machine-config", body: body, status: 400}
	}
	with := func(c badCase, name, phrase string) badCase { c.name, c.phrase = name, phrase; return c }
	cases := []badCase{
		with(mc(`{"vcpu_count":1,"mem_size_mib":128,"foo":1}`), "unknown field",
			"An error occurred when deserializing the json body of a request: unknown field `foo`, expected one of `vcpu_count`, `mem_size_mib`"),
		with(mc(`{"mem_size_mib":128}`), "missing field", "missing field `vcpu_count` at line 1 column 20."),
		with(mc(`{"vcpu_count":300,"mem_size_mib":128}`), "u8 overflow", "invalid value: integer `300`, expected u8 at line 1 column 17."),
		with(mc(`{"vcpu_count":"2","mem_size_mib":128}`), "wrong type", "invalid type: string \"2\", expected u8"),
		with(mc(`{"vcpu_count":0,"mem_size_mib":128}`), "zero vcpus", "Machine config error: The number of vCPUs must be greater than 0, less than 32"),
		with(mc(`{"vcpu_count":33,"mem_size_mib":128}`), "too many vcpus", "The number of vCPUs must be greater than 0"),
		with(mc(`{"vcpu_count":3,"mem_size_mib":128,"smt":true}`), "odd vcpus with smt", "must be 1 or an even number if SMT is enabled"),
		with(mc(`{"vcpu_count":1,"mem_size_mib":0}`), "zero memory", "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size."),
		with(mc(`{"vcpu_count":1,"mem_size_mib":129,"huge_pages":"2M"}`), "odd memory with 2M pages", "not a multiple of the configured page size"),
		with(mc(`{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}`), "unknown huge pages", "unknown variant `1G`, expected `None` or `2M`"),
		with(mc(`x`), "not json", "expected value at line 1 column 1."),
		with(mc(`{"vcpu_count":1,`), "truncated json", "EOF while parsing a value at line 1 column 16."),
		with(mc(`{"vcpu_count":1,}`), "trailing comma", "trailing comma at line 1 column 17"),
		with(mc(`-`), "empty PUT", "Empty PUT request."),
		{name: "empty PATCH", method: "PATCH", path: "/machine-config", body: `{}`, status: 400, phrase: "Empty PATCH request."},
		{name: "PATCH without body", method: "PATCH", path: "/vm", body: `-`, status: 400, phrase: "Empty PATCH request."},
		{name: "GET with body", method: "GET", path: "/machine-config", body: `{}`, status: 400, phrase: "GET request cannot have a body."},
		{name: "unknown path", method: "PUT", path: "/foo", body: `{}`, status: 400, phrase: "Invalid request method and/or path: PUT foo."},
		{name: "wrong method for path", method: "PATCH", path: "/boot-source", body: `{}`, status: 400, phrase: "Invalid request method and/or path: PATCH boot-source."},
		{name: "drive id mismatch", method: "PUT", path: "/drives/a", body: `{"drive_id":"b","path_on_host":"` + rootfs + `","is_root_device":false}`,
			status: 400, phrase: "The id from the path does not match the id from the body!"},
		{name: "iface id mismatch", method: "PUT", path: "/network-interfaces/a", body: `{"iface_id":"b","host_dev_name":"tap0"}`,
			status: 400, phrase: "The id from the path [a] does not match the id from the body [b]!"},
		{name: "invalid path id", method: "PUT", path: "/drives/bad-id", body: `{"drive_id":"bad-id","is_root_device":false}`,
			status: 400, phrase: "API Resource IDs can only contain alphanumeric characters and underscores."},
		{name: "empty path id", method: "PUT", path: "/drives/", body: `{"drive_id":"","is_root_device":false}`, status: 400, phrase: "The ID cannot be empty."},
		{name: "bad MAC", method: "PUT", path: "/network-interfaces/eth0", body: `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:zz:10:00:02"}`,
			status: 400, phrase: "The provided MAC address is invalid."},
		{name: "missing kernel file", method: "PUT", path: "/boot-source", body: `{"kernel_image_path":"` + dir + `/nope"}`,
			status: 400, phrase: "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"},
		{name: "missing initrd file", method: "PUT", path: "/boot-source", body: `{"kernel_image_path":"` + kernel + `","initrd_path":"` + dir + `/nope"}`,
			status: 400, phrase: "The initrd file cannot be opened due to invalid path or invalid permissions. No such file or directory (os error 2)"},
		{name: "missing drive file", method: "PUT", path: "/drives/d1", body: `{"drive_id":"d1","path_on_host":"` + dir + `/nope","is_root_device":false}`,
			status: 400, phrase: "No such file or directory (os error 2)"},
		{name: "second root device", setup: boot[1:2], method: "PUT", path: "/drives/other",
			body: `{"drive_id":"other","path_on_host":"` + rootfs + `","is_root_device":true}`, status: 400, phrase: "Drive config error: A root block device already exists!"},
		{name: "start without kernel", method: "PUT", path: "/actions", body: `{"action_type":"InstanceStart"}`,
			status: 400, phrase: "Start microvm error: Cannot start microvm without kernel configuration."},
		{name: "start with non-ELF kernel", setup: []string{`PUT /boot-source {"kernel_image_path":"` + notELF + `"}`}, method: "PUT", path: "/actions",
			body: `{"action_type":"InstanceStart"}`, status: 400, phrase: kernelLoaderFault},
		{name: "unknown action", method: "PUT", path: "/actions", body: `{"action_type":"Reboot"}`, status: 400,
			phrase: "unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`"},
		{name: "pause before boot", method: "PATCH", path: "/vm", body: `{"state":"Paused"}`, status: 400,
			phrase: "The requested operation is not supported before starting the microVM."},
		{name: "unknown vm state", method: "PATCH", path: "/vm", body: `{"state":"Running"}`, status: 400,
			phrase: "unknown variant `Running`, expected `Paused` or `Resumed`"},
		{name: "flush before boot", method: "PUT", path: "/actions", body: `{"action_type":"FlushMetrics"}`, status: 400, phrase: "not supported before starting"},
		{name: "snapshot before boot", method: "PUT", path: "/snapshot/create", body: `{"snapshot_path":"s","mem_file_path":"m"}`, status: 400,
			phrase: "not supported before starting"},
		{name: "balloon stats before boot", method: "GET", path: "/balloon/statistics", body: `-`, status: 400, phrase: "not supported before starting"},
		{name: "metrics twice", setup: []string{`PUT /metrics {"metrics_path":"` + dir + `/m1.json"}`}, method: "PUT", path: "/metrics",
			body: `{"metrics_path":"` + dir + `/m2.json"}`, status: 400,
			phrase: "Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed."},
		{name: "mmds config without ifaces", method: "PUT", path: "/mmds/config", body: `{"network_interfaces":[]}`, status: 400,
			phrase: "interface IDs that allow forwarding MMDS requests is empty."},
		{name: "mmds config unknown iface", method: "PUT", path: "/mmds/config", body: `{"network_interfaces":["eth9"]}`, status: 400,
			phrase: "does not correspond to any existing network interface."},
		{name: "mmds patch before put", method: "PATCH", path: "/mmds", body: `{"a":1}`, status: 400, phrase: "The MMDS data store is not initialized."},
		{name: "mmds over the limit", method: "PUT", path: "/mmds", body: `{"k":"` + strings.Repeat("x", 200) + `"}`, status: 413, phrase: "MMDS limit exceeded"},
		{name: "load with two memory sources", method: "PUT", path: "/snapshot/load",
			body: `{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}`, status: 400,
			phrase: "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"},
		{name: "load without memory source", method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s"}`, status: 400,
			phrase: "missing field: either `mem_backend` or `mem_file_path` is required"},
		{name: "load after boot-specific config", setup: []string{`PUT /machine-config {"vcpu_count":1,"mem_size_mib":64}`}, method: "PUT",
			path: "/snapshot/load", body: `{"snapshot_path":"s","mem_file_path":"m"}`, status: 400,
			phrase: "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."},
		{name: "snapshot without operation", method: "PUT", path: "/snapshot", body: `{}`, status: 400, phrase: "Missing snapshot operation type."},
		{name: "balloon larger than memory", method: "PUT", path: "/balloon", body: `{"amount_mib":1000,"deflate_on_oom":false}`, status: 400,
			phrase: "Amount of pages requested is too large."},
		{name: "no balloon", method: "GET", path: "/balloon", body: `-`, status: 400, phrase: "No balloon device found."},
		{name: "vsock path taken", method: "PUT", path: "/vsock", body: `{"guest_cid":3,"uds_path":"` + existing + `"}`, status: 400,
			phrase: "Address in use (os error 98)"},
		{name: "bad log level", method: "PUT", path: "/logger", body: `{"level":"loud"}`, status: 400, phrase: "Invalid LevelFilter at line 1 column 16."},
		// After boot.
		{name: "machine config after boot", setup: boot, method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":64}`,
			status: 400, phrase: "The requested operation is not supported after starting the microVM."},
		{name: "second InstanceStart", setup: boot, method: "PUT", path: "/actions", body: `{"action_type":"InstanceStart"}`, status: 400,
			phrase: "not supported after starting"},
		{name: "logger after boot", setup: boot, method: "PUT", path: "/logger", body: `{"level":"Info"}`, status: 400, phrase: "not supported after starting"},
		{name: "snapshot while running", setup: boot, method: "PUT", path: "/snapshot/create", body: `{"snapshot_path":"` + dir + `/s","mem_file_path":"` + dir + `/m"}`,
			status: 400, phrase: "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"},
		{name: "hotplug drive without pci", setup: boot, method: "PUT", path: "/drives/d2", body: `{"drive_id":"d2","path_on_host":"` + rootfs + `","is_root_device":false}`,
			status: 400, phrase: "PCI is not enabled"},
		{name: "load after boot", setup: boot, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s","mem_file_path":"m"}`, status: 400,
			phrase: "not supported after starting"},
		{name: "mmds never used after boot", setup: boot, method: "GET", path: "/mmds", body: `-`, status: 400,
			phrase: "MMDS error: The MMDS data store is not initialized."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := startInProc(t, "--mmds-size-limit", "100")
			for _, s := range tc.setup {
				parts := strings.SplitN(s, " ", 3)
				if code, body := rawCall(t, p.sock, parts[0], parts[1], parts[2]); code/100 != 2 {
					t.Fatalf("setup %s: %d %v", s, code, body)
				}
			}
			code, body := rawCall(t, p.sock, tc.method, tc.path, tc.body)
			if code != tc.status || !strings.Contains(body["fault_message"], tc.phrase) {
				t.Fatalf("%s %s = %d %q; want %d containing %q", tc.method, tc.path, code, body["fault_message"], tc.status, tc.phrase)
			}
			if tc.name == "start with non-ELF kernel" {
				// A failed InstanceStart leaves the VM Not started.
				info, err := p.client.DescribeInstance(context.Background())
				must(t, err)
				if info.State != firecracker.StateNotStarted {
					t.Fatalf("state after failed start = %q", info.State)
				}
			}
		})
	}
}

// TestFailedLoadExits checks that a failed restore answers 400 and then
// ends the process with 1.
func TestFailedLoadExits(t *testing.T) {
	p := startInProc(t)
	code, body := rawCall(t, p.sock, "PUT", "/snapshot/load", `{"snapshot_path":"`+p.dir+`/missing","mem_backend":{"backend_type":"File","backend_path":"m"}}`)
	want := "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)"
	if code != 400 || body["fault_message"] != want {
		t.Fatalf("= %d %q; want 400 %q", code, body["fault_message"], want)
	}
	select {
	case c := <-p.done:
		p.done <- c
		if c != 1 {
			t.Fatalf("exit code = %d; want 1", c)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("process did not exit after a failed snapshot load")
	}
}

// TestConnectionLimit: firecracker keeps at most 10 API connections; an
// 11th is answered and closed, and the first ten keep working.
func TestConnectionLimit(t *testing.T) {
	p := startInProc(t)
	// The readiness probe's connection counts until the server sees it
	// closed.
	time.Sleep(100 * time.Millisecond)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < maxConns; i++ {
		c, err := net.Dial("unix", p.sock)
		must(t, err)
		conns = append(conns, c)
	}
	// Let the server register them.
	time.Sleep(50 * time.Millisecond)
	extra, err := net.Dial("unix", p.sock)
	must(t, err)
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(extra)
	// micro_http's canned answer, byte for byte: no space after 503, no
	// Content-Type, and the connection closed.
	want := "HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\nContent-Length: 40\r\n\r\n" +
		`{ "error": "Too many open connections" }`
	if string(b) != want {
		t.Fatalf("11th connection got %q; want %q", b, want)
	}
	conns[0].SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(conns[0], "GET /version HTTP/1.1\r\nHost: localhost\r\n\r\n")
	buf := make([]byte, 512)
	n, _ := conns[0].Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200 \r\nServer: Firecracker API\r\n") || !strings.Contains(string(buf[:n]), `{"firecracker_version":"1.16.1-sim"}`) {
		t.Fatalf("first connection got %q", buf[:n])
	}
}

// TestMMDSKeepsNumbers: MMDS holds any JSON; integers stay exact and a
// PATCH is a JSON merge patch.
func TestMMDSKeepsNumbers(t *testing.T) {
	p := startInProc(t)
	if code, _ := rawCall(t, p.sock, "PUT", "/mmds", `{"big":12345678901234567890,"gone":1,"nested":{"a":1}}`); code != 204 {
		t.Fatalf("PUT /mmds = %d", code)
	}
	if code, _ := rawCall(t, p.sock, "PATCH", "/mmds", `{"gone":null,"nested":{"b":2}}`); code != 204 {
		t.Fatalf("PATCH /mmds = %d", code)
	}
	raw, err := p.client.GetMMDS(context.Background())
	must(t, err)
	if string(raw) != `{"big":12345678901234567890,"nested":{"a":1,"b":2}}` {
		t.Fatalf("GET /mmds = %s", raw)
	}
}
