package manager

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// A boot is two requests to the agent: the drives are prepared, then one
// spawn carries the whole configuration and the start. The VM's logger
// and metrics files are where the agent keeps them, and each step is
// still reported on its own.
func TestBootIsOneSpawnRequest(t *testing.T) {
	e, k, r, _ := imagesEnv(t)
	vm, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: "one", VMConfig: apitypes.VMConfig{KernelImageID: k.ID, RootfsImageID: r.ID}}, CreateOptions{Wait: true})
	if err != nil || vm.State != store.VMRunning {
		t.Fatalf("create = %+v, %v", vm, err)
	}
	if n, b := e.faults.requests("/spawn"), e.faults.requests("/proxy-batch"); n != 1 || b != 0 {
		t.Errorf("%d spawn and %d proxy-batch requests; want the boot's calls in its one spawn", n, b)
	}
	ev := e.events(vm.ID)
	steps := []string{"prepare drives", "spawn vmm", "configure logger", "configure metrics", "configure machine",
		"configure boot source", "configure drives", "configure network", "start instance", "record running"}
	at := -1
	for _, st := range steps {
		i := strings.Index(ev, st+" ")
		if i <= at {
			t.Fatalf("boot event does not report %q after the steps before it:\n%s", st, ev)
		}
		at = i
	}
	for _, f := range []string{filepath.Join(filepath.Dir(vm.LogPath), "fc.log"), filepath.Join(filepath.Dir(filepath.Dir(vm.LogPath)), "metrics.json")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("firecracker's file: %v", err)
		}
	}
	if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
		t.Fatal(err)
	}
	e.assertHostEmpty()
}

// An agent of the release before (a rolling upgrade does managers first)
// refuses the calls a spawn carries, and prepares drives only in a run dir
// its spawn made: the boot falls back to what it knows (spawn, prepare,
// one proxy batch) and the VM runs as before.
func TestBootOnAgentOfReleaseBefore(t *testing.T) {
	e, k, r, _ := imagesEnv(t)
	calls := e.faults.add(t, &fault{method: "POST", suffix: "/spawn", status: 400,
		body: `{"error":"invalid_request","status":400,"message":"invalid body: json: unknown field \"calls\""}`,
		only: func(_ string, body []byte) bool { return strings.Contains(string(body), `"calls"`) }})
	drives := e.faults.add(t, &fault{method: "POST", suffix: "/drives", status: 404,
		body: `{"error":"not_found","status":404,"message":"vm run dir \"x\" not found","suggestion":"spawn the VM first"}`,
		only: func(path string, _ []byte) bool {
			id := filepath.Base(filepath.Dir(path))
			_, err := os.Stat(filepath.Join(e.ag.RunDir, "vms", id, "logs"))
			return err != nil // no spawn yet
		}})
	for i, cfg := range []apitypes.VMConfig{{KernelPath: e.kernel}, {KernelImageID: k.ID, RootfsImageID: r.ID}} {
		before := e.faults.requests("/proxy-batch")
		vm, err := e.m.VMs.CreateVM(e.ctx, All, apitypes.CreateVMRequest{Name: fmt.Sprintf("old-%d", i), VMConfig: cfg}, CreateOptions{Wait: true})
		if err != nil || vm.State != store.VMRunning || vm.VMMPID == 0 {
			t.Fatalf("create on an older agent = %+v, %v", vm, err)
		}
		if n := e.faults.requests("/proxy-batch") - before; n != 1 {
			t.Errorf("%d proxy batches; want the calls in one", n)
		}
		if ev := e.events(vm.ID); !strings.Contains(ev, "start instance") || !strings.Contains(ev, "record running") {
			t.Errorf("events:\n%s", ev)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(vm.LogPath), "fc.log")); err != nil {
			t.Errorf("fc.log: %v", err)
		}
		if err := e.m.VMs.DeleteVM(e.ctx, All, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
	if calls.hits != 1 || drives.hits != 1 {
		t.Errorf("the older agent refused calls %d times and drives %d times; want once each (then the boot knew)", calls.hits, drives.hits)
	}
	e.assertHostEmpty()
}
