package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// TestBootImagesAddressesReadiness: with real processes (manager, agent,
// firecracker-sim) and the CLI, an initrd image goes from registration
// through a VM, a template and a snapshot to firecracker; every VM gets
// its own address of the agent's bridge in ip=, kept across stop/start
// and agent and manager restarts; the guest's readiness line sets
// guest_ready_at and the boot-to-ready metric; refusals change nothing,
// and nothing is left at the end.
func TestBootImagesAddressesReadiness(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	a := c.agents[0]
	dir := a.imagesDir(t)
	for name, data := range map[string][]byte{
		"vmlinux": simtest.KernelELF(), "initrd.cpio.gz": []byte("an initrd"), "rootfs.ext4": make([]byte, 1<<20),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bins.nexus, args...)
		cmd.Env = append(os.Environ(), "NEXUS_ADDR="+c.url(), "NEXUS_TOKEN="+c.admin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nexus %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	cli("image", "add", "--kind", "kernel", "--name", "k", "--path", "vmlinux")
	cli("image", "add", "--kind", "initrd", "--name", "i", "--path", "initrd.cpio.gz")
	cli("image", "add", "--kind", "rootfs", "--name", "r", "--path", "rootfs.ext4")
	var initrd apitypes.ImageItem
	if err := c.client.Do(ctx, "GET", "/v1/images/i", nil, nil, &initrd); err != nil || initrd.Item.Kind != "initrd" || !initrd.Item.ReadOnly {
		t.Fatalf("the initrd image: %+v, %v", initrd.Item, err)
	}

	// The agent reported its bridge.
	hosts, err := c.client.Hosts(ctx)
	if err != nil || len(hosts.Items) != 1 || hosts.Items[0].Network == nil ||
		hosts.Items[0].Network.Subnet != "172.20.0.0/16" || hosts.Items[0].Network.Gateway != "172.20.0.1" {
		t.Fatalf("hosts = %+v, %v; want the agent's bridge 172.20.0.0/16 via 172.20.0.1", hosts.Items, err)
	}

	// A VM from a template with the initrd (CLI), another instance.
	cli("template", "create", "--name", "busybox", "--kernel-image", "k", "--initrd-image", "i", "--rootfs-image", "r", "--mem", "64")
	cli("vm", "create", "--name", "web", "--template", "busybox")
	cli("vm", "create", "--name", "web2", "--template", "busybox")
	web, web2 := getByName(t, c, "web"), getByName(t, c, "web2")
	if web.InitrdImageID != initrd.Item.ID || web.IP != "172.20.0.2" || web.Gateway != "172.20.0.1" || web.Subnet != "172.20.0.0/16" || web2.IP != "172.20.0.3" {
		t.Fatalf("web: initrd %q ip %q via %q; web2 ip %q; want the initrd, 172.20.0.2 and .3 via 172.20.0.1", web.InitrdImageID, web.IP, web.Gateway, web2.IP)
	}
	// firecracker holds the initrd open: it was in its boot source.
	if mode, ok := vmmFiles(t, a.runDir, web.ID)[initrd.Item.HostPath]; !ok || mode != os.O_RDONLY {
		t.Fatalf("the VMM does not hold the initrd %s read-only", initrd.Item.HostPath)
	}
	wantArgs := "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off:172.20.0.1"
	if ev := vmEvents(t, c, web.ID); !regexp.MustCompile(`configure boot source [0-9.]+ ms \(` + regexp.QuoteMeta(wantArgs) + `\)`).MatchString(ev) {
		t.Fatalf("the command line is not %q:\n%s", wantArgs, ev)
	}
	if out := cli("vm", "ls"); !regexp.MustCompile(`web\s+running\s+172\.20\.0\.2\s`).MatchString(out) {
		t.Errorf("vm ls does not show the address:\n%s", out)
	}

	// Readiness: the simulated guest's line, noticed by the agent.
	eventually(t, 10*time.Second, "guest_ready_at of web", func() error {
		if v := getByName(t, c, "web"); v.GuestReadyAt == nil || v.BootedAt == nil || v.GuestReadyAt.Before(*v.BootedAt) {
			return fmt.Errorf("booted_at %v, guest_ready_at %v", v.BootedAt, v.GuestReadyAt)
		}
		return nil
	})
	eventually(t, 10*time.Second, "the boot-to-ready metric", func() error {
		if n := metricCount(t, c, "nexus_guest_boot_to_ready_seconds_count"); n < 2 {
			return fmt.Errorf("%d observations", n)
		}
		return nil
	})
	if out := cli("vm", "get", "web"); !strings.Contains(out, "ready ") || !strings.Contains(out, "172.20.0.2/16 via 172.20.0.1") {
		t.Errorf("vm get does not show the guest's readiness and address:\n%s", out)
	}

	// A snapshot keeps the initrd; its clone has an address of its own.
	sn, err := createSnapshot(c.client, web.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	clone, err := restoreSnapshot(c.client, sn.SnapshotID, "clone")
	if err != nil {
		t.Fatal(err)
	}
	cl := getByName(t, c, "clone")
	if cl.ID != clone.ID || cl.InitrdImageID != initrd.Item.ID || cl.IP != "172.20.0.4" || cl.GuestReadyAt == nil {
		t.Fatalf("clone: initrd %q ip %q ready %v; want the initrd, 172.20.0.4, ready at once", cl.InitrdImageID, cl.IP, cl.GuestReadyAt)
	}

	// Refusals change nothing.
	opA := nexus.New(c.url(), c.token(t, "alice", "operator", "default"))
	before, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{})
	var k apitypes.ImageItem
	if err := c.client.Do(ctx, "GET", "/v1/images/k", nil, nil, &k); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		cl     *nexus.Client
		cfg    apitypes.VMConfig
		status int
		code   string
	}{
		{"raw initrd path by an operator", opA, apitypes.VMConfig{KernelImageID: k.Item.ID, InitrdPath: initrd.Item.HostPath}, 403, "raw_path_refused"},
		{"a kernel as initrd", c.client, apitypes.VMConfig{KernelImageID: k.Item.ID, InitrdImageID: k.Item.ID}, 400, "invalid_request"},
		{"unknown initrd", c.client, apitypes.VMConfig{KernelImageID: k.Item.ID, InitrdImageID: "8e3c1d6c-0000-4000-8000-000000000000"}, 404, "not_found"},
	} {
		_, err := tc.cl.CreateVM(ctx, apitypes.CreateVMRequest{Name: "bad", VMConfig: tc.cfg}, true)
		wantCode(t, err, tc.status, tc.code)
	}
	if err := c.client.Do(ctx, "DELETE", "/v1/images/i", nil, nil, nil); !isStatus(err, 409) {
		t.Errorf("delete an initrd in use: %v; want 409 image_in_use", err)
	}
	if after, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{}); len(after.Items) != len(before.Items) {
		t.Fatalf("refusals changed the VM list: %d → %d", len(before.Items), len(after.Items))
	}

	// Agent and manager restarts: the VMs keep their addresses; a stop and
	// start boots with the same ip=; a new VM gets a free one.
	c.restartAgent(a)
	c.restartManager()
	c.waitHosts(1)
	if err := c.client.VMAction(ctx, web2.ID, "stop"); err != nil {
		t.Fatal(err)
	}
	if err := c.client.VMAction(ctx, web2.ID, "start"); err != nil {
		t.Fatal(err)
	}
	if v := getByName(t, c, "web2"); v.IP != "172.20.0.3" || !strings.Contains(vmEvents(t, c, web2.ID), "ip=172.20.0.3::") {
		t.Fatalf("web2 after restarts and stop/start: %s; want 172.20.0.3 again", v.IP)
	}
	eventually(t, 10*time.Second, "readiness after the restart", func() error {
		if v := getByName(t, c, "web2"); v.GuestReadyAt == nil {
			return fmt.Errorf("web2 not ready")
		}
		return nil
	})
	if err := c.client.DeleteVM(ctx, web.ID); err != nil {
		t.Fatal(err)
	}
	late, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "late", VMConfig: apitypes.VMConfig{KernelImageID: k.Item.ID}}, true)
	if err != nil || late.IP != "172.20.0.2" {
		t.Fatalf("a VM after web's delete: %s, %v; want web's freed 172.20.0.2", late.IP, err)
	}

	ids := []string{web.ID, web2.ID, cl.ID, late.ID}
	for _, id := range ids[1:] {
		if err := c.client.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := deleteSnapshot(c.client, sn.SnapshotID); err != nil {
		t.Fatal(err)
	}
	c.assertNoLeaks(ids...)
}

// getByName returns a VM by name.
func getByName(t *testing.T, c *cluster, name string) apitypes.VM {
	t.Helper()
	l, err := c.client.ListVMs(context.Background(), nexus.ListVMsOptions{Name: name})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("vm %s: %+v, %v", name, l.Items, err)
	}
	return l.Items[0]
}

// metricCount reads one sample of the manager's /metrics.
func metricCount(t *testing.T, c *cluster, name string) int {
	t.Helper()
	resp, err := http.Get(c.url() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(n)
		}
	}
	return 0
}
