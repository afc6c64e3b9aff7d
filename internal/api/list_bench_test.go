package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// BenchmarkReadsAt10000VMs measures GET /v1/vms?limit=100 and GET
// /v1/vms/{id} through the whole HTTP handler (authentication, the store,
// the views, JSON) with 10,000 VMs in SQLite, rows filled as a boot fills
// them, one request at a time: what a read costs the manager, without the
// load `make bench-scale` puts around it.
func BenchmarkReadsAt10000VMs(b *testing.B) {
	ctx := context.Background()
	ts := newTestServerAt(b, filepath.Join(b.TempDir(), "nexus.db"))
	mem, vcpu := 512, 2
	sp, err := json.Marshal(apitypes.VMConfig{KernelPath: "/srv/fc/images/vmlinux", RootfsPath: "/srv/fc/images/rootfs.ext4",
		BootArgs: "console=ttyS0 reboot=k panic=1 pci=off", MemMib: &mem, Vcpu: &vcpu})
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	for i := range 10000 {
		now := time.Now()
		vm, err := ts.st.CreateVM(ctx, store.VM{Name: fmt.Sprintf("vm-%05d", i), Project: "default", State: store.VMRunning, DesiredState: store.VMRunning,
			VCPU: vcpu, MemMiB: mem, HostID: fmt.Sprintf("host-%03d", i%100), HostAddr: "http://127.0.0.1:9100",
			APISock: "/run/nexus/vms/x/sock/fc.sock", LogPath: "/run/nexus/vms/x/logs/fc.log", TAP: "nx1234567890ab", MAC: "02:00:00:00:00:01",
			KernelPath: "/srv/fc/images/vmlinux", RootfsPath: "/srv/fc/images/rootfs.ext4", BootArgs: "console=ttyS0",
			IP: fmt.Sprintf("172.20.%d.%d", i/200, 2+i%200), Subnet: "172.20.0.0/16", Gateway: "172.20.0.1", BootedAt: &now, GuestReadyAt: &now, VMMPID: 1000 + i,
			Tags: map[string]string{"team": "ci", "job": fmt.Sprint(i)}, Spec: sp})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, vm.ID)
	}
	token := ts.tokens[auth.RoleAdmin]
	do := func(path string) time.Duration {
		req, _ := http.NewRequest("GET", path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := newRecorder()
		s := time.Now()
		ts.srv.ServeHTTP(rec, req)
		d := time.Since(s)
		if rec.code != http.StatusOK {
			b.Fatalf("GET %s: %d", path, rec.code)
		}
		return d
	}
	do("/v1/vms?limit=1") // warm the token cache: the first use pays argon2id
	var list, get []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		list = append(list, do("/v1/vms?limit=100"))
		get = append(get, do("/v1/vms/"+ids[i*7919%len(ids)]))
	}
	testutil.ReportLatency(b, "list100", list)
	testutil.ReportLatency(b, "get", get)
}
