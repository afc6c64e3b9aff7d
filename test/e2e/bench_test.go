package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/apitypes"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkFleet200 is `make bench`: 200 VMs created in parallel batches on
// one host with firecracker-sim, API reads measured while they run, then
// all deleted. It reports create→running p50/p95, CRUD p50/p95 (no
// firecracker work), the manager's peak RSS, and leftovers, which must be
// zero. NEXUS_BENCH_ENGINE=postgres runs it on Postgres.
func BenchmarkFleet200(b *testing.B) {
	engine := os.Getenv("NEXUS_BENCH_ENGINE")
	if engine == "" {
		engine = "sqlite"
	}
	const total, batch = 200, 20
	for range b.N {
		c := newCluster(b, engine, 1, "--vcpu-overcommit", "256")
		ctx := context.Background()
		kernel := simtest.WriteKernel(b, c.dir)
		mem := 64

		// Create → running, batch by batch, each batch in parallel.
		var mu sync.Mutex
		var createD []time.Duration
		ids := make([]string, 0, total)
		start := time.Now()
		for off := 0; off < total; off += batch {
			var wg sync.WaitGroup
			for i := off; i < off+batch; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := time.Now()
					vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{
						Name: fmt.Sprintf("bench-%03d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel, MemMib: &mem},
					}, true)
					d := time.Since(s)
					if err != nil {
						b.Errorf("create %d: %v", i, err)
						return
					}
					mu.Lock()
					createD = append(createD, d)
					ids = append(ids, vm.ID)
					mu.Unlock()
				}()
			}
			wg.Wait()
		}
		createWall := time.Since(start)
		if b.Failed() {
			b.FailNow()
		}

		// CRUD without firecracker work: get, list, and create-stopped + delete.
		var getD, listD, idleCreateD, idleDeleteD []time.Duration
		for i := range total {
			s := time.Now()
			if _, err := c.client.GetVM(ctx, ids[i]); err != nil {
				b.Fatal(err)
			}
			getD = append(getD, time.Since(s))
			s = time.Now()
			if _, err := c.client.ListVMs(ctx, url.Values{"limit": {"50"}}); err != nil {
				b.Fatal(err)
			}
			listD = append(listD, time.Since(s))
		}
		no := false
		for i := range 50 {
			s := time.Now()
			vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{
				Name: fmt.Sprintf("idle-%02d", i), Start: &no, VMConfig: apitypes.VMConfig{KernelPath: kernel, MemMib: &mem},
			}, true)
			if err != nil {
				b.Fatal(err)
			}
			idleCreateD = append(idleCreateD, time.Since(s))
			s = time.Now()
			if err := c.client.DeleteVM(ctx, vm.ID); err != nil {
				b.Fatal(err)
			}
			idleDeleteD = append(idleDeleteD, time.Since(s))
		}
		peakRSS := vmHWM(c.mgr.cmd.Process.Pid)

		// Delete everything, in parallel batches too.
		start = time.Now()
		for off := 0; off < len(ids); off += batch {
			res, err := c.client.Bulk(ctx, "delete", ids[off:min(off+batch, len(ids))])
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range res.Results {
				if !r.OK {
					b.Fatalf("delete %s: %s", r.ID, r.Error)
				}
			}
		}
		deleteWall := time.Since(start)
		leftovers := countLeftovers(c, ids)

		testutil.ReportLatency(b, "create-running", createD)
		testutil.ReportLatency(b, "get", getD)
		testutil.ReportLatency(b, "list50", listD)
		testutil.ReportLatency(b, "create-stopped", idleCreateD)
		testutil.ReportLatency(b, "delete-stopped", idleDeleteD)
		b.ReportMetric(float64(peakRSS)/1024, "manager-peak-rss-MiB")
		b.ReportMetric(createWall.Seconds(), "create-200-s")
		b.ReportMetric(deleteWall.Seconds(), "delete-200-s")
		b.ReportMetric(float64(leftovers), "leftovers")
		if leftovers != 0 {
			b.Fatalf("%d leftovers after deleting every VM", leftovers)
		}
	}
}

// vmHWM returns a process's peak resident set in KiB.
func vmHWM(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.Fields(rest)[0])
			return n
		}
	}
	return 0
}

// countLeftovers counts processes, TAPs, sockets and run dirs of ids still
// on the hosts.
func countLeftovers(c *cluster, ids []string) int {
	n := 0
	for _, a := range c.agents {
		n += len(vmmPIDs(a.runDir))
		entries, _ := os.ReadDir(a.layout().VMsDir())
		n += len(entries)
		inv, err := c.agentClient(a).Inventory(context.Background())
		if err == nil {
			n += len(inv.Taps) + len(inv.Sockets)
		}
	}
	return n
}
