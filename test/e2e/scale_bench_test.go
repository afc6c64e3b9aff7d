package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// BenchmarkScale is `make bench-scale`: 10,000 VMs on 100 hollow agents
// (`nexus agent --hollow`: the real agent API over firecracker-sim running
// in the agent's process, TAPs in memory), everything above the agents
// unchanged. It creates every VM, churns some while reads are measured,
// reports API latencies, the reconcile pass, the manager's memory per VM
// and (on Postgres) a manager failover, then deletes everything and counts
// leftovers. NEXUS_BENCH_SCALE_HOSTS and NEXUS_BENCH_SCALE_VMS (per host)
// resize it; NEXUS_BENCH_ENGINE=postgres runs it on Postgres with two
// managers.
func BenchmarkScale(b *testing.B) {
	testutil.RequireRoot(b)
	hosts, perHost := envInt("NEXUS_BENCH_SCALE_HOSTS", 100), envInt("NEXUS_BENCH_SCALE_VMS", 100)
	engine := os.Getenv("NEXUS_BENCH_ENGINE")
	if engine == "" {
		engine = "sqlite"
	}
	total := hosts * perHost
	for range b.N {
		args := []string{"--reconcile-interval", "5s", "--orphan-grace", "30s", "--heartbeat-timeout", "30s", "--lease-ttl", "6s"}
		// NEXUS_BENCH_PROFILE=DIR: CPU profiles of the manager while it
		// creates (create.prof) and across reconcile passes (reconcile.prof).
		profDir := os.Getenv("NEXUS_BENCH_PROFILE")
		var pprofAddr string
		if profDir != "" {
			pprofAddr = fmt.Sprintf("127.0.0.1:%d", freePort(b))
			b.Setenv("NEXUS_PPROF", pprofAddr) // the manager starts first and takes it
		}
		c := newCluster(b, engine, 0, args...)
		managers := c.url()
		var second *nexus.Client
		if engine == "postgres" {
			port2 := freePort(b)
			m2 := c.start("manager-2", nil, append([]string{"manager", "--listen", fmt.Sprintf("127.0.0.1:%d", port2),
				"--database-url", c.dsn, "--join-token", c.join}, args...)...)
			b.Cleanup(m2.kill)
			m2.waitLog(b, "manager listening", 20*time.Second)
			managers += fmt.Sprintf(",http://127.0.0.1:%d", port2)
			second = newClient(fmt.Sprintf("http://127.0.0.1:%d", port2), c.admin)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i := range hosts {
			wg.Go(func() { c.startHollowAgent(fmt.Sprintf("hollow-%03d", i), 0, 0, managers) })
		}
		wg.Wait()
		c.waitHosts(hosts)
		b.Logf("%d hollow agents up in %s", hosts, time.Since(start).Round(time.Millisecond))
		ctx := context.Background()
		kernel := simtest.WriteKernel(b, c.dir)
		rss0 := vmRSS(c.mgr.cmd.Process.Pid)

		// Create every VM, 50 at a time.
		var profiling sync.WaitGroup
		if profDir != "" {
			profiling.Go(func() { profileCPU(b, pprofAddr, filepath.Join(profDir, "create.prof"), 30*time.Second) })
		}
		start = time.Now()
		var mu sync.Mutex
		var createD []time.Duration
		ids := make([]string, 0, total)
		sem := make(chan struct{}, 50)
		mem := 64
		for i := range total {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				s := time.Now()
				vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("s-%05d", i),
					VMConfig: apitypes.VMConfig{KernelPath: kernel, MemMib: &mem}}, true)
				d := time.Since(s)
				if err != nil {
					b.Errorf("create %d: %v", i, err)
					return
				}
				mu.Lock()
				createD = append(createD, d)
				ids = append(ids, vm.ID)
				mu.Unlock()
			})
		}
		wg.Wait()
		createWall := time.Since(start)
		if b.Failed() {
			b.FailNow()
		}
		rss1 := vmRSS(c.mgr.cmd.Process.Pid)

		// Reads under churn: stop and start a tenth of the VMs, 20 at a
		// time, while another caller reads.
		var getD, listD []time.Duration
		served0 := servedOver(b, c.url(), 0.05)
		stop := make(chan struct{})
		var readers sync.WaitGroup
		readers.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s := time.Now()
				if _, err := c.client.GetVM(ctx, ids[i%len(ids)]); err != nil {
					b.Errorf("get: %v", err)
					return
				}
				getD = append(getD, time.Since(s))
				s = time.Now()
				if _, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{Limit: 100}); err != nil {
					b.Errorf("list: %v", err)
					return
				}
				listD = append(listD, time.Since(s))
			}
		})
		churnD := churnBulk(ctx, b, c.client, ids[:total/10])
		close(stop)
		readers.Wait()
		served1 := servedOver(b, c.url(), 0.05)

		// A reconcile pass over the whole fleet.
		profiling.Wait()
		if profDir != "" {
			profileCPU(b, pprofAddr, filepath.Join(profDir, "reconcile.prof"), 15*time.Second)
		}
		passes := fullPasses(b, c.client, hosts, 3)

		// Failover: the second manager takes the reconciler lease.
		var failover time.Duration
		cl := c.client
		if second != nil {
			s := time.Now()
			c.mgr.kill()
			eventually(b, 60*time.Second, "the second manager leads", func() error {
				var st apitypes.ReconcilerStatus
				if err := second.Do(ctx, "GET", "/v1/reconciler", nil, nil, &st); err != nil || !st.Leader {
					return fmt.Errorf("not leader: %v", err)
				}
				return nil
			})
			failover = time.Since(s)
			cl = second
		}

		start = time.Now()
		deleteAll(b, cl, ids, 100)
		deleteWall := time.Since(start)
		var leftovers atomic.Int64
		hl, err := cl.Hosts(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, h := range hl.Items {
			inv, err := agentapi.NewClient(h.Addr, c.join, nil).Inventory(ctx)
			if err != nil {
				b.Fatalf("inventory of %s: %v", h.Name, err)
			}
			leftovers.Add(int64(len(inv.VMMs) + len(inv.RunDirs) + len(inv.Taps)))
		}

		testutil.ReportLatency(b, "create-running", createD)
		testutil.ReportLatency(b, "get", getD)
		testutil.ReportLatency(b, "list100", listD)
		testutil.ReportLatency(b, "churn-per-vm", churnD)
		// The manager's own account of the same reads (its request
		// histogram): the share it took over 50 ms to answer, which the
		// client's p99 includes along with the client's own waits.
		for _, route := range []string{"/v1/vms", "/v1/vms/{id}"} {
			n, over := served1[route][0]-served0[route][0], served1[route][1]-served0[route][1]
			if n > 0 {
				b.ReportMetric(100*over/n, "served-over-50ms-%"+map[string]string{"/v1/vms": "-list", "/v1/vms/{id}": "-get"}[route])
			}
		}
		b.ReportMetric(float64(total), "vms")
		b.ReportMetric(createWall.Seconds(), "create-all-s")
		b.ReportMetric(deleteWall.Seconds(), "delete-all-s")
		// The median of three full passes after the churn: one pass's
		// time varies by half with what else the 2 CPUs run meanwhile.
		b.ReportMetric(passes[1], "reconcile-pass-ms")
		b.ReportMetric(passes[2], "reconcile-pass-max-ms")
		b.ReportMetric(float64(rss1-rss0)/float64(total), "manager-KiB-per-vm")
		b.ReportMetric(float64(rss1)/1024, "manager-rss-MiB")
		if second != nil {
			b.ReportMetric(failover.Seconds(), "failover-s")
		}
		b.ReportMetric(float64(leftovers.Load()), "leftovers")
		if leftovers.Load() != 0 {
			b.Fatalf("%d leftovers", leftovers.Load())
		}
	}
}

