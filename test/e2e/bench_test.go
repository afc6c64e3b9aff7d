package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// BenchmarkFleet200 is `make bench`: 200 VMs created in parallel batches on
// one host with firecracker-sim, on a plain `nexus up` with its defaults (no
// overcommit flags), API reads measured while they run, then all deleted.
// It reports create→running p50/p95, boot-to-ready p50/p95 (InstanceStart
// to the simulated guest's readiness line, as the agent noticed it; every
// VM must get there, each with an address of its own), CRUD p50/p95 (no
// firecracker work),
// the peak RSS of the `nexus up` process (manager and agent), and
// leftovers, which must be zero. NEXUS_BENCH_ENGINE=postgres runs it on a
// manager and agent with Postgres instead.
func BenchmarkFleet200(b *testing.B) {
	engine := os.Getenv("NEXUS_BENCH_ENGINE")
	if engine == "" {
		engine = "sqlite"
	}
	const total, batch = 200, 20
	for range b.N {
		t := newFleetTarget(b, engine)
		ctx := context.Background()
		kernel := simtest.WriteKernel(b, t.dir)
		mem := 64

		start := time.Now()
		createD, ids := createMany(b, t.client, kernel, "bench", total, batch, mem)
		createWall := time.Since(start)
		if b.Failed() {
			b.FailNow()
		}
		c := t // the rest reads as before
		readyD := bootToReady(b, c.client, ids)

		// CRUD without firecracker work: get, list, and create-stopped + delete.
		var getD, listD, idleCreateD, idleDeleteD []time.Duration
		for i := range total {
			s := time.Now()
			if _, err := c.client.GetVM(ctx, ids[i]); err != nil {
				b.Fatal(err)
			}
			getD = append(getD, time.Since(s))
			s = time.Now()
			if _, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{Limit: 50}); err != nil {
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
		peakRSS := vmHWM(c.pid)

		// Delete everything, in parallel batches too.
		start = time.Now()
		deleteAll(b, c.client, ids, batch)
		deleteWall := time.Since(start)
		leftovers := c.leftovers()

		testutil.ReportLatency(b, "create-running", createD)
		testutil.ReportLatency(b, "boot-to-ready", readyD)
		testutil.ReportLatency(b, "get", getD)
		testutil.ReportLatency(b, "list50", listD)
		testutil.ReportLatency(b, "create-stopped", idleCreateD)
		testutil.ReportLatency(b, "delete-stopped", idleDeleteD)
		b.ReportMetric(float64(peakRSS)/1024, "control-plane-peak-rss-MiB")
		b.ReportMetric(createWall.Seconds(), "create-200-s")
		b.ReportMetric(deleteWall.Seconds(), "delete-200-s")
		b.ReportMetric(float64(leftovers), "leftovers")
		if leftovers != 0 {
			b.Fatalf("%d leftovers after deleting every VM", leftovers)
		}
	}
}

// bootToReady waits (bounded) until every VM's guest said it was ready and
// returns each one's boot-to-ready time; it fails when one never does or
// two VMs share an address.
func bootToReady(tb testing.TB, cl *nexus.Client, ids []string) []time.Duration {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var durs []time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := cl.ListVMs(context.Background(), nexus.ListVMsOptions{Limit: 1000})
		if err != nil {
			tb.Fatal(err)
		}
		durs = durs[:0]
		ips := map[string]string{}
		for _, vm := range l.Items {
			if !want[vm.ID] {
				continue
			}
			if other, dup := ips[vm.IP]; dup || vm.IP == "" {
				tb.Fatalf("vm %s has address %q, as has %q", vm.Name, vm.IP, other)
			}
			ips[vm.IP] = vm.Name
			if vm.GuestReadyAt != nil && vm.BootedAt != nil {
				durs = append(durs, vm.GuestReadyAt.Sub(*vm.BootedAt))
			}
		}
		if len(durs) == len(ids) {
			return durs
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d guests ready after 30 s", len(durs), len(ids))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fleetTarget is where a one-host benchmark runs: `nexus up` (SQLite) or a
// manager and an agent (Postgres).
type fleetTarget struct {
	dir       string
	client    *nexus.Client
	pid       int // the process holding the manager
	leftovers func() int
}

func newFleetTarget(tb testing.TB, engine string) fleetTarget {
	if engine == "sqlite" {
		testutil.RequireRoot(tb)
		dir := shortTempDir(tb)
		h := newHostNet(tb)
		u := startUpIn(tb, h, filepath.Join(dir, "up"), freePort(tb), nil)
		return fleetTarget{dir: dir, client: u.client, pid: u.cmd.Process.Pid, leftovers: func() int {
			n := len(vmmPIDs(u.runDir))
			entries, _ := os.ReadDir(filepath.Join(u.runDir, "vms"))
			n += len(entries)
			links, _ := h.nl.LinkList()
			for _, l := range links {
				if strings.HasPrefix(l.Attrs().Name, hostlayout.TapPrefix) {
					n++
				}
			}
			return n
		}}
	}
	c := newCluster(tb, engine, 1)
	return fleetTarget{dir: c.dir, client: c.client, pid: c.mgr.cmd.Process.Pid, leftovers: func() int { return countLeftovers(c, nil) }}
}

// createMany creates total VMs named prefix-NNN, batch at a time in
// parallel, each waiting until it runs, and returns each create's latency
// and the VM ids.
func createMany(tb testing.TB, cl *nexus.Client, kernel, prefix string, total, batch, mem int) ([]time.Duration, []string) {
	var mu sync.Mutex
	var durs []time.Duration
	ids := make([]string, 0, total)
	for off := 0; off < total; off += batch {
		var wg sync.WaitGroup
		for i := off; i < min(off+batch, total); i++ {
			wg.Go(func() {
				s := time.Now()
				vm, err := cl.CreateVM(context.Background(), apitypes.CreateVMRequest{
					Name: fmt.Sprintf("%s-%03d", prefix, i), VMConfig: apitypes.VMConfig{KernelPath: kernel, MemMib: &mem},
				}, true)
				d := time.Since(s)
				if err != nil {
					tb.Errorf("create %d: %v", i, err)
					return
				}
				mu.Lock()
				durs = append(durs, d)
				ids = append(ids, vm.ID)
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	return durs, ids
}

// deleteAll deletes ids with bulk calls of batch each and fails the test
// on any VM that could not be deleted.
func deleteAll(tb testing.TB, cl *nexus.Client, ids []string, batch int) {
	tb.Helper()
	for off := 0; off < len(ids); off += batch {
		res, err := cl.Bulk(context.Background(), "delete", ids[off:min(off+batch, len(ids))])
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range res.Results {
			if !r.OK {
				tb.Fatalf("delete %s: %s", r.ID, r.Error)
			}
		}
	}
}

// vmHWM returns a process's peak resident set in KiB.
func vmHWM(pid int) int { return procStatusKiB(pid, "VmHWM:") }

// procStatusKiB reads one KiB field of /proc/<pid>/status.
func procStatusKiB(pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
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

// BenchmarkFleet is `make bench-fleet`: 10 hosts (agents in their own
// network namespaces) × 100 VMs with firecracker-sim, then churn (stop and
// start), API reads, a kill of 10% of the VMMs, and deletion of everything.
// It reports API p50/p95/p99 (no firecracker work), reconcile pass
// duration, convergence after the mass kill, peak memory of the manager and
// the agents, and leftovers. NEXUS_BENCH_HOSTS / NEXUS_BENCH_VMS resize it.
func BenchmarkFleet(b *testing.B) {
	hosts, perHost := envInt("NEXUS_BENCH_HOSTS", 10), envInt("NEXUS_BENCH_VMS", 100)
	engine := os.Getenv("NEXUS_BENCH_ENGINE")
	if engine == "" {
		engine = "sqlite"
	}
	for range b.N {
		c := newCluster(b, engine, 0, "--reconcile-interval", "2s",
			"--orphan-grace", "5s", "--heartbeat-timeout", "10s", "--lease-ttl", "6s")
		for i := range hosts {
			c.startAgent(fmt.Sprintf("host-%02d", i))
		}
		c.waitHosts(hosts)
		ctx := context.Background()
		kernel := simtest.WriteKernel(b, c.dir)
		mem := 64
		total := hosts * perHost

		// Create in parallel batches.
		var mu sync.Mutex
		var ids []string
		var createD []time.Duration
		start := time.Now()
		const batch = 50
		for off := 0; off < total; off += batch {
			var wg sync.WaitGroup
			for i := off; i < min(off+batch, total); i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := time.Now()
					vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{
						Name: fmt.Sprintf("f%04d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel, MemMib: &mem},
					}, true)
					if err != nil {
						b.Errorf("create %d: %v", i, err)
						return
					}
					mu.Lock()
					ids = append(ids, vm.ID)
					createD = append(createD, time.Since(s))
					mu.Unlock()
				}()
			}
			wg.Wait()
			if b.Failed() {
				b.FailNow()
			}
		}
		createWall := time.Since(start)
		perHostCount := map[string]int{}
		l, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{Limit: 1000})
		for _, vm := range l.Items {
			perHostCount[vm.HostID]++
		}

		// API without firecracker work, while the fleet runs.
		var apiD []time.Duration
		timed := func(f func() error) {
			s := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			apiD = append(apiD, time.Since(s))
		}
		for i := range 500 {
			timed(func() error { _, err := c.client.GetVM(ctx, ids[i%len(ids)]); return err })
			if i%5 == 0 {
				timed(func() error { _, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{Limit: 100}); return err })
				timed(func() error { _, err := c.client.Hosts(ctx); return err })
			}
		}

		// Churn: stop and start a fifth of the fleet, 20 at a time.
		churnD := churnBulk(ctx, b, c.client, ids[:total/5])

		// Kill 10% of the VMMs at once and time the convergence.
		waitPasses(b, c.client, 2)
		var st apitypes.ReconcilerStatus
		_ = c.client.Do(ctx, "GET", "/v1/reconciler", nil, nil, &st)
		killed := 0
		for _, a := range c.agents {
			for i, pid := range vmmPIDs(a.runDir) {
				if i%10 == 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					killed++
				}
			}
		}
		start = time.Now()
		eventually(b, 2*time.Minute, "fleet converges after the mass kill", func() error { return c.converged() })
		convergeD := time.Since(start)

		mgrRSS := vmHWM(c.mgr.cmd.Process.Pid)
		agentMax, agentSum := 0, 0
		for _, a := range c.agents {
			r := vmHWM(a.cmd.Process.Pid)
			agentSum += r
			agentMax = max(agentMax, r)
		}

		// Delete everything.
		start = time.Now()
		deleteAll(b, c.client, ids, 100)
		deleteWall := time.Since(start)
		leftovers := countLeftovers(c, ids)

		testutil.ReportLatency(b, "api", apiD)
		testutil.ReportLatency(b, "create-running", createD)
		testutil.ReportLatency(b, "churn-per-vm", churnD)
		b.ReportMetric(float64(total), "vms")
		b.ReportMetric(createWall.Seconds(), "create-all-s")
		b.ReportMetric(st.LastPassMs, "reconcile-pass-ms")
		b.ReportMetric(float64(killed), "vmms-killed")
		b.ReportMetric(convergeD.Seconds(), "converge-after-kill-s")
		b.ReportMetric(float64(mgrRSS)/1024, "manager-peak-rss-MiB")
		b.ReportMetric(float64(agentMax)/1024, "agent-peak-rss-max-MiB")
		b.ReportMetric(float64(agentSum)/1024, "agents-peak-rss-sum-MiB")
		b.ReportMetric(deleteWall.Seconds(), "delete-all-s")
		b.ReportMetric(float64(leftovers), "leftovers")
		minPer, maxPer := total, 0
		for _, n := range perHostCount {
			minPer, maxPer = min(minPer, n), max(maxPer, n)
		}
		b.Logf("placement: %d hosts, %d–%d VMs per host", len(perHostCount), minPer, maxPer)
		if leftovers != 0 {
			b.Fatalf("%d leftovers", leftovers)
		}
	}
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil && v > 0 {
		return v
	}
	return def
}

// churnBulk stops and starts the VMs, 20 at a time, and returns the time
// per VM of each bulk call.
func churnBulk(ctx context.Context, b *testing.B, client *nexus.Client, ids []string) []time.Duration {
	var d []time.Duration
	for off := 0; off < len(ids); off += 20 {
		part := ids[off:min(off+20, len(ids))]
		for _, action := range []string{"stop", "start"} {
			s := time.Now()
			res, err := client.Bulk(ctx, action, part)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range res.Results {
				if !r.OK {
					b.Fatalf("%s %s: %s", action, r.ID, r.Error)
				}
			}
			d = append(d, time.Since(s)/time.Duration(len(part)))
		}
	}
	return d
}
