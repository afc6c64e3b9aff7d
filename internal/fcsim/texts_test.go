package fcsim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// TestFirecrackerTexts checks whole fault messages, word for word, against
// firecracker 1.16's (rpc_interface.rs, device_manager, the request
// parsers, serde_json, musl's strerror): request → status and text.
func TestFirecrackerTexts(t *testing.T) {
	dir := t.TempDir()
	kernel := simtest.WriteKernel(t, dir)
	rootfs := simtest.WriteRootfs(t, dir, 4)
	missing := filepath.Join(dir, "no", "such")
	boot := []string{
		`PUT /boot-source {"kernel_image_path":"` + kernel + `"}`,
		`PUT /drives/rootfs {"drive_id":"rootfs","path_on_host":"` + rootfs + `","is_root_device":true}`,
		`PUT /actions {"action_type":"InstanceStart"}`,
	}
	const serde = "An error occurred when deserializing the json body of a request: "
	for _, tc := range []struct {
		name   string
		pci    bool
		setup  []string
		req    string // "METHOD path body", body "-" for none
		status int
		want   string // "" for success
	}{
		// Hot-plug and hot-unplug (v1.16).
		{name: "hotplug without PCI", setup: boot, req: `PUT /drives/d2 {"drive_id":"d2","path_on_host":"` + rootfs + `","is_root_device":false}`,
			status: 400, want: "PCI is not enabled"},
		{name: "unplug without PCI", setup: boot, req: "DELETE /drives/rootfs -", status: 400, want: "PCI is not enabled"},
		{name: "hotplug of an id in use", pci: true, setup: boot, req: `PUT /drives/rootfs {"drive_id":"rootfs","path_on_host":"` + rootfs + `","is_root_device":false}`,
			status: 400, want: "Device ID in use"},
		{name: "hotplug of a root drive", pci: true, setup: boot, req: `PUT /drives/d2 {"drive_id":"d2","path_on_host":"` + rootfs + `","is_root_device":true}`,
			status: 400, want: "Drive config error: A root block device already exists!"},
		{name: "hotplug of a drive", pci: true, setup: boot, req: `PUT /drives/d2 {"drive_id":"d2","path_on_host":"` + rootfs + `","is_root_device":false}`, status: 204},
		{name: "unplug of an unknown device", pci: true, setup: boot, req: "DELETE /drives/nope -", status: 400, want: "Device not found"},
		{name: "unplug of the root device", pci: true, setup: boot, req: "DELETE /drives/rootfs -", status: 400, want: "Cannot unplug root device"},
		{name: "unplug of an unknown pmem", pci: true, setup: boot, req: "DELETE /pmem/p0 -", status: 400, want: "Device not found"},
		{name: "unplug before boot", req: "DELETE /drives/rootfs -", status: 400, want: "The requested operation is not supported before starting the microVM."},
		{name: "unplug with a body", req: "DELETE /drives/rootfs {}", status: 400, want: "Empty Delete request."},
		{name: "unplug of an invalid id", req: "DELETE /drives/a-b -", status: 400, want: "API Resource IDs can only contain alphanumeric characters and underscores."},

		// Logger.
		{name: "unknown level", req: `PUT /logger {"level":"loud"}`, status: 400, want: serde + "Invalid LevelFilter at line 1 column 16."},
		{name: "level of the wrong type", req: `PUT /logger {"level":5}`, status: 400, want: serde + "invalid type: integer `5`, expected a string at line 1 column 10."},
		{name: "level in any case", req: `PUT /logger {"level":"wArNiNg"}`, status: 204},
		{name: "log file in a missing directory", req: `PUT /logger {"log_path":"` + missing + `"}`, status: 400,
			want: "Logger error: Failed to open target file: No such file or directory (os error 2)"},
		{name: "metrics file in a missing directory", req: `PUT /metrics {"metrics_path":"` + missing + `"}`, status: 400,
			want: "Metrics error: Cannot initialize the metrics system due to bad user input: No such file or directory (os error 2)"},
		{name: "metrics with an unknown field", req: `PUT /metrics {"metrics_path":"` + filepath.Join(dir, "m.json") + `","extra":1}`, status: 204},

		// Paths.
		{name: "query string", req: "GET /machine-config?x=1 -", status: 400, want: "Invalid request method and/or path: GET machine-config?x=1."},
		{name: "balloon sub-path", req: "GET /balloon/foo -", status: 400, want: "Unrecognized GET request path `foo`."},
		{name: "hinting without command", req: "GET /balloon/hinting -", status: 400, want: "Unrecognized GET request path `/hinting/`."},
		{name: "unknown hinting command", req: "PATCH /balloon/hinting/go {}", status: 400, want: "Unrecognized PATCH request path `/hinting/go`."},
		{name: "mmds sub-path", req: "PUT /mmds/foo {}", status: 400, want: "Unrecognized PUT request path `foo`."},
		{name: "snapshot operation", req: "PUT /snapshot/foo {}", status: 400, want: "Invalid request method and/or path: PUT /snapshot/foo."},
		{name: "struct as an array", req: "PUT /machine-config [2,256]", status: 204},
		{name: "array too short", req: "PUT /machine-config [2]", status: 400,
			want: serde + "invalid length 1, expected struct MachineConfig with 6 elements at line 1 column 3."},

		// Devices before boot.
		{name: "pmem root beside a root drive", setup: boot[1:2], req: `PUT /pmem/p0 {"id":"p0","path_on_host":"/x","root_device":true}`, status: 400,
			want: "Pmem config error: Attempt to add pmem as a root device while the root device defined as a block device"},
		{name: "pmem file missing at boot", setup: append([]string{`PUT /pmem/p0 {"id":"p0","path_on_host":"` + missing + `"}`}, boot[:2]...),
			req: `PUT /actions {"action_type":"InstanceStart"}`, status: 400,
			want: "Start microvm error: Cannot create pmem device: Error accessing backing file: No such file or directory (os error 2)"},
		{name: "serial output in a missing directory", setup: append([]string{`PUT /serial {"serial_out_path":"` + missing + `"}`}, boot[:2]...),
			req: `PUT /actions {"action_type":"InstanceStart"}`, status: 400,
			want: "Start microvm error: Failed to create device manager: Error with EventFd: No such file or directory (os error 2)"},
		{name: "drive without a path", req: `PUT /drives/d {"drive_id":"d","is_root_device":false}`, status: 400,
			want: "Drive config error: Unable to create the virtio block device: Invalid block config."},
		{name: "memory hotplug smaller than a slot", req: `PUT /hotplug/memory {"total_size_mib":100}`, status: 400,
			want: "Memory hotplug config error: Total size must not be lower than slot size (128 MiB)"},
		{name: "memory hotplug block size", req: `PUT /hotplug/memory {"total_size_mib":1024,"block_size_mib":3}`, status: 400,
			want: "Memory hotplug config error: Block size must be a power of 2"},
		{name: "vsock socket path taken (musl's words)", setup: []string{`PUT /vsock {"guest_cid":3,"uds_path":"` + filepath.Join(dir, "taken.sock") + `"}`},
			req: `PUT /vsock {"guest_cid":3,"uds_path":"` + rootfs + `"}`, status: 400,
			want: "Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)"},
		{name: "MMDS address not link-local", req: `PUT /mmds/config {"network_interfaces":[],"ipv4_address":"169.254.0.1"}`, status: 400,
			want: "MMMDS config error: The MMDS IPv4 address is not link local."},
		{name: "MMDS address syntax", req: `PUT /mmds/config {"network_interfaces":[],"ipv4_address":"1.2.3"}`, status: 400,
			want: serde + "invalid IPv4 address syntax at line 1 column 47."},

		// After boot.
		{name: "patch of an unknown drive", setup: boot, req: `PATCH /drives/nope {"drive_id":"nope","path_on_host":"` + rootfs + `"}`, status: 400,
			want: "Drive config error: Unable to patch the block device: Failed perform action on device: Device not found Please verify the request arguments."},
		{name: "no balloon after boot", setup: boot, req: "GET /balloon -", status: 400, want: "Internal VMM error: Failed perform action on device: Device not found"},
		{name: "no memory hotplug after boot", setup: boot, req: "GET /hotplug/memory -", status: 400,
			want: "Internal VMM error: Failed perform action on device: Device not found"},
		{name: "MMDS data but no MMDS interface after boot", setup: append([]string{`PUT /mmds {"a":1}`}, boot...), req: "GET /mmds -", status: 400,
			want: "MMDS error: The MMDS data store is not initialized."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if tc.pci {
				args = append(args, "--enable-pci")
			}
			p := startInProc(t, args...)
			for _, s := range tc.setup {
				parts := strings.SplitN(s, " ", 3)
				if code, body := rawCall(t, p.sock, parts[0], parts[1], parts[2]); code/100 != 2 {
					t.Fatalf("setup %s: %d %v", s, code, body)
				}
			}
			parts := strings.SplitN(tc.req, " ", 3)
			code, body := rawCall(t, p.sock, parts[0], parts[1], parts[2])
			if code != tc.status || body["fault_message"] != tc.want {
				t.Fatalf("%s = %d %q; want %d %q", tc.req, code, body["fault_message"], tc.status, tc.want)
			}
		})
	}
}

// TestLoggerLevelResets: every PUT /logger sets the level, to Info when
// the body names none, as Logger::update does.
func TestLoggerLevelResets(t *testing.T) {
	ctx := context.Background()
	p := startInProc(t)
	logPath := filepath.Join(p.dir, "fc.log")
	must(t, p.client.PutLogger(ctx, firecracker.Logger{LogPath: logPath, Level: "Error"}))
	p.client.DescribeInstance(ctx)
	b, _ := os.ReadFile(logPath)
	if strings.Contains(string(b), "The API server received") {
		t.Fatalf("Info lines logged at level Error:\n%s", b)
	}
	must(t, p.client.PutLogger(ctx, firecracker.Logger{ShowLevel: firecracker.Bool(true)}))
	p.client.DescribeInstance(ctx)
	b, _ = os.ReadFile(logPath)
	if !strings.Contains(string(b), ":INFO] The API server received a Get request on \"/\".") {
		t.Fatalf("no Info line after a PUT /logger without level:\n%s", b)
	}
}