// vmRSS returns a process's resident set in KiB.
func vmRSS(pid int) int {
	return procStatusKiB(pid, "VmRSS:")
}

// profileCPU saves a CPU profile of the process serving pprof at addr
// (seconds are whole: d is rounded down, at least 1).
func profileCPU(b *testing.B, addr, path string, d time.Duration) {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds()))))
	if err != nil {
		b.Logf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Logf("profile: %v", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Logf("profile: %v", err)
	}
	b.Logf("CPU profile of %s (%s) in %s", addr, d, path)
}

// servedOver reads the manager's request histogram and returns, for each
// GET route, how many requests it answered and how many took longer than
// le seconds (le must be one of its bucket bounds).
func servedOver(b *testing.B, url string, le float64) map[string][2]float64 {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string][2]float64{}
	bound := fmt.Sprintf(`le="%g"`, le)
	for _, line := range strings.Split(string(raw), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.HasPrefix(name, "nexus_http_request_duration_seconds") || !strings.Contains(rest, `method="GET"`) {
			continue
		}
		_, route, _ := strings.Cut(rest, `route="`)
		route, _, _ = strings.Cut(route, `"`)
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		cur := out[route]
		switch {
		case name == "nexus_http_request_duration_seconds_count":
			cur[0] = v
			cur[1] += v
		case name == "nexus_http_request_duration_seconds_bucket" && strings.Contains(rest, bound):
			cur[1] -= v
		}
		out[route] = cur
	}
	return out
}

// fullPasses waits for n reconcile passes over all hosts (passes kicked
// for one host do not count) and returns their durations, sorted.
func fullPasses(b *testing.B, cl *nexus.Client, hosts, n int) []float64 {
	var ms []float64
	var last time.Time
	since := time.Now()
	eventually(b, time.Duration(n)*30*time.Second, fmt.Sprintf("%d full reconcile passes", n), func() error {
		var st apitypes.ReconcilerStatus
		if err := cl.Do(context.Background(), "GET", "/v1/reconciler", nil, nil, &st); err != nil {
			return err
		}
		if st.LastPassAt.After(since) && !st.LastPassAt.Equal(last) && st.Hosts == hosts {
			last = st.LastPassAt
			ms = append(ms, st.LastPassMs)
		}
		if len(ms) < n {
			return fmt.Errorf("%d of %d passes", len(ms), n)
		}
		return nil
	})
	slices.Sort(ms)
	return ms
}
