package fcsim

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// rawGet returns the body of a GET, byte for byte.
func rawGet(t testing.TB, sock, path string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://localhost" + path)
	must(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s = %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

// golden compares got with testdata/name, after replacing dir by $DIR;
// -update rewrites the file.
func golden(t *testing.T, name, dir, got string) {
	t.Helper()
	got = strings.ReplaceAll(got, dir, "$DIR")
	path := filepath.Join("testdata", name)
	if *update {
		must(t, os.MkdirAll("testdata", 0o755))
		must(t, os.WriteFile(path, []byte(got+"\n"), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	must(t, err)
	if got != string(bytes.TrimSuffix(want, []byte("\n"))) {
		t.Fatalf("GET /vm/config differs from %s\n got %s\nwant %s", path, got, want)
	}
}

// TestVMConfigMinimal: a fresh firecracker's GET /vm/config, byte for
// byte: every key, in VmmConfig's order, nulls and empty lists included.
func TestVMConfigMinimal(t *testing.T) {
	p := startInProc(t)
	golden(t, "vmconfig-minimal.json", p.dir, rawGet(t, p.sock, "/vm/config"))
}

// TestVMConfigFull: every device configured, read back as the devices
// report themselves: defaults filled in (cache_type, io_engine,
// is_read_only), rate-limiter buckets of size 0 dropped and a burst of 0
// as null (except pmem, which keeps its configuration as given), the MAC in
// lower case, the MMDS configuration rebuilt from the interfaces, the
// vsock_id gone. It is the same after boot.
func TestVMConfigFull(t *testing.T) {
	testutil.RequireRoot(t) // a TAP, in a network namespace of the simulator's own
	ctx := context.Background()
	p := startProc(t, procOpts{netns: true, args: []string{"--enable-pci"}})
	dir, c := p.dir, p.client
	raw := func(method, path, body string) {
		t.Helper()
		if code, m := rawCall(t, p.sock, method, path, body); code/100 != 2 {
			t.Fatalf("%s %s = %d %v", method, path, code, m)
		}
	}
	kernel := simtest.WriteKernel(t, dir)
	rootfs := simtest.WriteRootfs(t, dir, 8)
	data := filepath.Join(dir, "data.img")
	must(t, os.WriteFile(data, make([]byte, 4096), 0o644))
	initrd := filepath.Join(dir, "initrd.img")
	must(t, os.WriteFile(initrd, make([]byte, 4096), 0o644))
	pm := filepath.Join(dir, "pmem.img")
	must(t, os.WriteFile(pm, make([]byte, 4096), 0o644))

	raw("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":true,"cpu_template":"T2","track_dirty_pages":true}`)
	raw("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","initrd_path":"`+initrd+`","boot_args":"console=ttyS0"}`)
	raw("PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"`+rootfs+`","is_root_device":true,"partuuid":"0eaa91a0-01"}`)
	raw("PUT", "/drives/data", `{"drive_id":"data","path_on_host":"`+data+`","is_root_device":false,"is_read_only":true,`+
		`"cache_type":"Writeback","io_engine":"Async","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100,"one_time_burst":0},"ops":{"size":0,"refill_time":10}}}`)
	raw("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02","mtu":1400,`+
		`"rx_rate_limiter":{"ops":{"size":100,"refill_time":1000,"one_time_burst":50}}}`)
	raw("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1"}`)
	raw("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth1"],"ipv4_address":"169.254.170.2","imds_compat":true}`)
	raw("PUT", "/vsock", `{"vsock_id":"v","guest_cid":3,"uds_path":"`+filepath.Join(dir, "v.sock")+`"}`)
	raw("PUT", "/entropy", `{"rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}`)
	raw("PUT", "/balloon", `{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":5,"free_page_hinting":true}`)
	raw("PUT", "/pmem/pm0", `{"id":"pm0","path_on_host":"`+pm+`","read_only":true,"rate_limiter":{"ops":{"size":0,"refill_time":0,"one_time_burst":0}}}`)
	raw("PUT", "/hotplug/memory", `{"total_size_mib":1024,"slot_size_mib":256}`)
	raw("PUT", "/serial", `{"serial_out_path":"`+filepath.Join(dir, "serial.out")+`"}`)
	raw("PUT", "/logger", `{"log_path":"`+filepath.Join(dir, "fc.log")+`"}`)
	before := rawGet(t, p.sock, "/vm/config")
	golden(t, "vmconfig-full.json", dir, before)

	must(t, c.InstanceStart(ctx))
	if after := rawGet(t, p.sock, "/vm/config"); after != before {
		t.Fatalf("GET /vm/config changed with the boot\nbefore %s\n after %s", before, after)
	}
}
