package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// startHollowAgent runs `nexus agent --hollow` (no namespace needed: it
// creates nothing on the host) reporting the given capacity. Its guests
// are quiet (fcsim.QuietEnv): no test here reads their counter lines.
func (c *cluster) startHollowAgent(name string, vcpus, memMib int, managers string) *proc {
	c.t.Helper()
	p := c.start("agent-"+name, []string{fcsim.QuietEnv + "=1"}, "agent", "--hollow", "--bind", "127.0.0.1:0", "--manager", managers,
		"--token", c.join, "--name", name, "--run-dir", c.dir+"/"+name, "--stop-grace", "100ms", "--log-level", "warn",
		"--hollow-vcpus", fmt.Sprint(vcpus), "--hollow-mem-mib", fmt.Sprint(memMib))
	c.t.Cleanup(p.kill)
	p.waitLog(c.t, "hollow agent: VMMs are firecracker-sim inside this process and TAPs exist only in memory; for tests and benchmarks only", 20*time.Second)
	return p
}

// Three managers on one Postgres race 500 creates onto two hosts with room
// for 400: exactly 400 are placed, no host holds more than its capacity,
// and every refusal is a 503 no_capacity.
func TestManagersRacePlacement(t *testing.T) {
	testutil.RequireRoot(t) // the harness's processes; the agents are hollow
	ports := []int{freePort(t), freePort(t)}
	c := newCluster(t, "postgres", 0, "--vcpu-overcommit", "1")
	urls := []string{c.url()}
	for i, p := range ports {
		m := c.start(fmt.Sprintf("manager-%d", i+2), nil, "manager", "--listen", fmt.Sprintf("127.0.0.1:%d", p),
			"--database-url", c.dsn, "--join-token", c.join, "--vcpu-overcommit", "1")
		t.Cleanup(m.kill)
		m.waitLog(t, "manager listening", 20*time.Second)
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", p))
	}
	for i := range 2 {
		c.startHollowAgent(fmt.Sprintf("hollow-%d", i), 200, 1<<20, c.url())
	}
	c.waitHosts(2)
	kernel := simtest.WriteKernel(t, c.dir)
	clients := make([]*nexus.Client, len(urls))
	for i, u := range urls {
		clients[i] = newClient(u, c.admin)
	}
	ctx := context.Background()
	var mu sync.Mutex
	placed, refused := 0, 0
	sem := make(chan struct{}, 24)
	var wg sync.WaitGroup
	for i := range 500 {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, err := clients[i%3].CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("race-%03d", i), Start: boolp(true),
				VMConfig: apitypes.VMConfig{KernelPath: kernel, MemMib: intp(16)}}, false)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				placed++
			case isStatus(err, 503) && strings.Contains(err.Error(), "no_capacity"):
				refused++
			default:
				t.Errorf("create %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if placed != 400 || refused != 100 {
		t.Fatalf("placed %d, refused %d; want exactly 400 and 100", placed, refused)
	}
	hosts, err := c.client.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts.Items {
		l, err := c.client.ListVMs(ctx, nexus.ListVMsOptions{HostID: h.ID, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		vcpus := 0
		for _, vm := range l.Items {
			vcpus += vm.Vcpu
		}
		if vcpus > h.Capacity.Vcpu {
			t.Errorf("host %s holds %d vCPUs of VMs; capacity %d", h.Name, vcpus, h.Capacity.Vcpu)
		}
	}
}

func boolp(b bool) *bool { return &b }
