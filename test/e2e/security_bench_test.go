package e2e

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkSecurity measures what jail mode and mutual TLS add to a VM's
// create→running, on a manager and one agent with firecracker-sim: 100 VMs
// created 10 at a time, four ways — plain, jail, mutual TLS, both. It
// reports create→running p50/p95 and the agent's spawn step (VMM process
// to API socket, from the boot event) p50/p95, and fails on leftovers.
//
//	go test -run '^$' -bench BenchmarkSecurity -benchtime 1x ./test/e2e/
//
// NEXUS_BENCH_VMS changes the number of VMs.
func BenchmarkSecurity(b *testing.B) {
	total := envInt("NEXUS_BENCH_VMS", 100)
	const batch = 10
	for i, cfg := range []struct {
		name      string
		jail, tls bool
	}{
		{"plain", false, false},
		{"jail", true, false},
		{"tls", false, true},
		{"jail+tls", true, true},
	} {
		b.Run(cfg.name, func(b *testing.B) {
			for range b.N {
				env := []string{"FC_JAIL=off"}
				if cfg.jail {
					env = []string{"FC_JAIL=on", "FC_JAIL_UID_BASE=" + strconv.Itoa(2_141_000_000+i*100_000), "FC_JAIL_UID_COUNT=10000"}
				}
				c := newClusterWith(b, clusterOpts{engine: "sqlite", agents: 1, tls: cfg.tls, env: env})
				kernel := simtest.WriteKernel(b, c.dir)
				start := time.Now()
				createD, ids := createMany(b, c.client, kernel, "sec", total, batch, 64)
				wall := time.Since(start)
				if b.Failed() {
					b.FailNow()
				}
				spawnD := spawnDurations(b, c, ids)
				deleteAll(b, c.client, ids, batch)
				leftovers := countLeftovers(c, ids)
				testutil.ReportLatency(b, "create-running", createD)
				testutil.ReportLatency(b, "spawn", spawnD)
				b.ReportMetric(wall.Seconds(), "create-all-s")
				b.ReportMetric(float64(leftovers), "leftovers")
				if leftovers != 0 {
					b.Fatalf("%d leftovers", leftovers)
				}
				c.assertHostsEmpty()
			}
		})
	}
}

var spawnStep = regexp.MustCompile(`spawn vmm ([0-9.]+) ms`)

// spawnDurations reads each VM's boot event for the spawn step's duration.
func spawnDurations(tb testing.TB, c *cluster, ids []string) []time.Duration {
	tb.Helper()
	var out []time.Duration
	for _, id := range ids {
		ev, err := c.client.Events(context.Background(), id)
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range ev.Items {
			if m := spawnStep.FindStringSubmatch(e.Message); m != nil {
				ms, _ := strconv.ParseFloat(m[1], 64)
				out = append(out, time.Duration(ms*float64(time.Millisecond)))
				break
			}
		}
	}
	if len(out) != len(ids) {
		tb.Fatalf("spawn step found in %d of %d boot events", len(out), len(ids))
	}
	return out
}
